//go:build e2e && unix

package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/test/fixture"
)

// Deadlines for the steps of the tests, beyond those of Start.
const (
	// podCreatedTimeout covers deployment → replicaset → pod in the
	// controller-manager, including its wait for the namespace's default
	// ServiceAccount.
	podCreatedTimeout = 60 * time.Second
	// pdbStatusTimeout covers the disruption controller computing a PDB.
	pdbStatusTimeout = 60 * time.Second
	// constraintAppliedTimeout covers Gatekeeper generating a constraint CRD
	// and kubectl's discovery catching up with it.
	constraintAppliedTimeout = 60 * time.Second
	// enforcedTimeout covers Gatekeeper loading a constraint into its policy
	// engine after it was applied (about 2 s when measured).
	enforcedTimeout = 60 * time.Second
	// kubectlTimeout bounds one kubectl invocation.
	kubectlTimeout = 30 * time.Second
	// testPoll is how often the tests re-check a condition.
	testPoll = 200 * time.Millisecond
)

const (
	testNamespace = "demo"
	testUser      = "alice@example.com"
	testGroup     = "dev"
)

// startCluster starts a cluster for t, stops it when t ends, and prints the
// components' logs if t failed.
func startCluster(t *testing.T, gatekeeper bool) *Cluster {
	t.Helper()
	begin := time.Now()
	c, err := Start(t.Context(), Options{Dir: t.TempDir(), Log: testWriter{t}, Gatekeeper: gatekeeper})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start (gatekeeper=%v) took %s", gatekeeper, time.Since(begin).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("component logs:\n%s", c.Logs())
		}
		begin := time.Now()
		if err := c.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
		t.Logf("Stop took %s", time.Since(begin).Round(time.Millisecond))
	})
	return c
}

// testWriter sends Options.Log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// poll calls cond every testPoll until it returns true or timeout passes.
func poll(t *testing.T, what string, timeout time.Duration, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := fixture.PollEvery(t.Context(), what, testPoll, timeout, cond); err != nil {
		t.Fatal(err)
	}
}

// deployApp creates testNamespace with a one-replica Deployment and a PDB for
// it, and returns the Deployment's (Pending) pod once it exists.
func deployApp(t *testing.T, c *Cluster) *corev1.Pod {
	t.Helper()
	ctx := t.Context()
	cs := c.Client()
	// The pod waits for the namespace's default ServiceAccount itself
	// (podCreatedTimeout covers that).
	if err := fixture.Namespace(ctx, cs, testNamespace, 0); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "demo"}
	// Never pulled: there is no kubelet.
	spec := corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}}
	if err := fixture.Deployment(ctx, cs, testNamespace, "demo", 1, labels, spec); err != nil {
		t.Fatal(err)
	}
	_, err := cs.PolicyV1().PodDisruptionBudgets(testNamespace).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "demo"},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: ptr.To(intstr.FromInt32(1)),
			Selector:     &metav1.LabelSelector{MatchLabels: labels},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	begin := time.Now()
	pods, err := fixture.WaitPods(ctx, cs, testNamespace, labels, 1, fixture.Wait{Timeout: podCreatedTimeout, Interval: testPoll})
	if err != nil {
		t.Fatal(err)
	}
	pod := pods[0]
	t.Logf("pod %s created %s after the Deployment; phase %s, node %q",
		pod.Name, time.Since(begin).Round(time.Millisecond), pod.Status.Phase, pod.Spec.NodeName)
	if pod.Status.Phase != corev1.PodPending || pod.Spec.NodeName != "" {
		t.Errorf("pod %s: phase %s on node %q, want Pending and unscheduled", pod.Name, pod.Status.Phase, pod.Spec.NodeName)
	}

	poll(t, "the disruption controller to compute the PDB", pdbStatusTimeout, func(ctx context.Context) (bool, error) {
		pdb, err := cs.PolicyV1().PodDisruptionBudgets(testNamespace).Get(ctx, "demo", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return pdb.Status.ObservedGeneration == pdb.Generation && pdb.Status.ExpectedPods == 1, nil
	})
	return &pod
}

// execUser returns a kubeconfig for testUser, with a developer's rights
// (fixture.DeveloperRules) in testNamespace and nothing else.
func execUser(t *testing.T, c *Cluster) string {
	t.Helper()
	ctx := t.Context()
	kubeconfig, err := fixture.Developer{
		Role:       "exec-test",
		Namespace:  testNamespace,
		Kubeconfig: "alice",
		User:       testUser,
		Groups:     []string{testGroup},
	}.Grant(ctx, c.Client(), c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	// The identity the API server sees is the certificate's.
	out, _, err := fixture.Kubectl(ctx, c.Kubectl, kubectlTimeout, kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}")
	if err != nil {
		t.Fatal(err)
	}
	if want := testUser + ` ["dev","system:authenticated"]`; out != want {
		t.Errorf("kubectl auth whoami = %q, want %q", out, want)
	}
	return kubeconfig
}

// kubectlExec runs `kubectl exec` as kubeconfig into pod and returns stderr;
// it always fails, because the pod has no node.
func kubectlExec(t *testing.T, c *Cluster, kubeconfig string, pod *corev1.Pod) string {
	t.Helper()
	stdout, stderr, err := fixture.KubectlExec(t.Context(), c.Kubectl, kubectlTimeout, kubeconfig, pod, "", "sh", "-c", "true")
	if err == nil {
		t.Fatalf("kubectl exec into a pod without a node succeeded: stdout %q stderr %q", stdout, stderr)
	}
	return stderr
}

// TestControlPlane checks the control plane alone: Deployments make Pods,
// PDB status is computed, and kubectl exec is admitted and then fails for
// lack of a node.
func TestControlPlane(t *testing.T) {
	c := startCluster(t, false)
	pod := deployApp(t, c)
	alice := execUser(t, c)
	stderr := kubectlExec(t, c, alice, pod)
	t.Logf("kubectl exec without a node prints: %q", stderr)
	assertAdmittedThenNoNode(t, stderr)
}

// assertAdmittedThenNoNode checks kubectl exec's stderr for the failure that
// follows admission on a control plane with no kubelet.
func assertAdmittedThenNoNode(t *testing.T, stderr string) {
	t.Helper()
	if strings.Contains(stderr, "Forbidden") || strings.Contains(stderr, "denied") {
		t.Errorf("kubectl exec was refused before reaching the node: %q", stderr)
	}
	if !strings.Contains(stderr, "does not have a host assigned") {
		t.Errorf("kubectl exec stderr = %q, want the no-node error", stderr)
	}
}

const denyExecTemplate = `apiVersion: templates.gatekeeper.sh/v1
kind: ConstraintTemplate
metadata:
  name: k8sdenyexectest
spec:
  crd:
    spec:
      names:
        kind: K8sDenyExecTest
  targets:
  - target: admission.k8s.gatekeeper.sh
    operations: ["CONNECT"]
    rego: |
      package k8sdenyexectest

      violation[{"msg": msg}] {
        input.review.operation == "CONNECT"
        msg := sprintf("exec-reaper test policy: no exec into %v/%v for %v", [input.review.namespace, input.review.name, input.review.userInfo.username])
      }
`

const denyExecConstraint = `apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sDenyExecTest
metadata:
  name: deny-exec-test
spec:
  match:
    kinds:
    - apiGroups: [""]
      kinds: ["PodExecOptions"]
    namespaces: ["demo"]
`

// TestGatekeeperConnect proves the CONNECT path end to end: Gatekeeper sees
// kubectl exec, first allows it (no policy), then denies it with the
// constraint's message once a deny-all template and constraint are applied.
func TestGatekeeperConnect(t *testing.T) {
	c := startCluster(t, true)
	if len(c.GatekeeperCA()) == 0 {
		t.Error("GatekeeperCA() is empty")
	}
	pod := deployApp(t, c)
	alice := execUser(t, c)

	connectCalls := func() float64 {
		t.Helper()
		n, err := c.webhookCalls(t.Context(), GatekeeperValidationWebhook, map[string]string{"operation": "CONNECT", "code": "200"})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := connectCalls()
	stderr := kubectlExec(t, c, alice, pod)
	t.Logf("kubectl exec with Gatekeeper and no policy prints: %q", stderr)
	assertAdmittedThenNoNode(t, stderr)
	calls := connectCalls() - before
	t.Logf("CONNECT admissions answered by Gatekeeper for one kubectl exec: %v", calls)
	if calls == 0 {
		t.Fatal("the API server never called Gatekeeper for CONNECT")
	}

	dir := t.TempDir()
	templateFile := filepath.Join(dir, "template.yaml")
	constraintFile := filepath.Join(dir, "constraint.yaml")
	for path, data := range map[string]string{templateFile: denyExecTemplate, constraintFile: denyExecConstraint} {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	begin := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
	defer cancel()
	if err := c.ApplyFile(ctx, "", templateFile); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForCRD(t.Context(), "k8sdenyexectest.constraints.gatekeeper.sh"); err != nil {
		t.Fatal(err)
	}
	t.Logf("constraint CRD established %s after the template was applied", time.Since(begin).Round(time.Millisecond))
	var lastErr error
	poll(t, "the constraint to apply", constraintAppliedTimeout, func(ctx context.Context) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, kubectlTimeout)
		defer cancel()
		lastErr = c.ApplyFile(ctx, "", constraintFile)
		if lastErr != nil && !strings.Contains(lastErr.Error(), "no matches for kind") {
			return false, lastErr
		}
		return lastErr == nil, nil
	})
	t.Logf("constraint applied %s after the template", time.Since(begin).Round(time.Millisecond))

	want := fmt.Sprintf("[deny-exec-test] exec-reaper test policy: no exec into %s/%s for %s", pod.Namespace, pod.Name, testUser)
	poll(t, "Gatekeeper to deny kubectl exec", enforcedTimeout, func(ctx context.Context) (bool, error) {
		stderr = kubectlExec(t, c, alice, pod)
		return strings.Contains(stderr, want), nil
	})
	t.Logf("constraint enforced %s after the template was applied", time.Since(begin).Round(time.Millisecond))
	t.Logf("kubectl exec denied by Gatekeeper prints: %q", stderr)
	if !strings.Contains(stderr, `admission webhook "validation.gatekeeper.sh" denied the request`) {
		t.Errorf("kubectl exec stderr = %q, want Gatekeeper's denial", stderr)
	}
	assertStatusOwnersExist(t, c)
}

// assertStatusOwnersExist checks that Gatekeeper's status objects for the
// constraint and its template are owned by a Pod that exists, with its UID.
// One that names another owner (as --debug-use-fake-pod's "no-pod" did) is
// deleted by the garbage collector as soon as it is written, and written
// again by Gatekeeper, for as long as the cluster runs.
func assertStatusOwnersExist(t *testing.T, c *Cluster) {
	t.Helper()
	for _, resource := range []string{"constraintpodstatuses", "constrainttemplatepodstatuses"} {
		statuses := c.Dynamic().Resource(schema.GroupVersionResource{Group: "status.gatekeeper.sh", Version: "v1beta1", Resource: resource}).Namespace(GatekeeperNamespace)
		var list *unstructured.UnstructuredList
		poll(t, "Gatekeeper's "+resource, constraintAppliedTimeout, func(ctx context.Context) (bool, error) {
			var err error
			list, err = statuses.List(ctx, metav1.ListOptions{})
			return err == nil && len(list.Items) > 0, nil
		})
		for _, st := range list.Items {
			refs := st.GetOwnerReferences()
			if len(refs) == 0 {
				t.Errorf("%s %s has no owner", resource, st.GetName())
			}
			for _, ref := range refs {
				pod, err := c.Client().CoreV1().Pods(GatekeeperNamespace).Get(t.Context(), ref.Name, metav1.GetOptions{})
				switch {
				case ref.Kind != "Pod":
					t.Errorf("%s %s is owned by %s %s, want Gatekeeper's Pod", resource, st.GetName(), ref.Kind, ref.Name)
				case err != nil:
					t.Errorf("%s %s is owned by Pod %s (UID %q), which the garbage collector cannot find: %v", resource, st.GetName(), ref.Name, ref.UID, err)
				case pod.UID != ref.UID:
					t.Errorf("%s %s is owned by Pod %s with UID %q, but that Pod's UID is %q", resource, st.GetName(), ref.Name, ref.UID, pod.UID)
				}
			}
		}
	}
}

// TestStartCleansUpOnFailure makes Start fail after the control plane is up
// (a Gatekeeper manager that exits at once) and checks that Start reports the
// failure and leaves no process behind.
func TestStartCleansUpOnFailure(t *testing.T) {
	gk := t.TempDir()
	crd := `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Cluster
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`
	if err := os.MkdirAll(filepath.Join(gk, "crds"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gk, "crds", "widget.yaml"), []byte(crd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gk, "manager"), []byte("#!/bin/sh\necho 'fake manager giving up'\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tools := DefaultTools()
	tools.GatekeeperDir = gk
	dir := t.TempDir()
	c, err := Start(t.Context(), Options{Tools: tools, Dir: dir, Log: testWriter{t}, Gatekeeper: true})
	if err == nil {
		_ = c.Stop()
		t.Fatal("Start succeeded with a manager that exits")
	}
	t.Logf("Start failed as it should: %.300s…", err)
	if !strings.Contains(err.Error(), "gatekeeper exited") || !strings.Contains(err.Error(), "fake manager giving up") {
		t.Errorf("error %q does not say that Gatekeeper exited, nor show its log", err)
	}
	// Every process was started with Dir in its arguments.
	if pids := processesMentioning(t, dir); len(pids) > 0 {
		t.Errorf("processes left running after a failed Start: %v", pids)
	}
}

// processesMentioning returns the live processes whose command line contains s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	cmdlines, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, f := range cmdlines {
		data, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(data), s) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if alive(pid) && pid != os.Getpid() {
			found = append(found, fmt.Sprintf("%d: %s", pid, strings.ReplaceAll(string(data), "\x00", " ")))
		}
	}
	return found
}

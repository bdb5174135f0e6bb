//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/test/cluster"
	"github.com/exec-reaper/exec-reaper/test/fixture"
	"github.com/exec-reaper/exec-reaper/test/install"
)

// oldGatekeeperDir is the oldest Gatekeeper the README claims
// (hack/tools.sh gatekeeper-old): EXEC_REAPER_GATEKEEPER_OLD, set by make e2e.
func oldGatekeeperDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("EXEC_REAPER_GATEKEEPER_OLD")
	if dir == "" {
		t.Fatal(`EXEC_REAPER_GATEKEEPER_OLD is not set: run make e2e, or set it to EXEC_REAPER_GATEKEEPER_OLD="$(hack/tools.sh gatekeeper-old)"`)
	}
	return dir
}

// TestOldestGatekeeper installs exec-reaper from its chart, with the
// chart's templates and constraints (policies.install), on a control plane
// of its own running the oldest Gatekeeper the README claims, and runs the
// chart's whole life there (chartLifecycle): kubectl apply accepts the
// templates (strict field validation: no field of a newer ConstraintTemplate
// CRD), an exec is recorded, the pod goes at its deadline, and the chart's
// pre-delete hook removes every exec-reaper constraint.
func TestOldestGatekeeper(t *testing.T) {
	tools := cluster.DefaultTools()
	tools.GatekeeperDir = oldGatekeeperDir(t)
	chartLifecycle(t, cluster.Options{Tools: tools, Gatekeeper: true, GatekeeperPre323: true}, install.DefaultNamespace)
}

// chartLifecycle starts a control plane of its own with copts, installs
// exec-reaper from its chart into namespace ns with the chart's templates
// and constraints (ttl shortened), and shows, as a user meets them: the
// templates and constraints apply with kubectl; an exec by alice is
// recorded, by the provider's ServiceAccount of ns, which the guard lets
// write; nobody else may lift the record; the deleter (its Lease in ns)
// evicts the pod at its deadline, not before; and the chart's pre-delete
// hook command, run as the hook's own ServiceAccount, removes every
// exec-reaper constraint. It returns the cluster and the install.
func chartLifecycle(t *testing.T, copts cluster.Options, ns string) (*cluster.Cluster, *install.Install) {
	t.Helper()
	const ttl = 6 * time.Second
	ctx := context.Background()
	start := time.Now()
	copts.Dir = t.TempDir()
	oc, err := cluster.Start(ctx, copts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = oc.Stop() })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster logs:\n%s", oc.Logs())
		}
	})
	t.Logf("control plane with Gatekeeper %s up in %s", filepath.Base(copts.Tools.GatekeeperDir), time.Since(start).Round(time.Millisecond))

	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	helm := os.Getenv("EXEC_REAPER_HELM")
	if helm == "" {
		t.Fatal("EXEC_REAPER_HELM is not set")
	}
	oi, err := install.Setup(ctx, install.Options{Cluster: oc, RepoRoot: root, Helm: helm, Namespace: ns, DeleterReplicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := oi.Render(ctx, "policies.install=true", "policies.notice=false", "policies.ttl="+ttl.String())
	if err != nil {
		t.Fatal(err)
	}
	var templates, constraints, hook []*unstructured.Unstructured
	for _, o := range objs {
		h := o.GetAnnotations()["helm.sh/hook"]
		switch {
		case o.GetKind() == "ConstraintTemplate":
			templates = append(templates, o)
		case strings.Contains(h, "post-install"):
			constraints = append(constraints, o)
		case strings.Contains(h, "pre-delete"):
			hook = append(hook, o)
		}
	}
	if len(templates) != 2 || len(constraints) != 2 {
		t.Fatalf("rendered %d templates and %d constraints, want 2 and 2", len(templates), len(constraints))
	}
	// kubectl apply validates fields strictly: a template field that this
	// Gatekeeper's ConstraintTemplate CRD lacks is an error here.
	if err := oi.Apply(ctx, "chart-templates.yaml", templates); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	pollCluster(t, "the chart's constraints applied", 60*time.Second, func(ctx context.Context) bool {
		lastErr = oi.Apply(ctx, "chart-constraints.yaml", constraints)
		return lastErr == nil
	})
	t.Logf("templates and constraints applied %s after start", time.Since(start).Round(time.Millisecond))

	// alice may exec; the chart's constraint (warn, fail open) records.
	cs := oc.Client()
	aliceKC, err := fixture.Developer{Role: "e2e-exec", Kubeconfig: "alice", User: alice, Groups: []string{"dev"}}.Grant(ctx, cs, oc.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := fixture.Namespace(ctx, cs, "shop", podTimeout); err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}, Spec: appSpec()}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := fixture.WatchPod(ctx, cs, pod, "app")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	// Gatekeeper enforces a constraint a moment after it is created: exec
	// until one is recorded.
	var rec record.Record
	var recorded *corev1.Pod
	pollCluster(t, "an exec recorded", 60*time.Second, func(ctx context.Context) bool {
		cctx, cancel := context.WithTimeout(ctx, commandTimeout)
		defer cancel()
		_, stderr, err := oc.Kubectl(cctx, aliceKC, "exec", "-n", "shop", "web", "-c", "app", "--", "sh")
		if err != nil && !noNode.MatchString(stderr) {
			if ctx.Err() != nil {
				return false // the poll's time is up; it says so
			}
			t.Fatalf("exec failed for an unexpected reason: %v", err)
		}
		recorded, err = cs.CoreV1().Pods("shop").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		rec, err = record.Read(recorded.Labels, recorded.Annotations)
		return err == nil
	})
	if rec.First.User != alice || rec.First.Operation != record.OpExec || rec.PodUID != pod.UID {
		t.Errorf("record %+v, want alice's exec into pod %s", rec, pod.UID)
	}
	t.Logf("exec recorded %s after start", time.Since(start).Round(time.Millisecond))

	// The guard lets the provider of this release write and no one else:
	// the cluster's admin may not lift the record.
	lift := []byte(`{"metadata":{"labels":{"` + record.DeadlineLabel + `":null}}}`)
	_, err = cs.CoreV1().Pods("shop").Patch(ctx, pod.Name, types.MergePatchType, lift, metav1.PatchOptions{}, "status")
	if err == nil || !strings.Contains(err.Error(), guardDenied) {
		t.Fatalf("the admin lifting the record through pods/status: %v, want the guard's refusal", err)
	}

	// The deleter takes the pod at its deadline, not before.
	tm, err := w.Until(ctx, time.Until(rec.Deadline)+30*time.Second, fixture.Marked)
	if err != nil {
		t.Fatalf("pod not evicted by 30 s after its deadline %s: %v", rec.Deadline.Format(time.RFC3339), err)
	}
	if lag := tm.Gone().Sub(rec.Deadline); lag < 0 || lag > 5*time.Second {
		t.Errorf("pod went %s after its deadline, want 0 to 5 s", lag)
	} else {
		t.Logf("pod evicted %s after its deadline", lag.Round(time.Millisecond))
	}
	lease, err := cs.CoordinationV1().Leases(ns).Get(ctx, "exec-reaper-deleter", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil {
		t.Errorf("deleter Lease in %s: %v, %+v", ns, err, lease)
	}

	// The pre-delete hook, run as Helm would run it: its ServiceAccount and
	// RBAC, then the Job's command as that ServiceAccount.
	var job *unstructured.Unstructured
	var rbac []*unstructured.Unstructured
	for _, o := range hook {
		if o.GetKind() == "Job" {
			job = o
		} else {
			rbac = append(rbac, o)
		}
	}
	if job == nil || len(rbac) != 3 {
		t.Fatalf("hook: job %v, %d other objects, want a Job, a ServiceAccount, a ClusterRole and a binding", job != nil, len(rbac))
	}
	if err := oi.Apply(ctx, "uninstall-hook-rbac.yaml", rbac); err != nil {
		t.Fatal(err)
	}
	runHook(t, oc, job)
	for _, res := range []string{"k8sexecreaper", "k8sexecreaperrecordguard"} {
		list, err := oc.Dynamic().Resource(schema.GroupVersionResource{Group: "constraints.gatekeeper.sh", Version: "v1beta1", Resource: res}).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 0 {
			t.Errorf("%d %s constraints left after the hook", len(list.Items), res)
		}
	}
	t.Logf("whole test %s", time.Since(start).Round(time.Millisecond))
	return oc, oi
}

// runHook runs the hook Job's container command as the Job's ServiceAccount,
// as a local process with the binary the install built: the smallest hook
// runner, since the local control plane runs no Job.
func runHook(t *testing.T, oc *cluster.Cluster, job *unstructured.Unstructured) {
	t.Helper()
	sa, _, _ := unstructured.NestedString(job.Object, "spec", "template", "spec", "serviceAccountName")
	containers, _, _ := unstructured.NestedSlice(job.Object, "spec", "template", "spec", "containers")
	if sa == "" || len(containers) != 1 {
		t.Fatalf("hook Job: ServiceAccount %q, %d containers", sa, len(containers))
	}
	ctr := containers[0].(map[string]any)
	command, _, _ := unstructured.NestedStringSlice(ctr, "command")
	args, _, _ := unstructured.NestedStringSlice(ctr, "args")
	if len(command) < 1 {
		t.Fatal("hook container has no command")
	}
	user := "system:serviceaccount:" + job.GetNamespace() + ":" + sa
	kc, err := oc.Kubeconfig("uninstall-hook", user, "system:serviceaccounts", "system:serviceaccounts:"+job.GetNamespace())
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(oc.Dir, "exec-reaper", "bin", filepath.Base(command[0]))
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(append(command[1:], args...), "--kubeconfig="+kc)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hook %v as %s: %v\n%s", command, user, err, out)
	}
	t.Logf("hook output:\n%s", out)
}

// pollCluster polls cond every 100 ms until it holds or timeout passes.
func pollCluster(t *testing.T, what string, timeout time.Duration, cond func(ctx context.Context) bool) {
	t.Helper()
	poll(t, what, timeout, func(ctx context.Context) (bool, error) { return cond(ctx), nil })
}

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
// of its own running the oldest Gatekeeper the README claims, and shows
// that kubectl apply accepts the templates (strict field validation: no
// field of a newer ConstraintTemplate CRD), that an exec is recorded, and
// that the chart's pre-delete hook command removes every exec-reaper
// constraint, run as the hook's own ServiceAccount.
func TestOldestGatekeeper(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	tools := cluster.DefaultTools()
	tools.GatekeeperDir = oldGatekeeperDir(t)
	oc, err := cluster.Start(ctx, cluster.Options{Tools: tools, Dir: t.TempDir(), Gatekeeper: true, GatekeeperPre323: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = oc.Stop() })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("old Gatekeeper cluster logs:\n%s", oc.Logs())
		}
	})
	t.Logf("control plane with Gatekeeper %s up in %s", filepath.Base(tools.GatekeeperDir), time.Since(start).Round(time.Millisecond))

	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	helm := os.Getenv("EXEC_REAPER_HELM")
	if helm == "" {
		t.Fatal("EXEC_REAPER_HELM is not set")
	}
	oi, err := install.Setup(ctx, install.Options{Cluster: oc, RepoRoot: root, Helm: helm, DeleterReplicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := oi.Render(ctx, "policies.install=true", "policies.notice=false")
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
	// Gatekeeper enforces a constraint a moment after it is created: exec
	// until one is recorded.
	var rec record.Record
	pollCluster(t, "an exec recorded under the old Gatekeeper", 60*time.Second, func(ctx context.Context) bool {
		cctx, cancel := context.WithTimeout(ctx, commandTimeout)
		defer cancel()
		_, stderr, err := oc.Kubectl(cctx, aliceKC, "exec", "-n", "shop", "web", "-c", "app", "--", "sh")
		if err != nil && !noNode.MatchString(stderr) {
			t.Fatalf("exec failed for an unexpected reason: %v", err)
		}
		p, err := cs.CoreV1().Pods("shop").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		rec, err = record.Read(p.Labels, p.Annotations)
		return err == nil
	})
	if rec.First.User != alice || rec.First.Operation != record.OpExec {
		t.Errorf("entry %+v", rec.First)
	}
	t.Logf("exec recorded %s after start", time.Since(start).Round(time.Millisecond))

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

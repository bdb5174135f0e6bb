//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/test/fixture"
)

// constraintTimeout bounds the wait for Gatekeeper to enforce a constraint.
const constraintTimeout = 60 * time.Second

var execReaperConstraints = schema.GroupVersionResource{Group: "constraints.gatekeeper.sh", Version: "v1beta1", Resource: "k8sexecreaper"}

// defaultConstraint is the name of constraints/default.yaml's constraint.
const defaultConstraint = "exec-reaper"

// ownNamespace creates ns for constraints of the test's own: the suite's
// default constraint (ttl 5 s) stops matching it.
func ownNamespace(t *testing.T, ns string) string {
	t.Helper()
	namespace(t, ns)
	ctx := context.Background()
	cs := c.Dynamic().Resource(execReaperConstraints)
	poll(t, "the default constraint to exclude "+ns, constraintTimeout, func(ctx context.Context) (bool, error) {
		obj, err := cs.Get(ctx, defaultConstraint, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		excluded, _, _ := unstructured.NestedStringSlice(obj.Object, "spec", "match", "excludedNamespaces")
		if slices.Contains(excluded, ns) {
			return true, nil
		}
		if err := unstructured.SetNestedStringSlice(obj.Object, append(excluded, ns), "spec", "match", "excludedNamespaces"); err != nil {
			return false, err
		}
		_, err = cs.Update(ctx, obj, metav1.UpdateOptions{})
		return err == nil, nil // a conflict: read again
	})
	waitEnforced(t, defaultConstraint)
	t.Cleanup(func() {
		obj, err := cs.Get(ctx, defaultConstraint, metav1.GetOptions{})
		if err != nil {
			return
		}
		excluded, _, _ := unstructured.NestedStringSlice(obj.Object, "spec", "match", "excludedNamespaces")
		_ = unstructured.SetNestedStringSlice(obj.Object, slices.DeleteFunc(excluded, func(s string) bool { return s == ns }), "spec", "match", "excludedNamespaces")
		_, _ = cs.Update(ctx, obj, metav1.UpdateOptions{})
	})
	return ns
}

// constraint creates a K8sExecReaper constraint matching only ns, and waits
// until Gatekeeper enforces it.
func constraint(t *testing.T, name, ns, action string, parameters map[string]any) {
	t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "constraints.gatekeeper.sh/v1beta1",
		"kind":       "K8sExecReaper",
		"metadata":   map[string]any{"name": name},
		"spec": map[string]any{
			"enforcementAction": action,
			"match": map[string]any{
				"kinds":      []any{map[string]any{"apiGroups": []any{""}, "kinds": []any{"PodExecOptions", "PodAttachOptions", "Pod"}}},
				"namespaces": []any{ns},
			},
			"parameters": parameters,
		},
	}}
	t.Cleanup(func() {
		_ = c.Dynamic().Resource(execReaperConstraints).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	createConstraint(t, obj)
}

// createConstraint creates the K8sExecReaper constraint obj (retrying while
// Gatekeeper has not yet served its kind; one that exists already is kept)
// and waits until Gatekeeper enforces it.
func createConstraint(t testing.TB, obj *unstructured.Unstructured) {
	t.Helper()
	cs := c.Dynamic().Resource(execReaperConstraints)
	poll(t, "constraint "+obj.GetName()+" created", constraintTimeout, func(ctx context.Context) (bool, error) {
		_, err := cs.Create(ctx, obj, metav1.CreateOptions{})
		return err == nil || apierrors.IsAlreadyExists(err), nil
	})
	waitEnforced(t, obj.GetName())
}

// bindDevelopers grants subject the suite's developer role (exec, attach,
// debug and port-forward everywhere) through ClusterRoleBinding name; one
// that exists already is kept.
func bindDevelopers(ctx context.Context, name string, subject rbacv1.Subject) error {
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "e2e-developer"},
		Subjects:   []rbacv1.Subject{subject},
	}
	if _, err := c.Client().RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// waitEnforced waits until every Gatekeeper pod reports the constraint's
// current generation enforced.
func waitEnforced(t testing.TB, name string) {
	t.Helper()
	cs := c.Dynamic().Resource(execReaperConstraints)
	poll(t, "constraint "+name+" enforced", constraintTimeout, func(ctx context.Context) (bool, error) {
		obj, err := cs.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		byPod, _, _ := unstructured.NestedSlice(obj.Object, "status", "byPod")
		if len(byPod) == 0 {
			return false, nil
		}
		for _, p := range byPod {
			m, _ := p.(map[string]any)
			gen, _, _ := unstructured.NestedInt64(m, "observedGeneration")
			enforced, _, _ := unstructured.NestedBool(m, "enforced")
			if !enforced || gen != obj.GetGeneration() {
				return false, nil
			}
		}
		return true, nil
	})
}

// recordedTTL is how long after its entry a record's deadline is, to the
// second (entries keep whole seconds, deadlines round up).
func recordedTTL(rec record.Record) time.Duration { return rec.Deadline.Sub(rec.First.Time) }

// TestEarliestDeadlineWins: two deny constraints with ttls of 20 s and 45 s
// match one namespace, so every exec makes two provider calls for one
// admission, in an order Gatekeeper chooses. The 20 s deadline must win every
// time, with one entry and one Event, and the pod must go then.
func TestEarliestDeadlineWins(t *testing.T) {
	ns := ownNamespace(t, "e2e-two-ttls")
	constraint(t, "e2e-ttl-20s", ns, "deny", map[string]any{"ttl": "20s", "failurePolicy": "Fail"})
	constraint(t, "e2e-ttl-45s", ns, "deny", map[string]any{"ttl": "45s", "failurePolicy": "Fail"})
	// Status may run ahead of the webhook's view: wait until an exec is
	// recorded under both constraints and not the default one.
	poll(t, "both constraints in force", constraintTimeout, func(context.Context) (bool, error) {
		pod := barePod(t, ns, fmt.Sprintf("warmup-%d", time.Now().UnixNano()), appLabels)
		kubectlExec(t, aliceKubeconfig, pod, "true")
		d := recordedTTL(waitRecord(t, pod))
		return d >= 20*time.Second && d <= 21*time.Second, nil
	})

	const execs = 5
	var first record.Record
	var gone func(time.Duration) (time.Time, bool)
	for i := range execs {
		pod := barePod(t, ns, fmt.Sprintf("web-%d", i), appLabels)
		if i == 0 {
			gone = watchGone(t, pod)
		}
		kubectlExec(t, aliceKubeconfig, pod, "sh", "-c", "echo drift")
		rec := waitRecord(t, pod)
		if d := recordedTTL(rec); d < 20*time.Second || d > 21*time.Second {
			t.Errorf("exec %d: deadline %s is %s after the entry, want the shorter ttl, 20s", i, rec.Deadline.Format(time.RFC3339), d)
		}
		if rec.Entries != 1 {
			t.Errorf("exec %d: %d entries, want 1", i, rec.Entries)
		}
		ev := waitEvents(t, pod, provider.ReasonEntered, 1)[0]
		// The Event is written off the admission path and may first show the
		// longer ttl's deadline, then be updated.
		poll(t, "the Event to tell the deadline", recordTimeout, func(ctx context.Context) (bool, error) {
			ev = events(t, pod, provider.ReasonEntered)[0]
			return strings.Contains(ev.Message, rec.Deadline.UTC().Format(time.RFC3339)), nil
		})
		if i == 0 {
			first = rec
		}
	}
	assertEvictedOnTime(t, gone, first.Deadline)
	waitAllEvicted(t, ns, evictionTimeout)
}

// waitAllEvicted waits until every pod of ns is gone (each recorded, so
// evicted at its deadline), so that none of this test's evictions lands in a
// later test's counters.
func waitAllEvicted(t *testing.T, ns string, timeout time.Duration) {
	t.Helper()
	poll(t, "every pod of "+ns+" evicted", timeout, func(ctx context.Context) (bool, error) {
		list, err := c.Client().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				return false, nil
			}
		}
		return true, nil
	})
}

// TestLongEntriesAreRecorded: a kubectl exec with a 17 KB command by a user
// with hundreds of groups is recorded, shortened, with digests of the
// originals, under the default (warn) constraint and under the strict (deny)
// one, where a failure to record would refuse the exec.
func TestLongEntriesAreRecorded(t *testing.T) {
	ctx := context.Background()
	groups := make([]string, 300)
	for i := range groups {
		groups[i] = fmt.Sprintf("e2e-team-%03d", i)
	}
	const user = "carol@example.com"
	kubeconfig, err := c.Kubeconfig("many-groups", user, groups...)
	if err != nil {
		t.Fatal(err)
	}
	if err := bindDevelopers(ctx, "e2e-many-groups", fixture.User(user)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Client().RbacV1().ClusterRoleBindings().Delete(ctx, "e2e-many-groups", metav1.DeleteOptions{})
	})
	script := strings.Repeat("echo 0123456789abcdef; ", 800) // 17.6 KB
	command := []string{"sh", "-c", script}

	for _, tc := range []struct{ name, ns string }{{"default constraint", "e2e-long"}, {"strict constraint", strictNS}} {
		t.Run(tc.name, func(t *testing.T) {
			pod := barePod(t, namespace(t, tc.ns), "long-entry", appLabels)
			kubectlExec(t, kubeconfig, pod, command...)
			rec := waitRecord(t, pod)
			e := rec.First
			if e.User != user || e.Operation != record.OpExec {
				t.Errorf("entry by %q, operation %s", e.User, e.Operation)
			}
			for _, f := range []string{"command", "groups"} {
				if !slices.Contains(e.Truncated, f) || len(e.Digests[f]) != 64 {
					t.Errorf("entry truncated %q, digests %v; want %s shortened, with a digest", e.Truncated, e.Digests, f)
				}
			}
			if e.Digests["command"] != record.Digest(command) {
				t.Errorf("command digest %s, want the digest of the command run, %s", e.Digests["command"], record.Digest(command))
			}
			if len(e.Command) != 3 || e.Command[1] != "-c" || !strings.HasPrefix(script, e.Command[2]) || len(e.Groups) == 0 || e.Groups[0] != groups[0] {
				t.Errorf("entry keeps %d arguments and %d groups, want the beginning of each", len(e.Command), len(e.Groups))
			}
			p, err := c.Client().CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			size := 0
			for k, v := range p.Annotations {
				if strings.HasPrefix(k, record.Prefix) {
					size += len(k) + len(v)
				}
			}
			if size > record.MaxRecordBytes {
				t.Errorf("the record takes %d bytes of annotations, more than %d", size, record.MaxRecordBytes)
			}
			t.Logf("record: %d bytes of annotations; entry keeps %d bytes of the command's %d", size, len(strings.Join(e.Command, " ")), len(strings.Join(command, " ")))
			waitEvents(t, pod, provider.ReasonEntered, 1)
			waitAllEvicted(t, pod.Namespace, time.Until(rec.Deadline)+evictionTimeout)
		})
	}
}

// TestTrialModeEvictsNothing: a constraint in trial mode records its entries
// in the trial annotation, with an Event saying when the pod would go, and
// the pod is never evicted.
func TestTrialModeEvictsNothing(t *testing.T) {
	ns := ownNamespace(t, "e2e-trial")
	constraint(t, "e2e-trial", ns, "warn", map[string]any{"ttl": "3s", "mode": "trial"})
	pod := barePod(t, ns, "tried", appLabels)
	gone := watchGone(t, pod)
	var trial record.Trial
	poll(t, "the trial record", constraintTimeout, func(ctx context.Context) (bool, error) {
		kubectlExec(t, aliceKubeconfig, pod, "true")
		p, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if _, ok := p.Labels[record.DeadlineLabel]; ok {
			return false, fmt.Errorf("a trial entry set the deadline label: %v", p.Labels)
		}
		trial, err = record.ReadTrial(p.Annotations)
		return err == nil, nil
	})
	if trial.Last.User != alice || trial.Entries < 1 || trial.PodUID != pod.UID {
		t.Errorf("trial record = %+v", trial)
	}
	evs := waitEventsAtLeast(t, pod, provider.ReasonTrialEntry, recordTimeout)
	if !strings.Contains(evs[0].Message, "trial mode, nothing will happen") {
		t.Errorf("trial Event says %q", evs[0].Message)
	}
	if n := len(events(t, pod, provider.ReasonEntered)); n != 0 {
		t.Errorf("%d %s Events for a trial entry", n, provider.ReasonEntered)
	}
	// Past the would-be deadline and the deleter's reaction time, the pod is
	// still there.
	if at, ok := gone(time.Until(trial.WouldEvictAt) + 5*time.Second); ok {
		t.Fatalf("pod deleted at %s in trial mode", at.Format(time.RFC3339))
	}
	assertNoRecord(t, pod)
}

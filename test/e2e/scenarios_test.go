//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/exec-reaper/exec-reaper/deleter"
	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/test/cluster"
)

// Scenario 1: kubectl exec as a normal user into a Deployment's pod on the
// node: the command runs and changes the container; exec-reaper records it,
// and at the deadline the pod stops gracefully; the ReplicaSet's
// replacement runs from the image, without the change.
func TestExecIsRecordedAndEvicted(t *testing.T) {
	ns := namespace(t, "e2e-exec")
	pod := &nodeDeployment(t, ns, "web", 1, appLabels)[0]
	ended := watchTermination(t, pod)

	evictedBefore := evictions(t, "evicted")
	before := time.Now().Truncate(time.Second)
	const hotfix = "echo drift > /www/index.html; cat /www/index.html"
	callsBefore := externalDataCalls(t)
	out := kubectlOK(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "sh", "-c", hotfix)
	if out != "drift\n" {
		t.Errorf("kubectl exec printed %q, want the command's output %q", out, "drift\n")
	}
	if got := httpGet(t, pod); got != "drift\n" {
		t.Errorf("the exec'd pod serves %q, want the file the exec wrote", got)
	}
	rec := waitRecord(t, pod)
	// Gatekeeper's own count: one admission, so one call to the provider.
	if calls := externalDataCalls(t) - callsBefore; calls != 1 {
		t.Errorf("one kubectl exec made %v external-data calls, want 1", calls)
	}

	if rec.PodUID != pod.UID {
		t.Errorf("record bound to %s, want pod UID %s", rec.PodUID, pod.UID)
	}
	e := rec.First
	if e.User != alice || !slices.Contains(e.Groups, "dev") || e.Operation != record.OpExec || e.Container != "app" ||
		!slices.Equal(e.Command, []string{"sh", "-c", hotfix}) {
		t.Errorf("entry = %+v", e)
	}
	if e.Time.Before(before) || e.Time.After(time.Now()) {
		t.Errorf("entry time %s outside the exec", e.Time)
	}
	// The entry keeps whole seconds; the deadline counts from the exact
	// time, rounded up.
	if want := e.Time.Add(TTL); !rec.Deadline.Equal(want) && !rec.Deadline.Equal(want.Add(time.Second)) {
		t.Errorf("deadline %s, want entry time + ttl = %s (rounded up to the second)", rec.Deadline, want)
	}
	// Against a real kubelet one kubectl exec is one admission (WebSocket
	// is agreed at once): one entry, one Event.
	if rec.Entries != 1 {
		t.Errorf("entries = %d, want 1", rec.Entries)
	}
	ev := waitEvents(t, pod, provider.ReasonEntered, 1)[0]
	if !strings.Contains(ev.Message, alice) || !strings.Contains(ev.Message, rec.Deadline.Format(time.RFC3339)) {
		t.Errorf("event message %q lacks the user or the deadline", ev.Message)
	}

	tm, ok := ended(time.Until(rec.Deadline) + evictionTimeout + nodeGracePeriod*time.Second)
	if !ok || tm.MarkedAt.IsZero() {
		t.Fatalf("pod not evicted and gone by %s", rec.Deadline.Add(evictionTimeout))
	}
	lag := tm.MarkedAt.Sub(rec.Deadline)
	if lag < 0 || lag > evictionSlack {
		t.Errorf("pod evicted %s after its deadline, want within [0, %s]", lag, evictionSlack)
	}
	assertGraceful(t, tm)
	waitEvents(t, pod, deleter.ReasonEvicted, 1)

	repl := waitReadyPods(t, ns, appLabels, 1, map[string]bool{string(pod.UID): true})[0]
	// Seen Ready by this poll (50 ms); the condition's own time has whole
	// seconds only.
	seenReady := time.Now()
	t.Logf("deadline → evicted %s, → old pod gone %s, → replacement %s seen Ready %s",
		lag.Round(time.Millisecond), tm.GoneAt.Sub(rec.Deadline).Round(time.Millisecond), repl.Name,
		seenReady.Sub(rec.Deadline).Round(time.Millisecond))
	if got := httpGet(t, &repl); got != cluster.BusyboxIndex {
		t.Errorf("the replacement serves %q, want the image's %q: the exec's change survived", got, cluster.BusyboxIndex)
	}
	if _, err := record.Read(repl.Labels, repl.Annotations); err == nil {
		t.Errorf("the replacement %s carries a record", repl.Name)
	}
	// Two replicas run; the metrics of both together show one eviction.
	poll(t, "the eviction counted", recordTimeout, func(context.Context) (bool, error) {
		return evictions(t, "evicted") > evictedBefore, nil
	})
	if n := evictions(t, "evicted") - evictedBefore; n != 1 {
		t.Errorf("%v evictions counted across the deleter replicas, want 1", n)
	}
}

// Scenario 2: kubectl attach reaches the container's process, and kubectl
// debug runs an ephemeral container; both are recorded and evicted.
func TestAttachAndDebugAreRecordedAndEvicted(t *testing.T) {
	ns := namespace(t, "e2e-attach-debug")
	t.Run("attach", func(t *testing.T) {
		spec := nodeSpec()
		// The shell reads what attach sends and answers on stdout; httpd
		// keeps the pod Ready.
		spec.Containers[0].Command = []string{"sh", "-c", fmt.Sprintf(
			`trap 'echo %q > /dev/termination-log; exit 0' TERM; httpd -p %d -h %s; while read line; do echo "got: $line"; done; sleep 3600 & wait`,
			gracefulMessage, webPort, cluster.BusyboxWebRoot)}
		pod := nodePod(t, ns, "attached", appLabels, &spec)
		ended := watchTermination(t, pod)
		callsBefore := externalDataCalls(t)
		stdout, stderr := kubectlAttach(t, aliceKubeconfig, pod, "hello from attach", "got: hello from attach")
		if !strings.Contains(stdout, "got: hello from attach") {
			t.Errorf("kubectl attach did not reach the process: stdout %q, stderr %q", stdout, stderr)
		}
		rec := waitRecord(t, pod)
		if rec.First.Operation != record.OpAttach || rec.First.Container != "app" || len(rec.First.Command) != 0 {
			t.Errorf("entry = %+v", rec.First)
		}
		t.Logf("one kubectl attach: %d entries, %v external-data calls", rec.Entries, externalDataCalls(t)-callsBefore)
		if rec.Entries != 1 {
			t.Errorf("entries = %d, want 1 (one admission per attach against a real kubelet)", rec.Entries)
		}
		waitEvents(t, pod, provider.ReasonEntered, 1)
		tm, ok := ended(time.Until(rec.Deadline) + evictionTimeout + nodeGracePeriod*time.Second)
		if !ok {
			t.Fatal("attached pod not evicted")
		}
		if lag := tm.MarkedAt.Sub(rec.Deadline); lag < 0 || lag > evictionSlack {
			t.Errorf("evicted %s after the deadline", lag)
		}
		assertGraceful(t, tm)
	})
	t.Run("debug", func(t *testing.T) {
		pod := nodePod(t, ns, "debugged", appLabels, nil)
		ended := watchTermination(t, pod)
		callsBefore := externalDataCalls(t)
		_, stderr, err := kubectl(t, aliceKubeconfig, "debug", "-n", ns, pod.Name, "--image="+cluster.BusyboxImage,
			"--image-pull-policy=Never", "-c", "debugger", "--target=app", "--", "sh", "-c", "id -u; ls /proc/1/root/www")
		if err != nil {
			t.Fatalf("kubectl debug: %v\n%s", err, stderr)
		}
		rec := waitRecord(t, pod)
		if rec.First.Operation != record.OpDebug || rec.First.Container != "debugger" ||
			!slices.Equal(rec.First.Command, []string{"sh", "-c", "id -u; ls /proc/1/root/www"}) {
			t.Errorf("entry = %+v", rec.First)
		}
		// The ephemeral container really ran, in the app's process
		// namespace (--target): it sees the app's files through /proc/1.
		var logs string
		poll(t, "the ephemeral container's output", nodePodTimeout, func(ctx context.Context) (bool, error) {
			out, _, err := c.Kubectl(ctx, "", "logs", "-n", ns, pod.Name, "-c", "debugger")
			logs = out
			return err == nil && strings.Contains(out, "index.html"), nil
		})
		if logs != "0\nindex.html\n" {
			t.Errorf("the debug container printed %q, want uid 0 and the app's index.html", logs)
		}
		waitEvents(t, pod, provider.ReasonEntered, 1)
		t.Logf("one kubectl debug: %d entries, %v external-data calls", rec.Entries, externalDataCalls(t)-callsBefore)
		tm, ok := ended(time.Until(rec.Deadline) + evictionTimeout + nodeGracePeriod*time.Second)
		if !ok {
			t.Fatal("debugged pod not evicted")
		}
		if lag := tm.MarkedAt.Sub(rec.Deadline); lag < 0 || lag > evictionSlack {
			t.Errorf("evicted %s after the deadline", lag)
		}
		assertGraceful(t, tm)
	})
}

// Scenario 2b: kubectl cp into and out of a running pod.
func TestCopyInAndOut(t *testing.T) {
	ns := namespace(t, "e2e-cp")
	pod := nodePod(t, ns, "copied", appLabels, nil)
	ended := watchTermination(t, pod)
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	if err := os.WriteFile(in, []byte("copied in\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	callsBefore := externalDataCalls(t)
	// kubectl cp resolves relative local paths; run it on absolute ones.
	kubectlOK(t, aliceKubeconfig, "cp", "-c", "app", in, ns+"/"+pod.Name+":/www/in.txt")
	if got := httpGetURL(t, podURL(t, pod, "/in.txt")); got != "copied in\n" {
		t.Errorf("the pod serves %q after kubectl cp in", got)
	}
	afterIn := waitRecord(t, pod)
	callsIn := externalDataCalls(t) - callsBefore
	out := filepath.Join(dir, "out.txt")
	kubectlOK(t, aliceKubeconfig, "cp", "-c", "app", ns+"/"+pod.Name+":/www/index.html", out)
	b, err := os.ReadFile(out)
	if err != nil || string(b) != cluster.BusyboxIndex {
		t.Errorf("kubectl cp out wrote %q (%v), want the pod's index.html", b, err)
	}
	var rec record.Record
	poll(t, "the copy out recorded", recordTimeout, func(context.Context) (bool, error) {
		rec = waitRecord(t, pod)
		return rec.Entries > afterIn.Entries, nil
	})
	t.Logf("kubectl cp in: %d entries, %v external-data calls; cp out: %d more entries, %v more calls",
		afterIn.Entries, callsIn, rec.Entries-afterIn.Entries, externalDataCalls(t)-callsBefore-callsIn)
	// cp in is two execs (test -d, then tar -x), cp out one (tar -c).
	if afterIn.Entries != 2 || rec.Entries != 3 {
		t.Errorf("entries after cp in = %d, after cp out = %d; want 2 and 3", afterIn.Entries, rec.Entries)
	}
	if rec.First.Operation != record.OpExec || !slices.Contains(rec.Last.Command, "tar") {
		t.Errorf("record = %+v", rec)
	}
	if !rec.Deadline.Equal(afterIn.Deadline) {
		t.Errorf("the copy out moved the deadline from %s to %s", afterIn.Deadline, rec.Deadline)
	}
	tm, ok := ended(time.Until(rec.Deadline) + evictionTimeout + nodeGracePeriod*time.Second)
	if !ok {
		t.Fatal("copied pod not evicted")
	}
	if lag := tm.MarkedAt.Sub(rec.Deadline); lag < 0 || lag > evictionSlack {
		t.Errorf("evicted %s after the deadline", lag)
	}
	assertGraceful(t, tm)
}

// podURL is the URL of path on pod's web server.
func podURL(t *testing.T, pod *corev1.Pod, path string) string {
	t.Helper()
	p, err := c.Client().CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("http://%s:%d%s", p.Status.PodIP, webPort, path)
}

// Scenario 2c: kubectl port-forward carries a request, and is recorded
// where the constraint opts in (portForward: true).
func TestPortForwardOptIn(t *testing.T) {
	ns := namespace(t, portForwardNS)
	pod := nodePod(t, ns, "forwarded", appLabels, nil)
	ended := watchTermination(t, pod)
	callsBefore := externalDataCalls(t)
	port := portForward(t, aliceKubeconfig, pod)
	if got := httpGetURL(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); got != cluster.BusyboxIndex {
		t.Errorf("GET through kubectl port-forward = %q, want the pod's page", got)
	}
	rec := waitRecord(t, pod)
	if rec.First.Operation != record.OpPortForward || rec.First.User != alice {
		t.Errorf("entry = %+v", rec.First)
	}
	t.Logf("one kubectl port-forward with one request: %d entries, %v external-data calls", rec.Entries, externalDataCalls(t)-callsBefore)
	tm, ok := ended(time.Until(rec.Deadline) + evictionTimeout + nodeGracePeriod*time.Second)
	if !ok {
		t.Fatal("forwarded pod not evicted")
	}
	if lag := tm.MarkedAt.Sub(rec.Deadline); lag < 0 || lag > evictionSlack {
		t.Errorf("evicted %s after the deadline", lag)
	}
	assertGraceful(t, tm)

	// Without the opt-in (the default constraint), port-forward works and
	// is not recorded.
	plain := namespace(t, "e2e-portforward-default")
	other := nodePod(t, plain, "not-recorded", appLabels, nil)
	port = portForward(t, aliceKubeconfig, other)
	if got := httpGetURL(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); got != cluster.BusyboxIndex {
		t.Errorf("GET through kubectl port-forward = %q", got)
	}
	sentinel := barePod(t, plain, "sentinel", appLabels)
	kubectlExec(t, aliceKubeconfig, sentinel, "true")
	waitRecord(t, sentinel)
	assertNoRecord(t, other)
}

// Scenario 3: exempt user, exempt group and excluded namespace.
func TestExemptionsRecordNothing(t *testing.T) {
	ns := namespace(t, "e2e-exempt")
	breakglassKubeconfig, err := c.Kubeconfig("breakglass", breakglass, "system:authenticated")
	if err != nil {
		t.Fatal(err)
	}
	oncallKubeconfig, err := c.Kubeconfig("oncall", "bob@example.com", oncall, "system:authenticated")
	if err != nil {
		t.Fatal(err)
	}
	excluded := namespace(t, excludedNS)
	cases := []struct {
		name       string
		kubeconfig string
		ns         string
	}{
		{"exempt user", breakglassKubeconfig, ns},
		{"exempt group", oncallKubeconfig, ns},
		{"excluded namespace", aliceKubeconfig, excluded},
	}
	// A sentinel exec by alice, recorded, proves each exec above reached
	// Gatekeeper and the provider with the same policy in force.
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := barePod(t, tc.ns, "exempt-"+strings.ReplaceAll(tc.name, " ", "-"), appLabels)
			kubectlExec(t, tc.kubeconfig, pod, "true")
			sentinel := barePod(t, ns, "sentinel-"+strings.ReplaceAll(tc.name, " ", "-"), appLabels)
			kubectlExec(t, aliceKubeconfig, sentinel, "true")
			waitRecord(t, sentinel)
			assertNoRecord(t, pod)
			if evs := events(t, pod, provider.ReasonEntered); len(evs) != 0 {
				t.Errorf("exempt exec produced events: %+v", evs)
			}
		})
	}
}

// Scenario 4: a second exec later never moves the deadline.
func TestReentryKeepsDeadline(t *testing.T) {
	ns := namespace(t, "e2e-reentry")
	pod := barePod(t, ns, "twice", appLabels)
	gone := watchGone(t, pod)
	kubectlExec(t, aliceKubeconfig, pod, "true")
	first := waitRecord(t, pod)
	// Wait for the next second, so the second entry is later than the first.
	poll(t, "a later second", 2*time.Second, func(context.Context) (bool, error) {
		return time.Now().Truncate(time.Second).After(first.First.Time), nil
	})
	kubectlExec(t, aliceKubeconfig, pod, "cat", "/etc/shadow")
	var second record.Record
	poll(t, "the second entry", recordTimeout, func(ctx context.Context) (bool, error) {
		second = waitRecord(t, pod)
		return second.Entries == 2, nil
	})
	if !second.Deadline.Equal(first.Deadline) {
		t.Errorf("deadline moved from %s to %s", first.Deadline, second.Deadline)
	}
	if !slices.Equal(second.Last.Command, []string{"cat", "/etc/shadow"}) || second.First.RequestUID != first.First.RequestUID {
		t.Errorf("second record = %+v", second)
	}
	waitEvents(t, pod, provider.ReasonEntered, 2)
	assertEvictedOnTime(t, gone, first.Deadline)
}

// Scenario 5: a pod deleted and recreated with the same name (as a
// StatefulSet does) before the deadline is not evicted, even when the new
// pod carries the old pod's labels and annotations.
func TestRecreatedPodIsNotEvicted(t *testing.T) {
	ns := namespace(t, "e2e-recreate")
	ctx := context.Background()
	pod := barePod(t, ns, "db-0", appLabels)
	kubectlExec(t, aliceKubeconfig, pod, "true")
	rec := waitRecord(t, pod)
	old, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Client().CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "old pod gone", podTimeout, func(ctx context.Context) (bool, error) {
		_, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return err != nil, nil
	})
	copied := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: ns, Labels: old.Labels, Annotations: old.Annotations},
		Spec:       appSpec(),
	}
	fresh, err := c.Client().CoreV1().Pods(ns).Create(ctx, copied, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.UID == pod.UID {
		t.Fatal("recreated pod kept its UID")
	}
	// A sentinel recorded after the copy, with a deadline after the copy's,
	// tells when the deleter has passed the copy's deadline.
	poll(t, "a later second", 2*time.Second, func(context.Context) (bool, error) {
		return time.Now().Truncate(time.Second).After(rec.First.Time), nil
	})
	sentinel := barePod(t, ns, "sentinel", appLabels)
	sentinelGone := watchGone(t, sentinel)
	kubectlExec(t, aliceKubeconfig, sentinel, "true")
	srec := waitRecord(t, sentinel)
	if !srec.Deadline.After(rec.Deadline) {
		t.Fatalf("sentinel deadline %s not after %s", srec.Deadline, rec.Deadline)
	}
	assertEvictedOnTime(t, sentinelGone, srec.Deadline)
	still, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil || still.UID != fresh.UID || still.DeletionTimestamp != nil {
		t.Fatalf("the recreated pod was evicted: %v %+v", err, still)
	}
	if n := len(events(t, fresh, deleter.ReasonEvicted)); n != 0 {
		t.Errorf("%d eviction events on the recreated pod", n)
	}
}

// Scenario 6: a PodDisruptionBudget with real readiness. One Ready replica
// and minAvailable 1: the eviction is refused at the deadline. Scaling the
// Deployment up gives a second pod that becomes Ready through its readiness
// probe; only then does the budget allow the eviction, and the deleter's
// retry evicts the pod.
func TestPodDisruptionBudgetHolds(t *testing.T) {
	ns := namespace(t, "e2e-pdb")
	ctx := context.Background()
	labels := map[string]string{"app": "guarded"}
	pod := &nodeDeployment(t, ns, "guarded", 1, labels)[0]
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "guard", Namespace: ns},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: ptrIntStr(intstr.FromInt32(1)),
			Selector:     &metav1.LabelSelector{MatchLabels: labels},
		},
	}
	if _, err := c.Client().PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the disruption controller to observe the PDB", podTimeout, func(ctx context.Context) (bool, error) {
		p, err := c.Client().PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "guard", metav1.GetOptions{})
		return err == nil && p.Status.ObservedGeneration == p.Generation && p.Status.CurrentHealthy == 1, nil
	})
	ended := watchTermination(t, pod)

	kubectlOK(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "true")
	rec := waitRecord(t, pod)
	evs := waitEventsAtLeast(t, pod, deleter.ReasonEvictionRefused, time.Until(rec.Deadline)+evictionTimeout)
	if !strings.Contains(evs[0].Message, "disruption budget") {
		t.Errorf("refusal event %q does not say why", evs[0].Message)
	}
	if p, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
		t.Fatalf("pod evicted despite its PodDisruptionBudget: %v", err)
	}

	// A second replica, Ready only after its probe passes.
	if _, _, err := kubectl(t, "", "scale", "deployment/guarded", "-n", ns, "--replicas=2"); err != nil {
		t.Fatal(err)
	}
	second := waitReadyPods(t, ns, labels, 1, map[string]bool{string(pod.UID): true})[0]
	secondReady := readyTime(&second)
	tm, ok := ended(evictionTimeout + nodeGracePeriod*time.Second)
	if !ok || tm.MarkedAt.IsZero() {
		t.Fatal("pod not evicted once a second replica was Ready and the budget allowed it")
	}
	// Ready times have whole seconds.
	if tm.MarkedAt.Before(secondReady.Truncate(time.Second)) {
		t.Errorf("evicted at %s, before the second replica was Ready at %s", tm.MarkedAt, secondReady)
	}
	t.Logf("evicted %s after the second replica was Ready (the deleter retries at most every second here)",
		tm.MarkedAt.Sub(secondReady).Round(time.Millisecond))
	assertGraceful(t, tm)
	waitEvents(t, pod, deleter.ReasonEvicted, 1)
	// The Deployment is back to two Ready replicas, the evicted one replaced.
	waitReadyPods(t, ns, labels, 2, map[string]bool{string(pod.UID): true})
}

func ptrIntStr(v intstr.IntOrString) *intstr.IntOrString { return &v }

func waitEventsAtLeast(t *testing.T, pod *corev1.Pod, reason string, timeout time.Duration) []corev1.Event {
	t.Helper()
	var evs []corev1.Event
	poll(t, reason+" event on "+pod.Name, timeout, func(context.Context) (bool, error) {
		evs = events(t, pod, reason)
		return len(evs) > 0, nil
	})
	return evs
}

// Scenario 8: the deleter restarted while a deadline is pending evicts on
// time, and two replicas evict exactly once.
func TestDeleterFailover(t *testing.T) {
	ns := namespace(t, "e2e-failover")
	ctx := context.Background()
	pod := barePod(t, ns, "pending-deadline", appLabels)
	gone := watchGone(t, pod)
	kubectlExec(t, aliceKubeconfig, pod, "true")
	rec := waitRecord(t, pod)

	// Stop whichever replica leads (SIGTERM: it hands the lease over), then
	// start it again; the other one takes over.
	leader := leaderIndex(t)
	if err := inst.StopDeleter(leader); err != nil {
		t.Fatal(err)
	}
	if err := inst.StartDeleter(ctx, leader); err != nil {
		t.Fatal(err)
	}
	if l := leaderIndex(t); l == leader && time.Now().Before(rec.Deadline) {
		t.Logf("replica %d leads again after its restart", l)
	}
	assertEvictedOnTime(t, gone, rec.Deadline)
	// Exactly one eviction: one Evicted event, and the other replica saw
	// nothing to do.
	waitEvents(t, pod, deleter.ReasonEvicted, 1)
}

// leaderIndex returns which deleter replica holds the Lease.
func leaderIndex(t *testing.T) int {
	t.Helper()
	var idx = -1
	poll(t, "a deleter leader", podTimeout, func(ctx context.Context) (bool, error) {
		lease, err := c.Client().CoordinationV1().Leases("gatekeeper-system").Get(ctx, "exec-reaper-deleter", metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil {
			return false, nil
		}
		for n := range inst.Deleters {
			if *lease.Spec.HolderIdentity == deleterName(n) && inst.Deleters[n] != nil {
				idx = n
				return true, nil
			}
		}
		return false, nil
	})
	return idx
}

func deleterName(n int) string { return fmt.Sprintf("exec-reaper-deleter-%d", n) }

// Scenario 9: what people see. kubectl debug prints the admission warning;
// kubectl exec and attach do not print warnings (client-go drops them), so
// the Event is their channel; the strict constraint's denial reaches the
// exec user and says why.
func TestWhatUsersSee(t *testing.T) {
	ns := namespace(t, "e2e-ux")
	pod := barePod(t, ns, "visible", appLabels)
	_, stderr, err := kubectl(t, aliceKubeconfig, "debug", "-n", ns, pod.Name, "--image="+cluster.BusyboxImage, "--image-pull-policy=Never", "-c", "dbg", "--", "sh")
	if err != nil {
		t.Fatalf("kubectl debug: %v", err)
	}
	if !strings.Contains(stderr, "Warning: [exec-reaper] exec-reaper recorded this debug into pod "+ns+"/"+pod.Name) {
		t.Errorf("kubectl debug did not print the notice; stderr:\n%s", stderr)
	}
	exec := kubectlExec(t, aliceKubeconfig, barePod(t, ns, "quiet", appLabels), "true")
	if strings.Contains(exec, "Warning:") {
		t.Errorf("kubectl exec printed a warning (measured not to; update the README): %s", exec)
	}
}

// Scenario 7: provider down, then back. Runs last among the policy tests:
// it stops the provider.
func TestProviderDown(t *testing.T) {
	ns := namespace(t, "e2e-down")
	strict := namespace(t, strictNS)
	if err := inst.StopProvider(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if inst.Provider == nil {
			_ = inst.StartProvider(context.Background())
		}
	})

	// The default constraint fails open: exec admitted, nothing recorded,
	// and kubectl debug shows why.
	pod := barePod(t, ns, "open", appLabels)
	kubectlExec(t, aliceKubeconfig, pod, "true")
	assertNoRecord(t, pod)
	_, stderr, err := kubectl(t, aliceKubeconfig, "debug", "-n", ns, pod.Name, "--image="+cluster.BusyboxImage, "--image-pull-policy=Never", "-c", "dbg", "--", "sh")
	if err != nil {
		t.Fatalf("kubectl debug with the provider down: %v", err)
	}
	if !strings.Contains(stderr, "exec-reaper could not record this debug") || !strings.Contains(stderr, "the provider did not answer") {
		t.Errorf("kubectl debug did not warn that recording failed:\n%s", stderr)
	}

	// The strict constraint fails closed, and says why to the exec user.
	guarded := barePod(t, strict, "closed", appLabels)
	_, stderr, err = kubectl(t, aliceKubeconfig, "exec", "-n", strict, guarded.Name, "-c", "app", "--", "true")
	if err == nil || !strings.Contains(stderr, "exec-reaper denied this exec into pod "+strict+"/"+guarded.Name) ||
		!strings.Contains(stderr, "must be recorded first") || !strings.Contains(stderr, "the provider did not answer") {
		t.Fatalf("strict exec not denied with a clear message: %v\n%s", err, stderr)
	}
	assertNoRecord(t, guarded)

	// Provider back: recording works again, in both.
	if err := inst.StartProvider(context.Background()); err != nil {
		t.Fatal(err)
	}
	kubectlExec(t, aliceKubeconfig, guarded, "true")
	waitRecord(t, guarded)
	again := barePod(t, ns, "again", appLabels)
	kubectlExec(t, aliceKubeconfig, again, "true")
	waitRecord(t, again)
}

//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/test/cluster"
	"github.com/exec-reaper/exec-reaper/test/fixture"
)

// Timeouts of the suite's waits.
const (
	podTimeout      = 30 * time.Second
	recordTimeout   = 10 * time.Second
	evictionTimeout = TTL + 15*time.Second
	// evictionSlack is how late after its deadline a pod may be evicted.
	evictionSlack  = time.Second
	commandTimeout = 30 * time.Second
)

// grantUsers lets alice (and the exempt users) exec, attach, debug and
// port-forward in every namespace, as a developer role would.
func grantUsers(ctx context.Context) error {
	var err error
	aliceKubeconfig, err = fixture.Developer{
		Role:       "e2e-developer",
		Kubeconfig: "alice",
		User:       alice,
		Groups:     []string{"dev", "system:authenticated"},
		Others:     []rbacv1.Subject{fixture.User(breakglass), fixture.Group(oncall)},
	}.Grant(ctx, c.Client(), c.Kubeconfig)
	return err
}

// failWithLogs prints every component's log when t fails.
func failWithLogs(t testing.TB) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("component logs:\n%s", c.Logs())
		}
	})
}

// namespace creates namespace name unless it exists, waits for its default
// ServiceAccount, and returns name.
func namespace(t testing.TB, name string) string {
	t.Helper()
	failWithLogs(t)
	if err := fixture.Namespace(context.Background(), c.Client(), name, podTimeout); err != nil {
		t.Fatal(err)
	}
	return name
}

// poll checks cond until it holds, and fails t when timeout passes first.
func poll(t testing.TB, what string, timeout time.Duration, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := fixture.Poll(context.Background(), what, timeout, cond); err != nil {
		t.Fatal(err)
	}
}

var appLabels = map[string]string{"app": "web"}

// admissionOnlyScheduler is a scheduler that does not exist: the suite's
// kube-scheduler leaves such pods alone (no binding, no status writes), so
// they never run on the suite's node. Tests of admission alone need no
// container, and are cheaper without one. See nodeSpec for pods that run.
// (A scheduler name rather than a scheduling gate or a node selector: a
// test may still bind such a pod itself with spec.nodeName, and may write
// its status without racing the scheduler.)
const admissionOnlyScheduler = "exec-reaper.test/admission-only"

// appSpec is the spec of an admission-only pod: it stays Pending, so
// kubectl exec is admitted and recorded and then fails with "does not have
// a host assigned".
func appSpec() corev1.PodSpec {
	return corev1.PodSpec{
		Containers:    []corev1.Container{{Name: "app", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever}},
		SchedulerName: admissionOnlyScheduler,
		// No kubelet ever runs these pods; do not wait on a grace period.
		TerminationGracePeriodSeconds: ptr.To[int64](0),
	}
}

// deployment creates a one-replica Deployment of admission-only pods (see
// appSpec) and returns its Pod, which stays Pending. nodeDeployment makes
// one whose pod runs.
//
//lint:ignore U1000 a helper for admission-only tests; the scenarios now use nodeDeployment.
func deployment(t *testing.T, ns string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if err := fixture.Deployment(ctx, c.Client(), ns, "web", 1, appLabels, appSpec()); err != nil {
		t.Fatal(err)
	}
	pods, err := fixture.WaitPods(ctx, c.Client(), ns, appLabels, 1, fixture.Wait{Timeout: podTimeout})
	if err != nil {
		t.Fatal(err)
	}
	return &pods[0]
}

// barePod creates an admission-only Pod (see appSpec) with no controller.
// nodePod makes one that runs.
func barePod(t *testing.T, ns, name string, labels map[string]string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}, Spec: appSpec()}
	pod, err := c.Client().CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// kubectl runs the real kubectl as kubeconfig ("" = admin) and returns its
// output and error.
func kubectl(t *testing.T, kubeconfig string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return fixture.Kubectl(context.Background(), c.Kubectl, commandTimeout, kubeconfig, args...)
}

// kubectlExec runs `kubectl exec` into pod's app container and asserts that
// the API server admitted it: with no node, the connection then fails.
func kubectlExec(t *testing.T, kubeconfig string, pod *corev1.Pod, command ...string) string {
	t.Helper()
	_, stderr, err := fixture.KubectlExec(context.Background(), c.Kubectl, commandTimeout, kubeconfig, pod, "app", command...)
	assertAdmitted(t, "exec", stderr, err)
	return stderr
}

// noNode matches what kubectl prints when an admitted request finds no node
// (admission-only pods), or when the command ran and failed in a running
// container.
var noNode = regexp.MustCompile(`does not have a host assigned|unable to upgrade connection|no such host|connection refused|command terminated with exit code`)

func assertAdmitted(t *testing.T, what, stderr string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if strings.Contains(stderr, "admission webhook") || strings.Contains(stderr, "denied") {
		t.Fatalf("%s was denied: %s", what, stderr)
	}
	if !noNode.MatchString(stderr) {
		t.Fatalf("%s failed for an unexpected reason: %v\n%s", what, err, stderr)
	}
}

// waitRecord waits for the record on pod and returns it.
func waitRecord(t *testing.T, pod *corev1.Pod) record.Record {
	t.Helper()
	var rec record.Record
	poll(t, "record on "+pod.Name, recordTimeout, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		rec, err = record.Read(p.Labels, p.Annotations)
		return err == nil, nil
	})
	return rec
}

// assertNoRecord asserts that pod carries no record.
func assertNoRecord(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	p, err := c.Client().CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Labels[record.DeadlineLabel]; ok {
		t.Fatalf("pod %s was recorded: %v", pod.Name, p.Annotations)
	}
}

// watchGone starts watching pod and returns a function that waits until
// the pod is deleted (or marked for deletion) and returns when that was seen.
func watchGone(t *testing.T, pod *corev1.Pod) func(timeout time.Duration) (time.Time, bool) {
	t.Helper()
	until := watchPod(t, pod, fixture.Marked)
	return func(timeout time.Duration) (time.Time, bool) {
		tm, ok := until(timeout)
		return tm.Gone(), ok
	}
}

// watchPod starts watching pod and returns a function that waits until done
// holds for what the watch saw, or timeout passes (false). The watch stops
// when t ends.
func watchPod(t *testing.T, pod *corev1.Pod, done func(termination) bool) func(timeout time.Duration) (termination, bool) {
	t.Helper()
	w, err := fixture.WatchPod(context.Background(), c.Client(), pod, "app")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return func(timeout time.Duration) (termination, bool) {
		tm, err := w.Until(context.Background(), timeout, done)
		if errors.Is(err, fixture.ErrNotYet) {
			return tm, false
		}
		if err != nil {
			t.Fatal(err)
		}
		return tm, true
	}
}

// assertEvictedOnTime waits for pod to go and asserts it went at its
// deadline: not before, and at most evictionSlack after.
func assertEvictedOnTime(t *testing.T, gone func(time.Duration) (time.Time, bool), deadline time.Time) time.Duration {
	t.Helper()
	at, ok := gone(time.Until(deadline) + evictionTimeout)
	if !ok {
		t.Fatalf("pod not evicted by %s", deadline.Add(evictionTimeout).Format(time.RFC3339))
	}
	lag := at.Sub(deadline)
	if lag < 0 {
		t.Fatalf("pod evicted %s before its deadline %s", -lag, deadline.Format(time.RFC3339))
	}
	if lag > evictionSlack {
		t.Fatalf("pod evicted %s after its deadline, more than %s", lag, evictionSlack)
	}
	t.Logf("evicted %s after the deadline", lag.Round(time.Millisecond))
	return lag
}

// events returns the Events on the pod with the given reason (core and
// events.k8s.io Events are the same objects).
func events(t *testing.T, pod *corev1.Pod, reason string) []corev1.Event {
	t.Helper()
	list, err := c.Client().CoreV1().Events(pod.Namespace).List(context.Background(), metav1.ListOptions{
		FieldSelector: fields.AndSelectors(
			fields.OneTermEqualSelector("involvedObject.uid", string(pod.UID)),
			fields.OneTermEqualSelector("reason", reason),
		).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// waitEvents waits until pod has n Events with reason, and asserts there
// are no more than n.
func waitEvents(t *testing.T, pod *corev1.Pod, reason string, n int) []corev1.Event {
	t.Helper()
	var evs []corev1.Event
	poll(t, fmt.Sprintf("%d %s events on %s", n, reason, pod.Name), recordTimeout, func(context.Context) (bool, error) {
		evs = events(t, pod, reason)
		return len(evs) >= n, nil
	})
	if len(evs) != n {
		t.Fatalf("%d %s events on %s, want %d: %+v", len(evs), reason, pod.Name, n, evs)
	}
	return evs
}

// metric sums the samples of name whose labels contain match in the text.
func metric(text, name string, matches ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) || !containsAll(line, matches) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// containsAll reports whether s contains every one of subs.
func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// evictions sums a result of the eviction counter over every running deleter.
func evictions(t *testing.T, result string) float64 {
	t.Helper()
	return deleterMetric(t, "exec_reaper_deleter_evictions_total", `result="`+result+`"`)
}

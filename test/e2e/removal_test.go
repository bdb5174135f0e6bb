//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/deleter"
	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/test/cluster"
)

// Removal: pacing per owner, what each kind of pod gets, giving up visibly,
// and quarantine. On the suite's node wherever readiness matters.

const (
	// pacedRemovalTimeout bounds the removal of three paced replicas: each
	// waits for the previous one's replacement to be Ready (2–5 s on the
	// node) and is looked at again every 2 s.
	pacedRemovalTimeout = 3 * time.Minute
	// quarantineRetention is how long the quarantine test keeps its pod.
	quarantineRetention = 20 * time.Second
)

// readyWatch follows the pods with labels in ns and remembers the fewest
// Ready, non-terminating pods seen at any moment after it started.
type readyWatch struct {
	mu     sync.Mutex
	pods   map[string]*corev1.Pod // UID → latest
	fewest int
	// marked is when each pod was first seen terminating.
	marked map[string]time.Time
	// readySince is when each pod was first seen Ready.
	readySince map[string]time.Time
}

func watchReady(t *testing.T, ns string, labels map[string]string) *readyWatch {
	t.Helper()
	sel := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})
	list, err := c.Client().CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	rw := &readyWatch{pods: map[string]*corev1.Pod{}, marked: map[string]time.Time{}, readySince: map[string]time.Time{}}
	for i := range list.Items {
		rw.see(&list.Items[i])
	}
	rw.fewest = rw.ready()
	w, err := c.Client().CoreV1().Pods(ns).Watch(context.Background(), metav1.ListOptions{LabelSelector: sel, ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	go func() {
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			rw.mu.Lock()
			if ev.Type == watch.Deleted {
				delete(rw.pods, string(p.UID))
			} else {
				rw.see(p)
			}
			rw.fewest = min(rw.fewest, rw.ready())
			rw.mu.Unlock()
		}
	}()
	return rw
}

// see records p; callers hold mu (or own rw alone).
func (rw *readyWatch) see(p *corev1.Pod) {
	rw.pods[string(p.UID)] = p
	if p.DeletionTimestamp != nil {
		if _, ok := rw.marked[string(p.UID)]; !ok {
			rw.marked[string(p.UID)] = time.Now()
		}
	}
	if isReady(p) && p.DeletionTimestamp == nil {
		if _, ok := rw.readySince[string(p.UID)]; !ok {
			rw.readySince[string(p.UID)] = time.Now()
		}
	}
}

func (rw *readyWatch) ready() int {
	n := 0
	for _, p := range rw.pods {
		if isReady(p) && p.DeletionTimestamp == nil {
			n++
		}
	}
	return n
}

// deleterMetric sums a metric's samples whose labels contain match over
// every running deleter.
func deleterMetric(t *testing.T, name, match string) float64 {
	t.Helper()
	var sum float64
	for n, d := range inst.Deleters {
		if d == nil {
			continue
		}
		text, err := inst.DeleterMetrics(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		sum += metric(text, name, match)
	}
	return sum
}

// TestRemovalPacedPerOwner: three replicas of one Deployment, entered
// within moments of each other and so due together, without a
// PodDisruptionBudget, go one at a time, each only once the previous one's
// replacement is Ready: never fewer than two Ready.
func TestRemovalPacedPerOwner(t *testing.T) {
	ns := namespace(t, "e2e-paced")
	labels := map[string]string{"app": "paced"}
	pods := nodeDeployment(t, ns, "paced", 3, labels)
	rw := watchReady(t, ns, labels)
	ended := make([]func(time.Duration) (termination, bool), len(pods))
	for i := range pods {
		ended[i] = watchTermination(t, &pods[i])
	}
	for i := range pods {
		kubectlOK(t, aliceKubeconfig, "exec", "-n", ns, pods[i].Name, "-c", "app", "--", "true")
	}
	deadlines := make([]time.Time, len(pods))
	shared := false // two pods share a deadline (whole seconds): one of them must wait
	for i := range pods {
		deadlines[i] = waitRecord(t, &pods[i]).Deadline
		if i > 0 && deadlines[i].Sub(deadlines[i-1]) > 2*time.Second {
			t.Logf("deadlines %s apart: the execs were slow", deadlines[i].Sub(deadlines[i-1]))
		}
		for j := range i {
			shared = shared || deadlines[j].Equal(deadlines[i])
		}
	}
	begin := time.Now()
	var tms []termination
	for i := range pods {
		tm, ok := ended[i](pacedRemovalTimeout - time.Since(begin))
		if !ok {
			t.Fatalf("entered pod %s not removed within %s", pods[i].Name, pacedRemovalTimeout)
		}
		tms = append(tms, tm)
	}
	rw.mu.Lock()
	fewest := rw.fewest
	marked := map[string]time.Time{}
	for k, v := range rw.marked {
		marked[k] = v
	}
	readySince := map[string]time.Time{}
	for k, v := range rw.readySince {
		readySince[k] = v
	}
	rw.mu.Unlock()
	if fewest < 2 {
		t.Errorf("the Deployment had %d Ready pods at one point, want never fewer than 2 of 3", fewest)
	}
	// One at a time: each entered pod is marked only after the one before
	// it is gone and a new (not entered) pod is Ready.
	entered := map[string]bool{}
	for _, p := range pods {
		entered[string(p.UID)] = true
	}
	order := make([]int, len(tms))
	for i := range order {
		order[i] = i
	}
	for i := range order {
		for j := i + 1; j < len(order); j++ {
			if tms[order[j]].MarkedAt.Before(tms[order[i]].MarkedAt) {
				order[i], order[j] = order[j], order[i]
			}
		}
	}
	for k := 1; k < len(order); k++ {
		prev, cur := tms[order[k-1]], tms[order[k]]
		if cur.MarkedAt.Before(prev.GoneAt) {
			t.Errorf("pod %s was taken at %s, before pod %s was gone at %s", pods[order[k]].Name,
				cur.MarkedAt.Format(time.StampMilli), pods[order[k-1]].Name, prev.GoneAt.Format(time.StampMilli))
		}
		replaced := false
		for uid, at := range readySince {
			if !entered[uid] && at.After(prev.MarkedAt) && at.Before(cur.MarkedAt) {
				replaced = true
			}
		}
		if !replaced {
			t.Errorf("pod %s was taken before a replacement of %s was Ready", pods[order[k]].Name, pods[order[k-1]].Name)
		}
	}
	for k, i := range order {
		t.Logf("entered pod %d (%s) taken %s after its deadline, gone %s after it", k+1, pods[i].Name,
			tms[i].MarkedAt.Sub(deadlines[i]).Round(time.Millisecond), tms[i].GoneAt.Sub(deadlines[i]).Round(time.Millisecond))
	}
	// A pod taken well after its own deadline waited on its owner: its
	// Events say so, once. (A pod due a second after the one before it may
	// find the replacement Ready already, and wait for nothing.)
	waited := 0
	for _, i := range order[1:] {
		if tms[i].MarkedAt.Sub(deadlines[i]) < time.Second {
			continue
		}
		waited++
		if evs := events(t, &pods[i], deleter.ReasonPaced); len(evs) == 0 {
			t.Errorf("no %s event on %s, which waited %s past its deadline for its owner", deleter.ReasonPaced, pods[i].Name,
				tms[i].MarkedAt.Sub(deadlines[i]).Round(time.Millisecond))
		}
	}
	if shared && waited == 0 {
		t.Errorf("two entered pods shared a deadline, yet none waited for its owner: pacing did not hold one back")
	}
	waitReadyPods(t, ns, labels, 3, entered)
}

// TestRemovalPerKind: a bare pod, a Job's pod and a DaemonSet's pod each get
// what the README's table says.
func TestRemovalPerKind(t *testing.T) {
	ns := namespace(t, "e2e-kinds")
	ctx := context.Background()

	t.Run("bare pod is evicted for good", func(t *testing.T) {
		pod := nodePod(t, ns, "bare", map[string]string{"app": "bare"}, nil)
		ended := watchTermination(t, pod)
		kubectlOK(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "true")
		rec := waitRecord(t, pod)
		if _, ok := ended(time.Until(rec.Deadline) + evictionTimeout + nodeGracePeriod*time.Second); !ok {
			t.Fatal("bare pod not evicted")
		}
		ev := waitEvents(t, pod, deleter.ReasonEvicted, 1)[0]
		if !strings.Contains(ev.Message, "for good") {
			t.Errorf("Evicted event %q does not say the pod is gone for good", ev.Message)
		}
	})

	t.Run("Job pod is evicted and counts as failed", func(t *testing.T) {
		spec := nodeSpec()
		spec.RestartPolicy = corev1.RestartPolicyNever
		// Exit non-zero on SIGTERM, as most programs do: nodeSpec's container
		// exits 0, and a Job pod that ends Succeeded may be counted as a
		// success rather than a failure (seen here once: Failed stayed 0).
		spec.Containers[0].Command[2] = strings.Replace(spec.Containers[0].Command[2], "exit 0", "exit 143", 1)
		job := &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: "batch", Namespace: ns},
			Spec: batchv1.JobSpec{
				BackoffLimit: ptr.To[int32](3),
				Template:     corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "batch"}}, Spec: spec},
			},
		}
		if _, err := c.Client().BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The Job starts a replacement for the evicted pod: delete both
		// when done, so nothing of this test outlives it.
		t.Cleanup(func() {
			_ = c.Client().BatchV1().Jobs(ns).Delete(context.Background(), job.Name,
				metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
		})
		pod := &waitReadyPods(t, ns, map[string]string{"app": "batch"}, 1, nil)[0]
		ended := watchTermination(t, pod)
		kubectlOK(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "true")
		rec := waitRecord(t, pod)
		if _, ok := ended(time.Until(rec.Deadline) + evictionTimeout + nodeGracePeriod*time.Second); !ok {
			t.Fatal("Job pod not evicted")
		}
		ev := waitEvents(t, pod, deleter.ReasonEvicted, 1)[0]
		if !strings.Contains(ev.Message, "backoffLimit") {
			t.Errorf("Evicted event %q does not say the Job counts it as a failure", ev.Message)
		}
		poll(t, "the Job to count the evicted pod as failed", podTimeout, func(ctx context.Context) (bool, error) {
			j, err := c.Client().BatchV1().Jobs(ns).Get(ctx, "batch", metav1.GetOptions{})
			return err == nil && j.Status.Failed >= 1, nil
		})
		waitReadyPods(t, ns, map[string]string{"app": "batch"}, 1, map[string]bool{string(pod.UID): true})
	})

	t.Run("DaemonSet pod is evicted and recreated on the same node", func(t *testing.T) {
		pod := enterDaemonSet(t, ns, "agent", nodeSpec())
		ev := waitEvents(t, pod, deleter.ReasonEvicted, 1)[0]
		if !strings.Contains(ev.Message, "same node") {
			t.Errorf("Evicted event %q does not say the DaemonSet recreates it on the same node", ev.Message)
		}
	})
}

// enterDaemonSet creates the DaemonSet name in ns running spec (deleted when
// the test ends), enters its pod on the node and waits until the deleters
// have removed it, and until the replacement the DaemonSet starts, which
// must be on the same node, is Ready. It returns the entered pod.
func enterDaemonSet(t *testing.T, ns, name string, spec corev1.PodSpec) *corev1.Pod {
	t.Helper()
	labels := map[string]string{"app": name}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
	dss := c.Client().AppsV1().DaemonSets(ns)
	if _, err := dss.Create(context.Background(), ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dss.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	pod := &waitReadyPods(t, ns, labels, 1, nil)[0]
	ended := watchTermination(t, pod)
	kubectlOK(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "true")
	rec := waitRecord(t, pod)
	if _, ok := ended(time.Until(rec.Deadline) + evictionTimeout + nodeGracePeriod*time.Second); !ok {
		t.Fatalf("DaemonSet %s's pod was not removed", name)
	}
	repl := waitReadyPods(t, ns, labels, 1, map[string]bool{string(pod.UID): true})[0]
	if repl.Spec.NodeName != pod.Spec.NodeName {
		t.Errorf("replacement on node %q, want %q", repl.Spec.NodeName, pod.Spec.NodeName)
	}
	return pod
}

// TestRemovalMirrorPodIsSkipped: a static pod's mirror is not evicted
// (that would delete only the API object; the kubelet keeps the containers
// running): the deleter says so once, counts it, and leaves it overdue.
func TestRemovalMirrorPodIsSkipped(t *testing.T) {
	ns := namespace(t, "e2e-mirror")
	ctx := context.Background()
	dir := c.StaticPodDir()
	if dir == "" {
		t.Fatal("the suite's node has no static pod directory")
	}
	static := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "static", Namespace: ns, Labels: map[string]string{"app": "static"}},
		Spec:       nodeSpec(),
	}
	static.Spec.AutomountServiceAccountToken = nil
	b, err := json.Marshal(static)
	if err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(dir, ns+"-static.json")
	if err := os.WriteFile(manifest, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mirrorName := "static-" + cluster.NodeName
	t.Cleanup(func() {
		_ = os.Remove(manifest)
		poll(t, "the mirror pod to go with its manifest", nodePodTimeout, func(ctx context.Context) (bool, error) {
			_, err := c.Client().CoreV1().Pods(ns).Get(ctx, mirrorName, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
	})
	pod := waitPodReady(t, ns, mirrorName)
	if _, ok := pod.Annotations[deleter.MirrorAnnotation]; !ok {
		t.Fatalf("pod %s has no %s annotation: not a mirror pod", pod.Name, deleter.MirrorAnnotation)
	}
	before := deleterMetric(t, "exec_reaper_deleter_gave_up_total", `reason="mirror"`)
	kubectlOK(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "true")
	rec := waitRecord(t, pod)

	evs := waitEventsAtLeast(t, pod, deleter.ReasonMirrorPod, time.Until(rec.Deadline)+evictionTimeout)
	if !strings.Contains(evs[0].Message, "kubelet keeps the containers running") {
		t.Errorf("event %q does not say why", evs[0].Message)
	}
	poll(t, "the give-up counted", recordTimeout, func(context.Context) (bool, error) {
		return deleterMetric(t, "exec_reaper_deleter_gave_up_total", `reason="mirror"`) > before, nil
	})
	if got := deleterMetric(t, "exec_reaper_deleter_overdue_pods", ""); got < 1 {
		t.Errorf("overdue_pods = %v, want the mirror pod counted", got)
	}
	p, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil || p.UID != pod.UID || p.DeletionTimestamp != nil || !isReady(p) {
		t.Errorf("mirror pod after its deadline: %v; want it untouched and running", err)
	}
	if got := evictionsOf(t, pod); got != 0 {
		t.Errorf("%d evictions of the mirror pod, want none", got)
	}
}

// evictionsOf counts the Evicted Events on pod.
func evictionsOf(t *testing.T, pod *corev1.Pod) int {
	t.Helper()
	return len(events(t, pod, deleter.ReasonEvicted))
}

// TestRemovalTwoBudgetsGivesUpVisibly: the Eviction API answers 500 for a
// pod under two PodDisruptionBudgets for as long as both exist. The deleter
// says so on the pod and in a metric, counts the pod overdue, keeps
// retrying, and evicts it once one budget is gone.
func TestRemovalTwoBudgetsGivesUpVisibly(t *testing.T) {
	ns := namespace(t, "e2e-twobudgets")
	ctx := context.Background()
	labels := map[string]string{"app": "twice"}
	pod := &nodeDeployment(t, ns, "twice", 1, labels)[0]
	for _, name := range []string{"first", "second"} {
		pdb := &policyv1.PodDisruptionBudget{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: policyv1.PodDisruptionBudgetSpec{
				MaxUnavailable: ptr.To(intstr.FromInt32(1)),
				Selector:       &metav1.LabelSelector{MatchLabels: labels},
			},
		}
		if _, err := c.Client().PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	gaveUpBefore := deleterMetric(t, "exec_reaper_deleter_gave_up_total", `reason="multiple_budgets"`)
	ended := watchTermination(t, pod)
	kubectlOK(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "true")
	rec := waitRecord(t, pod)

	evs := waitEventsAtLeast(t, pod, deleter.ReasonEvictionImpossible, time.Until(rec.Deadline)+evictionTimeout)
	if !strings.Contains(evs[0].Message, "more than one PodDisruptionBudget") {
		t.Errorf("event %q does not say why", evs[0].Message)
	}
	poll(t, "the metrics to show the pod given up on and overdue", recordTimeout, func(context.Context) (bool, error) {
		return deleterMetric(t, "exec_reaper_deleter_gave_up_total", `reason="multiple_budgets"`) > gaveUpBefore &&
			deleterMetric(t, "exec_reaper_deleter_overdue_pods", "") >= 1, nil
	})
	if p, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
		t.Fatalf("pod under two budgets went: %v", err)
	}
	// The deleter keeps trying: one budget less and it goes.
	if err := c.Client().PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, "second", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := ended(evictionTimeout + nodeGracePeriod*time.Second); !ok {
		t.Fatal("pod not evicted once only one budget covered it")
	}
	waitEvents(t, pod, deleter.ReasonEvicted, 1)
}

// TestRemovalQuarantine runs the deleters with --action=quarantine: the
// entered pod leaves its ReplicaSet and its Service at once and keeps
// running, a replacement starts, a NetworkPolicy selects it, and it is
// deleted when its retention ends. The node's CNI (bridge) does not enforce
// NetworkPolicy, so that the pod's traffic is cut is not observable here:
// only that the policy exists and selects it.
func TestRemovalQuarantine(t *testing.T) {
	ns := namespace(t, "e2e-quarantine")
	restartDeleters(t, []string{"deleter.action=quarantine", "deleter.quarantineRetention=" + quarantineRetention.String()},
		map[string]string{"action": "quarantine", "quarantine-retention": quarantineRetention.String()})
	rec := checkQuarantine(t, ns)
	if rec.Action != record.ActionEvict {
		t.Errorf("record asks for %q, want evict (no constraint asked for more; the deleter quarantines all the same)", rec.Action)
	}

	// A DaemonSet's replacement goes on the same node, where it cannot
	// start while the quarantined pod holds its host port: quarantine would
	// take the node's agent down for the whole retention.
	t.Run("DaemonSet pod on a host port is evicted instead", func(t *testing.T) {
		spec := nodeSpec()
		spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: webPort, HostPort: 18089}}
		pod := enterDaemonSet(t, ns, "port-agent", spec)
		ev := waitEvents(t, pod, deleter.ReasonQuarantineNotPossible, 1)[0]
		if !strings.Contains(ev.Message, "host port 18089") {
			t.Errorf("%s event %q does not name the host port", deleter.ReasonQuarantineNotPossible, ev.Message)
		}
		waitEvents(t, pod, deleter.ReasonEvicted, 1)
		if evs := events(t, pod, deleter.ReasonQuarantined); len(evs) != 0 {
			t.Errorf("the DaemonSet's pod was quarantined: %+v", evs)
		}
	})
}

// TestRemovalQuarantineAskedByConstraint: the deleters evict, and allow
// quarantine for the constraints that ask for it. In one namespace the
// suite's default constraint (ttl 5 s, evict) and one asking for quarantine
// (ttl 45 s) both match: the entered pod is quarantined, as the stricter
// asked, at the default's deadline, the earlier. In another namespace, under
// the default constraint alone, an entered pod is evicted by the same
// deleters.
func TestRemovalQuarantineAskedByConstraint(t *testing.T) {
	ns := namespace(t, "e2e-quarantine-asked")
	other := namespace(t, "e2e-quarantine-other")
	restartDeleters(t, []string{"deleter.allowQuarantine=true", "deleter.quarantineRetention=" + quarantineRetention.String()},
		map[string]string{"allow-quarantine": "true", "quarantine-retention": quarantineRetention.String()})
	constraint(t, "e2e-quarantine", ns, "warn", map[string]any{"ttl": "45s", "action": "quarantine"})

	plain := nodePod(t, other, "plain", map[string]string{"app": "plain"}, nil)
	plainEnded := watchTermination(t, plain)
	kubectlOK(t, aliceKubeconfig, "exec", "-n", other, plain.Name, "-c", "app", "--", "true")
	if rec := waitRecord(t, plain); rec.Action != record.ActionEvict {
		t.Errorf("the pod under the default constraint alone: record asks for %q, want evict", rec.Action)
	}

	rec := checkQuarantine(t, ns)
	if rec.Action != record.ActionQuarantine {
		t.Errorf("record asks for %q, want quarantine (one of the two matching constraints asked for it)", rec.Action)
	}
	// The record keeps whole seconds: the entry's time truncated, the
	// deadline rounded up.
	if got := recordedTTL(rec); got < TTL || got > TTL+time.Second {
		t.Errorf("deadline %s after the entry, want %s (to the second): the earlier of the two constraints' ttls", got, TTL)
	}

	if _, ok := plainEnded(evictionTimeout + nodeGracePeriod*time.Second); !ok {
		t.Fatal("the pod under the default constraint was not removed")
	}
	if evs := events(t, plain, deleter.ReasonEvicted); len(evs) != 1 {
		t.Errorf("the pod under the default constraint: %d Evicted events, want 1 (evicted, not quarantined)", len(evs))
	}
	if evs := events(t, plain, deleter.ReasonQuarantined); len(evs) != 0 {
		t.Errorf("the pod under the default constraint was quarantined: %+v", evs)
	}
}

// checkQuarantine enters one of two replicas of a Deployment behind a
// Service in ns and checks, on the node, that the deleters quarantine it:
// it leaves its ReplicaSet and its Service at once and keeps running, a
// replacement starts, a NetworkPolicy selects it, and it is deleted when its
// retention ends. It returns the pod's record.
func checkQuarantine(t *testing.T, ns string) record.Record {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": "forensics"}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "forensics", Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(webPort)}}},
	}
	if _, err := c.Client().CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := nodeDeployment(t, ns, "forensics", 2, labels)
	pod := &pods[0]
	poll(t, "the Service's endpoints to list both pods", podTimeout, func(ctx context.Context) (bool, error) {
		return len(endpointIPs(t, ns, "forensics")) == 2, nil
	})
	ended := watchTermination(t, pod)
	kubectlOK(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "true")
	rec := waitRecord(t, pod)

	var q deleter.Quarantine
	poll(t, "the pod to be quarantined", time.Until(rec.Deadline)+evictionTimeout, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		var ok bool
		q, ok = deleter.ReadQuarantine(p.Annotations)
		return ok, nil
	})
	quarantinedAt := time.Now()
	waitEvents(t, pod, deleter.ReasonQuarantined, 1)
	// A replacement starts at once: two Ready pods of the Deployment again,
	// the quarantined one not among them.
	waitReadyPods(t, ns, labels, 2, map[string]bool{string(pod.UID): true})
	t.Logf("replacement Ready %s after the quarantine", time.Since(quarantinedAt).Round(time.Millisecond))
	p, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !isReady(p) || p.DeletionTimestamp != nil {
		t.Errorf("the quarantined pod is not running Ready: phase %s, deletion %v", p.Status.Phase, p.DeletionTimestamp)
	}
	if metav1.GetControllerOf(p) != nil {
		t.Errorf("the quarantined pod still has a controller: %+v", p.OwnerReferences)
	}
	if q.Labels["app"] != "forensics" || p.Labels["app"] != "" || p.Labels[deleter.QuarantineLabel] != string(pod.UID) {
		t.Errorf("labels %v, quarantine record %+v: want the app label moved into the record", p.Labels, q)
	}
	if _, err := record.Read(p.Labels, p.Annotations); err != nil {
		t.Errorf("the record is gone from the quarantined pod: %v", err)
	}
	poll(t, "the Service's endpoints to drop the quarantined pod", podTimeout, func(context.Context) (bool, error) {
		ips := endpointIPs(t, ns, "forensics")
		return len(ips) == 2 && !ips[p.Status.PodIP], nil
	})
	np, err := c.Client().NetworkingV1().NetworkPolicies(ns).Get(ctx, q.NetworkPolicy, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the quarantine NetworkPolicy: %v", err)
	}
	if np.Spec.PodSelector.MatchLabels[deleter.QuarantineLabel] != string(pod.UID) || len(np.Spec.Ingress)+len(np.Spec.Egress) != 0 ||
		len(np.Spec.PolicyTypes) != 2 {
		t.Errorf("NetworkPolicy %+v does not deny all traffic of the quarantined pod", np.Spec)
	}
	// Still running: it answers (no NetworkPolicy enforcement on this node).
	if got := httpGet(t, p); got == "" {
		t.Errorf("the quarantined pod does not answer")
	}
	tm, ok := ended(time.Until(q.Until) + evictionTimeout + nodeGracePeriod*time.Second)
	if !ok {
		t.Fatalf("the quarantined pod was not deleted after its retention ended at %s", q.Until)
	}
	if tm.MarkedAt.Before(q.Until.Add(-time.Second)) {
		t.Errorf("deleted at %s, before its retention ended at %s", tm.MarkedAt, q.Until)
	}
	poll(t, "the NetworkPolicy to go with its pod", podTimeout, func(ctx context.Context) (bool, error) {
		_, err := c.Client().NetworkingV1().NetworkPolicies(ns).Get(ctx, q.NetworkPolicy, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	return rec
}

// restartDeleters grants the deleters the chart's ClusterRole for values
// and restarts every deleter replica with extra flags; when t ends, it
// restores the install's role and flags.
func restartDeleters(t *testing.T, values []string, extra map[string]string) {
	t.Helper()
	ctx := context.Background()
	restart := func(values []string, extra map[string]string) error {
		objs, err := inst.Render(ctx, values...)
		if err != nil {
			return err
		}
		var roles []*unstructured.Unstructured
		for _, o := range objs {
			if o.GetKind() == "ClusterRole" && strings.Contains(o.GetName(), "deleter") {
				roles = append(roles, o)
			}
		}
		if len(roles) == 0 {
			return fmt.Errorf("the chart rendered no deleter ClusterRole")
		}
		if err := inst.Apply(ctx, "removal-deleter-role.yaml", roles); err != nil {
			return fmt.Errorf("applying the deleter's ClusterRole: %w", err)
		}
		for n := range inst.Deleters {
			if err := inst.StopDeleter(n); err != nil {
				return fmt.Errorf("stopping deleter %d: %w", n, err)
			}
		}
		for n := range inst.Deleters {
			if err := inst.StartDeleterWith(ctx, n, extra); err != nil {
				return fmt.Errorf("starting deleter %d: %w", n, err)
			}
		}
		return nil
	}
	if err := restart(values, extra); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := restart(nil, nil); err != nil {
			t.Errorf("restoring the deleters: %v", err)
		}
	})
}

// endpointIPs returns the ready addresses of the Service's EndpointSlices.
func endpointIPs(t *testing.T, ns, service string) map[string]bool {
	t.Helper()
	list, err := c.Client().DiscoveryV1().EndpointSlices(ns).List(context.Background(), metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + service,
	})
	if err != nil {
		t.Fatal(err)
	}
	ips := map[string]bool{}
	for _, s := range list.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				for _, a := range e.Addresses {
					ips[a] = true
				}
			}
		}
	}
	return ips
}

package deleter_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/deleter"
	"github.com/exec-reaper/exec-reaper/record"
)

const (
	gaveUpMetric  = "exec_reaper_deleter_gave_up_total"
	overdueMetric = "exec_reaper_deleter_overdue_pods"
	pacedMetric   = "exec_reaper_deleter_paced_pods"
)

// replicaOf returns a recorded pod controlled by ReplicaSet rs.
func replicaOf(rs *appsv1.ReplicaSet, name string, deadline time.Time) *corev1.Pod {
	pod := recordedPod(name, types.UID("uid-"+name), deadline)
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: ptr.To(true)}}
	return pod
}

func replicaSet(ready int32) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-6f9", Namespace: namespace, UID: "uid-rs"},
		Spec:       appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](3), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
		Status:     appsv1.ReplicaSetStatus{Replicas: 3, ReadyReplicas: ready},
	}
}

// setReady makes the ReplicaSet have ready Ready pods (besides the entered
// ones), and writes that count into its status, as its controller would.
func (h *harness) setReady(rs *appsv1.ReplicaSet, ready int32) {
	h.t.Helper()
	ctx := context.Background()
	rs = rs.DeepCopy()
	rs.Status.ReadyReplicas = ready
	if _, err := h.client.AppsV1().ReplicaSets(namespace).UpdateStatus(ctx, rs, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	for i := range *rs.Spec.Replicas {
		name := fmt.Sprintf("%s-ready-%d", rs.Name, i)
		_ = h.client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{})
		if i >= ready {
			continue
		}
		pod := readyPodOf(rs, name)
		if _, err := h.client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			h.t.Fatal(err)
		}
	}
}

// readyPodOf returns a Ready pod controlled by rs that no one entered.
func readyPodOf(rs *appsv1.ReplicaSet, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: rs.Namespace, Labels: rs.Spec.Selector.MatchLabels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: ptr.To(true)}}},
		Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

// remove deletes pod name from the cache's source, as when it is gone.
func (h *harness) remove(name string) {
	h.t.Helper()
	if err := h.meta.Tracker().Delete(deleter.PodsResource, namespace, name); err != nil {
		h.t.Fatal(err)
	}
}

func TestPacesPodsOfOneOwner(t *testing.T) {
	rs := replicaSet(3)
	due := epoch.Add(-time.Second)
	a, b := replicaOf(rs, "web-a", due), replicaOf(rs, "web-b", due)
	h := newHarness(t, deleter.Options{}, a, b)
	if _, err := h.client.AppsV1().ReplicaSets(namespace).Create(context.Background(), rs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.setReady(rs, rs.Status.ReadyReplicas)
	h.start()

	eventually(t, "one pod evicted and the other paced", func() bool {
		return len(h.evictions(""))+len(h.events.about("web-a", deleter.ReasonPaced))+len(h.events.about("web-b", deleter.ReasonPaced)) == 2
	})
	first, second := "web-a", "web-b"
	if len(h.evictions("web-b")) == 1 {
		first, second = second, first
	}
	if got := h.evictions(second); len(got) != 0 {
		t.Fatalf("both pods of one owner evicted at once: %v", h.evictions(""))
	}
	paced := h.events.about(second, deleter.ReasonPaced)
	if len(paced) != 1 || !strings.Contains(paced[0].Note, "already going") {
		t.Errorf("paced events = %+v, want one saying a pod of its owner is going", paced)
	}
	if got := h.counter(pacedMetric); got != 1 {
		t.Errorf("paced_pods = %v, want 1", got)
	}

	// The first is gone; its replacement is not Ready yet.
	h.setReady(rs, 2)
	h.remove(first)
	h.clock.Step(2 * time.Second)
	h.drain()
	if got := h.evictions(second); len(got) != 0 {
		t.Fatalf("second pod evicted before its owner had a Ready replacement: %v", got)
	}
	// The replacement is Ready.
	h.setReady(rs, 3)
	h.clock.Step(2 * time.Second)
	eventually(t, "the second eviction", func() bool { return len(h.evictions(second)) == 1 })
	if got := h.events.about(second, deleter.ReasonPaced); len(got) != 1 {
		t.Errorf("paced events = %d, want still one", len(got))
	}
	if got := h.counter(pacedMetric); got != 0 {
		t.Errorf("paced_pods = %v, want 0", got)
	}
}

func TestPacingIsBounded(t *testing.T) {
	rs := replicaSet(3)
	due := epoch.Add(-time.Second)
	a, b := replicaOf(rs, "web-a", due), replicaOf(rs, "web-b", due)
	h := newHarness(t, deleter.Options{MaxPacingDelay: time.Minute}, a, b)
	if _, err := h.client.AppsV1().ReplicaSets(namespace).Create(context.Background(), rs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.setReady(rs, rs.Status.ReadyReplicas)
	h.start()
	eventually(t, "one pod evicted and the other paced", func() bool {
		return len(h.evictions(""))+len(h.events.about("web-a", deleter.ReasonPaced))+len(h.events.about("web-b", deleter.ReasonPaced)) == 2
	})
	// The first never goes away (a finalizer): the second goes at the bound.
	// Step the clock only while the controller waits on it (a key delayed),
	// so that no step passes before the recheck is scheduled.
	for range 40 {
		eventually(t, "a recheck scheduled, or both evicted", func() bool {
			return len(h.evictions("")) == 2 || h.clock.Waiters() > h.idle
		})
		if len(h.evictions("")) == 2 {
			break
		}
		h.clock.Step(2 * time.Second)
	}
	eventually(t, "both evicted", func() bool { return len(h.evictions("")) == 2 })
	var forced []event
	for _, e := range append(h.events.about("web-a", deleter.ReasonEvicted), h.events.about("web-b", deleter.ReasonEvicted)...) {
		if strings.Contains(e.Note, "longest allowed") {
			forced = append(forced, e)
		}
	}
	if len(forced) != 1 {
		t.Errorf("evicted events saying pacing gave up waiting = %+v, want one", forced)
	}
	if got := h.counter("exec_reaper_deleter_pacing_forced_total"); got < 1 {
		t.Errorf("pacing_forced_total = %v, want at least 1", got)
	}
}

func TestMirrorPodIsSkippedVisibly(t *testing.T) {
	pod := recordedPod("etcd-node", "uid-mirror", epoch.Add(-time.Second))
	pod.Annotations[deleter.MirrorAnnotation] = "3f2a"
	h := newHarness(t, deleter.Options{}, pod)
	before := h.counter(gaveUpMetric, "reason", "mirror")
	h.start()

	eventually(t, "the MirrorPod event", func() bool { return len(h.events.about("etcd-node", deleter.ReasonMirrorPod)) == 1 })
	h.update("etcd-node", func(p *metav1.PartialObjectMetadata) { p.ResourceVersion = "" }) // as a resync would
	h.drain()
	if got := h.evictions("etcd-node"); len(got) != 0 {
		t.Errorf("evictions of a mirror pod = %v, want none", got)
	}
	evs := h.events.about("etcd-node", "")
	if len(evs) != 1 || evs[0].Type != corev1.EventTypeWarning || !strings.Contains(evs[0].Note, "kubelet keeps the containers running") {
		t.Errorf("events = %+v, want one Warning saying why", evs)
	}
	if got := h.counter(gaveUpMetric, "reason", "mirror") - before; got != 1 {
		t.Errorf("gave_up_total{reason=mirror} grew by %v, want 1", got)
	}
	if got := h.counter(overdueMetric); got != 1 {
		t.Errorf("overdue_pods = %v, want 1 (the static pod still runs)", got)
	}
}

func TestGivesUpVisiblyAfterRetries(t *testing.T) {
	internal := apierrors.NewInternalError(errors.New("etcdserver: request timed out"))
	h := newHarness(t, deleter.Options{MaxRetries: 1, RetryBaseDelay: time.Second}, recordedPod("web", "uid-web", epoch.Add(-time.Second)))
	h.failEvictions("web", internal, internal, internal)
	before := h.counter(gaveUpMetric, "reason", "retries")
	h.start()

	eventually(t, "the first attempt", func() bool { return len(h.evictions("web")) == 1 })
	h.waitDelayed()
	h.clock.Step(time.Second)
	eventually(t, "the GaveUp event", func() bool { return len(h.events.about("web", deleter.ReasonGaveUp)) == 1 })
	ev := h.events.about("web", deleter.ReasonGaveUp)[0]
	if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Note, "request timed out") {
		t.Errorf("event = %+v, want a Warning with the last error", ev)
	}
	if got := h.counter(gaveUpMetric, "reason", "retries") - before; got != 1 {
		t.Errorf("gave_up_total{reason=retries} grew by %v, want 1", got)
	}
	if got := h.counter(overdueMetric); got != 1 {
		t.Errorf("overdue_pods = %v, want 1", got)
	}
}

// twoBudgets is the API server's answer for a pod under two budgets.
func twoBudgets() error {
	return apierrors.NewInternalError(errors.New("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."))
}

func TestTwoBudgetsReportedOnceAndRetried(t *testing.T) {
	h := newHarness(t, deleter.Options{MaxRetries: 1, RetryBaseDelay: time.Second}, recordedPod("web", "uid-web", epoch.Add(-time.Second)))
	h.failEvictions("web", twoBudgets(), twoBudgets(), twoBudgets())
	before := h.counter(gaveUpMetric, "reason", "multiple_budgets")
	h.start()

	for i := range 3 {
		eventually(t, "an attempt", func() bool { return len(h.evictions("web")) == i+1 })
		h.waitDelayed()
		h.clock.Step(time.Second << i)
	}
	// Beyond MaxRetries: the budgets may change, so it keeps trying.
	eventually(t, "the eviction once one budget is gone", func() bool { return len(h.events.about("web", deleter.ReasonEvicted)) == 1 })
	evs := h.events.about("web", deleter.ReasonEvictionImpossible)
	if len(evs) != 1 || !strings.Contains(evs[0].Note, "more than one PodDisruptionBudget") || !strings.Contains(evs[0].Note, "escalation to deletion is off") {
		t.Errorf("EvictionImpossible events = %+v, want one saying why", evs)
	}
	if got := h.counter(gaveUpMetric, "reason", "multiple_budgets") - before; got != 1 {
		t.Errorf("gave_up_total{reason=multiple_budgets} grew by %v, want 1", got)
	}
	if got := h.events.about("web", deleter.ReasonGaveUp); len(got) != 0 {
		t.Errorf("GaveUp events = %+v, want none: a refusal does not spend retries", got)
	}
}

func TestEscalationDeletesBoundToUID(t *testing.T) {
	h := newHarness(t, deleter.Options{EscalateAfter: time.Minute, RetryBaseDelay: time.Second},
		recordedPod("web", "uid-web", epoch.Add(-30*time.Second)))
	h.failEvictions("web", pdbRefusal(), pdbRefusal(), pdbRefusal(), pdbRefusal(), pdbRefusal(), pdbRefusal(), pdbRefusal(), pdbRefusal())
	h.start()

	eventually(t, "the refused attempt", func() bool { return len(h.evictions("web")) == 1 })
	if got := deletions(h); len(got) != 0 {
		t.Fatalf("deleted before escalate-after: %v", got)
	}
	for range 8 {
		eventually(t, "a retry scheduled, or the deletion", func() bool { return len(deletions(h)) > 0 || h.clock.Waiters() > h.idle })
		if len(deletions(h)) > 0 {
			break
		}
		h.clock.Step(10 * time.Second)
	}
	eventually(t, "the deletion", func() bool { return len(deletions(h)) == 1 })
	if got := deletions(h)[0]; got != "uid-web" {
		t.Errorf("delete precondition UID = %q, want uid-web", got)
	}
	evs := h.events.about("web", deleter.ReasonDeleted)
	if len(evs) != 1 || !strings.Contains(evs[0].Note, "bypassing its PodDisruptionBudget") {
		t.Errorf("Deleted events = %+v, want one saying it bypassed the budget", evs)
	}
}

// deletions returns the UID preconditions of the pod deletions h's client saw.
func deletions(h *harness) []types.UID {
	var out []types.UID
	for _, a := range h.client.Actions() {
		d, ok := a.(interface {
			GetDeleteOptions() metav1.DeleteOptions
		})
		if !ok || a.GetVerb() != "delete" || a.GetResource().Resource != "pods" {
			continue
		}
		opts := d.GetDeleteOptions()
		if opts.Preconditions != nil && opts.Preconditions.UID != nil {
			out = append(out, *opts.Preconditions.UID)
		} else {
			out = append(out, "")
		}
	}
	return out
}

func TestOverdueGauge(t *testing.T) {
	h := newHarness(t, deleter.Options{DryRun: true},
		recordedPod("late", "uid-late", epoch.Add(-time.Second)),
		recordedPod("early", "uid-early", epoch.Add(time.Hour)))
	h.start()
	eventually(t, "the dry-run report", func() bool { return len(h.events.about("late", deleter.ReasonWouldEvict)) == 1 })
	if got := h.counter(overdueMetric); got != 1 {
		t.Errorf("overdue_pods = %v, want 1", got)
	}
	h.clock.Step(time.Hour + time.Second)
	if got := h.counter(overdueMetric); got != 2 {
		t.Errorf("overdue_pods an hour later = %v, want 2", got)
	}
}

func TestInvalidAction(t *testing.T) {
	if _, err := deleter.NewController(nil, nil, nil, nil, deleter.Options{Action: "shred"}); err == nil || !strings.Contains(err.Error(), "configuration error") {
		t.Errorf("NewController with action shred: %v, want a configuration error", err)
	}
}

// TestRecordAsksForQuarantine: on a deleter whose own action is eviction, a
// pod whose record asks for quarantine (a constraint with action:
// quarantine) is quarantined where the deleter allows it, and where it does
// not, still removed at its deadline (evicted), with a Warning that names
// the configuration error and a counter; a pod whose record asks for nothing
// is evicted either way. The informer's transform must keep the label.
func TestRecordAsksForQuarantine(t *testing.T) {
	const notAllowed = "exec_reaper_deleter_quarantine_not_allowed_total"
	for _, allow := range []bool{true, false} {
		t.Run(fmt.Sprintf("allowed=%v", allow), func(t *testing.T) {
			asks := recordedPod("asks", "uid-asks", epoch.Add(-time.Second))
			asks.Labels[record.ActionLabel] = string(record.ActionQuarantine)
			plain := recordedPod("plain", "uid-plain", epoch.Add(-time.Second))
			h := newHarness(t, deleter.Options{AllowQuarantine: allow}, asks, plain)
			before := h.counter(notAllowed)
			h.start()
			eventually(t, "the plain pod evicted", func() bool { return len(h.evictions("plain")) == 1 })
			if !allow {
				eventually(t, "the pod that asked evicted", func() bool { return len(h.evictions("asks")) == 1 })
				evs := h.events.about("asks", deleter.ReasonQuarantineNotAllowed)
				if len(evs) != 1 || evs[0].Type != corev1.EventTypeWarning || !strings.Contains(evs[0].Note, "configuration error") ||
					!strings.Contains(evs[0].Note, "deleter.allowQuarantine") {
					t.Errorf("events = %+v, want one Warning naming the configuration error and the chart value", evs)
				}
				if got := h.counter(notAllowed) - before; got != 1 {
					t.Errorf("%s grew by %v, want 1", notAllowed, got)
				}
				return
			}
			eventually(t, "the pod that asked quarantined", func() bool { return len(h.events.about("asks", deleter.ReasonQuarantined)) == 1 })
			h.drain()
			if got := h.evictions("asks"); len(got) != 0 {
				t.Errorf("evictions of the pod that asked for quarantine = %v, want none", got)
			}
			pod, err := h.client.CoreV1().Pods(namespace).Get(context.Background(), "asks", metav1.GetOptions{})
			if err != nil || pod.Labels[deleter.QuarantineLabel] != "uid-asks" {
				t.Errorf("pod after quarantine: %v, labels %v; want it relabelled", err, pod.GetLabels())
			}
			if evs := h.events.about("plain", deleter.ReasonQuarantined); len(evs) != 0 {
				t.Errorf("the plain pod was quarantined: %+v", evs)
			}
			if got := h.counter(notAllowed) - before; got != 0 {
				t.Errorf("%s grew by %v, want 0", notAllowed, got)
			}
		})
	}
}

// TestQuarantineThatWouldTakeTheReplicaDown: quarantine keeps the entered
// pod running, so where its controller cannot run the replacement beside
// it, quarantine would take the replica down for the whole retention. A
// StatefulSet's replacement needs the pod's name; a DaemonSet's goes on the
// same node, where the pod holds its host ports or the host's network.
// Such a pod is evicted, with a Warning saying why, whether its record or
// the deleter asks for quarantine; a DaemonSet's pod with neither is
// quarantined.
func TestQuarantineThatWouldTakeTheReplicaDown(t *testing.T) {
	owned := func(kind string, spec func(*corev1.PodSpec)) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: "owner", UID: "uid-owner", Controller: ptr.To(true)}}
			if spec != nil {
				spec(&p.Spec)
			}
		}
	}
	for _, c := range []struct {
		name string
		pod  func(*corev1.Pod)
		why  string // in the Warning; "" when the pod is quarantined
	}{
		{"statefulset", owned("StatefulSet", nil), "StatefulSet"},
		{"daemonset-host-port", owned("DaemonSet", func(s *corev1.PodSpec) {
			s.Containers = append(s.Containers, corev1.Container{Name: "metrics", Ports: []corev1.ContainerPort{{ContainerPort: 9100}, {ContainerPort: 9101, HostPort: 19101}}})
		}), "host port 19101 (container metrics)"},
		{"daemonset-sidecar-host-port", owned("DaemonSet", func(s *corev1.PodSpec) {
			s.InitContainers = []corev1.Container{{Name: "proxy", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways), Ports: []corev1.ContainerPort{{ContainerPort: 53, HostPort: 53}}}}
		}), "host port 53 (container proxy)"},
		{"daemonset-host-network", owned("DaemonSet", func(s *corev1.PodSpec) { s.HostNetwork = true }), "host's network"},
		{"daemonset-pod-network", owned("DaemonSet", func(s *corev1.PodSpec) {
			s.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080}}
		}), ""},
		// Its replacement may go to another node.
		{"replicaset-host-port", owned("ReplicaSet", func(s *corev1.PodSpec) {
			s.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 8080}}
		}), ""},
	} {
		for _, opts := range []deleter.Options{{AllowQuarantine: true}, {Action: deleter.ActionQuarantine}} {
			t.Run(c.name+"/"+opts.Action, func(t *testing.T) {
				pod := recordedPod("entered", "uid-entered", epoch.Add(-time.Second))
				pod.Labels[record.ActionLabel] = string(record.ActionQuarantine)
				c.pod(pod)
				h := newHarness(t, opts, pod)
				h.start()
				if c.why == "" {
					eventually(t, "the pod quarantined", func() bool { return len(h.events.about("entered", deleter.ReasonQuarantined)) == 1 })
					if opts.Action != deleter.ActionQuarantine {
						h.drain() // its sentinel would be quarantined too
					}
					if got := h.evictions("entered"); len(got) != 0 {
						t.Errorf("evictions = %v, want none (quarantined)", got)
					}
					if evs := h.events.about("entered", deleter.ReasonQuarantineNotPossible); len(evs) != 0 {
						t.Errorf("events = %+v, want no %s", evs, deleter.ReasonQuarantineNotPossible)
					}
					return
				}
				eventually(t, "the pod evicted", func() bool { return len(h.evictions("entered")) == 1 })
				evs := h.events.about("entered", deleter.ReasonQuarantineNotPossible)
				if len(evs) != 1 || !strings.Contains(evs[0].Note, c.why) {
					t.Errorf("events = %+v, want one Warning saying %q", evs, c.why)
				}
				if evs := h.events.about("entered", deleter.ReasonQuarantined); len(evs) != 0 {
					t.Errorf("quarantined: %+v", evs)
				}
				if p, err := h.client.CoreV1().Pods(namespace).Get(context.Background(), "entered", metav1.GetOptions{}); err == nil && p.Labels[deleter.QuarantineLabel] != "" {
					t.Errorf("pod relabelled for quarantine: %v", p.Labels)
				}
			})
		}
	}
}

// TestQuarantineRefusedBecomesEviction: where the API server refuses the
// quarantine for good (an admission policy that requires labels on every
// pod refuses the relabel; one that forbids NetworkPolicies refuses the
// isolation), the pod is evicted at its deadline with a Warning saying why,
// not retried as a quarantine while it stays in service.
func TestQuarantineRefusedBecomesEviction(t *testing.T) {
	denied := apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "entered",
		errors.New(`admission webhook "validation.gatekeeper.sh" denied the request: [require-team-label] you must provide labels: {"team"}`))
	for _, c := range []struct {
		name, verb, resource string
		err                  error
		why                  string
	}{
		{"relabel forbidden", "patch", "pods", denied, "the API server refused to relabel it"},
		{"relabel invalid", "patch", "pods", apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, "entered", nil), "the API server refused to relabel it"},
		{"network policy forbidden", "create", "networkpolicies", denied, "the API server refused the NetworkPolicy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := recordedPod("entered", "uid-entered", epoch.Add(-time.Second))
			pod.Labels[record.ActionLabel] = string(record.ActionQuarantine)
			h := newHarness(t, deleter.Options{Action: deleter.ActionQuarantine}, pod)
			h.client.PrependReactor(c.verb, c.resource, func(a clienttesting.Action) (bool, runtime.Object, error) {
				return true, nil, c.err
			})
			h.start()
			eventually(t, "the pod evicted", func() bool { return len(h.evictions("entered")) == 1 })
			evs := h.events.about("entered", deleter.ReasonQuarantineNotPossible)
			if len(evs) != 1 || !strings.Contains(evs[0].Note, c.why) || !strings.Contains(evs[0].Note, c.err.Error()) {
				t.Errorf("events = %+v, want one Warning saying %q and the API server's error", evs, c.why)
			}
			if evs := h.events.about("entered", deleter.ReasonQuarantined); len(evs) != 0 {
				t.Errorf("quarantined: %+v", evs)
			}
		})
	}
}

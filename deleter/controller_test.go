package deleter_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	"k8s.io/client-go/metadata/metadatalister"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/deleter"
	"github.com/exec-reaper/exec-reaper/internal/kubetest"
	"github.com/exec-reaper/exec-reaper/record"
)

const (
	// pollInterval and pollTimeout bound every wait for the controller, which
	// runs in other goroutines: poll with a deadline, never sleep.
	pollInterval = 5 * time.Millisecond
	pollTimeout  = 5 * time.Second

	namespace = "team"

	evictionsMetric = "exec_reaper_deleter_evictions_total"
	dropsMetric     = "exec_reaper_deleter_dropped_total"
	recordedMetric  = "exec_reaper_deleter_recorded_pods"
)

// epoch is where every fake clock starts: a whole second, so a deadline label
// (Unix seconds) can be hit exactly.
var epoch = time.Unix(1_900_000_000, 0).UTC()

// recordedPod returns a pod carrying a valid record, as the provider writes it,
// bound to uid.
func recordedPod(name string, uid types.UID, deadline time.Time) *corev1.Pod {
	entry := record.Entry{
		User:       "alice@example.com",
		Time:       deadline.Add(-time.Hour),
		Operation:  record.OpExec,
		Command:    []string{"sh"},
		RequestUID: "req-" + name,
	}
	r := record.Record{Deadline: deadline, PodUID: uid, Entries: 1, First: entry, Last: entry}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   namespace,
			UID:         uid,
			Labels:      r.Labels(),
			Annotations: r.Annotations(),
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}
}

// asMetadata returns pod as the metadata API serves it: its whole
// ObjectMeta, under the Pod's own kind so that the fake tracker files it
// with pods.
func asMetadata(pod *corev1.Pod) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: *pod.ObjectMeta.DeepCopy(),
	}
}

// newMetadataClient returns a fake metadata client holding pods.
func newMetadataClient(pods ...*corev1.Pod) *metadatafake.FakeMetadataClient {
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		panic(err)
	}
	objs := make([]runtime.Object, 0, len(pods))
	for _, p := range pods {
		objs = append(objs, asMetadata(p))
	}
	return metadatafake.NewSimpleMetadataClient(scheme, objs...)
}

// event is one Event the controller emitted.
type event struct {
	Namespace, Name, Type, Reason, Note string
}

// eventLog is an events.EventRecorder that keeps what it is given, including
// the object an Event regards (events.FakeRecorder keeps only the text).
type eventLog struct {
	mu     sync.Mutex
	events []event
}

func (l *eventLog) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	e := event{Type: eventtype, Reason: reason, Note: fmt.Sprintf(note, args...)}
	if m, ok := regarding.(metav1.Object); ok {
		e.Namespace, e.Name = m.GetNamespace(), m.GetName()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

// about returns the Events on pod name, with reason if reason is not empty.
func (l *eventLog) about(name, reason string) []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []event
	for _, e := range l.events {
		if e.Name == name && (reason == "" || e.Reason == reason) {
			out = append(out, e)
		}
	}
	return out
}

// attempt is one Eviction call the controller made.
type attempt struct {
	Namespace, Name string
	// UID is the precondition; empty if the call had none.
	UID types.UID
}

// evictions returns the Eviction calls recorded by client for pod name (all
// pods if name is empty), in order.
func evictions(client *fake.Clientset, name string) []attempt {
	var out []attempt
	for _, a := range client.Actions() {
		if a.GetVerb() != "create" || a.GetResource().Resource != "pods" || a.GetSubresource() != "eviction" {
			continue
		}
		ev, ok := a.(clienttesting.CreateAction).GetObject().(*policyv1.Eviction)
		if !ok || (name != "" && ev.Name != name) {
			continue
		}
		at := attempt{Namespace: a.GetNamespace(), Name: ev.Name}
		if ev.DeleteOptions != nil && ev.DeleteOptions.Preconditions != nil && ev.DeleteOptions.Preconditions.UID != nil {
			at.UID = *ev.DeleteOptions.Preconditions.UID
		}
		out = append(out, at)
	}
	return out
}

// metricValue reads a counter or gauge from reg; labelPairs are name, value,
// …; a series that does not exist yet reads 0.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labelPairs ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labelPairs); i += 2 {
				if got[labelPairs[i]] != labelPairs[i+1] {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// eventually polls cond until it holds, failing the test after pollTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), pollInterval, pollTimeout, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("timed out after %v waiting for %s", pollTimeout, what)
	}
}

// harness is a Controller wired as deleter.Run wires it, against fake
// clients and a fake clock: the metadata client feeds the informer, the
// typed one takes the evictions (and holds the same pods, which the fake
// eviction needs).
type harness struct {
	t        *testing.T
	client   *fake.Clientset
	meta     *metadatafake.FakeMetadataClient
	clock    *clocktesting.FakeClock
	events   *eventLog
	reg      *prometheus.Registry
	informer cache.SharedIndexInformer
	ctrl     *deleter.Controller
	// idle is the number of clock waiters while no key is delayed in the
	// queue (the delaying queue's heartbeat); one more means a key waits.
	idle      int
	sentinels int
}

// newHarness builds a controller over pods. Workers defaults to 1 so that the
// queue is processed in order, which drain relies on. Reactors may be added
// before start.
func newHarness(t *testing.T, opts deleter.Options, pods ...*corev1.Pod) *harness {
	t.Helper()
	if opts.Workers == 0 {
		opts.Workers = 1
	}
	objs := make([]runtime.Object, 0, len(pods))
	for _, p := range pods {
		objs = append(objs, p)
	}
	h := &harness{
		t:      t,
		client: fake.NewClientset(objs...),
		meta:   newMetadataClient(pods...),
		clock:  clocktesting.NewFakeClock(epoch),
		events: &eventLog{},
		reg:    prometheus.NewRegistry(),
	}
	h.informer = deleter.NewPodInformer(h.meta, 0)
	ctrl, err := deleter.NewController(kubetest.API{Interface: h.client}, h.informer, h.clock, h.events, opts)
	if err != nil {
		t.Fatalf("NewController: %v", err)
	}
	h.ctrl = ctrl
	h.idle = h.clock.Waiters()
	deleter.Register(h.reg, h.lister())
	h.ctrl.RegisterMetrics(h.reg)
	return h
}

// lister reads the informer's cache.
func (h *harness) lister() metadatalister.Lister {
	return metadatalister.New(h.informer.GetIndexer(), deleter.PodsResource)
}

// start runs the informers and the controller until the test ends; cleanup
// cancels and requires Run to return nil promptly.
func (h *harness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	informerDone := make(chan struct{})
	go func() {
		defer close(informerDone)
		h.informer.RunWithContext(ctx)
	}()
	done := make(chan error, 1)
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				h.t.Errorf("Controller.Run returned %v, want nil", err)
			}
		case <-time.After(pollTimeout):
			h.t.Errorf("Controller.Run did not return within %v of cancellation", pollTimeout)
		}
		<-informerDone
	})
	// Pods created from now on reach the handler after the preloaded ones,
	// through the watch: drain relies on that order.
	if !cache.WaitForCacheSync(ctx.Done(), h.informer.HasSynced) {
		h.t.Fatal("pod cache did not sync")
	}
	go func() { done <- h.ctrl.Run(ctx) }()
}

// evictions returns the Eviction calls for pod name.
func (h *harness) evictions(name string) []attempt { return evictions(h.client, name) }

// counter reads one of the deleter's metrics.
func (h *harness) counter(name string, labelPairs ...string) float64 {
	h.t.Helper()
	return metricValue(h.t, h.reg, name, labelPairs...)
}

// failEvictions makes the next Eviction calls for pod name fail with errs, in
// order; later calls reach the fake's default handling, which succeeds.
func (h *harness) failEvictions(name string, errs ...error) {
	var mu sync.Mutex
	h.client.PrependReactor("create", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		ev, ok := a.(clienttesting.CreateAction).GetObject().(*policyv1.Eviction)
		if !ok || ev.Name != name {
			return false, nil, nil
		}
		mu.Lock()
		defer mu.Unlock()
		if len(errs) == 0 {
			return false, nil, nil
		}
		err := errs[0]
		errs = errs[1:]
		return true, nil, err
	})
}

// create adds a pod through the API; the informer delivers it.
func (h *harness) create(pod *corev1.Pod) {
	h.t.Helper()
	if _, err := h.client.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		h.t.Fatalf("creating pod %s: %v", pod.Name, err)
	}
	if err := h.meta.Tracker().Create(deleter.PodsResource, asMetadata(pod), pod.Namespace); err != nil {
		h.t.Fatalf("creating pod %s in the metadata fake: %v", pod.Name, err)
	}
}

// update changes pod name's metadata through the API; the informer delivers
// the update.
func (h *harness) update(name string, mutate func(*metav1.PartialObjectMetadata)) {
	h.t.Helper()
	obj, err := h.meta.Tracker().Get(deleter.PodsResource, namespace, name)
	if err != nil {
		h.t.Fatalf("getting pod %s: %v", name, err)
	}
	pod := obj.(*metav1.PartialObjectMetadata).DeepCopy()
	mutate(pod)
	if err := h.meta.Tracker().Update(deleter.PodsResource, pod, namespace); err != nil {
		h.t.Fatalf("updating pod %s: %v", name, err)
	}
}

// waitDelayed waits until a key sits in the queue's delay heap, i.e. the
// controller scheduled a pod for later.
func (h *harness) waitDelayed() {
	h.t.Helper()
	eventually(h.t, "a key delayed in the queue", func() bool { return h.clock.Waiters() > h.idle })
}

// drain proves that every key queued before the call has been handled: it
// creates a pod that is due now and waits until the controller acted on it.
// With one worker the queue hands out keys in the order they were added, so
// anything added earlier was handled first.
func (h *harness) drain() {
	h.t.Helper()
	h.sentinels++
	name := fmt.Sprintf("sentinel-%d", h.sentinels)
	h.create(recordedPod(name, types.UID("uid-"+name), h.clock.Now().Add(-time.Second)))
	eventually(h.t, "the controller to act on "+name, func() bool {
		return len(h.evictions(name)) > 0 || len(h.events.about(name, deleter.ReasonWouldEvict)) > 0
	})
	// The controller may still be finishing with the sentinel (it marks a
	// pod taken after the eviction call returns), and a gauge read now would
	// count it overdue: take it away, as the eviction would on a real API
	// server, and wait until the cache no longer holds it.
	if err := h.meta.Tracker().Delete(deleter.PodsResource, namespace, name); err != nil {
		h.t.Fatalf("deleting %s from the metadata fake: %v", name, err)
	}
	eventually(h.t, name+" gone from the cache", func() bool {
		_, err := h.lister().Namespace(namespace).Get(name)
		return apierrors.IsNotFound(err)
	})
}

func TestEvictsAtDeadlineNotBefore(t *testing.T) {
	const uid = types.UID("uid-web")
	deadline := epoch.Add(time.Minute)
	h := newHarness(t, deleter.Options{}, recordedPod("web", uid, deadline))
	evictedBefore := h.counter(evictionsMetric, "result", "evicted")
	h.start()

	h.waitDelayed()
	h.clock.Step(59 * time.Second)
	// A second early: make the controller look at the pod (an update), and
	// prove it has before checking that it did not evict.
	h.update("web", func(p *metav1.PartialObjectMetadata) { p.Annotations["example.com/touched"] = "true" })
	h.drain()
	if got := h.evictions("web"); len(got) != 0 {
		t.Fatalf("evictions one second before the deadline = %v, want none", got)
	}

	h.clock.Step(time.Second)
	eventually(t, "the eviction at the deadline", func() bool { return len(h.evictions("web")) > 0 })
	want := []attempt{{Namespace: namespace, Name: "web", UID: uid}}
	if got := h.evictions("web"); !reflect.DeepEqual(got, want) {
		t.Errorf("evictions = %v, want %v", got, want)
	}
	eventually(t, "the Evicted event", func() bool { return len(h.events.about("web", deleter.ReasonEvicted)) > 0 })
	evs := h.events.about("web", "")
	if len(evs) != 1 || evs[0].Type != corev1.EventTypeNormal || evs[0].Namespace != namespace ||
		!strings.Contains(evs[0].Note, deadline.Format(time.RFC3339)) {
		t.Errorf("events on web = %+v, want one Normal %s naming deadline %s", evs, deleter.ReasonEvicted, deadline.Format(time.RFC3339))
	}
	// web and the sentinel.
	if got := h.counter(evictionsMetric, "result", "evicted") - evictedBefore; got != 2 {
		t.Errorf("evictions_total{result=evicted} grew by %v, want 2", got)
	}
}

// TestTerminationThatOutlivesTheDeadline: a recorded pod that began
// terminating before its deadline, with a grace period that ends an hour
// after it (a delete with a long grace period, which a container that ignores
// SIGTERM runs to its end), cannot be made to go sooner: at its deadline, not
// before, the deleter says so once in a Warning and counts it overdue, so the
// alert fires; it evicts and deletes nothing. A termination that ends within
// a minute of the deadline, or one begun at the deadline (an eviction's, with
// the pod's own long grace period), is the pod's removal: no Warning.
func TestTerminationThatOutlivesTheDeadline(t *testing.T) {
	deadline := epoch.Add(time.Minute)
	terminating := func(name string, began time.Time, grace time.Duration) *corev1.Pod {
		p := recordedPod(name, types.UID("uid-"+name), deadline)
		p.DeletionTimestamp = ptr.To(metav1.NewTime(began.Add(grace)))
		p.DeletionGracePeriodSeconds = ptr.To(int64(grace / time.Second))
		return p
	}
	slow := terminating("slow", epoch, time.Hour+time.Minute)
	soon := terminating("soon", epoch.Add(30*time.Second), time.Minute)
	evicted := terminating("evicted", deadline, time.Hour)
	h := newHarness(t, deleter.Options{}, slow, soon, evicted)
	h.start()

	h.waitDelayed()
	h.clock.Step(59 * time.Second)
	h.update("slow", func(p *metav1.PartialObjectMetadata) { p.Annotations["example.com/touched"] = "true" })
	h.drain()
	if evs := h.events.about("slow", deleter.ReasonTerminationOutlivesDeadline); len(evs) != 0 {
		t.Fatalf("a Warning before the deadline: %+v", evs)
	}
	h.clock.Step(time.Second)
	eventually(t, "the Warning at the deadline", func() bool {
		return len(h.events.about("slow", deleter.ReasonTerminationOutlivesDeadline)) > 0
	})
	h.update("slow", func(p *metav1.PartialObjectMetadata) { p.Annotations["example.com/touched"] = "again" })
	h.drain()
	evs := h.events.about("slow", deleter.ReasonTerminationOutlivesDeadline)
	if len(evs) != 1 || evs[0].Type != corev1.EventTypeWarning || !strings.Contains(evs[0].Note, slow.DeletionTimestamp.UTC().Format(time.RFC3339)) {
		t.Errorf("events = %+v, want one Warning naming when the termination ends", evs)
	}
	for _, name := range []string{"soon", "evicted"} {
		if evs := h.events.about(name, ""); len(evs) != 0 {
			t.Errorf("%s: events %+v, want none", name, evs)
		}
	}
	for _, name := range []string{"slow", "soon", "evicted"} {
		if got := h.evictions(name); len(got) != 0 {
			t.Errorf("evictions of %s = %v, want none", name, got)
		}
	}
	if got := deletions(h); len(got) != 0 {
		t.Errorf("deletions = %v, want none", got)
	}
	h.clock.Step(time.Second) // past the deadline
	if got := h.counter(overdueMetric); got != 1 {
		t.Errorf("%s = %v, want 1 (slow)", overdueMetric, got)
	}
}

func TestEvictsOverduePodPromptly(t *testing.T) {
	for _, tc := range []struct {
		name     string
		deadline time.Time
	}{
		{"deadline is now", epoch},
		{"deadline a second ago", epoch.Add(-time.Second)},
		{"deadline an hour ago", epoch.Add(-time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const uid = types.UID("uid-web")
			h := newHarness(t, deleter.Options{}, recordedPod("web", uid, tc.deadline))
			h.start()
			eventually(t, "the eviction", func() bool { return len(h.evictions("web")) > 0 })
			want := []attempt{{Namespace: namespace, Name: "web", UID: uid}}
			if got := h.evictions("web"); !reflect.DeepEqual(got, want) {
				t.Errorf("evictions = %v, want %v", got, want)
			}
			eventually(t, "the Evicted event", func() bool { return len(h.events.about("web", deleter.ReasonEvicted)) == 1 })
		})
	}
}

// pdbRefusal is what the API server answers when a PodDisruptionBudget
// forbids an eviction.
func pdbRefusal() error {
	err := apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
	err.ErrStatus.Details.Causes = append(err.ErrStatus.Details.Causes, metav1.StatusCause{
		Type:    policyv1.DisruptionBudgetCause,
		Message: "The disruption budget web-pdb needs 2 healthy pods and has 2 currently",
	})
	return err
}

func TestRetriesEvictionRefusedByDisruptionBudget(t *testing.T) {
	// Refusals are retried with exponential backoff for as long as they last,
	// beyond MaxRetries, which bounds only other failures.
	for _, refusals := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d refusals", refusals), func(t *testing.T) {
			const uid = types.UID("uid-web")
			h := newHarness(t, deleter.Options{RetryBaseDelay: time.Second, RetryMaxDelay: time.Minute, MaxRetries: 1},
				recordedPod("web", uid, epoch.Add(-time.Second)))
			errs := make([]error, refusals)
			for i := range errs {
				errs[i] = pdbRefusal()
			}
			h.failEvictions("web", errs...)
			refusedBefore := h.counter(evictionsMetric, "result", "refused")
			evictedBefore := h.counter(evictionsMetric, "result", "evicted")
			h.start()

			for i := range refusals {
				eventually(t, fmt.Sprintf("refused attempt %d", i+1), func() bool { return len(h.evictions("web")) == i+1 })
				eventually(t, fmt.Sprintf("EvictionRefused event %d", i+1), func() bool {
					return len(h.events.about("web", deleter.ReasonEvictionRefused)) == i+1
				})
				h.waitDelayed()
				if got := len(h.evictions("web")); got != i+1 {
					t.Fatalf("attempts before the backoff elapsed = %d, want %d", got, i+1)
				}
				h.clock.Step(time.Second << i) // RetryBaseDelay × 2^i
			}
			eventually(t, "the successful attempt", func() bool { return len(h.evictions("web")) == refusals+1 })
			eventually(t, "the Evicted event", func() bool { return len(h.events.about("web", deleter.ReasonEvicted)) == 1 })

			for i, at := range h.evictions("web") {
				if at.UID != uid {
					t.Errorf("attempt %d has UID precondition %q, want %q", i+1, at.UID, uid)
				}
			}
			for _, e := range h.events.about("web", deleter.ReasonEvictionRefused) {
				if e.Type != corev1.EventTypeWarning || !strings.Contains(e.Note, "disruption budget") ||
					!strings.Contains(e.Note, "web-pdb needs 2 healthy pods") {
					t.Errorf("refusal event = %+v, want a Warning quoting the budget and its cause", e)
				}
			}
			if got := h.counter(evictionsMetric, "result", "refused") - refusedBefore; got != float64(refusals) {
				t.Errorf("evictions_total{result=refused} grew by %v, want %d", got, refusals)
			}
			if got := h.counter(evictionsMetric, "result", "evicted") - evictedBefore; got != 1 {
				t.Errorf("evictions_total{result=evicted} grew by %v, want 1", got)
			}
		})
	}
}

func TestIgnoresRecordOfAnotherPod(t *testing.T) {
	// The pod was recreated under the same name: the record (copied along, or
	// left by the predecessor) names the old UID.
	pod := recordedPod("web", "uid-old", epoch.Add(-time.Minute))
	pod.UID = "uid-new"
	h := newHarness(t, deleter.Options{}, pod)
	otherBefore := h.counter(evictionsMetric, "result", "other_pod")
	h.start()

	h.drain()
	eventually(t, "evictions_total{result=other_pod} to grow", func() bool {
		return h.counter(evictionsMetric, "result", "other_pod") > otherBefore
	})
	h.clock.Step(time.Hour)
	h.drain()
	if got := h.evictions("web"); len(got) != 0 {
		t.Errorf("evictions of the recreated pod = %v, want none", got)
	}
	if got := h.events.about("web", ""); len(got) != 0 {
		t.Errorf("events on the recreated pod = %+v, want none", got)
	}
}

func TestFinalEvictionAnswers(t *testing.T) {
	pods := corev1.Resource("pods")
	for _, tc := range []struct {
		name string
		err  error
		// replacedBy, if set, is the UID of the pod a GET now finds under
		// the name.
		replacedBy types.UID
		result     string
	}{
		{
			name:       "409 UID precondition failed",
			err:        apierrors.NewConflict(pods, "web", errors.New("Precondition failed: UID in precondition: uid-web, UID in object meta: uid-other")),
			replacedBy: "uid-other",
			result:     "other_pod",
		},
		{
			name:   "404 pod gone",
			err:    apierrors.NewNotFound(pods, "web"),
			result: "gone",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, deleter.Options{RetryBaseDelay: time.Second}, recordedPod("web", "uid-web", epoch.Add(-time.Second)))
			// Every attempt would fail the same way; there must be only one.
			h.failEvictions("web", tc.err, tc.err, tc.err, tc.err)
			if tc.replacedBy != "" {
				h.client.PrependReactor("get", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
					return true, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: namespace, UID: tc.replacedBy}}, nil
				})
			}
			before := h.counter(evictionsMetric, "result", tc.result)
			h.start()

			eventually(t, "the eviction attempt", func() bool { return len(h.evictions("web")) > 0 })
			// Far past any retry delay; a retry would now be queued before the
			// sentinel.
			h.clock.Step(time.Hour)
			h.drain()
			if got := h.evictions("web"); len(got) != 1 {
				t.Errorf("attempts = %v, want exactly one", got)
			}
			if got := h.events.about("web", ""); len(got) != 0 {
				t.Errorf("events on web = %+v, want none", got)
			}
			if got := h.counter(evictionsMetric, "result", tc.result) - before; got != 1 {
				t.Errorf("evictions_total{result=%s} grew by %v, want 1", tc.result, got)
			}
		})
	}
}

func TestConflictOnTheSamePodIsRetried(t *testing.T) {
	// The eviction's update of the budget's status conflicted: the pod is
	// still the one entered, and must not be taken for replaced.
	conflict := apierrors.NewConflict(corev1.Resource("poddisruptionbudgets"), "web-pdb", errors.New("the object has been modified"))
	h := newHarness(t, deleter.Options{RetryBaseDelay: time.Second}, recordedPod("web", "uid-web", epoch.Add(-time.Second)))
	h.failEvictions("web", conflict)
	before := h.counter(evictionsMetric, "result", "conflict")
	h.start()

	eventually(t, "the conflicting attempt", func() bool { return len(h.evictions("web")) == 1 })
	h.waitDelayed()
	h.clock.Step(time.Second)
	eventually(t, "the retry", func() bool { return len(h.events.about("web", deleter.ReasonEvicted)) == 1 })
	if got := h.counter(evictionsMetric, "result", "conflict") - before; got != 1 {
		t.Errorf("evictions_total{result=conflict} grew by %v, want 1", got)
	}
}

func TestRetriesOtherErrorsWithBackoff(t *testing.T) {
	internal := func() error { return apierrors.NewInternalError(errors.New("etcdserver: request timed out")) }
	for _, tc := range []struct {
		name        string
		failures    int
		wantEvicted bool
	}{
		// MaxRetries is 2: two retries after the first failure.
		{name: "recovers on the last retry", failures: 2, wantEvicted: true},
		{name: "dropped after MaxRetries", failures: 10, wantEvicted: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const maxRetries = 2
			h := newHarness(t, deleter.Options{RetryBaseDelay: time.Second, RetryMaxDelay: time.Minute, MaxRetries: maxRetries},
				recordedPod("web", "uid-web", epoch.Add(-time.Second)))
			errs := make([]error, tc.failures)
			for i := range errs {
				errs[i] = internal()
			}
			h.failEvictions("web", errs...)
			dropsBefore := h.counter(dropsMetric)
			errorsBefore := h.counter(evictionsMetric, "result", "error")
			h.start()

			for i := range maxRetries {
				eventually(t, fmt.Sprintf("attempt %d", i+1), func() bool { return len(h.evictions("web")) == i+1 })
				h.waitDelayed()
				h.clock.Step(time.Second << i) // RetryBaseDelay × 2^i
			}
			eventually(t, "the last attempt", func() bool { return len(h.evictions("web")) == maxRetries+1 })
			if tc.wantEvicted {
				eventually(t, "the Evicted event", func() bool { return len(h.events.about("web", deleter.ReasonEvicted)) == 1 })
			} else {
				eventually(t, "the drop", func() bool { return h.counter(dropsMetric)-dropsBefore == 1 })
			}
			// Nothing is retried any more, however long we wait.
			h.clock.Step(time.Hour)
			h.drain()
			if got := len(h.evictions("web")); got != maxRetries+1 {
				t.Errorf("attempts = %d, want %d", got, maxRetries+1)
			}
			wantErrors := float64(min(tc.failures, maxRetries+1))
			if got := h.counter(evictionsMetric, "result", "error") - errorsBefore; got != wantErrors {
				t.Errorf("evictions_total{result=error} grew by %v, want %v", got, wantErrors)
			}
			wantDrops := 1.0
			if tc.wantEvicted {
				wantDrops = 0
			}
			if got := h.counter(dropsMetric) - dropsBefore; got != wantDrops {
				t.Errorf("dropped_total grew by %v, want %v", got, wantDrops)
			}
			if got := h.events.about("web", deleter.ReasonEvictionRefused); len(got) != 0 {
				t.Errorf("EvictionRefused events for a server error: %+v", got)
			}
		})
	}
}

// TestRefusalsDoNotSpendRetries: PodDisruptionBudget refusals back off on a
// limiter of their own, so a pod a budget held for MaxRetries attempts still
// gets its MaxRetries retries when a transient error follows.
func TestRefusalsDoNotSpendRetries(t *testing.T) {
	const maxRetries = 2
	h := newHarness(t, deleter.Options{RetryBaseDelay: time.Second, RetryMaxDelay: time.Minute, MaxRetries: maxRetries},
		recordedPod("web", "uid-web", epoch.Add(-time.Second)))
	h.failEvictions("web", pdbRefusal(), pdbRefusal(), apierrors.NewInternalError(errors.New("transient")))
	dropsBefore := h.counter(dropsMetric)
	h.start()

	// Two refusals...
	for i := range 2 {
		eventually(t, fmt.Sprintf("attempt %d", i+1), func() bool { return len(h.evictions("web")) == i+1 })
		h.waitDelayed()
		h.clock.Step(time.Second << i)
	}
	// ...then a transient error, which deserves a retry: the key must be
	// delayed, not dropped.
	eventually(t, "attempt 3", func() bool { return len(h.evictions("web")) == 3 })
	eventually(t, "a retry or a drop", func() bool {
		return h.clock.Waiters() > h.idle || h.counter(dropsMetric) > dropsBefore
	})
	if got := h.counter(dropsMetric) - dropsBefore; got != 0 {
		t.Fatalf("dropped on the first transient error after %d refusals (dropped_total grew by %v), want a retry", maxRetries, got)
	}
	h.clock.Step(4 * time.Second)
	eventually(t, "the retry after the transient error", func() bool { return len(h.evictions("web")) == 4 })
}

func TestDryRun(t *testing.T) {
	h := newHarness(t, deleter.Options{DryRun: true}, recordedPod("web", "uid-web", epoch.Add(-time.Second)))
	dryBefore := h.counter(evictionsMetric, "result", "dry_run")
	h.start()

	eventually(t, "the WouldEvict event", func() bool { return len(h.events.about("web", deleter.ReasonWouldEvict)) > 0 })
	// An update (as a resync would) brings the pod back: no second report.
	h.update("web", func(p *metav1.PartialObjectMetadata) { p.Annotations["example.com/touched"] = "true" })
	h.drain()
	evs := h.events.about("web", "")
	if len(evs) != 1 || evs[0].Reason != deleter.ReasonWouldEvict || evs[0].Type != corev1.EventTypeNormal ||
		!strings.Contains(evs[0].Note, "dry-run") {
		t.Errorf("events on web = %+v, want exactly one Normal %s", evs, deleter.ReasonWouldEvict)
	}
	if got := evictions(h.client, ""); len(got) != 0 {
		t.Errorf("evictions in dry-run mode = %v, want none", got)
	}
	// web and the sentinel.
	if got := h.counter(evictionsMetric, "result", "dry_run") - dryBefore; got != 2 {
		t.Errorf("evictions_total{result=dry_run} grew by %v, want 2", got)
	}
}

func TestDeadlineMovedEarlier(t *testing.T) {
	const uid = types.UID("uid-web")
	h := newHarness(t, deleter.Options{}, recordedPod("web", uid, epoch.Add(time.Hour)))
	h.start()
	h.waitDelayed()

	// Someone entered again with a shorter TTL: the provider moves the
	// deadline earlier.
	earlier := epoch.Add(10 * time.Second)
	h.update("web", func(p *metav1.PartialObjectMetadata) {
		p.Labels[record.DeadlineLabel] = record.FormatDeadline(earlier)
		p.Annotations[record.DeadlineAnnotation] = earlier.Format(time.RFC3339)
	})
	h.drain() // the update has been seen
	if got := h.evictions("web"); len(got) != 0 {
		t.Fatalf("evictions before the new deadline = %v, want none", got)
	}

	h.clock.Step(10 * time.Second)
	eventually(t, "the eviction at the new deadline", func() bool { return len(h.evictions("web")) > 0 })
	want := []attempt{{Namespace: namespace, Name: "web", UID: uid}}
	if got := h.evictions("web"); !reflect.DeepEqual(got, want) {
		t.Errorf("evictions = %v, want %v", got, want)
	}
}

func TestSkipsTerminatingPod(t *testing.T) {
	pod := recordedPod("web", "uid-web", epoch.Add(-time.Minute))
	deleted := metav1.NewTime(epoch.Add(-time.Second))
	pod.DeletionTimestamp = &deleted
	pod.Finalizers = []string{"example.com/hold"}
	h := newHarness(t, deleter.Options{}, pod)
	h.start()

	h.drain()
	if got := h.evictions("web"); len(got) != 0 {
		t.Errorf("evictions of a terminating pod = %v, want none", got)
	}
	if got := h.events.about("web", ""); len(got) != 0 {
		t.Errorf("events on a terminating pod = %+v, want none", got)
	}
}

func TestInvalidRecord(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mutate  func(*corev1.Pod)
		wantKey string // the label or annotation the Event must name
	}{
		{
			name:    "deadline not a number",
			mutate:  func(p *corev1.Pod) { p.Labels[record.DeadlineLabel] = "soon" },
			wantKey: record.DeadlineLabel,
		},
		{
			name:    "deadline not positive",
			mutate:  func(p *corev1.Pod) { p.Labels[record.DeadlineLabel] = "0" },
			wantKey: record.DeadlineLabel,
		},
		{
			name: "pod-uid label and annotation missing",
			mutate: func(p *corev1.Pod) {
				delete(p.Labels, record.PodUIDLabel)
				delete(p.Annotations, record.PodUIDAnnotation)
			},
			wantKey: record.PodUIDLabel,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := recordedPod("web", "uid-web", epoch.Add(-time.Minute))
			tc.mutate(pod)
			h := newHarness(t, deleter.Options{}, pod)
			h.start()

			eventually(t, "the InvalidRecord event", func() bool { return len(h.events.about("web", deleter.ReasonInvalidRecord)) > 0 })
			h.drain()
			evs := h.events.about("web", "")
			if len(evs) != 1 || evs[0].Type != corev1.EventTypeWarning || !strings.Contains(evs[0].Note, tc.wantKey) {
				t.Errorf("events on web = %+v, want one Warning %s naming %s", evs, deleter.ReasonInvalidRecord, tc.wantKey)
			}
			if got := h.evictions("web"); len(got) != 0 {
				t.Errorf("evictions = %v, want none", got)
			}
		})
	}
}

func TestStripPod(t *testing.T) {
	deleted := metav1.NewTime(epoch)
	// full is a recorded pod's metadata as the API serves it, with
	// everything the deleter does not act on.
	full := asMetadata(recordedPod("web", "uid-web", epoch))
	full.TypeMeta = metav1.TypeMeta{APIVersion: "meta.k8s.io/v1", Kind: "PartialObjectMetadata"}
	full.ResourceVersion = "42"
	full.DeletionTimestamp = &deleted
	full.GenerateName = "web-"
	full.Finalizers = []string{"example.com/hold"}
	full.Labels["app"] = "web"
	full.Annotations["example.com/note"] = "kept elsewhere"
	full.OwnerReferences = []metav1.OwnerReference{
		{APIVersion: "v1", Kind: "ConfigMap", Name: "not-controller", UID: "uid-cm"},
		{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-1", UID: "uid-rs", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)},
	}
	full.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}

	pod := metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
	want := &metav1.PartialObjectMetadata{
		TypeMeta: pod,
		ObjectMeta: metav1.ObjectMeta{
			Name:              "web",
			Namespace:         namespace,
			UID:               "uid-web",
			ResourceVersion:   "42",
			DeletionTimestamp: &deleted,
			Labels: map[string]string{
				record.DeadlineLabel: full.Labels[record.DeadlineLabel],
				record.PodUIDLabel:   "uid-web",
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-1", UID: "uid-rs", Controller: ptr.To(true)}},
		},
	}

	// A record from before the pod UID was a label: the annotation binds it.
	legacy := full.DeepCopy()
	delete(legacy.Labels, record.PodUIDLabel)
	legacy.OwnerReferences = nil
	wantLegacy := want.DeepCopy()
	delete(wantLegacy.Labels, record.PodUIDLabel)
	wantLegacy.Annotations = map[string]string{record.PodUIDAnnotation: "uid-web"}
	wantLegacy.OwnerReferences = nil

	// An empty UID label binds through the annotation too (record.Binding).
	emptyLabel := full.DeepCopy()
	emptyLabel.Labels[record.PodUIDLabel] = ""
	emptyLabel.OwnerReferences = nil
	wantEmptyLabel := wantLegacy.DeepCopy()
	wantEmptyLabel.Labels[record.PodUIDLabel] = ""

	// A static pod's mirror keeps its mark.
	mirror := full.DeepCopy()
	mirror.Annotations[deleter.MirrorAnnotation] = "hash"
	mirror.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: "node-1", UID: "uid-node", Controller: ptr.To(true)}}
	wantMirror := want.DeepCopy()
	wantMirror.Annotations = map[string]string{deleter.MirrorAnnotation: "hash"}
	wantMirror.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: "node-1", UID: "uid-node", Controller: ptr.To(true)}}

	tombstone := cache.DeletedFinalStateUnknown{Key: namespace + "/web", Obj: full}

	for _, tc := range []struct {
		name string
		in   any
		want any
	}{
		{"pod keeps only what the deleter acts on", full.DeepCopy(), want},
		{"already stripped pod is unchanged", want.DeepCopy(), want},
		{"legacy record keeps the pod-uid annotation", legacy, wantLegacy},
		{"empty pod-uid label keeps the pod-uid annotation", emptyLabel, wantEmptyLabel},
		{"mirror pod keeps the mirror annotation", mirror, wantMirror},
		{"tombstone passes through", tombstone, tombstone},
		{"other object passes through", &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}}, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := deleter.StripPod(tc.in)
			if err != nil {
				t.Fatalf("StripPod: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("StripPod =\n%#v\nwant\n%#v", got, tc.want)
			}
		})
	}
}

func TestListOptions(t *testing.T) {
	o := metav1.ListOptions{FieldSelector: "spec.nodeName=node-1", ResourceVersion: "7"}
	deleter.ListOptions(&o)
	want := metav1.ListOptions{LabelSelector: record.Selector, FieldSelector: "spec.nodeName=node-1", ResourceVersion: "7"}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("ListOptions set %+v, want %+v", o, want)
	}
	sel, err := labels.Parse(o.LabelSelector)
	if err != nil {
		t.Fatalf("parsing selector %q: %v", o.LabelSelector, err)
	}
	for _, tc := range []struct {
		labels map[string]string
		want   bool
	}{
		{recordedPod("web", "uid-web", epoch).Labels, true},
		{map[string]string{record.DeadlineLabel: "garbage"}, true}, // reported as invalid, not hidden
		{map[string]string{"app": "web"}, false},
		{nil, false},
	} {
		if got := sel.Matches(labels.Set(tc.labels)); got != tc.want {
			t.Errorf("selector %q matches %v = %v, want %v", sel, tc.labels, got, tc.want)
		}
	}
}

func TestInformerCachesOnlyRecordedPodsStripped(t *testing.T) {
	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: namespace, UID: "uid-plain"}}
	h := newHarness(t, deleter.Options{}, recordedPod("web", "uid-web", epoch.Add(time.Hour)), plain)
	h.start()

	cached, err := h.lister().List(labels.Everything())
	if err != nil {
		t.Fatalf("listing the cache: %v", err)
	}
	var names []string
	for _, p := range cached {
		names = append(names, p.Name)
		if p.Annotations != nil || p.ManagedFields != nil || p.Kind != "Pod" {
			t.Errorf("cached pod %s was not stripped: %+v", p.Name, p)
		}
	}
	if !slices.Equal(names, []string{"web"}) {
		t.Errorf("cached pods = %v, want [web]", names)
	}
	var selectors []string
	for _, a := range h.meta.Actions() {
		if l, ok := a.(clienttesting.ListAction); ok && a.GetResource().Resource == "pods" {
			selectors = append(selectors, l.GetListRestrictions().Labels.String())
		}
	}
	if len(selectors) == 0 || slices.ContainsFunc(selectors, func(s string) bool { return s != record.DeadlineLabel }) {
		t.Errorf("pod list selectors = %q, want every one %q", selectors, record.DeadlineLabel)
	}
	if got := h.counter(recordedMetric); got != 1 {
		t.Errorf("%s = %v, want 1", recordedMetric, got)
	}
}

// TestEvictsOncePerPodWhileItTerminates: after a successful eviction the pod
// still exists for its grace period, and updates to it (the kubelet's status)
// may reach the controller before the informer shows its deletionTimestamp.
// Found on a real node: the pod was evicted, and reported, twice.
func TestEvictsOncePerPodWhileItTerminates(t *testing.T) {
	const uid = types.UID("uid-web")
	h := newHarness(t, deleter.Options{}, recordedPod("web", uid, epoch.Add(-time.Second)))
	h.start()
	eventually(t, "the eviction", func() bool { return len(h.evictions("web")) > 0 })
	// The fake's eviction leaves the pod as it was, without a
	// deletionTimestamp: as the lister sees it right after a real one.
	h.update("web", func(p *metav1.PartialObjectMetadata) { p.Annotations["example.com/status"] = "terminating" })
	h.drain()
	if got := h.evictions("web"); len(got) != 1 {
		t.Errorf("evictions = %v, want one", got)
	}
	if got := h.events.about("web", deleter.ReasonEvicted); len(got) != 1 {
		t.Errorf("Evicted events = %+v, want one", got)
	}
}

// TestQueueHorizon: a pod due beyond the queue's horizon is not even queued
// (its resync brings it back), unlike one due sooner or one whose record
// sync must report; once a look (a resync) finds it within the horizon, it
// waits there and is evicted at its deadline, not before.
func TestQueueHorizon(t *testing.T) {
	deadline := epoch.Add(time.Hour)
	broken := recordedPod("broken", "uid-broken", deadline)
	broken.Labels[record.DeadlineLabel] = "soon"
	h := newHarness(t, deleter.Options{QueueHorizon: 10 * time.Minute},
		recordedPod("web", "uid-web", deadline), broken)
	h.start()
	h.drain()
	if got := h.clock.Waiters(); got != h.idle {
		t.Fatalf("clock waiters = %d, want %d: a pod due in an hour waits in the queue", got, h.idle)
	}
	if got := metricValue(t, h.reg, "exec_reaper_deleter_queued_total"); got != 2 {
		t.Fatalf("queued = %v, want 2: the invalid record and drain's sentinel, not the pod due in an hour", got)
	}
	if got := h.events.about("broken", deleter.ReasonInvalidRecord); len(got) != 1 {
		t.Fatalf("InvalidRecord events = %+v, want one", got)
	}
	h.clock.Step(55 * time.Minute)
	h.update("web", func(p *metav1.PartialObjectMetadata) { p.ResourceVersion = "" }) // as a resync would
	h.waitDelayed()
	if got := metricValue(t, h.reg, "exec_reaper_deleter_queued_total"); got != 3 {
		t.Fatalf("queued = %v, want 3: and the pod now due within the horizon", got)
	}
	if got := h.evictions("web"); len(got) != 0 {
		t.Fatalf("evicted before the deadline: %v", got)
	}
	h.clock.Step(5 * time.Minute)
	eventually(t, "the eviction at the deadline", func() bool { return len(h.evictions("web")) == 1 })
}

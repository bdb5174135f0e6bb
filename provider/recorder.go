package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/record"
)

// maxConflicts bounds how often a write is retried when the pod changed
// between the read and the write. Conflicts are rare (the kubelet updates
// status, not metadata) and each retry is one more GET and PATCH.
const maxConflicts = 5

// Result is what recording one entry produced: the value of a key's item.
type Result struct {
	// Deadline is when the pod will be evicted; for a trial entry, when it
	// would be.
	Deadline time.Time `json:"deadline"`
	// Outcome is first, added, repeat or earlier, or trial for a trial entry.
	Outcome record.Outcome `json:"outcome"`
}

// OutcomeTrial is the outcome of every trial entry: recorded without
// consequence.
const OutcomeTrial record.Outcome = "trial"

// Recorder writes entries onto pods.
type Recorder struct {
	client kubernetes.Interface
	clock  clock.Clock
	events *EventSink
}

// NewRecorder returns a Recorder that writes through client and announces new
// entries through events, which may be nil.
func NewRecorder(client kubernetes.Interface, clk clock.Clock, events *EventSink) *Recorder {
	return &Recorder{client: client, clock: clk, events: events}
}

// Record writes req's entry onto its pod, made now (see RecordAt).
func (r *Recorder) Record(ctx context.Context, req Request) (Result, error) {
	return r.RecordAt(ctx, req, r.clock.Now())
}

// RecordAt writes req's entry, made at at, onto its pod with one GET and at
// most one PATCH, the PATCH bound to the resourceVersion it read, retried on
// conflict. The deadline only ever moves earlier. An entry that repeats one
// already recorded writes nothing, unless it asks for an earlier deadline. A
// trial entry (req.Trial) writes only the trial annotation.
//
// The PATCH goes to the pod's status subresource, which accepts label and
// annotation changes but no spec change. Gatekeeper's webhook deliberately
// never sees status writes, and that matters: the provider is called from
// inside a Gatekeeper review, and Gatekeeper bounds its concurrent reviews
// (to GOMAXPROCS by default). A write that needed a second review could wait
// for a slot held by the very request waiting on it, until the timeout. It
// also spares every entry a webhook round trip, and the provider needs no
// right to change pod specs. That the status subresource keeps metadata is
// legacy behaviour, not a contract, so the pod the PATCH returns is checked:
// a write the API server accepted but did not keep fails the key.
func (r *Recorder) RecordAt(ctx context.Context, req Request, at time.Time) (Result, error) {
	pods := r.client.CoreV1().Pods(req.Namespace)
	entry := req.Entry(at)
	for attempt := 1; ; attempt++ {
		pod, err := pods.Get(ctx, req.Name, metav1.GetOptions{})
		if err != nil {
			return Result{}, describe("reading", req, err)
		}
		if pod.DeletionTimestamp != nil {
			// Already going: nothing to keep alive, but say when.
			return Result{Deadline: pod.DeletionTimestamp.UTC(), Outcome: outcome(req, record.OutcomeRepeat)}, nil
		}
		w := r.plan(ctx, pod, req, entry)
		if w.patch == nil {
			return w.result, nil
		}
		updated, err := pods.Patch(ctx, req.Name, types.MergePatchType, w.patch, metav1.PatchOptions{FieldManager: FieldManager}, "status")
		if apierrors.IsConflict(err) && attempt < maxConflicts {
			continue
		}
		if err != nil {
			return Result{}, describe("writing record on", req, err)
		}
		if !carries(updated, w.labels, w.annotations) {
			return Result{}, fmt.Errorf("writing record on pod %s/%s: the API server accepted the write but did not keep the record: "+
				"this Kubernetes version may no longer accept metadata changes through pods/status; exec-reaper cannot record entries "+
				"on this cluster until it writes the record another way (report the Kubernetes version to exec-reaper's maintainers)",
				req.Namespace, req.Name)
		}
		r.events.announce(w.notice)
		return w.result, nil
	}
}

// write is what recording an entry on a pod takes: the patch (nil when
// nothing is to be written), what the pod must carry afterwards, the answer
// and the Event.
type write struct {
	patch       []byte
	labels      map[string]string
	annotations map[string]string
	result      Result
	notice      announcement
}

// plan folds entry into the record (or trial record) on pod.
func (r *Recorder) plan(ctx context.Context, pod *corev1.Pod, req Request, entry record.Entry) write {
	ttl := req.ttl
	if req.Trial {
		var existing *record.Trial
		if t, err := record.ReadTrial(pod.Annotations); err == nil {
			existing = &t
		} else if !errors.Is(err, record.ErrNoRecord) {
			klog.FromContext(ctx).Info("Replacing damaged trial record", "pod", klog.KObj(pod), "err", err)
		}
		t, changed := record.ApplyTrial(existing, pod.UID, entry, ttl)
		w := write{result: Result{Deadline: t.WouldEvictAt, Outcome: OutcomeTrial}}
		if changed == record.OutcomeRepeat {
			return w
		}
		w.annotations = t.Annotations()
		w.patch = metadataPatch(pod, nil, w.annotations)
		w.notice = announcement{pod: pod, entry: t.Last, eventUID: t.Last.RequestUID, deadline: t.WouldEvictAt, trial: true}
		if changed == record.OutcomeEarlier {
			w.notice = earlierNotice(w.notice, existing.Recent, entry)
		}
		return w
	}
	var existing *record.Record
	switch rec, err := record.Read(pod.Labels, pod.Annotations); {
	case err == nil:
		existing = &rec
	case errors.Is(err, record.ErrNoRecord):
	default:
		// Damaged descriptive annotations must not postpone an eviction:
		// keep what binds the record (its deadline and pod UID), as the
		// deleter does, and rewrite the rest.
		klog.FromContext(ctx).Info("Repairing damaged record", "pod", klog.KObj(pod), "err", err)
		if rec.PodUID != "" { // Read got as far as the binding
			existing = &record.Record{Deadline: rec.Deadline, PodUID: rec.PodUID, Entries: rec.Entries}
		}
	}
	rec, changed := record.Apply(existing, pod.UID, entry, ttl)
	w := write{result: Result{Deadline: rec.Deadline, Outcome: changed}}
	if changed == record.OutcomeRepeat {
		return w
	}
	w.labels = rec.Labels()
	all := rec.Annotations()
	w.annotations = map[string]string{record.DeadlineAnnotation: all[record.DeadlineAnnotation], record.PodUIDAnnotation: all[record.PodUIDAnnotation]}
	w.patch = metadataPatch(pod, w.labels, all)
	w.notice = announcement{pod: pod, entry: rec.Last, eventUID: rec.Last.RequestUID, deadline: rec.Deadline}
	if changed == record.OutcomeEarlier {
		marks := existing.Recent
		if len(marks) == 0 {
			marks = []record.Mark{existing.Last.Mark(existing.Last.Time)}
		}
		w.notice = earlierNotice(w.notice, marks, entry)
	}
	return w
}

// earlierNotice turns n into the update of the Event of the entry that e
// repeats, among marks: a repeat that moved the deadline earlier has no Event
// of its own.
func earlierNotice(n announcement, marks []record.Mark, e record.Entry) announcement {
	bounded := record.Bound(e)
	n.entry, n.eventUID, n.update = bounded, e.RequestUID, true
	if m, ok := record.RepeatOf(marks, bounded.Mark(e.Time)); ok {
		n.eventUID = m.RequestUID
	}
	return n
}

// outcome is the outcome to answer for req: trial for every trial entry.
func outcome(req Request, o record.Outcome) record.Outcome {
	if req.Trial {
		return OutcomeTrial
	}
	return o
}

// carries reports whether pod holds every label and annotation given.
func carries(pod *corev1.Pod, labels, annotations map[string]string) bool {
	if pod == nil {
		return false
	}
	for k, v := range labels {
		if got, ok := pod.Labels[k]; !ok || got != v {
			return false
		}
	}
	for k, v := range annotations {
		if got, ok := pod.Annotations[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// FieldManager names exec-reaper's writes in managedFields.
const FieldManager = "exec-reaper"

// metadataPatch returns a JSON merge patch that sets labels and annotations
// on pod (nil: none), valid only while the pod still has the resourceVersion
// that was read: the API server answers 409 Conflict otherwise.
func metadataPatch(pod *corev1.Pod, labels, annotations map[string]string) []byte {
	meta := map[string]any{"resourceVersion": pod.ResourceVersion, "annotations": annotations}
	if labels != nil {
		meta["labels"] = labels
	}
	b, _ := json.Marshal(map[string]any{"metadata": meta}) // maps of strings always marshal.
	return b
}

// describe turns an API error into a per-key message a person can act on.
func describe(verb string, req Request, err error) error {
	pod := req.Namespace + "/" + req.Name
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("pod %s not found", pod)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s pod %s is forbidden to exec-reaper (check its RBAC): %w", verb, pod, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fmt.Errorf("%s pod %s: timed out: %w", verb, pod, err)
	}
	return fmt.Errorf("%s pod %s: %w", verb, pod, err)
}

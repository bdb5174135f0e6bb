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

// Result is what recording one entry produced.
type Result struct {
	// Deadline is when the pod will be evicted.
	Deadline time.Time `json:"deadline"`
	// Outcome is first, added or repeat.
	Outcome record.Outcome `json:"outcome"`
}

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

// Record writes req's entry onto its pod with one GET and at most one PATCH,
// the PATCH bound to the resourceVersion it read, retried on conflict. The
// deadline only ever moves earlier. An entry that repeats the last one (the
// same kubectl call reaching admission twice) writes nothing.
//
// The PATCH goes to the pod's status subresource, which accepts label and
// annotation changes but no spec change. Gatekeeper's webhook deliberately
// never sees status writes, and that matters: the provider is called from
// inside a Gatekeeper review, and Gatekeeper bounds its concurrent reviews
// (to GOMAXPROCS by default). A write that needed a second review could wait
// for a slot held by the very request waiting on it, until the timeout. It
// also spares every entry a webhook round trip, and the provider needs no
// right to change pod specs.
func (r *Recorder) Record(ctx context.Context, req Request) (Result, error) {
	pods := r.client.CoreV1().Pods(req.Namespace)
	entry := req.Entry(r.clock.Now())
	for attempt := 1; ; attempt++ {
		pod, err := pods.Get(ctx, req.Name, metav1.GetOptions{})
		if err != nil {
			return Result{}, describe("reading", req, err)
		}
		if pod.DeletionTimestamp != nil {
			// Already going: nothing to keep alive, but say when.
			return Result{Deadline: pod.DeletionTimestamp.UTC(), Outcome: record.OutcomeRepeat}, nil
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
		rec, outcome := record.Apply(existing, pod.UID, entry, req.ttl)
		if outcome == record.OutcomeRepeat {
			return Result{Deadline: rec.Deadline, Outcome: outcome}, nil
		}
		_, err = pods.Patch(ctx, req.Name, types.MergePatchType, mergePatch(pod, rec), metav1.PatchOptions{FieldManager: FieldManager}, "status")
		if apierrors.IsConflict(err) && attempt < maxConflicts {
			continue
		}
		if err != nil {
			return Result{}, describe("writing record on", req, err)
		}
		r.events.Announce(pod, rec, outcome)
		return Result{Deadline: rec.Deadline, Outcome: outcome}, nil
	}
}

// FieldManager names exec-reaper's writes in managedFields.
const FieldManager = "exec-reaper"

// mergePatch returns a JSON merge patch that sets rec on pod, valid only while
// the pod still has the resourceVersion that was read: the API server
// answers 409 Conflict otherwise.
func mergePatch(pod *corev1.Pod, rec record.Record) []byte {
	p := map[string]any{"metadata": map[string]any{
		"resourceVersion": pod.ResourceVersion,
		"labels":          rec.Labels(),
		"annotations":     rec.Annotations(),
	}}
	b, _ := json.Marshal(p) // maps of strings always marshal.
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

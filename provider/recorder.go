package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
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

// maxConflicts bounds how often a batch's write is retried when the pod
// changed between the read and the write. Concurrent entries into one pod
// never conflict with each other (they are written together, see RecordAt);
// what is left is another writer (a second provider replica, the kubelet's
// own status updates), and each retry is one more GET and PATCH.
const maxConflicts = 5

// Result is what recording one entry produced: the value of a key's item.
type Result struct {
	// Deadline is when the pod will be evicted; for a trial entry, when it
	// would be.
	Deadline time.Time `json:"deadline"`
	// Outcome is first, added, repeat, earlier or stricter, or trial for a
	// trial entry.
	Outcome record.Outcome `json:"outcome"`
	// Action is what the record asks for at the deadline, which another
	// constraint matching the same pod may have made stricter than the
	// caller's (quarantine wins); for a trial entry, what its constraint
	// would have done. Empty when the record's action is one this provider
	// does not know.
	Action record.Action `json:"action,omitempty"`
}

// OutcomeTrial is the outcome of every trial entry: recorded without
// consequence.
const OutcomeTrial record.Outcome = "trial"

// Recorder writes entries onto pods.
type Recorder struct {
	client kubernetes.Interface
	clock  clock.Clock
	events *EventSink

	mu sync.Mutex
	// queues holds, for each pod being written, the entries that wait for
	// the next write; a pod is in it while its writer goroutine runs.
	queues map[types.NamespacedName]*podQueue
	// written holds, for a short while (recentWrite), the pod as the last
	// writer's PATCH returned it, for the next writer to start from: the
	// watch cache may not have the write yet, and a stale read costs a 409
	// and a second read. It is as trustworthy as the cache's copy (a write
	// bound to its resourceVersion proves it, see writeBatch).
	written map[types.NamespacedName]writtenPod
}

// recentWrite is how long the pod a write returned is kept for the next
// entry into it.
const recentWrite = 2 * time.Second

// writtenPod is the pod as a PATCH returned it, and when.
type writtenPod struct {
	pod *corev1.Pod
	at  time.Time
}

// podQueue is what waits for one pod's writer.
type podQueue struct {
	pending []*call
}

// call is one RecordAt waiting for its entry to be written.
type call struct {
	ctx   context.Context
	req   Request
	entry record.Entry
	done  chan struct{} // closed by the writer once res and err are settled
	res   Result
	err   error
}

// NewRecorder returns a Recorder that writes through client and announces new
// entries through events, which may be nil.
func NewRecorder(client kubernetes.Interface, clk clock.Clock, events *EventSink) *Recorder {
	return &Recorder{client: client, clock: clk, events: events,
		queues: map[types.NamespacedName]*podQueue{}, written: map[types.NamespacedName]writtenPod{}}
}

// Record writes req's entry onto its pod, made now (see RecordAt).
func (r *Recorder) Record(ctx context.Context, req Request) (Result, error) {
	return r.RecordAt(ctx, req, r.clock.Now())
}

// RecordAt writes req's entry, made at at, onto its pod. The deadline only
// ever moves earlier. An entry that repeats one already recorded writes
// nothing, unless it asks for an earlier deadline. A trial entry (req.Trial)
// writes only the trial annotation.
//
// Entries into one pod are written by one goroutine at a time, in batches:
// the entries that arrive while a write is in flight wait and then go
// together into the next one, so a burst of N concurrent entries into one
// pod costs a few writes, not N writes racing each other into conflicts
// (which, retried, cost a GET and a PATCH each, each attempt holding a
// Gatekeeper serving slot). A batch is one GET (none when the previous
// batch's PATCH returned the pod) and at most one PATCH bound to the
// resourceVersion it read; each entry is folded in, in arrival order, with
// record.Apply (or record.ApplyTrial), and the whole batch is re-read and
// re-folded on conflict. Every caller gets its own outcome; its deadline is
// the record's after the whole batch, the earliest any entry asked for.
// RecordAt returns when its batch is written or ctx is done, whichever is
// first; the batch goes on while any caller in it still waits.
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
// a write the API server accepted but did not keep fails the keys.
func (r *Recorder) RecordAt(ctx context.Context, req Request, at time.Time) (Result, error) {
	c := &call{ctx: ctx, req: req, entry: req.Entry(at), done: make(chan struct{})}
	key := types.NamespacedName{Namespace: req.Namespace, Name: req.Name}
	r.mu.Lock()
	q, running := r.queues[key]
	if !running {
		q = &podQueue{}
		r.queues[key] = q
	}
	q.pending = append(q.pending, c)
	r.mu.Unlock()
	if !running {
		go r.drain(key, q)
	}
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		select {
		case <-c.done: // finished at the same moment: the answer wins
			return c.res, c.err
		default:
		}
		return Result{}, describe("recording on", req, ctx.Err())
	}
}

// drain writes q's batches, one after another, until no entry waits. The
// callers of a batch are answered only once it is known whether another
// batch follows, so a caller that records again after its answer never finds
// this writer still running (and a caller's sequence of API calls does not
// depend on a race).
func (r *Recorder) drain(key types.NamespacedName, q *podQueue) {
	var base *corev1.Pod // the pod as the previous batch left it
	r.mu.Lock()
	if w, ok := r.written[key]; ok {
		delete(r.written, key)
		if r.clock.Since(w.at) < recentWrite {
			base = w.pod
		}
	}
	r.mu.Unlock()
	var answered []*call
	for {
		r.mu.Lock()
		calls := q.pending
		q.pending = nil
		if len(calls) == 0 {
			delete(r.queues, key)
			r.keepWritten(key, base)
		}
		r.mu.Unlock()
		for _, c := range answered {
			close(c.done)
		}
		if len(calls) == 0 {
			return
		}
		base = r.writeBatch(key, calls, base)
		answered = calls
	}
}

// maxWritten bounds how many pods are kept for their next writer: a burst
// into more pods than that within recentWrite reads the rest.
const maxWritten = 1024

// keepWritten keeps pod, as a write returned it, for the next writer of key:
// only the metadata a write and its Event use. What is older than
// recentWrite is forgotten once many are kept, and no more than maxWritten
// are. r.mu is held.
func (r *Recorder) keepWritten(key types.NamespacedName, pod *corev1.Pod) {
	if pod == nil || pod.DeletionTimestamp != nil {
		return // going: the next entry may be into a new pod of that name
	}
	now := r.clock.Now()
	if len(r.written) >= 256 {
		for k, w := range r.written {
			if now.Sub(w.at) >= recentWrite {
				delete(r.written, k)
			}
		}
	}
	if len(r.written) >= maxWritten {
		return
	}
	r.written[key] = writtenPod{at: now, pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
		Labels: pod.Labels, Annotations: pod.Annotations,
	}}}
}

// settle sets c's answer; drain delivers it.
func (c *call) settle(res Result, err error) { c.res, c.err = res, err }

// writeBatch records calls on the pod key, reading it unless base (the pod as
// the previous batch's PATCH returned it) is given, and returns the pod as it
// is known afterwards (nil when unknown). Every call is settled.
func (r *Recorder) writeBatch(key types.NamespacedName, calls []*call, base *corev1.Pod) *corev1.Pod {
	live := make([]*call, 0, len(calls))
	for _, c := range calls {
		if err := c.ctx.Err(); err != nil {
			c.settle(Result{}, describe("recording on", c.req, err)) // its caller has gone
			continue
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return base
	}
	ctx, cancel := batchContext(live)
	defer cancel()
	failAll := func(verb string, err error) *corev1.Pod {
		for _, c := range live {
			c.settle(Result{}, describe(verb, c.req, err))
		}
		return nil
	}
	pods := r.client.CoreV1().Pods(key.Namespace)
	pod := base
	// The first read of a batch is served by the API server's watch cache
	// (resourceVersion "0"): no etcd read, on the admission path. The write
	// is bound to the resourceVersion read, so a stale copy costs a 409 and
	// a read from etcd, never a lost entry; and nothing is decided without a
	// write from a copy that may be stale (or another incarnation's).
	fromCache := pod == nil
	for conflicts := 0; ; {
		fromBase := pod != nil
		if pod == nil {
			opts := metav1.GetOptions{}
			if fromCache {
				opts.ResourceVersion = "0"
			}
			var err error
			if pod, err = pods.Get(ctx, key.Name, opts); err != nil {
				if fromCache && apierrors.IsNotFound(err) {
					pod, fromCache = nil, false // a pod too new for the cache
					continue
				}
				return failAll("reading", err)
			}
		}
		if pod.DeletionTimestamp != nil && (fromCache || fromBase) {
			// Going, in a copy that may be another pod's of the same name.
			pod, fromCache = nil, false
			continue
		}
		b := r.fold(ctx, pod, live)
		if pod.DeletionTimestamp != nil && (b.deadline.IsZero() || !pod.DeletionTimestamp.After(b.deadline)) {
			// Going by the deadline asked for: nothing to keep alive, but
			// say when. A pod whose termination would outlive that deadline
			// (a long grace period, which a container that ignores SIGTERM
			// runs to its end) is recorded as any other; the deleter cannot
			// make it go sooner, and says so at the deadline.
			for _, c := range live {
				c.settle(Result{Deadline: pod.DeletionTimestamp.UTC(), Outcome: outcome(c.req, record.OutcomeRepeat)}, nil)
			}
			return pod
		}
		if b.patch == nil {
			if fromBase || fromCache {
				// Nothing to write proves nothing about a pod known only
				// from the last write or from the cache (a record since
				// lifted, say): read it.
				pod, fromCache = nil, false
				continue
			}
			for i, c := range live {
				c.settle(b.results[i], nil)
			}
			return pod
		}
		updated, err := pods.Patch(ctx, key.Name, types.MergePatchType, b.patch, metav1.PatchOptions{FieldManager: FieldManager}, "status")
		if apierrors.IsConflict(err) {
			if !fromBase && !fromCache {
				conflicts++ // another writer, not a stale copy
			}
			fromCache = false
			if conflicts < maxConflicts {
				pod = nil
				continue
			}
		}
		if err != nil {
			if mayHaveLanded(err) {
				r.settleUnknown(ctx, key, b)
			}
			return failAll("writing record on", err)
		}
		if !carries(updated, b.labels, b.annotations) || !lacks(updated, b.absent) {
			for _, c := range live {
				c.settle(Result{}, fmt.Errorf("writing record on pod %s/%s: the API server accepted the write but did not keep the record: "+
					"this Kubernetes version may no longer accept metadata changes through pods/status; exec-reaper cannot record entries "+
					"on this cluster until it writes the record another way (report the Kubernetes version to exec-reaper's maintainers)",
					key.Namespace, key.Name))
			}
			return nil
		}
		for i, c := range live {
			c.settle(b.results[i], nil)
		}
		for _, n := range b.notices {
			r.events.announce(n)
		}
		return updated
	}
}

// unknownWriteWait is how long after a write whose outcome is unknown the
// pod is read to learn it: the API server may finish a write after its
// client gave up (kube-apiserver logs it as "Post-timeout activity", 0.2 s
// after in the burst benchmark), and the read must come after that commit.
const unknownWriteWait = 2 * time.Second

// unknownWriteTimeout bounds that read.
const unknownWriteTimeout = 10 * time.Second

// mayHaveLanded reports whether a write that failed with err may have been
// applied all the same: the request timed out or was cancelled, the
// connection failed, or the API server answered 5xx. A 4xx answer is a
// refusal.
func mayHaveLanded(err error) bool {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		code := status.Status().Code
		return code == 0 || code >= 500
	}
	return true
}

// settleUnknown learns, in the background, whether batch b's write on the
// pod key landed although it failed (mayHaveLanded): its callers have their
// error already, but an entry recorded must not go without its Event. After
// unknownWriteWait it reads the pod from etcd. If the pod carries all that
// b wrote, the write landed and nothing has been written since, so no
// one else has announced its entries: their Events are announced as usual.
// Otherwise each new entry of b is counted as
// exec_reaper_provider_events_total{result="unknown"} and logged: the write
// did not land, or landed and was followed by another (whose entries this
// replica or another may have announced with it: announcing them again
// could count one entry twice in a folded Event). The record, and the pod's
// eviction, stand either way.
func (r *Recorder) settleUnknown(ctx context.Context, key types.NamespacedName, b batch) {
	if len(b.notices) == 0 || r.events == nil {
		return
	}
	ctx = context.WithoutCancel(ctx)
	go func() {
		<-r.clock.After(unknownWriteWait)
		ctx, cancel := context.WithTimeout(ctx, unknownWriteTimeout)
		defer cancel()
		pod, err := r.client.CoreV1().Pods(key.Namespace).Get(ctx, key.Name, metav1.GetOptions{})
		// All of what the write set, not only what proves a record kept
		// (b.annotations): a later write of other entries keeps the same
		// deadline and binding.
		if err == nil && carries(pod, b.labels, b.setAnnotations) && lacks(pod, b.absent) {
			for _, n := range b.notices {
				r.events.announce(n)
			}
			return
		}
		var unknown []string
		for _, n := range b.notices {
			if !n.update { // a moved deadline's entry has its Event already
				unknown = append(unknown, n.eventUID)
			}
		}
		if len(unknown) == 0 {
			return
		}
		eventsTotal.WithLabelValues("unknown").Add(float64(len(unknown)))
		log := klog.FromContext(ctx).WithValues("pod", klog.KRef(key.Namespace, key.Name), "requestUIDs", unknown)
		if err != nil {
			log.Error(err, "A record write failed without a clear outcome (a timeout, a lost connection or a server error) and the pod could not be read back: these entries may be recorded without an Event (the record and the eviction stand either way)")
			return
		}
		log.Info("A record write failed without a clear outcome (a timeout, a lost connection or a server error) and the pod does not carry it now: it did not land, or another write followed it; if these entries were recorded, they may have no Event (the record and the eviction stand either way)")
	}()
}

// batchContext returns the context of a batch's API calls: it carries the
// first call's values (its logger) and ends once every caller's own context
// has ended, so a batch works as long as anyone waits for it, and no longer.
func batchContext(calls []*call) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(calls[0].ctx))
	var waiting atomic.Int64
	waiting.Store(int64(len(calls)))
	stops := make([]func() bool, 0, len(calls))
	for _, c := range calls {
		stops = append(stops, context.AfterFunc(c.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		}))
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// batch is what recording a batch of entries on a pod takes: the patch (nil
// when nothing is to be written), what the pod must carry afterwards, each
// call's answer and the Events.
type batch struct {
	patch       []byte
	labels      map[string]string
	annotations map[string]string
	// absent are the labels the patch removes.
	absent  []string
	results []Result
	notices []announcement
	// deadline is the earliest deadline of the batch's entries that are
	// not trial entries (zero if all are).
	deadline time.Time
	// setAnnotations are all the annotations the patch sets (annotations
	// holds only those that prove a record kept; labels holds every label
	// set): a pod that carries labels and setAnnotations, and lacks absent,
	// holds this very write.
	setAnnotations map[string]string
}

// fold folds every call's entry, in order, into the record on pod, each
// seeing the record as the ones before it left it, and returns the one write
// that records them all.
func (r *Recorder) fold(ctx context.Context, pod *corev1.Pod, calls []*call) batch {
	sim := *pod // what the pod will hold; only its labels and annotations change
	sim.Labels, sim.Annotations = maps.Clone(pod.Labels), maps.Clone(pod.Annotations)
	set := func(into *map[string]string, kv map[string]string) {
		if *into == nil {
			*into = map[string]string{}
		}
		maps.Copy(*into, kv)
	}
	var b batch
	var setLabels, setAnnotations map[string]string
	checkLabels, checkAnnotations, removeLabels := map[string]bool{}, map[string]bool{}, map[string]bool{}
	var real, trial time.Time // the earliest deadline answered, of each kind
	earliest := func(t *time.Time, d time.Time) {
		if t.IsZero() || d.Before(*t) {
			*t = d
		}
	}
	for _, c := range calls {
		w := r.plan(ctx, &sim, c.req, c.entry)
		b.results = append(b.results, w.result)
		if c.req.Trial {
			earliest(&trial, w.result.Deadline)
		} else {
			earliest(&real, w.result.Deadline)
		}
		if !w.writes {
			continue
		}
		for _, k := range w.remove {
			delete(sim.Labels, k)
			delete(setLabels, k)
			delete(checkLabels, k)
			removeLabels[k] = true
		}
		set(&sim.Labels, w.labels)
		set(&sim.Annotations, w.annotations)
		set(&setLabels, w.labels)
		set(&setAnnotations, w.annotations)
		for k := range w.labels {
			checkLabels[k] = true
			delete(removeLabels, k)
		}
		for _, k := range w.check {
			checkAnnotations[k] = true
		}
		w.notice.pod = pod
		b.notices = append(b.notices, w.notice)
	}
	// Every answer and Event tells the deadline, and the action, after the
	// whole batch.
	var action record.Action
	switch a := record.Action(sim.Labels[record.ActionLabel]); a {
	case "":
		action = record.ActionEvict
	case record.ActionEvict, record.ActionQuarantine:
		action = a
	}
	for i, c := range calls {
		if c.req.Trial {
			b.results[i].Deadline = trial
			b.results[i].Action = record.ActionEvict
			if c.req.Action == record.ActionQuarantine {
				b.results[i].Action = record.ActionQuarantine
			}
		} else {
			b.results[i].Deadline, b.results[i].Action = real, action
		}
	}
	b.deadline = real
	for i := range b.notices {
		if b.notices[i].trial {
			b.notices[i].deadline = trial
		} else {
			b.notices[i].deadline = real
		}
	}
	if setAnnotations == nil {
		return b
	}
	b.absent = slices.Sorted(maps.Keys(removeLabels))
	b.patch = metadataPatch(pod, setLabels, b.absent, setAnnotations)
	b.setAnnotations = setAnnotations
	b.labels, b.annotations = map[string]string{}, map[string]string{}
	for k := range checkLabels {
		b.labels[k] = sim.Labels[k]
	}
	for k := range checkAnnotations {
		b.annotations[k] = sim.Annotations[k]
	}
	return b
}

// write is what recording one entry on a pod changes: the labels and
// annotations to set (none unless writes), the annotations among them that
// the pod must carry afterwards, the answer and the Event.
type write struct {
	writes bool
	labels map[string]string
	// remove names labels the pod must no longer carry.
	remove      []string
	annotations map[string]string
	check       []string
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
		w.writes, w.annotations, w.check = true, t.Annotations(), []string{record.TrialAnnotation}
		w.notice = announcement{entry: t.Last, eventUID: t.Last.RequestUID, deadline: t.WouldEvictAt, trial: true,
			quarantine: req.Action == record.ActionQuarantine}
		if changed == record.OutcomeEarlier {
			w.notice = earlierNotice(w.notice, existing.Recent, entry)
		}
		return w
	}
	var existing *record.Record
	switch rec, err := record.Read(pod.Labels, pod.Annotations); {
	case err == nil, errors.Is(err, record.ErrUnknownAction):
		// An unknown action (a newer provider's, or the pod creator's) is
		// left on the pod as it is; the rest of the record was read as usual,
		// so its history is kept.
		if err != nil {
			klog.FromContext(ctx).Info("Record asks for an action this provider does not know; keeping it", "pod", klog.KObj(pod), "err", err)
		}
		existing = &rec
	case errors.Is(err, record.ErrNoRecord):
	default:
		// Damaged descriptive annotations must not postpone an eviction:
		// keep what binds the record (its deadline and pod UID), as the
		// deleter does, and rewrite the rest.
		klog.FromContext(ctx).Info("Repairing damaged record", "pod", klog.KObj(pod), "err", err)
		if rec.PodUID != "" { // Read got as far as the binding
			existing = &record.Record{Deadline: rec.Deadline, PodUID: rec.PodUID, Action: rec.Action, Entries: rec.Entries}
		}
	}
	rec, changed := record.Apply(existing, pod.UID, entry, ttl, req.Action)
	w := write{result: Result{Deadline: rec.Deadline, Outcome: changed}}
	if changed == record.OutcomeRepeat {
		return w
	}
	w.writes, w.labels, w.annotations = true, rec.Labels(), rec.Annotations()
	if pod.Labels[record.ActionLabel] == string(record.ActionQuarantine) && rec.Action != record.ActionQuarantine {
		// A fresh record where one was lifted: a member of the guard's
		// extensionGroups lifts a record by removing its deadline and may
		// leave its action behind, which a merge patch would keep, and the
		// new record would ask for an action no constraint asked for.
		w.remove = []string{record.ActionLabel}
	}
	w.check = []string{record.DeadlineAnnotation, record.PodUIDAnnotation}
	w.notice = announcement{entry: rec.Last, eventUID: rec.Last.RequestUID, deadline: rec.Deadline,
		quarantine: rec.Action == record.ActionQuarantine}
	if changed == record.OutcomeEarlier || changed == record.OutcomeStricter {
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

// lacks reports whether pod carries none of the labels given.
func lacks(pod *corev1.Pod, labels []string) bool {
	return pod != nil && !slices.ContainsFunc(labels, func(k string) bool { _, ok := pod.Labels[k]; return ok })
}

// FieldManager names exec-reaper's writes in managedFields.
const FieldManager = "exec-reaper"

// metadataPatch returns a JSON merge patch that sets labels and annotations
// on pod (nil: none) and removes the labels named in remove, valid only while
// the pod still has the resourceVersion that was read: the API server
// answers 409 Conflict otherwise.
func metadataPatch(pod *corev1.Pod, labels map[string]string, remove []string, annotations map[string]string) []byte {
	meta := map[string]any{"resourceVersion": pod.ResourceVersion, "annotations": annotations}
	if labels != nil || len(remove) > 0 {
		l := make(map[string]any, len(labels)+len(remove))
		for k, v := range labels {
			l[k] = v
		}
		for _, k := range remove {
			l[k] = nil // a merge patch's null removes the key
		}
		meta["labels"] = l
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

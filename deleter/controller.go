// Package deleter is exec-reaper's controller: it evicts every recorded pod at
// its deadline, through the Eviction API so that PodDisruptionBudgets hold,
// and only the pod the record was written on.
package deleter

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/metadata/metadatalister"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/record"
)

// Event reasons the deleter emits on pods.
const (
	ReasonEvicted         = "ExecReaperEvicted"
	ReasonEvictionRefused = "ExecReaperEvictionRefused"
	ReasonWouldEvict      = "ExecReaperWouldEvict"
	ReasonInvalidRecord   = "ExecReaperInvalidRecord"
	// ReasonTerminationOutlivesDeadline: a recorded pod began terminating
	// before its deadline with a grace period that ends well after it.
	ReasonTerminationOutlivesDeadline = "ExecReaperTerminationOutlivesDeadline"
	ReasonGuardMissing                = "ExecReaperGuardMissing"
)

// evictTimeout bounds one Eviction call, so a slow API server cannot hold a
// worker forever.
const evictTimeout = 30 * time.Second

// errRefused marks an eviction the API server refused to protect a
// PodDisruptionBudget: retried with backoff for as long as it takes.
var errRefused = errors.New("eviction refused")

// DefaultWorkers is the default of Options.Workers. Two workers, each
// waiting on one eviction, capped the deleter at ~30 evictions/s on a
// local API server whose own floor was far higher; 32 in flight keep a
// busy API server saturated (at 10–30 ms an eviction, 1,000–3,000/s of
// room, more than it sustains), cost a goroutine each, and stay far below
// the concurrency the API server's default priority and fairness
// configuration gives service accounts (workload-low), so they never crowd
// out others: the server queues the excess fairly.
const DefaultWorkers = 32

// Options tune the controller. Zero fields take the defaults in Default.
type Options struct {
	// DryRun emits an Event instead of evicting.
	DryRun bool
	// Workers is the number of evictions in flight at once (default
	// DefaultWorkers). Each worker waits for one Eviction call, so the
	// eviction rate is at most Workers over the API server's latency for
	// one; the default is enough that the API server (its priority and
	// fairness share for the deleter) is the bound, not the workers.
	Workers int
	// RetryBaseDelay and RetryMaxDelay bound the exponential backoff after a
	// refused or failed eviction. The maximum is also the longest a pod
	// outlives the moment its PodDisruptionBudget allows the eviction.
	RetryBaseDelay, RetryMaxDelay time.Duration
	// MaxRetries bounds retries of evictions that failed for reasons other than
	// a PodDisruptionBudget; the informer's resync brings the pod back later.
	MaxRetries int
	// Action is what is done with a due pod whose record asks for nothing
	// else: ActionEvict (the default) or ActionQuarantine. DryRun overrides
	// it.
	Action string
	// AllowQuarantine lets a record ask for quarantine (a constraint with
	// action: quarantine) where Action is evict. Without it such a pod is
	// evicted, and an Event says that the deleter is not configured for
	// quarantine. Implied by Action quarantine.
	AllowQuarantine bool
	// QuarantineRetention is how long a quarantined pod is kept before it is
	// deleted (default 24h).
	QuarantineRetention time.Duration
	// PacingBudget is how many pods of one owner may be going at once
	// (default 1); the next goes only once the owner has a Ready replacement.
	// Negative turns pacing off.
	PacingBudget int
	// MaxPacingDelay bounds how long past its deadline a pod waits for its
	// owner before it goes anyway (default 5m).
	MaxPacingDelay time.Duration
	// EscalateAfter, when positive, deletes a pod (bound to its UID,
	// bypassing PodDisruptionBudgets) whose eviction is still refused this
	// long past its deadline. Zero, the default, never does.
	EscalateAfter time.Duration
	// QueueHorizon, when positive, is how far ahead a pod's next look may be
	// for it to wait in the work queue; a pod due later (a record with a
	// one-hour ttl, a quarantine's end) is left to the informer's resync,
	// which must come sooner, and is queued then. Each queued wait costs
	// ~210 bytes, a tenth of what the deleter holds per recorded pod. Run
	// sets it just above the resync period; zero queues every wait.
	QueueHorizon time.Duration
	// GuardPolicy names the record guard: the ValidatingAdmissionPolicy (and
	// its binding of the same name) that lets no one but the provider write a
	// record. While it is not in force the deleter evicts nothing, since a
	// record could then have been forged. Empty trusts records without it.
	GuardPolicy string
}

// Default fills unset fields.
func (o *Options) Default() {
	if o.Workers == 0 {
		o.Workers = DefaultWorkers
	}
	if o.RetryBaseDelay == 0 {
		o.RetryBaseDelay = time.Second
	}
	if o.RetryMaxDelay == 0 {
		o.RetryMaxDelay = 10 * time.Second
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = 15
	}
	if o.Action == "" {
		o.Action = ActionEvict
	}
	if o.QuarantineRetention == 0 {
		o.QuarantineRetention = 24 * time.Hour
	}
	if o.PacingBudget == 0 {
		o.PacingBudget = 1
	}
	if o.MaxPacingDelay == 0 {
		o.MaxPacingDelay = 5 * time.Minute
	}
}

// The actions Options.Action names: the record's, which a constraint asks
// for, are the same words.
const (
	ActionEvict      = string(record.ActionEvict)
	ActionQuarantine = string(record.ActionQuarantine)
)

// Validate says what is wrong with options filled by Default.
func (o *Options) Validate() error {
	if o.Action != ActionEvict && o.Action != ActionQuarantine {
		return fmt.Errorf("configuration error: action %q is neither %q nor %q", o.Action, ActionEvict, ActionQuarantine)
	}
	if o.QuarantineRetention < 0 || o.MaxPacingDelay < 0 || o.EscalateAfter < 0 {
		return errors.New("configuration error: quarantine retention, max pacing delay and escalate-after must not be negative")
	}
	return nil
}

// Controller evicts recorded pods at their deadlines.
type Controller struct {
	client API
	pods   metadatalister.Lister
	synced cache.InformerSynced
	queue  workqueue.TypedRateLimitingInterface[cache.ObjectName]
	// refusals backs off evictions refused by a PodDisruptionBudget. It is
	// separate from the queue's own limiter, whose count bounds retries of
	// other errors: waiting on a budget must not use up that allowance.
	refusals workqueue.TypedRateLimiter[cache.ObjectName]
	clock    clock.Clock
	recorder EventRecorder
	opts     Options

	// action is what is done with a due pod whose record asks for nothing
	// else.
	action Action
	// quarantine is what is done with a due pod whose record asks for
	// quarantine; nil when the deleter does not allow it.
	quarantine Action
	// evict evicts: for the pods quarantine cannot keep without taking a
	// replica down (StatefulSet pods). Nil in dry-run mode.
	evict Action
	// pacer holds back pods of an owner that cannot spare them yet; nil in
	// dry-run mode, which takes nothing down.
	pacer *pacer
	// told remembers, per kind of once-only Event, the pods already told
	// (mirror pod skipped, paced, eviction impossible), so a resync or a
	// retry does not repeat it.
	told map[string]*sync.Map // reason → types.UID → struct{}
	// held remembers pods already told that the guard is missing.
	held  sync.Map // types.UID → struct{}
	guard *guard
	// evicted remembers pods taken successfully until they are deleted, with
	// when to act on them again (zero: never; a quarantine's end).
	// A pod stops gracefully for up to its grace period, and updates queued
	// meanwhile (the kubelet's status, readiness) can reach sync before the
	// informer shows the deletionTimestamp; the Eviction API answers success
	// for a pod already terminating, so without this the pod would be
	// evicted, and reported, twice.
	evicted sync.Map // types.UID → time.Time
	// queued counts the informer's notifications that were queued (not left
	// to the resync by beyondHorizon).
	queued atomic.Int64
}

// NewController returns a controller fed by informer, a metadata informer
// on pods that lists only recorded pods (see NewPodInformer).
func NewController(client API, informer cache.SharedIndexInformer, clk clock.WithTicker,
	recorder EventRecorder, opts Options) (*Controller, error) {
	opts.Default()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	c := &Controller{
		client: client,
		pods:   metadatalister.New(informer.GetIndexer(), PodsResource),
		synced: informer.HasSynced,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[cache.ObjectName](opts.RetryBaseDelay, opts.RetryMaxDelay),
			workqueue.TypedRateLimitingQueueConfig[cache.ObjectName]{Name: "exec-reaper-deleter", Clock: clk},
		),
		refusals: workqueue.NewTypedItemExponentialFailureRateLimiter[cache.ObjectName](opts.RetryBaseDelay, opts.RetryMaxDelay),
		clock:    clk,
		recorder: recorder,
		opts:     opts,
		guard:    &guard{client: client, name: opts.GuardPolicy, clock: clk},
		told: map[string]*sync.Map{ReasonMirrorPod: {}, ReasonPaced: {}, ReasonEvictionImpossible: {},
			ReasonQuarantineNotAllowed: {}, ReasonQuarantineNotPossible: {}, ReasonInvalidRecord: {},
			ReasonTerminationOutlivesDeadline: {}},
	}
	if !opts.DryRun {
		c.evict = &Evict{Client: client, Recorder: recorder}
	}
	if !opts.DryRun && (opts.Action == ActionQuarantine || opts.AllowQuarantine) {
		c.quarantine = &Quarantiner{Client: client, Recorder: recorder, Clock: clk, Retention: opts.QuarantineRetention}
	}
	switch {
	case opts.DryRun:
		c.action = &DryRun{Recorder: recorder}
	case opts.Action == ActionQuarantine:
		c.action = c.quarantine
	default:
		c.action = c.evict
	}
	if !opts.DryRun {
		c.pacer = newPacer(opts.PacingBudget, opts.MaxPacingDelay, c.cachedPods,
			func(uid types.UID) bool { _, ok := c.evicted.Load(uid); return ok }, readOwner(client, clk, opts.MaxPacingDelay), clk, ownerReadTTL)
	}
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj any) { c.enqueue(obj) },
		// A queued key for a deleted pod resolves to not found; only the
		// dry-run memory of it needs clearing.
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if pod, ok := obj.(*metav1.PartialObjectMetadata); ok {
				c.forget(pod.UID)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// markTaken remembers that t's pod was taken, until again (zero: until it is
// deleted). A pod the call deleted at once may have left the cache, and its
// delete handler run, before this: then nothing would forget it, so it is
// forgotten here. The informer updates its cache before it calls handlers,
// so one of the two always sees the other.
func (c *Controller) markTaken(t Target, again time.Time) {
	c.evicted.Store(t.UID, again)
	if pod, err := c.pods.Namespace(t.Namespace).Get(t.Name); err != nil || pod.GetUID() != t.UID {
		c.evicted.Delete(t.UID)
	}
}

// forget drops what the controller remembers about a deleted pod.
func (c *Controller) forget(uid types.UID) {
	c.held.Delete(uid)
	c.evicted.Delete(uid)
	for _, m := range c.told {
		m.Delete(uid)
	}
	c.pacer.forget(uid)
	if f, ok := c.action.(interface{ Forget(types.UID) }); ok {
		f.Forget(uid)
	}
}

// cachedPods lists the cached recorded pods of a namespace.
func (c *Controller) cachedPods(namespace string) ([]metav1.Object, error) {
	list, err := c.pods.Namespace(namespace).List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := make([]metav1.Object, 0, len(list))
	for _, p := range list {
		out = append(out, p)
	}
	return out, nil
}

// once reports whether uid has not been told reason yet, and remembers it.
func (c *Controller) once(reason string, uid types.UID) bool {
	_, seen := c.told[reason].LoadOrStore(uid, struct{}{})
	return !seen
}

func (c *Controller) enqueue(obj any) {
	key, err := cache.ObjectToName(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	if c.beyondHorizon(obj) {
		return
	}
	c.queued.Add(1)
	c.queue.Add(key)
}

// beyondHorizon reports whether obj is a pod whose look can only wait past
// the queue's horizon: bound to it by its record, not going, not taken, and
// due later than the horizon. Its sync would only find that, and next would
// not keep the wait, so the resync, which comes sooner, is left to bring it
// back. Not queuing it saves a sync per recorded pod at a (re)start, and the
// queue's sets, which never shrink, do not grow to every recorded pod.
// Anything else (an invalid record, another pod's, a taken pod) is queued,
// for sync to say or do what it must.
func (c *Controller) beyondHorizon(obj any) bool {
	pod, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok || c.opts.QueueHorizon <= 0 || pod.DeletionTimestamp != nil {
		return false
	}
	deadline, uid, err := record.Binding(pod.Labels, pod.Annotations)
	if err != nil || uid != pod.UID {
		return false
	}
	if _, taken := c.evicted.Load(uid); taken {
		return false
	}
	return deadline.Sub(c.clock.Now()) > c.opts.QueueHorizon
}

// releaseAfterFirstPass returns the heap freed by the initial list and the
// first look at every recorded pod to the operating system, once the queue
// first runs dry (or after a minute). The runtime would return it only
// slowly, and until then a restart costs a few MiB of RSS more than a
// steady run (BENCHMARKS.md), which is what a memory limit sees.
func (c *Controller) releaseAfterFirstPass(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for range 120 {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if c.queue.Len() == 0 {
			break
		}
	}
	debug.FreeOSMemory()
}

// Run processes the queue until ctx is done, then waits for its workers.
func (c *Controller) Run(ctx context.Context) error {
	defer utilruntime.HandleCrash()
	log := klog.FromContext(ctx)
	if !cache.WaitForNamedCacheSync("exec-reaper-deleter", ctx.Done(), c.synced) {
		// Only a cancelled ctx ends the wait: a shutdown, not an error.
		c.queue.ShutDown()
		return nil
	}
	log.Info("Started", "workers", c.opts.Workers, "dryRun", c.opts.DryRun)
	go c.releaseAfterFirstPass(ctx)
	var wg sync.WaitGroup
	for range c.opts.Workers {
		wg.Go(func() { wait.UntilWithContext(ctx, c.work, time.Second) })
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	log.Info("Stopped")
	return nil
}

func (c *Controller) work(ctx context.Context) {
	for c.next(ctx) {
	}
}

// next handles one key: Get, defer Done, then Forget, AddAfter or
// AddRateLimited.
func (c *Controller) next(ctx context.Context) bool {
	key, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(key)
	log := klog.FromContext(ctx).WithValues("pod", key.String())
	wait, err := c.sync(klog.NewContext(ctx, log), key)
	if !errors.Is(err, errRefused) && !errors.Is(err, errImpossible) {
		c.refusals.Forget(key)
	}
	switch {
	case err == nil:
		c.queue.Forget(key)
		switch {
		case wait <= 0:
		case c.opts.QueueHorizon > 0 && wait > c.opts.QueueHorizon:
			log.V(3).Info("Next look beyond the queue's horizon; the resync brings the pod back", "in", wait)
		default:
			c.queue.AddAfter(key, wait)
		}
	case errors.Is(err, errRefused), errors.Is(err, errImpossible):
		// A PodDisruptionBudget holds the pod, or two do: retry for as long
		// as they do (someone may remove one).
		log.V(1).Info("Eviction refused; will retry", "err", err)
		c.queue.AddAfter(key, c.refusals.When(key))
	case c.queue.NumRequeues(key) < c.opts.MaxRetries:
		log.Error(err, "Evicting; will retry")
		c.queue.AddRateLimited(key)
	default:
		log.Error(err, "Evicting; giving up until the next resync", "retries", c.opts.MaxRetries)
		dropsTotal.Inc()
		gaveUpTotal.WithLabelValues("retries").Inc()
		if pod, gerr := c.pods.Namespace(key.Namespace).Get(key.Name); gerr == nil {
			c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonGaveUp, "Evict",
				"exec-reaper gave up removing this pod for now after %d failed attempts (last: %v); it tries again when it next looks at every recorded pod (resync)",
				c.opts.MaxRetries, err)
		}
		c.queue.Forget(key)
	}
	return true
}

// sync acts on one pod: it returns how long to wait if the deadline is still
// ahead, nil when nothing more is to be done, or an error to retry.
func (c *Controller) sync(ctx context.Context, key cache.ObjectName) (time.Duration, error) {
	log := klog.FromContext(ctx)
	pod, err := c.pods.Namespace(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	deadline, uid, err := record.Binding(pod.Labels, pod.Annotations)
	if pod.DeletionTimestamp != nil {
		if err == nil && uid == pod.UID && outlives(pod, deadline) {
			return c.outlived(ctx, pod, deadline)
		}
		return 0, nil // already going, by its deadline
	}
	switch {
	case errors.Is(err, record.ErrNoRecord):
		return 0, nil // the record was removed
	case err != nil:
		// A damaged record is final until someone fixes it; an update brings
		// the pod back.
		log.Info("Ignoring invalid record", "err", err)
		c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonInvalidRecord, "Evict", "exec-reaper cannot act on this pod: %v", err)
		return 0, nil
	case uid != pod.UID:
		// The record was written on another pod of the same name (or copied
		// from one): not this pod's.
		log.V(1).Info("Record belongs to another pod", "recordUID", uid, "podUID", pod.UID)
		evictionsTotal.WithLabelValues("other_pod").Inc()
		return 0, nil
	}
	if v, done := c.evicted.Load(uid); done {
		again, _ := v.(time.Time)
		if again.IsZero() {
			return 0, nil // taken; the informer has not seen it terminate yet
		}
		if left := again.Sub(c.clock.Now()); left > 0 {
			return left, nil
		}
	}
	if left := deadline.Sub(c.clock.Now()); left > 0 {
		log.V(2).Info("Waiting for deadline", "deadline", deadline, "in", left)
		return left, nil
	}
	if err := c.guard.check(ctx); err != nil {
		guardHeldTotal.Inc()
		log.Error(err, "Not evicting: the record guard is not in force", "deadline", deadline)
		if _, seen := c.held.LoadOrStore(uid, struct{}{}); !seen {
			c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonGuardMissing, "Evict",
				"exec-reaper is holding this pod's eviction (deadline %s): %v", deadline.UTC().Format(time.RFC3339), err)
		}
		return GuardRecheck, nil
	}
	c.held.Delete(uid)
	return c.act(ctx, pod, Target{Object: pod, Namespace: pod.Namespace, Name: pod.Name, UID: uid, Deadline: deadline, Kind: Classify(pod)})
}

// outlivedSlack is how long past its deadline the termination of a pod may
// end, when that termination began before the deadline, before the pod
// counts as outliving its deadline. (One begun at or after the deadline, the
// deleter's own eviction among them, is the pod's removal, with its grace
// period.)
const outlivedSlack = time.Minute

// outlives says whether pod, terminating, began its termination before
// deadline and ends it more than outlivedSlack after: deleted with a long
// grace period (its own terminationGracePeriodSeconds, or any a requester
// chose), which a container that ignores SIGTERM runs to its end.
func outlives(pod *metav1.PartialObjectMetadata, deadline time.Time) bool {
	end := pod.DeletionTimestamp.Time
	began := end.Add(-time.Duration(ptr.Deref(pod.DeletionGracePeriodSeconds, 0)) * time.Second)
	return began.Before(deadline) && end.After(deadline.Add(outlivedSlack))
}

// outlived reports, once, a recorded pod whose termination outlives its
// deadline, once the deadline has passed. Nothing makes it go sooner: the
// Eviction API succeeds on a terminating pod and changes nothing, and a
// delete with a shorter grace period, which the API server accepts, was not
// acted on by the kubelet (kubelet v1.36.3, containerd v2.4.2: the container
// ran on for minutes with deletionGracePeriodSeconds 1). It counts in the
// overdue gauge, so the alert fires.
func (c *Controller) outlived(ctx context.Context, pod *metav1.PartialObjectMetadata, deadline time.Time) (time.Duration, error) {
	if left := deadline.Sub(c.clock.Now()); left > 0 {
		return left, nil
	}
	if c.once(ReasonTerminationOutlivesDeadline, pod.UID) {
		klog.FromContext(ctx).Info("Terminating past its deadline", "deadline", deadline, "terminatingUntil", pod.DeletionTimestamp.Time)
		c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonTerminationOutlivesDeadline, "Evict",
			"exec-reaper cannot remove this pod at its deadline %s: it was already terminating, with a grace period that ends at %s (a delete with a long grace period; a container that ignores SIGTERM runs all of it). An eviction changes nothing, and the kubelet does not act on a shorter grace period while a termination runs. If it must go sooner, stop its container on the node",
			deadline.UTC().Format(time.RFC3339), pod.DeletionTimestamp.UTC().Format(time.RFC3339))
	}
	return 0, nil
}

// act removes a due pod the way its kind and its owner allow: mirror pods
// are skipped, others paced per owner, then handed to the action, with
// escalation for a pod whose eviction stays refused.
func (c *Controller) act(ctx context.Context, pod *metav1.PartialObjectMetadata, t Target) (time.Duration, error) {
	log := klog.FromContext(ctx)
	if t.Kind == KindMirror {
		if c.once(ReasonMirrorPod, t.UID) {
			gaveUpTotal.WithLabelValues("mirror").Inc()
			log.Info("Not acting on a mirror pod", "deadline", t.Deadline)
			c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonMirrorPod, "Evict",
				"exec-reaper does not act on this static pod although %s: evicting or deleting its mirror would remove only the API object, while the kubelet keeps the containers running and recreates it. Remove its manifest from the node's static pod directory",
				recordReason(t.Deadline))
		}
		return 0, nil
	}
	overdue := c.clock.Since(t.Deadline)
	v, err := c.pacer.admit(ctx, pod, overdue)
	if err != nil {
		return 0, err
	}
	if !v.Go {
		latest := t.Deadline.Add(c.opts.MaxPacingDelay)
		log.V(1).Info("Paced: waiting for the owner", "why", v.Wait, "latest", latest)
		if c.once(ReasonPaced, t.UID) {
			c.recorder.Eventf(pod, nil, corev1.EventTypeNormal, ReasonPaced, "Evict",
				"exec-reaper holds this pod's removal (deadline %s) so its owner keeps its Ready pods: %s. It goes when the owner can spare it, at the latest at %s",
				t.Deadline.UTC().Format(time.RFC3339), v.Wait, latest.UTC().Format(time.RFC3339))
		}
		return min(pacingRecheck, max(latest.Sub(c.clock.Now()), time.Millisecond)), nil
	}
	t.Forced = v.Forced
	action := c.actionFor(ctx, pod, t)
	res, err := action.Act(ctx, t)
	if np := (*quarantineNotPossibleError)(nil); errors.As(err, &np) {
		if c.once(ReasonQuarantineNotPossible, t.UID) {
			log.Info("Evicting instead of quarantining", "why", np.why)
			c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonQuarantineNotPossible, "Evict",
				"exec-reaper evicts this pod instead of quarantining it: %s", np.why)
		}
		res, err = c.evict.Act(ctx, t)
	}
	if res.Taken {
		var again time.Time
		if res.After > 0 {
			again = c.clock.Now().Add(res.After)
		}
		c.markTaken(t, again)
		lag := c.clock.Since(t.Deadline)
		evictionLag.Observe(lag.Seconds())
		log.V(1).Info("Taken", "action", action.Name(), "lag", lag)
	}
	if errors.Is(err, errImpossible) && c.once(ReasonEvictionImpossible, t.UID) {
		gaveUpTotal.WithLabelValues("multiple_budgets").Inc()
		c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonEvictionImpossible, "Evict",
			"exec-reaper cannot evict this pod: %v. The Eviction API refuses a pod covered by more than one PodDisruptionBudget until one is removed; exec-reaper keeps retrying%s",
			err, c.escalation())
	}
	if (errors.Is(err, errRefused) || errors.Is(err, errImpossible)) && c.opts.EscalateAfter > 0 && overdue >= c.opts.EscalateAfter {
		if derr := deletePod(ctx, c.client, c.recorder, t, err, overdue); derr != nil {
			c.pacer.release(t.UID)
			return 0, derr
		}
		c.markTaken(t, time.Time{})
		res, err = Result{Taken: true}, nil
	}
	c.pacer.release(t.UID)
	return res.After, err
}

// actionFor returns what is done with t's pod: quarantine where its record
// asks for it (record.ActionLabel) and the deleter allows it, else the
// deleter's own action. A pod whose record asks for quarantine on a deleter
// that does not allow it is still removed at its deadline, evicted: the
// deadline is the promise, and an Event says what the configuration lacks.
// (The Quarantiner itself refuses a pod whose replacement could not run
// beside it, which act then evicts.)
func (c *Controller) actionFor(ctx context.Context, pod *metav1.PartialObjectMetadata, t Target) Action {
	asked, known := record.ActionOf(pod.Labels)
	switch {
	case c.opts.DryRun:
	case !known:
		if c.once(ReasonInvalidRecord, t.UID) {
			klog.FromContext(ctx).Info("Record asks for an action this deleter does not know; doing its own", "asked", asked, "action", c.action.Name())
			c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonInvalidRecord, "Evict",
				"exec-reaper's record on this pod asks for action %q (label %s), which this deleter does not know (is the provider newer than the deleter? upgrade the deleter); it does what it does with every other pod: %s",
				asked, record.ActionLabel, c.action.Name()) // a label value: at most 63 characters
		}
	case asked == record.ActionQuarantine && c.quarantine != nil:
		return c.quarantine
	case asked == record.ActionQuarantine:
		if c.once(ReasonQuarantineNotAllowed, t.UID) {
			quarantineNotAllowedTotal.Inc()
			klog.FromContext(ctx).Info("A constraint asked for quarantine, which this deleter does not allow; evicting instead (configuration error: start the deleter with --allow-quarantine, chart value deleter.allowQuarantine)")
			c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonQuarantineNotAllowed, "Evict",
				"A constraint asked for this pod to be quarantined, but this exec-reaper deleter does not allow quarantine, so it %ss the pod instead. This is a configuration error: install exec-reaper with deleter.allowQuarantine=true (deleter flag --allow-quarantine)",
				c.action.Name())
		}
	}
	return c.action
}

// escalation says, for an Event, whether refused pods are deleted in the end.
func (c *Controller) escalation() string {
	if c.opts.EscalateAfter <= 0 {
		return " (escalation to deletion is off)"
	}
	return fmt.Sprintf(" and deletes it %s after its deadline (escalation)", c.opts.EscalateAfter)
}

// overdue counts the recorded pods past their deadline that still exist, are
// not terminating (or terminate past their deadline, see outlives), and were
// not taken (evicted, not yet seen terminating; or quarantined on purpose):
// what an alert watches.
func (c *Controller) overdue() float64 {
	list, _ := c.pods.List(labels.Everything()) // a cache read; never fails.
	now := c.clock.Now()
	n := 0
	for _, pod := range list {
		deadline, uid, err := record.Binding(pod.Labels, pod.Annotations)
		if pod.DeletionTimestamp != nil && (err != nil || !outlives(pod, deadline)) {
			continue
		}
		if _, taken := c.evicted.Load(pod.UID); taken && pod.DeletionTimestamp == nil {
			continue // going, or quarantined on purpose
		}
		if _, quarantined := ReadQuarantine(pod.Annotations); quarantined {
			continue
		}
		if err == nil && uid == pod.UID && now.After(deadline) {
			n++
		}
	}
	return float64(n)
}

// RegisterMetrics adds the controller's removal metrics to reg: the gauges of
// overdue and paced pods, and the counters of give-ups and forced pacing.
func (c *Controller) RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(removalCollectors()...)
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "exec_reaper_deleter_overdue_pods",
			Help: "Recorded pods past their deadline that still exist and are not terminating, or terminate past it (held by a budget, pacing, a missing guard, a mirror pod, a long grace period, or errors).",
		}, c.overdue),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "exec_reaper_deleter_paced_pods",
			Help: "Due pods waiting for their owner to spare them (pacing).",
		}, func() float64 { return float64(c.pacer.heldCount()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "exec_reaper_deleter_queued_total",
			Help: "Notifications of recorded pods (adds, updates, resyncs) queued for a look; a pod due beyond the queue's horizon (the resync period + 1m) is left to the next resync instead.",
		}, func() float64 { return float64(c.queued.Load()) }),
	)
}

// refusal says why an eviction was refused, with the PodDisruptionBudget's
// own explanation when the API server gives one.
func refusal(err error) string {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return err.Error()
	}
	s := status.Status()
	parts := []string{s.Message}
	if s.Details != nil {
		for _, cause := range s.Details.Causes {
			if cause.Message != "" {
				parts = append(parts, cause.Message)
			}
		}
	}
	return strings.Join(parts, " ")
}

// Package deleter is exec-reaper's controller: it evicts every recorded pod at
// its deadline, through the Eviction API so that PodDisruptionBudgets hold,
// and only the pod the record was written on.
package deleter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata/metadatalister"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/record"
)

// Event reasons the deleter emits on pods.
const (
	ReasonEvicted         = "ExecReaperEvicted"
	ReasonEvictionRefused = "ExecReaperEvictionRefused"
	ReasonWouldEvict      = "ExecReaperWouldEvict"
	ReasonInvalidRecord   = "ExecReaperInvalidRecord"
	ReasonGuardMissing    = "ExecReaperGuardMissing"
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
}

// Controller evicts recorded pods at their deadlines.
type Controller struct {
	client kubernetes.Interface
	pods   metadatalister.Lister
	synced cache.InformerSynced
	queue  workqueue.TypedRateLimitingInterface[cache.ObjectName]
	// refusals backs off evictions refused by a PodDisruptionBudget. It is
	// separate from the queue's own limiter, whose count bounds retries of
	// other errors: waiting on a budget must not use up that allowance.
	refusals workqueue.TypedRateLimiter[cache.ObjectName]
	clock    clock.Clock
	recorder events.EventRecorder
	opts     Options

	// announced remembers pods already reported in dry-run mode, so a resync
	// does not report them again.
	announced sync.Map // types.UID → struct{}
	// held remembers pods already told that the guard is missing.
	held  sync.Map // types.UID → struct{}
	guard *guard
	// evicted remembers pods evicted successfully until they are deleted.
	// A pod stops gracefully for up to its grace period, and updates queued
	// meanwhile (the kubelet's status, readiness) can reach sync before the
	// informer shows the deletionTimestamp; the Eviction API answers success
	// for a pod already terminating, so without this the pod would be
	// evicted, and reported, twice.
	evicted sync.Map // types.UID → struct{}
}

// NewController returns a controller fed by informer, a metadata informer
// on pods that lists only recorded pods (see NewPodInformer).
func NewController(client kubernetes.Interface, informer cache.SharedIndexInformer, clk clock.WithTicker,
	recorder events.EventRecorder, opts Options) (*Controller, error) {
	opts.Default()
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
				c.announced.Delete(pod.UID)
				c.held.Delete(pod.UID)
				c.evicted.Delete(pod.UID)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Controller) enqueue(obj any) {
	key, err := cache.ObjectToName(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	c.queue.Add(key)
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
	if !errors.Is(err, errRefused) {
		c.refusals.Forget(key)
	}
	switch {
	case err == nil:
		c.queue.Forget(key)
		if wait > 0 {
			c.queue.AddAfter(key, wait)
		}
	case errors.Is(err, errRefused):
		// A PodDisruptionBudget holds the pod: retry for as long as it does.
		log.V(1).Info("Eviction refused; will retry", "err", err)
		c.queue.AddAfter(key, c.refusals.When(key))
	case c.queue.NumRequeues(key) < c.opts.MaxRetries:
		log.Error(err, "Evicting; will retry")
		c.queue.AddRateLimited(key)
	default:
		log.Error(err, "Evicting; giving up until the next resync", "retries", c.opts.MaxRetries)
		dropsTotal.Inc()
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
	if pod.DeletionTimestamp != nil {
		return 0, nil // already going
	}
	deadline, uid, err := record.Binding(pod.Labels, pod.Annotations)
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
	if _, done := c.evicted.Load(uid); done {
		return 0, nil // evicted; the informer has not seen it terminate yet
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
	return 0, c.evict(ctx, pod, uid, deadline)
}

// evict evicts pod, bound to uid. Refusals by a PodDisruptionBudget return
// errRefused; a pod that is gone or was replaced is done.
func (c *Controller) evict(ctx context.Context, pod *metav1.PartialObjectMetadata, uid types.UID, deadline time.Time) error {
	log := klog.FromContext(ctx)
	if c.opts.DryRun {
		if _, seen := c.announced.LoadOrStore(uid, struct{}{}); !seen {
			evictionsTotal.WithLabelValues("dry_run").Inc()
			c.recorder.Eventf(pod, nil, corev1.EventTypeNormal, ReasonWouldEvict, "Evict",
				"exec-reaper would evict this pod now (deadline %s); dry-run mode is on", deadline.UTC().Format(time.RFC3339))
			log.Info("Would evict (dry run)", "deadline", deadline)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, evictTimeout)
	defer cancel()
	err := c.client.PolicyV1().Evictions(pod.Namespace).Evict(ctx, &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
	})
	switch {
	case err == nil:
		c.evicted.Store(uid, struct{}{})
		lag := c.clock.Since(deadline)
		evictionsTotal.WithLabelValues("evicted").Inc()
		evictionLag.Observe(lag.Seconds())
		c.recorder.Eventf(pod, nil, corev1.EventTypeNormal, ReasonEvicted, "Evict",
			"exec-reaper evicted this pod: someone entered it and its deadline %s passed", deadline.UTC().Format(time.RFC3339))
		log.Info("Evicted", "deadline", deadline, "lag", lag)
		return nil
	case apierrors.IsNotFound(err):
		evictionsTotal.WithLabelValues("gone").Inc()
		return nil
	case apierrors.IsConflict(err):
		// The UID precondition failed: the pod was replaced by another of the
		// same name, which no one entered.
		evictionsTotal.WithLabelValues("other_pod").Inc()
		return nil
	case apierrors.IsTooManyRequests(err):
		evictionsTotal.WithLabelValues("refused").Inc()
		why := refusal(err)
		c.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonEvictionRefused, "Evict",
			"exec-reaper's eviction was refused and will be retried: %s", why)
		return fmt.Errorf("%w: %s", errRefused, why)
	}
	evictionsTotal.WithLabelValues("error").Inc()
	return fmt.Errorf("evicting %s/%s: %w", pod.Namespace, pod.Name, err)
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

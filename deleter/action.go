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
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// Event reasons of the removal actions.
const (
	ReasonEvictionImpossible = "ExecReaperEvictionImpossible"
	ReasonGaveUp             = "ExecReaperGaveUp"
	ReasonDeleted            = "ExecReaperDeleted"
	ReasonMirrorPod          = "ExecReaperMirrorPod"
	ReasonPaced              = "ExecReaperPaced"
	// ReasonQuarantineNotAllowed: a record asked for quarantine, which the
	// deleter is not configured for; the pod is evicted instead.
	ReasonQuarantineNotAllowed = "ExecReaperQuarantineNotAllowed"
	// ReasonQuarantineNotPossible: quarantine would take a replica down (a
	// StatefulSet's pod, or a DaemonSet's on host ports or the host's
	// network), or the API server refused its NetworkPolicy or relabel (an
	// admission policy, RBAC); the pod is evicted instead.
	ReasonQuarantineNotPossible = "ExecReaperQuarantineNotPossible"
)

// errImpossible marks an eviction the API server will refuse until someone
// changes the cluster (a pod covered by more than one PodDisruptionBudget):
// retried like a refusal, but reported at once as a failure, not a wait.
var errImpossible = errors.New("eviction impossible")

// errThrottled marks a 429 that is not a PodDisruptionBudget's refusal (API
// Priority and Fairness, or any other rate limit): a transient error, retried
// a bounded number of times like any other.
var errThrottled = errors.New("eviction throttled")

// Target is a due pod as an action sees it: enough to act on it, bound to its
// UID, and to say what was done and why. It is built from object metadata
// alone, so it fits a metadata-only informer as well as a typed one.
type Target struct {
	// Object is the cached pod, which Events regard.
	Object runtime.Object
	// Namespace and Name locate the pod.
	Namespace, Name string
	// UID binds every destructive call (a precondition): a pod recreated
	// under the same name is never acted on.
	UID types.UID
	// Deadline is the record's deadline, which has passed.
	Deadline time.Time
	// Kind says what removing the pod means (Classify).
	Kind PodKind
	// Forced, when not empty, says why pacing let the pod go without waiting
	// for its owner any longer.
	Forced string
}

// Result is what an action did.
type Result struct {
	// Taken says the pod is now out of service: pacing counts it until it is
	// gone, and it is not acted on again until After.
	Taken bool
	// After, if positive, asks for the pod to be acted on again that much
	// later (a quarantine's end).
	After time.Duration
}

// Action is what the deleter does with a pod whose deadline passed. A new way
// of removing pods is one new Action.
type Action interface {
	// Name labels the action in logs.
	Name() string
	// Act acts on t. The error wraps errRefused while a PodDisruptionBudget
	// holds the pod (retried for as long as it does), errImpossible when the
	// API server will refuse until someone changes the cluster; any other
	// error is retried a bounded number of times.
	Act(ctx context.Context, t Target) (Result, error)
}

// Evict evicts pods through the Eviction API, so PodDisruptionBudgets hold.
type Evict struct {
	// Client makes the Eviction call, and the GET that tells a replaced pod
	// from a conflicting budget update.
	Client API
	// Recorder reports on the pod.
	Recorder EventRecorder
}

// Name implements Action.
func (*Evict) Name() string { return "evict" }

// Act implements Action.
func (a *Evict) Act(ctx context.Context, t Target) (Result, error) {
	log := klog.FromContext(ctx)
	callCtx, cancel := context.WithTimeout(ctx, evictTimeout)
	defer cancel()
	err := a.Client.Evict(callCtx, t.Namespace, t.Name, t.UID)
	switch {
	case err == nil:
		evictionsTotal.WithLabelValues("evicted").Inc()
		a.Recorder.Eventf(t.Object, nil, corev1.EventTypeNormal, ReasonEvicted, "Evict",
			"exec-reaper evicted this pod%s: %s%s", kindConsequence(t.Kind), recordReason(t.Deadline), forcedNote(t.Forced))
		log.Info("Evicted", "deadline", t.Deadline, "kind", t.Kind)
		return Result{Taken: true}, nil
	case apierrors.IsNotFound(err):
		evictionsTotal.WithLabelValues("gone").Inc()
		return Result{}, nil
	case apierrors.IsConflict(err):
		// A failed UID precondition is a conflict, but so is a conflicting
		// update of a PodDisruptionBudget's status: look before concluding.
		return Result{}, a.conflict(ctx, t, err)
	case apierrors.IsTooManyRequests(err):
		if !budgetRefusal(err) {
			evictionsTotal.WithLabelValues("throttled").Inc()
			return Result{}, fmt.Errorf("%w: evicting %s/%s: %w", errThrottled, t.Namespace, t.Name, err)
		}
		evictionsTotal.WithLabelValues("refused").Inc()
		why := refusal(err)
		a.Recorder.Eventf(t.Object, nil, corev1.EventTypeWarning, ReasonEvictionRefused, "Evict",
			"exec-reaper's eviction was refused by a PodDisruptionBudget and will be retried: %s", why)
		return Result{}, fmt.Errorf("%w: %s", errRefused, why)
	case multipleBudgets(err):
		evictionsTotal.WithLabelValues("multiple_budgets").Inc()
		return Result{}, fmt.Errorf("%w: %s", errImpossible, refusal(err))
	}
	evictionsTotal.WithLabelValues("error").Inc()
	return Result{}, fmt.Errorf("evicting %s/%s: %w", t.Namespace, t.Name, err)
}

// conflict resolves a 409 from the Eviction API by reading the pod.
func (a *Evict) conflict(ctx context.Context, t Target, evictErr error) error {
	pod, err := a.Client.GetPod(ctx, t.Namespace, t.Name)
	switch {
	case apierrors.IsNotFound(err):
		evictionsTotal.WithLabelValues("gone").Inc()
		return nil
	case err != nil:
		evictionsTotal.WithLabelValues("error").Inc()
		return fmt.Errorf("evicting %s/%s: %w; reading the pod to tell why failed: %w", t.Namespace, t.Name, evictErr, err)
	case pod.UID != t.UID:
		// The UID precondition failed: the pod was replaced by another of
		// the same name, which no one entered.
		evictionsTotal.WithLabelValues("other_pod").Inc()
		return nil
	}
	// The same pod: something else conflicted (the budget's status).
	evictionsTotal.WithLabelValues("conflict").Inc()
	return fmt.Errorf("evicting %s/%s: conflict on the same pod, retrying: %w", t.Namespace, t.Name, evictErr)
}

// budgetRefusal tells a PodDisruptionBudget's 429 (which names its cause)
// from any other 429, such as API Priority and Fairness rejecting the call.
func budgetRefusal(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) || status.Status().Details == nil {
		return false
	}
	for _, c := range status.Status().Details.Causes {
		if c.Type == policyv1.DisruptionBudgetCause {
			return true
		}
	}
	return false
}

// multipleBudgets recognises the API server's answer for a pod covered by
// more than one PodDisruptionBudget: HTTP 500, for as long as that lasts.
func multipleBudgets(err error) bool {
	return apierrors.IsInternalError(err) && strings.Contains(err.Error(), "more than one PodDisruptionBudget")
}

// DryRun reports, once per pod, what Evict would do.
type DryRun struct {
	// Recorder reports on the pod.
	Recorder EventRecorder

	// announced remembers pods already reported, so a resync does not report
	// them again.
	announced sync.Map // types.UID → struct{}
}

// Name implements Action.
func (*DryRun) Name() string { return "dry-run" }

// Act implements Action.
func (a *DryRun) Act(ctx context.Context, t Target) (Result, error) {
	if _, seen := a.announced.LoadOrStore(t.UID, struct{}{}); !seen {
		evictionsTotal.WithLabelValues("dry_run").Inc()
		a.Recorder.Eventf(t.Object, nil, corev1.EventTypeNormal, ReasonWouldEvict, "Evict",
			"exec-reaper would evict this pod now%s (deadline %s); dry-run mode is on",
			kindConsequence(t.Kind), t.Deadline.UTC().Format(time.RFC3339))
		klog.FromContext(ctx).Info("Would evict (dry run)", "deadline", t.Deadline, "kind", t.Kind)
	}
	return Result{}, nil
}

// Forget drops what the action remembers about a deleted pod.
func (a *DryRun) Forget(uid types.UID) { a.announced.Delete(uid) }

// deletePod deletes t's pod, bound to its UID: the escalation for a pod whose
// eviction stays refused. It bypasses PodDisruptionBudgets on purpose.
func deletePod(ctx context.Context, client API, recorder EventRecorder, t Target, refused error, waited time.Duration) error {
	callCtx, cancel := context.WithTimeout(ctx, evictTimeout)
	defer cancel()
	err := client.DeletePod(callCtx, t.Namespace, t.Name, t.UID)
	switch {
	case err == nil:
		evictionsTotal.WithLabelValues("deleted").Inc()
		recorder.Eventf(t.Object, nil, corev1.EventTypeWarning, ReasonDeleted, "Delete",
			"exec-reaper deleted this pod, bypassing its PodDisruptionBudget%s: eviction was still refused %s after its deadline %s (%v), and escalation is on",
			kindConsequence(t.Kind), waited.Round(time.Second), t.Deadline.UTC().Format(time.RFC3339), refused)
		klog.FromContext(ctx).Info("Deleted after refused evictions", "deadline", t.Deadline, "waited", waited)
		return nil
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		// Gone, or replaced by another pod of the same name (the UID
		// precondition: a delete has no budget status to conflict with).
		evictionsTotal.WithLabelValues("gone").Inc()
		return nil
	}
	evictionsTotal.WithLabelValues("error").Inc()
	return fmt.Errorf("deleting %s/%s after refused evictions: %w", t.Namespace, t.Name, err)
}

// kindConsequence says, for an Event, what removing a pod of kind means.
func kindConsequence(kind PodKind) string {
	switch kind {
	case KindBare:
		return " for good (no controller owns it, so nothing recreates it)"
	case KindJob:
		return " (its Job counts this as a failed pod against its backoffLimit, unless its podFailurePolicy ignores the DisruptionTarget condition)"
	case KindDaemonSet:
		return " (its DaemonSet recreates it on the same node)"
	case KindReplicated, KindOther:
		return " (its controller starts a replacement)"
	}
	return ""
}

// recordReason says what the deleter knows: a record, which only the provider
// may write while the guard is in force, not that anyone entered.
func recordReason(deadline time.Time) string {
	return fmt.Sprintf("its exec-reaper record says it was entered (who and how: its exec-reaper.io/ annotations) and set the deadline %s, which passed",
		deadline.UTC().Format(time.RFC3339))
}

// forcedNote adds why pacing stopped waiting, if it did.
func forcedNote(forced string) string {
	if forced == "" {
		return ""
	}
	return "; " + forced
}

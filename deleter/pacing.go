package deleter

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// pacingRecheck is how often a pod held by pacing looks at its owner again.
// Owners are read with a GET, not watched: held pods are few and short-lived,
// and a watch of every ReplicaSet in the cluster would cache far more.
const pacingRecheck = 2 * time.Second

// ownerReadTTL is how long one read of an owner serves every held pod of it:
// a thousand entered replicas of one Deployment, all held, cost the API
// server about one GET and one list of the owner's pods a second, not five
// hundred. Taking a pod of the owner drops the read at once, so the next
// decision sees the pod gone; a change made by someone else is seen at most
// this much later.
const ownerReadTTL = time.Second

// ownerRead is one read of an owner, shared until it is ownerReadTTL old.
type ownerRead struct {
	state *ownerState
	err   error
	at    time.Time
	// valid is false once a pod of the owner was taken since the read (at
	// is then when).
	valid bool
	// gen counts those takes, so that a read begun before one is not
	// shared after it.
	gen uint64
}

// ownerState is an owner's readiness, as its pods show it.
type ownerState struct {
	// Ready is how many of its pods are Ready; Want how many it wants.
	Ready, Want int
	// Stale is how many of its pods have not been Ready for longer than a
	// replacement may take (the pacing bound): a crash-looping or stuck pod,
	// which explains part of a shortfall that no replacement will fill.
	Stale int
	// Unready holds its pods that are not Ready: taking one of them lowers
	// no one's capacity.
	Unready map[types.UID]bool
	// Summary describes the owner for Events ("ReplicaSet web-6f9: 2 of 3 ready").
	Summary string
}

// ownerReader reads an owner's state. A nil state with a nil error means the
// owner is gone or its kind has no readiness to read: only the deleter's own
// pods in flight count then.
type ownerReader func(ctx context.Context, namespace string, owner metav1.OwnerReference) (*ownerState, error)

// pacer holds back pods of one owner while another of its pods is going or
// its replacement is not Ready yet. It never holds a pod longer than maxDelay
// past its deadline.
type pacer struct {
	// budget is how many of one owner's pods may be down at once.
	budget int
	// maxDelay bounds how long past its deadline a pod waits for its owner.
	maxDelay time.Duration
	// pods lists the cached recorded pods of a namespace.
	pods func(namespace string) ([]metav1.Object, error)
	// taken says the deleter took a pod that the cache does not show
	// terminating yet.
	taken func(types.UID) bool
	read  ownerReader

	mu sync.Mutex
	// reserved maps a pod being acted on to its owner, so two workers never
	// both take the last slot of one owner.
	reserved map[types.UID]types.UID
	// held is the pods waiting for their owner, for the gauge.
	held map[types.UID]struct{}
	// reads holds the last read of each owner, for ttl by clock (no sharing
	// when ttl is zero).
	reads map[types.UID]ownerRead
	clock clock.PassiveClock
	ttl   time.Duration
}

func newPacer(budget int, maxDelay time.Duration, pods func(string) ([]metav1.Object, error),
	taken func(types.UID) bool, read ownerReader, clk clock.PassiveClock, ttl time.Duration) *pacer {
	return &pacer{budget: budget, maxDelay: maxDelay, pods: pods, taken: taken, read: read,
		reserved: map[types.UID]types.UID{}, held: map[types.UID]struct{}{},
		reads: map[types.UID]ownerRead{}, clock: clk, ttl: ttl}
}

// readOwner returns owner's state, from a read shared with the other pods of
// the owner while it is fresh.
func (p *pacer) readOwner(ctx context.Context, namespace string, owner metav1.OwnerReference) (*ownerState, error) {
	if p.ttl <= 0 {
		return p.read(ctx, namespace, owner)
	}
	p.mu.Lock()
	r := p.reads[owner.UID]
	p.mu.Unlock()
	if r.valid && p.clock.Since(r.at) < p.ttl {
		return r.state, r.err
	}
	at, gen := p.clock.Now(), r.gen
	state, err := p.read(ctx, namespace, owner)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reads[owner.UID].gen != gen {
		return state, err // a pod was taken meanwhile: this read may predate it
	}
	if len(p.reads) > 256 {
		// Drop the old: owners come and go. Old enough that no read begun
		// before a take is still running (a read is bounded by
		// evictTimeout), so none of those can be shared for lack of its gen.
		for uid, r := range p.reads {
			if p.clock.Since(r.at) >= p.ttl+evictTimeout {
				delete(p.reads, uid)
			}
		}
	}
	p.reads[owner.UID] = ownerRead{state: state, err: err, at: at, valid: true, gen: gen}
	return state, err
}

// verdict is pacing's answer for one due pod.
type verdict struct {
	// Go says the pod may be acted on now; release must follow the action.
	Go bool
	// Wait, when Go is false, says why the pod waits.
	Wait string
	// Forced, when Go is true, says why the pod goes although its owner is not
	// ready for it (maxDelay passed).
	Forced string
}

// admit decides whether pod, overdue by overdue, may be acted on now, and if
// so reserves its owner's slot.
func (p *pacer) admit(ctx context.Context, pod metav1.Object, overdue time.Duration) (verdict, error) {
	owner := metav1.GetControllerOfNoCopy(pod)
	if p == nil || p.budget < 0 || owner == nil {
		return verdict{Go: true}, nil
	}
	wait, err := p.blocked(ctx, pod, *owner)
	if err != nil {
		wait = fmt.Sprintf("cannot read its owner %s %s (%v)", owner.Kind, owner.Name, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if wait == "" {
		// Count again under the lock, with the reservations of other workers.
		if n := p.inFlight(pod, *owner); n >= p.budget {
			wait = fmt.Sprintf("%d of its %s %s's pods are already going (budget %d)", n, owner.Kind, owner.Name, p.budget)
		}
	}
	v := verdict{Go: true}
	if wait != "" {
		if overdue < p.maxDelay {
			p.held[pod.GetUID()] = struct{}{}
			return verdict{Wait: wait}, nil
		}
		pacingForcedTotal.Inc()
		v.Forced = fmt.Sprintf("it waited the longest allowed (%s past its deadline) for its owner: %s", p.maxDelay, wait)
	}
	delete(p.held, pod.GetUID())
	p.reserved[pod.GetUID()] = owner.UID
	return v, nil
}

// blocked says why pod's owner cannot spare it now, or "" if it can.
func (p *pacer) blocked(ctx context.Context, pod metav1.Object, owner metav1.OwnerReference) (string, error) {
	p.mu.Lock()
	n := p.inFlight(pod, owner)
	p.mu.Unlock()
	if n >= p.budget {
		return fmt.Sprintf("%d of its %s %s's pods are already going (budget %d)", n, owner.Kind, owner.Name, p.budget), nil
	}
	state, err := p.readOwner(ctx, pod.GetNamespace(), owner)
	if err != nil || state == nil {
		return "", err
	}
	if state.Unready[pod.GetUID()] {
		return "", nil // taking it lowers no one's capacity
	}
	// The owner's pods that are down: its shortfall from what it wants, less
	// the part its stale pods explain (a stuck pod is its budget's
	// business, not a replacement to wait for). What is left is a pod taken
	// and not yet replaced by a Ready one, whoever took it: read from the
	// cluster, not remembered, so a new leader paces as the old one did. An
	// owner scaled down since wants fewer back.
	short := state.Want - state.Ready - state.Stale
	if down := max(short, n); down >= p.budget {
		return fmt.Sprintf("its owner is short of Ready pods (%s; budget %d): a pod taken is not replaced yet, or one is starting", state.Summary, p.budget), nil
	}
	return "", nil
}

// inFlight counts owner's recorded pods, other than pod, that are going:
// terminating, taken but not yet seen terminating, or being acted on. The
// cache, not memory, is the source, so a new leader sees what its
// predecessor started. Callers hold p.mu.
func (p *pacer) inFlight(pod metav1.Object, owner metav1.OwnerReference) int {
	n := 0
	for uid, r := range p.reserved {
		if r == owner.UID && uid != pod.GetUID() {
			n++
		}
	}
	pods, err := p.pods(pod.GetNamespace())
	if err != nil {
		return n
	}
	for _, other := range pods {
		uid := other.GetUID()
		if uid == pod.GetUID() {
			continue
		}
		if _, counted := p.reserved[uid]; counted {
			continue
		}
		ref := metav1.GetControllerOfNoCopy(other)
		if ref == nil || ref.UID != owner.UID {
			continue
		}
		if other.GetDeletionTimestamp() != nil || p.taken(uid) {
			n++
		}
	}
	return n
}

// release ends pod's reservation, once its action returned. A pod taken
// stays counted: terminating, or taken but not yet seen terminating, and
// then as its owner's shortfall until a replacement is Ready.
func (p *pacer) release(pod types.UID) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if owner, ok := p.reserved[pod]; ok && p.ttl > 0 {
		// The pod may be gone: read the owner afresh, and share no read
		// begun before now.
		p.reads[owner] = ownerRead{at: p.clock.Now(), gen: p.reads[owner].gen + 1}
	}
	delete(p.reserved, pod)
}

// forget drops a deleted pod.
func (p *pacer) forget(pod types.UID) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.reserved, pod)
	delete(p.held, pod)
}

// heldCount is the number of due pods waiting for their owners.
func (p *pacer) heldCount() int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.held)
}

// readOwner reads the readiness of the owners whose status says it: a
// ReplicaSet, StatefulSet or ReplicationController (Ready of spec.replicas)
// and a DaemonSet (Ready of the pods it wants scheduled). Jobs and other
// controllers have no such status: only pods in flight count for them.
func readOwner(client API, clk clock.PassiveClock, staleAfter time.Duration) ownerReader {
	return func(ctx context.Context, namespace string, owner metav1.OwnerReference) (*ownerState, error) {
		ctx, cancel := context.WithTimeout(ctx, evictTimeout)
		defer cancel()
		var want int32
		var selector labels.Selector
		var err error
		switch groupKind(owner) {
		case "apps/ReplicaSet":
			rs, e := client.GetReplicaSet(ctx, namespace, owner.Name)
			if err = e; e == nil {
				want = replicas(rs.Spec.Replicas)
				selector, err = metav1.LabelSelectorAsSelector(rs.Spec.Selector)
			}
		case "apps/StatefulSet":
			ss, e := client.GetStatefulSet(ctx, namespace, owner.Name)
			if err = e; e == nil {
				want = replicas(ss.Spec.Replicas)
				selector, err = metav1.LabelSelectorAsSelector(ss.Spec.Selector)
			}
		case "apps/DaemonSet":
			ds, e := client.GetDaemonSet(ctx, namespace, owner.Name)
			if err = e; e == nil {
				want = ds.Status.DesiredNumberScheduled
				selector, err = metav1.LabelSelectorAsSelector(ds.Spec.Selector)
			}
		case "/ReplicationController":
			rc, e := client.GetReplicationController(ctx, namespace, owner.Name)
			if err = e; e == nil {
				want = replicas(rc.Spec.Replicas)
				selector = labels.SelectorFromSet(rc.Spec.Selector)
			}
		default:
			return nil, nil
		}
		switch {
		case apierrors.IsNotFound(err):
			return nil, nil // gone: nothing left to protect
		case err != nil:
			return nil, fmt.Errorf("reading %s %s/%s: %w", owner.Kind, namespace, owner.Name, err)
		}
		state, err := readyPods(ctx, client, namespace, owner.UID, selector, clk.Now().Add(-staleAfter))
		if err != nil {
			return nil, fmt.Errorf("counting the Ready pods of %s %s/%s: %w", owner.Kind, namespace, owner.Name, err)
		}
		state.Want = int(want)
		state.Summary = fmt.Sprintf("%s %s: %d of %d ready", owner.Kind, owner.Name, state.Ready, want)
		if state.Stale > 0 {
			state.Summary += fmt.Sprintf(", %d not Ready for long", state.Stale)
		}
		return state, nil
	}
}

// readyPods counts the owner's pods that are not terminating, from the pods
// themselves: Ready, and not Ready since before staleSince (or, never Ready,
// created before it). The owner's status counts Ready pods too, but it lags,
// and can still count a pod that was just evicted, which would let pacing
// take the next pod before the first one's replacement is Ready.
func readyPods(ctx context.Context, client API, namespace string, owner types.UID, selector labels.Selector, staleSince time.Time) (*ownerState, error) {
	pods, err := client.ListPods(ctx, namespace, selector)
	if err != nil {
		return nil, err
	}
	s := &ownerState{Unready: map[types.UID]bool{}}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if ref := metav1.GetControllerOfNoCopy(pod); ref == nil || ref.UID != owner || pod.DeletionTimestamp != nil {
			continue
		}
		since := pod.CreationTimestamp.Time
		ready := false
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady {
				ready = c.Status == corev1.ConditionTrue
				if !c.LastTransitionTime.IsZero() {
					since = c.LastTransitionTime.Time
				}
				break
			}
		}
		switch {
		case ready:
			s.Ready++
		case since.Before(staleSince):
			s.Unready[pod.UID] = true
			s.Stale++
		default:
			s.Unready[pod.UID] = true
		}
	}
	return s, nil
}

// replicas reads spec.replicas, which defaults to 1.
func replicas(n *int32) int32 {
	if n == nil {
		return 1
	}
	return *n
}

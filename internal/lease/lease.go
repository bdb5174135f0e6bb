// Package lease is leader election on a coordination.k8s.io/v1 Lease.
//
// It does what client-go's tools/leaderelection does with a LeaseLock, and
// exists because that package cannot be linked cheaply: its resource locks
// import the typed clientsets and with them client-go's kubernetes scheme,
// which registers every built-in API group at init (about 6 MiB of resident
// memory in the deleter). This package needs only the coordination/v1 types
// and a REST client (see NewClient).
//
// As in client-go, an elector never compares the times written in the Lease
// with its own clock: another node's clock may be skewed. It only notes,
// on its own clock, when it last saw the Lease's record change, and takes
// the Lease over once it has seen no change for LeaseDuration. Every write
// is bound to the resourceVersion it read, so of two candidates at most one
// can win. As in client-go, there is no fencing: a leader that stalls for
// longer than LeaseDuration may still act while a standby has taken over, so
// the work it guards must tolerate a brief overlap.
package lease

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
)

// maxJitter is how much longer than RetryPeriod a candidate may wait between
// two attempts to acquire, as a fraction of it: spread out, candidates that
// started together do not keep colliding.
const maxJitter = 0.2

// Failed attempts are routine until persistentAfter of them in a row; then
// the error is logged at default verbosity, and again every repeatEvery
// further failures, so a lasting problem (a missing RBAC rule) is visible
// without flooding the log.
const (
	persistentAfter = 3
	repeatEvery     = 30
)

// Config configures an Elector; see New.
type Config struct {
	Client   Client
	Identity string
	// LeaseDuration: a standby waits this long after it last saw the Lease
	// change before taking it.
	LeaseDuration time.Duration
	// RenewDeadline: the leader gives up if it could not renew for this long.
	// Shorter than LeaseDuration, so the leader stops before a standby starts.
	RenewDeadline time.Duration
	// RetryPeriod is the wait between attempts to acquire or renew.
	RetryPeriod time.Duration
	// ReleaseOnCancel: on Run's ctx done, hand the Lease over (holder
	// cleared) before Run returns, so a standby takes it at its next attempt
	// instead of after LeaseDuration. The release comes after
	// OnStoppedLeading returns: the caller must have stopped the guarded
	// work by then (or wait for it there).
	ReleaseOnCancel bool
	// Clock is the clock the elector times everything with; nil: real clock.
	Clock clock.Clock
	// OnStartedLeading is called in its own goroutine with a context
	// cancelled when leadership ends.
	OnStartedLeading func(ctx context.Context)
	// OnStoppedLeading is called once when leadership ends, only if it had
	// started (unlike client-go, which also calls it when Run ends without
	// ever leading).
	OnStoppedLeading func()
}

// Elector competes for one Lease and runs the callbacks while it holds it.
type Elector struct {
	cfg     Config
	clock   clock.Clock
	seconds int32 // LeaseDuration in whole seconds, rounded up, as written in the Lease

	leading atomic.Bool

	mu        sync.Mutex
	lastRenew time.Time // when our last successful write began; guarded by mu (Check reads it)

	// Used only by Run's goroutine.
	observed     record                // the Lease's record when last read
	observedTime time.Time             // when, on our clock, we saw observed first
	written      *coordinationv1.Lease // the Lease as our last write left it, for renewing without a read
	failures     int                   // failed attempts in a row, for logging
}

// New returns an Elector for cfg, or an error saying what in cfg is wrong.
func New(cfg Config) (*Elector, error) {
	var bad []string
	if cfg.Client == nil {
		bad = append(bad, "Client is nil: it must read and write the Lease (see NewClient)")
	}
	if cfg.Identity == "" {
		bad = append(bad, "Identity is empty: it must name this replica, uniquely among the candidates (the pod name)")
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"LeaseDuration", cfg.LeaseDuration}, {"RenewDeadline", cfg.RenewDeadline}, {"RetryPeriod", cfg.RetryPeriod}} {
		if d.d <= 0 {
			bad = append(bad, fmt.Sprintf("%s is %s: it must be greater than zero", d.name, d.d))
		}
	}
	if cfg.LeaseDuration <= cfg.RenewDeadline {
		bad = append(bad, fmt.Sprintf("LeaseDuration (%s) must be greater than RenewDeadline (%s), so that a leader that cannot renew gives up before a standby takes over", cfg.LeaseDuration, cfg.RenewDeadline))
	}
	if float64(cfg.RenewDeadline) <= (1+maxJitter)*float64(cfg.RetryPeriod) {
		bad = append(bad, fmt.Sprintf("RenewDeadline (%s) must be greater than %.1f × RetryPeriod (%s, the longest wait between attempts), so that a leader gets more than one attempt to renew", cfg.RenewDeadline, 1+maxJitter, cfg.RetryPeriod))
	}
	if cfg.OnStartedLeading == nil {
		bad = append(bad, "OnStartedLeading is nil: it must start the work leadership guards")
	}
	if cfg.OnStoppedLeading == nil {
		bad = append(bad, "OnStoppedLeading is nil")
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("invalid leader-election configuration: %s", strings.Join(bad, "; "))
	}
	e := &Elector{cfg: cfg, clock: cfg.Clock}
	if e.clock == nil {
		e.clock = clock.RealClock{}
	}
	e.seconds = int32(min(math.Ceil(cfg.LeaseDuration.Seconds()), math.MaxInt32))
	return e, nil
}

// IsLeader reports whether this replica leads: true from acquiring the
// Lease until leadership ends.
func (e *Elector) IsLeader() bool { return e.leading.Load() }

// Check is a liveness check: it fails if this replica leads but has not
// renewed the Lease for longer than LeaseDuration + RenewDeadline. A healthy
// leader gives up after RenewDeadline without a renewal, so such a leader is
// stuck (a call that ignores its deadline, a deadlock) and may be acting
// while another replica leads; restarting it is the remedy.
func (e *Elector) Check(*http.Request) error {
	if !e.IsLeader() {
		return nil
	}
	since := e.clock.Since(e.lastRenewed())
	if limit := e.cfg.LeaseDuration + e.cfg.RenewDeadline; since > limit {
		return fmt.Errorf("this replica leads on the Lease %s but last renewed it %s ago, more than LeaseDuration + RenewDeadline (%s): its renewal is stuck, restart it",
			e.cfg.Client.Describe(), since.Round(time.Millisecond), limit)
	}
	return nil
}

// Run competes for the Lease until ctx is done or, once it leads, until
// leadership ends: ctx done, another replica holding the Lease, or no
// successful renewal for RenewDeadline. While it leads, OnStartedLeading
// runs; when leadership ends, its context is cancelled, OnStoppedLeading is
// called and, if ctx is done and ReleaseOnCancel is set, the Lease is
// released. Run is meant to be called once.
func (e *Elector) Run(ctx context.Context) {
	logger := klog.FromContext(ctx).WithValues("lease", e.cfg.Client.Describe(), "identity", e.cfg.Identity)
	ctx = klog.NewContext(ctx, logger)
	if !e.acquire(ctx) {
		return
	}
	leaderCtx, cancel := context.WithCancel(ctx)
	e.leading.Store(true)
	logger.Info("Became leader")
	go e.cfg.OnStartedLeading(leaderCtx)

	lost := e.renew(ctx)
	e.leading.Store(false)
	cancel()
	if lost != nil {
		logger.Info("Lost leadership", "reason", lost.Error())
	} else {
		logger.V(2).Info("Stopping leading: shutting down")
	}
	e.cfg.OnStoppedLeading()
	if lost == nil && e.cfg.ReleaseOnCancel {
		e.release(ctx)
	}
}

// acquire tries to acquire the Lease every RetryPeriod (jittered) until it
// does (true) or ctx is done (false).
func (e *Elector) acquire(ctx context.Context) bool {
	logger := klog.FromContext(ctx)
	logger.V(2).Info("Trying to acquire the Lease")
	for ctx.Err() == nil {
		// Bounded, so that a hung call cannot keep a candidate from
		// looking again.
		attemptCtx, cancel := context.WithTimeout(ctx, e.cfg.RenewDeadline)
		res, err := e.tryAcquireOrRenew(attemptCtx, false)
		cancel()
		switch {
		case res == held:
			return true
		case res == failed && ctx.Err() == nil:
			e.logFailure(logger, err)
		}
		if !e.sleep(ctx, jitter(e.cfg.RetryPeriod)) {
			return false
		}
	}
	return false
}

// renew renews the Lease every RetryPeriod until ctx is done (nil) or
// leadership is lost (an error saying why).
func (e *Elector) renew(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	for {
		if !e.sleep(ctx, e.cfg.RetryPeriod) {
			return nil
		}
		left := e.cfg.RenewDeadline - e.clock.Since(e.lastRenewed())
		if left <= 0 {
			return fmt.Errorf("not renewed for RenewDeadline (%s)", e.cfg.RenewDeadline)
		}
		// The attempt may not outlast the deadline: a hung call must not
		// keep this replica leading after a standby may have taken over.
		attemptCtx, cancel := context.WithTimeout(ctx, left)
		res, err := e.tryAcquireOrRenew(attemptCtx, true)
		cancel()
		switch {
		case res == held:
			logger.V(5).Info("Renewed the Lease")
			continue
		case res == heldByOther:
			return fmt.Errorf("%s holds the Lease now", e.observed.holder)
		case ctx.Err() != nil:
			return nil
		}
		e.logFailure(logger, err)
		if since := e.clock.Since(e.lastRenewed()); since >= e.cfg.RenewDeadline {
			return fmt.Errorf("not renewed for %s, RenewDeadline is %s; last error: %w", since.Round(time.Millisecond), e.cfg.RenewDeadline, err)
		}
	}
}

// outcome is what one attempt to acquire or renew came to.
type outcome int

const (
	failed      outcome = iota // a call failed or lost a race; see the error
	held                       // this replica holds the Lease, renewed now
	heldByOther                // another replica holds the Lease and it has not expired
)

// tryAcquireOrRenew makes one attempt to take or renew the Lease.
func (e *Elector) tryAcquireOrRenew(ctx context.Context, leading bool) (outcome, error) {
	logger := klog.FromContext(ctx)
	now := e.clock.Now()

	// A leader renews the Lease as its last write left it, without reading it
	// first: one call instead of two, and the resourceVersion makes it fail
	// if anyone else wrote in between.
	if leading && e.written != nil {
		out, err := e.cfg.Client.Update(ctx, e.claim(e.written, now))
		if err == nil {
			e.wrote(out, now)
			return held, nil
		}
		if ctx.Err() != nil {
			return failed, err
		}
		logger.V(2).Info("Could not renew the Lease as last written; reading it", "err", err)
	}

	cur, err := e.cfg.Client.Get(ctx)
	if apierrors.IsNotFound(err) {
		t := metav1.NewMicroTime(now)
		out, err := e.cfg.Client.Create(ctx, &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(e.cfg.Identity),
			LeaseDurationSeconds: ptr.To(e.seconds),
			AcquireTime:          &t,
			RenewTime:            &t,
			LeaseTransitions:     ptr.To[int32](0),
		}})
		if err != nil {
			return failed, fmt.Errorf("creating the Lease: %w", err)
		}
		e.wrote(out, now)
		return held, nil
	}
	if err != nil {
		return failed, fmt.Errorf("reading the Lease: %w", err)
	}

	rec := recordOf(cur)
	if !rec.equal(e.observed) {
		if rec.holder != e.observed.holder && rec.holder != e.cfg.Identity && rec.holder != "" {
			logger.V(2).Info("The Lease is held by another replica", "holder", rec.holder)
		}
		e.observed, e.observedTime = rec, now
	}
	if rec.holder != "" && rec.holder != e.cfg.Identity && now.Before(e.observedTime.Add(e.expiry(rec))) {
		logger.V(4).Info("The Lease is held by another replica and has not expired", "holder", rec.holder)
		e.failures = 0 // all this attempt needed worked
		return heldByOther, nil
	}

	out, err := e.cfg.Client.Update(ctx, e.claim(cur, now))
	if err != nil {
		return failed, fmt.Errorf("writing the Lease: %w", err)
	}
	e.wrote(out, now)
	return held, nil
}

// claim returns a copy of l held by this replica as of now: renewed, and if
// another replica (or none) held it, acquired now with one more transition.
func (e *Elector) claim(l *coordinationv1.Lease, now time.Time) *coordinationv1.Lease {
	l = l.DeepCopy()
	prev := recordOf(l)
	t := metav1.NewMicroTime(now)
	l.Spec.HolderIdentity = ptr.To(e.cfg.Identity)
	l.Spec.LeaseDurationSeconds = ptr.To(e.seconds)
	l.Spec.RenewTime = &t
	if prev.holder != e.cfg.Identity {
		acquired := t
		l.Spec.AcquireTime = &acquired
		l.Spec.LeaseTransitions = ptr.To(prev.transitions + 1)
	}
	if l.Spec.AcquireTime == nil {
		acquired := t
		l.Spec.AcquireTime = &acquired
	}
	if l.Spec.LeaseTransitions == nil {
		l.Spec.LeaseTransitions = ptr.To[int32](0)
	}
	return l
}

// wrote records a successful write of ours, begun at start. The renewal
// counts from when the write began, not when it returned: a standby may
// have seen it as soon as the server applied it.
func (e *Elector) wrote(l *coordinationv1.Lease, start time.Time) {
	e.written = l
	e.observed, e.observedTime = recordOf(l), start
	e.failures = 0
	e.mu.Lock()
	e.lastRenew = start
	e.mu.Unlock()
}

func (e *Elector) lastRenewed() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastRenew
}

// expiry is how long after a change to rec was first seen the Lease may be
// taken over: LeaseDuration, or the holder's own leaseDurationSeconds if it
// asked for longer (a replica configured differently).
func (e *Elector) expiry(rec record) time.Duration {
	return max(e.cfg.LeaseDuration, time.Duration(rec.durationSeconds)*time.Second)
}

// release hands the Lease over if this replica still holds it: holder
// cleared, so the next candidate to look takes it without waiting for it to
// expire. It runs after ctx is done, so it has its own short deadline.
func (e *Elector) release(ctx context.Context) {
	logger := klog.FromContext(ctx)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.RenewDeadline)
	defer cancel()
	cur, err := e.cfg.Client.Get(ctx)
	if err != nil {
		logger.Error(err, "Could not release the Lease (reading it failed); a standby takes over once it expires, after LeaseDuration")
		return
	}
	if h := recordOf(cur).holder; h != e.cfg.Identity {
		logger.V(2).Info("Not releasing the Lease: this replica no longer holds it", "holder", h)
		return
	}
	l := cur.DeepCopy()
	now := metav1.NewMicroTime(e.clock.Now())
	acquired := now
	l.Spec.HolderIdentity = ptr.To("")
	l.Spec.LeaseDurationSeconds = ptr.To[int32](1)
	l.Spec.RenewTime = &now
	l.Spec.AcquireTime = &acquired
	if _, err := e.cfg.Client.Update(ctx, l); err != nil {
		logger.Error(err, "Could not release the Lease; a standby takes over once it expires, after LeaseDuration")
		return
	}
	logger.Info("Released the Lease")
}

// logFailure logs a failed attempt: at V(2) while it is routine (a lost
// race, a passing error), at default verbosity with what to do once errors
// persist.
func (e *Elector) logFailure(logger klog.Logger, err error) {
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		logger.V(2).Info("Another replica wrote the Lease first", "err", err)
		return
	}
	e.failures++
	if e.failures < persistentAfter || (e.failures-persistentAfter)%repeatEvery != 0 {
		logger.V(2).Info("Could not read or write the Lease; retrying", "err", err, "failures", e.failures)
		return
	}
	logger.Error(err, "Leader election cannot use its Lease: "+e.hint(err), "failures", e.failures)
}

// hint says what to do about a persistent error.
func (e *Elector) hint(err error) string {
	desc := e.cfg.Client.Describe()
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Sprintf("this replica's ServiceAccount (the deleter's) needs RBAC permission to get, create and update the coordination.k8s.io Lease %s (a Role with those verbs on leases, bound to it); it cannot lead until it has it", desc)
	case apierrors.IsUnauthorized(err):
		return "the API server does not accept this replica's credentials; check its ServiceAccount token"
	case apierrors.IsNotFound(err):
		return fmt.Sprintf("the Lease %s cannot be created: check that its namespace exists", desc)
	default:
		return fmt.Sprintf("retrying every %s; check that the API server is reachable", e.cfg.RetryPeriod)
	}
}

// sleep waits d on the elector's clock; false if ctx was done first.
func (e *Elector) sleep(ctx context.Context, d time.Duration) bool {
	t := e.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return ctx.Err() == nil
	}
}

// jitter returns d lengthened by up to maxJitter of itself, at random.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration(rand.Float64()*maxJitter*float64(d))
}

// record is what of a Lease tells whether its holder is still renewing it.
type record struct {
	holder          string
	durationSeconds int32
	acquire, renew  time.Time
	transitions     int32
}

func recordOf(l *coordinationv1.Lease) record {
	s := l.Spec
	var r record
	if s.HolderIdentity != nil {
		r.holder = *s.HolderIdentity
	}
	if s.LeaseDurationSeconds != nil {
		r.durationSeconds = *s.LeaseDurationSeconds
	}
	if s.AcquireTime != nil {
		r.acquire = s.AcquireTime.Time
	}
	if s.RenewTime != nil {
		r.renew = s.RenewTime.Time
	}
	if s.LeaseTransitions != nil {
		r.transitions = *s.LeaseTransitions
	}
	return r
}

func (r record) equal(o record) bool {
	return r.holder == o.holder && r.durationSeconds == o.durationSeconds &&
		r.acquire.Equal(o.acquire) && r.renew.Equal(o.renew) && r.transitions == o.transitions
}

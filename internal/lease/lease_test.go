package lease

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
)

// waitFor bounds every wait for something the elector does.
const waitFor = 10 * time.Second

var leasesResource = schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}

// fakeClient is one Lease in memory. Like the API server, it assigns a new
// resourceVersion on every write and refuses an Update bound to another
// (409). It counts calls, can fail them, and can hang Updates.
type fakeClient struct {
	mu     sync.Mutex
	lease  *coordinationv1.Lease
	rv     int
	calls  map[string]int
	errs   map[string]error // by method: returned instead of doing it
	hang   chan struct{}    // non-nil: Update waits for it to close, ignoring its context
	writes []coordinationv1.LeaseSpec
}

func newFake() *fakeClient { return &fakeClient{calls: map[string]int{}, errs: map[string]error{}} }

func (f *fakeClient) Describe() string { return "ns/lease" }

func (f *fakeClient) Get(context.Context) (*coordinationv1.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["get"]++
	if err := f.errs["get"]; err != nil {
		return nil, err
	}
	if f.lease == nil {
		return nil, apierrors.NewNotFound(leasesResource, "lease")
	}
	return f.lease.DeepCopy(), nil
}

func (f *fakeClient) Create(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["create"]++
	if err := f.errs["create"]; err != nil {
		return nil, err
	}
	if f.lease != nil {
		return nil, apierrors.NewAlreadyExists(leasesResource, "lease")
	}
	return f.storeLocked(l), nil
}

func (f *fakeClient) Update(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	f.mu.Lock()
	f.calls["update"]++
	hang := f.hang
	f.mu.Unlock()
	if hang != nil {
		<-hang
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.errs["update"]; err != nil {
		return nil, err
	}
	if f.lease == nil {
		return nil, apierrors.NewNotFound(leasesResource, "lease")
	}
	if l.ResourceVersion != f.lease.ResourceVersion {
		return nil, apierrors.NewConflict(leasesResource, "lease", errors.New("the object has been modified"))
	}
	return f.storeLocked(l), nil
}

func (f *fakeClient) storeLocked(l *coordinationv1.Lease) *coordinationv1.Lease {
	f.rv++
	l = l.DeepCopy()
	l.Namespace, l.Name = "ns", "lease"
	l.ResourceVersion = strconv.Itoa(f.rv)
	f.lease = l
	f.writes = append(f.writes, *l.Spec.DeepCopy())
	return l.DeepCopy()
}

// set writes the Lease as another party would, whatever its resourceVersion.
func (f *fakeClient) set(spec coordinationv1.LeaseSpec) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.storeLocked(&coordinationv1.Lease{Spec: spec})
}

func (f *fakeClient) spec() coordinationv1.LeaseSpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lease == nil {
		return coordinationv1.LeaseSpec{}
	}
	return *f.lease.Spec.DeepCopy()
}

func (f *fakeClient) holder() string {
	s := f.spec()
	return ptr.Deref(s.HolderIdentity, "")
}

func (f *fakeClient) count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *fakeClient) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls["get"] + f.calls["create"] + f.calls["update"]
}

func (f *fakeClient) fail(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[method] = err
}

func (f *fakeClient) setHang(ch chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hang = ch
}

// candidate is an Elector under test and what its callbacks saw.
type candidate struct {
	*Elector
	started  chan context.Context // each OnStartedLeading's context
	stopped  atomic.Int32         // OnStoppedLeading calls
	cancel   context.CancelFunc   // cancels Run's context
	done     chan struct{}        // closed when Run returns
	onStop   func()               // if set, called in OnStoppedLeading
	onStopMu sync.Mutex
}

// newCandidate returns a candidate for cfg, with callbacks filled in and
// Run not started.
func newCandidate(t *testing.T, cfg Config) *candidate {
	t.Helper()
	c := &candidate{started: make(chan context.Context, 10), done: make(chan struct{})}
	cfg.OnStartedLeading = func(ctx context.Context) { c.started <- ctx }
	cfg.OnStoppedLeading = func() {
		c.stopped.Add(1)
		c.onStopMu.Lock()
		defer c.onStopMu.Unlock()
		if c.onStop != nil {
			c.onStop()
		}
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Elector = e
	return c
}

// run starts Run; the test's cleanup stops it and waits for it.
func (c *candidate) run(t *testing.T) { t.Helper(); c.runIn(t, context.Background()) }

// runIn starts Run with a context derived from parent.
func (c *candidate) runIn(t *testing.T, parent context.Context) {
	t.Helper()
	ctx, cancel := context.WithCancel(parent)
	c.cancel = cancel
	go func() {
		defer close(c.done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.done:
		case <-time.After(waitFor):
			t.Error("Run did not return after its context was cancelled")
		}
	})
}

func (c *candidate) returned() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// leaderCtx waits for OnStartedLeading and returns its context.
func (c *candidate) leaderCtx(t *testing.T) context.Context {
	t.Helper()
	select {
	case ctx := <-c.started:
		return ctx
	case <-time.After(waitFor):
		t.Fatal("OnStartedLeading was not called")
		return nil
	}
}

// eventually polls cond until it holds, failing the test after waitFor.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// tick steps a fake clock by d once the candidate waits on it, and returns
// once the candidate has made its next attempt and waits again (or Run has
// returned), so the test sees the state that attempt left.
func tick(t *testing.T, fc *clocktesting.FakeClock, f *fakeClient, c *candidate, d time.Duration) {
	t.Helper()
	eventually(t, "the elector waits on the clock", func() bool { return fc.HasWaiters() || c.returned() })
	n := f.total()
	fc.Step(d)
	eventually(t, "the elector has made its attempt", func() bool {
		return c.returned() || (f.total() > n && fc.HasWaiters())
	})
}

func wantNotLeading(t *testing.T, c *candidate, f *fakeClient, when string) {
	t.Helper()
	if c.IsLeader() {
		t.Fatalf("%s: IsLeader is true", when)
	}
	if len(c.started) > 0 {
		t.Fatalf("%s: OnStartedLeading was called", when)
	}
	if h := f.holder(); h == "me" {
		t.Fatalf("%s: the Lease is held by this candidate", when)
	}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// slow is a configuration timed by a fake clock.
func slow(f *fakeClient, fc *clocktesting.FakeClock) Config {
	return Config{Client: f, Identity: "me", Clock: fc,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second}
}

// step is the longest wait between two attempts to acquire (RetryPeriod
// with the most jitter), so one step always brings the next attempt.
const step = 2400 * time.Millisecond

func micro(t time.Time) *metav1.MicroTime { m := metav1.NewMicroTime(t); return &m }

func heldBy(holder string, renewed time.Time, transitions int32) coordinationv1.LeaseSpec {
	return coordinationv1.LeaseSpec{
		HolderIdentity:       ptr.To(holder),
		LeaseDurationSeconds: ptr.To[int32](15),
		AcquireTime:          micro(renewed),
		RenewTime:            micro(renewed),
		LeaseTransitions:     ptr.To(transitions),
	}
}

// TestAcquireFreeLease: with no Lease, the elector creates one held by
// itself (duration rounded up to whole seconds, acquired and renewed now, no
// transitions) and leads: IsLeader, and OnStartedLeading with a live context.
func TestAcquireFreeLease(t *testing.T) {
	f, fc := newFake(), clocktesting.NewFakeClock(t0)
	cfg := slow(f, fc)
	cfg.LeaseDuration = 14500 * time.Millisecond
	c := newCandidate(t, cfg)
	c.run(t)

	ctx := c.leaderCtx(t)
	if err := ctx.Err(); err != nil {
		t.Fatalf("OnStartedLeading's context is done: %v", err)
	}
	if !c.IsLeader() {
		t.Fatal("IsLeader is false after OnStartedLeading")
	}
	s := f.spec()
	wantAcquired(t, s, 0, t0)
	if d := ptr.Deref(s.LeaseDurationSeconds, 0); d != 15 {
		t.Errorf("leaseDurationSeconds %d, want 15 (14.5 s rounded up)", d)
	}
	if n := f.count("create"); n != 1 {
		t.Errorf("%d creates, want 1", n)
	}
}

// TestStandbyWaitsLeaseDuration: a Lease held by another replica is not
// taken while its holder renews it, however old the times written in it (the
// other node's clock is not trusted); it is taken only once the standby has
// seen no change for LeaseDuration on its own clock, counted from the last
// change it saw, and then with one more transition.
func TestStandbyWaitsLeaseDuration(t *testing.T) {
	f, fc := newFake(), clocktesting.NewFakeClock(t0)
	// Renewed "an hour ago" by the other node's clock.
	f.set(heldBy("other", t0.Add(-time.Hour), 4))
	c := newCandidate(t, slow(f, fc))
	c.run(t)
	eventually(t, "the standby has read the Lease", func() bool { return f.count("get") == 1 && fc.HasWaiters() })

	now := time.Duration(0)
	advance := func() {
		t.Helper()
		tick(t, fc, f, c, step)
		now += step
	}
	advance()
	advance() // 4.8 s
	wantNotLeading(t, c, f, "4.8 s after the first look")

	// The holder renews; the standby sees it at 7.2 s and counts from there.
	f.set(heldBy("other", t0.Add(-time.Hour+time.Minute), 4))
	advance() // 7.2 s: sees the change
	seen := now
	for now+step < seen+15*time.Second {
		advance()
		wantNotLeading(t, c, f, (now).String()+" after the first look, "+(now-seen).String()+" after the renewal was seen")
	}
	// now is 21.6 s, 14.4 s after the change was seen: 16.8 s would have
	// sufficed had the standby counted from its first look.
	if n := f.count("update"); n != 0 {
		t.Fatalf("the standby wrote the Lease %d times while it was held", n)
	}
	advance() // 24 s, 16.8 s after the change was seen
	c.leaderCtx(t)
	if !c.IsLeader() {
		t.Fatal("IsLeader is false after taking the Lease over")
	}
	wantAcquired(t, f.spec(), 5, t0.Add(now)) // 4 + 1
}

// wantAcquired checks that s is held by "me", acquired and renewed at at,
// after the given number of transitions.
func wantAcquired(t *testing.T, s coordinationv1.LeaseSpec, transitions int32, at time.Time) {
	t.Helper()
	if h := ptr.Deref(s.HolderIdentity, ""); h != "me" {
		t.Errorf("holder %q, want me", h)
	}
	if n := ptr.Deref(s.LeaseTransitions, -1); n != transitions {
		t.Errorf("leaseTransitions %d, want %d", n, transitions)
	}
	if s.AcquireTime == nil || !s.AcquireTime.Equal(micro(at)) || s.RenewTime == nil || !s.RenewTime.Equal(micro(at)) {
		t.Errorf("acquireTime %v, renewTime %v, want both %v", s.AcquireTime, s.RenewTime, at)
	}
}

// fast is a configuration on the real clock.
func fast(f Client, id string, leaseDuration time.Duration) Config {
	return Config{Client: f, Identity: id,
		LeaseDuration: leaseDuration, RenewDeadline: leaseDuration / 2, RetryPeriod: 10 * time.Millisecond}
}

// TestRace: two candidates started together on an absent Lease: exactly one
// leads, the Lease names it, and the other never leads at the same time,
// also for longer than LeaseDuration, while the leader renews. When the
// leader stops (without releasing), the other takes over, and still never
// both lead.
func TestRace(t *testing.T) {
	const leaseDuration = 600 * time.Millisecond
	for round := range 8 {
		f := newFake()
		a := newCandidate(t, fast(f, "a", leaseDuration))
		b := newCandidate(t, fast(f, "b", leaseDuration))
		a.run(t)
		b.run(t)
		eventually(t, "one candidate leads", func() bool { return a.IsLeader() || b.IsLeader() })
		leader, standby := a, b
		if b.IsLeader() {
			leader, standby = b, a
		}
		id := map[*candidate]string{a: "a", b: "b"}
		// Only the last round watches past a LeaseDuration and the handover.
		watch := 30 * time.Millisecond
		if round == 7 {
			watch = 2 * leaseDuration
		}
		for end := time.Now().Add(watch); time.Now().Before(end); time.Sleep(time.Millisecond) {
			if a.IsLeader() == b.IsLeader() {
				t.Fatalf("round %d: a leads %v, b leads %v", round, a.IsLeader(), b.IsLeader())
			}
			if h := f.holder(); h != id[leader] {
				t.Fatalf("round %d: the Lease is held by %q while %s leads", round, h, id[leader])
			}
		}
		if n := len(a.started) + len(b.started); n != 1 {
			t.Fatalf("round %d: OnStartedLeading called %d times, want 1", round, n)
		}
		if round < 7 {
			a.cancel()
			b.cancel()
			continue
		}
		leader.cancel()
		eventually(t, "the standby takes over", func() bool {
			if leader.IsLeader() && standby.IsLeader() {
				t.Fatal("both lead")
			}
			return standby.IsLeader()
		})
		if h := f.holder(); h != id[standby] {
			t.Fatalf("the Lease is held by %q, want %s", h, id[standby])
		}
		if n := ptr.Deref(f.spec().LeaseTransitions, 0); n != 1 {
			t.Errorf("leaseTransitions %d, want 1", n)
		}
	}
}

// TestRenewThenGiveUp: the leader renews every RetryPeriod (renewTime
// advances, acquireTime and transitions stay, without reading the Lease
// again); when its writes start failing it keeps leading until RenewDeadline
// has passed since its last renewal and not longer: then its context is
// cancelled, OnStoppedLeading is called once, IsLeader is false and Run
// returns.
func TestRenewThenGiveUp(t *testing.T) {
	f, fc := newFake(), clocktesting.NewFakeClock(t0)
	c := newCandidate(t, slow(f, fc))
	c.run(t)
	ctx := c.leaderCtx(t)
	for i := 1; i <= 3; i++ {
		tick(t, fc, f, c, 2*time.Second)
		s := f.spec()
		if want := micro(t0.Add(time.Duration(i) * 2 * time.Second)); !s.RenewTime.Equal(want) {
			t.Fatalf("renewal %d: renewTime %v, want %v", i, s.RenewTime, want)
		}
		if !s.AcquireTime.Equal(micro(t0)) || ptr.Deref(s.LeaseTransitions, -1) != 0 {
			t.Fatalf("renewal %d: acquireTime %v, transitions %d, want %v and 0", i, s.AcquireTime, ptr.Deref(s.LeaseTransitions, -1), t0)
		}
	}
	if n := f.count("get"); n != 1 {
		t.Errorf("%d reads of the Lease, want 1: a leader renews without reading", n)
	}

	// Renewed at 6 s; from now on every write fails.
	f.fail("update", apierrors.NewServiceUnavailable("etcd is sad"))
	for range 4 { // 8, 10, 12, 14 s: 8 s after the last renewal
		tick(t, fc, f, c, 2*time.Second)
		if !c.IsLeader() || ctx.Err() != nil || c.stopped.Load() != 0 || c.returned() {
			t.Fatalf("gave up %s after the last renewal, before RenewDeadline", fc.Since(t0.Add(6*time.Second)))
		}
	}
	tick(t, fc, f, c, 2*time.Second) // 16 s: 10 s after it
	eventually(t, "Run returns", c.returned)
	if ctx.Err() == nil {
		t.Error("the leader's context is not cancelled")
	}
	if n := c.stopped.Load(); n != 1 {
		t.Errorf("OnStoppedLeading called %d times, want 1", n)
	}
	if c.IsLeader() {
		t.Error("IsLeader is true after giving up")
	}
}

// TestReleaseOnCancel: cancelling the leader's Run hands the Lease over
// (holder cleared, duration 1 s, transitions kept) after OnStoppedLeading,
// and a standby that had seen it held takes it at its next attempt, long
// before LeaseDuration.
func TestReleaseOnCancel(t *testing.T) {
	const leaseDuration = 20 * time.Second
	f := newFake()
	cfg := fast(f, "a", leaseDuration)
	cfg.ReleaseOnCancel = true
	a := newCandidate(t, cfg)
	var holderAtStop string
	a.onStop = func() { holderAtStop = f.holder() }
	a.run(t)
	a.leaderCtx(t)

	b := newCandidate(t, fast(f, "b", leaseDuration))
	b.run(t)
	eventually(t, "the standby has looked twice", func() bool { return f.count("get") >= 3 })

	cancelled := time.Now()
	a.cancel()
	eventually(t, "the leader's Run returns", a.returned)
	if n := a.stopped.Load(); n != 1 {
		t.Errorf("OnStoppedLeading called %d times, want 1", n)
	}
	a.onStopMu.Lock()
	if holderAtStop != "a" {
		t.Errorf("at OnStoppedLeading the Lease was held by %q, want a: the release must come after it", holderAtStop)
	}
	a.onStopMu.Unlock()
	eventually(t, "the standby takes over", b.IsLeader)
	if took := time.Since(cancelled); took > leaseDuration/4 {
		t.Errorf("the standby took %s to take a released Lease", took)
	}
	var released *coordinationv1.LeaseSpec
	f.mu.Lock()
	for i := range f.writes {
		if ptr.Deref(f.writes[i].HolderIdentity, "x") == "" {
			released = &f.writes[i]
		}
	}
	f.mu.Unlock()
	if released == nil {
		t.Fatal("the Lease was never released (no write with an empty holder)")
	}
	if d := ptr.Deref(released.LeaseDurationSeconds, 0); d != 1 {
		t.Errorf("released with leaseDurationSeconds %d, want 1", d)
	}
	if n := ptr.Deref(released.LeaseTransitions, -1); n != 0 {
		t.Errorf("released with leaseTransitions %d, want 0 (unchanged)", n)
	}
	if n := ptr.Deref(f.spec().LeaseTransitions, -1); n != 1 {
		t.Errorf("taken over with leaseTransitions %d, want 1", n)
	}
}

// TestTakenOver: when another holder replaces the Lease while this replica
// leads, leadership ends at its next renewal, well before RenewDeadline,
// and the other holder's Lease is left alone.
func TestTakenOver(t *testing.T) {
	f := newFake()
	cfg := fast(f, "me", 20*time.Second)
	cfg.ReleaseOnCancel = true
	c := newCandidate(t, cfg)
	c.run(t)
	ctx := c.leaderCtx(t)

	taken := time.Now()
	f.set(heldBy("intruder", time.Now(), 1))
	eventually(t, "Run returns", c.returned)
	if d := time.Since(taken); d > cfg.RenewDeadline/4 {
		t.Errorf("leadership ended %s after the takeover", d)
	}
	if ctx.Err() == nil {
		t.Error("the leader's context is not cancelled")
	}
	if n := c.stopped.Load(); n != 1 {
		t.Errorf("OnStoppedLeading called %d times, want 1", n)
	}
	if c.IsLeader() {
		t.Error("IsLeader is true")
	}
	if h := f.holder(); h != "intruder" {
		t.Errorf("the Lease is held by %q, want intruder", h)
	}
}

// TestNewRejectsBadConfig: each bad setting is refused with an error that
// names it.
func TestNewRejectsBadConfig(t *testing.T) {
	valid := func() Config {
		return Config{Client: newFake(), Identity: "me",
			LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 250 * time.Millisecond,
			OnStartedLeading: func(context.Context) {}, OnStoppedLeading: func() {}}
	}
	if _, err := New(valid()); err != nil {
		t.Fatalf("a valid configuration: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no client", func(c *Config) { c.Client = nil }, "Client is nil"},
		{"no identity", func(c *Config) { c.Identity = "" }, "Identity is empty"},
		{"zero lease duration", func(c *Config) { c.LeaseDuration = 0 }, "LeaseDuration is 0s"},
		{"negative retry period", func(c *Config) { c.RetryPeriod = -time.Second }, "RetryPeriod is -1s"},
		{"zero renew deadline", func(c *Config) { c.RenewDeadline = 0 }, "RenewDeadline is 0s"},
		{"lease not above deadline", func(c *Config) { c.LeaseDuration = 3 * time.Second }, "LeaseDuration (3s) must be greater than RenewDeadline (3s)"},
		{"deadline within jitter", func(c *Config) { c.RetryPeriod = 2500 * time.Millisecond }, "RenewDeadline (3s) must be greater than 1.2 × RetryPeriod (2.5s"},
		{"no start", func(c *Config) { c.OnStartedLeading = nil }, "OnStartedLeading is nil"},
		{"no stop", func(c *Config) { c.OnStoppedLeading = nil }, "OnStoppedLeading is nil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid()
			tc.edit(&cfg)
			e, err := New(cfg)
			if err == nil {
				t.Fatalf("accepted, want an error saying %q", tc.want)
			}
			if e != nil {
				t.Error("returned an Elector with the error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "invalid leader-election configuration: ") || !strings.Contains(msg, tc.want) {
				t.Errorf("error %q, want an invalid configuration saying %q", msg, tc.want)
			}
		})
	}
}

// TestCheck: the liveness check passes for a standby and for a leader that
// renews, however long it has led, and fails for a leader whose renewal
// has hung for longer than LeaseDuration + RenewDeadline.
func TestCheck(t *testing.T) {
	t.Run("standby", func(t *testing.T) {
		f, fc := newFake(), clocktesting.NewFakeClock(t0)
		f.set(heldBy("other", t0, 0))
		c := newCandidate(t, slow(f, fc))
		if err := c.Check(nil); err != nil {
			t.Fatalf("before Run: %v", err)
		}
		c.run(t)
		for range 3 {
			tick(t, fc, f, c, step)
			f.set(heldBy("other", fc.Now(), 0))
			if err := c.Check(nil); err != nil {
				t.Fatalf("standby: %v", err)
			}
		}
	})
	t.Run("leader", func(t *testing.T) {
		f, fc := newFake(), clocktesting.NewFakeClock(t0)
		c := newCandidate(t, slow(f, fc))
		c.run(t)
		c.leaderCtx(t)
		for range 15 { // 30 s, past LeaseDuration + RenewDeadline
			tick(t, fc, f, c, 2*time.Second)
			if err := c.Check(nil); err != nil {
				t.Fatalf("renewing leader, %s in: %v", fc.Since(t0), err)
			}
		}

		hang := make(chan struct{})
		f.setHang(hang)
		defer close(hang)
		updates := f.count("update")
		eventually(t, "the leader waits on the clock", fc.HasWaiters)
		fc.Step(2 * time.Second) // the next renewal hangs
		eventually(t, "the renewal is under way", func() bool { return f.count("update") > updates })
		fc.Step(23 * time.Second) // 25 s after the last renewal: not yet
		if err := c.Check(nil); err != nil {
			t.Fatalf("%s after the last renewal: %v", 25*time.Second, err)
		}
		fc.Step(time.Millisecond)
		err := c.Check(nil)
		if err == nil || !strings.Contains(err.Error(), "stuck") || !strings.Contains(err.Error(), "ns/lease") {
			t.Fatalf("a leader stuck for longer than LeaseDuration + RenewDeadline: error %v, want one naming the Lease, saying it is stuck", err)
		}
	})
}

// TestPersistentErrorLogged: a failure that persists (here RBAC allows
// reading the Lease but not writing it) is logged at default verbosity once
// it has happened persistentAfter times in a row, naming the Lease and the
// permission missing; the first failures are routine and stay below it.
func TestPersistentErrorLogged(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	logger := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, args)
	}, funcr.Options{})
	logged := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var errs []string
		for _, l := range lines {
			if strings.Contains(l, `"error"`) {
				errs = append(errs, l)
			}
		}
		return errs
	}

	f, fc := newFake(), clocktesting.NewFakeClock(t0)
	f.set(coordinationv1.LeaseSpec{HolderIdentity: ptr.To("")}) // free
	f.fail("update", apierrors.NewForbidden(leasesResource, "lease", errors.New("RBAC: update not allowed")))
	c := newCandidate(t, slow(f, fc))
	c.runIn(t, klog.NewContext(context.Background(), logger))
	eventually(t, "the first attempt", func() bool { return f.count("update") == 1 && fc.HasWaiters() })
	tick(t, fc, f, c, step)
	if errs := logged(); len(errs) != 0 {
		t.Fatalf("after %d failures, logged %q; want nothing at default verbosity yet", f.count("update"), errs)
	}
	tick(t, fc, f, c, step)
	errs := logged()
	if len(errs) != 1 {
		t.Fatalf("after %d failures, logged %q; want one error", f.count("update"), errs)
	}
	for _, want := range []string{"ns/lease", "RBAC", "get, create and update", "ServiceAccount"} {
		if !strings.Contains(errs[0], want) {
			t.Errorf("the error %s does not say %q", errs[0], want)
		}
	}
	tick(t, fc, f, c, step)
	if n := len(logged()); n != 1 {
		t.Errorf("after %d failures, %d errors logged, want still 1", f.count("update"), n)
	}
}

package deleter

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/internal/kubetest"
)

// pacingWorld is a pacer's surroundings: the cached pods, the pods taken, and
// the owner's state.
type pacingWorld struct {
	mu    sync.Mutex
	pods  []metav1.Object
	taken map[types.UID]bool
	state *ownerState
	err   error
	reads int
}

// pacer reads the owner afresh for every decision (no shared reads), so a
// test may change the owner's state between two calls.
func (w *pacingWorld) pacer(budget int) *pacer { return w.sharingPacer(budget, nil, 0) }

// sharingPacer shares one read of the owner for ttl by clk.
func (w *pacingWorld) sharingPacer(budget int, clk clock.PassiveClock, ttl time.Duration) *pacer {
	return newPacer(budget, time.Minute,
		func(string) ([]metav1.Object, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return append([]metav1.Object(nil), w.pods...), nil
		},
		func(uid types.UID) bool { w.mu.Lock(); defer w.mu.Unlock(); return w.taken[uid] },
		func(context.Context, string, metav1.OwnerReference) (*ownerState, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.reads++
			return w.state, w.err
		}, clk, ttl)
}

// replica returns a pod of the ReplicaSet ownedBy makes.
func replica(name string) *metav1.ObjectMeta {
	m := ownedBy("apps/v1", "ReplicaSet")
	m.Name, m.UID = name, types.UID("uid-"+name)
	return m
}

func TestPacerOnePodOfAnOwnerAtATime(t *testing.T) {
	a, b := replica("a"), replica("b")
	w := &pacingWorld{pods: []metav1.Object{a, b}, taken: map[types.UID]bool{}, state: &ownerState{Ready: 3, Want: 3, Summary: "3 of 3 ready"}}
	p := w.pacer(1)
	ctx := context.Background()

	if v, err := p.admit(ctx, a, 0); err != nil || !v.Go || v.Forced != "" {
		t.Fatalf("first pod: %+v, %v; want it to go", v, err)
	}
	// While a's action runs, its reservation holds b.
	if v, _ := p.admit(ctx, b, 0); v.Go {
		t.Fatalf("second pod during the first's action: %+v, want it held", v)
	}
	// a was evicted: taken, then terminating in the cache.
	w.taken[a.UID] = true
	p.release(a.UID)
	if v, _ := p.admit(ctx, b, 0); v.Go || !strings.Contains(v.Wait, "already going") {
		t.Fatalf("second pod while the first is going: %+v, want it held for the first", v)
	}
	if got := p.heldCount(); got != 1 {
		t.Errorf("held pods = %d, want 1", got)
	}
	// a is gone; the replacement is not Ready yet.
	w.pods = []metav1.Object{b}
	w.state = &ownerState{Ready: 2, Want: 3, Summary: "ReplicaSet o: 2 of 3 ready"}
	if v, _ := p.admit(ctx, b, 0); v.Go || !strings.Contains(v.Wait, "2 of 3 ready") {
		t.Fatalf("second pod before the replacement is Ready: %+v, want it held for the owner", v)
	}
	w.state = &ownerState{Ready: 3, Want: 3, Summary: "3 of 3 ready"}
	if v, _ := p.admit(ctx, b, 0); !v.Go || v.Forced != "" {
		t.Fatalf("second pod once the replacement is Ready: %+v, want it to go", v)
	}
	if got := p.heldCount(); got != 0 {
		t.Errorf("held pods after it went = %d, want 0", got)
	}
}

func TestPacerTerminatingPodsCount(t *testing.T) {
	// A new leader knows nothing of its predecessor's evictions: the cache's
	// terminating pods hold the owner's budget.
	a, b := replica("a"), replica("b")
	now := metav1.Now()
	a.DeletionTimestamp = &now
	w := &pacingWorld{pods: []metav1.Object{a, b}, taken: map[types.UID]bool{}, state: &ownerState{Ready: 1, Want: 2}}
	if v, _ := w.pacer(1).admit(context.Background(), b, 0); v.Go {
		t.Fatalf("pod while another of its owner terminates: %+v, want it held", v)
	}
	if v, _ := w.pacer(2).admit(context.Background(), b, 0); !v.Go {
		t.Fatalf("pod with budget 2 while one other terminates: %+v, want it to go", v)
	}
}

func TestPacerRefusedPodSetsNoGate(t *testing.T) {
	// A pod whose eviction was refused was not taken: its own retry must not
	// wait for a replacement of itself.
	a := replica("a")
	w := &pacingWorld{pods: []metav1.Object{a}, taken: map[types.UID]bool{}, state: &ownerState{Ready: 1, Want: 1}}
	p := w.pacer(1)
	if v, _ := p.admit(context.Background(), a, 0); !v.Go {
		t.Fatalf("first attempt: %+v, want it to go", v)
	}
	p.release(a.UID)
	w.state = &ownerState{Ready: 1, Want: 1}
	if v, _ := p.admit(context.Background(), a, 0); !v.Go {
		t.Fatalf("retry after a refusal: %+v, want it to go", v)
	}
}

func TestPacerOwnerNeverReady(t *testing.T) {
	// Pods that were never Ready need no Ready replacement: taking one
	// lowers no one's capacity. (A degraded owner is its
	// PodDisruptionBudget's business.)
	a, b := replica("a"), replica("b")
	w := &pacingWorld{pods: []metav1.Object{a, b}, taken: map[types.UID]bool{}, state: &ownerState{Ready: 0, Want: 2, Unready: map[types.UID]bool{a.UID: true, b.UID: true}}}
	p := w.pacer(1)
	if v, _ := p.admit(context.Background(), a, 0); !v.Go {
		t.Fatalf("first pod: %+v, want it to go", v)
	}
	p.release(a.UID)
	w.pods = []metav1.Object{b}
	if v, _ := p.admit(context.Background(), b, 0); !v.Go {
		t.Fatalf("second pod once the first is gone: %+v, want it to go", v)
	}
}

func TestPacerOwnerScaledDown(t *testing.T) {
	a, b := replica("a"), replica("b")
	w := &pacingWorld{pods: []metav1.Object{a, b}, taken: map[types.UID]bool{}, state: &ownerState{Ready: 3, Want: 3}}
	p := w.pacer(1)
	if v, _ := p.admit(context.Background(), a, 0); !v.Go {
		t.Fatalf("first pod: %+v, want it to go", v)
	}
	p.release(a.UID)
	w.pods = []metav1.Object{b}
	w.state = &ownerState{Ready: 2, Want: 2}
	if v, _ := p.admit(context.Background(), b, 0); !v.Go {
		t.Fatalf("second pod of an owner scaled down to its Ready pods: %+v, want it to go", v)
	}
}

func TestPacerBoundedDelay(t *testing.T) {
	a, b := replica("a"), replica("b")
	w := &pacingWorld{pods: []metav1.Object{a, b}, taken: map[types.UID]bool{}, state: &ownerState{Ready: 3, Want: 3}}
	p := w.pacer(1)
	if v, _ := p.admit(context.Background(), a, 0); !v.Go {
		t.Fatalf("first pod: %+v, want it to go", v)
	}
	p.release(a.UID)
	w.pods = []metav1.Object{b}
	w.state = &ownerState{Ready: 2, Want: 3, Summary: "2 of 3 ready"}
	if v, _ := p.admit(context.Background(), b, time.Minute-time.Second); v.Go {
		t.Fatalf("before maxDelay: %+v, want held", v)
	}
	v, _ := p.admit(context.Background(), b, time.Minute)
	if !v.Go || !strings.Contains(v.Forced, "2 of 3 ready") || !strings.Contains(v.Forced, "1m0s past its deadline") {
		t.Fatalf("at maxDelay: %+v, want it to go, saying why", v)
	}
}

func TestPacerUnreadableOwnerWaitsBounded(t *testing.T) {
	b := replica("b")
	w := &pacingWorld{pods: []metav1.Object{b}, taken: map[types.UID]bool{}, err: errors.New("forbidden")}
	v, _ := w.pacer(1).admit(context.Background(), b, 0)
	if v.Go || !strings.Contains(v.Wait, "forbidden") {
		t.Fatalf("owner unreadable: %+v, want held, saying why", v)
	}
}

func TestPacerSkipsPodsWithoutOwnerAndWhenOff(t *testing.T) {
	w := &pacingWorld{taken: map[types.UID]bool{}, state: &ownerState{Want: 5}}
	bare := &metav1.ObjectMeta{Name: "bare", UID: "uid-bare"}
	if v, _ := w.pacer(1).admit(context.Background(), bare, 0); !v.Go {
		t.Errorf("bare pod: %+v, want it to go", v)
	}
	if v, _ := w.pacer(-1).admit(context.Background(), replica("b"), 0); !v.Go {
		t.Errorf("pacing off: %+v, want it to go", v)
	}
	if w.reads != 0 {
		t.Errorf("owner reads = %d, want none", w.reads)
	}
}

func TestReadOwner(t *testing.T) {
	three := int32(3)
	web := map[string]string{"app": "web"}
	readyOf := func(name, kind, owner string, uid types.UID, labels map[string]string, terminating bool) *corev1.Pod {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: labels,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: owner, UID: uid, Controller: ptr.To(true)}}},
			Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		}
		if terminating {
			pod.DeletionTimestamp = &metav1.Time{Time: time.Unix(1, 0)}
			pod.Finalizers = []string{"example.com/hold"}
		}
		return pod
	}
	client := fake.NewClientset(
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "uid-web"},
			Spec:   appsv1.ReplicaSetSpec{Replicas: &three, Selector: &metav1.LabelSelector{MatchLabels: web}},
			Status: appsv1.ReplicaSetStatus{ReadyReplicas: 2}},
		readyOf("web-1", "ReplicaSet", "web", "uid-web", web, false),
		readyOf("web-2", "ReplicaSet", "web", "uid-web", web, false),
		// The ReplicaSet's status still counts 3: one was just evicted.
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "ns", UID: "uid-api"},
			Spec:   appsv1.ReplicaSetSpec{Replicas: &three, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}}},
			Status: appsv1.ReplicaSetStatus{ReadyReplicas: 3}},
		readyOf("api-1", "ReplicaSet", "api", "uid-api", map[string]string{"app": "api"}, false),
		readyOf("api-2", "ReplicaSet", "api", "uid-api", map[string]string{"app": "api"}, false),
		readyOf("api-3", "ReplicaSet", "api", "uid-api", map[string]string{"app": "api"}, true),
		// Same labels, another controller: not the ReplicaSet's.
		readyOf("api-other", "ReplicaSet", "api-old", "uid-api-old", map[string]string{"app": "api"}, false),
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "ns", UID: "uid-agent"},
			Spec:   appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}}},
			Status: appsv1.DaemonSetStatus{DesiredNumberScheduled: 1, NumberReady: 1}},
		readyOf("agent-1", "DaemonSet", "agent", "uid-agent", map[string]string{"app": "agent"}, false),
	)
	read := readOwner(kubetest.API{Interface: client}, clocktesting.NewFakeClock(time.Unix(10_000, 0)), time.Minute)
	ctx := context.Background()
	rs, err := read(ctx, "ns", metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", UID: "uid-web"})
	if err != nil || rs == nil || rs.Ready != 2 || rs.Want != 3 || rs.Summary != "ReplicaSet web: 2 of 3 ready" {
		t.Errorf("ReplicaSet: %+v, %v; want 1 unavailable", rs, err)
	}
	stale, err := read(ctx, "ns", metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "api", UID: "uid-api"})
	if err != nil || stale == nil || stale.Ready != 2 || stale.Want != 3 {
		t.Errorf("ReplicaSet whose status still counts an evicted pod: %+v, %v; want 2 of 3 ready, from its pods", stale, err)
	}
	ds, err := read(ctx, "ns", metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "agent", UID: "uid-agent"})
	if err != nil || ds == nil || ds.Ready != 1 || ds.Want != 1 {
		t.Errorf("DaemonSet: %+v, %v; want 0 unavailable", ds, err)
	}
	gone, err := read(ctx, "ns", metav1.OwnerReference{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "db"})
	if err != nil || gone != nil {
		t.Errorf("missing StatefulSet: %+v, %v; want nothing to protect", gone, err)
	}
	job, err := read(ctx, "ns", metav1.OwnerReference{APIVersion: "batch/v1", Kind: "Job", Name: "j"})
	if err != nil || job != nil {
		t.Errorf("Job: %+v, %v; want no state", job, err)
	}
}

// TestPacerNewLeaderPaces: pacing reads the owner's shortfall from the
// cluster, not from memory: a pacer that never took a pod of the owner (a
// new leader after a failover, while the old leader's eviction is not yet
// replaced) holds the next pod, and lets it go once the replacement is
// Ready. A shortfall that stale pods explain (not Ready for longer than a
// replacement may take) holds nothing.
func TestPacerNewLeaderPaces(t *testing.T) {
	b := replica("b")
	w := &pacingWorld{pods: []metav1.Object{b}, taken: map[types.UID]bool{}, state: &ownerState{Ready: 2, Want: 3, Summary: "ReplicaSet o: 2 of 3 ready"}}
	p := w.pacer(1)
	ctx := context.Background()
	if v, _ := p.admit(ctx, b, 0); v.Go || !strings.Contains(v.Wait, "short of Ready pods") {
		t.Fatalf("a new leader, the owner one short: %+v, want it held", v)
	}
	w.state = &ownerState{Ready: 2, Want: 3, Stale: 1, Summary: "ReplicaSet o: 2 of 3 ready, 1 not Ready for long"}
	if v, _ := p.admit(ctx, b, 0); !v.Go {
		t.Fatalf("the owner one short, explained by a stale pod: %+v, want it to go", v)
	}
	w.state = &ownerState{Ready: 3, Want: 3}
	if v, _ := p.admit(ctx, b, 0); !v.Go {
		t.Fatalf("the replacement Ready: %+v, want it to go", v)
	}
}

// TestReadOwnerStaleAndUnready: a pod not Ready for longer than the bound is
// stale; a starting one (not Ready lately, or never Ready and young) is not;
// both are unready.
func TestReadOwnerStaleAndUnready(t *testing.T) {
	now := time.Unix(10_000, 0)
	three := int32(3)
	web := map[string]string{"app": "web"}
	pod := func(name string, created time.Time, ready *bool, since time.Time) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name), Labels: web,
			CreationTimestamp: metav1.NewTime(created),
			OwnerReferences:   []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", UID: "uid-web", Controller: ptr.To(true)}}}}
		if ready != nil {
			status := corev1.ConditionFalse
			if *ready {
				status = corev1.ConditionTrue
			}
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status, LastTransitionTime: metav1.NewTime(since)}}
		}
		return p
	}
	long, lately := now.Add(-time.Hour), now.Add(-10*time.Second)
	client := fake.NewClientset(
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "uid-web"},
			Spec: appsv1.ReplicaSetSpec{Replicas: &three, Selector: &metav1.LabelSelector{MatchLabels: web}}},
		pod("ready", long, ptr.To(true), long),
		pod("crashing", long, ptr.To(false), long),
		pod("starting", lately, ptr.To(false), lately),
		pod("pending-old", long, nil, time.Time{}),
		pod("pending-new", lately, nil, time.Time{}),
	)
	s, err := readOwner(kubetest.API{Interface: client}, clocktesting.NewFakeClock(now), time.Minute)(context.Background(), "ns",
		metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", UID: "uid-web"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Ready != 1 || s.Stale != 2 || len(s.Unready) != 4 || s.Unready["uid-ready"] || !strings.Contains(s.Summary, "2 not Ready for long") {
		t.Errorf("state %+v, want 1 Ready, 2 stale (crashing, pending-old), 4 unready", s)
	}
}

// TestPacerSharesOwnerReads: the held pods of one owner share one read of it
// while it is fresh, so a thousand held replicas do not list the owner's
// pods five hundred times a second; taking a pod drops the shared read, so
// the next decision sees the owner as it is now.
func TestPacerSharesOwnerReads(t *testing.T) {
	a, b, c := replica("a"), replica("b"), replica("c")
	w := &pacingWorld{pods: []metav1.Object{a, b, c}, taken: map[types.UID]bool{}, state: &ownerState{Ready: 2, Want: 3}}
	clk := clocktesting.NewFakeClock(time.Unix(10_000, 0))
	p := w.sharingPacer(1, clk, time.Second)
	ctx := context.Background()
	for _, pod := range []*metav1.ObjectMeta{a, b, c} {
		if v, _ := p.admit(ctx, pod, 0); v.Go {
			t.Fatalf("pod %s while the owner is short: %+v, want it held", pod.Name, v)
		}
	}
	if w.reads != 1 {
		t.Errorf("owner reads for three held pods = %d, want 1 (shared)", w.reads)
	}
	w.state = &ownerState{Ready: 3, Want: 3}
	clk.Step(time.Second)
	if v, _ := p.admit(ctx, a, 0); !v.Go {
		t.Fatalf("pod a once the read is stale and the owner whole: %+v, want it to go", v)
	}
	if w.reads != 2 {
		t.Errorf("owner reads = %d, want 2 (the first one expired)", w.reads)
	}
	// a is taken and gone at once (no grace); the owner is short again.
	w.pods = []metav1.Object{b, c}
	w.state = &ownerState{Ready: 2, Want: 3}
	p.release(a.UID)
	if v, _ := p.admit(ctx, b, 0); v.Go {
		t.Fatalf("pod b right after a was taken: %+v, want it held (a fresh read, not the shared one from before)", v)
	}
	if w.reads != 3 {
		t.Errorf("owner reads = %d, want 3 (taking a dropped the shared read)", w.reads)
	}
}

// TestPacerSharesNoReadBegunBeforeATake: a read of the owner that began
// before another worker took one of its pods (and finished after) still
// decides its own pod, as an unshared read would, but is not shared: the
// next pod reads the owner afresh and sees the taken pod gone.
func TestPacerSharesNoReadBegunBeforeATake(t *testing.T) {
	a, b, c := replica("a"), replica("b"), replica("c")
	w := &pacingWorld{pods: []metav1.Object{a, b, c}, taken: map[types.UID]bool{}, state: &ownerState{Ready: 3, Want: 3}}
	p := w.sharingPacer(2, clocktesting.NewFakeClock(time.Unix(10_000, 0)), time.Second)
	ctx := context.Background()
	// c's read begins while a is still there; meanwhile another worker
	// admits a (its own read), takes it and releases it; a is gone at once.
	read := p.read
	p.read = func(ctx context.Context, ns string, owner metav1.OwnerReference) (*ownerState, error) {
		p.read = read
		stale, err := read(ctx, ns, owner)
		if v, _ := p.admit(ctx, a, 0); !v.Go {
			t.Fatalf("pod a: %+v, want it to go", v)
		}
		p.release(a.UID)
		w.mu.Lock()
		w.pods, w.state = []metav1.Object{b, c}, &ownerState{Ready: 1, Want: 3}
		w.mu.Unlock()
		return stale, err
	}
	if v, _ := p.admit(ctx, c, 0); !v.Go {
		t.Fatalf("pod c on its own (stale) read: %+v, want it to go", v)
	}
	if v, _ := p.admit(ctx, b, 0); v.Go {
		t.Fatalf("pod b after a was taken: %+v, want it held (the owner is two short), not decided on c's read", v)
	}
}

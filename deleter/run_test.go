package deleter_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/deleter"
	"github.com/exec-reaper/exec-reaper/internal/kubetest"
)

const (
	leaseNamespace = "ns"
	leaseName      = "l"
	// leaseDuration is short so that the tests see elections happen; the
	// renew deadline and retry period in electedConfig scale with it.
	leaseDuration = time.Second
	// runTimeout bounds how long Run may take to return once it should.
	runTimeout = 5 * time.Second
)

// electedConfig is a deleter configured for leader election as replica "a".
func electedConfig() deleter.Config {
	return deleter.Config{
		LeaderElection: true,
		LeaseNamespace: leaseNamespace,
		LeaseName:      leaseName,
		Identity:       "a",
		LeaseDuration:  leaseDuration,
		RenewDeadline:  500 * time.Millisecond,
		RetryPeriod:    100 * time.Millisecond,
		ProbeAddr:      "127.0.0.1:0",
	}
}

// withOptimisticLeases makes the fake clientset enforce resourceVersion on
// Lease updates, as the API server does. Without it a leader's optimistic
// renewal (an Update from its cached copy) silently overwrites a Lease
// another replica took, and leadership can never be lost.
func withOptimisticLeases(client *fake.Clientset) {
	gvr := coordinationv1.SchemeGroupVersion.WithResource("leases")
	var mu sync.Mutex
	var version int
	client.PrependReactor("create", "leases", func(a clienttesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		lease := a.(clienttesting.CreateAction).GetObject().(*coordinationv1.Lease).DeepCopy()
		version++
		lease.ResourceVersion = strconv.Itoa(version)
		if err := client.Tracker().Create(gvr, lease, a.GetNamespace()); err != nil {
			return true, nil, err
		}
		return true, lease, nil
	})
	client.PrependReactor("update", "leases", func(a clienttesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		lease := a.(clienttesting.UpdateAction).GetObject().(*coordinationv1.Lease).DeepCopy()
		current, err := client.Tracker().Get(gvr, a.GetNamespace(), lease.Name)
		if err != nil {
			return true, nil, err
		}
		if current.(*coordinationv1.Lease).ResourceVersion != lease.ResourceVersion {
			return true, nil, apierrors.NewConflict(gvr.GroupResource(), lease.Name,
				errors.New("the object has been modified; please apply your changes to the latest version and try again"))
		}
		version++
		lease.ResourceVersion = strconv.Itoa(version)
		if err := client.Tracker().Update(gvr, lease, a.GetNamespace()); err != nil {
			return true, nil, err
		}
		return true, lease, nil
	})
}

// running is a deleter.Run in progress.
type running struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error         // Run's result, once done is closed
}

// wait waits at most runTimeout for Run to return and returns its result.
func (r *running) wait(t *testing.T, why string) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(runTimeout):
		t.Fatalf("Run still running %v after %s", runTimeout, why)
		return nil
	}
}

// clientsFor returns the deleter's clients over client, with a metadata
// client that holds the same pods (as the API server serves both views of
// one store).
func clientsFor(t *testing.T, client *fake.Clientset) deleter.Clients {
	t.Helper()
	list, err := client.CoreV1().Pods(metav1.NamespaceAll).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing the fake's pods: %v", err)
	}
	pods := make([]*corev1.Pod, 0, len(list.Items))
	for i := range list.Items {
		pods = append(pods, &list.Items[i])
	}
	return deleter.Clients{Kube: kubetest.API{Interface: client}, Metadata: newMetadataClient(pods...),
		Events: kubetest.EventSink(client), Election: kubetest.Lease{Client: client, Namespace: leaseNamespace, Name: leaseName}}
}

// startRun runs deleter.Run until the test ends. Cleanup cancels it and
// waits for it to return.
func startRun(t *testing.T, cfg deleter.Config, client *fake.Clientset) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = deleter.Run(ctx, cfg, clientsFor(t, client), clock.RealClock{}, prometheus.NewRegistry())
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(runTimeout):
			t.Errorf("Run did not return within %v of cancellation", runTimeout)
		}
	})
	return r
}

// holder returns the HolderIdentity of the test Lease.
func holder(t *testing.T, client *fake.Clientset) string {
	t.Helper()
	lease, err := client.CoordinationV1().Leases(leaseNamespace).Get(context.Background(), leaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting lease: %v", err)
	}
	return ptr.Deref(lease.Spec.HolderIdentity, "")
}

// heldLease is the test Lease as replica identity holds it, renewed now for
// an hour.
func heldLease(identity string) *coordinationv1.Lease {
	now := metav1.NewMicroTime(time.Now())
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: leaseNamespace, Name: leaseName},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(identity),
			LeaseDurationSeconds: ptr.To[int32](3600),
			AcquireTime:          &now,
			RenewTime:            &now,
		},
	}
}

func TestRunLeadsThenReturnsWhenLeaseIsTaken(t *testing.T) {
	const uid = types.UID("uid-web")
	client := fake.NewClientset(recordedPod("web", uid, time.Now().Add(-time.Minute)))
	withOptimisticLeases(client)
	run := startRun(t, electedConfig(), client)

	// Only a leader evicts.
	eventually(t, "the leader's eviction", func() bool { return len(evictions(client, "web")) > 0 })
	if got := evictions(client, "web")[0]; got.UID != uid {
		t.Errorf("eviction precondition UID = %q, want %q", got.UID, uid)
	}
	if got := holder(t, client); got != "a" {
		t.Errorf("lease holder while leading = %q, want a", got)
	}

	// Replica b takes the lease (as after a partition): a must step down.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		leases := client.CoordinationV1().Leases(leaseNamespace)
		lease, err := leases.Get(context.Background(), leaseName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		lease.Spec = heldLease("b").Spec
		_, err = leases.Update(context.Background(), lease, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("taking the lease: %v", err)
	}
	if err := run.wait(t, "losing the lease"); !errors.Is(err, deleter.ErrLostLeadership) {
		t.Errorf("Run returned %v, want %v", err, deleter.ErrLostLeadership)
	}
	// Stepping down must not release or overwrite the new leader's lease.
	if got := holder(t, client); got != "b" {
		t.Errorf("lease holder after stepping down = %q, want b", got)
	}
}

func TestRunReleasesLeaseOnShutdown(t *testing.T) {
	client := fake.NewClientset()
	withOptimisticLeases(client)
	run := startRun(t, electedConfig(), client)

	eventually(t, "leadership", func() bool {
		lease, err := client.CoordinationV1().Leases(leaseNamespace).Get(context.Background(), leaseName, metav1.GetOptions{})
		return err == nil && ptr.Deref(lease.Spec.HolderIdentity, "") == "a"
	})
	run.cancel()
	if err := run.wait(t, "cancellation"); err != nil {
		t.Errorf("Run returned %v after cancellation, want nil", err)
	}
	// Handing the lease over at once spares the next leader a lease duration.
	if got := holder(t, client); got != "" {
		t.Errorf("lease holder after a clean shutdown = %q, want none", got)
	}
}

func TestRunFollowerDoesNotEvict(t *testing.T) {
	client := fake.NewClientset(recordedPod("web", "uid-web", time.Now().Add(-time.Minute)), heldLease("b"))
	withOptimisticLeases(client)
	run := startRun(t, electedConfig(), client)

	// The replica is up and competing for the lease...
	eventually(t, "a look at the lease", func() bool {
		for _, a := range client.Actions() {
			if a.GetVerb() == "get" && a.GetResource().Resource == "leases" {
				return true
			}
		}
		return false
	})
	// ...but, as a follower, evicts nothing for two lease durations. A bounded
	// wait is the only way to observe an absence.
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 2*leaseDuration, true,
		func(context.Context) (bool, error) { return len(evictions(client, "")) > 0, nil })
	if err == nil {
		t.Fatalf("a follower evicted: %v", evictions(client, ""))
	}

	run.cancel()
	if err := run.wait(t, "cancellation"); err != nil {
		t.Errorf("Run returned %v after cancellation, want nil", err)
	}
	if got := holder(t, client); got != "b" {
		t.Errorf("lease holder = %q, want b (a follower must not touch it)", got)
	}
}

func TestRunRejectsIncompleteLeaderElection(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*deleter.Config)
	}{
		{"no lease namespace", func(c *deleter.Config) { c.LeaseNamespace = "" }},
		{"no identity", func(c *deleter.Config) { c.Identity = "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := electedConfig()
			tc.mutate(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
			defer cancel()
			err := deleter.Run(ctx, cfg, clientsFor(t, fake.NewClientset()), clock.RealClock{}, prometheus.NewRegistry())
			if err == nil || ctx.Err() != nil {
				t.Errorf("Run = %v (context: %v), want an immediate configuration error", err, ctx.Err())
			}
		})
	}
}

func TestRunWithoutLeaderElectionEvicts(t *testing.T) {
	const uid = types.UID("uid-web")
	client := fake.NewClientset(recordedPod("web", uid, time.Now().Add(-time.Minute)))
	cfg := electedConfig()
	cfg.LeaderElection = false
	run := startRun(t, cfg, client)

	eventually(t, "the eviction", func() bool { return len(evictions(client, "web")) > 0 })
	if got := evictions(client, "web")[0]; got.UID != uid {
		t.Errorf("eviction precondition UID = %q, want %q", got.UID, uid)
	}
	// The Evicted event reaches the API through the broadcaster, and regards
	// the Pod (kind, version, UID), though the cache holds metadata only.
	eventually(t, "the Evicted event in the API", func() bool {
		list, err := client.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range list.Items {
			if e.Reason == deleter.ReasonEvicted && e.InvolvedObject.Name == "web" && e.ReportingController == deleter.Component {
				want := corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: namespace, Name: "web", UID: uid}
				if got := e.InvolvedObject; got != want {
					t.Errorf("Evicted event regards %+v, want %+v", got, want)
				}
				return true
			}
		}
		return false
	})
	for _, a := range client.Actions() {
		if a.GetResource().Resource == "leases" {
			t.Errorf("without leader election, Run touched a Lease: %s", a.GetVerb())
		}
	}

	run.cancel()
	if err := run.wait(t, "cancellation"); err != nil {
		t.Errorf("Run returned %v after cancellation, want nil", err)
	}
}

// TestRunCancelledBeforeSyncReturnsNil: without leader election, a ctx done
// before the pod cache synced (SIGTERM during start-up) is a clean shutdown,
// not an error that makes the process exit 1.
func TestRunCancelledBeforeSyncReturnsNil(t *testing.T) {
	cfg := electedConfig()
	cfg.LeaderElection = false
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	client := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: namespace}})
	if err := deleter.Run(ctx, cfg, clientsFor(t, client), clock.RealClock{}, prometheus.NewRegistry()); err != nil {
		t.Errorf("Run with a cancelled context = %v, want nil", err)
	}
}

func TestRunRefusesNegativeResync(t *testing.T) {
	cfg := deleter.Config{Resync: -time.Minute}
	err := deleter.Run(context.Background(), cfg, clientsFor(t, fake.NewClientset()), clock.RealClock{}, prometheus.NewRegistry())
	if err == nil || !strings.Contains(err.Error(), "configuration error: --resync") {
		t.Errorf("Run with a negative resync: %v, want a configuration error naming --resync", err)
	}
}

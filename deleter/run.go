package deleter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/internal/serve"
)

// Component names the deleter as the source of its Events.
const Component = "exec-reaper-deleter"

// ErrLostLeadership is returned by Run when another replica took over: the
// process should exit and start afresh as a follower.
var ErrLostLeadership = errors.New("lost leadership")

// Config configures the deleter process. Zero fields take the defaults in
// Default.
type Config struct {
	Options
	// ProbeAddr is the plain-HTTP address for /livez, /readyz and /metrics.
	ProbeAddr string
	// Resync is how often every recorded pod is looked at again, a safety net
	// for evictions given up on after repeated errors.
	Resync time.Duration
	// LeaderElection turns on leader election; off only for a single replica.
	LeaderElection bool
	// LeaseNamespace and LeaseName locate the Lease the replicas compete for.
	LeaseNamespace, LeaseName string
	// Identity names this replica in the Lease (the pod name, in a cluster).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod tune leader election as in
	// client-go; failover takes at most about LeaseDuration.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Default fills unset fields.
func (c *Config) Default() {
	c.Options.Default()
	if c.ProbeAddr == "" {
		c.ProbeAddr = ":8081"
	}
	if c.Resync == 0 {
		c.Resync = 10 * time.Minute
	}
	if c.LeaseName == "" {
		c.LeaseName = "exec-reaper-deleter"
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = 15 * time.Second
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = 10 * time.Second
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = 2 * time.Second
	}
}

// Run starts the informer, serves probes and, while this replica leads,
// evicts recorded pods at their deadlines. It returns nil when ctx is done and
// ErrLostLeadership when another replica took over.
func Run(ctx context.Context, cfg Config, client kubernetes.Interface, clk clock.WithTicker, reg *prometheus.Registry) error {
	cfg.Default()
	if cfg.LeaderElection && (cfg.LeaseNamespace == "" || cfg.Identity == "") {
		return errors.New("leader election needs a lease namespace and an identity")
	}
	log := klog.FromContext(ctx)

	factory := informers.NewSharedInformerFactoryWithOptions(client, cfg.Resync,
		informers.WithTweakListOptions(ListOptions), informers.WithTransform(StripPod))
	podInformer := factory.Core().V1().Pods()

	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	recorder := broadcaster.NewRecorder(scheme.Scheme, Component)

	ctrl, err := NewController(client, podInformer, clk, recorder, cfg.Options)
	if err != nil {
		return err
	}
	Register(reg, podInformer.Lister())

	var elector *leaderelection.LeaderElector
	// OnStartedLeading only hands over the leader's context; the controller
	// runs in Run's own goroutine, so Run can stop it before giving up the
	// Lease.
	leading := make(chan context.Context, 1)
	var healthz *leaderelection.HealthzAdaptor
	if cfg.LeaderElection {
		healthz = leaderelection.NewLeaderHealthzAdaptor(cfg.RenewDeadline)
		elector, err = leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: &resourcelock.LeaseLock{
				LeaseMeta:  metaFor(cfg.LeaseNamespace, cfg.LeaseName),
				Client:     client.CoordinationV1(),
				LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
			},
			LeaseDuration: cfg.LeaseDuration,
			RenewDeadline: cfg.RenewDeadline,
			RetryPeriod:   cfg.RetryPeriod,
			// Hand the lease over at once on a clean shutdown, so a rolling
			// restart does not delay evictions by a lease duration. client-go
			// requires the guarded work to have stopped first: lead does that.
			ReleaseOnCancel: true,
			WatchDog:        healthz,
			Name:            cfg.LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					log.Info("Leading", "identity", cfg.Identity)
					leading <- ctx
				},
				OnStoppedLeading: func() { log.Info("Stopped leading", "identity", cfg.Identity) },
			},
		})
		if err != nil {
			return fmt.Errorf("configuring leader election: %w", err)
		}
	}

	live := func(r *http.Request) error {
		// A leader that stopped renewing its lease is stuck: restart it.
		if healthz != nil {
			return healthz.Check(r)
		}
		return nil
	}
	ready := func(*http.Request) error {
		if !podInformer.Informer().HasSynced() {
			return errors.New("pod cache not synced")
		}
		return nil
	}
	probes := serve.Probes(cfg.ProbeAddr, reg, live, ready)

	g, gctx := errgroup.WithContext(ctx)
	broadcaster.StartRecordingToSink(gctx.Done())
	defer broadcaster.Shutdown()
	factory.Start(gctx.Done())
	defer factory.Shutdown()
	g.Go(func() error { return serve.Run(gctx, probes, 5*time.Second) })
	g.Go(func() error {
		if elector == nil {
			return ctrl.Run(gctx)
		}
		return lead(gctx, elector, leading, ctrl.Run)
	})
	return g.Wait()
}

// lead runs the elector and, while this replica leads, run. Its order is
// what makes ReleaseOnCancel safe: run stops (on shutdown or on lost
// leadership) and its workers finish before the elector's context is
// cancelled and the Lease released. It returns ErrLostLeadership if another
// replica took over, nil on shutdown.
func lead(ctx context.Context, elector *leaderelection.LeaderElector, leading <-chan context.Context, run func(context.Context) error) error {
	electorCtx, release := context.WithCancel(context.WithoutCancel(ctx))
	defer release()
	electorDone := make(chan struct{})
	go func() {
		defer close(electorDone)
		elector.Run(electorCtx)
	}()
	select {
	case leaderCtx := <-leading:
		runCtx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(leaderCtx, cancel) // leadership lost
		_ = run(runCtx)
		stop()
		cancel()
	case <-ctx.Done():
	case <-electorDone:
	}
	release()
	<-electorDone
	if ctx.Err() == nil {
		return ErrLostLeadership
	}
	return nil
}

func metaFor(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}

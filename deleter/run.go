package deleter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatalister"
	"k8s.io/client-go/rest"
	toolsrecord "k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/internal/lease"
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
	// LeaseDuration, RenewDeadline and RetryPeriod tune leader election (see
	// internal/lease; defaults DefaultLeaseDuration, DefaultRenewDeadline,
	// DefaultRetryPeriod). After a leader dies, a standby acts within about
	// LeaseDuration plus one to two and a half RetryPeriods; after a clean shutdown,
	// which releases the Lease, within about two RetryPeriods.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// KubeAPIQPS and KubeAPIBurst are the client-side rate limit of the
	// clients that evict and write Events (each has its own; defaults
	// DefaultKubeAPIQPS, DefaultKubeAPIBurst). A negative QPS turns the
	// client-side limit off.
	KubeAPIQPS   float32
	KubeAPIBurst int
}

// Client-side rate limit defaults. client-go's own (5 QPS, burst 10) are
// for kubectl-like tools: they held the deleter to 5 evictions per second,
// so 1,000 pods sharing a deadline went over 198 s. These are set so that
// the API server is the bound: its priority and fairness (APF) gives the
// deleter's ServiceAccount a fair share of the workload-low priority level
// and queues what exceeds it, which protects the server better than any
// client can. A burst of 1,000 lets 1,000 pods due together go at once; a
// sustained 500/s is above what one API server sustains for evictions on
// small control planes (see BENCHMARKS.md), so the limit only bites a
// runaway loop. Raise both for larger simultaneous batches; lower them to
// deliberately pace a cold start (it clears at about QPS evictions/s once
// the burst is spent).
const (
	DefaultKubeAPIQPS   = 500
	DefaultKubeAPIBurst = 1000
)

// Leader election defaults. The goal: a standby acts within 5 s of the
// leader's death. client-go's defaults (15 s, 10 s, 2 s) took about 20 s. A
// standby takes over once it has seen no renewal for LeaseDuration, and it
// looks every RetryPeriod to 2.2 RetryPeriods (client-go's jitter), so after
// a kill it acts about LeaseDuration + 1.1 RetryPeriod later on average
// (4.3 s here) and LeaseDuration + 4.4 RetryPeriod at worst (5.1 s). The
// leader tolerates an API server stall of RenewDeadline (3 s) before it
// steps down, and stops 1 s before its Lease expires, so it is done before a
// standby starts; an overlap would still be harmless, since each eviction is
// bound to the pod's UID and a second one answers "gone". The price is API
// load: the leader renews every RetryPeriod (4 Lease writes/s) and each
// standby reads the Lease about every 1.6 RetryPeriods (2.5 reads/s), like
// the heartbeats of 40 nodes (each renews its Lease every 10 s), and
// negligible beside a burst of evictions. The leader-election client has its
// own rate limiter (see NewClients), so evictions never delay a renewal.
const (
	DefaultLeaseDuration = 4 * time.Second
	DefaultRenewDeadline = 3 * time.Second
	DefaultRetryPeriod   = 250 * time.Millisecond
)

// resyncSlack is how much later than a resync period a pod's next look may
// be and still be left to the resync (Options.QueueHorizon).
const resyncSlack = time.Minute

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
		c.LeaseDuration = DefaultLeaseDuration
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = DefaultRenewDeadline
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = DefaultRetryPeriod
	}
	if c.KubeAPIQPS == 0 {
		c.KubeAPIQPS = DefaultKubeAPIQPS
	}
	if c.KubeAPIBurst == 0 {
		c.KubeAPIBurst = DefaultKubeAPIBurst
	}
}

// Clients are the API clients the deleter uses. Each built by NewClients has
// its own client-side rate limiter, so that none waits behind another's
// requests.
type Clients struct {
	// Kube evicts pods and reads the record guard.
	Kube API
	// Metadata lists and watches recorded pods, as metadata only.
	Metadata metadata.Interface
	// Events writes the deleter's Events; nil drops them.
	Events toolsrecord.EventSink
	// Election holds the Lease (Config.LeaseNamespace, LeaseName); needed
	// with Config.LeaderElection. Its own rate limiter keeps renewals on
	// time during a burst of evictions.
	Election lease.Client
}

// NewClients builds the deleter's clients from base, with the client-side
// rate limit of cfg (after Default) on those that evict and write Events.
// The leader-election client keeps client-go's default limit, far above
// its few requests a second.
func NewClients(base *rest.Config, cfg Config) (Clients, error) {
	cfg.Default()
	limited := rest.CopyConfig(base)
	limited.QPS, limited.Burst = cfg.KubeAPIQPS, cfg.KubeAPIBurst
	kube, err := NewAPI(limited)
	if err != nil {
		return Clients{}, err
	}
	events, err := NewEventSink(rest.AddUserAgent(rest.CopyConfig(limited), "events"))
	if err != nil {
		return Clients{}, err
	}
	var election lease.Client
	if cfg.LeaderElection && cfg.LeaseNamespace != "" && cfg.LeaseName != "" { // else Run says what is missing
		election, err = lease.NewClient(rest.AddUserAgent(rest.CopyConfig(base), "leader-election"), cfg.LeaseNamespace, cfg.LeaseName)
		if err != nil {
			return Clients{}, fmt.Errorf("building the leader-election client: %w", err)
		}
	}
	meta, err := metadata.NewForConfig(limited)
	if err != nil {
		return Clients{}, fmt.Errorf("building the metadata client: %w", err)
	}
	return Clients{Kube: kube, Metadata: meta, Events: events, Election: election}, nil
}

// Run starts the informer, serves probes and, while this replica leads,
// evicts recorded pods at their deadlines. It returns nil when ctx is done and
// ErrLostLeadership when another replica took over.
func Run(ctx context.Context, cfg Config, clients Clients, clk clock.WithTicker, reg *prometheus.Registry) error {
	cfg.Default()
	if cfg.LeaderElection && (cfg.LeaseNamespace == "" || cfg.Identity == "") {
		return errors.New("leader election needs a lease namespace and an identity")
	}
	if cfg.Resync < 0 {
		// The resync is the safety net for evictions given up on, and what
		// brings back pods due beyond the queue's horizon.
		return fmt.Errorf("configuration error: --resync is %s; give a positive duration (default 10m)", cfg.Resync)
	}
	if cfg.LeaderElection && clients.Election == nil {
		return errors.New("leader election needs a Lease client")
	}
	log := klog.FromContext(ctx)
	throttling.setLogger(log.WithName("client"))

	podInformer := NewPodInformer(clients.Metadata, cfg.Resync)

	broadcaster := toolsrecord.NewBroadcaster(toolsrecord.WithContext(ctx))
	recorder := eventRecorder{broadcaster.NewRecorder(apiScheme, corev1.EventSource{Component: Component, Host: cfg.Identity})}

	opts := cfg.Options
	if opts.QueueHorizon == 0 && cfg.Resync > 0 {
		// The resync delivers every cached pod again each period; the slack
		// covers its delivery, so a pod left out of the queue is back in it
		// before its deadline.
		opts.QueueHorizon = cfg.Resync + resyncSlack
	}
	ctrl, err := NewController(clients.Kube, podInformer, clk, recorder, opts)
	if err != nil {
		return err
	}
	Register(reg, metadatalister.New(podInformer.GetIndexer(), PodsResource))
	ctrl.RegisterMetrics(reg)

	var elector *lease.Elector
	// OnStartedLeading only hands over the leader's context; the controller
	// runs in Run's own goroutine, so Run can stop it before giving up the
	// Lease.
	leading := make(chan context.Context, 1)
	if cfg.LeaderElection {
		elector, err = lease.New(lease.Config{
			Client:        clients.Election,
			Identity:      cfg.Identity,
			LeaseDuration: cfg.LeaseDuration,
			RenewDeadline: cfg.RenewDeadline,
			RetryPeriod:   cfg.RetryPeriod,
			// Hand the lease over at once on a clean shutdown, so a rolling
			// restart does not delay evictions by a lease duration. The
			// guarded work must have stopped first: lead does that.
			ReleaseOnCancel: true,
			OnStartedLeading: func(ctx context.Context) {
				log.Info("Leading", "identity", cfg.Identity)
				leading <- ctx
			},
			OnStoppedLeading: func() { log.Info("Stopped leading", "identity", cfg.Identity) },
		})
		if err != nil {
			return fmt.Errorf("configuring leader election: %w", err)
		}
	}

	live := func(r *http.Request) error {
		// A leader that stopped renewing its lease is stuck: restart it.
		if elector != nil {
			return elector.Check(r)
		}
		return nil
	}
	ready := func(*http.Request) error {
		if !podInformer.HasSynced() {
			return errors.New("pod cache not synced")
		}
		return nil
	}
	probes := serve.Probes(cfg.ProbeAddr, reg, live, ready)

	g, gctx := errgroup.WithContext(ctx)
	if clients.Events != nil {
		broadcaster.StartRecordingToSink(clients.Events)
	}
	defer broadcaster.Shutdown()
	informerDone := make(chan struct{})
	go func() {
		defer close(informerDone)
		podInformer.RunWithContext(gctx)
	}()
	defer func() { <-informerDone }()
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
func lead(ctx context.Context, elector *lease.Elector, leading <-chan context.Context, run func(context.Context) error) error {
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

// Package provider is exec-reaper's Gatekeeper external-data provider. For
// each key Gatekeeper sends it records, on the pod named in the key, who
// entered it, when, how, and the deadline after which it must go. Its TLS
// lifecycle (certificate files, rotation, Secret mirroring) is in
// provider/tlscerts; this package wires it in (Run).
package provider

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/internal/serve"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
)

// Path is where the provider answers Gatekeeper. A Provider object's
// spec.url ends with it.
const Path = "/v1/record"

// Config configures the provider. Zero fields take the defaults in Default,
// except DrainDelay and ClientCAGrace, for which zero is a choice: they take
// theirs from DefaultConfig.
type Config struct {
	// Addr is the HTTPS listen address for Gatekeeper.
	Addr string
	// ProbeAddr is the plain-HTTP address for /livez, /readyz and /metrics.
	ProbeAddr string
	// CertFile and KeyFile hold the serving certificate, PEM.
	CertFile, KeyFile string
	// ClientCAFile holds the CA that signs Gatekeeper's client certificate
	// (Gatekeeper's ca.crt), PEM.
	ClientCAFile string
	// ClientCAGrace is how long a CA that left ClientCAFile stays trusted:
	// Gatekeeper's pods present the old CA's certificate until their copy of
	// the Secret and their certificate watcher catch up (a minute or two),
	// while the provider sees the change at once. The price: a CA replaced
	// because it was compromised stays trusted that long. Zero trusts only
	// the current file.
	ClientCAGrace time.Duration
	// CertReloadInterval is how often the three files are checked for change.
	CertReloadInterval time.Duration
	// RecordTimeout bounds the work for one request. Keep it below the
	// Provider object's spec.timeout.
	RecordTimeout time.Duration
	// EventQueue is how many Events may wait to be written, and how many
	// pods may have entries folded into one counting Event when it is full.
	EventQueue int
	// EventWriters is how many Events are written at once
	// (DefaultEventWriters).
	EventWriters int
	// DrainDelay is how long the provider keeps serving after SIGTERM, with
	// /readyz failing and each connection closed after its next response,
	// before it closes its listener: the time the Service's endpoints take
	// to drop it, during which Gatekeeper may still be sent here. Zero
	// closes the listener at once.
	DrainDelay time.Duration
	// ShutdownTimeout bounds the wait for in-flight requests once the
	// listener is closed. Keep it above RecordTimeout.
	ShutdownTimeout time.Duration
	// ClientCASecret, when set ("namespace/name"), is the Secret holding
	// Gatekeeper's CA under ca.crt (Gatekeeper's gatekeeper-webhook-server-cert);
	// it is mirrored to ClientCAFile on every change.
	ClientCASecret string
	// ClientCAWebhookConfiguration, when set, is the ValidatingWebhookConfiguration
	// (Gatekeeper's gatekeeper-validating-webhook-configuration) whose
	// webhooks' caBundle holds Gatekeeper's CA; it is mirrored to
	// ClientCAFile on every change. It holds no key, unlike the Secret: set
	// this or ClientCASecret, not both.
	ClientCAWebhookConfiguration string
	// Rotation, when set, has cert-controller issue and rotate the serving
	// certificate; it is mirrored to CertFile and KeyFile on every change.
	Rotation *tlscerts.Rotation
}

// Defaults of the durations for which zero is a choice.
const (
	// DefaultDrainDelay covers the propagation of a Service's endpoints to
	// every node, a few seconds in most clusters.
	DefaultDrainDelay = 10 * time.Second
	// DefaultClientCAGrace covers the kubelet's refresh of Gatekeeper's
	// mounted Secret (about a minute, up to two) and Gatekeeper's certificate
	// watcher (10 s), with room for a slow Gatekeeper rollout.
	DefaultClientCAGrace = 10 * time.Minute
)

// DefaultConfig returns a Config with every default set.
func DefaultConfig() Config {
	c := Config{DrainDelay: DefaultDrainDelay, ClientCAGrace: DefaultClientCAGrace}
	c.Default()
	return c
}

// Default fills unset fields.
func (c *Config) Default() {
	if c.Addr == "" {
		c.Addr = ":8443"
	}
	if c.ProbeAddr == "" {
		c.ProbeAddr = ":8081"
	}
	if c.CertFile == "" {
		c.CertFile = "/certs/tls.crt"
	}
	if c.KeyFile == "" {
		c.KeyFile = "/certs/tls.key"
	}
	if c.ClientCAFile == "" {
		c.ClientCAFile = "/client-ca/ca.crt"
	}
	if c.CertReloadInterval == 0 {
		c.CertReloadInterval = 10 * time.Second
	}
	if c.RecordTimeout == 0 {
		c.RecordTimeout = 1500 * time.Millisecond
	}
	if c.EventQueue == 0 {
		c.EventQueue = 1024
	}
	if c.EventWriters == 0 {
		c.EventWriters = DefaultEventWriters
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
}

// Validate reports configuration that cannot work.
func (c *Config) Validate() error {
	if c.CertFile == "" || c.KeyFile == "" || c.ClientCAFile == "" {
		return errors.New("the serving certificate, key and client CA files are all required")
	}
	if c.RecordTimeout <= 0 || c.CertReloadInterval <= 0 {
		return errors.New("timeouts and intervals must be positive")
	}
	if c.DrainDelay < 0 || c.ClientCAGrace < 0 {
		return errors.New("the drain delay and the client CA grace may not be negative")
	}
	if c.ShutdownTimeout <= c.RecordTimeout {
		return fmt.Errorf("the shutdown timeout (%s) must exceed the record timeout (%s), or a drain cuts off requests it should finish",
			c.ShutdownTimeout, c.RecordTimeout)
	}
	if c.ClientCASecret != "" && c.ClientCAWebhookConfiguration != "" {
		return errors.New("configuration error: Gatekeeper's CA is read from a Secret or from a webhook configuration, not both; set one of --client-ca-secret and --client-ca-webhook-configuration")
	}
	if c.ClientCASecret != "" {
		if _, _, err := tlscerts.SplitRef(c.ClientCASecret); err != nil {
			return fmt.Errorf("client CA secret: %w", err)
		}
	}
	if r := c.Rotation; r != nil {
		if _, _, err := tlscerts.SplitRef(r.Secret); err != nil {
			return fmt.Errorf("certificate secret: %w", err)
		}
		if r.ProviderName == "" || r.DNSName == "" {
			return errors.New("certificate rotation needs a Provider name and a DNS name")
		}
	}
	return nil
}

// Run serves until ctx is done, then drains (Config.DrainDelay) and shuts
// down gracefully. It returns nil on a clean shutdown.
func Run(ctx context.Context, cfg Config, restCfg *rest.Config, reg *prometheus.Registry) error {
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	d := deps{client: client}
	if r := cfg.Rotation; r != nil {
		dyn, err := dynamic.NewForConfig(restCfg)
		if err != nil {
			return err
		}
		d.providers = tlscerts.NewProviderWatch(dyn, r.ProviderName)
		d.rotator = func(ctx context.Context) error {
			return tlscerts.RunRotator(ctx, restCfg, *r, cfg.CertFile, cfg.KeyFile, FieldManager)
		}
	}
	return run(ctx, cfg, d, reg)
}

// deps are what run needs from outside: clients, and listeners for tests.
type deps struct {
	client     kubernetes.Interface
	providers  *tlscerts.ProviderWatch     // nil: readiness does not look at the Provider object
	rotator    func(context.Context) error // nil: no certificate rotation
	api, probe net.Listener                // nil: listen on Config.Addr and ProbeAddr
}

// run is Run after its clients are built. Its parts stop in order: on ctx,
// the API server drains and stops; only then do the rest (Events still
// queued, certificate loops, probes) stop. A part that fails starts the
// same sequence.
func run(ctx context.Context, cfg Config, d deps, reg *prometheus.Registry) error {
	log := klog.FromContext(ctx)
	var err error
	if d.api == nil {
		if d.api, err = net.Listen("tcp", cfg.Addr); err != nil {
			return fmt.Errorf("listening for Gatekeeper: %w", err)
		}
	}
	if d.probe == nil {
		if d.probe, err = net.Listen("tcp", cfg.ProbeAddr); err != nil {
			d.api.Close()
			return fmt.Errorf("listening for probes: %w", err)
		}
	}
	certs := tlscerts.NewCerts(cfg.CertFile, cfg.KeyFile, cfg.ClientCAFile, tlscerts.WithClientCAGrace(cfg.ClientCAGrace))
	if _, err := certs.Reload(); err != nil {
		// Not fatal: the certificates may not be issued yet. /readyz says so.
		log.Info("Certificates not loaded yet; waiting", "err", err.Error())
	}
	Register(reg)
	events := NewEventSink(d.client, cfg.EventQueue, cfg.EventWriters)
	handler := NewHandler(NewRecorder(d.client, clock.RealClock{}, events), cfg.RecordTimeout)

	// stop ends serving: the caller's signal, or a part that failed. bg
	// runs everything else, and ends only after the API server has stopped.
	stop, cancelStop := context.WithCancel(ctx)
	defer cancelStop()
	bg, cancelBg := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBg()
	reload := func() { certs.ReloadAndReport(bg) }
	var draining atomic.Bool
	ready := func(*http.Request) error {
		if draining.Load() {
			return errors.New("shutting down: draining")
		}
		if err := certs.Ready(); err != nil {
			return err
		}
		if d.providers != nil {
			return d.providers.Trusts(certs.Serving(), cfg.Rotation.DNSName)
		}
		return nil
	}

	api := &http.Server{
		Handler: NewRouter(handler),
		// Timeouts stop slow or idle clients from holding connections open
		// (slowloris); Gatekeeper itself gives up after the Provider's timeout.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
		TLSConfig:         certs.TLSConfig(),
		// HTTP/1.1 only (see tlscerts.Certs.TLSConfig).
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     errorLog(log),
	}
	probes := serve.Probes("", reg, nil, ready)

	var g errgroup.Group
	part := func(name string, f func(context.Context) error) {
		g.Go(func() error {
			err := f(bg)
			if err != nil {
				cancelStop()
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		})
	}
	if cfg.ClientCASecret != "" {
		ns, name, _ := tlscerts.SplitRef(cfg.ClientCASecret)
		sync := tlscerts.NewSecretSync(d.client, ns, name, map[string]string{"ca.crt": cfg.ClientCAFile}, reload)
		part("Gatekeeper's CA", func(ctx context.Context) error { sync.Run(ctx); return nil })
	}
	if name := cfg.ClientCAWebhookConfiguration; name != "" {
		sync := tlscerts.NewWebhookCASync(d.client, name, cfg.ClientCAFile, reload)
		part("Gatekeeper's CA", func(ctx context.Context) error { sync.Run(ctx); return nil })
	}
	if r := cfg.Rotation; r != nil {
		ns, name, _ := tlscerts.SplitRef(r.Secret)
		sync := tlscerts.NewSecretSync(d.client, ns, name,
			// cert-controller names the Secret's keys after the files.
			map[string]string{filepath.Base(cfg.CertFile): cfg.CertFile, filepath.Base(cfg.KeyFile): cfg.KeyFile}, reload,
			// Its CA, in memory only, for the serving certificate's ECDSA
			// twin (tlscerts/twin.go).
			tlscerts.WithData(func(data map[string][]byte) {
				if err := certs.SetIssuer(data["ca.crt"], data["ca.key"]); err != nil {
					log.Error(err, "Serving the certificate as cert-controller issued it, without its ECDSA twin", "secret", r.Secret)
				}
			}))
		part("serving certificate", func(ctx context.Context) error { sync.Run(ctx); return nil })
	}
	if d.rotator != nil {
		part("certificate rotation", d.rotator)
	}
	if d.providers != nil {
		part("Provider watch", func(ctx context.Context) error { d.providers.Run(ctx); return nil })
	}
	part("certificate reload", func(ctx context.Context) error { certs.Run(ctx, cfg.CertReloadInterval); return nil })
	part("events", func(ctx context.Context) error { events.Run(ctx); return nil })
	part("probes", func(ctx context.Context) error {
		return serve.Serve(ctx, probes, d.probe, serve.Drain{Timeout: time.Second})
	})
	g.Go(func() error {
		defer cancelBg()
		err := serve.Serve(stop, api, d.api, serve.Drain{
			Delay: cfg.DrainDelay, Timeout: cfg.ShutdownTimeout,
			OnDrain: func() { draining.Store(true) },
		})
		if err != nil {
			return fmt.Errorf("serving Gatekeeper: %w", err)
		}
		return nil
	})
	log.Info("Serving", "addr", d.api.Addr().String(), "path", Path, "probeAddr", d.probe.Addr().String(),
		"drainDelay", cfg.DrainDelay, "clientCAGrace", cfg.ClientCAGrace)
	return g.Wait()
}

// NewRouter routes Gatekeeper's requests to h. Other methods on Path get a
// ProviderResponse saying so, from h itself.
func NewRouter(h http.Handler) *mux.Router {
	r := mux.NewRouter()
	r.Handle(Path, h)
	return r
}

// errorLog sends the HTTP server's own messages (failed TLS handshakes, such
// as a client without a certificate) to the structured log.
func errorLog(log klog.Logger) *stdlog.Logger {
	return stdlog.New(logWriter{log}, "", 0)
}

type logWriter struct{ log klog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Info("HTTP server", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

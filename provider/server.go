// Package provider is exec-reaper's Gatekeeper external-data provider. For
// each key Gatekeeper sends it records, on the pod named in the key, who
// entered it, when, how, and the deadline after which it must go.
package provider

import (
	"context"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/internal/serve"
)

// Path is where the provider answers Gatekeeper. A Provider object's
// spec.url ends with it.
const Path = "/v1/record"

// Config configures the provider. Zero fields take the defaults in Default.
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
	// CertReloadInterval is how often the three files are checked for change.
	CertReloadInterval time.Duration
	// RecordTimeout bounds the work for one request. Keep it below the
	// Provider object's spec.timeout.
	RecordTimeout time.Duration
	// EventQueue is how many Events may wait to be written.
	EventQueue int
	// ShutdownTimeout bounds the wait for in-flight requests on shutdown.
	ShutdownTimeout time.Duration
	// ClientCASecret, when set ("namespace/name"), is the Secret holding
	// Gatekeeper's CA under ca.crt (Gatekeeper's gatekeeper-webhook-server-cert);
	// it is mirrored to ClientCAFile on every change.
	ClientCASecret string
	// Rotation, when set, has cert-controller issue and rotate the serving
	// certificate; it is mirrored to CertFile and KeyFile on every change.
	Rotation *Rotation
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
	if c.ClientCASecret != "" {
		if _, _, err := splitRef(c.ClientCASecret); err != nil {
			return fmt.Errorf("client CA secret: %w", err)
		}
	}
	if r := c.Rotation; r != nil {
		if _, _, err := splitRef(r.Secret); err != nil {
			return fmt.Errorf("certificate secret: %w", err)
		}
		if r.ProviderName == "" || r.DNSName == "" {
			return errors.New("certificate rotation needs a Provider name and a DNS name")
		}
	}
	return nil
}

// splitRef splits "namespace/name".
func splitRef(ref string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(ref, "/")
	if !ok || namespace == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("%q is not namespace/name", ref)
	}
	return namespace, name, nil
}

// Run serves until ctx is done, then shuts down gracefully. It returns nil on
// a clean shutdown.
func Run(ctx context.Context, cfg Config, restCfg *rest.Config, reg *prometheus.Registry) error {
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	log := klog.FromContext(ctx)
	certs := NewCerts(cfg.CertFile, cfg.KeyFile, cfg.ClientCAFile)
	if _, err := certs.Reload(); err != nil {
		// Not fatal: the certificates may not be issued yet. /readyz says so.
		log.Info("Certificates not loaded yet; waiting", "err", err.Error())
	}
	reload := func() { certs.reloadAndReport(ctx) }
	Register(reg)
	events := NewEventSink(client, cfg.EventQueue)
	handler := NewHandler(NewRecorder(client, clock.RealClock{}, events), cfg.RecordTimeout)

	api := &http.Server{
		Addr:    cfg.Addr,
		Handler: NewRouter(handler),
		// Timeouts stop slow or idle clients from holding connections open
		// (slowloris); Gatekeeper itself gives up after the Provider's timeout.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
		TLSConfig:         certs.TLSConfig(),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          errorLog(log),
	}
	probes := serve.Probes(cfg.ProbeAddr, reg, nil, func(*http.Request) error { return certs.Ready() })

	g, gctx := errgroup.WithContext(ctx)
	if cfg.ClientCASecret != "" {
		ns, name, _ := splitRef(cfg.ClientCASecret)
		sync := NewSecretSync(client, ns, name, map[string]string{"ca.crt": cfg.ClientCAFile}, reload)
		g.Go(func() error { sync.Run(gctx); return nil })
	}
	if r := cfg.Rotation; r != nil {
		ns, name, _ := splitRef(r.Secret)
		sync := NewSecretSync(client, ns, name,
			// cert-controller names the Secret's keys after the files.
			map[string]string{filepath.Base(cfg.CertFile): cfg.CertFile, filepath.Base(cfg.KeyFile): cfg.KeyFile}, reload)
		g.Go(func() error { sync.Run(gctx); return nil })
		g.Go(func() error { return runRotator(gctx, restCfg, *r, cfg.CertFile, cfg.KeyFile) })
	}
	g.Go(func() error { certs.Run(gctx, cfg.CertReloadInterval); return nil })
	g.Go(func() error { events.Run(gctx); return nil })
	g.Go(func() error { return serve.Run(gctx, api, cfg.ShutdownTimeout) })
	g.Go(func() error { return serve.Run(gctx, probes, cfg.ShutdownTimeout) })
	log.Info("Serving", "addr", cfg.Addr, "path", Path, "probeAddr", cfg.ProbeAddr)
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

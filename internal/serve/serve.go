// Package serve holds the HTTP plumbing the provider and the deleter share:
// graceful serving and draining, and the probe and metrics endpoints.
package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// Run serves srv until ctx is done (over TLS when srv.TLSConfig is set), then
// shuts it down, waiting at most timeout for in-flight requests. A clean
// shutdown returns nil.
func Run(ctx context.Context, srv *http.Server, timeout time.Duration) error {
	ln, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		return fmt.Errorf("serving on %s: %w", srv.Addr, err)
	}
	return Serve(ctx, srv, ln, Drain{Timeout: timeout})
}

// Drain says how a server stops once it is told to.
type Drain struct {
	// Delay is how long the server keeps serving after it is told to stop:
	// readiness fails (OnDrain), keep-alives are off so that every response
	// closes its connection and clients dial again, through the load
	// balancer, to a replica that is still ready, and the listener stays
	// open for clients that were routed here before the load balancer
	// noticed. It must exceed the time endpoints take to drop a replica.
	Delay time.Duration
	// Timeout bounds the wait for in-flight requests after Delay; what is
	// still running then is cut off.
	Timeout time.Duration
	// OnDrain, if set, runs when draining starts, before Delay.
	OnDrain func()
}

// Serve serves srv on ln until ctx is done, then drains as d says and shuts
// down. A clean shutdown returns nil.
//
// Request contexts carry ctx's values (its logger) but not its cancellation:
// the signal that starts a drain must not cancel the requests the drain is
// there to finish. They are cancelled only if d.Timeout passes with requests
// still running. Serve sets srv.BaseContext for this.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, d Drain) error {
	log := klog.FromContext(ctx)
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	srv.BaseContext = func(net.Listener) context.Context { return base }
	var inflight, drained atomic.Int64
	var draining atomic.Bool
	next := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inflight.Add(1)
		defer inflight.Add(-1)
		if draining.Load() {
			drained.Add(1)
			// This response closes its connection, so the client moves to
			// another replica while this one still answers. Idle
			// connections are left open until the delay is over: closing
			// one races with a client that has just picked it, and a POST
			// sent on a connection closed under it fails with EOF (the
			// client does not retry it).
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})

	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	start := time.Now()
	draining.Store(true)
	if d.OnDrain != nil {
		d.OnDrain()
	}
	if d.Delay > 0 {
		log.Info("Draining: not ready, closing each connection after its next response, still serving", "addr", ln.Addr().String(), "delay", d.Delay)
		t := time.NewTimer(d.Delay)
		select {
		case <-t.C:
		case err := <-errc:
			t.Stop()
			return fmt.Errorf("serving on %s while draining: %w", ln.Addr(), err)
		}
	}
	if d.Delay == 0 {
		log = log.V(2) // a plain stop (probes): not worth a line at default verbosity
	}
	log.Info("Closing the listener; waiting for in-flight requests", "addr", ln.Addr().String(),
		"inflight", inflight.Load(), "timeout", d.Timeout)
	sctx, cancel := context.WithTimeout(context.Background(), d.Timeout)
	defer cancel()
	var err error
	if serr := srv.Shutdown(sctx); serr != nil {
		_ = srv.Close()
		cancelBase()
		err = fmt.Errorf("shutting down %s: %d requests still running after %s were cut off: %w",
			ln.Addr(), inflight.Load(), d.Timeout, serr)
	}
	if serr := <-errc; err == nil && !errors.Is(serr, http.ErrServerClosed) {
		err = serr
	}
	log.Info("Stopped serving", "addr", ln.Addr().String(), "servedWhileDraining", drained.Load(),
		"took", time.Since(start).Round(time.Millisecond))
	return err
}

// NewRegistry returns a metrics registry with the Go runtime's and the
// process's collectors, to which each binary adds its own.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Check is a probe: nil means healthy.
type Check func(*http.Request) error

// Probes returns a plain-HTTP server on addr with /livez, /readyz (each
// 200 while its check passes, 503 with the reason otherwise) and /metrics.
func Probes(addr string, reg *prometheus.Registry, live, ready Check) *http.Server {
	r := mux.NewRouter()
	r.Handle("/livez", probe(live))
	r.Handle("/readyz", probe(ready))
	r.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return &http.Server{
		Addr:              addr,
		Handler:           r,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
	}
}

func probe(check Check) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if check != nil {
			if err := check(r); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	}
}

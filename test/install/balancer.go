package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"
)

// Balancer stands in for a Service and kube-proxy in front of local
// processes: it accepts TCP connections on one address and hands each new
// connection to a backend that passed its last readiness checks, round robin.
// Readiness is checked every Interval, so a backend that stops being ready
// still receives new connections for up to FailureThreshold intervals: that
// is the endpoint propagation delay a draining replica has to cover.
// Connections already forwarded stay where they are until either side closes
// them, as with conntrack. With no ready backend a connection is closed at
// once, as kube-proxy rejects traffic to a Service without endpoints.
type Balancer struct {
	// Addr is the address clients dial, 127.0.0.1:port.
	Addr string

	interval  time.Duration
	threshold int
	ln        net.Listener
	hc        *http.Client
	cancel    context.CancelFunc
	done      chan struct{}

	mu       sync.Mutex
	backends map[string]*backend
	order    []string // names, in the order added, for round robin
	next     int
	delay    time.Duration
	conns    map[net.Conn]struct{}
	rejected int
	events   []BalancerEvent
}

type backend struct {
	addr, readyURL string
	routed         bool
	failures       int
	conns          int // connections handed to it
}

// BalancerEvent is a change in routing: a backend starting or stopping to
// receive new connections.
type BalancerEvent struct {
	Time    time.Time
	Backend string
	Routed  bool
}

// Balancer defaults, mirroring the chart's readiness probe at a smaller
// scale: a backend leaves after two failed checks, joins after one success.
const (
	DefaultBalancerInterval  = 250 * time.Millisecond
	DefaultFailureThreshold  = 2
	balancerDialTimeout      = 2 * time.Second
	balancerReadinessTimeout = time.Second
)

// NewBalancer listens on a free loopback port and checks backends every
// interval (0 means DefaultBalancerInterval).
func NewBalancer(interval time.Duration) (*Balancer, error) {
	if interval == 0 {
		interval = DefaultBalancerInterval
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Balancer{
		Addr: ln.Addr().String(), interval: interval, threshold: DefaultFailureThreshold, ln: ln,
		hc:       &http.Client{Timeout: balancerReadinessTimeout},
		cancel:   cancel,
		done:     make(chan struct{}),
		backends: map[string]*backend{},
		conns:    map[net.Conn]struct{}{},
	}
	go b.accept()
	go b.check(ctx)
	return b, nil
}

// Add registers a backend at addr whose readiness is readyURL (200 = ready).
// It receives connections once a check has passed.
func (b *Balancer) Add(name, addr, readyURL string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.backends[name]; !ok {
		b.order = append(b.order, name)
	}
	b.backends[name] = &backend{addr: addr, readyURL: readyURL}
}

// Remove forgets a backend, as when its pod is gone from the endpoints.
func (b *Balancer) Remove(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if be, ok := b.backends[name]; ok && be.routed {
		b.events = append(b.events, BalancerEvent{Time: time.Now(), Backend: name, Routed: false})
	}
	delete(b.backends, name)
	for i, n := range b.order {
		if n == name {
			b.order = append(b.order[:i], b.order[i+1:]...)
			break
		}
	}
}

// Routed reports whether new connections may go to the backend.
func (b *Balancer) Routed(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	be, ok := b.backends[name]
	return ok && be.routed
}

// SetDelay makes every chunk of bytes a client sends reach its backend d
// late (0 turns it off): each request, and the client's flights of the TLS
// handshake, arrive d later, as over a slow network.
func (b *Balancer) SetDelay(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.delay = d
}

// Stats returns how many connections each backend received and how many
// were rejected for want of a ready backend.
func (b *Balancer) Stats() (perBackend map[string]int, rejected int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	perBackend = map[string]int{}
	for n, be := range b.backends {
		perBackend[n] = be.conns
	}
	return perBackend, b.rejected
}

// Events returns the routing changes so far.
func (b *Balancer) Events() []BalancerEvent {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]BalancerEvent(nil), b.events...)
}

// Close stops accepting, closes every forwarded connection and stops the
// checks.
func (b *Balancer) Close() error {
	b.cancel()
	err := b.ln.Close()
	<-b.done
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	return err
}

func (b *Balancer) check(ctx context.Context) {
	t := time.NewTicker(b.interval)
	defer t.Stop()
	for {
		b.checkOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkOnce probes every backend, in parallel, and updates routing.
func (b *Balancer) checkOnce(ctx context.Context) {
	b.mu.Lock()
	urls := map[string]string{}
	for n, be := range b.backends {
		urls[n] = be.readyURL
	}
	b.mu.Unlock()
	results := make(map[string]bool, len(urls))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for n, u := range urls {
		wg.Go(func() {
			ok := b.ready(ctx, u)
			mu.Lock()
			results[n] = ok
			mu.Unlock()
		})
	}
	wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	names := make([]string, 0, len(results))
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		be, ok := b.backends[n]
		if !ok || be.readyURL != urls[n] {
			continue // removed or replaced meanwhile
		}
		if results[n] {
			be.failures = 0
			if !be.routed {
				be.routed = true
				b.events = append(b.events, BalancerEvent{Time: now, Backend: n, Routed: true})
			}
			continue
		}
		be.failures++
		if be.routed && be.failures >= b.threshold {
			be.routed = false
			b.events = append(b.events, BalancerEvent{Time: now, Backend: n, Routed: false})
		}
	}
}

func (b *Balancer) ready(ctx context.Context, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (b *Balancer) accept() {
	defer close(b.done)
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go b.forward(c)
	}
}

// pick chooses the next routed backend, round robin.
func (b *Balancer) pick() (name, addr string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for range b.order {
		n := b.order[b.next%len(b.order)]
		b.next++
		if be := b.backends[n]; be.routed {
			be.conns++
			return n, be.addr, true
		}
	}
	b.rejected++
	return "", "", false
}

func (b *Balancer) track(c net.Conn, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
}

func (b *Balancer) forward(client net.Conn) {
	defer client.Close()
	_, addr, ok := b.pick()
	if !ok {
		return
	}
	server, err := net.DialTimeout("tcp", addr, balancerDialTimeout)
	if err != nil {
		return // as a connection DNAT'ed to a dead endpoint: the client sees it fail
	}
	defer server.Close()
	b.track(client, true)
	b.track(server, true)
	defer b.track(client, false)
	defer b.track(server, false)
	done := make(chan struct{}, 2)
	go func() { b.copy(server, client, true); closeWrite(server); done <- struct{}{} }()
	go func() { b.copy(client, server, false); closeWrite(client); done <- struct{}{} }()
	<-done
	<-done
}

// copy forwards src to dst, holding each chunk from a client for the delay.
func (b *Balancer) copy(dst, src net.Conn, fromClient bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if fromClient {
				b.mu.Lock()
				d := b.delay
				b.mu.Unlock()
				if d > 0 {
					time.Sleep(d) // injected latency, not synchronisation
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = c.Close()
}

// String describes the routing state, for failure messages.
func (b *Balancer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := "balancer " + b.Addr + ":"
	for _, n := range b.order {
		be := b.backends[n]
		s += fmt.Sprintf(" %s(routed=%v conns=%d)", n, be.routed, be.conns)
	}
	return s + fmt.Sprintf(" rejected=%d", b.rejected)
}

package serve_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exec-reaper/exec-reaper/internal/serve"
)

const testTimeout = 10 * time.Second

// TestServeDrain: once told to stop, the server keeps serving through the
// delay (OnDrain has run, every response closes its connection), a request
// in flight when the signal came finishes with its context intact, and only
// then does the listener close.
func TestServeDrain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	entered := make(chan struct{})
	release := make(chan struct{})
	ctxErr := make(chan error, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		ctxErr <- r.Context().Err()
		_, _ = io.WriteString(w, "slow done")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: time.Second}

	ctx, stop := context.WithCancel(context.Background())
	drained := make(chan struct{})
	const delay = 2 * time.Second
	done := make(chan error, 1)
	go func() {
		done <- serve.Serve(ctx, srv, ln, serve.Drain{Delay: delay, Timeout: testTimeout, OnDrain: func() { close(drained) }})
	}()

	// A keep-alive client, as Gatekeeper's.
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: testTimeout}
	if resp := get(t, client, url+"/"); resp.Close {
		t.Fatal("before the drain the server closes connections")
	}

	slow := make(chan string, 1)
	go func() {
		resp, err := client.Get(url + "/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		slow <- string(b)
	}()
	<-entered
	stopped := time.Now()
	stop()
	<-drained

	// During the delay: still served, each response with Connection: close.
	if resp := get(t, client, url+"/"); !resp.Close {
		t.Error("while draining a response left its connection open; want Connection: close")
	}
	if time.Since(stopped) >= delay {
		t.Fatalf("test too slow: the delay was over before it was checked")
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned during the delay with a request in flight: %v", err)
	default:
	}
	close(release)
	if got := <-slow; got != "slow done" {
		t.Errorf("in-flight request: %q, want it finished", got)
	}
	if err := <-ctxErr; err != nil {
		t.Errorf("the in-flight request's context was cancelled by the stop signal: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return")
	}
	if took := time.Since(stopped); took < delay {
		t.Errorf("Serve returned %s after the signal, before the %s delay", took, delay)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("the listener is still open after Serve returned")
	}
}

// TestServeDrainLosesNoRequest: clients that keep sending on pooled
// keep-alive connections when the drain starts get every answer. Closing the
// idle connections at that instant (what SetKeepAlivesEnabled(false) does)
// raced with a client that had just picked one: its POST, which a client
// does not retry, failed with EOF (Gatekeeper's external-data call, during a
// rolling restart of the provider, under the strict constraint: a denied
// exec).
func TestServeDrainLosesNoRequest(t *testing.T) {
	const clients, rounds = 16, 5
	for round := range rounds {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		url := "http://" + ln.Addr().String() + "/"
		srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, "ok")
		})}
		ctx, stop := context.WithCancel(context.Background())
		drained := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- serve.Serve(ctx, srv, ln, serve.Drain{Delay: time.Second, Timeout: testTimeout, OnDrain: func() { close(drained) }})
		}()
		tr := &http.Transport{MaxIdleConnsPerHost: clients}
		client := &http.Client{Transport: tr, Timeout: testTimeout}
		var wg sync.WaitGroup
		var failures, answered atomic.Int64
		var firstErr atomic.Value
		quit := make(chan struct{})
		for range clients {
			wg.Go(func() {
				for {
					select {
					case <-quit:
						return
					default:
					}
					resp, err := client.Post(url, "application/json", strings.NewReader(`{"keys":["k"]}`))
					if err != nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					answered.Add(1)
				}
			})
		}
		// Every client has a pooled connection, then the drain starts, and
		// the clients go on sending through its first part.
		waitCount(t, &answered, 10*clients)
		stop()
		<-drained
		waitCount(t, &answered, answered.Load()+10*clients)
		close(quit)
		wg.Wait()
		tr.CloseIdleConnections()
		if err := <-done; err != nil {
			t.Fatalf("round %d: Serve = %v", round, err)
		}
		if n := failures.Load(); n > 0 {
			t.Fatalf("round %d: %d requests failed while the server drained, first: %v", round, n, firstErr.Load())
		}
	}
}

// waitCount waits until n reaches want.
func waitCount(t *testing.T, n *atomic.Int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for n.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests answered after %s, want %d", n.Load(), testTimeout, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestServeShutdownTimeout: requests still running after the timeout are
// cut off, their contexts cancelled, and Serve says so.
func TestServeShutdownTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
	})}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve.Serve(ctx, srv, ln, serve.Drain{Timeout: 100 * time.Millisecond}) }()
	go func() {
		resp, err := (&http.Client{Timeout: testTimeout}).Get("http://" + ln.Addr().String())
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	stop()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "cut off") || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Serve = %v, want an error saying requests were cut off", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return: the stuck request's context was never cancelled")
	}
}

// TestServeListenError: a server that cannot serve returns at once.
func TestServeListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	err = serve.Serve(context.Background(), &http.Server{ReadHeaderTimeout: time.Second}, ln, serve.Drain{Delay: time.Hour})
	if err == nil {
		t.Fatal("Serve on a closed listener = nil")
	}
}

func get(t *testing.T, c *http.Client, url string) *http.Response {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return resp
}

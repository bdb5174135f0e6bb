package install

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

const balancerTestTimeout = 10 * time.Second

// backendServer answers "name" on / and its readiness on /readyz.
func backendServer(t *testing.T, name string, ready *atomic.Bool) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			if !ready.Load() {
				http.Error(w, "not ready", http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = io.WriteString(w, name)
	}))
	t.Cleanup(s.Close)
	return s
}

// TestBalancer: new connections go to ready backends only, a backend that
// fails its checks leaves after the threshold, none ready means rejected,
// and the delay knob slows requests down.
func TestBalancer(t *testing.T) {
	b, err := NewBalancer(20 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	var readyA, readyB atomic.Bool
	readyA.Store(true)
	a, bb := backendServer(t, "a", &readyA), backendServer(t, "b", &readyB)
	b.Add("a", a.Listener.Addr().String(), a.URL+"/readyz")
	b.Add("b", bb.Listener.Addr().String(), bb.URL+"/readyz")
	// A new connection per request, as after every Connection: close.
	client := &http.Client{Timeout: balancerTestTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func() (string, error) {
		resp, err := client.Get("http://" + b.Addr + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}
	until := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, balancerTestTimeout, true,
			func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("waiting for %s: %v (%s)", what, err, b)
		}
	}

	until("a routed", func() bool { return b.Routed("a") })
	for range 4 {
		if got, err := get(); err != nil || got != "a" {
			t.Fatalf("with only a ready: %q, %v", got, err)
		}
	}
	readyB.Store(true)
	until("b routed", func() bool { return b.Routed("b") })
	seen := map[string]bool{}
	for range 4 {
		got, err := get()
		if err != nil {
			t.Fatal(err)
		}
		seen[got] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("round robin over two ready backends reached %v", seen)
	}

	readyA.Store(false)
	until("a unrouted", func() bool { return !b.Routed("a") })
	for range 4 {
		if got, err := get(); err != nil || got != "b" {
			t.Fatalf("with a not ready: %q, %v", got, err)
		}
	}
	readyB.Store(false)
	until("b unrouted", func() bool { return !b.Routed("b") })
	if _, err := get(); err == nil {
		t.Error("a request with no ready backend succeeded")
	}
	if _, rejected := b.Stats(); rejected != 1 {
		t.Errorf("rejected = %d, want 1", rejected)
	}

	readyB.Store(true)
	until("b routed again", func() bool { return b.Routed("b") })
	b.SetDelay(200 * time.Millisecond)
	start := time.Now()
	if _, err := get(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("with a 200ms delay the request took %s", took)
	}
	var routed, unrouted int
	for _, e := range b.Events() {
		if e.Routed {
			routed++
		} else {
			unrouted++
		}
	}
	if routed != 3 || unrouted != 2 {
		t.Errorf("events: %d routed, %d unrouted; want 3, 2: %+v", routed, unrouted, b.Events())
	}
}

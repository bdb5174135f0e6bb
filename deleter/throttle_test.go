package deleter_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/exec-reaper/exec-reaper/deleter"
)

const throttledMetric = "exec_reaper_deleter_client_throttled_total"

// TestClientThrottlingIsCounted: a request held back by the client-side rate
// limit shows in the deleter's metrics, whichever client made it.
func TestClientThrottlingIsCounted(t *testing.T) {
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"apiVersion":"v1","kind":"PodList","items":[]}`))
	}))
	defer server.Close()
	reg := prometheus.NewRegistry()
	deleter.Register(reg, newHarness(t, deleter.Options{}).lister())

	// 10 QPS with a burst of 1: the second and third requests each wait
	// about 100 ms, over the 50 ms threshold.
	clients, err := deleter.NewClients(&rest.Config{Host: server.URL}, deleter.Config{KubeAPIQPS: 10, KubeAPIBurst: 1})
	if err != nil {
		t.Fatalf("NewClients: %v", err)
	}
	before := metricValue(t, reg, throttledMetric, "verb", "GET")
	for range 3 {
		if _, err := clients.Kube.ListPods(context.Background(), "team", labels.Everything()); err != nil {
			t.Fatalf("listing: %v", err)
		}
	}
	if got := metricValue(t, reg, throttledMetric, "verb", "GET") - before; got < 1 {
		t.Errorf("%s{verb=GET} grew by %v after three requests at 10 QPS, burst 1; want at least 1", throttledMetric, got)
	}
}

// withLease is cfg with leader election on, so NewClients builds its client.
func withLease(cfg deleter.Config) deleter.Config {
	cfg.LeaderElection, cfg.LeaseNamespace, cfg.LeaseName = true, "exec-reaper", "exec-reaper-deleter"
	return cfg
}

func TestNewClientsRateLimits(t *testing.T) {
	base := &rest.Config{Host: "http://127.0.0.1:1"}
	for _, tc := range []struct {
		name    string
		cfg     deleter.Config
		wantQPS float32 // 0: no client-side limit
	}{
		{"defaults", deleter.Config{}, deleter.DefaultKubeAPIQPS},
		{"set", deleter.Config{KubeAPIQPS: 50, KubeAPIBurst: 70}, 50},
		{"off", deleter.Config{KubeAPIQPS: -1}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clients, err := deleter.NewClients(base, withLease(tc.cfg))
			if err != nil {
				t.Fatalf("NewClients: %v", err)
			}
			limiters := map[string]flowcontrol.RateLimiter{}
			for what, c := range map[string]any{"Kube": clients.Kube, "Events": clients.Events, "Election": clients.Election} {
				l, ok := c.(interface {
					RateLimiter() flowcontrol.RateLimiter
				})
				if !ok {
					t.Fatalf("the %s client (%T) does not tell its rate limiter", what, c)
				}
				limiters[what] = l.RateLimiter()
			}
			for _, what := range []string{"Kube", "Events"} {
				switch limiter := limiters[what]; {
				case tc.wantQPS == 0 && limiter != nil:
					t.Errorf("%s client has a rate limit of %v QPS, want none", what, limiter.QPS())
				case tc.wantQPS != 0 && (limiter == nil || limiter.QPS() != tc.wantQPS):
					t.Errorf("%s client's rate limiter = %v, want %v QPS", what, limiter, tc.wantQPS)
				}
			}
			if tc.wantQPS != 0 && limiters["Kube"] == limiters["Events"] {
				t.Error("the Events client shares the Kube client's rate limiter; want one of its own")
			}
			// The Lease is renewed through a client of its own, so a burst of
			// evictions never delays a renewal.
			if l := limiters["Election"]; l == nil || l == limiters["Kube"] {
				t.Errorf("the leader-election client shares or lacks a rate limiter: %v", l)
			}
		})
	}
}

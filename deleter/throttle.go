package deleter

import (
	"context"
	"net/url"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// ThrottleThreshold is how long a request must wait for the client-side rate
// limit (Config.KubeAPIQPS, KubeAPIBurst) to count as throttled and be
// logged: client-go's own threshold for its V(3) message.
const ThrottleThreshold = 50 * time.Millisecond

// ThrottleLogEvery is the least time between two throttling reports in the
// log, so that a sustained overload writes one line per interval, not one per
// request.
const ThrottleLogEvery = 30 * time.Second

var (
	throttleWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "exec_reaper_deleter_client_throttle_seconds",
		Help: "Time API requests waited for the deleter's client-side rate limit (--kube-api-qps, --kube-api-burst), by HTTP verb. " +
			"Anything above the lowest buckets means the flags, not the API server, are the bound.",
		Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"verb"})
	throttledTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "exec_reaper_deleter_client_throttled_total",
		Help: "API requests that waited longer than 50ms for the deleter's client-side rate limit, by HTTP verb.",
	}, []string{"verb"})
)

// throttleReporter receives client-go's rate limiter latencies (every request
// of every client in the process). It keeps them in the metrics above and
// reports throttling in the log at the default verbosity, at most once per
// ThrottleLogEvery: client-go itself logs only waits over a second, and at
// most one line per second.
type throttleReporter struct {
	mu sync.Mutex
	// log is where reports go; set by Run.
	log logr.Logger
	// now is the clock; time.Now outside tests.
	now func() time.Time
	// last is when the last report was logged; zero before the first.
	last time.Time
	// count and longest describe the throttled requests since then.
	count   int
	longest time.Duration
}

// throttling is the process's reporter: client-go takes one adapter per
// process (tools/metrics.Register works once).
var throttling = &throttleReporter{log: klog.Background(), now: time.Now}

var registerClientMetrics sync.Once

// Observe implements client-go's metrics.LatencyMetric.
func (r *throttleReporter) Observe(_ context.Context, verb string, _ url.URL, latency time.Duration) {
	throttleWait.WithLabelValues(verb).Observe(latency.Seconds())
	if latency < ThrottleThreshold {
		return
	}
	throttledTotal.WithLabelValues(verb).Inc()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.count++
	r.longest = max(r.longest, latency)
	now := r.now()
	if !r.last.IsZero() && now.Sub(r.last) < ThrottleLogEvery {
		return
	}
	r.log.Info("API requests waited for the client-side rate limit, not for the API server: raise --kube-api-qps and --kube-api-burst if evictions are late",
		"requests", r.count, "longestWait", r.longest, "since", sinceOrStart(r.last))
	r.last, r.count, r.longest = now, 0, 0
}

// setLogger directs the reports to log.
func (r *throttleReporter) setLogger(log logr.Logger) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = log
}

func sinceOrStart(t time.Time) string {
	if t.IsZero() {
		return "start"
	}
	return t.UTC().Format(time.RFC3339)
}

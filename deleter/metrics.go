package deleter

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/metadata/metadatalister"
	clientmetrics "k8s.io/client-go/tools/metrics"
)

var (
	evictionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "exec_reaper_deleter_evictions_total",
		Help: "Eviction attempts by result: evicted, refused (PodDisruptionBudget), gone, other_pod, dry_run, error.",
	}, []string{"result"})
	evictionLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "exec_reaper_deleter_eviction_lag_seconds",
		Help:    "Time from a pod's deadline to its eviction.",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800},
	})
	guardInForce = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "exec_reaper_deleter_guard_in_force",
		Help: "1 while the record guard (ValidatingAdmissionPolicy) is in force, 0 while it is missing and evictions are held.",
	})
	guardHeldTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "exec_reaper_deleter_guard_held_total",
		Help: "Due evictions held back because the record guard was not in force.",
	})
	dropsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "exec_reaper_deleter_dropped_total",
		Help: "Pods given up on after repeated errors, until the next resync.",
	})
)

// Register adds the deleter's metrics to reg, including a gauge of the
// recorded pods in pods' cache, and has client-go report its client-side
// rate limiting into them (once per process).
func Register(reg prometheus.Registerer, pods metadatalister.Lister) {
	registerClientMetrics.Do(func() {
		clientmetrics.Register(clientmetrics.RegisterOpts{RateLimiterLatency: throttling})
	})
	reg.MustRegister(evictionsTotal, evictionLag, dropsTotal, guardInForce, guardHeldTotal, throttleWait, throttledTotal,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "exec_reaper_deleter_recorded_pods",
			Help: "Pods that carry an exec-reaper record and still exist.",
		}, func() float64 {
			list, _ := pods.List(labels.Everything()) // a cache read; never fails.
			return float64(len(list))
		}))
}

package deleter

import "github.com/prometheus/client_golang/prometheus"

var (
	gaveUpTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "exec_reaper_deleter_gave_up_total",
		Help: "Pods the deleter reported it could not remove, by reason: retries (repeated errors; retried again at the next resync), multiple_budgets (more than one PodDisruptionBudget covers the pod; retried with backoff), mirror (a static pod, never acted on).",
	}, []string{"reason"})
	quarantineNotAllowedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "exec_reaper_deleter_quarantine_not_allowed_total",
		Help: "Pods whose record asked for quarantine (a constraint with action: quarantine) but were evicted, because the deleter does not allow quarantine (a configuration error: --allow-quarantine, chart value deleter.allowQuarantine).",
	})
	pacingForcedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "exec_reaper_deleter_pacing_forced_total",
		Help: "Pods that went without a Ready replacement of their owner, because they had waited the longest pacing allows past their deadline.",
	})
)

// removalCollectors are the removal metrics that do not read the cache.
func removalCollectors() []prometheus.Collector {
	return []prometheus.Collector{gaveUpTotal, pacingForcedTotal, quarantineNotAllowedTotal}
}

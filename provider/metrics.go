package provider

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
)

var (
	requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "exec_reaper_provider_request_duration_seconds",
		Help:    "Time to answer one external-data request, by result (ok, item_error, system_error).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"result"})
	recordDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "exec_reaper_provider_record_duration_seconds",
		Help:    "Time to record one entry on its pod (GET and PATCH).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	recordsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "exec_reaper_provider_records_total",
		Help: "Keys handled, by outcome: first, added, repeat, earlier, trial, invalid, error.",
	}, []string{"outcome"})
	eventsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "exec_reaper_provider_events_total",
		Help: "Events about entries, by result: created, duplicate (of an entry already announced), failed, folded (into one Event counting a pod's entries, the queue being full), dropped (the queue and the table of folded Events full), unknown (an entry whose record write timed out and which the record did not show afterwards: perhaps recorded without an Event).",
	}, []string{"result"})
)

// Register adds the provider's metrics to reg, the TLS lifecycle's
// (tlscerts) included.
func Register(reg prometheus.Registerer) {
	reg.MustRegister(requestDuration, recordDuration, recordsTotal, eventsTotal)
	tlscerts.Register(reg)
}

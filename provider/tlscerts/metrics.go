package tlscerts

import "github.com/prometheus/client_golang/prometheus"

// The metrics keep the provider's names: they are the provider's, and
// dashboards know them by these.
var (
	certReloadsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "exec_reaper_provider_cert_reloads_total",
		Help: "Reloads of the serving certificate and client CA, by result.",
	}, []string{"result"})
	clientCAsTrusted = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "exec_reaper_provider_client_cas",
		Help: "Gatekeeper CAs the provider trusts: current (in the CA file) and retired (left it, trusted for --client-ca-grace).",
	}, []string{"state"})
	handshakesTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "exec_reaper_provider_tls_handshakes_total",
		Help: "TLS handshakes begun (ClientHellos received): one per new connection. Gatekeeper's external-data client keeps at most 10 idle connections to a provider, so concurrent entries beyond that each open a connection of their own.",
	})
)

// Register adds the TLS lifecycle's metrics to reg.
func Register(reg prometheus.Registerer) {
	reg.MustRegister(certReloadsTotal, clientCAsTrusted, handshakesTotal)
}

// Command exec-reaper-provider is exec-reaper's Gatekeeper external-data
// provider: it records on each pod that someone entered who, when, how, and
// the deadline after which the pod must go.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/exec-reaper/exec-reaper/internal/serve"
	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
)

func main() {
	cfg := provider.DefaultConfig() // the flags' defaults are the config's
	rot := tlscerts.Rotation{ProviderName: "exec-reaper"}
	var kubeconfig string
	var qps float64
	var burst int
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	klog.InitFlags(fs)
	fs.StringVar(&kubeconfig, "kubeconfig", "", "Path to a kubeconfig; empty means in-cluster.")
	fs.Float64Var(&qps, "kube-api-qps", 500, "Client-side limit of API requests per second (two per entry).")
	fs.IntVar(&burst, "kube-api-burst", 1000, "Client-side burst of API requests.")
	fs.StringVar(&cfg.Addr, "addr", cfg.Addr, "HTTPS address Gatekeeper calls.")
	fs.StringVar(&cfg.ProbeAddr, "probe-addr", cfg.ProbeAddr, "Plain-HTTP address for /livez, /readyz and /metrics.")
	fs.StringVar(&cfg.CertFile, "tls-cert-file", cfg.CertFile, "Serving certificate (PEM), reloaded when it changes.")
	fs.StringVar(&cfg.KeyFile, "tls-key-file", cfg.KeyFile, "Serving key (PEM), reloaded when it changes.")
	fs.StringVar(&cfg.ClientCAFile, "client-ca-file", cfg.ClientCAFile, "CA that signs Gatekeeper's client certificate (PEM), reloaded when it changes.")
	fs.DurationVar(&cfg.ClientCAGrace, "client-ca-grace", cfg.ClientCAGrace, "How long a Gatekeeper CA stays trusted after it left --client-ca-file, while Gatekeeper's pods still present its certificate. A CA replaced because it was compromised stays trusted that long: 0 trusts only the current one.")
	fs.DurationVar(&cfg.CertReloadInterval, "cert-reload-interval", cfg.CertReloadInterval, "How often to check the certificate files for change.")
	fs.DurationVar(&cfg.RecordTimeout, "record-timeout", cfg.RecordTimeout, "Time allowed to record one request; keep below the Provider's spec.timeout.")
	fs.IntVar(&cfg.EventQueue, "event-queue", cfg.EventQueue, "Events that may wait to be written before new ones are folded into one Event per pod that counts them (and pods that may have such an Event pending before Events are dropped).")
	fs.IntVar(&cfg.EventWriters, "event-writers", cfg.EventWriters, "Events written at once.")
	fs.DurationVar(&cfg.DrainDelay, "drain-delay", cfg.DrainDelay, "After SIGTERM, how long to keep serving with /readyz failing and each connection closed after its next response before closing the listener: the time the Service's endpoints take to drop this replica.")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "Time allowed for in-flight requests once the listener is closed; keep above --record-timeout.")
	fs.StringVar(&cfg.ClientCASecret, "client-ca-secret", "", "Secret (namespace/name) holding Gatekeeper's CA as ca.crt, e.g. gatekeeper-system/gatekeeper-webhook-server-cert; mirrored to --client-ca-file on every change. It holds Gatekeeper's keys too: prefer --client-ca-webhook-configuration.")
	fs.StringVar(&cfg.ClientCAWebhookConfiguration, "client-ca-webhook-configuration", "", "ValidatingWebhookConfiguration whose caBundle holds Gatekeeper's CA, e.g. gatekeeper-validating-webhook-configuration; mirrored to --client-ca-file on every change. Not with --client-ca-secret.")
	fs.StringVar(&rot.Secret, "cert-secret", "", "Secret (namespace/name) in which cert-controller issues and rotates the serving certificate; mirrored to --tls-cert-file and --tls-key-file. Empty: the files are managed by someone else.")
	fs.StringVar(&rot.ProviderName, "provider-name", rot.ProviderName, "Provider object whose spec.caBundle cert-controller keeps current (with --cert-secret).")
	fs.StringVar(&rot.DNSName, "dns-name", "", "DNS name in the serving certificate: the Service's name, e.g. exec-reaper-provider.gatekeeper-system.svc (with --cert-secret).")
	_ = fs.Parse(os.Args[1:])
	if rot.Secret != "" {
		cfg.Rotation = &rot
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "exec-reaper-provider:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal starts a drain; a second one ends the process at once.
	go func() { <-ctx.Done(); stop() }()
	if err := run(ctx, cfg, kubeconfig, qps, burst); err != nil {
		fmt.Fprintln(os.Stderr, "exec-reaper-provider:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg provider.Config, kubeconfig string, qps float64, burst int) error {
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	restCfg.UserAgent = "exec-reaper-provider"
	// The admission path waits on this client, so it must not queue behind
	// its own rate limit; the API server's priority and fairness protect it.
	restCfg.QPS, restCfg.Burst = float32(qps), burst
	reg := serve.NewRegistry()
	ctx = klog.NewContext(ctx, klog.Background().WithName("provider"))
	// cert-controller and controller-runtime log through their own global
	// logger, which discards everything until it is set.
	ctrllog.SetLogger(klog.Background().WithName("cert-controller"))
	return provider.Run(ctx, cfg, restCfg, reg)
}

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
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/exec-reaper/exec-reaper/provider"
)

func main() {
	var cfg provider.Config
	var kubeconfig string
	var qps float64
	var burst int
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	klog.InitFlags(fs)
	fs.StringVar(&kubeconfig, "kubeconfig", "", "Path to a kubeconfig; empty means in-cluster.")
	fs.Float64Var(&qps, "kube-api-qps", 500, "Client-side limit of API requests per second (two per entry).")
	fs.IntVar(&burst, "kube-api-burst", 1000, "Client-side burst of API requests.")
	fs.StringVar(&cfg.Addr, "addr", ":8443", "HTTPS address Gatekeeper calls.")
	fs.StringVar(&cfg.ProbeAddr, "probe-addr", ":8081", "Plain-HTTP address for /livez, /readyz and /metrics.")
	fs.StringVar(&cfg.CertFile, "tls-cert-file", "/certs/tls.crt", "Serving certificate (PEM), reloaded when it changes.")
	fs.StringVar(&cfg.KeyFile, "tls-key-file", "/certs/tls.key", "Serving key (PEM), reloaded when it changes.")
	fs.StringVar(&cfg.ClientCAFile, "client-ca-file", "/client-ca/ca.crt", "CA that signs Gatekeeper's client certificate (PEM), reloaded when it changes.")
	fs.DurationVar(&cfg.CertReloadInterval, "cert-reload-interval", 0, "How often to check the certificate files for change (default 10s).")
	fs.DurationVar(&cfg.RecordTimeout, "record-timeout", 0, "Time allowed to record one request; keep below the Provider's spec.timeout (default 1.5s).")
	fs.IntVar(&cfg.EventQueue, "event-queue", 0, "Events that may wait to be written before new ones are dropped (default 1024).")
	fs.StringVar(&cfg.ClientCASecret, "client-ca-secret", "", "Secret (namespace/name) holding Gatekeeper's CA as ca.crt, e.g. gatekeeper-system/gatekeeper-webhook-server-cert; mirrored to --client-ca-file on every change.")
	var rot provider.Rotation
	var certSecret string
	fs.StringVar(&certSecret, "cert-secret", "", "Secret (namespace/name) in which cert-controller issues and rotates the serving certificate; mirrored to --tls-cert-file and --tls-key-file. Empty: the files are managed by someone else.")
	fs.StringVar(&rot.ProviderName, "provider-name", "exec-reaper", "Provider object whose spec.caBundle cert-controller keeps current (with --cert-secret).")
	fs.StringVar(&rot.DNSName, "dns-name", "", "DNS name in the serving certificate: the Service's name, e.g. exec-reaper-provider.gatekeeper-system.svc (with --cert-secret).")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 0, "Time allowed for in-flight requests on shutdown (default 10s).")
	_ = fs.Parse(os.Args[1:])
	if certSecret != "" {
		ns, name, ok := strings.Cut(certSecret, "/")
		if !ok {
			fmt.Fprintf(os.Stderr, "exec-reaper-provider: --cert-secret %q is not namespace/name\n", certSecret)
			os.Exit(2)
		}
		rot.SecretNamespace, rot.SecretName = ns, name
		cfg.Rotation = &rot
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ctx = klog.NewContext(ctx, klog.Background().WithName("provider"))
	return provider.Run(ctx, cfg, restCfg, reg)
}

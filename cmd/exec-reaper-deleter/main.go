// Command exec-reaper-deleter evicts every pod exec-reaper recorded at the
// pod's deadline, through the Eviction API, bound to the pod's UID.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"

	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/deleter"
	"github.com/exec-reaper/exec-reaper/internal/serve"
)

// defaultGCPercent is the deleter's GOGC unless the environment sets one.
const defaultGCPercent = 25

func main() {
	if len(os.Args) > 1 && os.Args[1] == removePoliciesCommand {
		os.Exit(removePolicies(os.Args[2:])) // the chart's pre-delete hook
	}
	var cfg deleter.Config
	cfg.Default() // the flags' defaults are the config's
	var kubeconfig string
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	klog.InitFlags(fs)
	fs.StringVar(&kubeconfig, "kubeconfig", "", "Path to a kubeconfig; empty means in-cluster.")
	fs.StringVar(&cfg.ProbeAddr, "probe-addr", cfg.ProbeAddr, "Plain-HTTP address for /livez, /readyz and /metrics.")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "Emit an Event instead of evicting.")
	fs.IntVar(&cfg.Workers, "workers", cfg.Workers, "Evictions in flight at once; with the API server's latency per eviction, this bounds the eviction rate (README: Sizing the deleter).")
	fs.Var(qpsFlag{&cfg.KubeAPIQPS}, "kube-api-qps", "Client-side limit of API requests per second, for evictions and for Events (each its own); negative turns it off. Sized so the API server's priority and fairness is the bound (README: Sizing the deleter).")
	fs.IntVar(&cfg.KubeAPIBurst, "kube-api-burst", cfg.KubeAPIBurst, "Client-side burst of API requests: how many go at once before --kube-api-qps applies.")
	fs.DurationVar(&cfg.RetryBaseDelay, "retry-base-delay", cfg.RetryBaseDelay, "First delay after a refused or failed eviction.")
	fs.DurationVar(&cfg.RetryMaxDelay, "retry-max-delay", cfg.RetryMaxDelay, "Longest delay between retries; also how late an eviction can be once its PodDisruptionBudget allows it.")
	fs.StringVar(&cfg.Action, "action", cfg.Action, `What is done with a due pod: "evict", or "quarantine" (relabel it out of its controller and Services, isolate it with a NetworkPolicy, delete it after --quarantine-retention).`)
	fs.BoolVar(&cfg.AllowQuarantine, "allow-quarantine", false, `Quarantine (as --action=quarantine does) the pods whose record asks for it (a constraint with action: quarantine), while --action applies to the others; without it they are evicted, with an Event saying so. Needs quarantine's permissions (chart value deleter.allowQuarantine).`)
	fs.DurationVar(&cfg.QuarantineRetention, "quarantine-retention", cfg.QuarantineRetention, "How long a quarantined pod is kept before it is deleted.")
	fs.IntVar(&cfg.PacingBudget, "pacing-budget", cfg.PacingBudget, "Pods of one owner taken at once; the next goes once the owner has a Ready replacement. -1 turns pacing off.")
	fs.DurationVar(&cfg.MaxPacingDelay, "max-pacing-delay", cfg.MaxPacingDelay, "Longest a due pod waits past its deadline for its owner before it goes anyway.")
	fs.DurationVar(&cfg.EscalateAfter, "escalate-after", 0, "Delete (UID-bound, bypassing PodDisruptionBudgets) a pod whose eviction is still refused this long past its deadline; 0 never does.")
	fs.IntVar(&cfg.MaxRetries, "max-retries", cfg.MaxRetries, "Retries for evictions failing for reasons other than a PodDisruptionBudget, before waiting for the next resync.")
	fs.StringVar(&cfg.GuardPolicy, "guard-policy", "", "Name of the record guard ValidatingAdmissionPolicy (and binding); while it is not in force nothing is evicted. Empty trusts records without it.")
	fs.DurationVar(&cfg.Resync, "resync", cfg.Resync, "How often every recorded pod is looked at again.")
	fs.BoolVar(&cfg.LeaderElection, "leader-elect", true, "Elect a leader among replicas through a Lease; only the leader evicts.")
	fs.StringVar(&cfg.LeaseNamespace, "lease-namespace", os.Getenv("POD_NAMESPACE"), "Namespace of the Lease (default $POD_NAMESPACE).")
	fs.StringVar(&cfg.LeaseName, "lease-name", cfg.LeaseName, "Name of the Lease.")
	fs.StringVar(&cfg.Identity, "identity", os.Getenv("POD_NAME"), "This replica's name in the Lease (default $POD_NAME, else the host name).")
	fs.DurationVar(&cfg.LeaseDuration, "lease-duration", cfg.LeaseDuration, "Leader election lease duration.")
	fs.DurationVar(&cfg.RenewDeadline, "renew-deadline", cfg.RenewDeadline, "Leader election renew deadline.")
	fs.DurationVar(&cfg.RetryPeriod, "retry-period", cfg.RetryPeriod, "Leader election retry period.")
	_ = fs.Parse(os.Args[1:])
	if cfg.Identity == "" {
		cfg.Identity, _ = os.Hostname()
	}

	if os.Getenv("GOGC") == "" {
		// The cache of recorded pods is nearly all of the deleter's live
		// heap, and once synced it allocates little: collecting at 25%
		// growth instead of 100% costs a few milliseconds of CPU per cycle
		// and keeps RSS near the live heap (README, "Sizing the deleter").
		// Collecting at 5% while the initial list streams in took 2 MiB
		// off the restart's peak when the deleter linked client-go's
		// clientset, and nothing measurable since (BENCHMARKS.md).
		debug.SetGCPercent(defaultGCPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, "exec-reaper-deleter:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg deleter.Config, kubeconfig string) error {
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	restCfg.UserAgent = "exec-reaper-deleter"
	clients, err := deleter.NewClients(restCfg, cfg)
	if err != nil {
		return err
	}
	reg := serve.NewRegistry()
	ctx = klog.NewContext(ctx, klog.Background().WithName("deleter"))
	return deleter.Run(ctx, cfg, clients, clock.RealClock{}, reg)
}

// qpsFlag is a float32 flag, the type of rest.Config's QPS.
type qpsFlag struct{ v *float32 }

func (f qpsFlag) String() string {
	if f.v == nil {
		return ""
	}
	return strconv.FormatFloat(float64(*f.v), 'g', -1, 32)
}

func (f qpsFlag) Set(s string) error {
	v, err := strconv.ParseFloat(s, 32)
	if err != nil {
		return fmt.Errorf("not a number of requests per second: %w", err)
	}
	*f.v = float32(v)
	return nil
}

package install

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/test/cluster"
)

// ProviderDrainDelay is the local replicas' --drain-delay. The balancer
// stops routing to a replica at most DefaultFailureThreshold checks after
// its /readyz fails (about half a second); the delay covers that four times
// over and ends well within cluster.StopGracePeriod.
const ProviderDrainDelay = 2 * time.Second

// ProviderReplica is one provider process, as one pod of the Deployment.
type ProviderReplica struct {
	// Name is the replica's name in logs and in the balancer.
	Name string
	// Process is the running process.
	Process *cluster.Process
	// Addr is its HTTPS address; Probe its plain-HTTP probe address.
	Addr, Probe string
}

// MetricsURL is the replica's /metrics.
func (r *ProviderReplica) MetricsURL() string { return "http://" + r.Probe + "/metrics" }

func (i *Install) startProviders(ctx context.Context) error {
	b, err := NewBalancer(0)
	if err != nil {
		return err
	}
	i.Balancer = b
	if err := i.pointProvider(ctx, i.ProviderURL()); err != nil {
		return err
	}
	for range i.opts.ProviderReplicas {
		if _, err := i.StartProviderReplica(ctx, nil); err != nil {
			return err
		}
	}
	return nil
}

// StartProvider starts one replica if none runs, as a Deployment scaled up
// from zero, and returns once it is ready and routed.
func (i *Install) StartProvider(ctx context.Context) error {
	if len(i.Providers) > 0 {
		return nil
	}
	_, err := i.StartProviderReplica(ctx, nil)
	return err
}

// StartProviderReplica starts a new replica with the chart's arguments (and
// extra ones, --name=value, replacing them), bound to loopback, and returns
// once it is ready and the balancer routes to it: certificate issued by
// cert-controller, caBundle injected, Gatekeeper's CA loaded.
func (i *Install) StartProviderReplica(ctx context.Context, extra map[string]string) (*ProviderReplica, error) {
	r, err := i.StartProviderProcess(ctx, extra)
	if err != nil {
		return nil, err
	}
	p, name := r.Process, r.Name
	i.Providers = append(i.Providers, r)
	i.Provider = i.Providers[0].Process
	readyURL := "http://" + r.Probe + "/readyz"
	i.Balancer.Add(name, r.Addr, readyURL)
	if err := waitReady(ctx, p, readyURL); err != nil {
		return r, err
	}
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, ReadyTimeout, true, func(context.Context) (bool, error) {
		if exited, err := p.Exited(); exited {
			return false, fmt.Errorf("%s exited: %v (see %s)", name, err, p.LogFile)
		}
		return i.Balancer.Routed(name), nil
	})
	if err != nil {
		return r, fmt.Errorf("waiting for the balancer to route to %s: %w (%s)", name, err, i.Balancer)
	}
	return r, nil
}

// StartProviderProcess starts a provider process as StartProviderReplica
// does, but neither routes to it nor waits for it: the caller watches its
// Probe and stops its Process.
func (i *Install) StartProviderProcess(ctx context.Context, extra map[string]string) (*ProviderReplica, error) {
	name := fmt.Sprintf("exec-reaper-provider-%d", i.providerSeq)
	i.providerSeq++
	r := &ProviderReplica{Name: name}
	for _, addr := range []*string{&r.Addr, &r.Probe} {
		port, err := cluster.FreePort()
		if err != nil {
			return nil, err
		}
		*addr = "127.0.0.1:" + strconv.Itoa(port)
	}
	dir := filepath.Join(i.dir, name)
	flags := map[string]string{
		"kubeconfig":     i.providerKubeconfig,
		"addr":           r.Addr,
		"probe-addr":     r.Probe,
		"tls-cert-file":  filepath.Join(dir, "certs", "tls.crt"),
		"tls-key-file":   filepath.Join(dir, "certs", "tls.key"),
		"client-ca-file": filepath.Join(dir, "client-ca", "ca.crt"),
		// Gatekeeper dials localhost here, not the Service's name.
		"dns-name":    "localhost",
		"drain-delay": ProviderDrainDelay.String(),
		"v":           "1",
	}
	maps.Copy(flags, extra)
	args := override(i.providerArgs, flags)
	// The replica outlives ctx, as a pod outlives the rollout that made it.
	p, err := i.c.StartProcess(context.WithoutCancel(ctx), name, append([]string{filepath.Join(i.binDir, "exec-reaper-provider")}, args...), nil)
	if err != nil {
		return nil, err
	}
	r.Process = p
	if i.FirstProviderLog == "" {
		i.FirstProviderLog = p.LogFile
	}
	return r, nil
}

// StopProviderReplica sends the replica SIGTERM, waits until it has exited
// and takes it out of the balancer, as a deleted pod leaves the endpoints.
// It returns an error if the replica did not exit cleanly.
func (i *Install) StopProviderReplica(r *ProviderReplica) error {
	err := r.Process.Stop()
	if exited, werr := r.Process.Exited(); err == nil && exited && werr != nil {
		err = fmt.Errorf("%s exited with %v (see %s)", r.Name, werr, r.Process.LogFile)
	}
	i.Balancer.Remove(r.Name)
	for n, o := range i.Providers {
		if o == r {
			i.Providers = append(i.Providers[:n], i.Providers[n+1:]...)
			break
		}
	}
	i.Provider = nil
	if len(i.Providers) > 0 {
		i.Provider = i.Providers[0].Process
	}
	return err
}

// StopProvider stops every provider replica.
func (i *Install) StopProvider() error {
	var errs []error
	for len(i.Providers) > 0 {
		errs = append(errs, i.StopProviderReplica(i.Providers[0]))
	}
	return errors.Join(errs...)
}

// RolloutStep is the timeline of one replica's replacement.
type RolloutStep struct {
	Old, New string
	// Started is when the new replica was started; Routed when the balancer
	// first sent it connections.
	Started, Routed time.Time
	// Terminated is when the old replica got SIGTERM; Unrouted when the
	// balancer stopped sending it new connections; Exited when it was gone.
	Terminated, Unrouted, Exited time.Time
}

func (s RolloutStep) String() string {
	ms := func(t time.Time) string { return t.Sub(s.Terminated).Round(time.Millisecond).String() }
	return fmt.Sprintf("%s -> %s: new ready and routed %s after its start; old unrouted %s and exited %s after SIGTERM",
		s.Old, s.New, s.Routed.Sub(s.Started).Round(time.Millisecond), ms(s.Unrouted), ms(s.Exited))
}

// RollProviders replaces every running replica in turn, as a Deployment
// with maxSurge 1 and maxUnavailable 0 does: start the new replica (with
// extra flags), wait until it is ready and routed, SIGTERM the old one, wait
// for it to exit.
func (i *Install) RollProviders(ctx context.Context, extra map[string]string) ([]RolloutStep, error) {
	old := append([]*ProviderReplica(nil), i.Providers...)
	var steps []RolloutStep
	for _, o := range old {
		s := RolloutStep{Old: o.Name, Started: time.Now()}
		n, err := i.StartProviderReplica(ctx, extra)
		if err != nil {
			return steps, err
		}
		s.New, s.Routed = n.Name, routedAt(i.Balancer.Events(), n.Name, true, s.Started)
		s.Terminated = time.Now()
		if err := i.StopProviderReplica(o); err != nil {
			return steps, err
		}
		s.Exited = time.Now()
		s.Unrouted = routedAt(i.Balancer.Events(), o.Name, false, s.Terminated)
		steps = append(steps, s)
	}
	return steps, nil
}

// routedAt returns the first routing change of backend to routed after t.
func routedAt(events []BalancerEvent, backend string, routed bool, after time.Time) time.Time {
	for _, e := range events {
		if e.Backend == backend && e.Routed == routed && !e.Time.Before(after) {
			return e.Time
		}
	}
	return time.Time{}
}

// pointProvider sets the Provider object's URL.
func (i *Install) pointProvider(ctx context.Context, url string) error {
	_, _, err := i.c.Kubectl(ctx, "", "patch", "providers.externaldata.gatekeeper.sh", i.ProviderName,
		"--type=merge", "-p", fmt.Sprintf(`{"spec":{"url":%q}}`, url))
	return err
}

// ProviderURL is where Gatekeeper reaches the provider: the balancer, by the
// name in the replicas' certificate.
func (i *Install) ProviderURL() string {
	_, port, _ := strings.Cut(i.Balancer.Addr, ":")
	return "https://localhost:" + port + provider.Path
}

// EachProviderMetrics returns the metrics of every running replica: requests
// are spread across them by the balancer, so a count is their sum.
func (i *Install) EachProviderMetrics(ctx context.Context) ([]string, error) {
	if len(i.Providers) == 0 {
		return nil, errors.New("no provider replica is running")
	}
	var out []string
	for _, p := range i.Providers {
		text, err := get(ctx, p.MetricsURL())
		if err != nil {
			return nil, err
		}
		out = append(out, text)
	}
	return out, nil
}

// ProviderKubeconfig is the kubeconfig of the provider's ServiceAccount.
func (i *Install) ProviderKubeconfig() string { return i.providerKubeconfig }

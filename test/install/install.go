// Package install puts exec-reaper onto a local control plane the way its Helm
// chart does in a cluster, for the end-to-end suite and `make demo`: it
// renders the chart, applies its ServiceAccounts, RBAC, Secret and Provider
// object for real (and the rest with a server-side dry run, since there is no
// node to run Deployments), then runs the provider and deleter binaries as
// local processes with the chart's own arguments, each authenticated as its
// chart ServiceAccount, so the tests prove the chart's permissions suffice.
package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/exec-reaper/exec-reaper/test/cluster"
)

// DefaultNamespace is where the chart installs unless Options.Namespace
// says otherwise: Gatekeeper's, as the README's install commands do.
const DefaultNamespace = cluster.GatekeeperNamespace

// Timeouts for the steps of Setup.
const (
	BuildTimeout      = 5 * time.Minute
	ReadyTimeout      = 60 * time.Second
	ConstraintTimeout = 60 * time.Second
)

// Options configure Setup.
type Options struct {
	// Cluster is a running control plane with Gatekeeper.
	Cluster *cluster.Cluster
	// RepoRoot is the repository checkout.
	RepoRoot string
	// Helm is the helm binary.
	Helm string
	// Namespace is the release namespace (DefaultNamespace when empty); one
	// that does not exist is created, as helm install --create-namespace does.
	Namespace string
	// Values are extra `helm template --set` values.
	Values []string
	// DeleterReplicas is how many deleter processes run (leader election picks one).
	DeleterReplicas int
	// ProviderReplicas is how many provider processes run behind the
	// balancer (default 1).
	ProviderReplicas int
	// Log receives progress lines; may be nil.
	Log io.Writer
}

// Install is exec-reaper running on a local control plane.
type Install struct {
	opts    Options
	c       *cluster.Cluster
	binDir  string
	dir     string
	objects []*unstructured.Unstructured

	// Namespace is the release namespace.
	Namespace string
	// ProviderName is the Provider object's name.
	ProviderName string
	// CertSecret is the Secret (in Namespace) holding the provider's
	// certificate, managed by cert-controller.
	CertSecret string

	providerArgs, deleterArgs []string
	providerKubeconfig        string
	// ProviderUser is the username of the provider's ServiceAccount.
	ProviderUser      string
	deleterKubeconfig string

	// Provider is the first running provider replica's process, nil while
	// none runs.
	Provider *cluster.Process
	// Providers are the running provider replicas, oldest first.
	Providers []*ProviderReplica
	// Balancer is what the Provider object's URL points at: it stands in
	// for the provider's Service and routes to the ready replicas.
	Balancer *Balancer
	// FirstProviderLog is the log of the first provider replica started,
	// on a fresh install.
	FirstProviderLog string
	// providerSeq numbers the replicas ever started, as pod names would.
	providerSeq int
	// Deleters are the deleter replicas; an entry is nil while stopped.
	Deleters []*cluster.Process
	// deleterMu guards Deleters against restartOnExit.
	deleterMu sync.Mutex
	// DeleterProbes are the deleters' probe/metrics base URLs.
	DeleterProbes []string
}

func (i *Install) logf(format string, args ...any) {
	if i.opts.Log != nil {
		fmt.Fprintf(i.opts.Log, format+"\n", args...)
	}
}

// Setup builds and installs exec-reaper and waits until it serves.
func Setup(ctx context.Context, opts Options) (*Install, error) {
	if opts.DeleterReplicas == 0 {
		opts.DeleterReplicas = 2
	}
	if opts.ProviderReplicas == 0 {
		opts.ProviderReplicas = 1
	}
	if opts.Namespace == "" {
		opts.Namespace = DefaultNamespace
	}
	i := &Install{opts: opts, c: opts.Cluster, Namespace: opts.Namespace, dir: filepath.Join(opts.Cluster.Dir, "exec-reaper")}
	i.binDir = filepath.Join(i.dir, "bin")
	steps := []struct {
		what string
		run  func(context.Context) error
	}{
		{"building exec-reaper", i.build},
		{"rendering and applying the Helm chart", i.applyChart},
		{"starting the provider", i.startProviders},
		{"starting the deleters", i.startDeleters},
	}
	for _, s := range steps {
		start := time.Now()
		i.logf("  %s", s.what)
		if err := s.run(ctx); err != nil {
			return i, fmt.Errorf("%s: %w", s.what, err)
		}
		i.logf("  %s: done in %s", s.what, time.Since(start).Round(time.Millisecond))
	}
	return i, nil
}

func (i *Install) build(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, BuildTimeout)
	defer cancel()
	// As the image builds them (Dockerfile), so the benchmarks measure what
	// ships: static, without symbol tables.
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", i.binDir+"/", "./cmd/exec-reaper-provider", "./cmd/exec-reaper-deleter")
	cmd.Dir = i.opts.RepoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// applyChart renders the chart, applies what can exist without nodes, and
// keeps the rendered Deployments' arguments for the local processes.
func (i *Install) applyChart(ctx context.Context) error {
	var err error
	if i.objects, err = i.Render(ctx); err != nil {
		return err
	}

	// In a cluster, Gatekeeper's cert-controller fills this Secret; the
	// local Gatekeeper runs with certificates from a directory instead.
	if err := i.gatekeeperCASecret(ctx); err != nil {
		return err
	}
	if err := i.createNamespace(ctx); err != nil {
		return err
	}

	var now, dryRun []*unstructured.Unstructured
	for _, o := range i.objects {
		if strings.Contains(o.GetAnnotations()["helm.sh/hook"], "pre-delete") {
			continue // Helm creates these only on uninstall
		}
		switch o.GetKind() {
		case "Deployment":
			if err := i.takeArgs(o); err != nil {
				return err
			}
			dryRun = append(dryRun, o)
		case "Provider":
			i.ProviderName = o.GetName()
			now = append(now, o)
		case "Service", "PodDisruptionBudget":
			dryRun = append(dryRun, o)
		default:
			now = append(now, o)
		}
	}
	if i.providerArgs == nil || i.deleterArgs == nil {
		return errors.New("the chart rendered no provider or no deleter Deployment")
	}
	if err := i.apply(ctx, "chart.yaml", now); err != nil {
		return err
	}
	if err := i.apply(ctx, "chart-dry-run.yaml", dryRun, "--dry-run=server"); err != nil {
		return err
	}
	return nil
}

// Render runs helm template on the chart with the install's values and the
// extra ones given, and returns the objects.
func (i *Install) Render(ctx context.Context, values ...string) ([]*unstructured.Unstructured, error) {
	args := append([]string{"template", "exec-reaper", filepath.Join(i.opts.RepoRoot, "charts", "exec-reaper"),
		"--namespace", i.Namespace}, setFlags(append(slices.Clone(i.opts.Values), values...))...)
	out, err := exec.CommandContext(ctx, i.opts.Helm, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("helm template: %w: %s", err, ee.Stderr)
		}
		return nil, err
	}
	objs, err := cluster.DecodeObjects(bytes.NewReader(out))
	if err != nil {
		return nil, fmt.Errorf("decoding rendered chart: %w", err)
	}
	return objs, nil
}

// Apply applies objects with the real kubectl as the admin, with extra
// kubectl arguments (e.g. --dry-run=server).
func (i *Install) Apply(ctx context.Context, name string, objs []*unstructured.Unstructured, extra ...string) error {
	return i.apply(ctx, name, objs, extra...)
}

func setFlags(values []string) []string {
	var out []string
	for _, v := range values {
		out = append(out, "--set", v)
	}
	return out
}

func (i *Install) apply(ctx context.Context, name string, objs []*unstructured.Unstructured, extra ...string) error {
	var buf bytes.Buffer
	for _, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return err
		}
		buf.WriteString("---\n")
		buf.Write(b)
	}
	path := filepath.Join(i.dir, name)
	if err := os.MkdirAll(i.dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return err
	}
	_, _, err := i.c.Kubectl(ctx, "", append([]string{"apply", "-f", path}, extra...)...)
	return err
}

// takeArgs records the container arguments and ServiceAccount of a
// Deployment, and issues a kubeconfig for that ServiceAccount.
func (i *Install) takeArgs(d *unstructured.Unstructured) error {
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	sa, _, _ := unstructured.NestedString(d.Object, "spec", "template", "spec", "serviceAccountName")
	if len(containers) == 0 || sa == "" {
		return fmt.Errorf("deployment %s has no container or no serviceAccountName", d.GetName())
	}
	c, _ := containers[0].(map[string]any)
	var cmd []string
	for _, field := range []string{"command", "args"} {
		v, _, _ := unstructured.NestedStringSlice(c, field)
		cmd = append(cmd, v...)
	}
	joined := strings.Join(cmd, " ")
	user := "system:serviceaccount:" + i.Namespace + ":" + sa
	kubeconfig, err := i.c.Kubeconfig(sa, user, "system:serviceaccounts", "system:serviceaccounts:"+i.Namespace, "system:authenticated")
	if err != nil {
		return err
	}
	switch {
	case strings.Contains(joined, "exec-reaper-provider"):
		i.providerArgs, i.providerKubeconfig, i.ProviderUser = flagsOnly(cmd), kubeconfig, user
		i.CertSecret = flagValue(i.providerArgs, "cert-secret")
		if _, name, ok := strings.Cut(i.CertSecret, "/"); ok {
			i.CertSecret = name
		}
	case strings.Contains(joined, "exec-reaper-deleter"):
		i.deleterArgs, i.deleterKubeconfig = flagsOnly(cmd), kubeconfig
	default:
		return fmt.Errorf("deployment %s runs neither binary: %s", d.GetName(), joined)
	}
	return nil
}

func flagsOnly(cmd []string) []string {
	var out []string
	for _, a := range cmd {
		if strings.HasPrefix(a, "-") {
			out = append(out, a)
		}
	}
	return out
}

func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(strings.TrimLeft(a, "-"), name+"="); ok {
			return v
		}
	}
	return ""
}

// override replaces or adds --name=value flags.
func override(args []string, kv map[string]string) []string {
	var out []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if _, ok := kv[name]; !ok {
			out = append(out, a)
		}
	}
	for k, v := range kv {
		out = append(out, "--"+k+"="+v)
	}
	return out
}

// gatekeeperCASecret publishes the local Gatekeeper's certificate as the
// Secret Gatekeeper's own cert-controller keeps in a cluster.
func (i *Install) gatekeeperCASecret(ctx context.Context) error {
	data := map[string][]byte{}
	for _, f := range []string{"ca.crt", "tls.crt", "tls.key"} {
		b, err := os.ReadFile(filepath.Join(i.c.GatekeeperCertDir, f))
		if err != nil {
			return err
		}
		data[f] = b
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "gatekeeper-webhook-server-cert", Namespace: cluster.GatekeeperNamespace},
		Data:       data,
	}
	_, err := i.c.Client().CoreV1().Secrets(cluster.GatekeeperNamespace).Create(ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// createNamespace creates the release namespace unless it exists.
func (i *Install) createNamespace(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: i.Namespace}}
	_, err := i.c.Client().CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func (i *Install) startDeleters(ctx context.Context) error {
	i.Deleters = make([]*cluster.Process, i.opts.DeleterReplicas)
	i.DeleterProbes = make([]string, i.opts.DeleterReplicas)
	for n := range i.Deleters {
		if err := i.StartDeleter(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// StartDeleter (re)starts deleter replica n and waits until it is ready.
// Like a kubelet, the install restarts a replica that exits on its own with
// an error (a leader that lost its Lease exits so as to start afresh as a
// standby); one stopped by StopDeleter, or killed by a signal, stays down.
func (i *Install) StartDeleter(ctx context.Context, n int) error {
	return i.StartDeleterWith(ctx, n, nil)
}

// StartDeleterWith (re)starts deleter replica n with extra flags (name →
// value, overriding the chart's) and waits until it is ready.
func (i *Install) StartDeleterWith(ctx context.Context, n int, extra map[string]string) error {
	if i.DeleterProbes[n] == "" {
		port, err := cluster.FreePort()
		if err != nil {
			return err
		}
		i.DeleterProbes[n] = "127.0.0.1:" + strconv.Itoa(port)
	}
	name := fmt.Sprintf("exec-reaper-deleter-%d", n)
	flags := map[string]string{
		"kubeconfig": i.deleterKubeconfig,
		"probe-addr": i.DeleterProbes[n],
		"v":          "1",
	}
	env := []string{"POD_NAMESPACE=" + i.Namespace, "POD_NAME=" + name}
	maps.Copy(flags, extra)
	args := override(i.deleterArgs, flags)
	p, err := i.c.StartProcess(ctx, name, append([]string{filepath.Join(i.binDir, "exec-reaper-deleter")}, args...), env)
	if err != nil {
		return err
	}
	i.deleterMu.Lock()
	i.Deleters[n] = p
	i.deleterMu.Unlock()
	go i.restartOnExit(n, p, extra)
	return waitReady(ctx, p, "http://"+i.DeleterProbes[n]+"/readyz")
}

// restartOnExit restarts replica n, with the extra flags p was started
// with, when p exits with an error status while it is still the replica's
// process.
func (i *Install) restartOnExit(n int, p *cluster.Process, extra map[string]string) {
	<-p.Done()
	_, err := p.Exited()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() <= 0 { // clean, or killed by a signal
		return
	}
	i.deleterMu.Lock()
	current := i.Deleters[n] == p
	i.deleterMu.Unlock()
	if !current {
		return
	}
	i.logf("  %s exited (%v): restarting it, as a kubelet would", p.Name, err)
	ctx, cancel := context.WithTimeout(context.Background(), ReadyTimeout)
	defer cancel()
	if err := i.StartDeleterWith(ctx, n, extra); err != nil {
		i.logf("  restarting %s: %v", p.Name, err)
	}
}

// StopDeleter stops deleter replica n gracefully (it hands its lease over).
func (i *Install) StopDeleter(n int) error {
	i.deleterMu.Lock()
	p := i.Deleters[n]
	i.Deleters[n] = nil // before Stop, so that restartOnExit leaves it down
	i.deleterMu.Unlock()
	if p == nil {
		return nil
	}
	return p.Stop()
}

// DeleterMetrics returns replica n's /metrics text.
func (i *Install) DeleterMetrics(ctx context.Context, n int) (string, error) {
	return get(ctx, "http://"+i.DeleterProbes[n]+"/metrics")
}

func get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

func waitReady(ctx context.Context, p *cluster.Process, url string) error {
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, ReadyTimeout, true, func(ctx context.Context) (bool, error) {
		if exited, err := p.Exited(); exited {
			return false, fmt.Errorf("%s exited: %v (see %s)", p.Name, err, p.LogFile)
		}
		_, err := get(ctx, url)
		return err == nil, nil
	})
}

// ApplyPolicies applies the repository's template and the given constraint
// files with kubectl, retrying constraints until Gatekeeper has created
// their CRD, then patches each constraint with the given JSON merge patch.
func (i *Install) ApplyPolicies(ctx context.Context, template string, constraints map[string]string) error {
	if err := i.c.ApplyFile(ctx, "", filepath.Join(i.opts.RepoRoot, template)); err != nil {
		return err
	}
	for file, patch := range constraints {
		path := filepath.Join(i.opts.RepoRoot, file)
		var lastErr error
		err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, ConstraintTimeout, true, func(ctx context.Context) (bool, error) {
			_, _, lastErr = i.c.Kubectl(ctx, "", "apply", "-f", path)
			return lastErr == nil, nil
		})
		if err != nil {
			return fmt.Errorf("applying %s: %w (last: %v)", file, err, lastErr)
		}
		if patch == "" {
			continue
		}
		obj, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var meta struct {
			Kind     string            `json:"kind"`
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(obj, &meta); err != nil {
			return err
		}
		if _, _, err := i.c.Kubectl(ctx, "", "patch", strings.ToLower(meta.Kind), meta.Metadata.Name, "--type=merge", "-p", patch); err != nil {
			return err
		}
	}
	return nil
}

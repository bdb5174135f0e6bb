//go:build unix

// Package cluster runs a throwaway Kubernetes control plane on the local
// machine for end-to-end tests and the demo: etcd, kube-apiserver and
// kube-controller-manager from hack/tools.sh, and optionally Gatekeeper's
// manager with its validating webhook (CONNECT included) registered, all as
// plain processes on 127.0.0.1. Without Options.Node there is no scheduler
// and no kubelet: pods are created and stay Pending, which is enough to test
// admission, because admission of `kubectl exec` happens before the API
// server looks for a node. With Options.Node, kube-scheduler, containerd and
// a kubelet run too (Linux, root): one real node, NodeName, whose pods run
// the local images PauseImage and BusyboxImage and are never pulled. Only
// one node runs per machine at a time (NodeLockFile).
//
// Typical use:
//
//	c, err := cluster.Start(ctx, cluster.Options{Dir: t.TempDir(), Gatekeeper: true})
//	if err != nil { t.Fatal(err) }
//	t.Cleanup(func() { _ = c.Stop() })
//
// Callers must call Stop, also on failure paths (defer or t.Cleanup), and a
// program that is not a test should stop the cluster on SIGINT/SIGTERM too
// (signal.NotifyContext). On Linux every process also gets Pdeathsig=SIGKILL,
// so that a test binary killed without running Stop (e.g. by `go test
// -timeout`) takes its control plane down with it; elsewhere such processes
// are left behind.
package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/exec-reaper/exec-reaper/internal/pki"
)

// Deadlines for each stage of Start. They are generous because the machines
// that run these tests are small and often busy compiling; a healthy start
// takes a few seconds per stage.
const (
	// EtcdReadyTimeout bounds the wait for etcd's /health.
	EtcdReadyTimeout = 60 * time.Second
	// APIServerReadyTimeout bounds the wait for kube-apiserver's /readyz.
	APIServerReadyTimeout = 120 * time.Second
	// ControllerManagerReadyTimeout bounds the wait for the controller-manager
	// to create the default ServiceAccount.
	ControllerManagerReadyTimeout = 120 * time.Second
	// CRDEstablishedTimeout bounds the wait for a CustomResourceDefinition.
	CRDEstablishedTimeout = 60 * time.Second
	// GatekeeperReadyTimeout bounds the wait for Gatekeeper's /readyz.
	GatekeeperReadyTimeout = 120 * time.Second
	// WebhookEffectiveTimeout bounds the wait until the API server has called
	// Gatekeeper's webhook successfully.
	WebhookEffectiveTimeout = 60 * time.Second
	// StopTimeout bounds the API calls Stop makes before stopping processes.
	StopTimeout = 15 * time.Second

	// pollInterval is how often readiness conditions are checked.
	pollInterval = 100 * time.Millisecond
)

// Tools locates the binaries the cluster runs.
type Tools struct {
	// KubeDir holds etcd, kube-apiserver, kube-controller-manager and kubectl.
	KubeDir string
	// GatekeeperDir holds Gatekeeper's manager binary and its CRDs in crds/.
	GatekeeperDir string
	// NodeDir holds kubelet, kube-scheduler, containerd,
	// containerd-shim-runc-v2 and ctr (hack/tools.sh node).
	NodeDir string
}

// DefaultTools returns the tool locations from the environment:
// EXEC_REAPER_KUBE_TOOLS, EXEC_REAPER_GATEKEEPER and EXEC_REAPER_NODE_TOOLS,
// or else the directories
// hack/tools.sh builds into (under EXEC_REAPER_TOOLS_CACHE, else
// $XDG_CACHE_HOME/exec-reaper-tools or ~/.cache/exec-reaper-tools).
func DefaultTools() Tools {
	cache := os.Getenv("EXEC_REAPER_TOOLS_CACHE")
	if cache == "" {
		if dir, err := os.UserCacheDir(); err == nil {
			cache = filepath.Join(dir, "exec-reaper-tools")
		}
	}
	t := Tools{
		KubeDir:       filepath.Join(cache, kubeToolsDir),
		GatekeeperDir: filepath.Join(cache, gatekeeperToolsDir),
		NodeDir:       filepath.Join(cache, nodeToolsDir),
	}
	if d := os.Getenv("EXEC_REAPER_KUBE_TOOLS"); d != "" {
		t.KubeDir = d
	}
	if d := os.Getenv("EXEC_REAPER_GATEKEEPER"); d != "" {
		t.GatekeeperDir = d
	}
	if d := os.Getenv("EXEC_REAPER_NODE_TOOLS"); d != "" {
		t.NodeDir = d
	}
	return t
}

// check reports a missing binary with a hint on how to build it.
func (t Tools) check(gatekeeper bool) error {
	need := []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubectl"}
	for _, name := range need {
		if _, err := os.Stat(filepath.Join(t.KubeDir, name)); err != nil {
			return fmt.Errorf("%w (run hack/tools.sh kube, or set EXEC_REAPER_KUBE_TOOLS)", err)
		}
	}
	if gatekeeper {
		if _, err := os.Stat(filepath.Join(t.GatekeeperDir, "manager")); err != nil {
			return fmt.Errorf("%w (run hack/tools.sh gatekeeper, or set EXEC_REAPER_GATEKEEPER)", err)
		}
		if crds, _ := filepath.Glob(filepath.Join(t.GatekeeperDir, "crds", "*.yaml")); len(crds) == 0 {
			return fmt.Errorf("no CRDs in %s (run hack/tools.sh gatekeeper, or set EXEC_REAPER_GATEKEEPER)",
				filepath.Join(t.GatekeeperDir, "crds"))
		}
	}
	return nil
}

// Options configures Start.
type Options struct {
	// Tools locates the binaries; empty fields are taken from
	// DefaultTools().
	Tools Tools
	// Dir is the work directory for certificates, etcd data, kubeconfigs and
	// logs. The caller owns it (e.g. t.TempDir()); Stop leaves it in place so
	// logs survive a failure. It should be new or empty: Start would reuse an
	// earlier cluster's etcd data, signed with keys it no longer has.
	// Required.
	Dir string
	// Log receives one line per startup step, with timings. May be nil.
	Log io.Writer
	// Gatekeeper also installs Gatekeeper's CRDs, runs its manager and
	// registers its validating webhook, with CONNECT operations enabled.
	Gatekeeper bool
	// GatekeeperPre323 says that Tools.GatekeeperDir holds a manager older
	// than v3.23 (e.g. hack/tools.sh gatekeeper-old), which lacks the flags
	// --operation=generate and --shutdown-delay: it is started without them
	// (its webhook operation creates constraint CRDs itself).
	GatekeeperPre323 bool
	// Node also runs kube-scheduler and one real node (containerd and a
	// kubelet) that runs pods: Linux and root only, one per machine; Start
	// waits for NodeLockFile while another run's node is up. Stop deletes
	// every pod while the kubelet runs, then stops the node and removes what
	// it left on the machine (processes, mounts, cgroups, iptables chains,
	// the bridge). Needs hack/tools.sh node and hack/node-packages.sh.
	Node bool
}

// Cluster is a running local control plane. Its methods are safe for
// concurrent use.
type Cluster struct {
	// Dir is the work directory (Options.Dir).
	Dir string
	// Server is the API server's URL, https://127.0.0.1:<port>.
	Server string
	// AdminKubeconfig is a kubeconfig for user "admin" in group
	// system:masters.
	AdminKubeconfig string
	// CAFile is the cluster CA: it signs the API server's serving certificate
	// and every client certificate the API server accepts.
	CAFile string
	// GatekeeperCertDir holds Gatekeeper's tls.crt, tls.key and ca.crt, or is
	// empty without Options.Gatekeeper.
	GatekeeperCertDir string
	// GatekeeperWebhookURL is Gatekeeper's validating webhook endpoint, or is
	// empty without Options.Gatekeeper.
	GatekeeperWebhookURL string
	// GatekeeperMetricsURL is Gatekeeper's Prometheus endpoint (e.g. for
	// gatekeeper_external_data_request_count), or is empty without
	// Options.Gatekeeper.
	GatekeeperMetricsURL string

	tools   Tools
	log     io.Writer
	ca      *pki.CA
	client  kubernetes.Interface
	dynamic dynamic.Interface
	admin   *rest.Config

	mu        sync.Mutex
	core      []*Process // control plane, in start order
	extra     []*Process // from StartProcess, in start order
	node      *node      // the node's state, with Options.Node
	webhooks  bool       // Gatekeeper's webhook configuration is registered
	stopped   bool       // Stop has begun; StartProcess refuses
	stopOnce  sync.Once
	stopErr   error
	startTime time.Time
}

// Start runs a control plane in opts.Dir and returns when it is ready: the
// API server answers /readyz, the controller-manager has created the default
// ServiceAccount, and (with opts.Gatekeeper) Gatekeeper's webhook has
// answered an admission request. ctx bounds only the start; the processes run
// until Stop. If Start fails, everything it started is stopped again.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Dir == "" {
		return nil, errors.New("cluster: Options.Dir is required")
	}
	defaults := DefaultTools()
	if opts.Tools.KubeDir == "" {
		opts.Tools.KubeDir = defaults.KubeDir
	}
	if opts.Tools.GatekeeperDir == "" {
		opts.Tools.GatekeeperDir = defaults.GatekeeperDir
	}
	if opts.Tools.NodeDir == "" {
		opts.Tools.NodeDir = defaults.NodeDir
	}
	if err := opts.Tools.check(opts.Gatekeeper); err != nil {
		return nil, err
	}
	if opts.Node {
		if err := opts.Tools.checkNode(); err != nil {
			return nil, err
		}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	c := &Cluster{Dir: dir, tools: opts.Tools, log: log, startTime: time.Now()}
	if err := c.start(ctx, opts); err != nil {
		if stopErr := c.Stop(); stopErr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", stopErr))
		}
		return nil, fmt.Errorf("starting cluster: %w\n%s", err, c.Logs())
	}
	c.logf("cluster ready at %s", c.Server)
	return c, nil
}

func (c *Cluster) start(ctx context.Context, opts Options) error {
	if err := c.writePKI(); err != nil {
		return fmt.Errorf("writing certificates: %w", err)
	}
	if opts.Node {
		if err := c.startNodePrep(ctx); err != nil {
			return err
		}
	}
	etcdURL, err := c.startEtcd(ctx)
	if err != nil {
		return err
	}
	if err := c.startAPIServer(ctx, etcdURL); err != nil {
		return err
	}
	if err := c.startControllerManager(ctx); err != nil {
		return err
	}
	if opts.Node {
		if err := c.startNode(ctx); err != nil {
			return err
		}
	}
	if opts.Gatekeeper {
		if err := c.startGatekeeper(ctx, opts.GatekeeperPre323); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) logf(format string, args ...any) {
	fmt.Fprintf(c.log, "cluster: [%5.1fs] %s\n", time.Since(c.startTime).Seconds(), fmt.Sprintf(format, args...))
}

func (c *Cluster) pki(name string) string { return filepath.Join(c.Dir, "pki", name) }

func (c *Cluster) bin(name string) string { return filepath.Join(c.tools.KubeDir, name) }

// writePKI creates the cluster CA, the API server's serving and
// kubelet-client certificates and the service-account key pair.
func (c *Cluster) writePKI() error {
	ca, err := pki.NewCA("exec-reaper-test-cluster-ca")
	if err != nil {
		return err
	}
	c.ca = ca
	if err := writeCA(ca, c.pki(""), "ca"); err != nil {
		return err
	}
	c.CAFile = c.pki("ca.crt")
	serving, err := ca.Server("kube-apiserver", "127.0.0.1", "localhost", "10.0.0.1",
		"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
	if err != nil {
		return err
	}
	if err := writeFile(c.pki("apiserver.crt"), serving.CertPEM); err != nil {
		return err
	}
	if err := writeFile(c.pki("apiserver.key"), serving.KeyPEM); err != nil {
		return err
	}
	// The API server's client certificate towards kubelets, as in real
	// clusters (used only with a node).
	client, err := ca.Client("kube-apiserver-kubelet-client", "system:masters")
	if err != nil {
		return err
	}
	if err := writeFile(c.pki("apiserver-kubelet-client.crt"), client.CertPEM); err != nil {
		return err
	}
	if err := writeFile(c.pki("apiserver-kubelet-client.key"), client.KeyPEM); err != nil {
		return err
	}
	return writeRSAKeyPair(c.pki("sa.key"), c.pki("sa.pub"))
}

func (c *Cluster) startEtcd(ctx context.Context) (string, error) {
	clientPort, err := FreePort()
	if err != nil {
		return "", err
	}
	peerPort, err := FreePort()
	if err != nil {
		return "", err
	}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	p, err := c.startCore("etcd", []string{c.bin("etcd"),
		"--name=default",
		"--data-dir=" + filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=default=" + peerURL,
		"--unsafe-no-fsync",                // durability is worthless for a throwaway cluster; fsync is slow
		"--quota-backend-bytes=1073741824", // 1 GiB: plenty, and bounds the disk a runaway test can fill
		"--log-level=warn",
	}, nil)
	if err != nil {
		return "", err
	}
	// etcd answers /health with 503 until it has a leader.
	hc := &http.Client{Timeout: 2 * time.Second}
	err = c.poll(ctx, p, EtcdReadyTimeout, func(ctx context.Context) (bool, error) {
		return httpGetOK(ctx, hc, clientURL+"/health"), nil
	})
	if err != nil {
		return "", fmt.Errorf("waiting for etcd: %w", err)
	}
	c.logf("etcd ready at %s", clientURL)
	return clientURL, nil
}

func (c *Cluster) startAPIServer(ctx context.Context, etcdURL string) error {
	port, err := FreePort()
	if err != nil {
		return err
	}
	c.Server = fmt.Sprintf("https://127.0.0.1:%d", port)
	if c.AdminKubeconfig, err = c.Kubeconfig("admin", "admin", "system:masters"); err != nil {
		return err
	}
	if c.admin, err = c.RESTConfig(c.AdminKubeconfig); err != nil {
		return err
	}
	if c.client, err = kubernetes.NewForConfig(c.admin); err != nil {
		return err
	}
	if c.dynamic, err = dynamic.NewForConfig(c.admin); err != nil {
		return err
	}
	p, err := c.startCore("kube-apiserver", []string{c.bin("kube-apiserver"),
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + c.pki("apiserver.crt"),
		"--tls-private-key-file=" + c.pki("apiserver.key"),
		"--client-ca-file=" + c.CAFile,
		"--authorization-mode=Node,RBAC",
		// As in real clusters: kubelets may change only their own Node and
		// its pods' status.
		"--enable-admission-plugins=NodeRestriction",
		// Streams (exec, attach, port-forward, logs) to the kubelet, which
		// serves a certificate from the cluster CA on the node IP.
		"--kubelet-client-certificate=" + c.pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + c.pki("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + c.CAFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + c.pki("sa.pub"),
		"--service-account-signing-key-file=" + c.pki("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		// The "kubernetes" Service's endpoint would be 127.0.0.1, which
		// Endpoints reject (loopback); nothing in the tests runs in a pod
		// that could use it anyway.
		"--endpoint-reconciler-type=none",
		// Priority and fairness stays on, as in every real cluster: the
		// chart's FlowSchema for the provider must be matched
		// (TestProviderPriorityLevel).
		"--profiling=false",
	}, nil)
	if err != nil {
		return err
	}
	err = c.poll(ctx, p, APIServerReadyTimeout, func(ctx context.Context) (bool, error) {
		var status int
		res := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		return res.Error() == nil && status == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for kube-apiserver /readyz: %w", err)
	}
	c.logf("kube-apiserver ready at %s", c.Server)
	return nil
}

func (c *Cluster) startControllerManager(ctx context.Context) error {
	// The controller-manager runs every controller with its own credentials
	// (--use-service-account-credentials=false), so it needs more than the
	// system:kube-controller-manager role grants; system:masters is the
	// simplest honest answer on a test cluster.
	kubeconfig, err := c.Kubeconfig("kube-controller-manager", "system:kube-controller-manager", "system:masters")
	if err != nil {
		return err
	}
	port, err := FreePort()
	if err != nil {
		return err
	}
	p, err := c.startCore("kube-controller-manager", []string{c.bin("kube-controller-manager"),
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		// Its own HTTPS endpoint trusts the cluster CA; without front-proxy
		// certificates, looking up the request-header CA only logs errors.
		"--client-ca-file=" + c.CAFile,
		"--authentication-skip-lookup=true",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(c.Dir, "kube-controller-manager"),
		"--service-account-private-key-file=" + c.pki("sa.key"),
		"--root-ca-file=" + c.CAFile,
		"--cluster-signing-cert-file=" + c.CAFile,
		"--cluster-signing-key-file=" + c.pki("ca.key"),
		"--use-service-account-credentials=false",
		"--leader-elect=false",
		// Everything on by default except what needs a cloud or pod CIDRs
		// per node (the local node's CNI has its own subnet). The node
		// lifecycle controller removes the not-ready taint a kubelet
		// registers with.
		"--controllers=*,-node-ipam-controller,-cloud-node-lifecycle-controller," +
			"-node-route-controller,-service-lb-controller",
		"--profiling=false",
	}, nil)
	if err != nil {
		return err
	}
	// The serviceaccount controller creating "default" in the default
	// namespace shows the controllers run; pods cannot be created in a
	// namespace before its default ServiceAccount exists anyway.
	err = c.poll(ctx, p, ControllerManagerReadyTimeout, func(ctx context.Context) (bool, error) {
		_, err := c.client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for kube-controller-manager to create the default ServiceAccount: %w", err)
	}
	if c.node != nil {
		c.node.controllerManager = p
	}
	c.logf("kube-controller-manager ready")
	return nil
}

// startCore starts a control-plane process, to be stopped by Stop in reverse
// order.
func (c *Cluster) startCore(name string, args, env []string) (*Process, error) {
	p, err := c.startProcess(name, args, env)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.core = append(c.core, p)
	c.mu.Unlock()
	return p, nil
}

// poll checks cond every pollInterval until it returns true, returns an
// error, ctx is done, timeout passes, or p (if not nil) exits.
func (c *Cluster) poll(ctx context.Context, p *Process, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var exited error
	err := wait.PollUntilContextCancel(ctx, pollInterval, true, func(ctx context.Context) (bool, error) {
		if p != nil {
			if done, err := p.Exited(); done {
				exited = fmt.Errorf("%s exited: %v (log: %s)", p.Name, err, p.LogFile)
				return false, exited
			}
		}
		return cond(ctx)
	})
	if exited != nil {
		return exited
	}
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("not ready after %s: %w", timeout, err)
	}
	return err
}

// Kubeconfig issues a client certificate for user (the certificate's CN) in
// groups (its O), signed by the cluster CA, and writes a kubeconfig that
// embeds it as Dir/kubeconfigs/<name>.kubeconfig. It returns the file's path.
// The API server adds system:authenticated by itself; a service account's
// groups (system:serviceaccounts, system:serviceaccounts:<namespace>) must be
// listed to impersonate one faithfully.
func (c *Cluster) Kubeconfig(name, user string, groups ...string) (path string, err error) {
	if name == "" || filepath.Base(name) != name {
		return "", fmt.Errorf("kubeconfig name %q must be a plain file name", name)
	}
	pair, err := c.ca.Client(user, groups...)
	if err != nil {
		return "", fmt.Errorf("issuing client certificate for %s: %w", user, err)
	}
	certPEM, keyPEM := pair.CertPEM, pair.KeyPEM
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthorityData: c.ca.CertPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: "local", AuthInfo: name, Namespace: metav1.NamespaceDefault}
	cfg.CurrentContext = name
	path = filepath.Join(c.Dir, "kubeconfigs", name+".kubeconfig")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("writing kubeconfig for %s: %w", user, err)
	}
	return path, nil
}

// Client returns a clientset authenticated as the admin (system:masters).
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// Dynamic returns a dynamic client authenticated as the admin, for custom
// resources such as Gatekeeper's.
func (c *Cluster) Dynamic() dynamic.Interface { return c.dynamic }

// RESTConfig loads a kubeconfig written by Kubeconfig (or any other); ""
// means AdminKubeconfig. The result is a fresh copy the caller may change.
func (c *Cluster) RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		kubeconfig = c.AdminKubeconfig
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	// Tests create objects in bursts; the default 5 QPS only slows them.
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}

// Kubectl runs the real kubectl binary with --kubeconfig=kubeconfig (""
// means AdminKubeconfig) and args, and returns its output. err is non-nil
// if kubectl exits non-zero; stderr then usually says why.
func (c *Cluster) Kubectl(ctx context.Context, kubeconfig string, args ...string) (stdout, stderr string, err error) {
	if kubeconfig == "" {
		kubeconfig = c.AdminKubeconfig
	}
	cmd := exec.CommandContext(ctx, c.bin("kubectl"), append([]string{"--kubeconfig=" + kubeconfig}, args...)...)
	// Keep the user's kubectl settings (KUBECONFIG, KUBECTL_* feature
	// gates, ~/.kube/cache) out of the test.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBECONFIG=") && !strings.HasPrefix(kv, "KUBECTL_") && !strings.HasPrefix(kv, "HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+filepath.Join(c.Dir, "kubectl-home"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), errOut.String(), err
}

// ApplyFile runs `kubectl apply -f path` as kubeconfig ("" means admin).
// path may be a file, a directory or a URL, as for kubectl.
func (c *Cluster) ApplyFile(ctx context.Context, kubeconfig, path string) error {
	_, _, err := c.Kubectl(ctx, kubeconfig, "apply", "-f", path)
	return err
}

// Logs returns the last lines of every component's log (control plane and
// StartProcess), for a test's failure output.
func (c *Cluster) Logs() string {
	const tailLines = 80
	c.mu.Lock()
	procs := append(append([]*Process(nil), c.core...), c.extra...)
	c.mu.Unlock()
	var b strings.Builder
	for _, p := range procs {
		fmt.Fprintf(&b, "----- %s (last %d lines of %s) -----\n", p.Name, tailLines, p.LogFile)
		lines, err := tail(p.LogFile, tailLines)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
		}
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// tail returns the last n lines of a file.
func tail(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		lines = append(lines, s.Text())
		if len(lines) > 2*n {
			lines = append(lines[:0:0], lines[len(lines)-n:]...)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, s.Err()
}

// Stop tears the cluster down: it removes Gatekeeper's webhook configuration
// first (so the API server stops calling a webhook that is about to
// disappear), then stops the processes from StartProcess; with a node, it
// stops kube-controller-manager and kube-scheduler, deletes every pod and
// waits for the kubelet to remove them, stops the kubelet and containerd and
// cleans the machine (see Options.Node); then it stops Gatekeeper,
// kube-controller-manager, kube-apiserver and finally etcd, each with
// SIGTERM and then SIGKILL after StopGracePeriod. Stopping the API server
// before etcd spares it a storm of reconnects. Stop is idempotent and
// returns the same result every time; it leaves Dir in place.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	var errs []error
	c.mu.Lock()
	webhooks := c.webhooks
	c.stopped = true
	c.mu.Unlock()
	if webhooks {
		ctx, cancel := context.WithTimeout(context.Background(), StopTimeout)
		err := c.deleteGatekeeperWebhooks(ctx)
		cancel()
		if err != nil {
			errs = append(errs, err)
		}
	}
	c.mu.Lock()
	core := append([]*Process(nil), c.core...)
	extra := append([]*Process(nil), c.extra...)
	n := c.node
	c.mu.Unlock()
	// Reverse start order: clients first, etcd last.
	for i := len(extra) - 1; i >= 0; i-- {
		if err := extra[i].Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	stopped := map[*Process]bool{}
	stopOne := func(p *Process) {
		if stopped[p] {
			return
		}
		stopped[p] = true
		// A control-plane component that exited before Stop is a failure
		// the caller should hear about.
		if done, err := p.Exited(); done {
			errs = append(errs, fmt.Errorf("%s had exited before Stop: %v (log: %s)", p.Name, err, p.LogFile))
			return
		}
		if err := p.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if n != nil {
		errs = append(errs, c.stopNode(stopOne)...)
	}
	for i := len(core) - 1; i >= 0; i-- {
		stopOne(core[i])
	}
	return errors.Join(errs...)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another
// process may take it before the caller binds it; on a test machine that is
// rare enough to accept.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ensureNamespace creates ns if it does not exist.
func (c *Cluster) ensureNamespace(ctx context.Context, ns string) error {
	_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", ns, err)
	}
	return nil
}

// httpGetOK reports whether GET url returns 200.
func httpGetOK(ctx context.Context, hc *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

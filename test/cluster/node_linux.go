package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// The node's fixed identity on this machine. Only one node runs per machine
// at a time (see NodeLockFile), so fixed names are safe and make leftovers
// of a crashed run easy to recognise.
const (
	// NodeName is the Node object's name; the kubelet authenticates as
	// system:node:<NodeName> in group system:nodes.
	NodeName = "exec-reaper-node"
	// NodeLockFile is the advisory lock (flock) that Start with Options.Node
	// holds until Stop, so two test binaries or demos never run two nodes on
	// one machine. Shell scripts may take the same lock with flock(1).
	NodeLockFile = "/tmp/exec-reaper-node.lock"
	// nodeStateFile records what a running node may leave behind, so that
	// the next Start or CleanupNode can remove it after a crash.
	nodeStateFile = "/tmp/exec-reaper-node.state.json"

	// PodSubnet is the pods' private network, behind the bridge PodBridge.
	PodSubnet = "10.88.77.0/24"
	// PodBridge is the Linux bridge the CNI bridge plugin creates.
	PodBridge  = "xr-cni0"
	cniNetwork = "exec-reaper"

	// kubeletPort is the kubelet's HTTPS port (exec, attach, port-forward,
	// logs), on the node IP.
	kubeletPort = 10250
	// kubeletHealthzPort is the kubelet's plain /healthz, on 127.0.0.1.
	kubeletHealthzPort = 10248

	// NodeReadyTimeout bounds the wait for the Node to report Ready.
	NodeReadyTimeout = 120 * time.Second
	// NodeLockTimeout bounds the wait for another run's node to go.
	NodeLockTimeout = 10 * time.Minute
	// PodDrainTimeout bounds Stop's wait for the kubelet to stop and remove
	// every pod before the node's processes are stopped.
	PodDrainTimeout = 60 * time.Second
)

// CNI plugins from Debian's containernetworking-plugins.
const cniBinDir = "/usr/lib/cni"

// node is the running node's part of a Cluster.
type node struct {
	lock      *os.File
	footprint footprint
	recorded  bool // footprint is complete and in nodeStateFile
	// before is NodeLeftovers once this run holds the lock and an earlier
	// node's leftovers are cleaned: what Stop compares against, still under
	// the lock, so another run's node is never in either list.
	before []string
	ip     string
	sock   string // containerd's socket

	scheduler, containerd, kubelet, controllerManager *Process
}

// footprint is what a node may leave on the machine beyond its Dir, and how
// the machine looked before, so that cleanup removes only what the node
// added. It is stored in nodeStateFile while the node runs.
type footprint struct {
	Dir      string // the cluster's Dir: every mount under it goes
	ShimPath string // containerd-shim-runc-v2: every such process goes
	// Created lists the machine-wide paths that did not exist before the
	// node and are removed after it (e.g. /run/containerd, /var/lib/cni).
	Created []string
	// Chains lists the iptables chains that existed before, per
	// "<command> <table>"; chains the node added are removed.
	Chains map[string][]string
	// IPForward is net.ipv4.ip_forward before the node (the bridge plugin
	// sets it to 1); it is restored.
	IPForward string
	// Kubepods tells that a kubepods cgroup existed before (another
	// kubelet): then cgroups are left alone.
	Kubepods bool
}

// machinePaths are directories outside Dir that the node's components
// create and that cannot be moved: containerd's shim sockets
// (/run/containerd/s), libcni's result cache (/var/lib/cni), the kubelet's
// container log symlinks (/var/log/containers) and pod logs default.
var machinePaths = []string{"/run/containerd", "/var/lib/cni", "/var/log/containers", "/var/log/pods", "/run/nri", "/etc/cni"}

var iptablesTables = []string{"filter", "nat", "mangle"}

// hostTools are the binaries a node needs from the machine, with the
// Debian package that provides each.
var hostTools = []struct{ path, pkg string }{
	{"runc", "runc"},
	{cniBinDir + "/bridge", "containernetworking-plugins"},
	{cniBinDir + "/host-local", "containernetworking-plugins"},
	{cniBinDir + "/loopback", "containernetworking-plugins"},
	{"iptables", "iptables"},
	{"conntrack", "conntrack"},
	{"ip", "iproute2"},
}

func (t Tools) checkNode() error {
	for _, name := range []string{"kubelet", "kube-scheduler", "containerd", "containerd-shim-runc-v2", "ctr"} {
		if _, err := os.Stat(filepath.Join(t.NodeDir, name)); err != nil {
			return fmt.Errorf("%w (run hack/tools.sh node, or set EXEC_REAPER_NODE_TOOLS)", err)
		}
	}
	for _, h := range hostTools {
		if _, err := exec.LookPath(h.path); err != nil {
			return fmt.Errorf("the local node needs %s from the Debian package %s: %w (run hack/node-packages.sh as root)", h.path, h.pkg, err)
		}
	}
	if _, err := findBusybox(); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("configuration error: a local node (Options.Node) must run as root: the kubelet and containerd manage cgroups, mounts and network namespaces")
	}
	return nil
}

// lockNode takes NodeLockFile, waiting while another run holds it.
func (c *Cluster) lockNode(ctx context.Context) (*os.File, error) {
	f, err := os.OpenFile(NodeLockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the node lock: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, NodeLockTimeout)
	defer cancel()
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", NodeLockFile, err)
		}
		if !logged {
			c.logf("waiting for %s: another test run or demo has a node on this machine (make down stops a demo)", NodeLockFile)
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another run holds %s, so a second node cannot start on this machine: %w", NodeLockFile, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// startNodePrep runs before the control plane: lock, clean a crashed run's
// leftovers, record the machine's state, issue the certificates.
func (c *Cluster) startNodePrep(ctx context.Context) error {
	lock, err := c.lockNode(ctx)
	if err != nil {
		return err
	}
	n := &node{lock: lock}
	c.mu.Lock()
	c.node = n
	c.mu.Unlock()
	if err := CleanupStaleNode(c.log); err != nil {
		return fmt.Errorf("cleaning up after an earlier node: %w", err)
	}
	n.before = NodeLeftovers()
	if n.ip, err = nodeIP(); err != nil {
		return err
	}
	if err := checkSubnetFree(); err != nil {
		return err
	}
	n.footprint = footprint{
		Dir:       c.Dir,
		ShimPath:  filepath.Join(c.tools.NodeDir, "containerd-shim-runc-v2"),
		Chains:    iptablesChains(),
		IPForward: readIPForward(),
		Kubepods:  len(kubepodsCgroups()) > 0,
	}
	for _, p := range machinePaths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			n.footprint.Created = append(n.footprint.Created, p)
		}
	}
	b, err := json.MarshalIndent(n.footprint, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(nodeStateFile, b, 0o644); err != nil {
		return fmt.Errorf("recording the node's footprint: %w", err)
	}
	n.recorded = true
	// The kubelet serves on the node IP with a certificate from the
	// cluster CA, which the API server checks.
	serving, err := c.ca.Server(NodeName, n.ip, NodeName)
	if err != nil {
		return err
	}
	if err := writeFile(c.pki("kubelet.crt"), serving.CertPEM); err != nil {
		return err
	}
	return writeFile(c.pki("kubelet.key"), serving.KeyPEM)
}

// startNode starts kube-scheduler, containerd and the kubelet, imports the
// local images and waits for the Node to be Ready.
func (c *Cluster) startNode(ctx context.Context) error {
	n := c.node
	if err := c.startScheduler(); err != nil {
		return err
	}
	if err := c.startContainerd(ctx); err != nil {
		return err
	}
	if err := c.importImages(ctx); err != nil {
		return err
	}
	if err := c.startKubelet(ctx); err != nil {
		return err
	}
	c.logf("node %s Ready (%s, pods on %s)", NodeName, n.ip, PodSubnet)
	return nil
}

func (c *Cluster) nodeBin(name string) string { return filepath.Join(c.tools.NodeDir, name) }

func (c *Cluster) startScheduler() error {
	kubeconfig, err := c.Kubeconfig("kube-scheduler", "system:kube-scheduler")
	if err != nil {
		return err
	}
	port, err := FreePort()
	if err != nil {
		return err
	}
	p, err := c.startCore("kube-scheduler", []string{c.nodeBin("kube-scheduler"),
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--client-ca-file=" + c.CAFile,
		"--authentication-skip-lookup=true",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--leader-elect=false",
		"--profiling=false",
	}, nil)
	if err != nil {
		return err
	}
	c.node.scheduler = p
	c.logf("kube-scheduler started")
	return nil
}

func (c *Cluster) nodeDir(elem ...string) string {
	return filepath.Join(append([]string{c.Dir, "node"}, elem...)...)
}

func (c *Cluster) startContainerd(ctx context.Context) error {
	n := c.node
	cniConf := c.nodeDir("cni", "net.d")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		return err
	}
	conflist := map[string]any{
		"cniVersion": "1.0.0",
		"name":       cniNetwork,
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      PodBridge,
			"isGateway":   true,
			"ipMasq":      false,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": PodSubnet}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": c.nodeDir("cni", "ipam"),
			},
		}},
	}
	b, err := json.MarshalIndent(conflist, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cniConf, "10-exec-reaper.conflist"), b, 0o644); err != nil {
		return err
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return err
	}
	n.sock = c.nodeDir("containerd", "containerd.sock")
	// Config version 3 is containerd 2.x's. Everything lives under Dir
	// except what containerd hard-codes (the shim sockets in
	// /run/containerd/s), which cleanup removes.
	config := fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
# NRI would listen on /var/run/nri; the image verifier reads /opt.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.image-verifier.v1.bindir"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %[6]q

[plugins."io.containerd.cri.v1.runtime"]
  # This machine's root may lack CAP_SYS_RESOURCE: runc cannot then lower a
  # sandbox's oom_score_adj below containerd's own, and every sandbox fails.
  restrict_oom_score_adj = true
  # Network namespaces under the state dir instead of /run/netns.
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%[7]q]
    conf_dir = %[8]q
    max_conf_num = 1
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = %[9]q
        SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
`, c.nodeDir("containerd", "root"), c.nodeDir("containerd", "state"), n.sock, n.sock+".ttrpc",
		c.nodeDir("containerd", "opt"), PauseImage, cniBinDir, cniConf, runc)
	configPath := c.nodeDir("containerd", "config.toml")
	if err := writeFile(configPath, []byte(config)); err != nil {
		return err
	}
	// containerd finds its shim on PATH.
	env := []string{"PATH=" + c.tools.NodeDir + string(os.PathListSeparator) + os.Getenv("PATH")}
	p, err := c.startCore("containerd", []string{c.nodeBin("containerd"), "--config=" + configPath, "--log-level=warn"}, env)
	if err != nil {
		return err
	}
	n.containerd = p
	err = c.poll(ctx, p, NodeReadyTimeout, func(ctx context.Context) (bool, error) {
		conn, err := net.DialTimeout("unix", n.sock, time.Second)
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for containerd's socket: %w", err)
	}
	c.logf("containerd ready")
	return nil
}

// importImages builds the local images and imports them into the CRI's
// namespace.
func (c *Cluster) importImages(ctx context.Context) error {
	paths, err := buildImages(ctx, c.nodeDir("images"))
	if err != nil {
		return fmt.Errorf("building the node's images: %w", err)
	}
	for _, p := range paths {
		out, err := exec.CommandContext(ctx, c.nodeBin("ctr"), "--address="+c.node.sock, "--namespace=k8s.io",
			"images", "import", "--platform=linux/"+runtime.GOARCH, p).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr images import %s: %w\n%s", p, err, out)
		}
	}
	c.logf("images %s and %s imported", PauseImage, BusyboxImage)
	return nil
}

// StaticPodDir is the node's static pod directory (the kubelet's
// staticPodPath): a pod manifest written there runs as a static pod, with a
// mirror pod in the API. Whoever writes one removes it.
func (c *Cluster) StaticPodDir() string { return c.nodeDir("kubelet", "manifests") }

func (c *Cluster) startKubelet(ctx context.Context) error {
	n := c.node
	kubeconfig, err := c.Kubeconfig("kubelet", "system:node:"+NodeName, "system:nodes")
	if err != nil {
		return err
	}
	config := map[string]any{
		"kind":               "KubeletConfiguration",
		"apiVersion":         "kubelet.config.k8s.io/v1beta1",
		"address":            n.ip,
		"port":               kubeletPort,
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"healthzPort":        kubeletHealthzPort,
		"tlsCertFile":        c.pki("kubelet.crt"),
		"tlsPrivateKeyFile":  c.pki("kubelet.key"),
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": c.CAFile},
		},
		"authorization":            map[string]any{"mode": "Webhook"},
		"containerRuntimeEndpoint": "unix://" + n.sock,
		// This machine kind mounts cgroup v1 hierarchies; kubelet 1.36
		// refuses v1 unless told, and the cgroupfs driver needs no systemd.
		"failCgroupV1": false,
		"cgroupDriver": "cgroupfs",
		"failSwapOn":   false,
		// A small test disk must neither evict test pods nor have the
		// kubelet delete the local images (they cannot be pulled back).
		"evictionHard": map[string]string{
			"memory.available": "50Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%", "imagefs.available": "1%",
		},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"podLogsDir":                  c.nodeDir("pod-logs"),
		"serializeImagePulls":         false,
		"shutdownGracePeriod":         "0s",
		// Faster status for tests: the default 10s heartbeat is fine, but
		// the first status after registration should not wait long.
		"nodeStatusUpdateFrequency": "5s",
		// Static pods: a test writes a manifest here to get a mirror pod.
		"staticPodPath":      c.StaticPodDir(),
		"fileCheckFrequency": "2s",
	}
	if err := os.MkdirAll(c.StaticPodDir(), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(config, "", "  ")
	if err != nil {
		return err
	}
	configPath := c.nodeDir("kubelet", "config.json")
	if err := writeFile(configPath, b); err != nil {
		return err
	}
	// The kubelet calls iptables and the CNI plugins are called by
	// containerd; the machine's PATH provides them.
	started := time.Now()
	p, err := c.startCore("kubelet", []string{c.nodeBin("kubelet"),
		"--config=" + configPath,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + c.nodeDir("kubelet", "root"),
		"--cert-dir=" + c.nodeDir("kubelet", "pki"),
		"--hostname-override=" + NodeName,
		"--node-ip=" + n.ip,
		"--v=1",
	}, nil)
	if err != nil {
		return err
	}
	n.kubelet = p
	// Ready from a heartbeat after this start, not from stale status.
	err = c.poll(ctx, p, NodeReadyTimeout, func(ctx context.Context) (bool, error) {
		node, err := c.client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, t := range node.Spec.Taints {
			if t.Key == corev1.TaintNodeNotReady {
				return false, nil
			}
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue && cond.LastHeartbeatTime.After(started.Add(-time.Second)), nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for node %s to be Ready: %w", NodeName, err)
	}
	return nil
}

// stopNode runs in Stop after the webhooks and StartProcess's processes are
// gone: it stops what would recreate pods (controller-manager, scheduler),
// has the kubelet stop and delete every pod, stops the kubelet and
// containerd, and removes everything they left on the machine. stopOne
// stops a core process and records that it did.
func (c *Cluster) stopNode(stopOne func(*Process)) []error {
	n := c.node
	var errs []error
	for _, p := range []*Process{n.controllerManager, n.scheduler} {
		if p != nil {
			stopOne(p)
		}
	}
	if n.kubelet != nil {
		if done, _ := n.kubelet.Exited(); !done {
			if err := c.drainPods(); err != nil {
				errs = append(errs, err)
			}
		}
		stopOne(n.kubelet)
	}
	if n.containerd != nil {
		stopOne(n.containerd)
	}
	if n.recorded {
		if err := cleanupNode(n.footprint, c.log); err != nil {
			// The state file stays, so the next Start or make down retries.
			errs = append(errs, err)
		} else if err := os.Remove(nodeStateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	// The node must leave the machine as it found it; checked before the
	// lock is released, while no other run can have a node here.
	if n.before != nil {
		if after := NodeLeftovers(); !slices.Equal(n.before, after) {
			errs = append(errs, fmt.Errorf("the node left the machine changed (make down cleans up):\n  before: %q\n  after:  %q", n.before, after))
		}
	}
	if n.lock != nil {
		n.lock.Close() // releases the flock
	}
	return errs
}

// drainPods deletes every pod and waits until the kubelet has stopped and
// removed them all, so their containers, mounts and network namespaces are
// gone before the kubelet is.
func (c *Cluster) drainPods() error {
	ctx, cancel := context.WithTimeout(context.Background(), PodDrainTimeout)
	defer cancel()
	nss, err := c.client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing namespaces to delete their pods: %w", err)
	}
	// A short grace period: the kubelet still stops each container, and
	// confirms the deletion once it has.
	opts := metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](1)}
	for _, ns := range nss.Items {
		if err := c.client.CoreV1().Pods(ns.Name).DeleteCollection(ctx, opts, metav1.ListOptions{}); err != nil {
			return fmt.Errorf("deleting pods in %s: %w", ns.Name, err)
		}
	}
	// The controller-manager is already stopped, so finalizers that its
	// controllers would have removed (a Job's pods carry
	// batch.kubernetes.io/job-tracking) would keep a pod's API object
	// forever. Removing them does not skip the kubelet's part: it still
	// stops the containers before it confirms the deletion.
	if err := c.dropPodFinalizers(ctx); err != nil {
		return err
	}
	var left []string
	err = c.poll(ctx, nil, PodDrainTimeout, func(ctx context.Context) (bool, error) {
		pods, err := c.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		left = left[:0]
		for _, p := range pods.Items {
			if p.Spec.NodeName != NodeName {
				// Not on this node (never scheduled, or bound to a Node
				// object without a kubelet): nothing runs; only the API
				// object is left, and it goes with etcd.
				continue
			}
			left = append(left, p.Namespace+"/"+p.Name)
		}
		return len(left) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("the kubelet did not remove pods %v: %w", left, err)
	}
	c.logf("every pod stopped and removed by the kubelet")
	return nil
}

// dropPodFinalizers removes the finalizers of every pod on the node.
func (c *Cluster) dropPodFinalizers(ctx context.Context) error {
	pods, err := c.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + NodeName})
	if err != nil {
		return fmt.Errorf("listing pods to drop their finalizers: %w", err)
	}
	for _, p := range pods.Items {
		if len(p.Finalizers) == 0 {
			continue
		}
		_, err := c.client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType,
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("dropping the finalizers of pod %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

// CleanupStaleNode removes what a node of an earlier run left on this
// machine, if that run ended without Stop (killed, crashed): its processes,
// mounts, cgroups, iptables chains, bridge and files. It does nothing when
// no such run is recorded. The caller must hold NodeLockFile (Start does;
// see also CleanupNode).
func CleanupStaleNode(log io.Writer) error {
	b, err := os.ReadFile(nodeStateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var fp footprint
	if err := json.Unmarshal(b, &fp); err != nil {
		return fmt.Errorf("reading %s (delete it if no node runs): %w", nodeStateFile, err)
	}
	fmt.Fprintf(orDiscard(log), "cluster: removing what the node of an earlier run left (%s)\n", fp.Dir)
	if err := cleanupNode(fp, log); err != nil {
		return err
	}
	return os.Remove(nodeStateFile)
}

// CleanupNode takes NodeLockFile without waiting and runs CleanupStaleNode.
// It fails if a node is running (its owner holds the lock).
func CleanupNode(log io.Writer) error {
	f, err := os.OpenFile(NodeLockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("a node is running on this machine (%s is locked): stop it first: %w", NodeLockFile, err)
	}
	return CleanupStaleNode(log)
}

// cleanupNode removes everything in fp, in dependency order: processes,
// then mounts, then cgroups, network state and files.
func cleanupNode(fp footprint, log io.Writer) error {
	var errs []error
	if err := killNodeProcesses(fp); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(append([]string{fp.Dir}, fp.Created...)); err != nil {
		errs = append(errs, err)
	}
	if !fp.Kubepods {
		if err := removeKubepodsCgroups(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeNewChains(fp.Chains); err != nil {
		errs = append(errs, err)
	}
	if _, err := os.Stat("/sys/class/net/" + PodBridge); err == nil {
		if out, err := exec.Command("ip", "link", "delete", PodBridge).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("deleting bridge %s: %w: %s", PodBridge, err, out))
		}
	}
	for _, p := range fp.Created {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if fp.IPForward != "" && readIPForward() != fp.IPForward {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte(fp.IPForward), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restoring net.ipv4.ip_forward: %w", err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("cleaning up the node: %w", errors.Join(errs...))
	}
	fmt.Fprintln(orDiscard(log), "cluster: node cleaned up (processes, mounts, cgroups, iptables chains, bridge, files)")
	return nil
}

// killNodeProcesses SIGKILLs every containerd shim of this node and every
// process in a kubepods cgroup (containers), until none is left.
func killNodeProcesses(fp footprint) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids := nodePids(fp)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v survived SIGKILL", pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(pollInterval) // let the kernel reap them before looking again
	}
}

// nodePids lists this node's shims and the processes of its containers.
func nodePids(fp footprint) []int {
	seen := map[int]bool{}
	var pids []int
	add := func(pid int) {
		if pid > 1 && pid != os.Getpid() && !seen[pid] {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	if fp.ShimPath != "" {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil &&
				strings.TrimSuffix(exe, " (deleted)") == fp.ShimPath {
				add(pid)
			}
		}
	}
	if !fp.Kubepods {
		for _, cg := range kubepodsCgroups() {
			_ = filepath.WalkDir(cg, func(path string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(path)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						add(pid)
					}
				}
				return nil
			})
		}
	}
	return pids
}

// unmountUnder lazily unmounts every mount at or below the given paths,
// deepest first.
func unmountUnder(roots []string) error {
	var errs []error
	for range 5 { // a mount may hide another at the same point
		var targets []string
		for _, m := range mountPoints() {
			for _, r := range roots {
				if r != "" && (m == r || strings.HasPrefix(m, r+"/")) {
					targets = append(targets, m)
					break
				}
			}
		}
		if len(targets) == 0 {
			return nil
		}
		// Deepest first.
		for i := len(targets) - 1; i >= 0; i-- {
			if err := syscall.Unmount(targets[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", targets[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// mountPoints returns the mount points of this mount namespace, in mount
// order.
func mountPoints() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			out = append(out, unescapeMount(f[4]))
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

const cgroupRoot = "/sys/fs/cgroup"

// kubepodsCgroups lists the kubepods cgroup of every hierarchy (v1 and v2).
func kubepodsCgroups() []string {
	var out []string
	candidates := []string{filepath.Join(cgroupRoot, "kubepods")}
	if entries, err := os.ReadDir(cgroupRoot); err == nil {
		for _, e := range entries {
			candidates = append(candidates, filepath.Join(cgroupRoot, e.Name(), "kubepods"))
		}
	}
	for _, p := range candidates {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			out = append(out, p)
		}
	}
	return out
}

// removeKubepodsCgroups removes every kubepods cgroup, children first.
func removeKubepodsCgroups() error {
	var errs []error
	for _, root := range kubepodsCgroups() {
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// iptablesCommands are the iptables front ends present on the machine.
func iptablesCommands() []string {
	var out []string
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if _, err := exec.LookPath(cmd); err == nil {
			out = append(out, cmd)
		}
	}
	return out
}

// iptablesChains lists the user-defined chains per "<command> <table>".
func iptablesChains() map[string][]string {
	out := map[string][]string{}
	for _, cmd := range iptablesCommands() {
		for _, table := range iptablesTables {
			b, err := exec.Command(cmd, "-w", "-t", table, "-S").Output()
			if err != nil {
				continue
			}
			var chains []string
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "-N" {
					chains = append(chains, f[1])
				}
			}
			out[cmd+" "+table] = chains
		}
	}
	return out
}

// removeNewChains deletes the chains that are not in before, and every
// rule that jumps to them.
func removeNewChains(before map[string][]string) error {
	var errs []error
	for key, chains := range iptablesChains() {
		old := map[string]bool{}
		for _, ch := range before[key] {
			old[ch] = true
		}
		var added []string
		for _, ch := range chains {
			if !old[ch] {
				added = append(added, ch)
			}
		}
		if len(added) == 0 {
			continue
		}
		cmd, table, _ := strings.Cut(key, " ")
		isNew := map[string]bool{}
		for _, ch := range added {
			isNew[ch] = true
		}
		b, err := exec.Command(cmd, "-w", "-t", table, "-S").Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s -t %s -S: %w", cmd, table, err))
			continue
		}
		// Rules in old chains that jump to a new chain.
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "-A" || isNew[f[1]] {
				continue
			}
			for i := 2; i+1 < len(f); i++ {
				if (f[i] == "-j" || f[i] == "-g") && isNew[f[i+1]] {
					args := append([]string{"-w", "-t", table, "-D"}, f[1:]...)
					if out, err := exec.Command(cmd, args...).CombinedOutput(); err != nil {
						errs = append(errs, fmt.Errorf("%s %v: %w: %s", cmd, args, err, out))
					}
					break
				}
			}
		}
		for _, ch := range added {
			_ = exec.Command(cmd, "-w", "-t", table, "-F", ch).Run()
		}
		for _, ch := range added {
			if out, err := exec.Command(cmd, "-w", "-t", table, "-X", ch).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("%s -t %s -X %s: %w: %s", cmd, table, ch, err, out))
			}
		}
	}
	return errors.Join(errs...)
}

func readIPForward() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// nodeIP returns the machine's first non-loopback IPv4 address on an
// interface that is up: the kubelet serves there and pods reach it.
func nodeIP() (string, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	for _, iface := range ifaces {
		if iface.Flags&net.FlagUp == 0 || iface.Flags&net.FlagLoopback != 0 || iface.Name == PodBridge {
			continue
		}
		addrs, _ := iface.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
				return ipn.IP.String(), nil
			}
		}
	}
	return "", errors.New("configuration error: the local node needs a non-loopback IPv4 address on an interface that is up, and this machine has none")
}

// checkSubnetFree refuses to start when PodSubnet overlaps an address of
// the machine (other than the bridge of an earlier run).
func checkSubnetFree() error {
	_, subnet, _ := net.ParseCIDR(PodSubnet)
	ifaces, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, iface := range ifaces {
		if iface.Name == PodBridge {
			continue
		}
		addrs, _ := iface.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && (subnet.Contains(ipn.IP) || ipn.Contains(subnet.IP)) {
				return fmt.Errorf("configuration error: the local node's pod subnet %s overlaps %s on %s", PodSubnet, ipn, iface.Name)
			}
		}
	}
	return nil
}

// NodeLeftovers lists what a local node can leave on this machine, one
// line each: processes of containerd, its shims, the kubelet or runc;
// mounts of containerd, the kubelet or network namespaces; kubepods
// cgroups; KUBE-* and CNI-* iptables chains; the pod bridge and veth
// links; and the machine-wide directories the node uses. Tests compare it
// before and after a node's life.
func NodeLeftovers() []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		switch filepath.Base(strings.TrimSuffix(exe, " (deleted)")) {
		case "containerd", "containerd-shim-runc-v2", "kubelet", "kube-scheduler", "runc", "pause":
			out = append(out, "process "+exe)
		}
	}
	for _, m := range mountPoints() {
		if strings.Contains(m, "containerd") || strings.Contains(m, "kubelet") || strings.Contains(m, "netns") ||
			strings.Contains(m, "/node/") || strings.HasPrefix(m, "/run/netns") {
			out = append(out, "mount "+m)
		}
	}
	for _, cg := range kubepodsCgroups() {
		out = append(out, "cgroup "+cg)
	}
	for key, chains := range iptablesChains() {
		for _, ch := range chains {
			if strings.HasPrefix(ch, "KUBE-") || strings.HasPrefix(ch, "CNI-") {
				out = append(out, "iptables "+key+" "+ch)
			}
		}
	}
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if l.Name() == PodBridge || strings.HasPrefix(l.Name(), "veth") {
			out = append(out, "link "+l.Name())
		}
	}
	for _, p := range machinePaths {
		if _, err := os.Lstat(p); err == nil {
			out = append(out, "path "+p)
		}
	}
	out = append(out, "net.ipv4.ip_forward="+readIPForward())
	sort.Strings(out)
	return out
}

// orDiscard returns w, or io.Discard for nil.
func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

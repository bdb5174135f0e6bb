//go:build e2e && linux

package cluster

import (
	"context"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// podRunningTimeout covers scheduling, sandbox and container start on the
// local node (3–4 s when measured on an idle machine).
const podRunningTimeout = 90 * time.Second

// startNodeCluster starts a control plane with a node for t and returns it
// with the machine's node leftovers listed before the start. Stop is the
// caller's, so it can check what Stop leaves.
func startNodeCluster(t *testing.T) (*Cluster, []string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a local node needs root")
	}
	before := NodeLeftovers()
	begin := time.Now()
	c, err := Start(t.Context(), Options{Dir: t.TempDir(), Log: testWriter{t}, Node: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start with a node took %s", time.Since(begin).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("component logs:\n%s", c.Logs())
		}
		_ = c.Stop()
	})
	return c, before
}

// runningPod creates a busybox pod that runs sh and waits until it is
// Running.
func runningPod(t *testing.T, c *Cluster, ns, name string) *corev1.Pod {
	t.Helper()
	ctx := t.Context()
	if _, err := c.Client().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the namespace's default ServiceAccount", podCreatedTimeout, func(ctx context.Context) (bool, error) {
		_, err := c.Client().CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "app", Image: BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"},
			}},
			TerminationGracePeriodSeconds: ptr.To[int64](5),
		},
	}
	created, err := c.Client().CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	poll(t, "pod "+name+" Running", podRunningTimeout, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		created = p
		return p.Status.Phase == corev1.PodRunning, nil
	})
	t.Logf("pod %s Running on %s %s after create", name, created.Spec.NodeName, time.Since(begin).Round(time.Millisecond))
	return created
}

// assertNoLeftovers compares the machine's node leftovers with before.
func assertNoLeftovers(t *testing.T, before []string) {
	t.Helper()
	after := NodeLeftovers()
	if !slices.Equal(before, after) {
		var added, removed []string
		for _, s := range after {
			if !slices.Contains(before, s) {
				added = append(added, s)
			}
		}
		for _, s := range before {
			if !slices.Contains(after, s) {
				removed = append(removed, s)
			}
		}
		t.Errorf("the node changed the machine:\n  left behind: %q\n  gone:        %q", added, removed)
	}
	if _, err := os.Stat(nodeStateFile); err == nil {
		t.Errorf("%s left behind", nodeStateFile)
	}
}

// TestNode runs a pod on the real node, execs into it (output and a file
// written), and checks that Stop leaves the machine as it found it, even
// with a finalizer on the pod that no running controller will remove (as a
// Job's pods carry).
func TestNode(t *testing.T) {
	c, before := startNodeCluster(t)
	t.Logf("before the node: %q", before)
	pod := runningPod(t, c, "node-test", "shell")
	ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
	defer cancel()
	out, stderr, err := c.Kubectl(ctx, "", "exec", "-n", pod.Namespace, pod.Name, "--", "sh", "-c", "echo drift > /tmp/marker; cat /tmp/marker; uname -s")
	if err != nil {
		t.Fatalf("kubectl exec: %v\n%s", err, stderr)
	}
	if out != "drift\nLinux\n" {
		t.Errorf("kubectl exec printed %q, want the command's output", out)
	}
	if _, err := c.Client().CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType,
		[]byte(`{"metadata":{"finalizers":["exec-reaper.io/test-keep"]}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	during := NodeLeftovers()
	t.Logf("while the node runs: %q", during)
	if slices.Equal(before, during) {
		t.Error("NodeLeftovers sees nothing of a running node; it cannot prove the cleanup")
	}
	begin := time.Now()
	if err := c.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	t.Logf("Stop took %s", time.Since(begin).Round(time.Millisecond))
	assertNoLeftovers(t, before)
}

// TestNodeCleanupAfterCrash kills the kubelet and containerd with SIGKILL
// while a pod runs (its shim and container survive them, as after a crash)
// and checks that Stop still removes everything.
func TestNodeCleanupAfterCrash(t *testing.T) {
	c, before := startNodeCluster(t)
	runningPod(t, c, "node-crash", "orphan")
	for _, p := range []*Process{c.node.kubelet, c.node.containerd} {
		if err := syscall.Kill(-p.Pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-p.Done()
	}
	var orphans []string
	for _, l := range NodeLeftovers() {
		if strings.HasPrefix(l, "process ") && strings.Contains(l, "shim") {
			orphans = append(orphans, l)
		}
	}
	if len(orphans) == 0 {
		t.Error("no shim outlived containerd; this test no longer simulates a crash")
	}
	err := c.Stop()
	// The kubelet and containerd had exited: Stop says so, and cleans up.
	if err == nil || !strings.Contains(err.Error(), "had exited before Stop") {
		t.Errorf("Stop after a crash = %v, want it to report the dead kubelet and containerd", err)
	}
	assertNoLeftovers(t, before)
}

// TestCleanupNodeAfterDeadRun plays a run that died without Stop (as after
// SIGKILL of the test binary): its node's processes die or are orphaned,
// its lock is released, its state file stays. CleanupNode, as make down and
// the next Start run it, must remove everything from the state file alone.
func TestCleanupNodeAfterDeadRun(t *testing.T) {
	c, before := startNodeCluster(t)
	runningPod(t, c, "node-dead", "orphan")
	for _, p := range []*Process{c.node.kubelet, c.node.containerd} {
		if err := syscall.Kill(-p.Pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-p.Done()
	}
	// The dead run's lock goes with its process; its Stop never runs.
	c.node.lock.Close()
	c.node.lock = nil
	c.node.recorded = false
	if err := CleanupNode(testWriter{t}); err != nil {
		t.Fatalf("CleanupNode: %v", err)
	}
	_ = c.Stop() // the control plane; the node part has nothing left to do
	assertNoLeftovers(t, before)
}

// TestCleanupNodeRefusesWhileANodeRuns checks that make down cannot clean
// up under a running node.
func TestCleanupNodeRefusesWhileANodeRuns(t *testing.T) {
	c, _ := startNodeCluster(t)
	if err := CleanupNode(testWriter{t}); err == nil || !strings.Contains(err.Error(), "a node is running") {
		t.Errorf("CleanupNode while a node runs = %v, want a refusal", err)
	}
	if _, err := c.Client().CoreV1().Nodes().Get(t.Context(), NodeName, metav1.GetOptions{}); err != nil {
		t.Errorf("the node is gone after a refused CleanupNode: %v", err)
	}
}

//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/test/cluster"
	"github.com/exec-reaper/exec-reaper/test/fixture"
)

// Helpers for pods that run on the suite's node (cluster.Options.Node).

const (
	// nodePodTimeout covers scheduling, sandbox and container start and the
	// first readiness probe (about 4 s on an idle machine).
	nodePodTimeout = 90 * time.Second
	// webPort is where nodeSpec's container serves cluster.BusyboxWebRoot.
	webPort = 8080
	// gracefulMessage is what nodeSpec's container writes to its
	// termination log when SIGTERM stops it: proof of a graceful stop.
	gracefulMessage = "stopped gracefully on SIGTERM"
	// nodeGracePeriod is nodeSpec's terminationGracePeriodSeconds; the
	// container exits at once on SIGTERM, well within it.
	nodeGracePeriod = 10
)

// nodeSpec is a pod that runs on the node: busybox httpd serves
// cluster.BusyboxWebRoot (whose index.html comes from the image) on webPort,
// Ready once it answers; on SIGTERM the shell writes gracefulMessage to the
// termination log and exits 0.
func nodeSpec() corev1.PodSpec {
	script := fmt.Sprintf(`trap 'echo %q > /dev/termination-log; exit 0' TERM; httpd -f -p %d -h %s & wait`,
		gracefulMessage, webPort, cluster.BusyboxWebRoot)
	return corev1.PodSpec{
		Containers: []corev1.Container{{
			Name:            "app",
			Image:           cluster.BusyboxImage,
			ImagePullPolicy: corev1.PullNever,
			Command:         []string{"sh", "-c", script},
			Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: webPort}},
			ReadinessProbe: &corev1.Probe{
				ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(webPort)}},
				PeriodSeconds: 1,
			},
			// Keep stdin open for kubectl attach.
			Stdin: true,
		}},
		TerminationGracePeriodSeconds: ptr.To[int64](nodeGracePeriod),
		// The pods need no API access; skip the token volume.
		AutomountServiceAccountToken: ptr.To(false),
	}
}

// nodePod creates a pod from spec (nodeSpec() if nil) and returns it once
// Ready.
func nodePod(t *testing.T, ns, name string, labels map[string]string, spec *corev1.PodSpec) *corev1.Pod {
	t.Helper()
	if spec == nil {
		s := nodeSpec()
		spec = &s
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}, Spec: *spec}
	if _, err := c.Client().CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return waitPodReady(t, ns, name)
}

// nodeDeployment creates a Deployment of nodeSpec pods with the given
// replicas and labels, and returns its pods once that many are Ready.
func nodeDeployment(t *testing.T, ns, name string, replicas int32, labels map[string]string) []corev1.Pod {
	t.Helper()
	if err := fixture.Deployment(context.Background(), c.Client(), ns, name, replicas, labels, nodeSpec()); err != nil {
		t.Fatal(err)
	}
	return waitReadyPods(t, ns, labels, int(replicas), nil)
}

// waitPodReady waits until the pod runs and is Ready, and returns it.
func waitPodReady(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	begin := time.Now()
	poll(t, "pod "+ns+"/"+name+" Ready", nodePodTimeout, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		return isReady(p), nil
	})
	t.Logf("pod %s/%s Ready on %s after %s", ns, name, pod.Spec.NodeName, time.Since(begin).Round(time.Millisecond))
	return pod
}

// waitReadyPods waits until n pods with labels are Ready and not
// terminating, none of them with a UID in exclude, and returns them.
func waitReadyPods(t *testing.T, ns string, labels map[string]string, n int, exclude map[string]bool) []corev1.Pod {
	t.Helper()
	pods, err := fixture.WaitPods(context.Background(), c.Client(), ns, labels, n, fixture.Wait{Ready: true, Exclude: exclude, Timeout: nodePodTimeout})
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

func isReady(p *corev1.Pod) bool { return fixture.IsReady(p) }

// readyTime is when the pod's Ready condition last became true.
func readyTime(p *corev1.Pod) time.Time { return fixture.ReadyTime(p) }

// kubectlOK runs kubectl as kubeconfig ("" = admin), fails t if it fails,
// and returns its stdout.
func kubectlOK(t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	stdout, stderr, err := kubectl(t, kubeconfig, args...)
	if err != nil {
		t.Fatalf("%v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	return stdout
}

// startKubectl starts kubectl as kubeconfig for a session that streams
// (attach, port-forward), which Cluster.Kubectl cannot run: it waits for
// kubectl to exit. It returns kubectl's stdin (nil unless withStdin),
// stdout and stderr, so far and to come. Its environment holds nothing of
// the user's.
func startKubectl(t *testing.T, ctx context.Context, kubeconfig string, withStdin bool, args ...string) (cmd *exec.Cmd, stdin io.WriteCloser, stdout io.Reader, stderr *strings.Builder) {
	t.Helper()
	cmd = exec.CommandContext(ctx, filepath.Join(cluster.DefaultTools().KubeDir, "kubectl"), append([]string{"--kubeconfig=" + kubeconfig}, args...)...)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=/usr/bin:/bin"}
	var err error
	if withStdin {
		if stdin, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}
	if stdout, err = cmd.StdoutPipe(); err != nil {
		t.Fatal(err)
	}
	stderr = new(strings.Builder)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stdin, stdout, stderr
}

// kubectlAttach runs kubectl attach -i to pod's app container as
// kubeconfig, sends line, and returns what kubectl printed once want
// appears on its stdout (or when it exits). Stdin stays open until then:
// kubectl ends the session as soon as its stdin closes.
func kubectlAttach(t *testing.T, kubeconfig string, pod *corev1.Pod, line, want string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd, in, outPipe, errOut := startKubectl(t, ctx, kubeconfig, true, "attach", "-i", "-n", pod.Namespace, pod.Name, "-c", "app")
	if _, err := io.WriteString(in, line+"\n"); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	s := bufio.NewScanner(outPipe)
	for s.Scan() {
		out.WriteString(s.Text() + "\n")
		if strings.Contains(s.Text(), want) {
			break
		}
	}
	in.Close()
	cancel()
	_ = cmd.Wait()
	return out.String(), errOut.String()
}

// httpGet fetches http://<pod IP>:webPort/ from the test process: the
// node's bridge routes the pod subnet on this machine.
func httpGet(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	p, err := c.Client().CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.PodIP == "" {
		t.Fatalf("pod %s has no IP", pod.Name)
	}
	return httpGetURL(t, "http://"+net.JoinHostPort(p.Status.PodIP, fmt.Sprint(webPort))+"/")
}

func httpGetURL(t *testing.T, url string) string {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// termination is how a pod on the node ended, as its watch showed it
// (MarkedAt: the eviction; GoneAt: the kubelet had stopped it and the pod
// was deleted; App: the app container's last terminated state).
type termination = fixture.Termination

// watchTermination starts watching pod and returns a function that waits
// until the pod is deleted (not only marked) and reports how it ended. The
// times are when the events arrived (fixture.PodWatch), even when the caller
// waits for other pods first.
func watchTermination(t *testing.T, pod *corev1.Pod) func(timeout time.Duration) (termination, bool) {
	t.Helper()
	return watchPod(t, pod, fixture.Deleted)
}

// assertGraceful checks that the pod was stopped the way a kubelet stops a
// pod on eviction: SIGTERM, the container's own clean exit, within the
// grace period.
func assertGraceful(t *testing.T, tm termination) {
	t.Helper()
	if tm.Grace != nodeGracePeriod {
		t.Errorf("deletion grace period %d s, want the pod's %d s", tm.Grace, nodeGracePeriod)
	}
	if tm.App == nil {
		t.Fatal("the app container's termination was not seen")
	}
	if tm.App.ExitCode != 0 || strings.TrimSpace(tm.App.Message) != gracefulMessage {
		t.Errorf("app container ended with exit code %d, message %q; want 0 and %q (its SIGTERM handler)",
			tm.App.ExitCode, tm.App.Message, gracefulMessage)
	}
	if took := tm.GoneAt.Sub(tm.MarkedAt); took > nodeGracePeriod*time.Second {
		t.Errorf("pod took %s from eviction to gone, more than its grace period", took)
	}
	t.Logf("graceful termination: evicted → gone in %s (exit %d, %q)",
		tm.GoneAt.Sub(tm.MarkedAt).Round(time.Millisecond), tm.App.ExitCode, strings.TrimSpace(tm.App.Message))
}

// portForward runs kubectl port-forward to pod's webPort as kubeconfig on
// a free local port and returns that port once kubectl listens; it stops
// when t ends.
func portForward(t *testing.T, kubeconfig string, pod *corev1.Pod) int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd, _, out, stderr := startKubectl(t, ctx, kubeconfig, false, "port-forward", "-n", pod.Namespace, "pod/"+pod.Name, fmt.Sprintf(":%d", webPort))
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	// "Forwarding from 127.0.0.1:43121 -> 8080"
	re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) ->`)
	port := make(chan int, 1)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			if m := re.FindStringSubmatch(s.Text()); m != nil {
				var p int
				fmt.Sscan(m[1], &p)
				port <- p
			}
		}
		close(port)
	}()
	select {
	case p, ok := <-port:
		if !ok {
			t.Fatalf("kubectl port-forward exited: %s", stderr.String())
		}
		return p
	case <-time.After(commandTimeout):
		t.Fatalf("kubectl port-forward did not start listening: %s", stderr.String())
	}
	return 0
}

// externalDataCalls counts the external-data requests the provider's
// replicas have answered so far (their request-duration histograms): one per
// call Gatekeeper makes, however many keys the request holds.
func externalDataCalls(t *testing.T) float64 {
	t.Helper()
	return providerSum(t, "exec_reaper_provider_request_duration_seconds_count")
}

// providerSum sums the samples of name whose labels contain every one of
// matches over every running provider replica (requests are spread across
// them, so a count is their sum).
func providerSum(t testing.TB, name string, matches ...string) float64 {
	t.Helper()
	texts, err := inst.EachProviderMetrics(context.Background())
	if err != nil {
		t.Fatalf("reading the provider's metrics: %v", err)
	}
	var sum float64
	for _, text := range texts {
		sum += metric(text, name, matches...)
	}
	return sum
}

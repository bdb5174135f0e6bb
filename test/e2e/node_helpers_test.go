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
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/test/cluster"
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
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: nodeSpec()},
		},
	}
	if _, err := c.Client().AppsV1().Deployments(ns).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
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
	var ready []corev1.Pod
	poll(t, fmt.Sprintf("%d Ready pods %v in %s", n, labels, ns), nodePodTimeout, func(ctx context.Context) (bool, error) {
		list, err := c.Client().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})})
		if err != nil {
			return false, nil
		}
		ready = ready[:0]
		for _, p := range list.Items {
			if isReady(&p) && p.DeletionTimestamp == nil && !exclude[string(p.UID)] {
				ready = append(ready, p)
			}
		}
		return len(ready) >= n, nil
	})
	return ready
}

func isReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// readyTime is when the pod's Ready condition last became true.
func readyTime(p *corev1.Pod) time.Time {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			return cond.LastTransitionTime.Time
		}
	}
	return time.Time{}
}

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

// kubectlAttach runs kubectl attach -i to pod's app container as
// kubeconfig, sends line, and returns what kubectl printed once want
// appears on its stdout (or when it exits). Stdin stays open until then:
// kubectl ends the session as soon as its stdin closes.
func kubectlAttach(t *testing.T, kubeconfig string, pod *corev1.Pod, line, want string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(cluster.DefaultTools().KubeDir, "kubectl"), "--kubeconfig="+kubeconfig,
		"attach", "-i", "-n", pod.Namespace, pod.Name, "-c", "app")
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=/usr/bin:/bin"}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut strings.Builder
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
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

// termination is how a pod on the node ended, as its watch showed it.
type termination struct {
	// MarkedAt is when the pod got its deletionTimestamp (the eviction).
	MarkedAt time.Time
	// GoneAt is when the kubelet had stopped it and the pod was deleted.
	GoneAt time.Time
	// Grace is the deletion's grace period.
	Grace int64
	// App is the app container's last terminated state, if seen.
	App *corev1.ContainerStateTerminated
}

// watchTermination starts watching pod and returns a function that waits
// until the pod is deleted (not only marked) and reports how it ended. The
// events are read as they arrive, so the times are when they happened even
// when the caller waits for other pods first.
func watchTermination(t *testing.T, pod *corev1.Pod) func(timeout time.Duration) (termination, bool) {
	t.Helper()
	w, err := c.Client().CoreV1().Pods(pod.Namespace).Watch(context.Background(), metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", pod.Name).String(),
		ResourceVersion: pod.ResourceVersion,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	var (
		mu     sync.Mutex
		tm     termination
		gone   = make(chan struct{})
		closed = make(chan struct{})
	)
	go func() {
		defer close(closed)
		for ev := range w.ResultChan() {
			p, _ := ev.Object.(*corev1.Pod)
			if p == nil || p.UID != pod.UID {
				continue
			}
			mu.Lock()
			if p.DeletionTimestamp != nil && tm.MarkedAt.IsZero() {
				tm.MarkedAt = time.Now()
				tm.Grace = ptr.Deref(p.DeletionGracePeriodSeconds, -1)
			}
			for _, cs := range p.Status.ContainerStatuses {
				if cs.Name == "app" && cs.State.Terminated != nil {
					tm.App = cs.State.Terminated
				}
			}
			deleted := ev.Type == watch.Deleted
			if deleted {
				tm.GoneAt = time.Now()
			}
			mu.Unlock()
			if deleted {
				close(gone)
				return
			}
		}
	}()
	return func(timeout time.Duration) (termination, bool) {
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		select {
		case <-gone:
		case <-closed:
			select {
			case <-gone: // closed after gone
			default:
				t.Fatalf("watch on %s closed", pod.Name)
			}
		case <-timer.C:
		}
		mu.Lock()
		defer mu.Unlock()
		return tm, !tm.GoneAt.IsZero()
	}
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
	cmd := exec.CommandContext(ctx, filepath.Join(cluster.DefaultTools().KubeDir, "kubectl"), "--kubeconfig="+kubeconfig,
		"port-forward", "-n", pod.Namespace, "pod/"+pod.Name, fmt.Sprintf(":%d", webPort))
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=/usr/bin:/bin"}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
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
	texts, err := inst.EachProviderMetrics(context.Background())
	if err != nil {
		t.Fatalf("reading the provider's metrics: %v", err)
	}
	var n float64
	for _, text := range texts {
		n += metric(text, "exec_reaper_provider_request_duration_seconds_count", "")
	}
	return n
}

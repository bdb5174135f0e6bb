// Command demo is `make demo`: it starts a local control plane with
// Gatekeeper, exec-reaper and one real node, has a developer hot-fix a
// running pod through kubectl exec, and shows what exec-reaper does about
// it: the record, the Event, the eviction at the deadline, and the
// replacement pod serving the original file from its image.
//
//	demo          run the story, then stop everything
//	demo -up      run the story, then leave the cluster (node included)
//	              running in the background and print its KUBECONFIG
//	demo -down    stop a cluster left by -up, and clean what a crashed node
//	              left on the machine
//
// The state (cluster directory, pid and ready files, log) lives in a
// directory per checkout, so two checkouts never stop each other's
// clusters. The machine runs one node at a time (cluster.NodeLockFile):
// while a -up cluster of this checkout runs, demo and a second -up refuse
// or restart it explicitly, and never delete its directory under it.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/test/cluster"
	"github.com/exec-reaper/exec-reaper/test/fixture"
	"github.com/exec-reaper/exec-reaper/test/install"
)

// TTL is the demo constraint's ttl: long enough to read the record, short
// enough to wait for.
const TTL = 20 * time.Second

const (
	demoNS   = "shop"
	demoUser = "alice@example.com"
	webPort  = 8080
	// hotfix is what alice writes into the running container.
	hotfix = "hot-fix by alice: price = 0"
	// gracePeriod is the pods' terminationGracePeriodSeconds.
	gracePeriod = 10
)

// webLabels label the web Deployment's pods.
var webLabels = map[string]string{"app": "web"}

func main() {
	up := flag.Bool("up", false, "leave the cluster running in the background")
	down := flag.Bool("down", false, "stop a cluster left by -up")
	serve := flag.Bool("serve", false, "internal: the background process of -up")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, *up, *down, *serve)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, up, down, serve bool) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	s := newState(root)
	switch {
	case down:
		return s.stopBackground()
	case up:
		return s.startBackground(ctx)
	case serve:
		return demo(ctx, s, root, true)
	default:
		if pid, ok := s.running(); ok {
			return fmt.Errorf("the cluster of `make up` runs (pid %d, state %s), and `make demo` would need its node. "+
				"Run `make down` first, or use the running cluster: export KUBECONFIG=%s",
				pid, s.dir, filepath.Join(s.clusterDir(), "kubeconfigs", "admin.kubeconfig"))
		}
		return demo(ctx, s, root, false)
	}
}

// state is this checkout's demo state directory.
type state struct{ dir string }

// newState names the state directory after the checkout's path, under the
// user's cache directory.
func newState(root string) state {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	sum := sha256.Sum256([]byte(root))
	return state{dir: filepath.Join(base, "exec-reaper-demo", hex.EncodeToString(sum[:6]))}
}

func (s state) clusterDir() string { return filepath.Join(s.dir, "cluster") }
func (s state) pidFile() string    { return filepath.Join(s.dir, "pid") }
func (s state) readyFile() string  { return filepath.Join(s.dir, "ready") }
func (s state) logFile() string    { return filepath.Join(s.dir, "up.log") }

// running returns the pid of this checkout's background process, if it is
// alive.
func (s state) running() (int, bool) {
	b, err := os.ReadFile(s.pidFile())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	if syscall.Kill(pid, 0) != nil {
		return 0, false
	}
	// A recycled pid belongs to some other program: the background process
	// runs this command with -serve.
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if len(cmdline) > 0 && !strings.Contains(string(cmdline), "-serve") {
		return 0, false
	}
	return pid, true
}

func say(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func show(label, text string) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Printf("    %s%s\n", label, line)
	}
}

// demo tells the story. With serve, it then keeps the cluster up until it
// is signalled, and writes the ready file once the story is told.
func demo(ctx context.Context, s state, root string, serve bool) (err error) {
	start := time.Now()
	helm := os.Getenv("EXEC_REAPER_HELM")
	if helm == "" {
		return errors.New("configuration error: EXEC_REAPER_HELM is not set; run `make demo`")
	}
	// A node that a killed run left behind is cleaned up first; a node
	// that runs (another checkout's make up, a test run) stops us here.
	if err := cluster.CleanupNode(os.Stdout); err != nil {
		return fmt.Errorf("%w\n(another checkout's `make up` or a test run has the machine's only node; stop it, then retry)", err)
	}
	// Only this checkout's own directory is emptied, and only when no
	// process of this checkout uses it (checked by the caller).
	if err := os.RemoveAll(s.clusterDir()); err != nil {
		return err
	}
	if err := os.MkdirAll(s.clusterDir(), 0o755); err != nil {
		return err
	}

	say("Starting a local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, Gatekeeper,")
	show("", "and one node (containerd, kubelet) that runs pods from local images")
	c, err := cluster.Start(ctx, cluster.Options{Tools: cluster.DefaultTools(), Dir: s.clusterDir(), Log: os.Stdout, Gatekeeper: true, Node: true})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			fmt.Fprintln(os.Stderr, c.Logs())
		}
		if stopErr := c.Stop(); stopErr != nil {
			fmt.Fprintln(os.Stderr, "demo: stopping the cluster:", stopErr)
		}
	}()
	show("", fmt.Sprintf("cluster and node %s Ready in %s", cluster.NodeName, time.Since(start).Round(time.Second)))

	say("Installing exec-reaper from its Helm chart (provider and two deleter replicas)")
	inst, err := install.Setup(ctx, install.Options{Cluster: c, RepoRoot: root, Helm: helm, Log: os.Stdout})
	if err != nil {
		return err
	}
	ttl := strconv.Quote(TTL.String())
	err = inst.ApplyPolicies(ctx, "templates/exec-reaper/template.yaml", map[string]string{
		"constraints/default.yaml": `{"spec":{"parameters":{"ttl":` + ttl + `}}}`,
	})
	if err != nil {
		return err
	}
	show("", "applied templates/exec-reaper/template.yaml and constraints/default.yaml (ttl "+TTL.String()+" for the demo)")

	kubeconfig, err := developer(ctx, c)
	if err != nil {
		return err
	}
	say("A team runs a web server: Deployment %q in namespace %q, image %s", "web", demoNS, cluster.BusyboxImage)
	pod, err := deploy(ctx, c)
	if err != nil {
		return err
	}
	page, err := get(ctx, pod.Status.PodIP)
	if err != nil {
		return err
	}
	show("", fmt.Sprintf("pod %s Running on %s at %s; it serves:", pod.Name, pod.Spec.NodeName, pod.Status.PodIP))
	show("    GET / → ", page)

	cmd := fmt.Sprintf("echo '%s' > %s/index.html; cat %s/index.html", hotfix, cluster.BusyboxWebRoot, cluster.BusyboxWebRoot)
	say("%s hot-fixes the page in the running container:", demoUser)
	show("", fmt.Sprintf("kubectl exec -n %s %s -- sh -c %q", demoNS, pod.Name, cmd))
	stdout, stderr, err := fixture.KubectlExec(ctx, c.Kubectl, 0, kubeconfig, pod, "app", "sh", "-c", cmd)
	if err != nil {
		return fmt.Errorf("kubectl exec: %w", err)
	}
	show("kubectl: ", stdout)
	if stderr != "" {
		show("kubectl: ", stderr)
	}
	page, err = get(ctx, pod.Status.PodIP)
	if err != nil {
		return err
	}
	show("    GET / → ", page)
	show("", "(the container now differs from its image. kubectl drops admission warnings for exec, so")
	show("", " exec-reaper speaks through the pod's record and Events.)")

	say("The record exec-reaper wrote on the pod")
	var rec record.Record
	err = fixture.Poll(ctx, "the record on the pod", 10*time.Second, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(demoNS).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		rec, err = record.Read(p.Labels, p.Annotations)
		return err == nil, nil
	})
	if err != nil {
		return err
	}
	showRecord(ctx, c, pod.Name)

	debugArgs := []string{"debug", "-n", demoNS, pod.Name, "--image=" + cluster.BusyboxImage, "--image-pull-policy=Never",
		"-c", "debugger", "--target=app", "--", "sh", "-c", "cat /proc/1/root" + cluster.BusyboxWebRoot + "/index.html"}
	say("%s looks again, with an ephemeral debug container:", demoUser)
	show("", "kubectl "+shellJoin(debugArgs))
	_, stderr, err = c.Kubectl(ctx, kubeconfig, debugArgs...)
	if err != nil {
		return fmt.Errorf("kubectl debug: %w", err)
	}
	show("kubectl: ", stderr)
	var logs string
	_ = fixture.PollEvery(ctx, "the debugger's output", 200*time.Millisecond, 30*time.Second, func(ctx context.Context) (bool, error) {
		logs, _, err = c.Kubectl(ctx, "", "logs", "-n", demoNS, pod.Name, "-c", "debugger")
		return err == nil && logs != "", nil
	})
	show("debugger: ", logs)
	show("", "(kubectl debug is a plain PATCH, so kubectl prints the admission warning. The second entry")
	show("", " is recorded too, and the deadline stays where the first entry put it.)")
	err = fixture.Poll(ctx, "the debug entry to be recorded with the same deadline", 10*time.Second, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(demoNS).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		r, err := record.Read(p.Labels, p.Annotations)
		return err == nil && r.Entries >= 2 && r.Deadline.Equal(rec.Deadline), nil
	})
	if err != nil {
		return err
	}
	showRecord(ctx, c, pod.Name)

	say("The Events on the pod (kubectl get events -n %s)", demoNS)
	var msgs []string
	err = fixture.Poll(ctx, "the Events on the pod", 10*time.Second, func(ctx context.Context) (bool, error) {
		evs, err := c.Client().CoreV1().Events(demoNS).List(ctx, metav1.ListOptions{FieldSelector: "reason=" + provider.ReasonEntered})
		if err != nil || len(evs.Items) < 2 {
			return false, nil
		}
		msgs = msgs[:0]
		for _, e := range evs.Items {
			msgs = append(msgs, e.Type+"  "+e.Reason+"  "+e.Message)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	show("", strings.Join(msgs, "\n"))

	say("Waiting for the deadline %s", rec.Deadline.Local().Format(time.TimeOnly))
	end, err := waitEviction(ctx, c, pod, rec.Deadline)
	if err != nil {
		return err
	}
	var exitCode int32
	var message string
	if end.App != nil {
		exitCode, message = end.App.ExitCode, end.App.Message
	}
	show("", fmt.Sprintf("pod %s evicted %s after its deadline, through the Eviction API;", pod.Name, end.MarkedAt.Sub(rec.Deadline).Round(time.Millisecond)))
	show("", fmt.Sprintf("the kubelet sent SIGTERM, the container said %q and exited %d; pod gone %s after the deadline",
		strings.TrimSpace(message), exitCode, end.GoneAt.Sub(rec.Deadline).Round(time.Millisecond)))

	repl, err := replacement(ctx, c, pod.UID)
	if err != nil {
		return err
	}
	page, err = get(ctx, repl.Status.PodIP)
	if err != nil {
		return err
	}
	readyAt := fixture.ReadyTime(repl)
	show("", fmt.Sprintf("the Deployment replaced it with %s, Ready %s after the deadline, fresh from its image and with no record:",
		repl.Name, readyAt.Sub(rec.Deadline).Round(time.Second)))
	show("    GET / → ", page)
	if page != cluster.BusyboxIndex {
		return fmt.Errorf("the replacement serves %q, not the image's page", page)
	}

	say("Summary")
	show("", fmt.Sprintf("%s hot-fixed %s/%s at %s by %s; exec-reaper recorded it on the pod, emitted an Event,",
		rec.First.User, demoNS, pod.Name, rec.First.Time.Local().Format(time.TimeOnly), rec.First.Operation))
	show("", fmt.Sprintf("and evicted the pod at its deadline %s (ttl %s); its replacement serves the image's page again.",
		rec.Deadline.Local().Format(time.TimeOnly), TTL))
	show("", fmt.Sprintf("Whole demo: %s.", time.Since(start).Round(time.Second)))

	if serve {
		say("The cluster stays up, node included. Try it yourself:")
		fmt.Printf("    export KUBECONFIG=%s   # admin\n", c.AdminKubeconfig)
		fmt.Printf("    kubectl --kubeconfig=%s exec -n %s deploy/web -- sh   # as %s\n", kubeconfig, demoNS, demoUser)
		fmt.Printf("    kubectl get pods -n %s -L %s -w\n", demoNS, record.DeadlineLabel)
		fmt.Println("    make down   # stops it")
		// The ready file names this process, so a reader can tell it from
		// a stale one.
		ready := fmt.Sprintf("%d\n%s\n", os.Getpid(), c.AdminKubeconfig)
		if err := os.WriteFile(s.readyFile(), []byte(ready), 0o644); err != nil {
			return err
		}
		<-ctx.Done()
		_ = os.Remove(s.readyFile())
	}
	return nil
}

// waitEviction counts down to the deadline and follows the pod until it is
// deleted.
func waitEviction(ctx context.Context, c *cluster.Cluster, pod *corev1.Pod, deadline time.Time) (fixture.Termination, error) {
	w, err := fixture.WatchPod(ctx, c.Client(), pod, "app")
	if err != nil {
		return fixture.Termination{}, err
	}
	defer w.Stop()
	// The countdown runs until the deadline or the eviction, whichever
	// comes first.
	var evicted atomic.Bool
	countdown, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-countdown.Done():
				return
			case <-tick.C:
				if left := int(time.Until(deadline).Round(time.Second).Seconds()); !evicted.Load() && left > 0 && (left%5 == 0 || left <= 3) {
					fmt.Printf("    %2ds left\n", left)
				}
			}
		}
	}()
	end, err := w.Until(ctx, time.Until(deadline)+30*time.Second+gracePeriod*time.Second, func(t fixture.Termination) bool {
		evicted.Store(!t.MarkedAt.IsZero())
		return fixture.Deleted(t)
	})
	if errors.Is(err, fixture.ErrNotYet) {
		return end, errors.New("pod not evicted and gone 30s after its deadline")
	}
	return end, err
}

// replacement waits for the Deployment's new pod to be Ready.
func replacement(ctx context.Context, c *cluster.Cluster, old types.UID) (*corev1.Pod, error) {
	pods, err := fixture.WaitPods(ctx, c.Client(), demoNS, webLabels, 1, fixture.Wait{
		Ready: true, Exclude: map[string]bool{string(old): true}, Timeout: 90 * time.Second, Interval: 100 * time.Millisecond,
	})
	if err != nil {
		return nil, fmt.Errorf("no Ready replacement pod: %w", err)
	}
	return &pods[0], nil
}

// get fetches the page a pod serves; the node's bridge routes the pod
// subnet on this machine.
func get(ctx context.Context, ip string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(ip, strconv.Itoa(webPort)) + "/"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// shellJoin quotes args for display as a shell command line.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " '\"$;|&<>*?") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// showRecord prints the record's label and annotations on the pod.
func showRecord(ctx context.Context, c *cluster.Cluster, name string) {
	p, err := c.Client().CoreV1().Pods(demoNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		show("", err.Error())
		return
	}
	var lines []string
	for k, v := range p.Labels {
		if strings.HasPrefix(k, record.Prefix) {
			lines = append(lines, "label       "+k+"="+v)
		}
	}
	var annotations []string
	for k, v := range p.Annotations {
		if strings.HasPrefix(k, record.Prefix) {
			annotations = append(annotations, "annotation  "+k+"="+v)
		}
	}
	slices.Sort(annotations)
	show("", strings.Join(append(lines, annotations...), "\n"))
}

// developer grants alice a developer's rights and returns her kubeconfig.
func developer(ctx context.Context, c *cluster.Cluster) (string, error) {
	return fixture.Developer{
		Role:       "developer",
		Kubeconfig: "alice",
		User:       demoUser,
		Groups:     []string{"dev", "system:authenticated"},
	}.Grant(ctx, c.Client(), c.Kubeconfig)
}

// deploy creates the web Deployment and returns its pod once Ready.
func deploy(ctx context.Context, c *cluster.Cluster) (*corev1.Pod, error) {
	if err := fixture.Namespace(ctx, c.Client(), demoNS, 0); err != nil {
		return nil, err
	}
	script := fmt.Sprintf(`trap 'echo "stopping on SIGTERM" > /dev/termination-log; exit 0' TERM; httpd -f -p %d -h %s & wait`,
		webPort, cluster.BusyboxWebRoot)
	spec := corev1.PodSpec{
		Containers: []corev1.Container{{
			Name: "app", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"sh", "-c", script},
			Ports:   []corev1.ContainerPort{{Name: "http", ContainerPort: webPort}},
			ReadinessProbe: &corev1.Probe{
				ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(webPort)}},
				PeriodSeconds: 1,
			},
		}},
		TerminationGracePeriodSeconds: ptr.To[int64](gracePeriod),
		AutomountServiceAccountToken:  ptr.To(false),
	}
	if err := fixture.Deployment(ctx, c.Client(), demoNS, "web", 1, webLabels, spec); err != nil {
		return nil, err
	}
	pods, err := fixture.WaitPods(ctx, c.Client(), demoNS, webLabels, 1, fixture.Wait{Ready: true, Timeout: 90 * time.Second, Interval: 100 * time.Millisecond})
	if err != nil {
		return nil, fmt.Errorf("the web pod did not become Ready: %w", err)
	}
	return &pods[0], nil
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("finding the repository: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// startBackground runs the demo in a detached process that keeps the
// cluster up, and returns once that process has written its ready file.
// A cluster of this checkout's earlier make up is stopped first.
func (s state) startBackground(ctx context.Context) error {
	if pid, ok := s.running(); ok {
		fmt.Printf("Stopping the cluster of the earlier `make up` (pid %d) first.\n", pid)
		if err := s.stopBackground(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	// A ready file left by a process that died without removing it must
	// not be taken for the new one's.
	if err := os.Remove(s.readyFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logFile, err := os.Create(s.logFile())
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(self, "-serve")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	if err := os.WriteFile(s.pidFile(), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return err
	}
	fmt.Printf("Starting in the background (pid %d, log: %s)...\n", pid, s.logFile())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-exited
			return ctx.Err()
		case err := <-exited:
			_ = os.Remove(s.pidFile())
			b, _ := os.ReadFile(s.logFile())
			return fmt.Errorf("the background demo exited: %v\n%s", err, b)
		case <-tick.C:
			b, err := os.ReadFile(s.readyFile())
			if err != nil {
				continue
			}
			readyPid, kubeconfig, _ := strings.Cut(string(b), "\n")
			if readyPid != strconv.Itoa(pid) {
				continue // not ours
			}
			log, _ := os.ReadFile(s.logFile())
			fmt.Print(string(log))
			fmt.Printf("\nKUBECONFIG=%s\n", strings.TrimSpace(kubeconfig))
			return nil
		}
	}
}

// stopBackground stops this checkout's background process, waits until it
// has stopped its cluster, and removes what a crashed node left.
func (s state) stopBackground() error {
	if pid, ok := s.running(); ok {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
		// Stopping deletes the pods through the kubelet first; that takes
		// a few seconds per pod.
		err := fixture.PollEvery(context.Background(), "the background process to stop", 200*time.Millisecond, 3*time.Minute, func(context.Context) (bool, error) {
			return syscall.Kill(pid, 0) != nil, nil
		})
		if err != nil {
			return fmt.Errorf("process %d did not stop within 3 minutes; its log: %s", pid, s.logFile())
		}
		fmt.Printf("Stopped the local cluster (pid %d).\n", pid)
	} else {
		fmt.Println("No cluster of `make up` runs for this checkout.")
	}
	_ = os.Remove(s.pidFile())
	_ = os.Remove(s.readyFile())
	if err := cluster.CleanupNode(os.Stdout); err != nil {
		// Another checkout's or a test's node: not ours to stop.
		fmt.Println("Left alone:", err)
	}
	return nil
}

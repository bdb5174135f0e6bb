// Command demo is `make demo`: it starts a local control plane with
// Gatekeeper and exec-reaper, runs kubectl exec into a Deployment's pod as a
// developer, and shows what exec-reaper does about it, up to the eviction.
//
//	demo          run the story, then stop everything
//	demo -up      run the story, then leave the control plane running in the
//	              background and print its KUBECONFIG
//	demo -down    stop a control plane left by -up
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/test/cluster"
	"github.com/exec-reaper/exec-reaper/test/install"
)

// TTL is the demo constraint's ttl: long enough to read the record, short
// enough to wait for.
const TTL = 20 * time.Second

const (
	demoNS   = "shop"
	demoUser = "alice@example.com"
)

func main() {
	up := flag.Bool("up", false, "leave the control plane running in the background")
	down := flag.Bool("down", false, "stop a control plane left by -up")
	serve := flag.Bool("serve", false, "internal: the background process of -up")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case *down:
		err = stopBackground()
	case *up:
		err = startBackground(ctx)
	default:
		err = demo(ctx, *serve)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func stateDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "exec-reaper-demo")
}

// pidFile holds the pid of the process -up leaves running. It lives outside
// stateDir, which every run of the demo starts by emptying.
func pidFile() string { return filepath.Join(os.TempDir(), "exec-reaper-demo.pid") }

func say(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func show(label, text string) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Printf("    %s%s\n", label, line)
	}
}

// demo tells the story. With serve, it then keeps the control plane up
// until it is signalled.
func demo(ctx context.Context, serve bool) (err error) {
	start := time.Now()
	dir := stateDir()
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	helm := os.Getenv("EXEC_REAPER_HELM")
	if helm == "" {
		return errors.New("EXEC_REAPER_HELM is not set; run `make demo`")
	}

	say("Starting a local control plane: etcd, kube-apiserver, kube-controller-manager and Gatekeeper")
	c, err := cluster.Start(ctx, cluster.Options{Tools: cluster.DefaultTools(), Dir: filepath.Join(dir, "cluster"), Log: os.Stdout, Gatekeeper: true})
	if err != nil {
		if c != nil {
			fmt.Fprintln(os.Stderr, c.Logs())
		}
		return err
	}
	defer func() {
		if err != nil {
			fmt.Fprintln(os.Stderr, c.Logs())
		}
		_ = c.Stop()
	}()

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
	say("A team runs a Deployment in namespace %q", demoNS)
	pod, err := deploy(ctx, c)
	if err != nil {
		return err
	}
	show("", "pod "+pod.Name+" (Pending: this control plane has no nodes; admission does not need one)")

	say("%s runs: kubectl exec -n %s %s -- sh -c 'echo hotfix >> /app/config'", demoUser, demoNS, pod.Name)
	_, stderr, _ := c.Kubectl(ctx, kubeconfig, "exec", "-n", demoNS, pod.Name, "-c", "app", "--", "sh", "-c", "echo hotfix >> /app/config")
	show("kubectl: ", stderr)
	show("", "(admitted by the API server and Gatekeeper; it fails only because there is no node to run it on.")
	show("", " kubectl drops admission warnings for exec, so exec-reaper speaks through the pod's record and Events.)")

	say("The record exec-reaper wrote on the pod")
	var rec record.Record
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(demoNS).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		rec, err = record.Read(p.Labels, p.Annotations)
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("no record on the pod: %w", err)
	}
	showRecord(ctx, c, pod.Name)

	say("%s runs: kubectl debug -n %s %s --image=busybox -c debugger -- sh", demoUser, demoNS, pod.Name)
	_, stderr, err = c.Kubectl(ctx, kubeconfig, "debug", "-n", demoNS, pod.Name, "--image=registry.invalid/busybox:1", "-c", "debugger", "--", "sh")
	if err != nil {
		return fmt.Errorf("kubectl debug: %w", err)
	}
	show("kubectl: ", stderr)
	show("", "(kubectl debug is a plain PATCH, so kubectl prints the admission warning. The second entry")
	show("", " is recorded too, and the deadline stays where the first entry put it.)")
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(demoNS).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		r, err := record.Read(p.Labels, p.Annotations)
		return err == nil && r.Entries == 2 && r.Deadline.Equal(rec.Deadline), nil
	})
	if err != nil {
		return fmt.Errorf("the debug entry was not recorded with the same deadline: %w", err)
	}
	showRecord(ctx, c, pod.Name)

	say("The Events on the pod (kubectl get events -n %s), one per entry", demoNS)
	var msgs []string
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
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
		return fmt.Errorf("no Events: %w", err)
	}
	show("", strings.Join(msgs, "\n"))

	say("Waiting for the deadline %s", rec.Deadline.Local().Format(time.TimeOnly))
	w, err := c.Client().CoreV1().Pods(demoNS).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", pod.Name).String()})
	if err != nil {
		return err
	}
	defer w.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	tooLate := time.NewTimer(time.Until(rec.Deadline) + 30*time.Second)
	defer tooLate.Stop()
	var evictedAt time.Time
	for evictedAt.IsZero() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if left := int(time.Until(rec.Deadline).Round(time.Second).Seconds()); left > 0 && (left%5 == 0 || left <= 3) {
				fmt.Printf("    %2ds left\n", left)
			}
		case ev, ok := <-w.ResultChan():
			if !ok {
				return errors.New("watch closed")
			}
			if p, _ := ev.Object.(*corev1.Pod); p != nil && (ev.Type == watch.Deleted || p.DeletionTimestamp != nil) {
				evictedAt = time.Now()
			}
		case <-tooLate.C:
			return errors.New("pod not evicted 30s after its deadline")
		}
	}
	show("", fmt.Sprintf("pod %s evicted %s after its deadline, through the Eviction API", pod.Name, evictedAt.Sub(rec.Deadline).Round(time.Millisecond)))

	var replacement string
	_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := c.Client().CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, nil
		}
		for _, p := range list.Items {
			if p.UID != pod.UID && p.DeletionTimestamp == nil {
				replacement = p.Name
				return true, nil
			}
		}
		return false, nil
	})
	if replacement != "" {
		show("", "the Deployment replaced it with "+replacement+", fresh from its image and with no record")
	}

	say("Summary")
	show("", fmt.Sprintf("%s entered %s/%s at %s by %s; exec-reaper recorded it on the pod, emitted an Event,",
		rec.First.User, demoNS, pod.Name, rec.First.Time.Local().Format(time.TimeOnly), rec.First.Operation))
	show("", fmt.Sprintf("and evicted the pod at its deadline %s (ttl %s). Whole demo: %s.",
		rec.Deadline.Local().Format(time.TimeOnly), TTL, time.Since(start).Round(time.Second)))

	if serve {
		say("The control plane stays up. Try it yourself:")
		fmt.Printf("    export KUBECONFIG=%s   # admin\n", c.AdminKubeconfig)
		fmt.Printf("    kubectl --kubeconfig=%s exec -n %s deploy/web -- sh   # as %s\n", kubeconfig, demoNS, demoUser)
		fmt.Printf("    kubectl get pods -n %s -L %s -w\n", demoNS, record.DeadlineLabel)
		fmt.Println("    make down   # stops it")
		if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(c.AdminKubeconfig), 0o644); err != nil {
			return err
		}
		<-ctx.Done()
	}
	return nil
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
	rbac := c.Client().RbacV1()
	_, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "developer"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "events"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{""}, Resources: []string{"pods/exec", "pods/attach"}, Verbs: []string{"get", "create"}},
			{APIGroups: []string{""}, Resources: []string{"pods/ephemeralcontainers"}, Verbs: []string{"patch"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	_, err = rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "developer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "developer"},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: demoUser}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return c.Kubeconfig("alice", demoUser, "dev", "system:authenticated")
}

func deploy(ctx context.Context, c *cluster.Cluster) (*corev1.Pod, error) {
	if _, err := c.Client().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: demoNS}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	labels := map[string]string{"app": "web"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: demoNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{{Name: "app", Image: "registry.invalid/shop/web:1"}},
					TerminationGracePeriodSeconds: ptr.To[int64](0),
				},
			},
		},
	}
	if _, err := c.Client().AppsV1().Deployments(demoNS).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	var pod *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := c.Client().CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil || len(list.Items) == 0 {
			return false, nil
		}
		pod = &list.Items[0]
		return true, nil
	})
	return pod, err
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("finding the repository: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// startBackground runs the demo in a detached process that keeps the
// control plane up, and returns once it is ready.
func startBackground(ctx context.Context) error {
	dir := stateDir()
	_ = stopBackground()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(os.TempDir(), "exec-reaper-demo.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "-serve")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	if err := os.WriteFile(pidFile(), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return err
	}
	fmt.Printf("Starting in the background (log: %s)...\n", logPath)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ready := filepath.Join(dir, "ready")
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			return ctx.Err()
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("background demo exited: %v\n%s", err, b)
		case <-tick.C:
			if _, err := os.Stat(ready); err == nil {
				b, _ := os.ReadFile(logPath)
				fmt.Print(string(b))
				return nil
			}
		}
	}
}

// stopBackground stops the process started by -up and waits for it to exit.
func stopBackground() error {
	b, err := os.ReadFile(pidFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("bad pid file %s: %w", pidFile(), err)
	}
	_ = os.Remove(pidFile())
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return nil // already gone
	}
	err = wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		return p.Signal(syscall.Signal(0)) != nil, nil
	})
	if err != nil {
		return fmt.Errorf("process %d did not stop", pid)
	}
	fmt.Println("Stopped the local control plane.")
	return nil
}

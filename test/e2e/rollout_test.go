//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/exec-reaper/exec-reaper/internal/pki"
	"github.com/exec-reaper/exec-reaper/test/install"
)

// rolloutTimeout bounds one rolling restart of the provider replicas.
const rolloutTimeout = 2 * time.Minute

// execStream runs `kubectl exec` from several workers, back to back, each
// worker into a pod of its own (so that each exec is exactly one entry: a
// record folds a repeat of its last entry, such as the SPDY retry of an exec
// whose WebSocket upgrade found no node), each exec with its own command.
type execStream struct {
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	pods []*corev1.Pod

	mu       sync.Mutex
	admitted []int // per worker
	denied   []string
	failed   []string
}

// startExecs starts one worker per pod, exec'ing as alice until stopped.
func startExecs(t *testing.T, pods ...*corev1.Pod) *execStream {
	t.Helper()
	s := &execStream{stop: make(chan struct{}), pods: pods, admitted: make([]int, len(pods))}
	for w, pod := range pods {
		s.wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-s.stop:
					return
				default:
				}
				_, stderr, err := kubectl(t, aliceKubeconfig, "exec", "-n", pod.Namespace, pod.Name, "-c", "app", "--", "echo", fmt.Sprintf("%d-%d", w, n))
				s.mu.Lock()
				switch {
				case strings.Contains(stderr, "denied"):
					s.denied = append(s.denied, time.Now().Format("15:04:05.000")+" "+strings.TrimSpace(stderr))
				case err == nil || noNode.MatchString(stderr):
					s.admitted[w]++
				default:
					s.failed = append(s.failed, strings.TrimSpace(stderr))
				}
				s.mu.Unlock()
			}
		})
	}
	t.Cleanup(s.halt)
	return s
}

// halt stops the workers and waits for them.
func (s *execStream) halt() { s.once.Do(func() { close(s.stop); s.wg.Wait() }) }

// Admitted returns how many execs were admitted so far, in all.
func (s *execStream) Admitted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, a := range s.admitted {
		n += a
	}
	return n
}

// waitMore waits until every worker's pod has n more entries than its
// worker had admitted execs when called.
func (s *execStream) waitMore(t *testing.T, n int) {
	t.Helper()
	s.mu.Lock()
	want := append([]int(nil), s.admitted...)
	s.mu.Unlock()
	for w, pod := range s.pods {
		waitEntries(t, pod, want[w]+n)
	}
}

// finish stops the stream and fails t if any exec was denied or failed,
// then asserts that every admitted exec is recorded on its pod.
func (s *execStream) finish(t *testing.T, what string) int {
	t.Helper()
	s.halt()
	total := s.Admitted()
	if len(s.denied) > 0 || len(s.failed) > 0 {
		t.Errorf("%s: %d execs admitted, %d denied, %d failed otherwise\ndenied: %v\nfailed: %v",
			what, total, len(s.denied), len(s.failed), s.denied, s.failed)
	}
	for w, pod := range s.pods {
		rec := waitEntries(t, pod, s.admitted[w])
		if rec.Entries != s.admitted[w] {
			t.Errorf("%s: %d execs into %s admitted, %d recorded", what, s.admitted[w], pod.Name, rec.Entries)
		}
	}
	return total
}

// TestRollingRestart: a rolling restart of the provider's replicas (two, as
// the chart recommends) during a steady stream of execs under the strict
// constraint (deny, failurePolicy Fail). Each step is what a Deployment with
// maxUnavailable 0 does: start the new replica, wait until it is ready and
// the balancer (standing in for the Service) routes to it, SIGTERM the old
// one, wait for it to exit. Not one exec may be denied and every one must be
// recorded: a stopping replica stops being ready, keeps serving through the
// propagation delay closing each connection after its next response (so
// Gatekeeper's connections move),
// and finishes what it has in flight.
func TestRollingRestart(t *testing.T) {
	ns := namespace(t, strictNS)
	ctx, cancel := context.WithTimeout(context.Background(), rolloutTimeout)
	defer cancel()
	pods := guardedPods(t, ns, "rollout-a", "rollout-b")
	for len(inst.Providers) < 2 {
		if _, err := inst.StartProviderReplica(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	var oldLogs []string
	for _, r := range inst.Providers {
		oldLogs = append(oldLogs, r.Process.LogFile)
	}
	_, rejectedBefore := inst.Balancer.Stats()

	stream := startExecs(t, pods...)
	stream.waitMore(t, 2)
	start := time.Now()
	steps, err := inst.RollProviders(ctx, nil)
	if err != nil {
		t.Fatalf("rolling restart: %v (%s)", err, inst.Balancer)
	}
	took := time.Since(start)
	during := stream.Admitted()
	// A few more on the new replicas only.
	stream.waitMore(t, 2)
	n := stream.finish(t, "rolling restart")

	for _, s := range steps {
		t.Logf("  %s", s)
		if s.Unrouted.IsZero() || s.Unrouted.Sub(s.Terminated) > install.ProviderDrainDelay {
			t.Errorf("%s: the balancer did not stop routing to it within the drain delay %s", s.Old, install.ProviderDrainDelay)
		}
	}
	for _, f := range oldLogs {
		t.Logf("  %s: %s", f[strings.LastIndex(f, "/")+1:], drainLine(t, f))
	}
	if _, rejected := inst.Balancer.Stats(); rejected != rejectedBefore {
		t.Errorf("the balancer rejected %d connections for want of a ready replica", rejected-rejectedBefore)
	}
	t.Logf("%d execs admitted in all, %d of them during the %s rolling restart of %d replicas; %d denied",
		n, during, took.Round(time.Millisecond), len(steps), len(stream.denied))
}

// drainLine returns the lines of a replica's log about its drain.
func drainLine(t *testing.T, logFile string) string {
	t.Helper()
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if m := regexp.MustCompile(`"(Draining|Closing the listener|Stopped serving)[^"]*".*`).FindString(l); m != "" {
			out = append(out, m)
		}
	}
	return strings.Join(out, " | ")
}

// TestProviderLogs: the provider's first start, before its certificate
// existed, logged no error and counted no failed reload (the wait for a
// certificate not yet issued is quiet), and cert-controller's own logs reach
// the provider's log.
func TestProviderLogs(t *testing.T) {
	failWithLogs(t)
	first := inst.FirstProviderLog
	b, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	for _, bad := range []string{"Reloading certificates; keeping the previous ones", "Writing certificates from Secret"} {
		if strings.Contains(log, bad) {
			t.Errorf("the first start logged %q:\n%s", bad, grepLines(log, bad))
		}
	}
	if !strings.Contains(log, "starting cert rotator controller") {
		t.Errorf("cert-controller's logs are missing from %s", first)
	}
}

func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestReadinessWaitsForCABundle: a replica whose Provider object does not yet
// carry the CA of its certificate is not ready, whatever else it has loaded,
// so that `helm install --wait` cannot go on to a fail-closed constraint
// while Gatekeeper cannot call it. The replica runs as the chart's
// ServiceAccount for a Provider and Secret of its own; it may issue its
// certificate, but not update the Provider until the test allows it.
func TestReadinessWaitsForCABundle(t *testing.T) {
	failWithLogs(t)
	ctx, cancel := context.WithTimeout(context.Background(), rolloutTimeout)
	defer cancel()
	const name = "exec-reaper-readiness"
	secrets := c.Client().CoreV1().Secrets(inst.Namespace)
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = secrets.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	placeholder, err := pki.NewCA("readiness-placeholder")
	if err != nil {
		t.Fatal(err)
	}
	prov := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "Provider",
		"metadata": map[string]any{"name": name},
		"spec": map[string]any{
			"url": "https://localhost:1/v1/record", "timeout": int64(2),
			"caBundle": base64.StdEncoding.EncodeToString(placeholder.CertPEM),
		},
	}}
	if _, err := c.Dynamic().Resource(providerGVR).Create(ctx, prov, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Dynamic().Resource(providerGVR).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	// The chart grants reads and updates of its own Secret and Provider
	// only, by name; grant this Secret and reads of this Provider now, and
	// its updates later.
	grantProvider(t, "Role", inst.Namespace, name+"-secret", rbacv1.PolicyRule{
		APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{name}, Verbs: []string{"list", "watch", "update"},
	})
	grantProvider(t, "ClusterRole", "", name+"-provider-read", rbacv1.PolicyRule{
		APIGroups: []string{"externaldata.gatekeeper.sh"}, Resources: []string{"providers"}, ResourceNames: []string{name}, Verbs: []string{"list", "watch"},
	})

	r, err := inst.StartProviderProcess(ctx, map[string]string{
		"cert-secret":   inst.Namespace + "/" + name,
		"provider-name": name,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Process.Stop() })
	readyz := "http://" + r.Probe + "/readyz"
	// Its certificate issued and loaded (cert-controller filled the Secret)...
	poll(t, "the replica's certificate in its Secret", rotationTimeout, func(ctx context.Context) (bool, error) {
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		return err == nil && len(s.Data["tls.crt"]) > 0, nil
	})
	var body string
	poll(t, "/readyz to name the caBundle", rotationTimeout, func(ctx context.Context) (bool, error) {
		body, _ = probe(ctx, readyz)
		return strings.Contains(body, "caBundle"), nil
	})
	t.Logf("with a placeholder caBundle, /readyz says: %s", strings.TrimSpace(body))
	// ...and still not ready once cert-controller has failed to inject.
	poll(t, "cert-controller to fail to update the Provider", rotationTimeout, func(context.Context) (bool, error) {
		b, err := os.ReadFile(r.Process.LogFile)
		return err == nil && strings.Contains(string(b), "Error updating webhook with certificate"), nil
	})
	if body, ok := probe(ctx, readyz); ok {
		t.Fatalf("ready although the Provider's caBundle is a placeholder: %s", body)
	}

	grantProvider(t, "ClusterRole", "", name+"-provider", rbacv1.PolicyRule{
		APIGroups: []string{"externaldata.gatekeeper.sh"}, Resources: []string{"providers"}, ResourceNames: []string{name}, Verbs: []string{"update"},
	})
	poll(t, "the replica ready once cert-controller injected its CA", 3*rotationTimeout, func(ctx context.Context) (bool, error) {
		_, ok := probe(ctx, readyz)
		return ok, nil
	})
	p, err := c.Dynamic().Resource(providerGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s, _, _ := unstructuredString(p.Object, "spec", "caBundle"); s == base64.StdEncoding.EncodeToString(placeholder.CertPEM) {
		t.Fatal("ready while the caBundle is still the placeholder")
	}
}

// guardedPods creates guarded pods (see guardedPod).
func guardedPods(t *testing.T, ns string, names ...string) []*corev1.Pod {
	t.Helper()
	var pods []*corev1.Pod
	for _, name := range names {
		pods = append(pods, guardedPod(t, ns, name))
	}
	return pods
}

// probe GETs a probe URL and returns its body and whether it answered 200.
func probe(ctx context.Context, url string) (string, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err.Error(), false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error(), false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode == http.StatusOK
}

// grantProvider binds a Role (namespace set) or ClusterRole with one rule to the
// provider's ServiceAccount, for the test's duration.
func grantProvider(t *testing.T, kind, ns, name string, rule rbacv1.PolicyRule) {
	t.Helper()
	ctx := context.Background()
	rbac := c.Client().RbacV1()
	subject := []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: inst.ProviderUser}}
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: name}
	var err error
	if kind == "Role" {
		if _, err = rbac.Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Rules: []rbacv1.PolicyRule{rule}}, metav1.CreateOptions{}); err == nil {
			_, err = rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, RoleRef: ref, Subjects: subject}, metav1.CreateOptions{})
		}
		t.Cleanup(func() {
			_ = rbac.RoleBindings(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
			_ = rbac.Roles(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	} else {
		if _, err = rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: []rbacv1.PolicyRule{rule}}, metav1.CreateOptions{}); err == nil {
			_, err = rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name}, RoleRef: ref, Subjects: subject}, metav1.CreateOptions{})
		}
		t.Cleanup(func() {
			_ = rbac.ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
			_ = rbac.ClusterRoles().Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	}
	if err != nil {
		t.Fatal(err)
	}
}

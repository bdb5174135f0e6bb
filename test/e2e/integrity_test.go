//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/exec-reaper/exec-reaper/record"
)

// longPrefix starts the namespaces where entries get a long ttl, so that
// tests can work on a recorded pod without racing its eviction.
const longPrefix = "e2e-long-"

var longOnce sync.Once

// longNamespace creates a namespace whose entries get a one-hour deadline:
// the suite's default constraint (TTL) is told to skip it, and a constraint
// of its own matches it.
func longNamespace(t *testing.T, name string) string {
	t.Helper()
	longOnce.Do(func() {
		ctx := context.Background()
		out, _, err := c.Kubectl(ctx, "", "get", "k8sexecreaper", "exec-reaper", "-o", "jsonpath={.spec.match.excludedNamespaces}")
		if err != nil {
			t.Fatal(err)
		}
		var excluded []string
		if err := json.Unmarshal([]byte(out), &excluded); err != nil {
			t.Fatalf("reading the default constraint's exclusions %q: %v", out, err)
		}
		patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"match": map[string]any{"excludedNamespaces": append(excluded, longPrefix+"*")}}})
		if _, _, err := c.Kubectl(ctx, "", "patch", "k8sexecreaper", "exec-reaper", "--type=merge", "-p", string(patch)); err != nil {
			t.Fatal(err)
		}
		long := `{"apiVersion":"constraints.gatekeeper.sh/v1beta1","kind":"K8sExecReaper","metadata":{"name":"e2e-long"},` +
			`"spec":{"enforcementAction":"warn","match":{"kinds":[{"apiGroups":[""],"kinds":["PodExecOptions","PodAttachOptions","Pod"]}],` +
			`"namespaces":["` + longPrefix + `*"]},"parameters":{"ttl":"1h","failurePolicy":"Ignore"}}}`
		if _, _, err := c.Kubectl(ctx, "", "apply", "-f", writeTemp(t, "long.json", long)); err != nil {
			t.Fatal(err)
		}
	})
	ns := namespace(t, longPrefix+name)
	// Gatekeeper takes a moment to enforce a changed constraint: probe until
	// an entry here gets the long deadline and only that.
	var n int
	poll(t, "the long-ttl constraint in force", 60*time.Second, func(ctx context.Context) (bool, error) {
		n++
		probe := barePod(t, ns, fmt.Sprintf("probe-%d", n), nil)
		_, _, _ = kubectl(t, aliceKubeconfig, "exec", "-n", ns, probe.Name, "-c", "app", "--", "true")
		var ok bool
		_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, recordTimeout, true, func(ctx context.Context) (bool, error) {
			p, err := c.Client().CoreV1().Pods(ns).Get(ctx, probe.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			d, _, err := record.Binding(p.Labels, p.Annotations)
			if err != nil {
				return false, nil
			}
			ok = time.Until(d) > 30*time.Minute
			return true, nil
		})
		_ = c.Client().CoreV1().Pods(ns).Delete(ctx, probe.Name, metav1.DeleteOptions{})
		return ok, nil
	})
	return ns
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// extenders is the group the suite installs as guard.extensionGroups.
const extenders = "reaper-admins"

// guardNode is the node name that integrity tests bind pods to, so that a
// node credential may write their status (Node authorizer, NodeRestriction).
// No kubelet runs under this name; the Node object exists so the pod
// garbage collector keeps the pods.
const guardNode = "e2e-guard-node"

// The guard's refusal, as the API server words a ValidatingAdmissionPolicy's.
const guardDenied = "denied request"

// actor is a credential an attacker might hold.
type actor struct {
	name   string
	client kubernetes.Interface
	// status writes through pods/status instead of pods.
	status bool
}

func clientFor(t *testing.T, name, user string, groups ...string) kubernetes.Interface {
	t.Helper()
	cl, err := userClient(name, user, groups, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// userClient is a client that authenticates as user in groups (through a
// kubeconfig named name), with its REST config first adjusted by tune (nil:
// as it is).
func userClient(name, user string, groups []string, tune func(*rest.Config)) (kubernetes.Interface, error) {
	kc, err := c.Kubeconfig(name, user, groups...)
	if err != nil {
		return nil, err
	}
	cfg, err := c.RESTConfig(kc)
	if err != nil {
		return nil, err
	}
	if tune != nil {
		tune(cfg)
	}
	return kubernetes.NewForConfig(cfg)
}

// grant binds a Role with rules in ns to user.
func grant(t *testing.T, ns, user string, rules ...rbacv1.PolicyRule) {
	t.Helper()
	ctx := context.Background()
	name := "e2e-" + strings.NewReplacer("@", "-", ".", "-", ":", "-").Replace(user)
	rbac := c.Client().RbacV1()
	if _, err := rbac.Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// recordedPod creates a pod bound to guardNode and has alice exec into it,
// so that it carries a record the real provider wrote.
func recordedPod(t *testing.T, ns, name string) (*corev1.Pod, record.Record) {
	t.Helper()
	return recordedPodRunning(t, ns, name, "true")
}

// recordedPodRunning is recordedPod, entered with command.
func recordedPodRunning(t *testing.T, ns, name string, command ...string) (*corev1.Pod, record.Record) {
	t.Helper()
	ctx := context.Background()
	_, err := c.Client().CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: guardNode}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	spec := appSpec()
	spec.NodeName = guardNode
	pod, err := c.Client().CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec:       spec,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, err := kubectl(t, aliceKubeconfig, append([]string{"exec", "-n", ns, name, "-c", "app", "--"}, command...)...)
	if err != nil && strings.Contains(stderr, "denied") {
		t.Fatalf("exec was denied: %s", stderr)
	}
	rec := waitRecord(t, pod)
	pod, err = c.Client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Labels[record.PodUIDLabel] != string(pod.UID) {
		t.Fatalf("record binds pod UID by label %s=%q, want %q", record.PodUIDLabel, pod.Labels[record.PodUIDLabel], pod.UID)
	}
	return pod, rec
}

// patch sends a JSON merge patch of the pod's metadata (or, with status, of
// the pods/status subresource) as a.
func (a actor) patch(pod *corev1.Pod, p map[string]any) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	var sub []string
	if a.status {
		sub = []string{"status"}
	}
	_, err = a.client.CoreV1().Pods(pod.Namespace).Patch(context.Background(), pod.Name, types.MergePatchType, b, metav1.PatchOptions{}, sub...)
	return err
}

func metadata(field string, kv map[string]any) map[string]any {
	return map[string]any{"metadata": map[string]any{field: kv}}
}

// attacks are the changes that would strip, move, unbind or forge a record.
func attacks(rec record.Record) map[string]map[string]any {
	later := strconv.FormatInt(rec.Deadline.Add(24*time.Hour).Unix(), 10)
	return map[string]map[string]any{
		"strip the deadline label":     metadata("labels", map[string]any{record.DeadlineLabel: nil}),
		"move the deadline later":      metadata("labels", map[string]any{record.DeadlineLabel: later}),
		"unbind by the pod-uid label":  metadata("labels", map[string]any{record.PodUIDLabel: nil}),
		"unbind by the pod-uid annot.": metadata("annotations", map[string]any{record.PodUIDAnnotation: "00000000-0000-0000-0000-000000000000"}),
		"rewrite who entered":          metadata("annotations", map[string]any{record.LastEntryAnnotation: `{"user":"someone-else"}`}),
	}
}

// assertUnchanged asserts that pod still carries rec's binding.
func assertBinding(t *testing.T, pod *corev1.Pod, rec record.Record) {
	t.Helper()
	p, err := c.Client().CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deadline, uid, err := record.Binding(p.Labels, p.Annotations)
	if err != nil || !deadline.Equal(rec.Deadline) || uid != pod.UID {
		t.Fatalf("record on %s is now deadline %s uid %s (err %v), want %s %s", pod.Name, deadline, uid, err, rec.Deadline, pod.UID)
	}
	if p.Annotations[record.PodUIDAnnotation] != string(pod.UID) {
		t.Fatalf("pod-uid annotation is now %q", p.Annotations[record.PodUIDAnnotation])
	}
}

// TestGuardKeepsRecords: nobody but the provider can strip, move, unbind or
// rewrite a record, whatever path and credential they use: patch on pods,
// patch on pods/status, the node's own credential, or cluster-admin.
func TestGuardKeepsRecords(t *testing.T) {
	ns := longNamespace(t, "guard")
	pod, rec := recordedPod(t, ns, "guarded")

	statusUser, podUser := "status-writer@example.com", "pod-writer@example.com"
	grant(t, ns, statusUser, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"get", "patch", "update"}})
	grant(t, ns, podUser, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "patch", "update"}})
	actors := []actor{
		{name: "patch pods/status", status: true, client: clientFor(t, "status-writer", statusUser, "system:authenticated")},
		{name: "patch pods", client: clientFor(t, "pod-writer", podUser, "system:authenticated")},
		{name: "the node's credential", status: true, client: clientFor(t, "node", "system:node:"+guardNode, "system:nodes", "system:authenticated")},
		{name: "cluster-admin via pods", client: c.Client()},
		{name: "cluster-admin via pods/status", status: true, client: c.Client()},
	}
	for _, a := range actors {
		for what, p := range attacks(rec) {
			t.Run(a.name+"/"+what, func(t *testing.T) {
				err := a.patch(pod, p)
				if err == nil {
					t.Fatalf("%s could %s", a.name, what)
				}
				if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
					t.Fatalf("%s: refused for an unexpected reason: %v", what, err)
				}
				assertBinding(t, pod, rec)
			})
		}
	}
	// The guard, not only RBAC or NodeRestriction, is what refuses an
	// annotation change through pods/status: NodeRestriction lets a node
	// change its pods' annotations.
	err := actors[2].patch(pod, attacks(rec)["unbind by the pod-uid annot."])
	if err == nil || !strings.Contains(err.Error(), guardDenied) || !strings.Contains(err.Error(), "only exec-reaper's provider writes it") {
		t.Fatalf("node's annotation change: want the guard's refusal, got %v", err)
	}
	// The refusal names what the update touched, each key once, labels apart
	// from annotations (the record has a label and an annotation of the same
	// name).
	for _, want := range []struct {
		attack, says string
	}{
		{"unbind by the pod-uid annot.", "(this update touches annotations " + record.PodUIDAnnotation + ")"},
		{"strip the deadline label", "(this update touches labels " + record.DeadlineLabel + ")"},
	} {
		err := actors[4].patch(pod, attacks(rec)[want.attack])
		if err == nil || !strings.Contains(err.Error(), want.says) {
			t.Errorf("%s: the refusal should say %q, got %v", want.attack, want.says, err)
		}
	}
	// Other changes to a recorded pod are not the guard's business.
	if err := actors[0].patch(pod, metadata("annotations", map[string]any{"example.com/note": "fine"})); err != nil {
		t.Fatalf("patch pods/status of an unrelated annotation: %v", err)
	}
}

// TestGuardRefusesForgery: nobody but the provider can put a record on a pod
// that has none, so nobody can have the deleter evict a pod for an entry that
// never happened.
func TestGuardRefusesForgery(t *testing.T) {
	ns := namespace(t, "e2e-forge")
	pod := barePod(t, ns, "innocent", nil)
	now := strconv.FormatInt(time.Now().Unix(), 10)
	forged := map[string]any{"metadata": map[string]any{
		"labels":      map[string]any{record.DeadlineLabel: now, record.PodUIDLabel: string(pod.UID)},
		"annotations": map[string]any{record.PodUIDAnnotation: string(pod.UID)},
	}}
	grant(t, ns, "forger@example.com", rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods", "pods/status"}, Verbs: []string{"get", "patch"}})
	forger := clientFor(t, "forger", "forger@example.com", "system:authenticated")
	for _, a := range []actor{
		{name: "patch pods", client: forger},
		{name: "patch pods/status", client: forger, status: true},
		{name: "cluster-admin", client: c.Client(), status: true},
		{name: "an extension group", client: clientFor(t, "extender-forger", "ext@example.com", extenders, "system:masters")},
	} {
		if err := a.patch(pod, forged); err == nil {
			t.Fatalf("%s could forge a record", a.name)
		} else if !strings.Contains(err.Error(), guardDenied) && !strings.Contains(err.Error(), "admission webhook") {
			t.Fatalf("%s: refused for an unexpected reason: %v", a.name, err)
		}
	}
	assertNoRecord(t, pod)
}

// TestGuardBoundsTheProvider: the provider's own credential can write a
// record only as a recording does; it cannot relabel, re-annotate or change
// the status of any pod, remove a record, move a deadline later or bind a
// record to another pod.
func TestGuardBoundsTheProvider(t *testing.T) {
	ns := longNamespace(t, "provider-bounds")
	pod, rec := recordedPod(t, ns, "bounded")
	provider := actor{name: "provider", status: true,
		client: clientFor(t, "provider-as-attacker", inst.ProviderUser, "system:serviceaccounts", "system:serviceaccounts:"+inst.Namespace, "system:authenticated")}
	earlier := strconv.FormatInt(rec.Deadline.Add(-time.Minute).Unix(), 10)
	refused := map[string]map[string]any{
		"take the pod out of its Service": metadata("labels", map[string]any{"app": "elsewhere"}),
		"annotate the pod":                metadata("annotations", map[string]any{"example.com/owned": "yes"}),
		"mark the pod not ready": {"status": map[string]any{"conditions": []any{
			map[string]any{"type": "Ready", "status": "False"}}}},
		"remove the record":           metadata("labels", map[string]any{record.DeadlineLabel: nil, record.PodUIDLabel: nil}),
		"move the deadline later":     attacks(rec)["move the deadline later"],
		"bind it to another pod":      metadata("labels", map[string]any{record.PodUIDLabel: "00000000-0000-0000-0000-000000000000"}),
		"unbind by the pod-uid label": attacks(rec)["unbind by the pod-uid label"],
	}
	for what, p := range refused {
		t.Run(what, func(t *testing.T) {
			err := provider.patch(pod, p)
			if err == nil {
				t.Fatalf("the provider's credential could %s", what)
			}
			if !strings.Contains(err.Error(), guardDenied) {
				t.Fatalf("%s: want the guard's refusal, got %v", what, err)
			}
			assertBinding(t, pod, rec)
		})
	}
	// What a recording does stays possible: an earlier deadline.
	if err := provider.patch(pod, metadata("labels", map[string]any{record.DeadlineLabel: earlier})); err != nil {
		t.Fatalf("the provider could not move the deadline earlier: %v", err)
	}
}

// TestGuardLetsExtendersExtend: members of guard.extensionGroups may move a
// deadline later or lift a record, nothing more.
func TestGuardLetsExtendersExtend(t *testing.T) {
	ns := longNamespace(t, "extend")
	pod, rec := recordedPod(t, ns, "extended")
	ext := actor{name: "extender", client: clientFor(t, "extender", "lead@example.com", extenders, "system:masters")}
	if err := ext.patch(pod, metadata("labels", map[string]any{record.PodUIDLabel: "00000000-0000-0000-0000-000000000000"})); err == nil {
		t.Fatal("an extender could bind the record to another pod")
	}
	later := rec.Deadline.Add(time.Hour)
	if err := ext.patch(pod, metadata("labels", map[string]any{record.DeadlineLabel: record.FormatDeadline(later)})); err != nil {
		t.Fatalf("an extender could not grant an extension: %v", err)
	}
	p, err := c.Client().CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d, _, _ := record.Binding(p.Labels, p.Annotations); !d.Equal(later) {
		t.Fatalf("deadline after the extension is %s, want %s", d, later)
	}
	// Entering again still moves it earlier: the provider records as usual.
	if _, stderr, err := kubectl(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "id"); err != nil && strings.Contains(stderr, "denied") {
		t.Fatalf("re-entry was denied: %s", stderr)
	}
	poll(t, "re-entry recorded after the extension", recordTimeout, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		d, _, _ := record.Binding(p.Labels, p.Annotations)
		return d.Before(later), nil
	})
	lift := map[string]any{"metadata": map[string]any{"labels": map[string]any{record.DeadlineLabel: nil, record.PodUIDLabel: nil}}}
	if err := ext.patch(pod, lift); err != nil {
		t.Fatalf("an extender could not lift the record: %v", err)
	}
	assertNoRecord(t, pod)
}

// TestFreshRecordOverALiftedQuarantine: an extender lifts a record that
// asked for quarantine by removing its deadline and binding, which leaves the
// action label behind; the next entry, under a constraint that asks for
// eviction, writes a record that asks for eviction, not for the leftover.
func TestFreshRecordOverALiftedQuarantine(t *testing.T) {
	ns := longNamespace(t, "relift")
	pod, _ := recordedPod(t, ns, "relifted")
	provider := actor{name: "provider", status: true,
		client: clientFor(t, "provider-as-itself", inst.ProviderUser, "system:serviceaccounts", "system:serviceaccounts:"+inst.Namespace, "system:authenticated")}
	if err := provider.patch(pod, metadata("labels", map[string]any{record.ActionLabel: string(record.ActionQuarantine)})); err != nil {
		t.Fatalf("the provider could not ask for quarantine: %v", err)
	}
	ext := actor{name: "extender", client: clientFor(t, "lifter", "lead@example.com", extenders, "system:masters")}
	if err := ext.patch(pod, metadata("labels", map[string]any{record.DeadlineLabel: nil, record.PodUIDLabel: nil})); err != nil {
		t.Fatalf("an extender could not lift the record: %v", err)
	}
	assertNoRecord(t, pod)
	if p, err := c.Client().CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{}); err != nil || p.Labels[record.ActionLabel] != string(record.ActionQuarantine) {
		t.Fatalf("after the lift the pod has labels %v (%v), want the quarantine action left behind", p.Labels, err)
	}
	if _, stderr, err := kubectl(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "id"); err != nil && strings.Contains(stderr, "denied") {
		t.Fatalf("re-entry was denied: %s", stderr)
	}
	rec := waitRecord(t, pod)
	p, err := c.Client().CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if label, ok := p.Labels[record.ActionLabel]; ok || rec.Action == record.ActionQuarantine {
		t.Errorf("the fresh record asks for %q (label %q), want eviction and no action label", rec.Action, label)
	}
}

// TestPasswordsNotPublished: with the shipped recordCommand (program), a
// password on a command line reaches neither the pod's record nor its Event,
// which every reader of the namespace sees; the record keeps the program and
// the digest of the whole command instead.
func TestPasswordsNotPublished(t *testing.T) {
	ns := longNamespace(t, "secrets")
	pod, _ := recordedPodRunning(t, ns, "db-client", "mysql", "-uroot", "-pS3cr3t!", "shop")
	rec := waitRecord(t, pod)
	whole := []string{"mysql", "-uroot", "-pS3cr3t!", "shop"}
	e := rec.First
	if !slices.Equal(e.Command, []string{"mysql"}) || e.Digests["command"] != record.Digest(whole) || !slices.Contains(e.Truncated, "command") {
		t.Fatalf("entry command %q truncated %v digests %v; want [mysql], command marked, digest %s", e.Command, e.Truncated, e.Digests, record.Digest(whole))
	}
	p, err := c.Client().CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range p.Annotations {
		if strings.Contains(v, "S3cr3t") {
			t.Errorf("annotation %s publishes the password: %s", k, v)
		}
	}
	for _, ev := range waitEvents(t, pod, "ExecReaperEntered", 1) {
		if strings.Contains(ev.Message, "S3cr3t") {
			t.Errorf("Event publishes the password: %s", ev.Message)
		}
	}
}

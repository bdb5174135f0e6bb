//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/exec-reaper/exec-reaper/record"
)

// trialAnnotation is the annotation a v2 provider writes for a trial entry
// (KEY-V2.md).
const trialAnnotation = "exec-reaper.io/trial"

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// templateTTLPattern returns the ttl pattern of the repository's template.
func templateTTLPattern(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "templates", "exec-reaper", "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var tmpl map[string]any
	if err := yaml.Unmarshal(data, &tmpl); err != nil {
		t.Fatal(err)
	}
	p, _, _ := unstructured.NestedString(tmpl, "spec", "crd", "spec", "validation", "openAPIV3Schema", "properties", "ttl", "pattern")
	if p == "" {
		t.Fatal("the template has no ttl pattern")
	}
	return p
}

// writeConstraint writes a K8sExecReaper constraint for kubectl.
func writeConstraint(t *testing.T, name, action string, match, params map[string]any) string {
	t.Helper()
	obj := map[string]any{
		"apiVersion": "constraints.gatekeeper.sh/v1beta1",
		"kind":       "K8sExecReaper",
		"metadata":   map[string]any{"name": name},
		"spec": map[string]any{
			"enforcementAction": action,
			"match": mergeMaps(map[string]any{
				"kinds": []any{map[string]any{"apiGroups": []any{""}, "kinds": []any{"PodExecOptions", "PodAttachOptions", "PodPortForwardOptions", "Pod"}}},
			}, match),
			"parameters": params,
		},
	}
	data, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func mergeMaps(a, b map[string]any) map[string]any {
	for k, v := range b {
		a[k] = v
	}
	return a
}

// TestConstraintSchemaRefusesBadParameters: Gatekeeper's generated
// K8sExecReaper CRD carries the template's parameter schema, so the API
// server refuses at kubectl apply a constraint whose ttl or mode the
// provider would refuse at every exec.
func TestConstraintSchemaRefusesBadParameters(t *testing.T) {
	failWithLogs(t)
	ctx := context.Background()
	crd, err := c.Dynamic().Resource(crdGVR).Get(ctx, "k8sexecreaper.constraints.gatekeeper.sh", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	if len(versions) == 0 {
		t.Fatal("the constraint CRD has no versions")
	}
	want := templateTTLPattern(t)
	for _, v := range versions {
		vm := v.(map[string]any)
		got, _, _ := unstructured.NestedString(vm, "schema", "openAPIV3Schema", "properties", "spec", "properties", "parameters", "properties", "ttl", "pattern")
		if got != want {
			t.Errorf("CRD version %v: ttl pattern %q, want the template's %q", vm["name"], got, want)
		}
		enum, _, _ := unstructured.NestedStringSlice(vm, "schema", "openAPIV3Schema", "properties", "spec", "properties", "parameters", "properties", "mode", "enum")
		if strings.Join(enum, ",") != "enforce,trial" {
			t.Errorf("CRD version %v: mode enum %v", vm["name"], enum)
		}
	}
	for _, tc := range []struct{ name, field, value string }{
		{"ttl-zero", "ttl", "0s"},
		{"ttl-800h", "ttl", "800h"},
		{"ttl-abc", "ttl", "abc"},
		{"ttl-days", "ttl", "1d"},
		{"ttl-compound", "ttl", "1h30m"},
		{"mode-dryrun", "mode", "dryrun"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			params := map[string]any{"ttl": "1h", "failurePolicy": "Fail"}
			params[tc.field] = tc.value
			path := writeConstraint(t, "e2e-bad-"+tc.name, "deny", map[string]any{"namespaces": []any{"e2e-nowhere"}}, params)
			_, stderr, err := kubectl(t, "", "apply", "-f", path)
			if err == nil {
				_, _, _ = kubectl(t, "", "delete", "-f", path)
				t.Fatalf("kubectl apply accepted %s: %q", tc.field, tc.value)
			}
			if !strings.Contains(stderr, "spec.parameters."+tc.field) ||
				!(strings.Contains(stderr, "Invalid value") || strings.Contains(stderr, "Unsupported value")) {
				t.Errorf("refused, but not by the schema at spec.parameters.%s: %s", tc.field, stderr)
			}
		})
	}
	// A good one is accepted (as a server-side dry run: nothing changes).
	path := writeConstraint(t, "e2e-good", "deny", map[string]any{"namespaces": []any{"e2e-nowhere"}}, map[string]any{"ttl": "90m", "mode": "trial"})
	poll(t, "a valid constraint accepted", 60*time.Second, func(ctx context.Context) (bool, error) {
		_, _, err := c.Kubectl(ctx, "", "apply", "--dry-run=server", "-f", path)
		return err == nil, nil
	})
}

// applyConstraint applies a constraint file, retrying while Gatekeeper
// catches up, and deletes it when the test ends.
func applyConstraint(t *testing.T, path string) {
	t.Helper()
	var lastErr error
	poll(t, "constraint "+filepath.Base(path)+" applied", 60*time.Second, func(ctx context.Context) (bool, error) {
		_, _, lastErr = c.Kubectl(ctx, "", "apply", "-f", path)
		return lastErr == nil, nil
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		_, _, _ = c.Kubectl(ctx, "", "delete", "--ignore-not-found", "-f", path)
	})
}

// waitConstraintEnforced waits until Gatekeeper reports the constraint enforced by its
// webhook (status.byPod[].enforced), so that an exec right after is
// evaluated against it.
func waitConstraintEnforced(t *testing.T, name string) {
	t.Helper()
	gvr := schema.GroupVersionResource{Group: "constraints.gatekeeper.sh", Version: "v1beta1", Resource: "k8sexecreaper"}
	poll(t, "constraint "+name+" enforced", 60*time.Second, func(ctx context.Context) (bool, error) {
		u, err := c.Dynamic().Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pods, _, _ := unstructured.NestedSlice(u.Object, "status", "byPod")
		for _, p := range pods {
			if e, _ := p.(map[string]any)["enforced"].(bool); e {
				return true, nil
			}
		}
		return false, nil
	})
}

// TestDryrunRecordsForReal documents why the README steers trials away
// from enforcementAction: dryrun: Gatekeeper evaluates a dryrun constraint,
// provider call included, so its entries are recorded for real, deadline
// label and all. The default constraint exempts breakglass, so the dryrun
// constraint (which exempts no one) is the only one that records here.
func TestDryrunRecordsForReal(t *testing.T) {
	ns := namespace(t, "e2e-dryrun")
	path := writeConstraint(t, "e2e-dryrun", "dryrun", map[string]any{"namespaces": []any{ns}}, map[string]any{"ttl": "1h", "failurePolicy": "Ignore"})
	applyConstraint(t, path)
	waitConstraintEnforced(t, "e2e-dryrun")
	pod := barePod(t, ns, "web", appLabels)
	bg, err := c.Kubeconfig("breakglass-dryrun", breakglass, "dev")
	if err != nil {
		t.Fatal(err)
	}
	kubectlExec(t, bg, pod, "sh")
	rec := waitRecord(t, pod)
	if rec.First.User != breakglass {
		t.Errorf("recorded user %q", rec.First.User)
	}
	t.Logf("a dryrun constraint recorded the exec with deadline %s: dryrun is no trial", rec.Deadline.Format(time.RFC3339))
}

// TestTrialModeNeverEvicts: a constraint in mode: trial records each entry
// as a trial entry, without the deadline label the deleter selects, and the
// pod outlives the ttl. As above, only the trial constraint records
// breakglass's exec.
func TestTrialModeNeverEvicts(t *testing.T) {
	ns := namespace(t, "e2e-trial")
	path := writeConstraint(t, "e2e-trial", "warn", map[string]any{"namespaces": []any{ns}},
		map[string]any{"ttl": fmt.Sprintf("%ds", int(TTL.Seconds())), "mode": "trial", "failurePolicy": "Ignore", "notice": true})
	applyConstraint(t, path)
	waitConstraintEnforced(t, "e2e-trial")
	pod := barePod(t, ns, "web", appLabels)
	gone := watchGone(t, pod)
	bg, err := c.Kubeconfig("breakglass-trial", breakglass, "dev")
	if err != nil {
		t.Fatal(err)
	}
	kubectlExec(t, bg, pod, "sh")
	// The v2 provider writes the trial annotation; never the label.
	var annotations map[string]string
	poll(t, "trial annotation on "+pod.Name, recordTimeout, func(ctx context.Context) (bool, error) {
		p, err := c.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if _, ok := p.Labels[record.DeadlineLabel]; ok {
			return false, fmt.Errorf("a trial entry set the deadline label: %v", p.Labels)
		}
		annotations = p.Annotations
		return annotations[trialAnnotation] != "", nil
	})
	t.Logf("trial record: %s", annotations[trialAnnotation])
	if at, evicted := gone(TTL + evictionTimeout); evicted {
		t.Fatalf("pod in a trial constraint's namespace was deleted at %s", at.Format(time.RFC3339))
	}
	assertNoRecord(t, pod)
}

// TestMisconfiguredConstraintSaysSo: a strict constraint naming a Provider
// that does not exist (as after exec-reaper was uninstalled with the
// constraint left behind) refuses the exec with a message that names the
// constraint, calls it misconfigured and claims no HTTP status.
func TestMisconfiguredConstraintSaysSo(t *testing.T) {
	ns := namespace(t, "e2e-no-provider")
	path := writeConstraint(t, "e2e-no-provider", "deny", map[string]any{"namespaces": []any{ns}},
		map[string]any{"ttl": "1h", "failurePolicy": "Fail", "provider": "gone"})
	applyConstraint(t, path)
	waitConstraintEnforced(t, "e2e-no-provider")
	pod := barePod(t, ns, "web", appLabels)
	bg, err := c.Kubeconfig("breakglass-no-provider", breakglass, "dev")
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, err := kubectl(t, bg, "exec", "-n", ns, pod.Name, "-c", "app", "--", "sh")
	if err == nil {
		t.Fatal("exec admitted under a strict constraint that cannot record")
	}
	for _, want := range []string{"[e2e-no-provider] exec-reaper denied this exec into pod " + ns + "/web: this constraint is misconfigured",
		`Gatekeeper has no Provider named "gone"`, "Retrying will not help"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("kubectl said %q; want it to contain %q", stderr, want)
		}
	}
	if strings.Contains(stderr, "HTTP") || strings.Contains(stderr, "Try again") {
		t.Errorf("kubectl said %q: no HTTP status was answered, and retrying does not help", stderr)
	}
	assertNoRecord(t, pod)
}

// TestUnquotableCommandRecorded: under the strict constraint, an exec whose
// command holds a DEL character is recorded. Before the template escaped
// it, Gatekeeper's external_data could not read the key, never called the
// provider, and the exec was admitted unrecorded.
func TestUnquotableCommandRecorded(t *testing.T) {
	pod := barePod(t, namespace(t, strictNS), "web-del", appLabels)
	kubectlExec(t, aliceKubeconfig, pod, "sh", "-c", "echo \x7f")
	rec := waitRecord(t, pod)
	if got := rec.First.Command; len(got) != 3 || got[2] != "echo \x7f" {
		t.Errorf("recorded command %q", got)
	}
}

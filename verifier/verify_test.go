package verifier

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/open-policy-agent/frameworks/constraint/pkg/client/reviews"
	"github.com/open-policy-agent/frameworks/constraint/pkg/types"
	"github.com/open-policy-agent/gatekeeper/v3/apis"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator/reader"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator/verify"
	mutationtypes "github.com/open-policy-agent/gatekeeper/v3/pkg/mutation/types"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/target"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/util"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"
)

// Every suite under templates/ passes, so `go test` covers them as
// `make verify-policies` does.
func TestTemplateSuites(t *testing.T) {
	results, err := Verify(context.Background(), Config{Path: "../templates/..."})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) < 2 {
		t.Fatalf("found %d suites under ../templates, want one per template", len(results))
	}
	cases := 0
	for _, s := range results {
		for _, tr := range s.TestResults {
			cases += len(tr.CaseResults)
		}
	}
	if Failed(results) || cases == 0 {
		var out strings.Builder
		_ = verify.PrinterGo{}.Print(&out, results, false)
		t.Fatalf("%d cases:\n%s", cases, out.String())
	}
	t.Logf("%d suites, %d cases passed", len(results), cases)
}

// A failing assertion fails the run, and paths resolve as gator's do.
func TestVerifyReportsFailures(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "pass/suite.yaml", suiteYAML("no"))
	write(t, dir, "fail/suite.yaml", suiteYAML("yes"))
	for _, d := range []string{"pass", "fail"} {
		write(t, dir, d+"/template.yaml", probeTemplate)
		write(t, dir, d+"/constraint.yaml", probeConstraint)
		write(t, dir, d+"/review.yaml", execReview("kube-system", ""))
	}
	tests := []struct {
		path       string
		wantSuites int
		wantFailed bool
	}{
		{dir + "/pass/suite.yaml", 1, false},
		{dir + "/fail", 1, true},
		{dir + "/...", 2, true},
		{dir + "/pass/...", 1, false},
	}
	for _, tt := range tests {
		t.Run(strings.TrimPrefix(tt.path, dir), func(t *testing.T) {
			results, err := Verify(context.Background(), Config{Path: tt.path})
			if err != nil {
				t.Fatal(err)
			}
			if len(results) != tt.wantSuites || Failed(results) != tt.wantFailed {
				t.Errorf("got %d suites, failed %v; want %d, %v", len(results), Failed(results), tt.wantSuites, tt.wantFailed)
			}
			if !strings.HasPrefix(results[0].Path, dir) {
				t.Errorf("suite path %q, want it under %q as given", results[0].Path, dir)
			}
		})
	}
	if _, err := Verify(context.Background(), Config{Path: dir + "/missing"}); err == nil {
		t.Error("a missing path gave no error")
	}
	if _, err := Verify(context.Background(), Config{Path: dir, Run: "a//b//c"}); err == nil {
		t.Error("an invalid filter gave no error")
	}
}

func suiteYAML(violations string) string {
	return `kind: Suite
apiVersion: test.gatekeeper.sh/v1alpha1
tests:
  - name: probe
    template: template.yaml
    constraint: constraint.yaml
    cases:
      - name: excluded
        object: review.yaml
        assertions:
          - violations: ` + violations + "\n"
}

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// probeTemplate reports what a review saw of its Namespace and UID.
const probeTemplate = `apiVersion: templates.gatekeeper.sh/v1
kind: ConstraintTemplate
metadata:
  name: k8snamespaceprobe
spec:
  crd:
    spec:
      names:
        kind: K8sNamespaceProbe
  targets:
    - target: admission.k8s.gatekeeper.sh
      rego: |
        package k8snamespaceprobe
        violation[{"msg": msg}] {
          meta := object.get(input.review, ["namespaceObject", "metadata"], {})
          team := object.get(object.get(meta, "labels", {}), "team", "")
          msg := sprintf("namespace=%v team=%v uid=%v", [object.get(meta, "name", ""), team, input.review.uid])
        }
`

const probeConstraint = `apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sNamespaceProbe
metadata:
  name: probe
spec:
  match:
    kinds:
      - apiGroups: [""]
        kinds: ["PodExecOptions"]
    excludedNamespaces: ["kube-system"]
    namespaceSelector:
      matchExpressions:
        - {key: team, operator: NotIn, values: ["excluded"]}
`

func execReview(ns, uid string) string {
	return `apiVersion: admission.k8s.io/v1
kind: AdmissionReview
request:
  uid: "` + uid + `"
  kind: {group: "", version: v1, kind: PodExecOptions}
  resource: {group: "", version: v1, resource: pods}
  subResource: exec
  name: web
  namespace: ` + ns + `
  operation: CONNECT
  userInfo: {username: alice}
  object: {apiVersion: v1, kind: PodExecOptions, command: [sh]}
`
}

func startProvider(t *testing.T) *Provider {
	t.Helper()
	p, err := StartProvider(clock.RealClock{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// probeClient returns a client holding the probe template and constraint,
// made by newClient.
func probeClient(t *testing.T, newClient func(...gator.Opt) (gator.Client, error)) gator.Client {
	t.Helper()
	c, err := newClient()
	if err != nil {
		t.Fatal(err)
	}
	scheme := k8sruntime.NewScheme()
	if err := apis.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{
		"template.yaml":   {Data: []byte(probeTemplate)},
		"constraint.yaml": {Data: []byte(probeConstraint)},
	}
	tmpl, err := reader.ReadTemplate(scheme, fsys, "template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddTemplate(context.Background(), tmpl); err != nil {
		t.Fatal(err)
	}
	cons, err := reader.ReadConstraint(fsys, "constraint.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddConstraint(context.Background(), cons); err != nil {
		t.Fatal(err)
	}
	return c
}

func object(t *testing.T, yaml string) *unstructured.Unstructured {
	t.Helper()
	objs, err := reader.ReadUnstructureds([]byte(yaml))
	if err != nil || len(objs) != 1 {
		t.Fatalf("reading %q: %v (%d objects)", yaml, err, len(objs))
	}
	return objs[0]
}

// review reviews an exec into a pod of namespace ns as the gator runner
// does: an AugmentedReview with no Namespace and no UID.
func review(t *testing.T, c gator.Client, ns string) []*types.Result {
	t.Helper()
	req := &admissionv1.AdmissionRequest{
		Kind:        metav1.GroupVersionKind{Version: "v1", Kind: "PodExecOptions"},
		Resource:    metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		SubResource: "exec",
		Name:        "web",
		Namespace:   ns,
		Operation:   admissionv1.Connect,
		UserInfo:    authenticationv1.UserInfo{Username: "alice"},
		Object:      k8sruntime.RawExtension{Raw: []byte(`{"apiVersion":"v1","kind":"PodExecOptions","command":["sh"]}`)},
	}
	resp, err := c.Review(context.Background(), target.AugmentedReview{AdmissionRequest: req, Source: mutationtypes.SourceTypeOriginal},
		reviews.EnforcementPoint(util.GatorEnforcementPoint))
	if err != nil {
		t.Fatal(err)
	}
	if req.UID != "" {
		t.Errorf("the caller's request was changed: uid %q", req.UID)
	}
	return resp.Results()
}

func TestReviewGetsNamespaceAndUID(t *testing.T) {
	p := startProvider(t)
	newClient := p.ClientFactory(false, []string{ProviderName})
	labelled := func(team string) *unstructured.Unstructured {
		return object(t, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: labs\n  labels: {team: "+team+"}\n")
	}
	tests := []struct {
		name      string
		inventory []*unstructured.Unstructured
		ns        string
		want      string // "" for no violation
	}{
		{name: "bare namespace", ns: "shop", want: "namespace=shop team= uid="},
		{name: "excluded namespace not in inventory", ns: "kube-system"},
		{name: "namespace from inventory", inventory: []*unstructured.Unstructured{labelled("data")}, ns: "labs", want: "namespace=labs team=data uid="},
		{name: "namespaceSelector excludes", inventory: []*unstructured.Unstructured{labelled("excluded")}, ns: "labs"},
		{name: "latest namespace wins", inventory: []*unstructured.Unstructured{labelled("excluded"), labelled("data")}, ns: "labs", want: "team=data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := probeClient(t, newClient)
			for _, obj := range tt.inventory {
				if _, err := c.AddData(context.Background(), obj); err != nil {
					t.Fatal(err)
				}
			}
			results := review(t, c, tt.ns)
			if tt.want == "" {
				if len(results) != 0 {
					t.Fatalf("got %v, want no violation", results)
				}
				return
			}
			if len(results) != 1 || !strings.Contains(results[0].Msg, tt.want) {
				t.Fatalf("got %v, want one violation containing %q", results, tt.want)
			}
			if strings.HasSuffix(results[0].Msg, "uid=") {
				t.Errorf("review had no UID: %q", results[0].Msg)
			}
		})
	}

	// Stock gator passes no Namespace: the CONNECT object has none either, so
	// excludedNamespaces cannot exclude it. This is what the wrapper fixes.
	stock := probeClient(t, func(opts ...gator.Opt) (gator.Client, error) { return gator.NewOPAClient(false, opts...) })
	if results := review(t, stock, "kube-system"); len(results) != 1 {
		t.Errorf("stock client: got %v, want the kube-system exec matched", results)
	}
}

func TestInventoryIsTheProvidersAPI(t *testing.T) {
	p := startProvider(t)
	newClient := p.ClientFactory(false, []string{ProviderName})
	c, err := newClient()
	if err != nil {
		t.Fatal(err)
	}
	other, err := newClient()
	if err != nil {
		t.Fatal(err)
	}
	api := c.(*client).session.API
	ctx := context.Background()
	pod := func(label string) *unstructured.Unstructured {
		return object(t, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  labels: {v: \""+label+"\"}\nspec:\n  containers: [{name: app, image: app}]\n")
	}
	if _, err := c.AddData(ctx, pod("1")); err != nil {
		t.Fatal(err)
	}
	got, err := api.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("inventory pod not in the provider's API: %v", err)
	}
	if got.UID == "" {
		t.Error("pod has no UID; the API server always gives one")
	}
	if _, err := c.AddData(ctx, pod("2")); err != nil {
		t.Fatalf("adding the pod again: %v", err)
	}
	if got, _ := api.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{}); got.Labels["v"] != "2" {
		t.Errorf("labels %v, want the pod replaced", got.Labels)
	}
	if _, err := other.(*client).session.API.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("another client's API sees the pod: %v", err)
	}
	// Kinds client-go does not know stay in the inventory only.
	custom := object(t, "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, namespace: shop}\n")
	if _, err := c.AddData(ctx, custom); err != nil {
		t.Errorf("adding a custom resource: %v", err)
	}
	if _, err := c.RemoveData(ctx, pod("2")); err != nil {
		t.Fatal(err)
	}
	if _, err := api.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("removed pod still there: %v", err)
	}
}

// The provider behind a client answers from that client's inventory: the
// K8sExecReaper template records an exec into a pod the inventory holds and
// reports one it does not as not found.
func TestProviderAnswersFromInventory(t *testing.T) {
	p := startProvider(t)
	newClient := p.ClientFactory(false, []string{ProviderName})
	scheme := k8sruntime.NewScheme()
	if err := apis.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	tmpl, err := reader.ReadTemplate(scheme, os.DirFS("../templates/exec-reaper"), "template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := reader.ReadConstraint(os.DirFS("../templates/exec-reaper/samples"), "constraint-warn.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		pod  bool
		want string
	}{
		{"pod in inventory", true, "exec-reaper recorded this exec into pod shop/web"},
		{"pod not in inventory", false, "pod shop/web not found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := newClient()
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if _, err := c.AddTemplate(ctx, tmpl); err != nil {
				t.Fatal(err)
			}
			if _, err := c.AddConstraint(ctx, cons); err != nil {
				t.Fatal(err)
			}
			if tt.pod {
				if _, err := c.AddData(ctx, object(t, "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n")); err != nil {
					t.Fatal(err)
				}
			}
			results := review(t, c, "shop")
			if len(results) != 1 || !strings.Contains(results[0].Msg, tt.want) {
				t.Fatalf("got %v, want one result containing %q", results, tt.want)
			}
		})
	}
}

// Each session's URL reaches the provider until the session is closed; then
// it answers 404, so a stale client never reaches another case's API.
func TestSessionRouting(t *testing.T) {
	p := startProvider(t)
	s := p.NewSession()
	post := func() *httptest.ResponseRecorder {
		u, err := url.Parse(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		p.ServeHTTP(w, httptest.NewRequest(http.MethodPost, u.Path, strings.NewReader(`{}`)))
		return w
	}
	// The provider itself refuses an empty request, with a ProviderResponse.
	if w := post(); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "ProviderResponse") {
		t.Errorf("open session: %d %s", w.Code, w.Body)
	}
	s.Close()
	if w := post(); w.Code != http.StatusNotFound {
		t.Errorf("closed session: %d %s, want 404", w.Code, w.Body)
	}
}

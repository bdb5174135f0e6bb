// Tests of the templates' Rego, evaluated by Gatekeeper's own constraint
// framework and Kubernetes target, with external_data answered by
// exec-reaper's real provider over mutual TLS.
package templates_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/frameworks/constraint/pkg/client/reviews"
	"github.com/open-policy-agent/frameworks/constraint/pkg/types"
	"github.com/open-policy-agent/gatekeeper/v3/apis"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator/reader"
	mutationtypes "github.com/open-policy-agent/gatekeeper/v3/pkg/mutation/types"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/target"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/util"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/yaml"

	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/verifier"
)

var now = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

const (
	ns      = "shop"
	podName = "web-7d9f8-abcde"
	podUID  = k8stypes.UID("0b6a3a8e-1111-4222-8333-944455556666")
)

// policy is a gator client holding the exec-reaper template and one
// constraint, wired to a live in-process provider.
type policy struct {
	t        *testing.T
	client   gator.Client
	provider *verifier.Provider
}

func newPolicy(t *testing.T, action string, params map[string]any) *policy {
	t.Helper()
	p, err := verifier.StartProvider(clocktesting.NewFakeClock(now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: podName, Namespace: ns, UID: podUID, ResourceVersion: "7"}}
	if _, err := p.API.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client, err := p.NewClient()
	if err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := apis.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	tmpl, err := reader.ReadTemplate(scheme, os.DirFS("."), "exec-reaper/template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.AddTemplate(context.Background(), tmpl); err != nil {
		t.Fatalf("adding template: %v", err)
	}
	constraint := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "constraints.gatekeeper.sh/v1beta1",
		"kind":       "K8sExecReaper",
		"metadata":   map[string]any{"name": "test"},
		"spec": map[string]any{
			"enforcementAction": action,
			"match": map[string]any{
				"kinds": []any{map[string]any{
					"apiGroups": []any{""},
					"kinds":     []any{"PodExecOptions", "PodAttachOptions", "PodPortForwardOptions", "Pod"},
				}},
				"excludedNamespaces": []any{"kube-system"},
			},
			"parameters": params,
		},
	}}
	if _, err := client.AddConstraint(context.Background(), constraint); err != nil {
		t.Fatalf("adding constraint: %v", err)
	}
	return &policy{t: t, client: client, provider: p}
}

func (p *policy) review(req *admissionv1.AdmissionRequest) []*types.Result {
	p.t.Helper()
	// As Gatekeeper's webhook does, pass the request's Namespace: namespace
	// matchers need it, since a CONNECT object carries no namespace.
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: req.Namespace}}
	resp, err := p.client.Review(context.Background(),
		target.AugmentedReview{AdmissionRequest: req, Namespace: nsObj, Source: mutationtypes.SourceTypeOriginal, IsAdmission: true},
		reviews.EnforcementPoint(util.GatorEnforcementPoint))
	if err != nil {
		p.t.Fatalf("review: %v", err)
	}
	return resp.Results()
}

// pod returns the pod as the provider left it.
func (p *policy) pod() *corev1.Pod {
	p.t.Helper()
	pod, err := p.provider.API.CoreV1().Pods(ns).Get(context.Background(), podName, metav1.GetOptions{})
	if err != nil {
		p.t.Fatal(err)
	}
	return pod
}

// podReads counts the provider's reads of pods: one per provider call.
func (p *policy) podReads() int {
	n := 0
	for _, a := range p.provider.API.Actions() {
		if a.GetVerb() == "get" && a.GetResource().Resource == "pods" {
			n++
		}
	}
	return n
}

var alice = authenticationv1.UserInfo{Username: "alice@example.com", Groups: []string{"dev", "system:authenticated"}}

func raw(t *testing.T, v any) runtime.RawExtension {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return runtime.RawExtension{Raw: b}
}

func connect(t *testing.T, sub, kind string, user authenticationv1.UserInfo, obj map[string]any) *admissionv1.AdmissionRequest {
	obj["apiVersion"], obj["kind"] = "v1", kind
	return &admissionv1.AdmissionRequest{
		UID:         k8stypes.UID("req-" + sub + "-" + user.Username),
		Kind:        metav1.GroupVersionKind{Version: "v1", Kind: kind},
		Resource:    metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		SubResource: sub,
		Name:        podName,
		Namespace:   ns,
		Operation:   admissionv1.Connect,
		UserInfo:    user,
		Object:      raw(t, obj),
	}
}

func execReq(t *testing.T, user authenticationv1.UserInfo) *admissionv1.AdmissionRequest {
	return connect(t, "exec", "PodExecOptions", user, map[string]any{
		"container": "app", "command": []string{"sh", "-c", "echo hi > /tmp/x"}, "stdin": true, "tty": true,
	})
}

func attachReq(t *testing.T) *admissionv1.AdmissionRequest {
	return connect(t, "attach", "PodAttachOptions", alice, map[string]any{"container": "app", "stdin": true})
}

func portForwardReq(t *testing.T) *admissionv1.AdmissionRequest {
	return connect(t, "portforward", "PodPortForwardOptions", alice, map[string]any{"ports": []int{8080}})
}

func debugReq(t *testing.T, oldEphemeral, newEphemeral []corev1.EphemeralContainer) *admissionv1.AdmissionRequest {
	pod := func(ec []corev1.EphemeralContainer) *corev1.Pod {
		return &corev1.Pod{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: podName, Namespace: ns, UID: podUID},
			Spec: corev1.PodSpec{
				Containers:          []corev1.Container{{Name: "app", Image: "shop/web:1"}},
				EphemeralContainers: ec,
			},
		}
	}
	return &admissionv1.AdmissionRequest{
		UID:         "req-debug",
		Kind:        metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:    metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		SubResource: "ephemeralcontainers",
		Name:        podName,
		Namespace:   ns,
		Operation:   admissionv1.Update,
		UserInfo:    alice,
		Object:      raw(t, pod(newEphemeral)),
		OldObject:   raw(t, pod(oldEphemeral)),
	}
}

func debugger(name string, command ...string) corev1.EphemeralContainer {
	return corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: name, Image: "busybox:1.36", Command: command},
		TargetContainerName:      "app",
	}
}

var warnParams = map[string]any{"ttl": "10m", "notice": true, "exemptUsers": []any{"breakglass"}, "exemptGroups": []any{"system:masters"}, "recordCommand": "full"}

func TestRecordsEntries(t *testing.T) {
	tests := []struct {
		name      string
		params    map[string]any
		req       func(t *testing.T) *admissionv1.AdmissionRequest
		op        record.Operation
		container string
		command   []string
	}{{
		name: "exec", params: warnParams,
		req: func(t *testing.T) *admissionv1.AdmissionRequest { return execReq(t, alice) },
		op:  record.OpExec, container: "app", command: []string{"sh", "-c", "echo hi > /tmp/x"},
	}, {
		name: "attach", params: warnParams, req: attachReq,
		op: record.OpAttach, container: "app",
	}, {
		name: "debug adds an ephemeral container", params: warnParams,
		req: func(t *testing.T) *admissionv1.AdmissionRequest {
			return debugReq(t, []corev1.EphemeralContainer{debugger("debugger-old", "sh")},
				[]corev1.EphemeralContainer{debugger("debugger-old", "sh"), debugger("debugger-x7k2", "sh", "-i")})
		},
		op: record.OpDebug, container: "debugger-x7k2", command: []string{"sh", "-i"},
	}, {
		name:   "port-forward when opted in",
		params: map[string]any{"ttl": "10m", "notice": true, "portForward": true},
		req:    portForwardReq,
		op:     record.OpPortForward,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(t, "warn", tt.params)
			results := p.review(tt.req(t))
			if len(results) != 1 {
				t.Fatalf("got %d results, want the one notice: %v", len(results), results)
			}
			deadline := now.Add(10 * time.Minute).Format(time.RFC3339)
			if msg := results[0].Msg; !strings.Contains(msg, "exec-reaper recorded this "+string(tt.op)) || !strings.Contains(msg, deadline) {
				t.Errorf("notice = %q, want the operation and the deadline %s", msg, deadline)
			}
			if results[0].EnforcementAction != "warn" {
				t.Errorf("enforcement action = %q, want warn", results[0].EnforcementAction)
			}
			if n := p.podReads(); n != 1 {
				t.Errorf("provider read the pod %d times, want exactly one call", n)
			}
			rec, err := record.Read(p.pod().Labels, p.pod().Annotations)
			if err != nil {
				t.Fatalf("no record on the pod: %v", err)
			}
			want := record.Entry{User: alice.Username, Groups: alice.Groups, Time: now, Operation: tt.op,
				Container: tt.container, Command: tt.command, RequestUID: rec.First.RequestUID}
			if got := rec.First; !equalEntry(got, want) {
				t.Errorf("entry = %+v, want %+v", got, want)
			}
			if rec.PodUID != podUID || !rec.Deadline.Equal(now.Add(10*time.Minute)) {
				t.Errorf("record = uid %s deadline %s", rec.PodUID, rec.Deadline)
			}
		})
	}
}

func equalEntry(a, b record.Entry) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func TestRecordsNothing(t *testing.T) {
	createPod := &admissionv1.AdmissionRequest{
		UID: "req-create", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Name:     podName, Namespace: ns, Operation: admissionv1.Create, UserInfo: alice,
		Object: raw(t, map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": podName}}),
	}
	tests := []struct {
		name   string
		params map[string]any
		req    func(t *testing.T) *admissionv1.AdmissionRequest
	}{
		{"port-forward by default", warnParams, portForwardReq},
		{"exempt user", warnParams, func(t *testing.T) *admissionv1.AdmissionRequest {
			return execReq(t, authenticationv1.UserInfo{Username: "breakglass", Groups: []string{"dev"}})
		}},
		{"exempt group", warnParams, func(t *testing.T) *admissionv1.AdmissionRequest {
			return execReq(t, authenticationv1.UserInfo{Username: "root-admin", Groups: []string{"system:masters"}})
		}},
		{"excluded namespace", warnParams, func(t *testing.T) *admissionv1.AdmissionRequest {
			r := execReq(t, alice)
			r.Namespace = "kube-system"
			return r
		}},
		{"debug update that adds no container", warnParams, func(t *testing.T) *admissionv1.AdmissionRequest {
			ec := []corev1.EphemeralContainer{debugger("debugger-old", "sh")}
			return debugReq(t, ec, ec)
		}},
		{"server-side dry run", warnParams, func(t *testing.T) *admissionv1.AdmissionRequest {
			r := debugReq(t, nil, []corev1.EphemeralContainer{debugger("d", "sh")})
			r.DryRun = ptrTo(true)
			return r
		}},
		{"pod create", warnParams, func(*testing.T) *admissionv1.AdmissionRequest { return createPod }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(t, "warn", tt.params)
			if results := p.review(tt.req(t)); len(results) != 0 {
				t.Errorf("got results %v, want none", results)
			}
			if n := p.podReads(); n != 0 {
				t.Errorf("provider called %d times, want never", n)
			}
			if _, err := record.Read(p.pod().Labels, p.pod().Annotations); err == nil {
				t.Errorf("pod was recorded: %v", p.pod().Labels)
			}
		})
	}
}

func ptrTo[T any](v T) *T { return &v }

func TestNoticeIsOptIn(t *testing.T) {
	p := newPolicy(t, "warn", map[string]any{"ttl": "10m"})
	if results := p.review(execReq(t, alice)); len(results) != 0 {
		t.Errorf("got %v, want no notice without notice: true", results)
	}
	if _, err := record.Read(p.pod().Labels, p.pod().Annotations); err != nil {
		t.Errorf("entry not recorded: %v", err)
	}
}

func TestFailures(t *testing.T) {
	unknownPod := func(t *testing.T) *admissionv1.AdmissionRequest {
		r := execReq(t, alice)
		r.Name = "no-such-pod"
		return r
	}
	tests := []struct {
		name        string
		action      string
		policy      string
		req         func(t *testing.T) *admissionv1.AdmissionRequest
		stopServer  bool
		wantInMsg   []string
		notInMsg    []string
		wantNoMatch bool
	}{{
		name: "unknown pod, fail open", action: "warn", policy: "Ignore", req: unknownPod,
		wantInMsg: []string{"exec-reaper could not record this exec into pod shop/no-such-pod", "pod shop/no-such-pod not found", "allowed without a record"},
	}, {
		name: "unknown pod, fail closed", action: "deny", policy: "Fail", req: unknownPod,
		wantInMsg: []string{"exec-reaper denied this exec into pod shop/no-such-pod", "must be recorded first", "pod shop/no-such-pod not found"},
	}, {
		name: "provider down, fail open", action: "warn", policy: "Ignore", stopServer: true,
		req:       func(t *testing.T) *admissionv1.AdmissionRequest { return execReq(t, alice) },
		wantInMsg: []string{"could not record this exec", "the provider did not answer (failed to send external data request"},
		notInMsg:  []string{"HTTP"},
	}, {
		name: "provider down, fail closed", action: "deny", policy: "Fail", stopServer: true,
		req:       func(t *testing.T) *admissionv1.AdmissionRequest { return execReq(t, alice) },
		wantInMsg: []string{"exec-reaper denied this exec", "the provider did not answer (failed to send external data request", "Try again shortly"},
		notInMsg:  []string{"HTTP", "misconfigured"},
	}, {
		name: "provider down, exempt user", action: "deny", policy: "Fail", stopServer: true,
		req: func(t *testing.T) *admissionv1.AdmissionRequest {
			return execReq(t, authenticationv1.UserInfo{Username: "breakglass"})
		},
		wantNoMatch: true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(t, tt.action, map[string]any{"ttl": "10m", "failurePolicy": tt.policy, "exemptUsers": []any{"breakglass"}})
			if tt.stopServer {
				p.provider.Close()
			}
			results := p.review(tt.req(t))
			if tt.wantNoMatch {
				if len(results) != 0 {
					t.Fatalf("got %v, want no violation", results)
				}
				return
			}
			if len(results) != 1 {
				t.Fatalf("got %d results %v, want one", len(results), results)
			}
			if results[0].EnforcementAction != tt.action {
				t.Errorf("action = %s, want %s", results[0].EnforcementAction, tt.action)
			}
			for _, want := range tt.wantInMsg {
				if !strings.Contains(results[0].Msg, want) {
					t.Errorf("message %q lacks %q", results[0].Msg, want)
				}
			}
			for _, not := range tt.notInMsg {
				if strings.Contains(results[0].Msg, not) {
					t.Errorf("message %q has %q", results[0].Msg, not)
				}
			}
		})
	}
}

// A deny constraint that records successfully must never deny.
func TestFailClosedAllowsRecordedEntries(t *testing.T) {
	p := newPolicy(t, "deny", map[string]any{"ttl": "10m", "failurePolicy": "Fail", "notice": true})
	if results := p.review(execReq(t, alice)); len(results) != 0 {
		t.Fatalf("got %v, want the exec allowed", results)
	}
	if _, err := record.Read(p.pod().Labels, p.pod().Annotations); err != nil {
		t.Errorf("entry not recorded: %v", err)
	}
}

// Keys carry usernames verbatim, whatever characters they hold.
func TestUnusualUsernames(t *testing.T) {
	for _, user := range []string{"alice@example.com", "system:serviceaccount:ci/deployer", "Zoë O'Brien", `quote"and\backslash`} {
		t.Run(user, func(t *testing.T) {
			p := newPolicy(t, "warn", map[string]any{"ttl": "10m"})
			if results := p.review(execReq(t, authenticationv1.UserInfo{Username: user})); len(results) != 0 {
				t.Fatalf("got %v, want none", results)
			}
			rec, err := record.Read(p.pod().Labels, p.pod().Annotations)
			if err != nil {
				t.Fatal(err)
			}
			if rec.First.User != user {
				t.Errorf("recorded user %q, want %q", rec.First.User, user)
			}
		})
	}
}

// Gatekeeper's external_data reads the key through OPA's ast.As, which
// fails on a DEL character or a non-printable character beyond U+FFFF; the
// call then never happens, and (before the template escaped them) such an
// entry passed unrecorded even under failurePolicy Fail. Each of these
// must be recorded, by Gatekeeper's own driver and the real provider.
func TestUnquotableCharactersRecorded(t *testing.T) {
	for _, arg := range []string{"echo \x7f", "echo \U000E0001", "\U0010FFFF"} {
		t.Run(fmt.Sprintf("%q", arg), func(t *testing.T) {
			p := newPolicy(t, "deny", map[string]any{"ttl": "10m", "failurePolicy": "Fail", "recordCommand": "full"})
			req := connect(t, "exec", "PodExecOptions", alice, map[string]any{"container": "app", "command": []string{"sh", "-c", arg}})
			if results := p.review(req); len(results) != 0 {
				t.Fatalf("got %v, want the exec allowed, recorded", results)
			}
			if n := p.podReads(); n != 1 {
				t.Fatalf("provider called %d times, want once: the entry went unrecorded", n)
			}
			rec, err := record.Read(p.pod().Labels, p.pod().Annotations)
			if err != nil {
				t.Fatalf("no record on the pod: %v", err)
			}
			if got := rec.First.Command; len(got) != 3 || got[0] != "sh" {
				t.Errorf("recorded command %q", got)
			}
		})
	}
}

// TestNoOperationsField: no template sets spec.targets[].operations, a
// field the ConstraintTemplate CRD of Gatekeeper 3.17-3.20 lacks, so that
// kubectl apply (strict field validation) refuses the template there
// (test/e2e/versions_test.go applies them on v3.17.1).
func TestNoOperationsField(t *testing.T) {
	files, err := filepath.Glob("*/template.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no templates (%v)", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var tmpl struct {
			Spec struct {
				Targets []map[string]any `json:"targets"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(data, &tmpl); err != nil {
			t.Fatal(err)
		}
		for _, target := range tmpl.Spec.Targets {
			if _, ok := target["operations"]; ok {
				t.Errorf("%s sets operations, which Gatekeeper < 3.21 refuses; check the operation in Rego", f)
			}
		}
	}
}

// TestQuarantineConstraint: a constraint with action quarantine records it on
// the pod (the label the deleter acts on) and its notice says the pod will be
// quarantined; the default constraint leaves no such label.
func TestQuarantineConstraint(t *testing.T) {
	for _, tc := range []struct {
		action, want string
	}{{"quarantine", "quarantined"}, {"", "evicted"}} {
		t.Run(tc.want, func(t *testing.T) {
			params := map[string]any{"ttl": "10m", "notice": true}
			if tc.action != "" {
				params["action"] = tc.action
			}
			p := newPolicy(t, "warn", params)
			results := p.review(execReq(t, alice))
			if len(results) != 1 || !strings.Contains(results[0].Msg, "the pod will be "+tc.want+" at ") {
				t.Fatalf("results %v, want one notice saying the pod will be %s", results, tc.want)
			}
			pod := p.pod()
			rec, err := record.Read(pod.Labels, pod.Annotations)
			if err != nil {
				t.Fatalf("no record on the pod: %v", err)
			}
			if label, ok := pod.Labels[record.ActionLabel]; ok != (tc.action != "") || label != tc.action {
				t.Errorf("label %s = %q (present %v), want %q", record.ActionLabel, label, ok, tc.action)
			}
			if want := record.ActionEvict; tc.action != "" && rec.Action != record.ActionQuarantine || tc.action == "" && rec.Action != want {
				t.Errorf("record action %q", rec.Action)
			}
		})
	}
}

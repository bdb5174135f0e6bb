package deleter_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/exec-reaper/exec-reaper/deleter"
)

// apiCall is one request the API server stand-in received.
type apiCall struct {
	method, path, query, contentType string
	body                             map[string]any
}

// apiServer answers every request with status and body, and keeps what it
// was asked.
type apiServer struct {
	mu    sync.Mutex
	calls []apiCall
	*httptest.Server
}

func newAPIServer(t *testing.T, status int, body string) *apiServer {
	s := &apiServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		c := apiCall{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, contentType: r.Header.Get("Content-Type")}
		if len(raw) > 0 {
			if err := json.Unmarshal(raw, &c.body); err != nil {
				t.Errorf("%s %s: body is not JSON: %v: %s", r.Method, r.URL.Path, err, raw)
			}
		}
		s.mu.Lock()
		s.calls = append(s.calls, c)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *apiServer) only(t *testing.T) apiCall {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.calls) != 1 {
		t.Fatalf("the API server got %d requests, want 1: %+v", len(s.calls), s.calls)
	}
	return s.calls[0]
}

func newAPI(t *testing.T, s *apiServer) deleter.API {
	t.Helper()
	api, err := deleter.NewAPI(&rest.Config{Host: s.URL})
	if err != nil {
		t.Fatalf("NewAPI: %v", err)
	}
	return api
}

// precondition is the UID precondition in a request's delete options.
func precondition(body map[string]any) any {
	opts, _ := body["deleteOptions"].(map[string]any)
	if opts == nil {
		opts = body
	}
	pre, _ := opts["preconditions"].(map[string]any)
	return pre["uid"]
}

// TestAPIRequests: each call of the deleter's own API client is the request
// the API server documents (path, verb, body), so it works without
// client-go's typed clients.
func TestAPIRequests(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, body string
		call       func(deleter.API) error
		want       apiCall
		check      func(t *testing.T, c apiCall)
	}{
		{"evict", `{"kind":"Status","apiVersion":"v1","status":"Success"}`,
			func(a deleter.API) error { return a.Evict(ctx, "team", "web", "uid-web") },
			apiCall{method: "POST", path: "/api/v1/namespaces/team/pods/web/eviction"},
			func(t *testing.T, c apiCall) {
				if c.body["kind"] != "Eviction" || c.body["apiVersion"] != "policy/v1" || precondition(c.body) != "uid-web" {
					t.Errorf("eviction body = %v, want a policy/v1 Eviction bound to uid-web", c.body)
				}
			}},
		{"delete", `{"kind":"Status","apiVersion":"v1","status":"Success"}`,
			func(a deleter.API) error { return a.DeletePod(ctx, "team", "web", "uid-web") },
			apiCall{method: "DELETE", path: "/api/v1/namespaces/team/pods/web"},
			func(t *testing.T, c apiCall) {
				if precondition(c.body) != "uid-web" {
					t.Errorf("delete body = %v, want options bound to uid-web", c.body)
				}
			}},
		{"list", `{"kind":"PodList","apiVersion":"v1","items":[{"metadata":{"name":"web-1"}}]}`,
			func(a deleter.API) error {
				list, err := a.ListPods(ctx, "team", labels.SelectorFromSet(labels.Set{"app": "web"}))
				if err == nil && (len(list.Items) != 1 || list.Items[0].Name != "web-1") {
					t.Errorf("ListPods = %+v, want web-1", list.Items)
				}
				return err
			},
			apiCall{method: "GET", path: "/api/v1/namespaces/team/pods", query: "labelSelector=app%3Dweb"}, nil},
		{"patch", `{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web"}}`,
			func(a deleter.API) error {
				return a.PatchPod(ctx, "team", "web", types.MergePatchType, []byte(`{"metadata":{"labels":{"a":"b"}}}`))
			},
			apiCall{method: "PATCH", path: "/api/v1/namespaces/team/pods/web", contentType: "application/merge-patch+json"}, nil},
		{"network policy", `{"kind":"NetworkPolicy","apiVersion":"networking.k8s.io/v1","metadata":{"name":"q"}}`,
			func(a deleter.API) error {
				return a.CreateNetworkPolicy(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "q", Namespace: "team"}})
			},
			apiCall{method: "POST", path: "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies"}, nil},
		{"replicaset", `{"kind":"ReplicaSet","apiVersion":"apps/v1","metadata":{"name":"web"}}`,
			func(a deleter.API) error {
				rs, err := a.GetReplicaSet(ctx, "team", "web")
				if err == nil && rs.Name != "web" {
					t.Errorf("GetReplicaSet = %q, want web", rs.Name)
				}
				return err
			},
			apiCall{method: "GET", path: "/apis/apps/v1/namespaces/team/replicasets/web"}, nil},
		{"statefulset", `{"kind":"StatefulSet","apiVersion":"apps/v1"}`,
			func(a deleter.API) error { _, err := a.GetStatefulSet(ctx, "team", "db"); return err },
			apiCall{method: "GET", path: "/apis/apps/v1/namespaces/team/statefulsets/db"}, nil},
		{"daemonset", `{"kind":"DaemonSet","apiVersion":"apps/v1"}`,
			func(a deleter.API) error { _, err := a.GetDaemonSet(ctx, "team", "agent"); return err },
			apiCall{method: "GET", path: "/apis/apps/v1/namespaces/team/daemonsets/agent"}, nil},
		{"replicationcontroller", `{"kind":"ReplicationController","apiVersion":"v1"}`,
			func(a deleter.API) error { _, err := a.GetReplicationController(ctx, "team", "old"); return err },
			apiCall{method: "GET", path: "/api/v1/namespaces/team/replicationcontrollers/old"}, nil},
		{"guard policy", `{"kind":"ValidatingAdmissionPolicy","apiVersion":"admissionregistration.k8s.io/v1"}`,
			func(a deleter.API) error { _, err := a.GetValidatingAdmissionPolicy(ctx, "guard"); return err },
			apiCall{method: "GET", path: "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/guard"}, nil},
		{"guard binding", `{"kind":"ValidatingAdmissionPolicyBinding","apiVersion":"admissionregistration.k8s.io/v1"}`,
			func(a deleter.API) error { _, err := a.GetValidatingAdmissionPolicyBinding(ctx, "guard"); return err },
			apiCall{method: "GET", path: "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/guard"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newAPIServer(t, http.StatusOK, tc.body)
			if err := tc.call(newAPI(t, s)); err != nil {
				t.Fatalf("call: %v", err)
			}
			got := s.only(t)
			if got.method != tc.want.method || got.path != tc.want.path || got.query != tc.want.query ||
				(tc.want.contentType != "" && got.contentType != tc.want.contentType) {
				t.Errorf("request = %s %s?%s (%s), want %s %s?%s (%s)", got.method, got.path, got.query, got.contentType,
					tc.want.method, tc.want.path, tc.want.query, tc.want.contentType)
			}
			if tc.check != nil {
				tc.check(t, got)
			}
		})
	}
}

// TestAPIErrors: the API server's refusals reach the deleter as the errors
// it tells apart: a missing pod, a replaced one (the UID precondition), and a
// disruption budget's 429 with its cause, which the Eviction action reads.
func TestAPIErrors(t *testing.T) {
	ctx := context.Background()
	status := func(code int, reason metav1.StatusReason, causes ...metav1.StatusCause) string {
		raw, _ := json.Marshal(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
			Code: int32(code), Reason: reason, Message: "refused", Details: &metav1.StatusDetails{Causes: causes}})
		return string(raw)
	}
	for _, tc := range []struct {
		name   string
		code   int
		body   string
		is     func(error) bool
		causes int
	}{
		{"not found", 404, status(404, metav1.StatusReasonNotFound), apierrors.IsNotFound, 0},
		{"uid precondition", 409, status(409, metav1.StatusReasonConflict), apierrors.IsConflict, 0},
		{"budget", 429, status(429, metav1.StatusReasonTooManyRequests, metav1.StatusCause{Type: policyv1.DisruptionBudgetCause, Message: "budget"}),
			apierrors.IsTooManyRequests, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := newAPI(t, newAPIServer(t, tc.code, tc.body)).Evict(ctx, "team", "web", "uid-web")
			if !tc.is(err) {
				t.Fatalf("Evict error = %v, want the %s status", err, tc.name)
			}
			var st apierrors.APIStatus
			if !asStatus(err, &st) || st.Status().Details == nil || len(st.Status().Details.Causes) != tc.causes {
				t.Errorf("Evict error %v keeps causes %v, want %d", err, st, tc.causes)
			}
		})
	}
}

func asStatus(err error, into *apierrors.APIStatus) bool {
	s, ok := err.(apierrors.APIStatus)
	*into = s
	return ok
}

package lease

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
)

// apiServer serves the Lease ns/held at resourceVersion 7, like the API
// server: 404 for any other Lease, 409 for an Update bound to another
// resourceVersion. It records the requests it got.
type apiServer struct {
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	method, path, contentType, userAgent string
	body                                 coordinationv1.Lease
}

const base = "/apis/coordination.k8s.io/v1/namespaces/ns/leases"

func (s *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := recorded{method: r.Method, path: r.URL.Path, contentType: r.Header.Get("Content-Type"), userAgent: r.UserAgent()}
	if r.Body != nil && (r.Method == http.MethodPut || r.Method == http.MethodPost) {
		if err := json.NewDecoder(r.Body).Decode(&rec.body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, rec)
	s.mu.Unlock()

	status := func(err *apierrors.StatusError) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(int(err.ErrStatus.Code))
		st := err.ErrStatus
		st.APIVersion, st.Kind = "v1", "Status"
		_ = json.NewEncoder(w).Encode(st)
	}
	lease := func(l coordinationv1.Lease, code int) {
		l.APIVersion, l.Kind = "coordination.k8s.io/v1", "Lease"
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(l)
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == base+"/held":
		lease(coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "held", ResourceVersion: "7"},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("other"), LeaseDurationSeconds: ptr.To[int32](4)},
		}, http.StatusOK)
	case r.Method == http.MethodPut && r.URL.Path == base+"/held":
		if rec.body.ResourceVersion != "7" {
			status(apierrors.NewConflict(leasesResource, "held", errors.New("the object has been modified")))
			return
		}
		out := rec.body
		out.ResourceVersion = "8"
		lease(out, http.StatusOK)
	case r.Method == http.MethodPost && r.URL.Path == base:
		status(apierrors.NewAlreadyExists(leasesResource, rec.body.Name))
	default:
		status(apierrors.NewNotFound(leasesResource, r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]))
	}
}

func (s *apiServer) last(t *testing.T) recorded {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reqs) == 0 {
		t.Fatal("no request reached the server")
	}
	return s.reqs[len(s.reqs)-1]
}

// TestNewClient: the REST Client reads the Lease, maps a 404 and a 409 to
// the API errors (as *apierrors.StatusError), and writes with PUT to the
// Lease's path, in JSON, with the resourceVersion it was given and the
// configured user agent.
func TestNewClient(t *testing.T) {
	srv := &apiServer{}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	cfg := &rest.Config{Host: ts.URL, UserAgent: "lease-test/1", QPS: -1}
	ctx := context.Background()

	c, err := NewClient(cfg, "ns", "held")
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Describe(); d != "ns/held" {
		t.Errorf("Describe() = %q, want ns/held", d)
	}
	got, err := c.Get(ctx)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.ResourceVersion != "7" || ptr.Deref(got.Spec.HolderIdentity, "") != "other" || ptr.Deref(got.Spec.LeaseDurationSeconds, 0) != 4 {
		t.Errorf("Get decoded resourceVersion %q, spec %+v", got.ResourceVersion, got.Spec)
	}
	if ua := srv.last(t).userAgent; ua != "lease-test/1" {
		t.Errorf("user agent %q, want the configured lease-test/1", ua)
	}

	got.Spec.HolderIdentity = ptr.To("me")
	out, err := c.Update(ctx, got)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if out.ResourceVersion != "8" || ptr.Deref(out.Spec.HolderIdentity, "") != "me" {
		t.Errorf("Update returned resourceVersion %q, holder %q", out.ResourceVersion, ptr.Deref(out.Spec.HolderIdentity, ""))
	}
	put := srv.last(t)
	if put.method != http.MethodPut || put.path != base+"/held" {
		t.Errorf("Update sent %s %s, want PUT %s/held", put.method, put.path, base)
	}
	if put.body.ResourceVersion != "7" || put.body.Name != "held" || put.body.Namespace != "ns" || put.body.Kind != "Lease" || put.body.APIVersion != "coordination.k8s.io/v1" {
		t.Errorf("Update sent %+v, %+v; want Lease ns/held bound to resourceVersion 7", put.body.TypeMeta, put.body.ObjectMeta)
	}
	if !strings.HasPrefix(put.contentType, "application/json") {
		t.Errorf("Update sent Content-Type %q, want JSON", put.contentType)
	}

	got.ResourceVersion = "6"
	_, err = c.Update(ctx, got)
	if !apierrors.IsConflict(err) {
		t.Errorf("Update on a stale resourceVersion: %v, want a conflict", err)
	}
	var se *apierrors.StatusError
	if !errors.As(err, &se) {
		t.Errorf("Update's error is a %T, want *apierrors.StatusError", err)
	}

	_, err = c.Create(ctx, &coordinationv1.Lease{})
	if post := srv.last(t); post.method != http.MethodPost || post.path != base || post.body.Name != "held" {
		t.Errorf("Create sent %s %s named %q, want POST %s named held", post.method, post.path, post.body.Name, base)
	}
	if !apierrors.IsAlreadyExists(err) {
		t.Errorf("Create of an existing Lease: %v, want already exists", err)
	}

	missing, err := NewClient(cfg, "ns", "missing")
	if err != nil {
		t.Fatal(err)
	}
	_, err = missing.Get(ctx)
	if !apierrors.IsNotFound(err) || !errors.As(err, &se) {
		t.Errorf("Get of a missing Lease: %v (%T), want a not-found *apierrors.StatusError", err, err)
	}
	if p := srv.last(t).path; p != base+"/missing" {
		t.Errorf("Get sent %s, want %s/missing", p, base)
	}

	if _, err := NewClient(cfg, "", "x"); err == nil {
		t.Error("NewClient accepted an empty namespace")
	}
}

package tlscerts

import (
	"net/http"
	"net/url"
	"testing"

	"k8s.io/client-go/rest"
)

// recordingTransport keeps the last request it was given.
type recordingTransport struct{ got *http.Request }

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r.got = req
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: req}, nil
}

// TestNarrowedToItsObjects: cert-controller's collection reads of Secrets in
// its namespace and of Providers carry a field selector on the one name it
// reads, so RBAC can grant them by name; every other request is as it was.
func TestNarrowedToItsObjects(t *testing.T) {
	cfg := narrowed(&rest.Config{Host: "https://api.example:6443"}, "gatekeeper-system", "exec-reaper-provider-cert", "exec-reaper")
	next := &recordingTransport{}
	rt := cfg.WrapTransport(next)
	for _, c := range []struct {
		method, url string
		want        string // the field selector sent; "-" for the request unchanged
	}{
		{"GET", "/api/v1/namespaces/gatekeeper-system/secrets?limit=500", "metadata.name=exec-reaper-provider-cert"},
		{"GET", "/api/v1/namespaces/gatekeeper-system/secrets?watch=true&resourceVersion=7&sendInitialEvents=true", "metadata.name=exec-reaper-provider-cert"},
		{"GET", "/api/v1/namespaces/gatekeeper-system/secrets/?watch=true", "metadata.name=exec-reaper-provider-cert"},
		// A selector of its own narrows further; the name still holds.
		{"GET", "/api/v1/namespaces/gatekeeper-system/secrets?fieldSelector=type%3Dkubernetes.io%2Ftls", "metadata.name=exec-reaper-provider-cert,type=kubernetes.io/tls"},
		{"GET", "/apis/externaldata.gatekeeper.sh/v1beta1/providers?watch=true", "metadata.name=exec-reaper"},
		// By name, in another namespace, another resource, a write: as is.
		{"GET", "/api/v1/namespaces/gatekeeper-system/secrets/exec-reaper-provider-cert", "-"},
		{"GET", "/api/v1/namespaces/team/secrets?watch=true", "-"},
		{"GET", "/api/v1/namespaces/gatekeeper-system/configmaps", "-"},
		{"PUT", "/api/v1/namespaces/gatekeeper-system/secrets", "-"},
		{"GET", "/apis/externaldata.gatekeeper.sh/v1beta1/providers/exec-reaper", "-"},
	} {
		u, err := url.Parse("https://api.example:6443" + c.url)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(c.method, u.String(), nil)
		if _, err := rt.RoundTrip(req); err != nil {
			t.Fatal(err)
		}
		if c.want == "-" {
			if next.got.URL.String() != u.String() {
				t.Errorf("%s %s sent as %s, want it unchanged", c.method, c.url, next.got.URL)
			}
			continue
		}
		q := next.got.URL.Query()
		if got := q.Get("fieldSelector"); got != c.want {
			t.Errorf("%s %s: fieldSelector %q, want %q", c.method, c.url, got, c.want)
		}
		for k, v := range u.Query() {
			if k != "fieldSelector" && q.Get(k) != v[0] {
				t.Errorf("%s %s: %s=%q, want %q kept", c.method, c.url, k, q.Get(k), v[0])
			}
		}
		if req.URL.RawQuery != u.RawQuery {
			t.Errorf("%s %s: the caller's request was changed to %s", c.method, c.url, req.URL)
		}
	}
}

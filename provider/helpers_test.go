package provider_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts/tlstest"
	"github.com/exec-reaper/exec-reaper/record"
)

// t0 is the fake clock's start, a whole second.
var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

const (
	namespace = "team-a"
	podName   = "web-0"
	podUID    = types.UID("6f0c1c2e-0000-4000-8000-0000000000aa")
)

// quiet returns a context whose logger discards: handlers log every rejected
// key, and fuzzing would drown the output.
func quiet() context.Context { return klog.NewContext(context.Background(), logr.Discard()) }

// --- provider under test ----------------------------------------------------

// env is a provider served over TLS with a fake API server and a fake clock.
type env struct {
	srv    *httptest.Server
	cs     *fake.Clientset
	clock  *clocktesting.FakeClock
	certs  *tlscerts.Certs
	files  tlstest.Files
	ca     *tlstest.CA // signs the server and the trusted client
	server *tlstest.Leaf
	client *tlstest.Leaf
}

func newEnv(t *testing.T, objects ...runtime.Object) *env {
	t.Helper()
	e := &env{
		cs:    fake.NewClientset(objects...),
		clock: clocktesting.NewFakeClock(t0),
		files: tlstest.NewFiles(t),
		ca:    tlstest.NewCA(t, "gatekeeper-ca"),
	}
	e.server = e.ca.Issue(t, "exec-reaper-provider", true)
	e.client = e.ca.Issue(t, "gatekeeper-webhook", false)
	e.files.Write(t, e.server, e.ca)
	e.certs = tlscerts.NewCerts(e.files.Cert, e.files.Key, e.files.CA)
	if changed, err := e.certs.Reload(); err != nil || !changed {
		t.Fatalf("Reload = %v, %v; want true, nil", changed, err)
	}
	h := provider.NewHandler(provider.NewRecorder(e.cs, e.clock, nil), time.Second)
	e.srv = httptest.NewUnstartedServer(provider.NewRouter(h))
	e.srv.TLS = e.certs.TLSConfig()
	e.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are expected here
	e.srv.Config.BaseContext = func(net.Listener) context.Context { return quiet() }
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) url() string { return e.srv.URL + provider.Path }

// gatekeeper returns a client like Gatekeeper's: trusted, with a certificate.
func (e *env) gatekeeper(t *testing.T) *http.Client { return tlstest.Client(t, e.client, e.ca) }

// providerRequest returns the body of a ProviderRequest for keys.
func providerRequest(t testing.TB, keys ...string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"apiVersion": "externaldata.gatekeeper.sh/v1beta1",
		"kind":       "ProviderRequest",
		"request":    map[string]any{"keys": keys},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// post sends body as Gatekeeper does and decodes the ProviderResponse strictly.
func post(t *testing.T, c *http.Client, url string, body []byte) (*http.Response, provider.ProviderResponse) {
	t.Helper()
	return send(t, c, http.MethodPost, url, "application/json", body)
}

func send(t *testing.T, c *http.Client, method, url, contentType string, body []byte) (*http.Response, provider.ProviderResponse) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	return resp, decodeResponse(t, resp.StatusCode, resp.Header, resp.Body)
}

// decodeResponse decodes a ProviderResponse strictly and checks its header.
func decodeResponse(t testing.TB, status int, h http.Header, body io.Reader) provider.ProviderResponse {
	t.Helper()
	var pr provider.ProviderResponse
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pr); err != nil {
		t.Fatalf("response (status %d) is not a ProviderResponse: %v", status, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Errorf("response has data after its JSON object (%v)", err)
	}
	if pr.APIVersion != "externaldata.gatekeeper.sh/v1beta1" || pr.Kind != "ProviderResponse" {
		t.Errorf("response apiVersion/kind = %q/%q", pr.APIVersion, pr.Kind)
	}
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	return pr
}

// keyFor encodes req as a template would.
func keyFor(t testing.TB, req provider.Request) string {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return provider.KeyVersion + string(b)
}

// execBy returns a request to exec into the test pod.
func execBy(user, uid, ttl string) provider.Request {
	return provider.Request{
		UID: uid, Namespace: namespace, Name: podName, TTL: ttl, User: user,
		Groups: []string{"system:authenticated"}, Operation: record.OpExec,
		Container: "app", Command: []string{"sh"},
	}
}

// newPod returns the test pod, with a record if rec is not nil.
func newPod(rec *record.Record) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Namespace: namespace, Name: podName, UID: podUID, ResourceVersion: "7",
		Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"note": "keep me"},
	}}
	if rec != nil {
		for k, v := range rec.Labels() {
			p.Labels[k] = v
		}
		for k, v := range rec.Annotations() {
			p.Annotations[k] = v
		}
	}
	return p
}

// getPod reads the test pod from the fake API server's store, past any
// reactors, without recording an action.
func getPod(t *testing.T, cs *fake.Clientset) *corev1.Pod {
	t.Helper()
	obj, err := cs.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), namespace, podName)
	if err != nil {
		t.Fatal(err)
	}
	return obj.(*corev1.Pod)
}

// countActions counts the recorded actions with verb on resource.
func countActions(cs *fake.Clientset, verb, resource string) int {
	n := 0
	for _, a := range cs.Actions() {
		if a.Matches(verb, resource) {
			n++
		}
	}
	return n
}

// patchActions returns the merge patches sent for pods.
func patchActions(cs *fake.Clientset) []clienttesting.PatchAction {
	var ps []clienttesting.PatchAction
	for _, a := range cs.Actions() {
		if p, ok := a.(clienttesting.PatchAction); ok && a.Matches("patch", "pods") {
			ps = append(ps, p)
		}
	}
	return ps
}

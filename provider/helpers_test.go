package provider_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
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
	"github.com/exec-reaper/exec-reaper/record"

	"github.com/exec-reaper/exec-reaper/internal/pki"
)

// t0 is the fake clock's start, a whole second.
var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

const (
	namespace = "team-a"
	podName   = "web-0"
	podUID    = types.UID("6f0c1c2e-0000-4000-8000-0000000000aa")
	// requestTimeout bounds one HTTP round trip in these tests.
	requestTimeout = 10 * time.Second
)

// quiet returns a context whose logger discards: handlers log every rejected
// key, and fuzzing would drown the output.
func quiet() context.Context { return klog.NewContext(context.Background(), logr.Discard()) }

// --- PKI ---------------------------------------------------------------------

// testCA is an in-memory certificate authority.
type testCA struct {
	*pki.CA
}

// leaf is a certificate issued by a testCA.
type leaf struct {
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
	pair    tls.Certificate
}

func newCA(t testing.TB, cn string) *testCA {
	t.Helper()
	ca, err := pki.NewCA(cn)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{ca}
}

// issue signs a leaf for cn: a server certificate for 127.0.0.1 if server,
// else a client certificate.
func (ca *testCA) issue(t testing.TB, cn string, server bool) *leaf {
	t.Helper()
	var p pki.Pair
	var err error
	if server {
		p, err = ca.Server(cn, "127.0.0.1")
	} else {
		p, err = ca.Client(cn)
	}
	if err != nil {
		t.Fatal(err)
	}
	l := &leaf{certPEM: p.CertPEM, keyPEM: p.KeyPEM}
	if l.pair, err = tls.X509KeyPair(l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	if l.cert, err = x509.ParseCertificate(l.pair.Certificate[0]); err != nil {
		t.Fatal(err)
	}
	return l
}

// certFiles are the provider's three PEM files in a temporary directory.
type certFiles struct{ cert, key, ca string }

func newCertFiles(t testing.TB) certFiles {
	dir := t.TempDir()
	return certFiles{filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")}
}

// write replaces the files, each atomically, as a kubelet updating a mounted
// Secret would.
func (f certFiles) write(t testing.TB, server *leaf, clientCA *testCA) {
	t.Helper()
	for path, data := range map[string][]byte{f.cert: server.certPEM, f.key: server.keyPEM, f.ca: clientCA.CertPEM} {
		writeAtomically(t, path, data)
	}
}

func writeAtomically(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := pki.WriteFileAtomic(path, data); err != nil {
		t.Fatal(err)
	}
}

// --- provider under test ----------------------------------------------------

// env is a provider served over TLS with a fake API server and a fake clock.
type env struct {
	srv    *httptest.Server
	cs     *fake.Clientset
	clock  *clocktesting.FakeClock
	certs  *provider.Certs
	files  certFiles
	ca     *testCA // signs the server and the trusted client
	server *leaf
	client *leaf
}

func newEnv(t *testing.T, objects ...runtime.Object) *env {
	t.Helper()
	e := &env{
		cs:    fake.NewClientset(objects...),
		clock: clocktesting.NewFakeClock(t0),
		files: newCertFiles(t),
		ca:    newCA(t, "gatekeeper-ca"),
	}
	e.server = e.ca.issue(t, "exec-reaper-provider", true)
	e.client = e.ca.issue(t, "gatekeeper-webhook", false)
	e.files.write(t, e.server, e.ca)
	e.certs = provider.NewCerts(e.files.cert, e.files.key, e.files.ca)
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

// httpClient returns a client that trusts roots and presents cert (if not
// nil), on a new connection for every request.
func httpClient(t *testing.T, cert *leaf, roots ...*testCA) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	for _, ca := range roots {
		pool.AddCert(ca.Cert)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Present the certificate whatever CAs the server asks for: a client
		// left to choose would send none that the server does not name, and
		// the server's own verification would go untested.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.pair, nil }
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: requestTimeout}
}

// gatekeeper returns a client like Gatekeeper's: trusted, with a certificate.
func (e *env) gatekeeper(t *testing.T) *http.Client { return httpClient(t, e.client, e.ca) }

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

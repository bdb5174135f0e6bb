package tlscerts_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts/tlstest"
)

// t0 is the fake clock's start, a whole second.
var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

// pollTimeout bounds every wait for something asynchronous.
const pollTimeout = 10 * time.Second

// requestBody is what the tests' clients send: a ProviderRequest, as
// Gatekeeper would; the server under test answers any POST with 200.
var requestBody = []byte(`{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest","request":{"keys":["v9:x"]}}`)

// quiet returns a context whose logger discards.
func quiet() context.Context { return klog.NewContext(context.Background(), logr.Discard()) }

// env is an HTTPS server whose TLS comes from a Certs loaded from files, as
// the provider's does; what it serves does not matter here.
type env struct {
	srv    *httptest.Server
	certs  *tlscerts.Certs
	files  tlstest.Files
	ca     *tlstest.CA // signs the server and the trusted client
	server *tlstest.Leaf
	client *tlstest.Leaf
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{files: tlstest.NewFiles(t), ca: tlstest.NewCA(t, "gatekeeper-ca")}
	e.server = e.ca.Issue(t, "exec-reaper-provider", true)
	e.client = e.ca.Issue(t, "gatekeeper-webhook", false)
	e.files.Write(t, e.server, e.ca)
	e.certs = tlscerts.NewCerts(e.files.Cert, e.files.Key, e.files.CA)
	if changed, err := e.certs.Reload(); err != nil || !changed {
		t.Fatalf("Reload = %v, %v; want true, nil", changed, err)
	}
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderResponse","response":{}}`)
	}))
	e.srv.TLS = e.certs.TLSConfig()
	e.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are expected here
	e.srv.Config.BaseContext = func(net.Listener) context.Context { return quiet() }
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

// url is where the tests' clients post; any path is served.
func (e *env) url() string { return e.srv.URL + "/v1/record" }

// gatekeeper returns a client like Gatekeeper's: trusted, with a certificate.
func (e *env) gatekeeper(t *testing.T) *http.Client { return tlstest.Client(t, e.client, e.ca) }

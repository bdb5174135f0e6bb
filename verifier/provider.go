// Package verifier runs Gatekeeper policy suites whose templates call
// exec-reaper's provider through external_data: stock gator cannot load such
// templates (Gatekeeper issue #2659). It serves exec-reaper's real provider
// in-process over mutual TLS, against an in-memory API that holds the suite's
// inventory, and plugs it into Gatekeeper's own Rego driver and gator runner.
package verifier

import (
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/open-policy-agent/frameworks/constraint/pkg/apis/externaldata/unversioned"
	constraintclient "github.com/open-policy-agent/frameworks/constraint/pkg/client"
	"github.com/open-policy-agent/frameworks/constraint/pkg/client/drivers/rego"
	"github.com/open-policy-agent/frameworks/constraint/pkg/externaldata"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"

	"github.com/exec-reaper/exec-reaper/internal/pki"
	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
)

// ProviderName is the name templates use for exec-reaper's Provider by default.
const ProviderName = "exec-reaper"

// recordTimeout bounds the provider's work for one request, below the
// Provider object's timeout as in a cluster.
const recordTimeout = 2 * time.Second

// sessionPrefix starts the path of every session's endpoint.
const sessionPrefix = "/sessions/"

// Provider is exec-reaper's real provider handler served on loopback over
// mutual TLS, recording into an in-memory API.
//
// One server answers for many in-memory APIs: the default one (API, URL) and
// one per Session, each at its own URL. Gatekeeper's driver sends nothing but
// keys, so the URL is what tells the APIs apart.
type Provider struct {
	// API is the in-memory API the provider reads and writes pods in.
	API *fake.Clientset
	// URL is the provider's endpoint, as a Provider object's spec.url.
	URL string

	server   *httptest.Server
	caBundle []byte
	dir      string
	client   *certwatcher.CertWatcher
	clock    clock.Clock
	fallback http.Handler

	mu       sync.Mutex
	sessions map[string]http.Handler
	next     int
}

// StartProvider serves a provider whose clock is clk. Close it when done.
func StartProvider(clk clock.Clock) (p *Provider, err error) {
	dir, err := os.MkdirTemp("", "exec-reaper-verifier-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	// One CA signs both sides here; in a cluster the provider's serving CA and
	// Gatekeeper's CA differ, and the provider trusts only Gatekeeper's.
	ca, err := pki.NewCA("exec-reaper-verifier")
	if err != nil {
		return nil, err
	}
	serving, err := ca.Server("exec-reaper-provider", "127.0.0.1")
	if err != nil {
		return nil, err
	}
	client, err := ca.Issue("gatekeeper-webhook", nil, []string{"127.0.0.1"}, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	servingDir, clientDir := filepath.Join(dir, "provider"), filepath.Join(dir, "gatekeeper")
	if err := ca.WriteDir(servingDir, serving); err != nil {
		return nil, err
	}
	if err := ca.WriteDir(clientDir, client); err != nil {
		return nil, err
	}
	certs := tlscerts.NewCerts(filepath.Join(servingDir, "tls.crt"), filepath.Join(servingDir, "tls.key"), filepath.Join(servingDir, "ca.crt"))
	if _, err := certs.Reload(); err != nil {
		return nil, err
	}
	cw, err := certwatcher.New(filepath.Join(clientDir, "tls.crt"), filepath.Join(clientDir, "tls.key"))
	if err != nil {
		return nil, err
	}

	p = &Provider{API: fake.NewClientset(), caBundle: ca.CertPEM, dir: dir, client: cw, clock: clk, sessions: map[string]http.Handler{}}
	p.fallback = p.router(p.API)
	srv := httptest.NewUnstartedServer(p)
	srv.TLS = certs.TLSConfig()
	// Closed connections and failed handshakes are not the suite's business.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	p.server, p.URL = srv, srv.URL+provider.Path
	return p, nil
}

// router is exec-reaper's provider, unchanged, recording into api.
func (p *Provider) router(api *fake.Clientset) http.Handler {
	return provider.NewRouter(provider.NewHandler(provider.NewRecorder(api, p.clock, nil), recordTimeout))
}

// ServeHTTP sends a request to the API its path names. The provider's log
// is discarded: everything a suite can see comes back in the response.
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r = r.WithContext(klog.NewContext(r.Context(), logr.Discard()))
	h := p.fallback
	if rest, ok := strings.CutPrefix(r.URL.Path, sessionPrefix); ok {
		id, path, _ := strings.Cut(rest, "/")
		p.mu.Lock()
		sh, found := p.sessions[id]
		p.mu.Unlock()
		if !found {
			http.Error(w, fmt.Sprintf("session %q is closed", id), http.StatusNotFound)
			return
		}
		r = r.Clone(r.Context())
		r.URL.Path, r.URL.RawPath = "/"+path, ""
		h = sh
	}
	h.ServeHTTP(w, r)
}

// Close stops the server and removes its certificates.
func (p *Provider) Close() {
	p.server.Close()
	_ = os.RemoveAll(p.dir)
}

// Session is an isolated view of a running Provider: the same server and
// certificates, its own in-memory API, at its own URL. A session costs a
// map entry and an empty fake clientset, so every suite case can have one.
type Session struct {
	// API is the in-memory API this session's provider reads and writes.
	API *fake.Clientset
	// URL is the session's endpoint.
	URL string

	p  *Provider
	id string
}

// NewSession returns a new session with an empty API. Close it when done.
func (p *Provider) NewSession() *Session {
	api := fake.NewClientset()
	p.mu.Lock()
	p.next++
	id := strconv.Itoa(p.next)
	p.sessions[id] = p.router(api)
	p.mu.Unlock()
	return &Session{API: api, URL: p.server.URL + sessionPrefix + id + provider.Path, p: p, id: id}
}

// Close stops answering for the session; later calls to its URL get 404.
func (s *Session) Close() {
	s.p.mu.Lock()
	delete(s.p.sessions, s.id)
	s.p.mu.Unlock()
}

// Opt makes a gator client call this session's provider under each of names.
func (s *Session) Opt(names ...string) gator.Opt { return s.p.opt(s.URL, names) }

// Opt makes a gator client call this provider, under the given Provider
// name, through Gatekeeper's own external-data code: HTTPS, TLS 1.3, a client
// certificate, and the provider's CA bundle as the only trusted root.
func (p *Provider) Opt(name string) gator.Opt { return p.opt(p.URL, []string{name}) }

func (p *Provider) opt(url string, names []string) gator.Opt {
	return func() ([]constraintclient.Opt, []rego.Arg, error) {
		cache := externaldata.NewCache()
		for _, name := range names {
			err := cache.Upsert(&unversioned.Provider{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: unversioned.ProviderSpec{
					URL:      url,
					Timeout:  3,
					CABundle: base64.StdEncoding.EncodeToString(p.caBundle),
				},
			})
			if err != nil {
				return nil, nil, fmt.Errorf("registering provider %q: %w", name, err)
			}
		}
		return nil, []rego.Arg{
			rego.AddExternalDataProviderCache(cache),
			rego.EnableExternalDataClientAuth(),
			rego.AddExternalDataClientCertWatcher(p.client),
		}, nil
	}
}

// NewClient returns a gator client whose external_data calls reach p under
// ProviderName.
func (p *Provider) NewClient(opts ...gator.Opt) (gator.Client, error) {
	return gator.NewOPAClient(false, append(opts, p.Opt(ProviderName))...)
}

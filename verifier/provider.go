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
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	constraintclient "github.com/open-policy-agent/frameworks/constraint/pkg/client"
	"github.com/open-policy-agent/frameworks/constraint/pkg/client/drivers/rego"
	"github.com/open-policy-agent/frameworks/constraint/pkg/apis/externaldata/unversioned"
	"github.com/open-policy-agent/frameworks/constraint/pkg/externaldata"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"

	"github.com/exec-reaper/exec-reaper/internal/pki"
	"github.com/exec-reaper/exec-reaper/provider"
)

// ProviderName is the name templates use for exec-reaper's Provider by default.
const ProviderName = "exec-reaper"

// Provider is exec-reaper's real provider handler served on loopback over
// mutual TLS, recording into an in-memory API.
type Provider struct {
	// API is the in-memory API the provider reads and writes pods in.
	API *fake.Clientset
	// URL is the provider's endpoint, as a Provider object's spec.url.
	URL string

	server   *httptest.Server
	caBundle []byte
	dir      string
	client   *certwatcher.CertWatcher
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
	certs := provider.NewCerts(filepath.Join(servingDir, "tls.crt"), filepath.Join(servingDir, "tls.key"), filepath.Join(servingDir, "ca.crt"))
	if _, err := certs.Reload(); err != nil {
		return nil, err
	}
	cw, err := certwatcher.New(filepath.Join(clientDir, "tls.crt"), filepath.Join(clientDir, "tls.key"))
	if err != nil {
		return nil, err
	}

	api := fake.NewClientset()
	srv := httptest.NewUnstartedServer(provider.NewRouter(provider.NewHandler(provider.NewRecorder(api, clk, nil), 2*time.Second)))
	srv.TLS = certs.TLSConfig()
	srv.StartTLS()
	return &Provider{API: api, URL: srv.URL + provider.Path, server: srv, caBundle: ca.CertPEM, dir: dir, client: cw}, nil
}

// Close stops the server and removes its certificates.
func (p *Provider) Close() {
	p.server.Close()
	_ = os.RemoveAll(p.dir)
}

// Opt makes a gator client call this provider, under the given Provider
// name, through Gatekeeper's own external-data code: HTTPS, TLS 1.3, a client
// certificate, and the provider's CA bundle as the only trusted root.
func (p *Provider) Opt(name string) gator.Opt {
	return func() ([]constraintclient.Opt, []rego.Arg, error) {
		cache := externaldata.NewCache()
		err := cache.Upsert(&unversioned.Provider{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: unversioned.ProviderSpec{
				URL:      p.URL,
				Timeout:  3,
				CABundle: base64.StdEncoding.EncodeToString(p.caBundle),
			},
		})
		if err != nil {
			return nil, nil, fmt.Errorf("registering provider %q: %w", name, err)
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


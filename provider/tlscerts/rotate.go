package tlscerts

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// Rotation has exec-reaper issue and rotate its own serving certificate with
// cert-controller: the certificate and its CA live in a Secret, and the CA is
// kept current in the Provider object's spec.caBundle, so Gatekeeper always
// trusts the certificate the provider serves. No one ever handles a
// certificate by hand.
type Rotation struct {
	// Secret is the Secret cert-controller fills, as "namespace/name".
	Secret string
	// ProviderName is the Provider object whose caBundle is kept current.
	ProviderName string
	// DNSName is the name Gatekeeper dials: the Service's DNS name.
	DNSName string
}

// RunRotator runs cert-controller until ctx is done; fieldOwner names its
// writes (the Secret, the Provider's caBundle) in managedFields. Every replica runs it:
// cert-controller's writes are conflict-checked, so they agree on one
// certificate.
// cert-controller also checks that certFile, written by the provider's
// SecretSync, has arrived.
func RunRotator(ctx context.Context, restCfg *rest.Config, r Rotation, certFile, keyFile, fieldOwner string) error {
	ns, name, err := SplitRef(r.Secret)
	if err != nil {
		return err
	}
	mgr, err := manager.New(narrowed(restCfg, ns, name, r.ProviderName), manager.Options{
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		LeaderElection:         false,
	})
	if err != nil {
		return fmt.Errorf("creating certificate manager: %w", err)
	}
	err = rotator.AddRotator(mgr, &rotator.CertRotator{
		SecretKey:      types.NamespacedName{Namespace: ns, Name: name},
		CertDir:        filepath.Dir(certFile),
		CertName:       filepath.Base(certFile),
		KeyName:        filepath.Base(keyFile),
		CAName:         "exec-reaper-ca",
		CAOrganization: "exec-reaper",
		DNSName:        r.DNSName,
		IsReady:        make(chan struct{}),
		Webhooks:       []rotator.WebhookInfo{{Name: r.ProviderName, Type: rotator.ExternalDataProvider}},
		FieldOwner:     fieldOwner,
		ExtKeyUsages:   &[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("adding certificate rotator: %w", err)
	}
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("certificate rotator: %w", err)
	}
	return nil
}

// narrowed returns a copy of restCfg whose lists and watches of Secrets in
// namespace and of Providers read only the Secret secret and the Provider
// provider (see byName).
func narrowed(restCfg *rest.Config, namespace, secret, provider string) *rest.Config {
	cfg := rest.CopyConfig(restCfg)
	names := map[string]string{
		"/api/v1/namespaces/" + namespace + "/secrets": secret,
		// The version cert-controller reads (rotator.ExternalDataProvider).
		"/apis/externaldata.gatekeeper.sh/v1beta1/providers": provider,
	}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &byName{next: rt, names: names} })
	return cfg
}

// SplitRef splits a Secret's reference, "namespace/name".
func SplitRef(ref string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(ref, "/")
	if !ok || namespace == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("%q is not namespace/name", ref)
	}
	return namespace, name, nil
}

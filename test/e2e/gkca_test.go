//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/exec-reaper/exec-reaper/internal/pki"
	"github.com/exec-reaper/exec-reaper/test/cluster"
	"github.com/exec-reaper/exec-reaper/test/install"
)

// TestGatekeeperCARotation: Gatekeeper's CA is replaced, as its
// cert-controller does when the CA is renewed or its Secret recreated, during
// a steady stream of execs under the strict constraint.
//
//  1. The Secret gatekeeper-webhook-server-cert gets a new CA and
//     certificate; the provider, watching it, loads the new CA within
//     milliseconds, while the running Gatekeeper still presents its old
//     client certificate (in a cluster its mounted copy of the Secret lags
//     by a minute or two). Gatekeeper is made to open new connections (a
//     Provider spec change rebuilds its client): each handshake presents
//     the old certificate, which the provider must still accept.
//  2. Gatekeeper gets the new certificate in its --cert-dir; its certificate
//     watcher (controller-runtime's, which Gatekeeper v3.23 uses for its
//     external-data client certificate too) reloads it without a restart.
//     New connections present the new certificate.
//
// Not one exec may be denied and every one must be recorded.
func TestGatekeeperCARotation(t *testing.T) {
	ns := namespace(t, strictNS)
	ctx := context.Background()
	pods := guardedPods(t, ns, "gkca-a", "gkca-b")
	oldCA, err := os.ReadFile(filepath.Join(c.GatekeeperCertDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := pki.NewCA("gatekeeper-ca-2")
	if err != nil {
		t.Fatal(err)
	}
	pair2, err := ca2.Issue("gatekeeper-webhook-service.gatekeeper-system.svc", nil,
		[]string{"127.0.0.1", "localhost", "gatekeeper-webhook-service.gatekeeper-system.svc"},
		x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	if err != nil {
		t.Fatal(err)
	}
	cert2 := parseCert(t, pair2.CertPEM)

	// The API server must trust Gatekeeper's webhook under either CA (in a
	// cluster Gatekeeper's cert-controller injects the new one): what is
	// tested here is the provider, not the webhook.
	vwcs := c.Client().AdmissionregistrationV1().ValidatingWebhookConfigurations()
	vwc, err := vwcs.Get(ctx, cluster.GatekeeperWebhookConfiguration, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for n := range vwc.Webhooks {
		vwc.Webhooks[n].ClientConfig.CABundle = append(append([]byte{}, oldCA...), ca2.CertPEM...)
	}
	if _, err := vwcs.Update(ctx, vwc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	stream := startExecs(t, pods...)
	stream.waitMore(t, 2)

	// 1. New CA in the Secret; Gatekeeper still presents the old certificate.
	secrets := c.Client().CoreV1().Secrets(install.Namespace)
	s, err := secrets.Get(ctx, "gatekeeper-webhook-server-cert", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data["ca.crt"], s.Data["tls.crt"], s.Data["tls.key"] = ca2.CertPEM, pair2.CertPEM, pair2.KeyPEM
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "every provider replica to have loaded the new CA, the old one retired", rotationTimeout, func(ctx context.Context) (bool, error) {
		for _, r := range inst.Providers {
			text, err := getMetrics(ctx, r.MetricsURL())
			if err != nil || metric(text, "exec_reaper_provider_client_cas", `state="retired"`) != 1 {
				return false, nil
			}
		}
		return true, nil
	})
	redialGatekeeper(t)
	stream.waitMore(t, 2)
	t.Logf("after the CA change, Gatekeeper presenting the old certificate: %d execs admitted", stream.Admitted())

	// 2. Gatekeeper gets the new certificate, without a restart.
	gkLog := filepath.Join(c.Dir, "logs", "gatekeeper.log")
	reloadsBefore := countInFile(t, gkLog, "Updated current TLS certificate")
	for file, data := range map[string][]byte{"tls.crt": pair2.CertPEM, "tls.key": pair2.KeyPEM, "ca.crt": ca2.CertPEM} {
		if err := pki.WriteFileAtomic(filepath.Join(c.GatekeeperCertDir, file), data); err != nil {
			t.Fatal(err)
		}
	}
	// Two watchers read --cert-dir: the webhook server's and the
	// external-data client's. Wait for both, and see the webhook serve it.
	poll(t, "Gatekeeper to reload its certificate (both watchers)", rotationTimeout, func(context.Context) (bool, error) {
		return countInFile(t, gkLog, "Updated current TLS certificate") >= reloadsBefore+2, nil
	})
	poll(t, "Gatekeeper's webhook to serve the new certificate", rotationTimeout, func(context.Context) (bool, error) {
		served := servedBy(t, c.GatekeeperWebhookURL)
		return served != nil && served.Equal(cert2), nil
	})
	redialGatekeeper(t)
	stream.waitMore(t, 2)

	n := stream.finish(t, "Gatekeeper CA rotation")
	t.Logf("%d execs admitted across Gatekeeper's CA rotation; %d denied", n, len(stream.denied))
}

// redialGatekeeper makes Gatekeeper drop its connections to the provider and
// open new ones: any change to a Provider's spec makes it build a new HTTP
// client and close the old one's idle connections. The caBundle gets the
// same certificates with one more newline; cert-controller may set it back,
// which is a second, equally harmless change.
func redialGatekeeper(t *testing.T) {
	t.Helper()
	bundle := append(providerCABundle(t), '\n')
	patch := fmt.Sprintf(`{"spec":{"caBundle":%q}}`, base64.StdEncoding.EncodeToString(bundle))
	_, err := c.Dynamic().Resource(providerGVR).Patch(context.Background(), inst.ProviderName, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func getMetrics(ctx context.Context, url string) (string, error) {
	text, ok := probe(ctx, url)
	if !ok {
		return "", fmt.Errorf("GET %s: %s", url, text)
	}
	return text, nil
}

func countInFile(t *testing.T, path, s string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), s)
}

func parseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// servedBy returns the certificate an HTTPS server presents, or nil if the
// handshake fails. Nothing is verified: the caller compares.
func servedBy(t *testing.T, rawURL string) *x509.Certificate {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}) //nolint:gosec // inspected by the caller
	if err != nil {
		return nil
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

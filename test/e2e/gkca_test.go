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
)

// TestGatekeeperCARotation: Gatekeeper's CA is replaced, as its
// cert-controller does when the CA is renewed or its Secret recreated, during
// a steady stream of execs under the strict constraint. The provider reads
// Gatekeeper's CA from the caBundle of Gatekeeper's webhook configuration
// (the chart's default), where cert-controller injects it.
//
//  1. The webhook configuration's caBundle gets the new CA beside the old
//     (the API server must trust Gatekeeper's webhook under either while
//     its pods change certificate), and the Secret
//     gatekeeper-webhook-server-cert a new CA and certificate. The
//     provider, watching the webhook configuration, trusts both CAs within
//     milliseconds, while the running Gatekeeper still presents its old
//     client certificate (in a cluster its mounted copy of the Secret lags
//     by a minute or two). Gatekeeper is made to open new connections (a
//     Provider spec change rebuilds its client): each handshake presents
//     the old certificate, which the provider must still accept.
//  2. Gatekeeper gets the new certificate in its --cert-dir; its certificate
//     watcher (controller-runtime's, which Gatekeeper v3.23 uses for its
//     external-data client certificate too) reloads it without a restart.
//     New connections present the new certificate.
//  3. The caBundle keeps the new CA alone, as cert-controller's injection
//     leaves it: the provider retires the old one, and Gatekeeper's new
//     connections are still accepted.
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

	stream := startExecs(t, pods...)
	stream.waitMore(t, 2)

	// 1. The new CA beside the old in the caBundle, and in the Secret;
	// Gatekeeper still presents the old certificate.
	setGatekeeperCABundle(t, append(append([]byte{}, oldCA...), ca2.CertPEM...))
	waitClientCAs(t, 2, 0)
	secrets := c.Client().CoreV1().Secrets(cluster.GatekeeperNamespace)
	s, err := secrets.Get(ctx, "gatekeeper-webhook-server-cert", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data["ca.crt"], s.Data["tls.crt"], s.Data["tls.key"] = ca2.CertPEM, pair2.CertPEM, pair2.KeyPEM
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
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

	// 3. The new CA alone in the caBundle: the old one retired.
	setGatekeeperCABundle(t, ca2.CertPEM)
	waitClientCAs(t, 1, 1)
	redialGatekeeper(t)
	stream.waitMore(t, 2)

	n := stream.finish(t, "Gatekeeper CA rotation")
	t.Logf("%d execs admitted across Gatekeeper's CA rotation; %d denied", n, len(stream.denied))
}

// setGatekeeperCABundle sets the caBundle of every webhook of Gatekeeper's
// webhook configuration, as Gatekeeper's cert-controller injects its CA.
func setGatekeeperCABundle(t *testing.T, bundle []byte) {
	t.Helper()
	ctx := context.Background()
	vwcs := c.Client().AdmissionregistrationV1().ValidatingWebhookConfigurations()
	vwc, err := vwcs.Get(ctx, cluster.GatekeeperWebhookConfiguration, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for n := range vwc.Webhooks {
		vwc.Webhooks[n].ClientConfig.CABundle = bundle
	}
	if _, err := vwcs.Update(ctx, vwc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitClientCAs waits until every provider replica trusts current CAs from
// Gatekeeper's caBundle and retired ones still within their grace.
func waitClientCAs(t *testing.T, current, retired float64) {
	t.Helper()
	poll(t, fmt.Sprintf("every provider replica to trust %v current and %v retired Gatekeeper CAs", current, retired), rotationTimeout, func(ctx context.Context) (bool, error) {
		for _, r := range inst.Providers {
			text, err := getMetrics(ctx, r.MetricsURL())
			if err != nil || metric(text, "exec_reaper_provider_client_cas", `state="current"`) != current ||
				metric(text, "exec_reaper_provider_client_cas", `state="retired"`) != retired {
				return false, nil
			}
		}
		return true, nil
	})
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

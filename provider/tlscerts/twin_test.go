package tlscerts_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"testing"

	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts/tlstest"
)

// servedLeaf connects to e's server as Gatekeeper would (TLS 1.3, its
// client certificate, trusting only roots) and returns the certificate the
// server presented, failing t if the handshake or its verification fails.
func servedLeaf(t *testing.T, e *env, roots ...*tlstest.CA) *x509.Certificate {
	t.Helper()
	pool := x509.NewCertPool()
	for _, ca := range roots {
		pool.AddCert(ca.Cert)
	}
	conn, err := tls.Dial("tcp", e.srv.Listener.Addr().String(), &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "127.0.0.1",
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &e.client.Pair, nil },
	})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// rsaEnv is newEnv with the serving certificate as cert-controller issues
// it: an RSA 2048-bit key from an RSA CA (Gatekeeper's CA signs the client).
func rsaEnv(t *testing.T) (*env, *tlstest.CA) {
	t.Helper()
	e := newEnv(t)
	servingCA := tlstest.NewRSACA(t, "exec-reaper-ca")
	e.server = servingCA.Issue(t, "exec-reaper-provider", true)
	e.files.Write(t, e.server, e.ca)
	if _, err := e.certs.Reload(); err != nil {
		t.Fatal(err)
	}
	return e, servingCA
}

// TestECDSATwin: given the CA of its RSA serving certificate, the provider
// serves an ECDSA P-256 twin of it (about 0.9 ms less CPU per handshake,
// BenchmarkHandshake), which Gatekeeper verifies through the same CA and
// which names the same host for as long. Without the CA it serves the
// certificate as issued.
func TestECDSATwin(t *testing.T) {
	e, servingCA := rsaEnv(t)
	if got := servedLeaf(t, e, servingCA); got.PublicKeyAlgorithm != x509.RSA {
		t.Fatalf("without the CA: served a %v key, want the RSA certificate as issued", got.PublicKeyAlgorithm)
	}

	if err := e.certs.SetIssuer(servingCA.CertPEM, servingCA.KeyPEM(t)); err != nil {
		t.Fatal(err)
	}
	if changed, err := e.certs.Reload(); err != nil || !changed {
		t.Fatalf("Reload after SetIssuer = %v, %v; want true, nil", changed, err)
	}
	twin := servedLeaf(t, e, servingCA)
	if twin.PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("with the CA: served a %v key, want the ECDSA twin", twin.PublicKeyAlgorithm)
	}
	asIssued := e.server.Cert
	if twin.Subject.String() != asIssued.Subject.String() || !twin.NotAfter.Equal(asIssued.NotAfter) ||
		!twin.NotBefore.Equal(asIssued.NotBefore) || len(twin.IPAddresses) != 1 || !twin.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("twin is %v %v %v–%v; want the certificate's %v %v %v–%v", twin.Subject, twin.IPAddresses, twin.NotBefore, twin.NotAfter,
			asIssued.Subject, asIssued.IPAddresses, asIssued.NotBefore, asIssued.NotAfter)
	}
	if twin.SerialNumber.Cmp(asIssued.SerialNumber) == 0 {
		t.Errorf("twin reuses the certificate's serial number %v; a CA's serials must be unique", twin.SerialNumber)
	}
	if len(twin.ExtKeyUsage) != 1 || twin.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || twin.IsCA {
		t.Errorf("twin's usages are %v (CA %v); want serverAuth only", twin.ExtKeyUsage, twin.IsCA)
	}
	if got := e.certs.Serving(); got == nil || !got.Equal(twin) {
		t.Errorf("Serving() is not the twin served, so readiness would check another certificate")
	}
	// The twin is issued once per certificate, not per reload or handshake.
	if again := servedLeaf(t, e, servingCA); !again.Equal(twin) {
		t.Errorf("a second handshake got another twin")
	}
	// Requests are served over it.
	if got := postTrusting(t, e, servingCA); got != http.StatusOK {
		t.Errorf("POST over the twin = %d, want 200", got)
	}

	// Rotation: a new CA issues a new certificate. Until the provider has the
	// new CA, it serves the new certificate as issued (never a twin of the
	// old CA); then the new CA's twin.
	newCA := tlstest.NewRSACA(t, "exec-reaper-ca")
	e.server = newCA.Issue(t, "exec-reaper-provider", true)
	e.files.Write(t, e.server, e.ca)
	if _, err := e.certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedLeaf(t, e, newCA); got.PublicKeyAlgorithm != x509.RSA {
		t.Errorf("new certificate, old CA known: served a %v key, want the new certificate as issued", got.PublicKeyAlgorithm)
	}
	if err := e.certs.SetIssuer(newCA.CertPEM, newCA.KeyPEM(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedLeaf(t, e, newCA); got.PublicKeyAlgorithm != x509.ECDSA || got.Equal(twin) {
		t.Errorf("after rotation: served a %v key (the old twin: %v), want a new ECDSA twin", got.PublicKeyAlgorithm, got.Equal(twin))
	}

	// Clearing the CA serves the certificate as issued again.
	if err := e.certs.SetIssuer(nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedLeaf(t, e, newCA); !got.Equal(e.server.Cert) {
		t.Errorf("CA cleared: served %v, want the certificate as issued", got.PublicKeyAlgorithm)
	}
}

// postTrusting posts to e's server as Gatekeeper, trusting roots, and
// returns the status.
func postTrusting(t *testing.T, e *env, roots ...*tlstest.CA) int {
	t.Helper()
	resp, err := tlstest.Client(t, e.client, roots...).Post(e.url(), "application/json", nil)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestECDSATwinNotNeeded: a certificate with an ECDSA key is served as it is,
// CA known or not.
func TestECDSATwinNotNeeded(t *testing.T) {
	e := newEnv(t) // ECDSA throughout
	if err := e.certs.SetIssuer(e.ca.CertPEM, e.ca.KeyPEM(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedLeaf(t, e, e.ca); !got.Equal(e.server.Cert) {
		t.Errorf("served another certificate than the ECDSA one as issued")
	}
}

// TestSetIssuerErrors: a CA that is not one, or a key that does not match,
// is refused with an error saying so, and serving goes on unchanged.
func TestSetIssuerErrors(t *testing.T) {
	e, servingCA := rsaEnv(t)
	other := tlstest.NewRSACA(t, "other")
	leaf := servingCA.Issue(t, "not-a-ca", true)
	for name, tt := range map[string]struct{ cert, key []byte }{
		"garbage":      {[]byte("not PEM"), []byte("not PEM")},
		"key mismatch": {servingCA.CertPEM, other.KeyPEM(t)},
		"not a CA":     {leaf.CertPEM, leaf.KeyPEM},
		"key missing":  {servingCA.CertPEM, nil},
	} {
		err := e.certs.SetIssuer(tt.cert, tt.key)
		if err == nil {
			t.Errorf("%s: SetIssuer succeeded", name)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	if _, err := e.certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedLeaf(t, e, servingCA); !got.Equal(e.server.Cert) {
		t.Errorf("after refused CAs: not serving the certificate as issued")
	}
}

// TestECDSATwinSameOnEveryReplica: two replicas given the same certificate
// and CA serve the very same twin, byte for byte, as they would the
// certificate itself; a reissued certificate gets another. Per-replica twins
// (random keys) made "the provider serves a reissued certificate" true of
// whichever other replica a dial reached, and the rotation test went on to
// its second rotation while the first was still under way.
func TestECDSATwinSameOnEveryReplica(t *testing.T) {
	e, servingCA := rsaEnv(t)
	replica := func() *tlscerts.Certs {
		c := tlscerts.NewCerts(e.files.Cert, e.files.Key, e.files.CA)
		if err := c.SetIssuer(servingCA.CertPEM, servingCA.KeyPEM(t)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Reload(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := replica(), replica()
	if a.Serving().PublicKeyAlgorithm != x509.ECDSA || !a.Serving().Equal(b.Serving()) {
		t.Fatalf("two replicas serve different twins (%v, serials %v and %v)", a.Serving().PublicKeyAlgorithm, a.Serving().SerialNumber, b.Serving().SerialNumber)
	}
	first := a.Serving()
	e.server = servingCA.Issue(t, "exec-reaper-provider", true)
	e.files.Write(t, e.server, e.ca)
	if _, err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := a.Serving(); got.Equal(first) || got.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("a reissued certificate kept its old twin")
	}
}

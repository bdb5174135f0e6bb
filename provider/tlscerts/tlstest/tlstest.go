// Package tlstest issues the certificates and builds the clients that tests
// of the provider's TLS need: a CA, server and client certificates, the
// provider's three PEM files replaced as a kubelet replaces a mounted
// Secret, and an HTTPS client presenting a chosen certificate. It is for
// tests only (the provider and tlscerts tests share it); it builds on
// internal/pki, which the local control plane and the verifier use too.
package tlstest

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/exec-reaper/exec-reaper/internal/pki"
)

// RequestTimeout bounds one HTTP round trip of a Client.
const RequestTimeout = 10 * time.Second

// CA is an in-memory certificate authority.
type CA struct {
	*pki.CA
}

// Leaf is a certificate issued by a CA, with its key.
type Leaf struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
	Pair    tls.Certificate
}

// NewCA returns a CA named cn, failing t on error.
func NewCA(t testing.TB, cn string) *CA {
	t.Helper()
	return newCA(t, pki.NewCA, cn)
}

// NewRSACA returns a CA named cn whose key and leaves' keys are RSA
// 2048-bit, as cert-controller issues them, failing t on error.
func NewRSACA(t testing.TB, cn string) *CA {
	t.Helper()
	return newCA(t, pki.NewRSACA, cn)
}

func newCA(t testing.TB, create func(cn string) (*pki.CA, error), cn string) *CA {
	t.Helper()
	ca, err := create(cn)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{ca}
}

// KeyPEM returns the CA's key, PEM-encoded, failing t on error.
func (ca *CA) KeyPEM(t testing.TB) []byte {
	t.Helper()
	pem, err := ca.CA.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	return pem
}

// Issue signs a leaf for cn: a server certificate for 127.0.0.1 if server,
// else a client certificate.
func (ca *CA) Issue(t testing.TB, cn string, server bool) *Leaf {
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
	l := &Leaf{CertPEM: p.CertPEM, KeyPEM: p.KeyPEM}
	if l.Pair, err = tls.X509KeyPair(l.CertPEM, l.KeyPEM); err != nil {
		t.Fatal(err)
	}
	if l.Cert, err = x509.ParseCertificate(l.Pair.Certificate[0]); err != nil {
		t.Fatal(err)
	}
	return l
}

// Files are the provider's three PEM files in a temporary directory.
type Files struct{ Cert, Key, CA string }

// NewFiles names the three files in a new temporary directory; nothing is
// written yet.
func NewFiles(t testing.TB) Files {
	dir := t.TempDir()
	return Files{filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")}
}

// Write replaces the files, each atomically, as a kubelet updating a mounted
// Secret would.
func (f Files) Write(t testing.TB, server *Leaf, clientCA *CA) {
	t.Helper()
	for path, data := range map[string][]byte{f.Cert: server.CertPEM, f.Key: server.KeyPEM, f.CA: clientCA.CertPEM} {
		WriteAtomically(t, path, data)
	}
}

// WriteAtomically replaces path with data, failing t on error.
func WriteAtomically(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := pki.WriteFileAtomic(path, data); err != nil {
		t.Fatal(err)
	}
}

// Client returns a client that trusts roots and presents cert (if not nil),
// on a new connection for every request.
func Client(t testing.TB, cert *Leaf, roots ...*CA) *http.Client {
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
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.Pair, nil }
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: RequestTimeout}
}

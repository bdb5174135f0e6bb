package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certValidity is long enough for any test or demo, short enough that a
// leaked test key is worthless soon.
const certValidity = 7 * 24 * time.Hour

// authority is a CA that can sign certificates.
type authority struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
}

// newAuthority creates a self-signed ECDSA P-256 CA.
func newAuthority(commonName string) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour), // tolerate clock skew
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key, certPEM: encodeCert(der)}, nil
}

// certRequest describes a leaf certificate.
type certRequest struct {
	commonName   string
	organization []string // groups, for client certificates
	hosts        []string // IP addresses or DNS names, for serving certificates
	usages       []x509.ExtKeyUsage
}

// issue creates a key and a certificate signed by a, both PEM-encoded.
func (a *authority) issue(req certRequest) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.commonName, Organization: req.organization},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  req.usages,
	}
	for _, h := range req.hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// writeFiles writes the CA's certificate and key as dir/name.crt and
// dir/name.key.
func (a *authority) writeFiles(dir, name string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.key)
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, name+".crt"), a.certPEM); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}

// writeServingDir writes tls.crt, tls.key and ca.crt into dir: the layout
// that Gatekeeper's --cert-dir and Kubernetes TLS Secrets use.
func (a *authority) writeServingDir(dir string, req certRequest) error {
	certPEM, keyPEM, err := a.issue(req)
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM, "ca.crt": a.certPEM} {
		if err := writeFile(filepath.Join(dir, name), data); err != nil {
			return err
		}
	}
	return nil
}

// writeRSAKeyPair writes an RSA private key and its public key, as the
// API server and controller-manager expect for service-account tokens.
func writeRSAKeyPair(privatePath, publicPath string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := writeFile(privatePath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})); err != nil {
		return err
	}
	return writeFile(publicPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))
}

// IssueServingCert creates a new CA and a serving certificate (serverAuth)
// for hosts (IP addresses or DNS names), and writes tls.crt, tls.key and
// ca.crt into dir, creating it if needed. It returns the path of ca.crt, for
// whoever must trust the server (e.g. a Gatekeeper Provider's caBundle). It
// does not depend on the cluster's state; it is a method so that tests find
// it next to the rest of the harness.
func (c *Cluster) IssueServingCert(dir string, hosts ...string) (caFile string, err error) {
	if len(hosts) == 0 {
		return "", fmt.Errorf("issuing serving certificate: no hosts")
	}
	ca, err := newAuthority("exec-reaper-test-serving-ca")
	if err != nil {
		return "", fmt.Errorf("issuing serving certificate: %w", err)
	}
	req := certRequest{commonName: hosts[0], hosts: hosts, usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if err := ca.writeServingDir(dir, req); err != nil {
		return "", fmt.Errorf("issuing serving certificate: %w", err)
	}
	return filepath.Join(dir, "ca.crt"), nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// writeFile writes data with owner-only permissions (it may be a key),
// creating parent directories.
func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

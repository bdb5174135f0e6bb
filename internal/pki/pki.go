// Package pki issues the small certificate authorities and certificates that
// exec-reaper's tests, its local control plane and its policy verifier need,
// and writes certificate files atomically. In a cluster, the provider's
// certificates come from cert-controller instead; only WriteFileAtomic is
// used there.
package pki

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

// Validity is how long issued certificates last.
const Validity = 24 * time.Hour

// CA is a certificate authority with its key.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer // *ecdsa.PrivateKey, or *rsa.PrivateKey from NewRSACA
	CertPEM []byte
}

// Pair is an issued certificate and its key, PEM-encoded.
type Pair struct {
	CertPEM, KeyPEM []byte
}

// NewCA returns a self-signed CA named cn. It and what it issues have ECDSA
// P-256 keys.
func NewCA(cn string) (*CA, error) { return newCA(cn, false) }

// NewRSACA returns a self-signed CA named cn whose key, and those of what it
// issues, are RSA 2048-bit, as cert-controller makes them (Gatekeeper's
// webhook and client certificate, the provider's as cert-controller issues
// it).
func NewRSACA(cn string) (*CA, error) { return newCA(cn, true) }

func newCA(cn string, rsaKeys bool) (*CA, error) {
	key, err := newKey(rsaKeys)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
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
	return &CA{Cert: cert, Key: key, CertPEM: pemBlock("CERTIFICATE", der)}, nil
}

// Issue signs a certificate for cn with the given organizations (Kubernetes
// groups, for client certificates), hosts (DNS names or IPs, for serving
// certificates) and extended usages.
func (ca *CA) Issue(cn string, orgs, hosts []string, usages ...x509.ExtKeyUsage) (Pair, error) {
	_, rsaKeys := ca.Key.(*rsa.PrivateKey)
	key, err := newKey(rsaKeys)
	if err != nil {
		return Pair{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  usages,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return Pair{}, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return Pair{}, err
	}
	return Pair{CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: keyPEM}, nil
}

// KeyPEM returns the CA's private key, PEM-encoded (a cluster's controller
// manager signs with it).
func (ca *CA) KeyPEM() ([]byte, error) { return encodeKey(ca.Key) }

// newKey returns a new RSA 2048-bit key if rsaKeys, else an ECDSA P-256 one.
func newKey(rsaKeys bool) (crypto.Signer, error) {
	if rsaKeys {
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// encodeKey PEM-encodes key as cert-controller and kubeadm do: "RSA PRIVATE
// KEY" (PKCS #1) or "EC PRIVATE KEY" (SEC 1).
func encodeKey(key crypto.Signer) ([]byte, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k)), nil
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pemBlock("EC PRIVATE KEY", der), nil
	default:
		return nil, fmt.Errorf("unsupported key type %T", key)
	}
}

// Server issues a serving certificate for hosts.
func (ca *CA) Server(cn string, hosts ...string) (Pair, error) {
	return ca.Issue(cn, nil, hosts, x509.ExtKeyUsageServerAuth)
}

// Client issues a client certificate for user in groups.
func (ca *CA) Client(user string, groups ...string) (Pair, error) {
	return ca.Issue(user, groups, nil, x509.ExtKeyUsageClientAuth)
}

// WriteDir writes p as tls.crt and tls.key, and the CA as ca.crt, into dir,
// the layout of a kubernetes.io/tls Secret mounted as a volume.
func (ca *CA) WriteDir(dir string, p Pair) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"tls.crt": p.CertPEM, "tls.key": p.KeyPEM, "ca.crt": ca.CertPEM} {
		if err := WriteFileAtomic(filepath.Join(dir, name), data); err != nil {
			return err
		}
	}
	return nil
}

// WriteFileAtomic replaces path with data in one rename, so a reader never
// sees half a file.
func WriteFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

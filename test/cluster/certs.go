package cluster

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/exec-reaper/exec-reaper/internal/pki"
)

// writeCA writes ca's certificate and key as dir/name.crt and dir/name.key.
func writeCA(ca *pki.CA, dir, name string) error {
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, name+".crt"), ca.CertPEM); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, name+".key"), keyPEM)
}

// writeRSAKeyPair writes a new RSA key pair, as the API server wants for
// signing service-account tokens.
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

// IssueServingCert creates a new CA and a serving certificate for hosts
// signed by it, and writes tls.crt, tls.key and ca.crt into dir (the layout
// of a mounted kubernetes.io/tls Secret). It returns the path of ca.crt.
func (c *Cluster) IssueServingCert(dir string, hosts ...string) (caFile string, err error) {
	if len(hosts) == 0 {
		return "", fmt.Errorf("issuing serving certificate: no hosts")
	}
	ca, err := pki.NewCA("exec-reaper-test-serving-ca")
	if err != nil {
		return "", fmt.Errorf("issuing serving certificate: %w", err)
	}
	pair, err := ca.Server(hosts[0], hosts...)
	if err != nil {
		return "", fmt.Errorf("issuing serving certificate: %w", err)
	}
	if err := ca.WriteDir(dir, pair); err != nil {
		return "", fmt.Errorf("issuing serving certificate: %w", err)
	}
	return filepath.Join(dir, "ca.crt"), nil
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

package provider

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Certs holds the provider's serving certificate and the CA bundle that
// client certificates (Gatekeeper's) must chain to, and reloads both from disk
// when the files change, so rotation needs no restart.
//
// Reloading polls: Kubernetes updates mounted Secrets by swapping a symlink,
// which file-change notifications on the files themselves miss, and three
// small reads every few seconds cost nothing.
type Certs struct {
	certFile, keyFile, caFile string

	reload sync.Mutex // serialises Reload: the ticker and the Secret mirrors call it
	mu     sync.RWMutex
	config *tls.Config // per-connection configuration for the loaded files
	loaded []byte      // the concatenated file contents last loaded
}

// NewCerts returns Certs that load from the given PEM files. Nothing is read
// until Reload.
func NewCerts(certFile, keyFile, caFile string) *Certs {
	return &Certs{certFile: certFile, keyFile: keyFile, caFile: caFile}
}

// Reload reads the files and, if they changed, swaps in the new certificate
// and CA pool. On any error the previous ones stay in use.
func (c *Certs) Reload() (changed bool, err error) {
	// One at a time, or a reload that read the files before a rotation
	// could swap in its stale result after a newer one.
	c.reload.Lock()
	defer c.reload.Unlock()
	var raw [3][]byte
	for i, f := range []string{c.certFile, c.keyFile, c.caFile} {
		if raw[i], err = os.ReadFile(f); err != nil {
			return false, err
		}
	}
	all := bytes.Join(raw[:], []byte{0})
	c.mu.RLock()
	same := bytes.Equal(all, c.loaded)
	c.mu.RUnlock()
	if same {
		return false, nil
	}
	cert, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		return false, fmt.Errorf("loading serving certificate %s: %w", c.certFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw[2]) {
		return false, fmt.Errorf("loading client CA %s: no PEM certificates found", c.caFile)
	}
	// One configuration per load, not per handshake: nothing is rebuilt on
	// the hot path. A resumed session is still checked against the current
	// client CA, so a rotation takes effect at once.
	config := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
	c.mu.Lock()
	c.config, c.loaded = config, all
	c.mu.Unlock()
	return true, nil
}

// Run reloads every interval until ctx is done.
func (c *Certs) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.reloadAndReport(ctx)
		}
	}
}

// reloadAndReport reloads, counting and logging the outcome. Files written
// by a SecretSync trigger it at once; Run's ticker catches everything else.
func (c *Certs) reloadAndReport(ctx context.Context) {
	log := klog.FromContext(ctx)
	switch changed, err := c.Reload(); {
	case err != nil:
		certReloadsTotal.WithLabelValues("error").Inc()
		log.Error(err, "Reloading certificates; keeping the previous ones")
	case changed:
		certReloadsTotal.WithLabelValues("changed").Inc()
		log.Info("Reloaded certificates", "cert", c.certFile, "clientCA", c.caFile)
	}
}

// Ready returns an error until a certificate and CA are loaded.
func (c *Certs) Ready() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.config == nil {
		return errors.New("certificates not loaded")
	}
	return nil
}

// TLSConfig returns the server configuration: TLS 1.3 only, and a client
// certificate that chains to the current CA is required. Every handshake
// sees the latest certificate and CA.
func (c *Certs) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c.mu.RLock()
			defer c.mu.RUnlock()
			if c.config == nil {
				return nil, errors.New("certificates not loaded")
			}
			return c.config, nil
		},
	}
}

package tlscerts

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Certs holds the provider's serving certificate and the CA bundle that
// client certificates (Gatekeeper's) must chain to, and reloads both from disk
// when the files change, so rotation needs no restart.
//
// Reloading polls: Kubernetes updates mounted Secrets by swapping a symlink,
// which file-change notifications on the files themselves miss, and three
// small reads every few seconds cost nothing.
//
// A client CA that leaves the CA file stays trusted for a grace period
// (WithClientCAGrace): Gatekeeper's pods present the certificate of the old
// CA until their own copy of the Secret and their certificate watcher catch
// up, which the provider, watching the Secret directly, sees long before.
type Certs struct {
	certFile, keyFile, caFile string
	grace                     time.Duration
	clock                     clock.PassiveClock

	reload sync.Mutex // serialises Reload: the ticker and the Secret mirrors call it
	// Guarded by reload:
	current []*x509.Certificate  // the CAs in caFile at the last load
	retired map[string]retiredCA // CAs gone from caFile, by their DER, still trusted
	issuer  *issuer              // the serving certificate's CA with its key, if known (SetIssuer)
	twin    tls.Certificate      // the ECDSA twin last issued (see twin.go)
	twinOf  []byte               // the DER of the certificate and CA twin was issued for
	twinErr error                // why no twin was issued for them, if it failed

	mu     sync.RWMutex
	config *tls.Config       // per-connection configuration for the loaded files
	leaf   *x509.Certificate // the serving certificate in config
	loaded []byte            // the concatenated file contents last loaded
}

// retiredCA is a client CA no longer in the CA file, trusted until until.
type retiredCA struct {
	cert  *x509.Certificate
	until time.Time
}

// CertsOption configures Certs.
type CertsOption func(*Certs)

// WithClientCAGrace keeps every client CA trusted for d after it left the CA
// file. Zero (the default) trusts only the CAs in the file.
func WithClientCAGrace(d time.Duration) CertsOption { return func(c *Certs) { c.grace = d } }

// WithClock sets the clock that times the grace period.
func WithClock(clk clock.PassiveClock) CertsOption { return func(c *Certs) { c.clock = clk } }

// NewCerts returns Certs that load from the given PEM files. Nothing is read
// until Reload.
func NewCerts(certFile, keyFile, caFile string, opts ...CertsOption) *Certs {
	c := &Certs{certFile: certFile, keyFile: keyFile, caFile: caFile, clock: clock.RealClock{}, retired: map[string]retiredCA{}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// errNotIssued wraps the error of a Reload that found a file missing before
// anything was ever loaded: the certificates are not issued yet.
var errNotIssued = errors.New("certificates not issued yet")

// Reload reads the files and, if they changed or a retired client CA's grace
// ran out, swaps in the new certificate and CA pool. On any error the
// previous ones stay in use.
func (c *Certs) Reload() (changed bool, err error) {
	// One at a time, or a reload that read the files before a rotation
	// could swap in its stale result after a newer one.
	c.reload.Lock()
	defer c.reload.Unlock()
	var raw [3][]byte
	for i, f := range []string{c.certFile, c.keyFile, c.caFile} {
		if raw[i], err = os.ReadFile(f); err != nil {
			if errors.Is(err, fs.ErrNotExist) && c.Ready() != nil {
				return false, fmt.Errorf("%w: %w", errNotIssued, err)
			}
			return false, err
		}
	}
	now := c.clock.Now()
	all := bytes.Join(raw[:], []byte{0})
	if c.issuer != nil {
		all = append(append(all, 0), c.issuer.cert.Raw...)
	}
	c.mu.RLock()
	same := bytes.Equal(all, c.loaded)
	c.mu.RUnlock()
	if same && !c.expired(now) {
		return false, nil
	}
	cert, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		return false, fmt.Errorf("loading serving certificate %s: %w", c.certFile, err)
	}
	cas, err := parseCerts(raw[2])
	if err != nil {
		return false, fmt.Errorf("loading client CA %s: %w", c.caFile, err)
	}
	serving := c.serving(cert)

	// Retire the CAs that left the file; a CA back in the file is current
	// again; a retired CA whose grace is over goes.
	retired := map[string]retiredCA{}
	inFile := map[string]bool{}
	for _, ca := range cas {
		inFile[string(ca.Raw)] = true
	}
	for k, r := range c.retired {
		if !inFile[k] && now.Before(r.until) {
			retired[k] = r
		}
	}
	if c.grace > 0 {
		for _, ca := range c.current {
			if k := string(ca.Raw); !inFile[k] {
				if _, ok := retired[k]; !ok {
					retired[k] = retiredCA{cert: ca, until: now.Add(c.grace)}
				}
			}
		}
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	for _, r := range retired {
		pool.AddCert(r.cert)
	}
	// One configuration per load, not per handshake: nothing is rebuilt on
	// the hot path. A resumed session is still checked against the current
	// client CAs, so a rotation takes effect at once.
	config := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: serving,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		// HTTP/1.1 only, as Gatekeeper's client speaks it: a drain moves
		// HTTP/1.1 connections precisely (Connection: close).
		NextProtos: []string{"http/1.1"},
	}
	c.current, c.retired = cas, retired
	clientCAsTrusted.WithLabelValues("current").Set(float64(len(cas)))
	clientCAsTrusted.WithLabelValues("retired").Set(float64(len(retired)))
	c.mu.Lock()
	c.config, c.leaf, c.loaded = config, serving[0].Leaf, all
	c.mu.Unlock()
	return true, nil
}

// serving returns the certificates to serve for cert, in order of
// preference: its ECDSA twin first when one is issued (see twin.go), which
// every TLS 1.3 client Gatekeeper runs can use; cert itself for any other.
// A twin that cannot be issued costs only speed, never the new certificate:
// cert alone is served, and the reload's log says why. Called under reload.
func (c *Certs) serving(cert tls.Certificate) []tls.Certificate {
	of := cert.Leaf.Raw
	if c.issuer != nil {
		of = append(append(of[:len(of):len(of)], 0), c.issuer.cert.Raw...)
	}
	if !bytes.Equal(of, c.twinOf) {
		twin, ok, err := ecdsaTwin(cert, c.issuer)
		if !ok {
			twin = tls.Certificate{}
		}
		c.twin, c.twinOf, c.twinErr = twin, of, err
	}
	if c.twin.Leaf == nil {
		return []tls.Certificate{cert}
	}
	return []tls.Certificate{c.twin, cert}
}

// expired reports whether a retired CA's grace is over. Called under reload.
func (c *Certs) expired(now time.Time) bool {
	for _, r := range c.retired {
		if !now.Before(r.until) {
			return true
		}
	}
	return false
}

// parseCerts returns every certificate in PEM data.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificates found")
	}
	return out, nil
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
			c.ReloadAndReport(ctx)
		}
	}
}

// ReloadAndReport reloads, counting and logging the outcome. Files written
// by a SecretSync trigger it at once; Run's ticker catches everything else.
// Files not there before anything was ever loaded are a certificate not yet
// issued: a quiet wait, not a failed reload.
func (c *Certs) ReloadAndReport(ctx context.Context) {
	log := klog.FromContext(ctx)
	switch changed, err := c.Reload(); {
	case errors.Is(err, errNotIssued):
		log.V(1).Info("Waiting for the certificates to be issued", "err", err.Error())
	case err != nil:
		certReloadsTotal.WithLabelValues("error").Inc()
		log.Error(err, "Reloading certificates; keeping the previous ones")
	case changed:
		certReloadsTotal.WithLabelValues("changed").Inc()
		log.Info("Reloaded certificates", "cert", c.certFile, "servedKey", c.servedKey(), "clientCA", c.caFile, "clientCAs", c.ClientCAs())
	}
}

// ClientCAs describes the trusted client CAs: each one's subject, and for
// those retired, until when they stay trusted.
func (c *Certs) ClientCAs() []string {
	c.reload.Lock()
	defer c.reload.Unlock()
	var out []string
	for _, ca := range c.current {
		out = append(out, ca.Subject.String())
	}
	var retired []string
	for _, r := range c.retired {
		retired = append(retired, fmt.Sprintf("%s (retired, trusted until %s)", r.cert.Subject, r.until.UTC().Format(time.RFC3339)))
	}
	sort.Strings(retired)
	return append(out, retired...)
}

// Ready returns an error until a certificate and CA are loaded.
func (c *Certs) Ready() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.config == nil {
		return errors.New("the serving certificate and Gatekeeper's CA are not loaded yet")
	}
	return nil
}

// servedKey describes the key of the certificate most clients are served.
func (c *Certs) servedKey() string {
	c.reload.Lock()
	defer c.reload.Unlock()
	if c.twin.Leaf != nil {
		return "ECDSA P-256 (a twin of the certificate as issued, by the same CA)"
	}
	leaf := c.Serving()
	switch {
	case leaf == nil:
		return ""
	case c.twinErr != nil:
		return leaf.PublicKeyAlgorithm.String() + " (as issued; no ECDSA twin: " + c.twinErr.Error() + ")"
	}
	return leaf.PublicKeyAlgorithm.String() + " (as issued)"
}

// Serving returns the serving certificate most clients are served (its ECDSA
// twin, if there is one), or nil.
func (c *Certs) Serving() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.leaf
}

// TLSConfig returns the server configuration: TLS 1.3 only, and a client
// certificate that chains to a trusted CA is required. Every handshake
// sees the latest certificate and CAs.
func (c *Certs) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			handshakesTotal.Inc()
			c.mu.RLock()
			defer c.mu.RUnlock()
			if c.config == nil {
				return nil, errors.New("certificates not loaded")
			}
			return c.config, nil
		},
	}
}

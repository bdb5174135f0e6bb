package tlscerts

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
)

// The serving certificate cert-controller issues has an RSA 2048-bit key, and
// it has no setting for another. Gatekeeper's external-data client keeps at
// most 10 idle connections to a provider and has no TLS session cache, so a
// burst of 100 concurrent reviews opens about 90 new connections, and the
// provider's half of each handshake signs once with that key. An ECDSA P-256
// key makes each new connection about 1 ms (0.8-1.3 ms) of CPU cheaper on the machine of
// BENCHMARKS.md (BenchmarkHandshake), on the admission path of every burst.
//
// So when the provider holds the key of the CA that issued its certificate
// (cert-controller keeps it in the same Secret), Certs serves an ECDSA P-256
// twin of the certificate beside it: the same subject, names, usages and
// validity, signed by the same CA, with a key derived from the
// certificate's (the same twin on every replica) that never leaves the
// process. Gatekeeper trusts it through the same spec.caBundle; a client
// that cannot use ECDSA still gets the certificate as issued. Nothing about
// trust changes: the CA key is already in the provider's memory (its
// informer caches the Secret, and cert-controller signs with it in this
// process).

// issuer is the CA of the serving certificate, with its key.
type issuer struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// SetIssuer gives Certs the CA that issues its serving certificate, as PEM
// (cert-controller's ca.crt and ca.key), from the next Reload on. Empty
// certPEM and keyPEM clear it. A CA that did not issue the loaded
// certificate is kept but not used until a certificate it issued is loaded.
func (c *Certs) SetIssuer(certPEM, keyPEM []byte) error {
	var iss *issuer
	if len(certPEM) > 0 || len(keyPEM) > 0 {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return fmt.Errorf("loading the serving certificate's CA: %w", err)
		}
		signer, ok := pair.PrivateKey.(crypto.Signer)
		if !ok {
			return fmt.Errorf("loading the serving certificate's CA: its key (%T) cannot sign", pair.PrivateKey)
		}
		if !pair.Leaf.IsCA {
			return errors.New("loading the serving certificate's CA: the certificate is not a CA")
		}
		iss = &issuer{cert: pair.Leaf, key: signer}
	}
	c.reload.Lock()
	defer c.reload.Unlock()
	c.issuer = iss
	return nil
}

// ecdsaTwin returns an ECDSA P-256 twin of cert issued by iss, or ok false
// when cert needs none (its key is ECDSA already) or iss did not issue it.
//
// The twin is a function of cert alone: its key is derived from cert's
// private key (HKDF-SHA256), its serial from cert, and an RSA CA's
// PKCS #1 v1.5 signature is deterministic. So every replica serving cert
// serves the very same twin, as they serve the very same certificate
// without one, and "which certificate does the provider serve" has one
// answer (the rotation test asks it of whichever replica it reaches).
func ecdsaTwin(cert tls.Certificate, iss *issuer) (twin tls.Certificate, ok bool, err error) {
	leaf := cert.Leaf
	if iss == nil || leaf == nil || leaf.PublicKeyAlgorithm == x509.ECDSA || leaf.CheckSignatureFrom(iss.cert) != nil {
		return tls.Certificate{}, false, nil
	}
	key, err := twinKey(cert.PrivateKey)
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("deriving the ECDSA twin's key: %w", err)
	}
	// A CA's serials are unique (RFC 5280), so not the leaf's: one derived
	// from it, positive, 127 bits.
	sum := sha256.Sum256(append([]byte("exec-reaper twin serial\x00"), leaf.Raw...))
	serial := new(big.Int).SetBytes(sum[:16])
	serial.Rsh(serial, 1)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      leaf.Subject,
		DNSNames:     leaf.DNSNames,
		IPAddresses:  leaf.IPAddresses,
		NotBefore:    leaf.NotBefore,
		NotAfter:     leaf.NotAfter,
		// An ECDSA key signs; key encipherment is for RSA key transport.
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: leaf.ExtKeyUsage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, iss.cert, key.Public(), iss.key)
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("issuing the ECDSA twin of the serving certificate: %w", err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	chain := append([][]byte{der}, cert.Certificate[1:]...)
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: parsed}, true, nil
}

// twinKey derives an ECDSA P-256 key from the serving certificate's private
// key: 48 bytes of HKDF-SHA256 reduced to a scalar in [1, n-1] (FIPS 186-5,
// A.2.1), so the bias is negligible. Whoever holds the certificate's key
// can derive the twin's, and could impersonate the provider already.
func twinKey(priv crypto.PrivateKey) (*ecdsa.PrivateKey, error) {
	secret, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	okm, err := hkdf.Key(sha256.New, secret, nil, "exec-reaper ECDSA P-256 twin key v1", 48)
	if err != nil {
		return nil, err
	}
	n := elliptic.P256().Params().N
	d := new(big.Int).SetBytes(okm)
	d.Mod(d, new(big.Int).Sub(n, big.NewInt(1)))
	d.Add(d, big.NewInt(1))
	return ecdsa.ParseRawPrivateKey(elliptic.P256(), d.FillBytes(make([]byte, 32)))
}

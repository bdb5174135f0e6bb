package tlscerts_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"

	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts/tlstest"
)

// BenchmarkHandshake measures one new connection to the provider as
// Gatekeeper's external-data client opens it (TLS 1.3, its client
// certificate), client and server in this process one after the other, so
// the time is the CPU both halves take. Side by side:
//   - gatekeeper-rsa: certificates as cert-controller issues them (RSA 2048,
//     what a real install has), served as issued or with the ECDSA twin;
//   - floor: every key ECDSA P-256, the cheapest mutual handshake Go does.
//
// The difference between the first two is what the twin saves per new
// connection; Gatekeeper opens about 90 per burst of 100 concurrent reviews.
func BenchmarkHandshake(b *testing.B) {
	for _, bb := range []struct {
		name      string
		rsa, twin bool
	}{
		{"gatekeeper-rsa/served-as-issued-rsa", true, false},
		{"gatekeeper-rsa/served-ecdsa-twin", true, true},
		{"floor/all-ecdsa", false, false},
	} {
		b.Run(bb.name, func(b *testing.B) {
			newCA := tlstest.NewCA
			if bb.rsa {
				newCA = tlstest.NewRSACA
			}
			gatekeeperCA, servingCA := newCA(b, "gatekeeper-ca"), newCA(b, "exec-reaper-ca")
			client, server := gatekeeperCA.Issue(b, "gatekeeper-webhook", false), servingCA.Issue(b, "exec-reaper-provider", true)
			files := tlstest.NewFiles(b)
			files.Write(b, server, gatekeeperCA)
			certs := tlscerts.NewCerts(files.Cert, files.Key, files.CA)
			if bb.twin {
				if err := certs.SetIssuer(servingCA.CertPEM, servingCA.KeyPEM(b)); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := certs.Reload(); err != nil {
				b.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(servingCA.Cert)
			clientCfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "127.0.0.1", Certificates: []tls.Certificate{client.Pair}}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			serverCfg := certs.TLSConfig()
			done := make(chan error)
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					s := tls.Server(conn, serverCfg)
					done <- s.Handshake() // the client's certificate verified too
					s.Close()
				}
			}()
			for b.Loop() {
				conn, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				c := tls.Client(conn, clientCfg)
				if err := c.Handshake(); err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

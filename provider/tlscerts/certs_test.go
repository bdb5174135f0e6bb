package tlscerts_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts/tlstest"
)

// TestTLSClients checks who may talk to the provider: only TLS 1.3 clients
// presenting a certificate from the client CA.
func TestTLSClients(t *testing.T) {
	e := newEnv(t)
	untrusted := tlstest.NewCA(t, "someone-else")
	body := requestBody
	tests := []struct {
		name    string
		client  func(*testing.T) *http.Client
		wantErr string // substring of the request error; empty means success
	}{
		{name: "Gatekeeper", client: e.gatekeeper},
		{name: "no client certificate", client: func(t *testing.T) *http.Client {
			return tlstest.Client(t, nil, e.ca)
		}, wantErr: "certificate required"},
		{name: "client certificate from an untrusted CA", client: func(t *testing.T) *http.Client {
			return tlstest.Client(t, untrusted.Issue(t, "gatekeeper-webhook", false), e.ca)
		}, wantErr: "unknown certificate authority"},
		{name: "server certificate used as client certificate", client: func(t *testing.T) *http.Client {
			return tlstest.Client(t, e.server, e.ca)
		}, wantErr: "bad certificate"},
		{name: "TLS 1.2 at most", client: func(t *testing.T) *http.Client {
			c := e.gatekeeper(t)
			c.Transport.(*http.Transport).TLSClientConfig.MaxVersion = tls.VersionTLS12
			return c
		}, wantErr: "protocol version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := tt.client(t).Post(e.url(), "application/json", strings.NewReader(string(body)))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("request failed: %v", err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.TLS.Version != tls.VersionTLS13 {
					t.Errorf("status %d over TLS %x, want 200 over TLS 1.3", resp.StatusCode, resp.TLS.Version)
				}
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatalf("request succeeded with status %d, want a TLS failure", resp.StatusCode)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("request error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestTLSHandshakesCounted checks that exec_reaper_provider_tls_handshakes_total
// counts new connections, not requests: requests on a kept-alive
// connection add none.
func TestTLSHandshakesCounted(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	tlscerts.Register(reg)
	before := handshakes(t, reg)
	first := e.gatekeeper(t)
	first.Transport.(*http.Transport).DisableKeepAlives = false // as Gatekeeper's
	for range 3 {
		resp, err := first.Post(e.url(), "application/json", strings.NewReader(string(requestBody)))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body) // read to the end, or the connection is not reused
		resp.Body.Close()
	}
	if _, err := connect(t, e.gatekeeper(t), e.url()); err != nil {
		t.Fatal(err)
	}
	if got := handshakes(t, reg) - before; got != 2 {
		t.Errorf("handshakes counted = %v after 4 requests on 2 connections, want 2", got)
	}
}

// handshakes reads exec_reaper_provider_tls_handshakes_total from reg.
func handshakes(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "exec_reaper_provider_tls_handshakes_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("exec_reaper_provider_tls_handshakes_total is not registered")
	return 0
}

// peer makes one request on a new connection and returns the server's
// certificate, or the request's error.
func peer(t *testing.T, c *http.Client, url string) (*x509.Certificate, error) {
	t.Helper()
	cs, err := connect(t, c, url)
	if err != nil {
		return nil, err
	}
	return cs.PeerCertificates[0], nil
}

// connect makes one request and returns the state of its TLS connection.
func connect(t *testing.T, c *http.Client, url string) (*tls.ConnectionState, error) {
	t.Helper()
	resp, err := c.Post(url, "application/json", strings.NewReader(string(requestBody)))
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.TLS, nil
}

func sameCert(a, b *x509.Certificate) bool {
	return a != nil && b != nil && a.SerialNumber.Cmp(b.SerialNumber) == 0 && a.Subject.CommonName == b.Subject.CommonName
}

// TestCertsRotation rotates the serving certificate and the client CA on
// disk: after Reload, new connections see the new certificate, the new
// client certificate is accepted and the old one refused, even when the old
// client tries to resume its TLS session.
func TestCertsRotation(t *testing.T) {
	e := newEnv(t)
	ca2 := tlstest.NewCA(t, "gatekeeper-ca-2")
	server2 := ca2.Issue(t, "exec-reaper-provider-2", true)
	client2 := ca2.Issue(t, "gatekeeper-webhook-2", false)

	// The old client keeps TLS session tickets, as a long-lived Gatekeeper would.
	sessions := tls.NewLRUClientSessionCache(8)
	oldClient := func(t *testing.T) *http.Client {
		c := tlstest.Client(t, e.client, e.ca, ca2)
		c.Transport.(*http.Transport).TLSClientConfig.ClientSessionCache = sessions
		return c
	}
	got, err := peer(t, oldClient(t), e.url())
	if err != nil || !sameCert(got, e.server.Cert) {
		t.Fatalf("before rotation: peer %v, err %v; want the first server certificate", got, err)
	}
	if cs, err := connect(t, oldClient(t), e.url()); err != nil || !cs.DidResume {
		t.Fatalf("before rotation, the old client did not resume its session (err %v)", err)
	}

	e.files.Write(t, server2, ca2)
	if changed, err := e.certs.Reload(); err != nil || !changed {
		t.Fatalf("Reload after rotation = %v, %v; want true, nil", changed, err)
	}
	if changed, err := e.certs.Reload(); err != nil || changed {
		t.Fatalf("second Reload = %v, %v; want false, nil", changed, err)
	}

	got, err = peer(t, tlstest.Client(t, client2, ca2), e.url())
	if err != nil {
		t.Fatalf("new client after rotation: %v", err)
	}
	if !sameCert(got, server2.Cert) || got.Subject.CommonName != "exec-reaper-provider-2" {
		t.Errorf("after rotation the server presents serial %v CN %q, want serial %v CN %q",
			got.SerialNumber, got.Subject.CommonName, server2.Cert.SerialNumber, server2.Cert.Subject.CommonName)
	}
	if _, err := peer(t, oldClient(t), e.url()); err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Errorf("old client certificate, resuming its session, after the client CA rotated: err %v, want unknown certificate authority", err)
	}
	if _, err := peer(t, tlstest.Client(t, e.client, e.ca, ca2), e.url()); err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Errorf("old client certificate after the client CA rotated: err %v, want unknown certificate authority", err)
	}
	if _, err := peer(t, tlstest.Client(t, client2, e.ca), e.url()); err == nil {
		t.Error("client trusting only the old CA accepted the new server certificate")
	}
}

// TestCertsReloadErrors checks that a bad set of files is refused and the
// previous certificates stay in use.
func TestCertsReloadErrors(t *testing.T) {
	other := tlstest.NewCA(t, "other").Issue(t, "other", true)
	tests := []struct {
		name    string
		damage  func(t *testing.T, f tlstest.Files)
		wantErr string
	}{
		{name: "certificate missing", damage: func(t *testing.T, f tlstest.Files) { remove(t, f.Cert) }, wantErr: "no such file"},
		{name: "key missing", damage: func(t *testing.T, f tlstest.Files) { remove(t, f.Key) }, wantErr: "no such file"},
		{name: "CA missing", damage: func(t *testing.T, f tlstest.Files) { remove(t, f.CA) }, wantErr: "no such file"},
		{name: "key of another certificate", damage: func(t *testing.T, f tlstest.Files) { tlstest.WriteAtomically(t, f.Key, other.KeyPEM) }, wantErr: "loading serving certificate"},
		{name: "certificate not PEM", damage: func(t *testing.T, f tlstest.Files) { tlstest.WriteAtomically(t, f.Cert, []byte("garbage")) }, wantErr: "loading serving certificate"},
		{name: "CA empty", damage: func(t *testing.T, f tlstest.Files) { tlstest.WriteAtomically(t, f.CA, nil) }, wantErr: "no PEM certificates"},
		{name: "CA is a key", damage: func(t *testing.T, f tlstest.Files) { tlstest.WriteAtomically(t, f.CA, other.KeyPEM) }, wantErr: "no PEM certificates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tt.damage(t, e.files)
			changed, err := e.certs.Reload()
			if err == nil || changed || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Reload = %v, %v; want false and an error containing %q", changed, err, tt.wantErr)
			}
			if err := e.certs.Ready(); err != nil {
				t.Errorf("Ready after a failed reload: %v", err)
			}
			got, err := peer(t, e.gatekeeper(t), e.url())
			if err != nil || !sameCert(got, e.server.Cert) {
				t.Errorf("after a failed reload: peer %v, err %v; want the previous certificate", got, err)
			}
		})
	}
}

func remove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// TestCertsNotLoaded checks that a provider without certificates is not
// ready and refuses every handshake.
func TestCertsNotLoaded(t *testing.T) {
	f := tlstest.NewFiles(t)
	certs := tlscerts.NewCerts(f.Cert, f.Key, f.CA)
	if err := certs.Ready(); err == nil {
		t.Error("Ready before loading = nil, want an error")
	}
	if _, err := certs.Reload(); err == nil {
		t.Error("Reload of missing files = nil error")
	}
	if err := certs.Ready(); err == nil {
		t.Error("Ready after a failed first load = nil, want an error")
	}
	cfg := certs.TLSConfig()
	if cfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion = %x, want TLS 1.3", cfg.MinVersion)
	}
	if _, err := cfg.GetConfigForClient(&tls.ClientHelloInfo{}); err == nil {
		t.Error("GetConfigForClient before loading = nil error")
	}

	ca := tlstest.NewCA(t, "ca")
	f.Write(t, ca.Issue(t, "server", true), ca)
	if changed, err := certs.Reload(); err != nil || !changed {
		t.Fatalf("Reload = %v, %v; want true, nil", changed, err)
	}
	if err := certs.Ready(); err != nil {
		t.Errorf("Ready after loading: %v", err)
	}
	got, err := cfg.GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if got.ClientAuth != tls.RequireAndVerifyClientCert || got.MinVersion != tls.VersionTLS13 || got.ClientCAs == nil || len(got.Certificates) != 1 {
		t.Errorf("per-client config: ClientAuth %v, MinVersion %x, ClientCAs %v, %d certificates; want RequireAndVerifyClientCert, TLS 1.3, a pool, 1",
			got.ClientAuth, got.MinVersion, got.ClientCAs, len(got.Certificates))
	}
}

// TestCertsRun checks that Run notices rotated files by itself.
func TestCertsRun(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(quiet())
	done := make(chan struct{})
	go func() { e.certs.Run(ctx, 10*time.Millisecond); close(done) }()

	ca2 := tlstest.NewCA(t, "gatekeeper-ca-2")
	server2 := ca2.Issue(t, "exec-reaper-provider-2", true)
	client2 := tlstest.Client(t, ca2.Issue(t, "gatekeeper-webhook-2", false), ca2)
	e.files.Write(t, server2, ca2)

	var last error
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, pollTimeout, true, func(context.Context) (bool, error) {
		got, err := peer(t, client2, e.url())
		last = err
		return err == nil && sameCert(got, server2.Cert), nil
	})
	if err != nil {
		t.Fatalf("Run did not pick up the new certificate: %v (last request: %v)", err, last)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(pollTimeout):
		t.Fatal("Run did not return after its context was cancelled")
	}
}

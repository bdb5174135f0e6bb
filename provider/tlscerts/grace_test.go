package tlscerts_test

import (
	"context"
	"encoding/base64"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts/tlstest"
)

// TestClientCAGrace: Gatekeeper's CA is replaced. Gatekeeper's old client
// certificate is still accepted for the grace period (its pods present it
// until their copy of the Secret catches up), the new one at once; after
// the grace only the new one. With no grace the old one is refused at once.
func TestClientCAGrace(t *testing.T) {
	const grace = 10 * time.Minute
	for _, tt := range []struct {
		name  string
		grace time.Duration
	}{{"grace", grace}, {"no grace", 0}} {
		t.Run(tt.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(t0)
			f := tlstest.NewFiles(t)
			ca1, ca2 := tlstest.NewCA(t, "gatekeeper-ca"), tlstest.NewCA(t, "gatekeeper-ca-2")
			server := ca1.Issue(t, "exec-reaper-provider", true)
			old, next := ca1.Issue(t, "gatekeeper-webhook", false), ca2.Issue(t, "gatekeeper-webhook-2", false)
			f.Write(t, server, ca1)
			certs := tlscerts.NewCerts(f.Cert, f.Key, f.CA, tlscerts.WithClientCAGrace(tt.grace), tlscerts.WithClock(clk))
			if _, err := certs.Reload(); err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
			srv.TLS = certs.TLSConfig()
			srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			srv.StartTLS()
			t.Cleanup(srv.Close)
			accepts := func(c *tlstest.Leaf) error {
				resp, err := tlstest.Client(t, c, ca1).Get(srv.URL)
				if err == nil {
					resp.Body.Close()
				}
				return err
			}

			tlstest.WriteAtomically(t, f.CA, ca2.CertPEM) // the Secret now holds only the new CA
			if changed, err := certs.Reload(); err != nil || !changed {
				t.Fatalf("Reload = %v, %v", changed, err)
			}
			if err := accepts(next); err != nil {
				t.Errorf("new client certificate refused: %v", err)
			}
			err := accepts(old)
			if tt.grace == 0 {
				if err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
					t.Fatalf("with no grace, the old client certificate: %v, want unknown certificate authority", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("old client certificate refused within the grace period: %v", err)
			}
			if cas := certs.ClientCAs(); len(cas) != 2 || !strings.Contains(cas[1], "retired, trusted until 2026-11-26T10:10:00Z") {
				t.Errorf("ClientCAs = %q", cas)
			}

			clk.Step(grace - time.Second)
			if changed, _ := certs.Reload(); changed {
				t.Error("Reload changed something before the grace was over")
			}
			if err := accepts(old); err != nil {
				t.Errorf("old client certificate refused a second before the grace ended: %v", err)
			}
			clk.Step(time.Second)
			if changed, err := certs.Reload(); err != nil || !changed {
				t.Fatalf("Reload when the grace ended = %v, %v; want true, nil", changed, err)
			}
			if err := accepts(old); err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
				t.Errorf("old client certificate after the grace: %v, want unknown certificate authority", err)
			}
			if err := accepts(next); err != nil {
				t.Errorf("new client certificate refused after the grace: %v", err)
			}
		})
	}
}

var providerListKinds = map[schema.GroupVersionResource]string{tlscerts.ProviderResource: "ProviderList"}

func providerObject(name string, caPEM []byte) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "Provider",
		"metadata": map[string]any{"name": name},
		"spec":     map[string]any{"url": "https://x/v1/record", "timeout": int64(2), "caBundle": base64.StdEncoding.EncodeToString(caPEM)},
	}}
}

// TestProviderWatchTrusts: readiness trusts a serving certificate only once
// the Provider's caBundle verifies it for the name Gatekeeper dials.
func TestProviderWatchTrusts(t *testing.T) {
	ca, placeholder := tlstest.NewCA(t, "exec-reaper-ca"), tlstest.NewCA(t, "placeholder")
	server := ca.Issue(t, "exec-reaper-provider", true) // for 127.0.0.1
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), providerListKinds,
		providerObject("exec-reaper", placeholder.CertPEM))
	w := tlscerts.NewProviderWatch(dyn, "exec-reaper")
	if err := w.Trusts(server.Cert, "127.0.0.1"); err == nil || !strings.Contains(err.Error(), "not been read") {
		t.Errorf("before the watch synced: %v", err)
	}
	ctx, cancel := context.WithCancel(quiet())
	defer cancel()
	go w.Run(ctx)

	eventually(t, "the placeholder caBundle to be refused", func() bool {
		err := w.Trusts(server.Cert, "127.0.0.1")
		return err != nil && strings.Contains(err.Error(), "spec.caBundle does not (yet) verify")
	})
	if _, err := dyn.Resource(tlscerts.ProviderResource).Update(ctx, providerObject("exec-reaper", append(placeholder.CertPEM, ca.CertPEM...)), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the injected CA to be trusted", func() bool { return w.Trusts(server.Cert, "127.0.0.1") == nil })
	if err := w.Trusts(server.Cert, "exec-reaper-provider.gatekeeper-system.svc"); err == nil {
		t.Error("trusted for a name the certificate does not carry")
	}
	if err := w.Trusts(nil, "127.0.0.1"); err == nil {
		t.Error("trusted with no serving certificate")
	}
	if err := dyn.Resource(tlscerts.ProviderResource).Delete(ctx, "exec-reaper", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a deleted Provider to be reported", func() bool {
		err := w.Trusts(server.Cert, "127.0.0.1")
		return err != nil && strings.Contains(err.Error(), "does not exist")
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, pollTimeout, true, func(context.Context) (bool, error) {
		return cond(), nil
	}); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

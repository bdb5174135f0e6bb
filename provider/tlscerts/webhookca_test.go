package tlscerts_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/exec-reaper/exec-reaper/internal/pki"
	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
)

// TestWebhookCASync: Gatekeeper's CA reaches the file from its webhook
// configuration's caBundle: every distinct certificate of its webhooks, once
// each, in order, what is not a certificate skipped; nothing is written
// while there is none, or when only something else changed; a rotation is
// mirrored at once; another webhook configuration is not looked at.
func TestWebhookCASync(t *testing.T) {
	ca1, ca2, other := newCA(t, "gatekeeper-ca"), newCA(t, "gatekeeper-ca-2"), newCA(t, "someone-else")
	file := filepath.Join(t.TempDir(), "client-ca", "ca.crt")
	vwc := func(name string, bundles ...[]byte) *admissionregistrationv1.ValidatingWebhookConfiguration {
		v := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name}}
		for _, b := range bundles {
			v.Webhooks = append(v.Webhooks, admissionregistrationv1.ValidatingWebhook{
				Name: "w.example", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: b}})
		}
		return v
	}
	// Not injected yet, and a neighbour that must be ignored.
	cs := fake.NewClientset(vwc("gatekeeper-vwc", nil, nil), vwc("other-vwc", other))
	var changes atomic.Int32
	sync := tlscerts.NewWebhookCASync(cs, "gatekeeper-vwc", file, func() { changes.Add(1) })
	ctx, cancel := context.WithCancel(quiet())
	done := make(chan struct{})
	go func() { defer close(done); sync.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	vwcs := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	update := func(v *admissionregistrationv1.ValidatingWebhookConfiguration) {
		t.Helper()
		if _, err := vwcs.Update(context.Background(), v, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFile := func(want []byte) {
		t.Helper()
		err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
			got, err := os.ReadFile(file)
			return err == nil && bytes.Equal(got, want), nil
		})
		if err != nil {
			got, _ := os.ReadFile(file)
			t.Fatalf("client CA file %q, want %q", got, want)
		}
	}
	cat := func(pems ...[]byte) []byte { return bytes.Join(pems, nil) }

	// Injected into both webhooks, with garbage beside it in one.
	update(vwc("gatekeeper-vwc", ca1, cat(ca1, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))))
	waitFile(ca1)
	waitChanges(t, &changes, 1) // "not injected yet" wrote nothing
	// Something else changes: nothing written.
	v := vwc("gatekeeper-vwc", ca1, ca1)
	v.Labels = map[string]string{"changed": "yes"}
	update(v)
	update(vwc("other-vwc", ca2))
	// Rotating: both CAs, each once, in order.
	update(vwc("gatekeeper-vwc", cat(ca1, ca2), ca2))
	waitFile(cat(ca1, ca2))
	waitChanges(t, &changes, 2) // the label and the neighbour wrote nothing
	// Rotated.
	update(vwc("gatekeeper-vwc", ca2, ca2))
	waitFile(ca2)
	waitChanges(t, &changes, 3)
}

func newCA(t *testing.T, name string) []byte {
	t.Helper()
	ca, err := pki.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca.CertPEM
}

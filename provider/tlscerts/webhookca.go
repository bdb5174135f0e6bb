package tlscerts

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/exec-reaper/exec-reaper/internal/pki"
)

// WebhookCASync mirrors the CA bundle of one ValidatingWebhookConfiguration
// into a file: every distinct certificate in its webhooks'
// clientConfig.caBundle. The provider uses it for Gatekeeper's CA: the CA
// that signs the certificate Gatekeeper presents to providers is the one
// that signs its webhook's serving certificate, which Gatekeeper's
// cert-controller (or cert-manager's CA injector) keeps in its webhook
// configuration's caBundle for the API server. Unlike Gatekeeper's Secret,
// a webhook configuration holds no key, so the provider needs no read of
// any of Gatekeeper's Secrets. It watches only that object (a field
// selector on its name), so RBAC can grant it by resourceNames.
type WebhookCASync struct {
	client   kubernetes.Interface
	name     string
	file     string
	onChange func()
	written  []byte // the bundle last written, so an unrelated change writes nothing
}

// NewWebhookCASync returns a WebhookCASync of the ValidatingWebhookConfiguration
// name whose CA bundle is written to file; onChange runs after every write.
func NewWebhookCASync(client kubernetes.Interface, name, file string, onChange func()) *WebhookCASync {
	return &WebhookCASync{client: client, name: name, file: file, onChange: onChange}
}

// Run watches the webhook configuration until ctx is done.
func (s *WebhookCASync) Run(ctx context.Context) {
	log := klog.FromContext(ctx).WithValues("validatingWebhookConfiguration", s.name)
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 0, byNameOption(s.name))
	inf := factory.Admissionregistration().V1().ValidatingWebhookConfigurations().Informer()
	write := func(obj any) {
		vwc, ok := obj.(*admissionregistrationv1.ValidatingWebhookConfiguration)
		if !ok || vwc.Name != s.name {
			return // the field selector already keeps others out; be sure
		}
		bundle, skipped := CABundleOf(vwc)
		if skipped > 0 {
			log.Info("Skipped caBundle blocks that are not certificates", "skipped", skipped)
		}
		switch {
		case len(bundle) == 0:
			// Gatekeeper has not injected its CA yet.
			log.Info("No CA certificate in the webhook configuration's caBundle yet")
			return
		case bytes.Equal(bundle, s.written):
			return
		}
		err := os.MkdirAll(filepath.Dir(s.file), 0o700)
		if err == nil {
			err = pki.WriteFileAtomic(s.file, bundle)
		}
		if err != nil {
			certReloadsTotal.WithLabelValues("error").Inc()
			log.Error(err, "Writing Gatekeeper's CA from the webhook configuration")
			return
		}
		s.written = bundle
		s.onChange()
	}
	runInformer(ctx, factory, inf, write)
}

// CABundleOf returns, as PEM, every distinct certificate of vwc's webhooks'
// caBundles, in order of first appearance, and how many PEM blocks it
// skipped because they are not certificates. It is empty when there is none.
func CABundleOf(vwc *admissionregistrationv1.ValidatingWebhookConfiguration) (bundle []byte, skipped int) {
	seen := map[string]bool{}
	var out bytes.Buffer
	for _, wh := range vwc.Webhooks {
		rest := wh.ClientConfig.CABundle
		for {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				break
			}
			if _, err := x509.ParseCertificate(block.Bytes); block.Type != "CERTIFICATE" || err != nil {
				skipped++
				continue
			}
			if seen[string(block.Bytes)] {
				continue
			}
			seen[string(block.Bytes)] = true
			_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes})
		}
	}
	return out.Bytes(), skipped
}

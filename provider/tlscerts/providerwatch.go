package tlscerts

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// ProviderResource is Gatekeeper's Provider API.
var ProviderResource = schema.GroupVersionResource{Group: "externaldata.gatekeeper.sh", Version: "v1beta1", Resource: "providers"}

// ProviderWatch watches one Provider object, by name, so that readiness can
// say whether Gatekeeper would trust this replica's serving certificate: a
// replica is of no use to Gatekeeper until the Provider's spec.caBundle holds
// the CA that signed it. It lists and watches only that object (a field
// selector on its name), within the list and watch on Providers that
// cert-controller already needs.
type ProviderWatch struct {
	name     string
	informer cache.SharedIndexInformer
	clock    clock.PassiveClock
}

// NewProviderWatch returns a ProviderWatch of the Provider called name.
func NewProviderWatch(client dynamic.Interface, name string) *ProviderWatch {
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(client, 0, metav1.NamespaceAll, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
	})
	return &ProviderWatch{name: name, informer: factory.ForResource(ProviderResource).Informer(), clock: clock.RealClock{}}
}

// Run watches until ctx is done.
func (w *ProviderWatch) Run(ctx context.Context) { w.informer.RunWithContext(ctx) }

// Trusts returns nil if the Provider's caBundle verifies cert for dnsName,
// the name Gatekeeper dials, as Gatekeeper's client would; otherwise an error
// saying why not.
func (w *ProviderWatch) Trusts(cert *x509.Certificate, dnsName string) error {
	if !w.informer.HasSynced() {
		return fmt.Errorf("the Provider %s has not been read yet", w.name)
	}
	if cert == nil {
		return errors.New("no serving certificate loaded")
	}
	obj, ok, err := w.informer.GetStore().GetByKey(w.name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("the Provider %s does not exist; create it (the chart does)", w.name)
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return fmt.Errorf("the Provider %s is a %T", w.name, obj)
	}
	bundle, _, _ := unstructured.NestedString(u.Object, "spec", "caBundle")
	pem, err := base64.StdEncoding.DecodeString(bundle)
	if err != nil {
		return fmt.Errorf("the Provider %s's spec.caBundle is not base64: %w", w.name, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("the Provider %s's spec.caBundle holds no certificate", w.name)
	}
	_, err = cert.Verify(x509.VerifyOptions{
		Roots: roots, DNSName: dnsName, CurrentTime: w.clock.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("the Provider %s's spec.caBundle does not (yet) verify the serving certificate (issuer %q) for %s, so Gatekeeper could not call this replica; cert-controller injects its CA within seconds of issuing: %w",
			w.name, cert.Issuer.CommonName, dnsName, err)
	}
	return nil
}

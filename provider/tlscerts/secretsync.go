package tlscerts

import (
	"context"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/exec-reaper/exec-reaper/internal/pki"
)

// SecretSync mirrors chosen keys of one Secret into files, the way the
// kubelet mounts a Secret volume but within milliseconds of a change instead
// of a minute. The provider uses it for its own serving certificate (rotated
// by cert-controller) and for Gatekeeper's CA: when either rotates, the next
// TLS handshake already uses the new one. It watches only that Secret (a
// field selector on its name), so RBAC can grant it by resourceNames.
type SecretSync struct {
	client          kubernetes.Interface
	namespace, name string
	// files maps a key of the Secret's data to the file it is written to.
	files    map[string]string
	onChange func()
	onData   func(data map[string][]byte)
}

// SecretSyncOption configures a SecretSync.
type SecretSyncOption func(*SecretSync)

// WithData has fn see the whole of every complete version of the Secret's
// data, in memory, before its files are written and onChange runs: for what
// must not be written to disk (the provider's CA key, see Certs.SetIssuer).
func WithData(fn func(data map[string][]byte)) SecretSyncOption {
	return func(s *SecretSync) { s.onData = fn }
}

// NewSecretSync returns a SecretSync of namespace/name whose data keys are
// written to the files given; onChange runs after every write.
func NewSecretSync(client kubernetes.Interface, namespace, name string, files map[string]string, onChange func(), opts ...SecretSyncOption) *SecretSync {
	s := &SecretSync{client: client, namespace: namespace, name: name, files: files, onChange: onChange}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Run watches the Secret until ctx is done.
func (s *SecretSync) Run(ctx context.Context) {
	log := klog.FromContext(ctx).WithValues("secret", klog.KRef(s.namespace, s.name))
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 0,
		informers.WithNamespace(s.namespace), byNameOption(s.name))
	inf := factory.Core().V1().Secrets().Informer()
	write := func(obj any) {
		secret, ok := obj.(*corev1.Secret)
		if !ok || secret.Name != s.name {
			return // the field selector already keeps others out; be sure
		}
		if missing := s.missing(secret); missing != "" {
			// cert-controller has not filled a new Secret yet.
			log.V(1).Info("Secret not complete yet", "key", missing)
			return
		}
		if s.onData != nil {
			s.onData(secret.Data)
		}
		if err := s.write(secret); err != nil {
			certReloadsTotal.WithLabelValues("error").Inc()
			log.Error(err, "Writing certificates from Secret")
			return
		}
		s.onChange()
	}
	runInformer(ctx, factory, inf, write)
}

// byNameOption narrows an informer factory's lists and watches to the
// object called name, so RBAC can grant them by resourceNames.
func byNameOption(name string) informers.SharedInformerOption {
	return informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
	})
}

// runInformer has handle see every version of inf's objects, added or
// updated, until ctx is done.
func runInformer(ctx context.Context, factory informers.SharedInformerFactory, inf cache.SharedIndexInformer, handle func(obj any)) {
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    handle,
		UpdateFunc: func(_, obj any) { handle(obj) },
	})
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
}

// missing returns a key the Secret lacks, or "".
func (s *SecretSync) missing(secret *corev1.Secret) string {
	for key := range s.files {
		if len(secret.Data[key]) == 0 {
			return key
		}
	}
	return ""
}

// write writes the Secret's keys, each atomically. The informer calls its
// handlers one at a time, so writes never interleave.
func (s *SecretSync) write(secret *corev1.Secret) error {
	for key, path := range s.files {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := pki.WriteFileAtomic(path, secret.Data[key]); err != nil {
			return err
		}
	}
	return nil
}

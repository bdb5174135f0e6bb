package deleter

import (
	"context"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	toolsrecord "k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/flowcontrol"
)

// API is what the deleter asks of the Kubernetes API, besides listing and
// watching recorded pods (Clients.Metadata), writing Events (Clients.Events)
// and holding its Lease (Clients.Election). Errors are the API server's
// (apierrors tells them apart).
//
// It is this narrow on purpose. client-go's clientset, and everything built
// on it (its informers, tools/events, tools/leaderelection), imports a scheme
// that registers every built-in API group when the process starts; in the
// deleter that was about 6 MiB of its 29 MiB idle RSS, for six kinds. NewAPI
// links only those six (TestDeleterLinksNoClientset keeps it so).
type API interface {
	// Evict asks the Eviction API to evict the pod, bound to its UID.
	Evict(ctx context.Context, namespace, name string, uid types.UID) error
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	ListPods(ctx context.Context, namespace string, selector labels.Selector) (*corev1.PodList, error)
	PatchPod(ctx context.Context, namespace, name string, pt types.PatchType, patch []byte) error
	// DeletePod deletes the pod, bound to its UID, bypassing disruption
	// budgets.
	DeletePod(ctx context.Context, namespace, name string, uid types.UID) error
	CreateNetworkPolicy(ctx context.Context, np *networkingv1.NetworkPolicy) error
	GetReplicaSet(ctx context.Context, namespace, name string) (*appsv1.ReplicaSet, error)
	GetStatefulSet(ctx context.Context, namespace, name string) (*appsv1.StatefulSet, error)
	GetDaemonSet(ctx context.Context, namespace, name string) (*appsv1.DaemonSet, error)
	GetReplicationController(ctx context.Context, namespace, name string) (*corev1.ReplicationController, error)
	GetValidatingAdmissionPolicy(ctx context.Context, name string) (*admissionregistrationv1.ValidatingAdmissionPolicy, error)
	GetValidatingAdmissionPolicyBinding(ctx context.Context, name string) (*admissionregistrationv1.ValidatingAdmissionPolicyBinding, error)
}

// apiScheme holds the kinds the deleter reads and writes, and the API's own
// (Status, the options): no others.
var apiScheme = runtime.NewScheme()

func init() {
	utilruntime.Must(corev1.AddToScheme(apiScheme))
	utilruntime.Must(policyv1.AddToScheme(apiScheme))
	utilruntime.Must(appsv1.AddToScheme(apiScheme))
	utilruntime.Must(networkingv1.AddToScheme(apiScheme))
	utilruntime.Must(admissionregistrationv1.AddToScheme(apiScheme))
	metav1.AddToGroupVersion(apiScheme, schema.GroupVersion{Version: "v1"})
}

var apiCodecs = serializer.NewCodecFactory(apiScheme)

// restAPI is API over the REST interface, JSON, one client per group.
type restAPI struct {
	core, apps, networking, admission rest.Interface
}

// NewAPI returns the deleter's API over cfg. Its clients share cfg's HTTP
// transport and rate limiter (cfg.RateLimiter; else one is made from QPS and
// Burst, shared by all).
func NewAPI(cfg *rest.Config) (API, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.RateLimiter == nil && cfg.QPS >= 0 {
		qps, burst := cfg.QPS, cfg.Burst
		if qps == 0 {
			qps, burst = rest.DefaultQPS, rest.DefaultBurst
		}
		cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(qps, burst)
	}
	if cfg.UserAgent == "" { // the transport's, too
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the API client's transport: %w", err)
	}
	var a restAPI
	for _, c := range []struct {
		into *rest.Interface
		gv   schema.GroupVersion
	}{
		{&a.core, corev1.SchemeGroupVersion},
		{&a.apps, appsv1.SchemeGroupVersion},
		{&a.networking, networkingv1.SchemeGroupVersion},
		{&a.admission, admissionregistrationv1.SchemeGroupVersion},
	} {
		if *c.into, err = rest.RESTClientForConfigAndClient(restConfigFor(cfg, c.gv), httpClient); err != nil {
			return nil, fmt.Errorf("building the API client for %s: %w", c.gv, err)
		}
	}
	return &a, nil
}

// restConfigFor is cfg for the REST API of gv, in JSON, with apiScheme.
func restConfigFor(cfg *rest.Config, gv schema.GroupVersion) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &gv
	c.APIPath = "/apis"
	if gv.Group == "" {
		c.APIPath = "/api"
	}
	c.NegotiatedSerializer = apiCodecs.WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return c
}

// RateLimiter is the client-side rate limiter all of a's requests share.
func (a *restAPI) RateLimiter() flowcontrol.RateLimiter { return a.core.GetRateLimiter() }

// get reads one object into into.
func get[T runtime.Object](ctx context.Context, c rest.Interface, resource, namespace, name string, into T) (T, error) {
	err := c.Get().NamespaceIfScoped(namespace, namespace != "").Resource(resource).Name(name).Do(ctx).Into(into)
	if err != nil {
		var zero T
		return zero, err
	}
	return into, nil
}

func (a *restAPI) Evict(ctx context.Context, namespace, name string, uid types.UID) error {
	eviction := &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: name, Namespace: namespace},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
	}
	return a.core.Post().Namespace(namespace).Resource("pods").Name(name).SubResource("eviction").
		Body(eviction).Do(ctx).Error()
}

func (a *restAPI) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return get(ctx, a.core, "pods", namespace, name, &corev1.Pod{})
}

func (a *restAPI) ListPods(ctx context.Context, namespace string, selector labels.Selector) (*corev1.PodList, error) {
	list := &corev1.PodList{}
	err := a.core.Get().Namespace(namespace).Resource("pods").Param("labelSelector", selector.String()).Do(ctx).Into(list)
	if err != nil {
		return nil, err
	}
	return list, nil
}

func (a *restAPI) PatchPod(ctx context.Context, namespace, name string, pt types.PatchType, patch []byte) error {
	return a.core.Patch(pt).Namespace(namespace).Resource("pods").Name(name).Body(patch).Do(ctx).Error()
}

func (a *restAPI) DeletePod(ctx context.Context, namespace, name string, uid types.UID) error {
	return a.core.Delete().Namespace(namespace).Resource("pods").Name(name).
		Body(&metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}).Do(ctx).Error()
}

func (a *restAPI) CreateNetworkPolicy(ctx context.Context, np *networkingv1.NetworkPolicy) error {
	return a.networking.Post().Namespace(np.Namespace).Resource("networkpolicies").Body(np).Do(ctx).Error()
}

func (a *restAPI) GetReplicaSet(ctx context.Context, namespace, name string) (*appsv1.ReplicaSet, error) {
	return get(ctx, a.apps, "replicasets", namespace, name, &appsv1.ReplicaSet{})
}

func (a *restAPI) GetStatefulSet(ctx context.Context, namespace, name string) (*appsv1.StatefulSet, error) {
	return get(ctx, a.apps, "statefulsets", namespace, name, &appsv1.StatefulSet{})
}

func (a *restAPI) GetDaemonSet(ctx context.Context, namespace, name string) (*appsv1.DaemonSet, error) {
	return get(ctx, a.apps, "daemonsets", namespace, name, &appsv1.DaemonSet{})
}

func (a *restAPI) GetReplicationController(ctx context.Context, namespace, name string) (*corev1.ReplicationController, error) {
	return get(ctx, a.core, "replicationcontrollers", namespace, name, &corev1.ReplicationController{})
}

func (a *restAPI) GetValidatingAdmissionPolicy(ctx context.Context, name string) (*admissionregistrationv1.ValidatingAdmissionPolicy, error) {
	return get(ctx, a.admission, "validatingadmissionpolicies", "", name, &admissionregistrationv1.ValidatingAdmissionPolicy{})
}

func (a *restAPI) GetValidatingAdmissionPolicyBinding(ctx context.Context, name string) (*admissionregistrationv1.ValidatingAdmissionPolicyBinding, error) {
	return get(ctx, a.admission, "validatingadmissionpolicybindings", "", name, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{})
}

// eventSink writes core/v1 Events for client-go's tools/record (which the
// deleter uses rather than tools/events: that one imports the clientset).
// Each write is bounded by eventTimeout.
type eventSink struct{ core rest.Interface }

// eventTimeout bounds one Event write.
const eventTimeout = 10 * time.Second

// NewEventSink returns the sink that writes the deleter's Events over cfg.
func NewEventSink(cfg *rest.Config) (*eventSink, error) {
	core, err := rest.RESTClientFor(restConfigFor(cfg, corev1.SchemeGroupVersion))
	if err != nil {
		return nil, fmt.Errorf("building the Events client: %w", err)
	}
	return &eventSink{core: core}, nil
}

// RateLimiter is the sink's client-side rate limiter, its own.
func (s *eventSink) RateLimiter() flowcontrol.RateLimiter { return s.core.GetRateLimiter() }

func (s *eventSink) write(req *rest.Request) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	out := &corev1.Event{}
	if err := req.Do(ctx).Into(out); err != nil {
		return nil, err
	}
	return out, nil
}

// Create implements record.EventSink.
func (s *eventSink) Create(ev *corev1.Event) (*corev1.Event, error) {
	return s.write(s.core.Post().Namespace(ev.Namespace).Resource("events").Body(ev))
}

// Update implements record.EventSink.
func (s *eventSink) Update(ev *corev1.Event) (*corev1.Event, error) {
	return s.write(s.core.Put().Namespace(ev.Namespace).Resource("events").Name(ev.Name).Body(ev))
}

// Patch implements record.EventSink.
func (s *eventSink) Patch(old *corev1.Event, patch []byte) (*corev1.Event, error) {
	return s.write(s.core.Patch(types.StrategicMergePatchType).Namespace(old.Namespace).Resource("events").Name(old.Name).Body(patch))
}

// EventRecorder reports on a pod. It has the signature of client-go's
// tools/events recorder, so that one's FakeRecorder serves the tests.
type EventRecorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// eventRecorder is EventRecorder on tools/record, which aggregates repeats
// (a refused eviction retried) into one Event that counts them. A core/v1
// Event it writes has no related object and no action.
type eventRecorder struct{ rec toolsrecord.EventRecorder }

func (r eventRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	r.rec.Eventf(regarding, eventtype, reason, note, args...)
}

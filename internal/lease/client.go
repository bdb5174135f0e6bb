package lease

import (
	"context"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// Client reads and writes one Lease.
type Client interface {
	// Get returns the Lease; a missing one is an error for which
	// apierrors.IsNotFound is true.
	Get(ctx context.Context) (*coordinationv1.Lease, error)
	// Create creates the Lease (its namespace and name are the Client's).
	Create(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
	// Update replaces the Lease, bound to l.ResourceVersion: if the Lease
	// changed since l was read, the API answers 409 (apierrors.IsConflict).
	Update(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
	// Describe names the Lease, "namespace/name", for logs and errors.
	Describe() string
}

// NewClient is a Client of the Lease namespace/name over the REST API, in
// JSON. It has its own scheme holding only coordination.k8s.io/v1 (and the
// metav1 types its errors and options use), so that a binary using it does
// not link client-go's kubernetes scheme, which registers every built-in
// API group at init and costs megabytes of memory. cfg's QPS, Burst,
// RateLimiter and UserAgent are kept as given; cfg itself is not changed.
//
// Errors from the API are *apierrors.StatusError, so apierrors.IsNotFound
// and apierrors.IsConflict work on them.
func NewClient(cfg *rest.Config, namespace, name string) (Client, error) {
	if namespace == "" || name == "" {
		return nil, fmt.Errorf("lease client: the Lease needs a namespace and a name, got %q/%q", namespace, name)
	}
	scheme := runtime.NewScheme()
	// AddToScheme also registers the metav1 types (Status, options) in the
	// group version, which decoding error responses needs.
	if err := coordinationv1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("lease client: registering coordination.k8s.io/v1: %w", err)
	}
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &coordinationv1.SchemeGroupVersion
	c.APIPath = "/apis"
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("lease client for %s/%s: %w", namespace, name, err)
	}
	return &restClient{rest: rc, namespace: namespace, name: name}, nil
}

// restClient is the Client NewClient builds.
type restClient struct {
	rest            rest.Interface
	namespace, name string
}

func (c *restClient) Get(ctx context.Context) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.rest.Get().Namespace(c.namespace).Resource("leases").Name(c.name).Do(ctx).Into(out)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *restClient) Create(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.rest.Post().Namespace(c.namespace).Resource("leases").Body(c.own(l)).Do(ctx).Into(out)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *restClient) Update(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.rest.Put().Namespace(c.namespace).Resource("leases").Name(c.name).Body(c.own(l)).Do(ctx).Into(out)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *restClient) Describe() string { return c.namespace + "/" + c.name }

// RateLimiter is the client's own client-side rate limiter.
func (c *restClient) RateLimiter() flowcontrol.RateLimiter { return c.rest.GetRateLimiter() }

// own returns a copy of l named as the Lease this client is bound to, so a
// caller cannot write another object by mistake.
func (c *restClient) own(l *coordinationv1.Lease) *coordinationv1.Lease {
	l = l.DeepCopy()
	l.Namespace, l.Name = c.namespace, c.name
	return l
}

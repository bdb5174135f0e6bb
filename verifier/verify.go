package verifier

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	"github.com/open-policy-agent/frameworks/constraint/pkg/client/reviews"
	"github.com/open-policy-agent/frameworks/constraint/pkg/types"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator/verify"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/target"
	"github.com/open-policy-agent/gatekeeper/v3/pkg/util"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
)

// Config says which suites to run and how, as `gator verify`'s flags do.
// Zero fields take the defaults in Default.
type Config struct {
	// Path is a suite file or a directory of suites, as given to gator verify;
	// a trailing "/..." also walks the directory's subdirectories.
	Path string
	// Run selects tests and cases by name: gator's --run syntax,
	// "TEST_REGEX//CASE_REGEX" or one regex matching either.
	Run string
	// Trace adds a trace of the framework's evaluation to every case result.
	Trace bool
	// DisableK8sCEL leaves out Gatekeeper's K8sNativeValidation (CEL) driver,
	// which gator verify enables by default.
	DisableK8sCEL bool
	// Providers are the Provider names exec-reaper's provider answers under.
	// A template that names any other provider gets the system error
	// Gatekeeper gives for a Provider that does not exist. Default
	// [ProviderName].
	Providers []string
	// Clock is the provider's clock. Default: the real clock.
	Clock clock.Clock
}

// Default fills unset fields.
func (c *Config) Default() {
	if len(c.Providers) == 0 {
		c.Providers = []string{ProviderName}
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
}

// Verify runs the suites that cfg selects with Gatekeeper's own gator runner
// and returns their results, which verify.PrinterGo prints as gator does. An
// error means the suites could not be listed or run at all; failed cases
// are in the results (see Failed).
//
// Each client the runner asks for (one per test, one per case) gets its own
// provider session, so a case's inventory alone decides which pods exist.
func Verify(ctx context.Context, cfg Config) ([]verify.SuiteResult, error) {
	cfg.Default()
	fsys, target, display, recursive, err := resolve(cfg.Path)
	if err != nil {
		return nil, err
	}
	suites, err := verify.ReadSuites(fsys, target, display, recursive)
	if err != nil {
		return nil, fmt.Errorf("listing test files: %w", err)
	}
	filter, err := verify.NewFilter(cfg.Run)
	if err != nil {
		return nil, fmt.Errorf("compiling filter: %w", err)
	}

	p, err := StartProvider(cfg.Clock)
	if err != nil {
		return nil, fmt.Errorf("starting exec-reaper's provider: %w", err)
	}
	defer p.Close()
	var extra []gator.Opt
	if !cfg.DisableK8sCEL {
		extra = append(extra, gator.WithK8sCEL())
	}
	runner, err := verify.NewRunner(fsys, p.ClientFactory(cfg.Trace, cfg.Providers, extra...), verify.IncludeTrace(cfg.Trace))
	if err != nil {
		return nil, err
	}
	results := make([]verify.SuiteResult, 0, len(suites))
	for _, s := range suites {
		results = append(results, runner.Run(ctx, filter, s))
	}
	return results, nil
}

// Failed reports whether any suite, test or case in results failed.
func Failed(results []verify.SuiteResult) bool {
	for i := range results {
		if results[i].IsFailure() {
			return true
		}
	}
	return false
}

// resolve turns a path as gator verify takes it into the file system, the
// target inside it, the path to display and whether to recurse, exactly as
// gator does (cmd/gator/verify), so suites print under the same names.
func resolve(path string) (fsys fs.FS, target, display string, recursive bool, err error) {
	if path == "" {
		return nil, "", "", false, errors.New("no path given")
	}
	display, target = path, path
	if !filepath.IsAbs(target) {
		if target, err = filepath.Abs(target); err != nil {
			return nil, "", "", false, fmt.Errorf("getting absolute path: %w", err)
		}
	}
	root := filepath.VolumeName(target)
	if root == "" {
		root = "/"
	}
	fsys = os.DirFS(root)
	if runtime.GOOS == "windows" {
		target = filepath.ToSlash(target[2:])
	}
	// filepath.Abs drops a trailing "/...", so look at the path as given.
	if strings.HasSuffix(display, "/...") {
		recursive = true
		target = strings.TrimSuffix(target, "...")
		display = strings.TrimSuffix(display, "...")
	}
	return fsys, strings.Trim(target, "/"), display, recursive, nil
}

// ClientFactory returns a client constructor for Gatekeeper's verify runner.
// Every client it makes evaluates with Gatekeeper's Rego driver (plus the
// extra options, such as gator.WithK8sCEL), answers external_data from a new
// Session of p under each of names, and behaves as Gatekeeper does in a
// cluster in two ways gator alone does not:
//
//   - inventory objects (AddData) also exist in the session's API, so the
//     provider finds a pod exactly when the case's inventory holds it;
//   - an admission request under review comes with its Namespace (from the
//     inventory, else a bare one of that name) and a UID, as the webhook and
//     the API server supply them. Namespace matchers (excludedNamespaces,
//     namespaceSelector) need the Namespace for CONNECT requests, whose
//     object (PodExecOptions, ...) has no namespace of its own.
//
// Sessions end when p is closed.
func (p *Provider) ClientFactory(trace bool, names []string, extra ...gator.Opt) func(opts ...gator.Opt) (gator.Client, error) {
	return func(opts ...gator.Opt) (gator.Client, error) {
		s := p.NewSession()
		all := append(append(append([]gator.Opt{}, opts...), extra...), s.Opt(names...))
		inner, err := gator.NewOPAClient(trace, all...)
		if err != nil {
			s.Close()
			return nil, err
		}
		return newClient(inner, s), nil
	}
}

// client wraps a gator client; see ClientFactory.
type client struct {
	gator.Client
	session *Session

	mu         sync.Mutex
	namespaces map[string]*corev1.Namespace
}

func newClient(inner gator.Client, s *Session) *client {
	return &client{Client: inner, session: s, namespaces: map[string]*corev1.Namespace{}}
}

// AddData adds data to the inventory and, if it is an object client-go
// knows, to the provider's API, replacing any object of the same name.
func (c *client) AddData(ctx context.Context, data any) (*types.Responses, error) {
	resp, err := c.Client.AddData(ctx, data)
	if err != nil {
		return resp, err
	}
	if u, ok := asUnstructured(data); ok {
		if err := c.mirror(u, false); err != nil {
			return resp, fmt.Errorf("adding %s %s to the provider's API: %w", u.GroupVersionKind().Kind, ref(u), err)
		}
	}
	return resp, nil
}

// RemoveData removes data from the inventory and from the provider's API.
func (c *client) RemoveData(ctx context.Context, data any) (*types.Responses, error) {
	resp, err := c.Client.RemoveData(ctx, data)
	if err != nil {
		return resp, err
	}
	if u, ok := asUnstructured(data); ok {
		if err := c.mirror(u, true); err != nil {
			return resp, fmt.Errorf("removing %s %s from the provider's API: %w", u.GroupVersionKind().Kind, ref(u), err)
		}
	}
	return resp, nil
}

// mirror puts u into the session's API, or takes it out. Kinds client-go
// does not know (custom resources) are left out: the provider reads only pods.
func (c *client) mirror(u *unstructured.Unstructured, remove bool) error {
	gvk := u.GroupVersionKind()
	if gvk.Group == "" && gvk.Kind == "Namespace" {
		c.mu.Lock()
		if remove {
			delete(c.namespaces, u.GetName())
		} else {
			ns := &corev1.Namespace{}
			if err := k8sruntime.DefaultUnstructuredConverter.FromUnstructured(u.Object, ns); err != nil {
				c.mu.Unlock()
				return err
			}
			c.namespaces[ns.Name] = ns
		}
		c.mu.Unlock()
	}
	obj, err := scheme.Scheme.New(gvk)
	if k8sruntime.IsNotRegisteredError(err) {
		return nil
	}
	if err != nil {
		return err
	}
	gvr, _ := meta.UnsafeGuessKindToResource(gvk)
	tracker := c.session.API.Tracker()
	err = tracker.Delete(gvr, u.GetNamespace(), u.GetName())
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if remove {
		return nil
	}
	if err := k8sruntime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
		return err
	}
	// The API server gives every object a UID; the provider binds its record
	// to the pod's.
	if m, err := meta.Accessor(obj); err == nil && m.GetUID() == "" {
		m.SetUID(uuid.NewUUID())
	}
	return tracker.Add(obj)
}

// Review reviews obj as Gatekeeper's webhook would; see ClientFactory.
func (c *client) Review(ctx context.Context, obj any, opts ...reviews.ReviewOpt) (*types.Responses, error) {
	var ns *corev1.Namespace
	switch r := obj.(type) {
	case target.AugmentedReview:
		r, ns = c.augmentReview(r)
		obj = r
	case *target.AugmentedReview:
		var rr target.AugmentedReview
		rr, ns = c.augmentReview(*r)
		obj = &rr
	case target.AugmentedUnstructured:
		r, ns = c.augmentUnstructured(r)
		obj = r
	case *target.AugmentedUnstructured:
		var rr target.AugmentedUnstructured
		rr, ns = c.augmentUnstructured(*r)
		obj = &rr
	}
	// As the webhook does, also pass the Namespace to the drivers, for
	// input.review.namespaceObject (Rego) and namespaceObject (CEL).
	if opt := util.NamespaceReviewOpt(ns, logr.Discard()); opt != nil {
		opts = append(opts, opt)
	}
	return c.Client.Review(ctx, obj, opts...)
}

func (c *client) augmentReview(r target.AugmentedReview) (target.AugmentedReview, *corev1.Namespace) {
	if r.AdmissionRequest == nil {
		return r, r.Namespace
	}
	// A copy: the runner's request stays as the suite wrote it.
	req := *r.AdmissionRequest
	if req.UID == "" {
		req.UID = uuid.NewUUID()
	}
	r.AdmissionRequest = &req
	// The webhook reviews a Namespace without a namespace of its own.
	isNamespace := req.Kind.Group == "" && req.Kind.Kind == "Namespace"
	if r.Namespace == nil && req.Namespace != "" && !isNamespace {
		r.Namespace = c.namespace(req.Namespace)
	}
	// The webhook marks its reviews as admission requests; gator does not.
	r.IsAdmission = true
	return r, r.Namespace
}

func (c *client) augmentUnstructured(r target.AugmentedUnstructured) (target.AugmentedUnstructured, *corev1.Namespace) {
	if r.Namespace == nil && r.Object.GetNamespace() != "" {
		r.Namespace = c.namespace(r.Object.GetNamespace())
	}
	return r, r.Namespace
}

// namespace returns the inventory's Namespace called name, or a bare one.
func (c *client) namespace(name string) *corev1.Namespace {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ns, ok := c.namespaces[name]; ok {
		return ns.DeepCopy()
	}
	return &corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}
}

func asUnstructured(data any) (*unstructured.Unstructured, bool) {
	switch d := data.(type) {
	case *unstructured.Unstructured:
		return d, d != nil
	case unstructured.Unstructured:
		return &d, true
	}
	return nil, false
}

func ref(u *unstructured.Unstructured) string {
	if u.GetNamespace() == "" {
		return u.GetName()
	}
	return u.GetNamespace() + "/" + u.GetName()
}

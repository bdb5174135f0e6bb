package tlscerts

import (
	"net/http"
	"strings"

	"k8s.io/apimachinery/pkg/fields"
)

// byName narrows cert-controller's lists and watches to the objects it
// works on, so that RBAC can grant them by name.
//
// cert-controller builds its own cache from the manager's rest.Config, with
// a namespace and no field selector, and offers no option to narrow it: it
// would list and watch every Secret of the provider's namespace (in
// Gatekeeper's namespace, Gatekeeper's own keys among them) and every
// Provider, for the one Secret and the one Provider it reads. byName sits
// in that rest.Config's transport and adds field selector metadata.name to
// each collection GET (a list, or a watch) of the paths it is given, which
// the API server authorizes as a request for that name (RBAC resourceNames).
// Every other request passes unchanged.
type byName struct {
	next http.RoundTripper
	// names maps a collection's path, such as
	// /api/v1/namespaces/ns/secrets, to the one name read in it.
	names map[string]string
}

func (b *byName) RoundTrip(req *http.Request) (*http.Response, error) {
	name, ok := b.names[strings.TrimSuffix(req.URL.Path, "/")]
	if !ok || req.Method != http.MethodGet {
		return b.next.RoundTrip(req)
	}
	q := req.URL.Query()
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	if have := q.Get("fieldSelector"); have != "" {
		sel += "," + have // both must hold: still only that name
	}
	q.Set("fieldSelector", sel)
	req = req.Clone(req.Context()) // a RoundTripper must not modify its request
	req.URL.RawQuery = q.Encode()
	return b.next.RoundTrip(req)
}

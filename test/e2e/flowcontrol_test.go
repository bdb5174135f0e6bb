//go:build e2e

package e2e

import (
	"context"
	"net/http"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// TestProviderPriorityLevel: the API server's priority and fairness puts the
// provider's own requests (its GET and PATCH on every entry) in the chart's
// FlowSchema and the level it names, not in "service-accounts" and
// workload-low with every workload's ServiceAccount, where a requester could
// queue them toward Gatekeeper's timeout. Another ServiceAccount of the same
// namespace stays in service-accounts.
func TestProviderPriorityLevel(t *testing.T) {
	ctx := context.Background()
	fc := c.Client().FlowcontrolV1()
	schemas, err := fc.FlowSchemas().List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=exec-reaper,app.kubernetes.io/component=provider"})
	if err != nil {
		t.Fatal(err)
	}
	if len(schemas.Items) != 1 {
		t.Fatalf("%d FlowSchemas of the chart's provider, want 1", len(schemas.Items))
	}
	ours := schemas.Items[0]
	level, err := fc.PriorityLevelConfigurations().Get(ctx, ours.Spec.PriorityLevelConfiguration.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the FlowSchema's priority level: %v", err)
	}
	serviceAccounts, err := fc.FlowSchemas().Get(ctx, "service-accounts", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the built-in FlowSchema service-accounts: %v", err)
	}

	for _, tt := range []struct {
		user       string
		wantSchema string
		wantLevel  string
	}{
		{inst.ProviderUser, string(ours.UID), string(level.UID)},
		{"system:serviceaccount:" + inst.Namespace + ":someone-else", string(serviceAccounts.UID), ""},
	} {
		schema, lvl := classify(t, tt.user)
		if schema != tt.wantSchema || (tt.wantLevel != "" && lvl != tt.wantLevel) {
			t.Errorf("%s: classified by FlowSchema %s (level %s); want %s (level %s; ours is %s at %s)",
				tt.user, schema, lvl, tt.wantSchema, tt.wantLevel, ours.UID, level.UID)
		}
	}
}

// classify makes one request as user (impersonated, in the groups every
// ServiceAccount has) and returns the UIDs of the FlowSchema and the priority
// level the API server matched it to, from its response headers. Priority
// and fairness runs before authorization, so the request's own outcome does
// not matter.
func classify(t *testing.T, user string) (flowSchema, priorityLevel string) {
	t.Helper()
	cfg, err := c.RESTConfig("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + inst.Namespace, "system:authenticated"}}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(cfg.Host + "/api/v1/namespaces/" + inst.Namespace + "/pods?limit=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusForbidden {
		t.Fatalf("GET as %s: %s", user, resp.Status)
	}
	return resp.Header.Get("X-Kubernetes-PF-FlowSchema-UID"), resp.Header.Get("X-Kubernetes-PF-PriorityLevel-UID")
}

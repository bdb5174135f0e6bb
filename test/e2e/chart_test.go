//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestChartPolicies: with policies.install=true the chart's
// ConstraintTemplates are accepted by Gatekeeper, and its constraints (Helm
// post-install hooks) by the API server and Gatekeeper's own validation
// once Gatekeeper has created their kinds. The constraints are applied as a
// server-side dry run, so the suite's own constraints stay the only ones.
func TestChartPolicies(t *testing.T) {
	failWithLogs(t)
	ctx := context.Background()
	objs, err := inst.Render(ctx, "policies.install=true", "policies.failurePolicy=Fail", "policies.ttl=30m")
	if err != nil {
		t.Fatal(err)
	}
	var templates, constraints []*unstructured.Unstructured
	for _, o := range objs {
		switch {
		case o.GetKind() == "ConstraintTemplate":
			templates = append(templates, o)
		case strings.Contains(o.GetAnnotations()["helm.sh/hook"], "post-install"):
			constraints = append(constraints, o)
		}
	}
	if len(templates) != 2 || len(constraints) != 2 {
		t.Fatalf("rendered %d templates and %d hook constraints, want 2 and 2", len(templates), len(constraints))
	}
	// The exec-reaper template is byte for byte the one the suite applied,
	// so applying it changes nothing; the record guard's is new and, with
	// no constraint of its kind, acts on nothing.
	if err := inst.Apply(ctx, "chart-templates.yaml", templates); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	poll(t, "the chart's constraints accepted (dry run)", 60*time.Second, func(ctx context.Context) (bool, error) {
		lastErr = inst.Apply(ctx, "chart-constraints.yaml", constraints, "--dry-run=server")
		return lastErr == nil, nil
	})
	if lastErr != nil {
		t.Fatal(lastErr)
	}
}

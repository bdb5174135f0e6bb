package deleter

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/utils/clock"
)

// GuardRecheck is how long the deleter trusts one look at the record guard.
const GuardRecheck = 10 * time.Second

// guard tells whether the record guard (the chart's ValidatingAdmissionPolicy
// and its binding, both named name) is in force. Records are trusted because
// the guard lets no one but the provider write them; without it anyone with
// patch on pods or pods/status could forge one, and the deleter, which may
// evict any pod, would evict on their behalf. So while the guard is missing
// or not denying, the deleter evicts nothing and says why.
type guard struct {
	client API
	name   string
	clock  clock.Clock

	mu  sync.Mutex
	at  time.Time // when err was found; zero before the first look
	err error
}

// check returns nil while the guard is in force, else an error that says
// what is wrong and what to do. An empty name disables the check.
func (g *guard) check(ctx context.Context) error {
	if g == nil || g.name == "" {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.at.IsZero() && g.clock.Since(g.at) < GuardRecheck {
		return g.err
	}
	g.err = g.look(ctx)
	g.at = g.clock.Now()
	guardInForce.Set(boolGauge(g.err == nil))
	return g.err
}

func (g *guard) look(ctx context.Context) error {
	const fix = "reinstall exec-reaper's chart with guard.enabled=true, or run the deleter with --guard-policy= to trust records without it"
	policy, err := g.client.GetValidatingAdmissionPolicy(ctx, g.name)
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("the record guard ValidatingAdmissionPolicy %s does not exist, so records may be forged; %s", g.name, fix)
	case err != nil:
		return fmt.Errorf("reading the record guard ValidatingAdmissionPolicy %s: %w", g.name, err)
	case policy.Spec.FailurePolicy != nil && *policy.Spec.FailurePolicy != admissionregistrationv1.Fail:
		return fmt.Errorf("the record guard ValidatingAdmissionPolicy %s has failurePolicy %s, so a write it cannot evaluate passes; %s", g.name, *policy.Spec.FailurePolicy, fix)
	}
	binding, err := g.client.GetValidatingAdmissionPolicyBinding(ctx, g.name)
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("the record guard's ValidatingAdmissionPolicyBinding %s does not exist, so the guard is not in force; %s", g.name, fix)
	case err != nil:
		return fmt.Errorf("reading the record guard's ValidatingAdmissionPolicyBinding %s: %w", g.name, err)
	case binding.Spec.PolicyName != g.name || !slices.Contains(binding.Spec.ValidationActions, admissionregistrationv1.Deny):
		return fmt.Errorf("the record guard's ValidatingAdmissionPolicyBinding %s does not deny for policy %s (policyName %q, actions %v); %s",
			g.name, g.name, binding.Spec.PolicyName, binding.Spec.ValidationActions, fix)
	case binding.Spec.MatchResources != nil || binding.Spec.ParamRef != nil:
		return fmt.Errorf("the record guard's ValidatingAdmissionPolicyBinding %s is narrowed (matchResources or paramRef set), so it may not cover every pod; %s", g.name, fix)
	}
	return nil
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

package deleter_test

import (
	"context"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/deleter"
)

const guardName = "exec-reaper-record-guard"

func guardObjects(failure admissionregistrationv1.FailurePolicyType, actions ...admissionregistrationv1.ValidationAction) (*admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding) {
	return &admissionregistrationv1.ValidatingAdmissionPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: guardName},
			Spec:       admissionregistrationv1.ValidatingAdmissionPolicySpec{FailurePolicy: ptr.To(failure)},
		}, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
			ObjectMeta: metav1.ObjectMeta{Name: guardName},
			Spec:       admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: guardName, ValidationActions: actions},
		}
}

// TestHoldsEvictionsWithoutGuard: a due pod is not evicted while the record
// guard is missing or not denying (a record could have been forged), the pod
// is told why once, and it goes as soon as the guard is in force.
func TestHoldsEvictionsWithoutGuard(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failure admissionregistrationv1.FailurePolicyType
		actions []admissionregistrationv1.ValidationAction
		policy  bool
		binding bool
	}{
		{name: "no policy"},
		{name: "no binding", policy: true, failure: admissionregistrationv1.Fail},
		{name: "binding only warns", policy: true, binding: true, failure: admissionregistrationv1.Fail, actions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Warn}},
		{name: "policy fails open", policy: true, binding: true, failure: admissionregistrationv1.Ignore, actions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const uid = types.UID("uid-web")
			h := newHarness(t, deleter.Options{GuardPolicy: guardName}, recordedPod("web", uid, epoch.Add(-time.Second)))
			adm := h.client.AdmissionregistrationV1()
			policy, binding := guardObjects(tc.failure, tc.actions...)
			if tc.policy {
				if _, err := adm.ValidatingAdmissionPolicies().Create(context.Background(), policy, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.binding {
				if _, err := adm.ValidatingAdmissionPolicyBindings().Create(context.Background(), binding, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			h.start()
			eventually(t, "the GuardMissing event", func() bool { return len(h.events.about("web", deleter.ReasonGuardMissing)) == 1 })
			h.waitDelayed()
			if got := h.evictions("web"); len(got) != 0 {
				t.Fatalf("evicted without the guard: %v", got)
			}
			if v := h.counter("exec_reaper_deleter_guard_in_force"); v != 0 {
				t.Errorf("guard_in_force = %v, want 0", v)
			}

			// Put the guard in force; the next look finds it.
			good, goodBinding := guardObjects(admissionregistrationv1.Fail, admissionregistrationv1.Deny)
			for _, err := range []error{
				adm.ValidatingAdmissionPolicies().Delete(context.Background(), guardName, metav1.DeleteOptions{}),
				adm.ValidatingAdmissionPolicyBindings().Delete(context.Background(), guardName, metav1.DeleteOptions{}),
			} {
				_ = err // absent in some cases
			}
			if _, err := adm.ValidatingAdmissionPolicies().Create(context.Background(), good, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := adm.ValidatingAdmissionPolicyBindings().Create(context.Background(), goodBinding, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			h.clock.Step(deleter.GuardRecheck)
			eventually(t, "the eviction once the guard is in force", func() bool { return len(h.evictions("web")) == 1 })
			if n := len(h.events.about("web", deleter.ReasonGuardMissing)); n != 1 {
				t.Errorf("%d GuardMissing events, want 1", n)
			}
			if v := h.counter("exec_reaper_deleter_guard_in_force"); v != 1 {
				t.Errorf("guard_in_force = %v, want 1", v)
			}
		})
	}
}

// TestEvictsWithGuardInForce: with the guard in force nothing changes.
func TestEvictsWithGuardInForce(t *testing.T) {
	policy, binding := guardObjects(admissionregistrationv1.Fail, admissionregistrationv1.Deny)
	h := newHarness(t, deleter.Options{GuardPolicy: guardName}, recordedPod("web", "uid-web", epoch.Add(-time.Second)))
	adm := h.client.AdmissionregistrationV1()
	if _, err := adm.ValidatingAdmissionPolicies().Create(context.Background(), policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.ValidatingAdmissionPolicyBindings().Create(context.Background(), binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.start()
	eventually(t, "the eviction", func() bool { return len(h.evictions("web")) == 1 })
	if n := len(h.events.about("web", deleter.ReasonGuardMissing)); n != 0 {
		t.Errorf("%d GuardMissing events, want none", n)
	}
}

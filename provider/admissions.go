package provider

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/record"
)

// Gatekeeper calls the provider once per matching constraint, one call after
// another, all for the same admission (the same request UID), and all within
// its webhook timeout (3 s by default): if the calls together take longer,
// the API server gives up on the webhook and, under failurePolicy Ignore,
// admits the entry unrecorded, whatever the constraints said. So the provider
// bounds the time one admission may spend in it, not only one call: it
// remembers each admission briefly, and
//   - a later call that asks for no earlier deadline than the one recorded is
//     answered from memory, with no API call;
//   - a later call for an admission whose first call failed (or ran out of
//     time) gets the same error at once;
//   - a later call that asks for an earlier deadline, or for quarantine
//     where eviction was recorded, does the work to change the record,
//     within what is left of the admission's time.
//
// So N matching constraints cost about the time of one call. The memory is
// per replica; a call that reaches another replica does its own GET and finds
// the admission in the pod's record (record.RepeatOf), at the cost of a
// second round trip.
const (
	// admissionTTL is how long an admission is remembered: longer than any
	// webhook timeout (Kubernetes allows at most 30 s).
	admissionTTL = 30 * time.Second
	// maxAdmissions bounds the memory; beyond it the oldest are forgotten,
	// which costs a forgotten admission's later calls only their speed.
	maxAdmissions = 4096
)

// admissionKey identifies one admission's calls of one kind: trial calls
// record elsewhere than real ones.
type admissionKey struct {
	uid, namespace, name string
	trial                bool
}

// admission is what is remembered of one admission.
type admission struct {
	// turn holds one token: the call working for the admission takes it, so
	// calls for one admission never race each other.
	turn chan struct{}
	// created is when the first call arrived, by the Recorder's clock: the
	// entry's time, from which every deadline of the admission counts.
	created time.Time
	// budget is when the time allowed to the admission ends, in real time
	// (contexts know no other).
	budget time.Time

	// Read and written only while holding turn:
	recorded bool          // a call has recorded the entry
	deadline time.Time     // the earliest deadline recorded for it
	action   record.Action // the strictest action recorded for it
	failure  error         // the failure of the first call, if none recorded
}

// admissions remembers recent admissions.
type admissions struct {
	clock  clock.Clock
	budget time.Duration

	mu    sync.Mutex
	byKey map[admissionKey]*admission
	order []admissionKey // oldest first
}

func newAdmissions(clk clock.Clock, budget time.Duration) *admissions {
	return &admissions{clock: clk, budget: budget, byKey: map[admissionKey]*admission{}}
}

// get returns the admission req belongs to, remembering it if new.
func (a *admissions) get(req Request) *admission {
	now := a.clock.Now()
	k := admissionKey{req.UID, req.Namespace, req.Name, req.Trial}
	a.mu.Lock()
	defer a.mu.Unlock()
	// The order is by creation, so the expired are at its front.
	for len(a.order) > 0 {
		old, ok := a.byKey[a.order[0]]
		if ok && len(a.order) < maxAdmissions && now.Sub(old.created) < admissionTTL {
			break
		}
		delete(a.byKey, a.order[0])
		a.order = a.order[1:]
	}
	if adm, ok := a.byKey[k]; ok {
		return adm
	}
	adm := &admission{turn: make(chan struct{}, 1), created: now, budget: time.Now().Add(a.budget)}
	adm.turn <- struct{}{}
	a.byKey[k] = adm
	a.order = append(a.order, k)
	return adm
}

// record records req through r, or answers from what an earlier call of the
// same admission did (see above). The entry's time is the first call's, so
// every deadline of one admission counts from the same instant.
func (a *admissions) record(ctx context.Context, r *Recorder, req Request) (Result, error) {
	adm := a.get(req)
	ctx, cancel := context.WithDeadline(ctx, adm.budget)
	defer cancel()
	// Take the turn if it is free, even when the admission's time is up: what
	// an earlier call did may be enough to answer.
	select {
	case <-adm.turn:
	default:
		select {
		case <-adm.turn:
		case <-ctx.Done():
			return Result{}, fmt.Errorf("recording on pod %s/%s: timed out waiting for this admission's earlier call to the provider: %w", req.Namespace, req.Name, ctx.Err())
		}
	}
	defer func() { adm.turn <- struct{}{} }()
	switch {
	case adm.recorded:
		want := record.Deadline(adm.deadline, adm.created, req.ttl)
		if !want.Before(adm.deadline) && record.Stricter(adm.action, req.Action) == adm.action {
			return Result{Deadline: adm.deadline, Outcome: outcome(req, record.OutcomeRepeat)}, nil
		}
	case adm.failure != nil:
		return Result{}, adm.failure
	}
	res, err := r.RecordAt(ctx, req, adm.created)
	if err != nil {
		if !adm.recorded {
			adm.failure = err
		}
		return Result{}, err
	}
	adm.recorded, adm.deadline, adm.action = true, res.Deadline, record.Stricter(adm.action, req.Action)
	return res, nil
}

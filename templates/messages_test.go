package templates_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/exec-reaper/exec-reaper/provider"
)

// TestMessages: what the template says for each way recording can fail,
// with external_data answering as Gatekeeper's driver does in each case
// (frameworks' externaldata.HandleError sets status_code on its own
// failures: 500 when the provider never answered, 400 without a Provider).
func TestMessages(t *testing.T) {
	answer := func(resp map[string]any) func(string) map[string]any {
		return func(string) map[string]any { return resp }
	}
	exec := entry{user: "alice", groups: []string{"dev"}, container: "app", command: []string{"sh"}}
	for _, tc := range []struct {
		name     string
		params   map[string]any
		answer   func(string) map[string]any
		called   bool
		want     []string
		wantNone []string
	}{{
		name:   "bad ttl, fail closed",
		params: map[string]any{"ttl": "abc", "failurePolicy": "Fail"},
		want: []string{"exec-reaper denied this exec into pod shop/web-7d9f8-abcde: this constraint is misconfigured, so no entry can be recorded: its ttl \"abc\" is not a duration in (0, 720h] (write a whole number of s, m or h, e.g. 90m, not 1h30m)",
			"Retrying will not help", "fix or delete this constraint"},
		wantNone: []string{"Try again", "evicted abc", "check the exec-reaper provider"},
	}, {
		name:     "ttl 0s, fail open",
		params:   map[string]any{"ttl": "0s"},
		want:     []string{"exec-reaper could not record this exec into pod shop/web-7d9f8-abcde: this constraint is misconfigured: its ttl \"0s\"", "allowed without a record; fix or delete this constraint"},
		wantNone: []string{"Try again"},
	}, {
		name:   "ttl 800h",
		params: map[string]any{"ttl": "800h", "failurePolicy": "Fail"},
		want:   []string{"misconfigured", `its ttl "800h" is not a duration in (0, 720h]`},
	}, {
		name:   "ttl 1d",
		params: map[string]any{"ttl": "1d", "failurePolicy": "Fail"},
		want:   []string{"misconfigured", `its ttl "1d"`},
	}, {
		name:   "ttl not a string",
		params: map[string]any{"ttl": 60, "failurePolicy": "Fail"},
		want:   []string{"misconfigured", `its ttl 60 is not a duration`},
	}, {
		name:   "unknown mode",
		params: map[string]any{"ttl": "1h", "mode": "dryrun", "failurePolicy": "Fail"},
		want:   []string{"misconfigured", `its mode "dryrun" is neither "enforce" nor "trial"`},
	}, {
		// The provider accepts any Go duration; the schema is stricter.
		name: "1h30m is not a configuration error", params: map[string]any{"ttl": "1h30m", "failurePolicy": "Fail"},
		answer: recorded, called: true,
	}, {
		name:   "no such Provider",
		params: map[string]any{"ttl": "1h", "failurePolicy": "Fail", "provider": "gone"},
		answer: answer(map[string]any{"status_code": 400, "system_error": "key is not found in provider cache"}),
		called: true,
		want: []string{`this constraint is misconfigured, so no entry can be recorded: Gatekeeper has no Provider named "gone", which this constraint's provider parameter names`,
			"Retrying will not help"},
		wantNone: []string{"HTTP", "Try again"},
	}, {
		name:   "provider down",
		params: map[string]any{"ttl": "1h", "failurePolicy": "Fail"},
		answer: answer(map[string]any{"status_code": 500, "system_error": `failed to send external data request: Post "https://exec-reaper.gatekeeper-system:8443/v1/record": context deadline exceeded`}),
		called: true,
		want: []string{"recording failed: the provider did not answer (failed to send external data request: Post",
			"(the pod is evicted 1h after it is entered)", "Try again shortly"},
		wantNone: []string{"HTTP 500", "misconfigured"},
	}, {
		name:     "answer not JSON",
		params:   map[string]any{"ttl": "1h"},
		answer:   answer(map[string]any{"status_code": 500, "system_error": "failed to unmarshal external data response: invalid character '<'"}),
		called:   true,
		want:     []string{"could not record this exec", "the provider call failed (failed to unmarshal external data response"},
		wantNone: []string{"HTTP 500"},
	}, {
		name:   "the provider answered an HTTP error",
		params: map[string]any{"ttl": "1h", "failurePolicy": "Fail"},
		answer: answer(map[string]any{"status_code": 503, "responses": []any{}, "errors": []any{}}),
		called: true,
		want:   []string{"recording failed: the provider answered HTTP 503; the provider gave no answer for it"},
	}, {
		name:   "trial mode, fail closed",
		params: map[string]any{"ttl": "1h", "mode": "trial", "failurePolicy": "Fail"},
		answer: answer(map[string]any{"status_code": 200, "responses": []any{}, "errors": []any{[]any{"k", "pod shop/web-7d9f8-abcde not found"}}}),
		called: true,
		want:   []string{"(this constraint is in trial mode: entries are recorded, no pod is evicted)", "the provider refused it: pod shop/web-7d9f8-abcde not found"},
	}, {
		name:   "trial notice",
		params: map[string]any{"ttl": "1h", "mode": "trial", "notice": true},
		answer: recorded, called: true,
		want: []string{"exec-reaper recorded this exec into pod shop/web-7d9f8-abcde by alice as a trial entry: the pod would be evicted at 2026-11-26T11:00:00Z, but this constraint is in trial mode, so nothing will happen."},
	}, {
		name:   "trial notice of a quarantine constraint",
		params: map[string]any{"ttl": "1h", "mode": "trial", "notice": true, "action": "quarantine"},
		answer: recorded, called: true,
		want: []string{"exec-reaper recorded this exec into pod shop/web-7d9f8-abcde by alice as a trial entry: the pod would be quarantined at 2026-11-26T11:00:00Z, but this constraint is in trial mode, so nothing will happen."},
	}, {
		name:   "notice",
		params: map[string]any{"ttl": "1h", "notice": true},
		answer: recorded, called: true,
		want: []string{"exec-reaper recorded this exec into pod shop/web-7d9f8-abcde by alice: the pod will be evicted at 2026-11-26T11:00:00Z."},
	}, {
		// Another constraint matching the pod asked for quarantine: the
		// record does, and the provider says so.
		name:   "notice where the record asks for more than this constraint",
		params: map[string]any{"ttl": "1h", "notice": true},
		answer: func(key string) map[string]any {
			return map[string]any{"status_code": 200, "errors": []any{},
				"responses": []any{[]any{key, map[string]any{"deadline": "2026-11-26T11:00:00Z", "action": "quarantine"}}}}
		},
		called: true,
		want:   []string{"exec-reaper recorded this exec into pod shop/web-7d9f8-abcde by alice: the pod will be quarantined at 2026-11-26T11:00:00Z."},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.answer
			if a == nil {
				a = func(string) map[string]any { t.Fatal("external_data called"); return nil }
			}
			e := newRegoEval(t, a)
			msgs, keys := e.eval(t, exec.review(), tc.params)
			if got := len(keys) > 0; got != tc.called {
				t.Errorf("provider called: %v, want %v", got, tc.called)
			}
			if len(tc.want) == 0 {
				if len(msgs) != 0 {
					t.Errorf("got %v, want no message", msgs)
				}
				return
			}
			if len(msgs) != 1 {
				t.Fatalf("got %d messages %v, want one", len(msgs), msgs)
			}
			for _, w := range tc.want {
				if !strings.Contains(msgs[0], w) {
					t.Errorf("message lacks %q:\n%s", w, msgs[0])
				}
			}
			for _, w := range tc.wantNone {
				if strings.Contains(msgs[0], w) {
					t.Errorf("message has %q:\n%s", w, msgs[0])
				}
			}
		})
	}
}

// TestRegoTTLCheckIsTheProviders: the Rego calls a ttl misconfigured
// exactly when the provider would refuse it (time.ParseDuration, then
// (0, provider.MaxTTL]); the schema is stricter still (TestTTLPattern).
func TestRegoTTLCheckIsTheProviders(t *testing.T) {
	e := newRegoEval(t, recorded)
	exec := entry{user: "alice", container: "app", command: []string{"sh"}}
	for _, ttl := range []string{"1h", "90m", "1h30m", "0s", "0", "-1h", "1.5h", ".5h", "5.h", "1d", "1w", "abc", "", "721h", "720h",
		"2592000s", "2592001s", "100ms", "1µs", "1μs", "1ns", "1e3s", "1h 30m", "+1h", "1H", "719h59m60s", "1h1h"} {
		d, err := time.ParseDuration(ttl)
		providerOK := err == nil && d > 0 && d <= provider.MaxTTL
		msgs, _ := e.eval(t, exec.review(), map[string]any{"ttl": ttl, "failurePolicy": "Fail"})
		regoOK := !slices.ContainsFunc(msgs, func(m string) bool { return strings.Contains(m, "its ttl") })
		if regoOK != providerOK {
			t.Errorf("ttl %q: Rego accepts %v, provider accepts %v (%v)", ttl, regoOK, providerOK, err)
		}
	}
}

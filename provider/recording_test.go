package provider_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/record"
)

// direct is a provider without TLS, called in-process, with Events.
type direct struct {
	cs    *fake.Clientset
	clock *clocktesting.FakeClock
	sink  *provider.EventSink
	h     http.Handler
}

func newDirect(t *testing.T, objects ...runtime.Object) *direct {
	t.Helper()
	d := &direct{cs: fake.NewClientset(objects...), clock: clocktesting.NewFakeClock(t0)}
	d.sink = provider.NewEventSink(d.cs, 64, 1)
	d.h = provider.NewRouter(provider.NewHandler(provider.NewRecorder(d.cs, d.clock, d.sink), time.Second))
	return d
}

// call sends a ProviderRequest body in-process, with ctx's logger.
func call(t *testing.T, ctx context.Context, h http.Handler, body []byte) provider.ProviderResponse {
	t.Helper()
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, provider.Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, req)
	pr := decodeResponse(t, rr.Code, rr.Header(), rr.Body)
	if rr.Code != http.StatusOK || pr.Response.SystemError != "" {
		t.Fatalf("status %d, systemError %q", rr.Code, pr.Response.SystemError)
	}
	return pr
}

func (d *direct) keys(t *testing.T, keys ...string) provider.ProviderResponse {
	t.Helper()
	return call(t, quiet(), d.h, providerRequest(t, keys...))
}

func (d *direct) events(t *testing.T) []corev1.Event {
	t.Helper()
	drain(t, d.sink)
	return listEvents(t, d.cs)
}

// TestHandlerToleratesEnvelopeFields: a future Gatekeeper may add fields to
// the ProviderRequest; they are ignored, and the keys still answered. (The
// key itself stays strict: TestDecode.)
func TestHandlerToleratesEnvelopeFields(t *testing.T) {
	d := newDirect(t, newPod(nil))
	key := keyFor(t, execBy("alice", "req-1", "1h"))
	body, _ := json.Marshal(map[string]any{
		"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest",
		"metadata": map[string]any{"name": "x"},
		"request":  map[string]any{"keys": []string{key}, "context": map[string]any{"constraint": "c"}},
	})
	pr := call(t, quiet(), d.h, body)
	checkItems(t, pr, []string{key}, []item{{outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}})
}

// TestHandlerLongEntries: nothing a requester controls makes recording fail.
// A 17 KB command, hundreds of groups, a long username, as v2 keys (the
// template shortened them) and as v1 keys (an older template sent them
// whole): each is recorded, with what was shortened and digests of the
// originals in the record, within record.MaxEntryBytes.
func TestHandlerLongEntries(t *testing.T) {
	script := strings.Repeat("echo hello; ", 1500) // 18 KB
	groups := make([]string, 300)
	for i := range groups {
		groups[i] = fmt.Sprintf("org:team-%03d:%s", i, strings.Repeat("g", 30))
	}
	longUser := "https://idp.example.com/" + strings.Repeat("u", 5000)
	v1 := func(r provider.Request) string {
		b, _ := json.Marshal(map[string]any{"uid": r.UID, "namespace": r.Namespace, "name": r.Name, "ttl": r.TTL,
			"user": r.User, "groups": r.Groups, "operation": r.Operation, "container": r.Container, "command": r.Command})
		return provider.KeyVersionV1 + string(b)
	}
	// templated shortens as the template does, with its digests.
	templated := func(r provider.Request) provider.Request {
		r.Digests = map[string]string{}
		if len(r.Command) > provider.MaxCommandArgs || slices.ContainsFunc(r.Command, func(a string) bool { return len(a) > provider.MaxArgChars }) {
			r.Digests["command"] = record.Digest(r.Command)
			r.Command = slices.Clone(r.Command[:min(len(r.Command), provider.MaxCommandArgs)])
			for i, a := range r.Command {
				r.Command[i] = a[:min(len(a), provider.MaxArgChars)]
			}
		}
		if len(r.Groups) > provider.MaxGroups {
			r.Digests["groups"] = record.Digest(r.Groups)
			r.Groups = r.Groups[:provider.MaxGroups]
		}
		if len(r.User) > provider.MaxUserChars {
			r.Digests["user"] = record.Digest(r.User)
			r.User = r.User[:provider.MaxUserChars]
		}
		for f := range r.Digests {
			r.Truncated = append(r.Truncated, f)
		}
		slices.Sort(r.Truncated)
		return r
	}
	req := execBy("alice@example.com", "req-1", "1h")
	req.Command, req.Groups = []string{"sh", "-c", script}, groups
	userReq := execBy(longUser, "req-1", "1h")

	tests := []struct {
		name          string
		key           string
		wantTruncated []string
		wantDigest    map[string]string
	}{
		{"v1 key, long command and groups", v1(req), []string{"command", "groups"},
			map[string]string{"command": record.Digest(req.Command), "groups": record.Digest(req.Groups)}},
		{"v2 key shortened by the template", keyFor(t, templated(req)), []string{"command", "groups"},
			map[string]string{"command": record.Digest(req.Command), "groups": record.Digest(req.Groups)}},
		{"v1 key, long username", v1(userReq), []string{"user"}, map[string]string{"user": record.Digest(longUser)}},
		{"v2 key, long username", keyFor(t, templated(userReq)), []string{"user"}, map[string]string{"user": record.Digest(longUser)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDirect(t, newPod(nil))
			pr := d.keys(t, tt.key)
			checkItems(t, pr, []string{tt.key}, []item{{outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}})
			pod := getPod(t, d.cs)
			rec, err := record.Read(pod.Labels, pod.Annotations)
			if err != nil {
				t.Fatal(err)
			}
			e := rec.First
			if !slices.Equal(e.Truncated, tt.wantTruncated) {
				t.Errorf("truncated = %q, want %q", e.Truncated, tt.wantTruncated)
			}
			for f, want := range tt.wantDigest {
				if e.Digests[f] != want {
					t.Errorf("digest of %s = %q, want that of the original, %q", f, e.Digests[f], want)
				}
			}
			if n := len(pod.Annotations[record.FirstEntryAnnotation]); n > record.MaxEntryBytes {
				t.Errorf("stored entry is %d bytes, more than %d", n, record.MaxEntryBytes)
			}
			if slices.Contains(tt.wantTruncated, "command") && (len(e.Command) < 3 || e.Command[0] != "sh" || !strings.HasPrefix(script, e.Command[2])) {
				t.Errorf("command = %.40q…, want the beginning of the original", e.Command)
			}
			evs := d.events(t)
			if len(evs) != 1 || len(evs[0].Message) > 1024 || !utf8.ValidString(evs[0].Message) {
				t.Errorf("events %+v, want one with a bounded, valid message", evs)
			}
		})
	}
}

// TestHandlerTrial: a trial key records the trial annotation and a trial
// Event, never the deadline label, and never moves a real deadline.
func TestHandlerTrial(t *testing.T) {
	trial := func(uid, ttl string) string {
		r := execBy("alice", uid, ttl)
		r.Trial = true
		return keyFor(t, r)
	}
	t.Run("pod with no record", func(t *testing.T) {
		d := newDirect(t, newPod(nil))
		key := trial("req-1", "10m")
		pr := d.keys(t, key)
		checkItems(t, pr, []string{key}, []item{{outcome: provider.OutcomeTrial, deadline: t0.Add(10 * time.Minute)}})
		pod := getPod(t, d.cs)
		for k := range pod.Labels {
			if strings.HasPrefix(k, record.Prefix) {
				t.Fatalf("trial entry set label %s: %v", k, pod.Labels)
			}
		}
		for k := range pod.Annotations {
			if strings.HasPrefix(k, record.Prefix) && k != record.TrialAnnotation {
				t.Errorf("trial entry wrote %s", k)
			}
		}
		tr, err := record.ReadTrial(pod.Annotations)
		if err != nil || tr.Entries != 1 || !tr.WouldEvictAt.Equal(t0.Add(10*time.Minute)) || tr.Last.User != "alice" || tr.PodUID != podUID {
			t.Errorf("trial record = %+v, %v", tr, err)
		}
		var raw map[string]any
		if err := json.Unmarshal([]byte(pod.Annotations[record.TrialAnnotation]), &raw); err != nil || raw["wouldEvictAt"] != "2026-11-26T10:10:00Z" || raw["entries"] != 1.0 {
			t.Errorf("annotation %s = %s", record.TrialAnnotation, pod.Annotations[record.TrialAnnotation])
		}
		evs := d.events(t)
		if len(evs) != 1 || evs[0].Reason != provider.ReasonTrialEntry || evs[0].Type != corev1.EventTypeNormal ||
			!strings.Contains(evs[0].Message, "would be evicted at 2026-11-26T10:10:00Z; this constraint is in trial mode, nothing will happen") {
			t.Errorf("events = %+v, want one %s", evs, provider.ReasonTrialEntry)
		}
		// The same admission again, and the SPDY fallback: no second Event.
		d.keys(t, trial("req-1", "10m"))
		d.clock.Step(time.Second)
		d.keys(t, trial("req-2", "10m"))
		if evs := d.events(t); len(evs) != 1 {
			t.Errorf("%d events after repeats, want 1", len(evs))
		}
	})
	t.Run("quarantine constraint", func(t *testing.T) {
		d := newDirect(t, newPod(nil))
		r := execBy("alice", "req-1", "10m")
		r.Trial, r.Action = true, record.ActionQuarantine
		if pr := d.keys(t, keyFor(t, r)); len(pr.Response.Items) != 1 || pr.Response.Items[0].Value == nil ||
			pr.Response.Items[0].Value.Action != record.ActionQuarantine {
			t.Errorf("answer %+v, want action quarantine", pr.Response.Items)
		}
		evs := d.events(t)
		if len(evs) != 1 || !strings.Contains(evs[0].Message, "it would be quarantined at 2026-11-26T10:10:00Z; this constraint is in trial mode") {
			t.Errorf("events = %+v, want one saying the pod would be quarantined", evs)
		}
	})
	t.Run("real record untouched", func(t *testing.T) {
		real := existing(t0.Add(-30*time.Minute), time.Hour) // due at t0+30m
		d := newDirect(t, newPod(real))
		before := getPod(t, d.cs)
		// A trial constraint and a real one match the same admission, with
		// ttls shorter and longer than the real deadline.
		short, long := trial("req-1", "1m"), keyFor(t, execBy("alice", "req-1", "2h"))
		pr := d.keys(t, short, long)
		checkItems(t, pr, []string{short, long}, []item{
			{outcome: provider.OutcomeTrial, deadline: t0.Add(time.Minute)},
			{outcome: record.OutcomeAdded, deadline: t0.Add(30 * time.Minute)},
		})
		pod := getPod(t, d.cs)
		if pod.Labels[record.DeadlineLabel] != before.Labels[record.DeadlineLabel] {
			t.Errorf("deadline label %s, was %s", pod.Labels[record.DeadlineLabel], before.Labels[record.DeadlineLabel])
		}
		rec, err := record.Read(pod.Labels, pod.Annotations)
		if err != nil || !rec.Deadline.Equal(t0.Add(30*time.Minute)) || rec.Entries != 2 {
			t.Errorf("record = %+v, %v; want deadline t0+30m, 2 entries", rec, err)
		}
		evs := d.events(t)
		reasons := map[string]int{}
		for _, ev := range evs {
			reasons[ev.Reason]++
		}
		if reasons[provider.ReasonTrialEntry] != 1 || reasons[provider.ReasonEntered] != 1 {
			t.Errorf("event reasons %v, want one of each", reasons)
		}
	})
}

// TestHandlerWriteNotKept: an API server that accepts the PATCH of
// pods/status but drops metadata changes (as a future Kubernetes may) must
// fail the key, saying so, not answer a deadline that nothing enforces.
func TestHandlerWriteNotKept(t *testing.T) {
	for _, trial := range []bool{false, true} {
		t.Run(fmt.Sprintf("trial=%v", trial), func(t *testing.T) {
			d := newDirect(t, newPod(nil))
			d.cs.PrependReactor("patch", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
				return true, newPod(nil), nil // accepted, metadata unchanged
			})
			r := execBy("alice", "req-1", "1h")
			r.Trial = trial
			key := keyFor(t, r)
			pr := d.keys(t, key)
			checkItems(t, pr, []string{key}, []item{{err: "the API server accepted the write but did not keep the record: this Kubernetes version may no longer accept metadata changes through pods/status"}})
			if evs := d.events(t); len(evs) != 0 {
				t.Errorf("events %+v for a record not kept", evs)
			}
		})
	}
}

// TestHandlerRejectedKeyLog: the log line of a rejected key says which pod,
// operation and admission it was about, and nothing of the requester's user
// or command; a bad ttl is a configuration error of the constraint.
func TestHandlerRejectedKeyLog(t *testing.T) {
	d := newDirect(t, newPod(nil))
	var mu sync.Mutex
	var lines []string
	log := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, args)
	}, funcr.Options{})
	r := execBy("alice@example.com", "req-77", "1d")
	r.Command = []string{"cat", "/etc/secret-file"}
	key := keyFor(t, r)
	pr := call(t, klog.NewContext(context.Background(), log), d.h, providerRequest(t, key))
	checkItems(t, pr, []string{key}, []item{{err: `configuration error: the constraint's ttl "1d" is not a Go duration such as 30m or 1h; fix the constraint's parameters`}})
	mu.Lock()
	defer mu.Unlock()
	if len(lines) != 1 {
		t.Fatalf("log lines %q, want one", lines)
	}
	for _, s := range []string{`"msg"="Rejected key"`, `"name"="web-0"`, `"namespace"="team-a"`, `"operation"="exec"`, `"uid"="req-77"`, `"ttl"="1d"`, `"configurationError"=true`} {
		if !strings.Contains(lines[0], s) {
			t.Errorf("log line %s lacks %s", lines[0], s)
		}
	}
	for _, s := range []string{"alice", "secret-file"} {
		if strings.Contains(lines[0], s) {
			t.Errorf("log line %s holds %q from the key", lines[0], s)
		}
	}
}

// TestHandlerEarliestDeadlineWins: two constraints with different ttls match
// one exec, so one admission makes two calls with the same request UID; the
// deadline is the shorter ttl's, whatever order Gatekeeper calls them in,
// with one entry and one Event, whose message tells the final deadline.
func TestHandlerEarliestDeadlineWins(t *testing.T) {
	for _, order := range [][]string{{"45s", "20s"}, {"20s", "45s"}} {
		t.Run(strings.Join(order, "-then-"), func(t *testing.T) {
			d := newDirect(t, newPod(nil))
			for i, ttl := range order {
				if i > 0 {
					d.clock.Step(300 * time.Millisecond) // Gatekeeper's next constraint
				}
				d.keys(t, keyFor(t, execBy("alice", "req-1", ttl)))
			}
			pod := getPod(t, d.cs)
			rec, err := record.Read(pod.Labels, pod.Annotations)
			if err != nil {
				t.Fatal(err)
			}
			if !rec.Deadline.Equal(t0.Add(20*time.Second)) || rec.Entries != 1 {
				t.Errorf("deadline %s with %d entries, want %s and 1", rec.Deadline, rec.Entries, t0.Add(20*time.Second))
			}
			evs := d.events(t)
			if len(evs) != 1 || !strings.Contains(evs[0].Message, "evict it at 2026-11-26T10:00:20Z") {
				t.Errorf("events %+v, want one saying 10:00:20", evs)
			}
		})
	}
}

// TestHandlerQuarantineAsked: when any constraint matching an entry asks for
// quarantine, the record asks for it (the label), whatever the order of the
// calls and although the second call repeats the first admission (which is
// otherwise answered from memory); the entry's one Event says so; a later
// entry whose constraint asks for eviction does not soften it.
func TestHandlerQuarantineAsked(t *testing.T) {
	for _, order := range [][]record.Action{{record.ActionEvict, record.ActionQuarantine}, {record.ActionQuarantine, record.ActionEvict}} {
		t.Run(fmt.Sprintf("%s-then-%s", order[0], order[1]), func(t *testing.T) {
			d := newDirect(t, newPod(nil))
			for i, a := range order {
				if i > 0 {
					d.clock.Step(300 * time.Millisecond) // Gatekeeper's next constraint
				}
				req := execBy("alice", "req-1", "1h")
				req.Action = a
				d.keys(t, keyFor(t, req))
			}
			later := execBy("bob", "req-2", "1h")
			later.Action = record.ActionEvict
			d.clock.Step(time.Minute)
			// The answer says what the record asks for, not what the
			// caller's constraint did: the template's notice tells it.
			if pr := d.keys(t, keyFor(t, later)); len(pr.Response.Items) != 1 || pr.Response.Items[0].Value == nil ||
				pr.Response.Items[0].Value.Action != record.ActionQuarantine {
				t.Errorf("answer to the evicting entry %+v, want action quarantine", pr.Response.Items)
			}
			pod := getPod(t, d.cs)
			rec, err := record.Read(pod.Labels, pod.Annotations)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Action != record.ActionQuarantine || pod.Labels[record.ActionLabel] != "quarantine" || rec.Entries != 2 {
				t.Errorf("action %q (label %q), %d entries; want quarantine and 2", rec.Action, pod.Labels[record.ActionLabel], rec.Entries)
			}
			evs := d.events(t)
			var quarantine int
			for _, ev := range evs {
				if strings.Contains(ev.Message, "will quarantine it at") {
					quarantine++
				}
			}
			if len(evs) != 2 || quarantine != 2 {
				t.Errorf("events %+v, want two (one per entry), both saying the pod will be quarantined", evs)
			}
		})
	}
}

// TestHandlerFreshRecordOverALiftedOne: a record lifted by removing its
// deadline (what the guard lets extensionGroups do) may leave its action
// label behind; the next entry's fresh record asks for what its own
// constraint asks for, not for that leftover.
func TestHandlerFreshRecordOverALiftedOne(t *testing.T) {
	for _, tc := range []struct {
		action record.Action
		want   string // the action label afterwards; "" for none
	}{
		{record.ActionEvict, ""},
		{record.ActionQuarantine, "quarantine"},
	} {
		t.Run(string(tc.action), func(t *testing.T) {
			lifted, _ := record.Apply(nil, podUID, record.Entry{User: "alice", Time: t0.Add(-time.Hour), Operation: record.OpExec,
				RequestUID: "req-0"}, time.Hour, record.ActionQuarantine)
			pod := newPod(&lifted)
			delete(pod.Labels, record.DeadlineLabel)
			if _, err := record.Read(pod.Labels, pod.Annotations); !errors.Is(err, record.ErrNoRecord) {
				t.Fatalf("the lifted pod reads as %v, want no record", err)
			}
			d := newDirect(t, pod)
			req := execBy("bob", "req-1", "1h")
			req.Action = tc.action
			d.keys(t, keyFor(t, req))
			got := getPod(t, d.cs)
			rec, err := record.Read(got.Labels, got.Annotations)
			if err != nil {
				t.Fatal(err)
			}
			if label, ok := got.Labels[record.ActionLabel]; label != tc.want || ok != (tc.want != "") {
				t.Errorf("action label %q (present %v), want %q", label, ok, tc.want)
			}
			if rec.Action != tc.action || rec.Entries != 1 || rec.Last.User != "bob" {
				t.Errorf("record asks for %q with %d entries, last by %q; want %q, 1, bob", rec.Action, rec.Entries, rec.Last.User, tc.action)
			}
		})
	}
}

// TestHandlerKeepsHistoryUnderUnknownAction: a record whose action label
// this provider does not know (a newer provider's, or set by whoever created
// the pod) keeps its history: the next entry is added to it, not written
// over it, and the label is left as it is.
func TestHandlerKeepsHistoryUnderUnknownAction(t *testing.T) {
	first := execBy("alice", "req-1", "1h")
	firstEntry, _ := record.Apply(nil, podUID, record.Entry{User: "alice", Time: t0.Add(-time.Minute), Operation: record.OpExec,
		RequestUID: first.UID}, time.Hour, record.ActionEvict)
	pod := newPod(&firstEntry)
	pod.Labels[record.ActionLabel] = "shred"
	d := newDirect(t, pod)
	d.keys(t, keyFor(t, execBy("bob", "req-2", "1h")))
	got := getPod(t, d.cs)
	rec, err := record.Read(got.Labels, got.Annotations)
	if !errors.Is(err, record.ErrUnknownAction) {
		t.Fatalf("Read: %v, want the unknown action reported", err)
	}
	if rec.Entries != 2 || rec.First.User != "alice" || rec.Last.User != "bob" || got.Labels[record.ActionLabel] != "shred" {
		t.Errorf("record %+v, label %q: want alice's entry kept, bob's added, the label left", rec, got.Labels[record.ActionLabel])
	}
}

// slowAPI is an API server that never answers until the request gives up,
// counting the requests it got.
type slowAPI struct {
	srv      *httptest.Server
	requests atomic.Int64
	release  chan struct{}
}

func newSlowAPI(t *testing.T) *slowAPI {
	a := &slowAPI{release: make(chan struct{})}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.requests.Add(1)
		select {
		case <-r.Context().Done():
		case <-a.release:
		}
	}))
	t.Cleanup(func() { close(a.release); a.srv.Close() })
	return a
}

// TestHandlerSlowAPIBoundsAnAdmission: with an API server that hangs, the
// first call of an admission fails at the timeout, and the calls of the
// other matching constraints fail at once with the same error, without
// another API request, so that the admission's calls together stay within
// Gatekeeper's webhook timeout. (Before, each call waited the full timeout:
// N constraints took N timeouts, past the webhook's 3 s, and the API server
// admitted the exec unrecorded even under a deny constraint.)
func TestHandlerSlowAPIBoundsAnAdmission(t *testing.T) {
	api := newSlowAPI(t)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: api.srv.URL, QPS: -1})
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 500 * time.Millisecond
	h := provider.NewRouter(provider.NewHandler(provider.NewRecorder(client, clocktesting.NewFakeClock(t0), nil), timeout))
	start := time.Now()
	var errs []string
	for _, ttl := range []string{"24h", "1h", "20s"} {
		key := keyFor(t, execBy("alice", "req-1", ttl))
		pr := call(t, quiet(), h, providerRequest(t, key))
		if len(pr.Response.Items) != 1 || pr.Response.Items[0].Error == "" {
			t.Fatalf("items %+v, want an error", pr.Response.Items)
		}
		errs = append(errs, pr.Response.Items[0].Error)
	}
	took := time.Since(start)
	if !strings.Contains(errs[0], "timed out") || errs[1] != errs[0] || errs[2] != errs[0] {
		t.Errorf("errors %q, want the first call's timeout three times", errs)
	}
	if n := api.requests.Load(); n != 1 {
		t.Errorf("%d API requests, want 1 (the first call's GET)", n)
	}
	if took >= 2*timeout {
		t.Errorf("three calls for one admission took %s, want about one timeout (%s)", took, timeout)
	}
	// Another admission is not affected by the first one's failure.
	key := keyFor(t, execBy("alice", "req-2", "1h"))
	pr := call(t, quiet(), h, providerRequest(t, key))
	if pr.Response.Items[0].Error == "" || api.requests.Load() != 2 {
		t.Errorf("another admission: %+v after %d API requests, want its own attempt", pr.Response.Items, api.requests.Load())
	}
}

// TestHandlerUnknownWriteOutcome: a record write that fails in a way that
// may still have landed (a 504, as when the API server finishes the PATCH
// after the provider gave up) fails the key, and the pod is read back later:
// the entries of a write that landed get their Events; otherwise (it did
// not land, or another write followed) they are counted as
// result="unknown". A refusal (4xx) reads nothing back. Before, the
// burst benchmark found 76 of 4,668 entries recorded with no Event and not
// counted anywhere.
func TestHandlerUnknownWriteOutcome(t *testing.T) {
	timeout := apierrors.NewTimeoutError("request did not complete within the allotted timeout", 0)
	for _, tt := range []struct {
		name        string
		apply       bool  // the PATCH is applied before the error returns
		thenChange  bool  // and another write changes the record after it
		existing    bool  // the pod has a record of bob's entry, with the deadline alice's sets
		err         error // what the PATCH returns
		wantEvents  int
		wantUnknown float64
		readsBack   bool
	}{
		{name: "landed", apply: true, err: timeout, wantEvents: 1, readsBack: true},
		{name: "not landed", err: timeout, wantUnknown: 1, readsBack: true},
		// Announcing its entries now could count one twice (another call
		// of the same admission may have written and announced it).
		{name: "landed, then another write", apply: true, thenChange: true, err: timeout, wantUnknown: 1, readsBack: true},
		// The pod's record already has the deadline and binding this write
		// would set: only the rest of the record tells that it did not land.
		{name: "not landed, same deadline", existing: true, err: timeout, wantUnknown: 1, readsBack: true},
		{name: "connection lost, landed", apply: true, err: errors.New("http2: client connection lost"), wantEvents: 1, readsBack: true},
		{name: "refused", err: apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "web", errors.New("no")), readsBack: false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pod := newPod(nil)
			if tt.existing {
				rec := entered("bob", "req-0")
				pod = newPod(&rec)
			}
			d := newDirect(t, pod)
			d.cs.PrependReactor("patch", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
				if tt.apply {
					if _, _, err := clienttesting.ObjectReaction(d.cs.Tracker())(a); err != nil {
						t.Errorf("applying the patch: %v", err)
					}
				}
				if tt.thenChange {
					// Another replica moves the deadline: the pod no longer
					// carries this write, though its record still names the
					// entry.
					pod := getPod(t, d.cs)
					rec, err := record.Read(pod.Labels, pod.Annotations)
					if err != nil {
						t.Fatal(err)
					}
					rec.Deadline = rec.Deadline.Add(-time.Minute)
					for k, v := range rec.Annotations() {
						pod.Annotations[k] = v
					}
					if err := d.cs.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), pod, pod.Namespace); err != nil {
						t.Fatal(err)
					}
				}
				return true, nil, tt.err
			})
			unknownBefore := eventCount(t, "unknown")
			key := keyFor(t, execBy("alice", "req-1", "1h"))
			pr := d.keys(t, key)
			if len(pr.Response.Items) != 1 || pr.Response.Items[0].Error == "" {
				t.Fatalf("items %+v: want the key failed (its write's outcome unknown)", pr.Response.Items)
			}
			gets := countActions(d.cs, "get", "pods")
			if !tt.readsBack {
				if d.clock.HasWaiters() {
					t.Errorf("a refused write waits to read the pod back")
				}
				if evs := d.events(t); len(evs) != 0 {
					t.Errorf("events %+v for a refused write", evs)
				}
				return
			}
			// The pod is read back only after unknownWriteWait.
			err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, pollTimeout, true, func(context.Context) (bool, error) {
				return d.clock.HasWaiters(), nil
			})
			if err != nil {
				t.Fatal("nothing waits to read the pod back")
			}
			if n := countActions(d.cs, "get", "pods"); n != gets {
				t.Fatalf("the pod was read back before unknownWriteWait")
			}
			d.clock.Step(provider.UnknownWriteWait)
			var evs []corev1.Event
			err = wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, pollTimeout, true, func(context.Context) (bool, error) {
				evs = d.events(t)
				return countActions(d.cs, "get", "pods") > gets && (len(evs) >= tt.wantEvents && eventCount(t, "unknown")-unknownBefore >= tt.wantUnknown), nil
			})
			if err != nil {
				t.Fatalf("after the read back: %d events, %v unknown; want %d and %v", len(evs), eventCount(t, "unknown")-unknownBefore, tt.wantEvents, tt.wantUnknown)
			}
			evs = d.events(t)
			if len(evs) != tt.wantEvents || eventCount(t, "unknown")-unknownBefore != tt.wantUnknown {
				t.Errorf("%d events, %v unknown; want %d and %v", len(evs), eventCount(t, "unknown")-unknownBefore, tt.wantEvents, tt.wantUnknown)
			}
			if tt.wantEvents == 1 && evs[0].Name != wantEventName(getPod(t, d.cs), "req-1") {
				t.Errorf("event %s, want the entry's own", evs[0].Name)
			}
		})
	}
}

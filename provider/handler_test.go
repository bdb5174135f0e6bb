package provider_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/record"
)

var podsResource = schema.GroupResource{Resource: "pods"}

// TestHandlerRejectsRequest covers whole-request failures: each is a
// well-formed ProviderResponse with a systemError, a 4xx status, no items,
// and no call to the API server.
func TestHandlerRejectsRequest(t *testing.T) {
	valid := keyFor(t, execBy("alice", "req-1", "1h"))
	manyKeys := make([]string, provider.MaxKeys+1)
	for i := range manyKeys {
		manyKeys[i] = valid
	}
	huge := providerRequest(t, strings.Repeat("k", provider.MaxBodyBytes))

	tests := []struct {
		name        string
		method      string
		contentType string
		body        []byte
		wantStatus  int
		wantError   string
	}{
		{name: "GET", method: http.MethodGet, wantStatus: http.StatusMethodNotAllowed, wantError: "method GET not allowed"},
		{name: "PUT", method: http.MethodPut, body: providerRequest(t, valid), wantStatus: http.StatusMethodNotAllowed, wantError: "use POST"},
		{name: "wrong content type", contentType: "text/plain", body: providerRequest(t, valid), wantStatus: http.StatusUnsupportedMediaType, wantError: `content type "text/plain"`},
		{name: "unparsable content type", contentType: "application/json; ;", body: providerRequest(t, valid), wantStatus: http.StatusUnsupportedMediaType, wantError: "content type"},
		{name: "body over MaxBodyBytes", body: huge, wantStatus: http.StatusRequestEntityTooLarge, wantError: fmt.Sprintf("larger than %d bytes", provider.MaxBodyBytes)},
		{name: "empty body", body: nil, wantStatus: http.StatusBadRequest, wantError: "not a valid ProviderRequest"},
		{name: "malformed JSON", body: []byte(`{"apiVersion":`), wantStatus: http.StatusBadRequest, wantError: "not a valid ProviderRequest"},
		{name: "JSON array", body: []byte(`[]`), wantStatus: http.StatusBadRequest, wantError: "not a valid ProviderRequest"},
		{name: "data after the object", body: append(providerRequest(t, valid), []byte(`{}`)...), wantStatus: http.StatusBadRequest, wantError: "data after its JSON object"},
		{name: "null", body: []byte(`null`), wantStatus: http.StatusBadRequest, wantError: "apiVersion"},
		{name: "wrong apiVersion", body: []byte(`{"apiVersion":"externaldata.gatekeeper.sh/v1alpha1","kind":"ProviderRequest","request":{"keys":["k"]}}`), wantStatus: http.StatusBadRequest, wantError: `apiVersion "externaldata.gatekeeper.sh/v1alpha1" not supported`},
		{name: "wrong kind", body: []byte(`{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderResponse","request":{"keys":["k"]}}`), wantStatus: http.StatusBadRequest, wantError: `kind "ProviderResponse" not supported`},
		{name: "zero keys", body: providerRequest(t), wantStatus: http.StatusBadRequest, wantError: "no keys"},
		{name: "keys null", body: []byte(`{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest","request":{"keys":null}}`), wantStatus: http.StatusBadRequest, wantError: "no keys"},
		{name: "no request", body: []byte(`{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest"}`), wantStatus: http.StatusBadRequest, wantError: "no keys"},
		{name: "more than MaxKeys", body: providerRequest(t, manyKeys...), wantStatus: http.StatusBadRequest, wantError: "101 keys, more than the 100 allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, newPod(nil))
			method := tt.method
			if method == "" {
				method = http.MethodPost
			}
			ct := tt.contentType
			if ct == "" {
				ct = "application/json"
			}
			resp, pr := send(t, e.gatekeeper(t), method, e.url(), ct, tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			if !strings.Contains(pr.Response.SystemError, tt.wantError) {
				t.Errorf("systemError = %q, want one containing %q", pr.Response.SystemError, tt.wantError)
			}
			if len(pr.Response.Items) != 0 {
				t.Errorf("items = %+v, want none", pr.Response.Items)
			}
			if tt.wantStatus == http.StatusMethodNotAllowed && resp.Header.Get("Allow") != http.MethodPost {
				t.Errorf("Allow = %q, want POST", resp.Header.Get("Allow"))
			}
			if n := len(e.cs.Actions()); n != 0 {
				t.Errorf("%d API calls made, want none: %v", n, e.cs.Actions())
			}
		})
	}
}

// TestHandlerMaxKeys checks the largest request accepted: one item per key,
// in order, each answered on its own.
func TestHandlerMaxKeys(t *testing.T) {
	e := newEnv(t, newPod(nil))
	keys := make([]string, provider.MaxKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("v9:%d", i)
	}
	resp, pr := send(t, e.gatekeeper(t), http.MethodPost, e.url(), "application/json; charset=utf-8", providerRequest(t, keys...))
	if resp.StatusCode != http.StatusOK || pr.Response.SystemError != "" {
		t.Fatalf("status %d, systemError %q; want 200 and none", resp.StatusCode, pr.Response.SystemError)
	}
	if len(pr.Response.Items) != len(keys) {
		t.Fatalf("%d items, want %d", len(pr.Response.Items), len(keys))
	}
	for i, it := range pr.Response.Items {
		if it.Key != keys[i] || it.Value != nil || !strings.Contains(it.Error, `unsupported key version "v9"`) {
			t.Errorf("item %d = %+v, want key %q with a version error", i, it, keys[i])
		}
	}
}

// item is what one key is expected to yield.
type item struct {
	outcome  record.Outcome
	deadline time.Time
	err      string // substring; empty means success
}

// existing returns a record as the provider would have written it for an
// exec by someone at at with ttl.
func existing(at time.Time, ttl time.Duration) *record.Record {
	e := record.Entry{User: "carol", Time: at, Operation: record.OpAttach, RequestUID: "req-0"}
	rec, _ := record.Apply(nil, podUID, e, ttl, record.ActionEvict)
	return &rec
}

var digitsOnly = regexp.MustCompile(`^[0-9]+$`)

// TestHandlerRecords sends keys to a provider over TLS and checks the items,
// the API calls and the record left on the pod.
func TestHandlerRecords(t *testing.T) {
	alice := execBy("alice@example.com", "req-1", "1h")
	oidc := execBy("https://idp.example.com/users/alice@example.com", "req-1", "1h")
	oidc.Groups = []string{"oidc:/org/team", "système"}
	terminating := newPod(nil)
	terminating.DeletionTimestamp = &metav1.Time{Time: t0.Add(30 * time.Second)}
	terminating.Finalizers = []string{"example.com/hold"}
	// Deleted with a grace period of two hours (the API server accepts any),
	// which a container that ignores SIGTERM runs to its end.
	terminatingPastTheDeadline := newPod(nil)
	terminatingPastTheDeadline.DeletionTimestamp = &metav1.Time{Time: t0.Add(2 * time.Hour)}
	conflicts := func(n int) func(*fake.Clientset) {
		return func(cs *fake.Clientset) {
			calls := 0
			cs.PrependReactor("patch", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
				calls++
				if calls <= n {
					return true, nil, apierrors.NewConflict(podsResource, podName, errors.New("the object has been modified"))
				}
				return false, nil, nil
			})
		}
	}
	failing := func(verb string, err error) func(*fake.Clientset) {
		return func(cs *fake.Clientset) {
			cs.PrependReactor(verb, "pods", func(clienttesting.Action) (bool, runtime.Object, error) { return true, nil, err })
		}
	}
	forbidden := apierrors.NewForbidden(podsResource, podName, errors.New(`User "system:serviceaccount:exec-reaper:provider" cannot patch resource "pods"`))

	tests := []struct {
		name        string
		pod         *corev1.Pod // nil: no pod
		setup       func(*fake.Clientset)
		keys        []string
		want        []item
		wantPatches int
		wantGets    int
		// wantRecord is the record expected on the pod afterwards; nil means
		// the pod must be unchanged.
		wantRecord *record.Record
	}{
		{
			name:        "pod with no record",
			pod:         newPod(nil),
			keys:        []string{keyFor(t, alice)},
			want:        []item{{outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}},
			wantPatches: 1, wantGets: 1,
			wantRecord: &record.Record{Deadline: t0.Add(time.Hour), PodUID: podUID, Entries: 1,
				First: alice.Entry(t0), Last: alice.Entry(t0)},
		},
		{
			name:        "earlier deadline kept",
			pod:         newPod(existing(t0.Add(-50*time.Minute), time.Hour)),
			keys:        []string{keyFor(t, alice)},
			want:        []item{{outcome: record.OutcomeAdded, deadline: t0.Add(10 * time.Minute)}},
			wantPatches: 1, wantGets: 1,
			wantRecord: &record.Record{Deadline: t0.Add(10 * time.Minute), PodUID: podUID, Entries: 2,
				First: existing(t0.Add(-50*time.Minute), time.Hour).First, Last: alice.Entry(t0)},
		},
		{
			name:        "later deadline moved earlier",
			pod:         newPod(existing(t0.Add(-time.Hour), 3*time.Hour)),
			keys:        []string{keyFor(t, execBy("alice@example.com", "req-1", "30m"))},
			want:        []item{{outcome: record.OutcomeAdded, deadline: t0.Add(30 * time.Minute)}},
			wantPatches: 1, wantGets: 1,
			wantRecord: &record.Record{Deadline: t0.Add(30 * time.Minute), PodUID: podUID, Entries: 2,
				First: existing(t0.Add(-time.Hour), 3*time.Hour).First, Last: execBy("alice@example.com", "req-1", "30m").Entry(t0)},
		},
		{
			name:        "username with @ and /",
			pod:         newPod(nil),
			keys:        []string{keyFor(t, oidc)},
			want:        []item{{outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}},
			wantPatches: 1, wantGets: 1,
			wantRecord: &record.Record{Deadline: t0.Add(time.Hour), PodUID: podUID, Entries: 1,
				First: oidc.Entry(t0), Last: oidc.Entry(t0)},
		},
		{
			name: "record copied from another pod is replaced",
			pod: func() *corev1.Pod {
				rec := existing(t0.Add(-time.Hour), 61*time.Minute)
				rec.PodUID = "uid-of-the-pod-it-was-copied-from"
				return newPod(rec)
			}(),
			keys:        []string{keyFor(t, alice)},
			want:        []item{{outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}},
			wantPatches: 1, wantGets: 1,
			wantRecord: &record.Record{Deadline: t0.Add(time.Hour), PodUID: podUID, Entries: 1,
				First: alice.Entry(t0), Last: alice.Entry(t0)},
		},
		{
			name: "malformed label is replaced",
			pod: func() *corev1.Pod {
				p := newPod(existing(t0, time.Hour))
				p.Labels[record.DeadlineLabel] = "soon"
				return p
			}(),
			keys:        []string{keyFor(t, alice)},
			want:        []item{{outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}},
			wantPatches: 1, wantGets: 1,
			wantRecord: &record.Record{Deadline: t0.Add(time.Hour), PodUID: podUID, Entries: 1,
				First: alice.Entry(t0), Last: alice.Entry(t0)},
		},
		{
			name: "terminating pod is left alone",
			pod:  terminating,
			keys: []string{keyFor(t, alice)},
			want: []item{{outcome: record.OutcomeRepeat, deadline: t0.Add(30 * time.Second)}},
			// The watch cache's copy may be an earlier pod's: read again.
			wantPatches: 0, wantGets: 2,
		},
		{
			name:        "terminating pod that would outlive its deadline is recorded",
			pod:         terminatingPastTheDeadline,
			keys:        []string{keyFor(t, alice)},
			want:        []item{{outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}},
			wantPatches: 1, wantGets: 2,
			wantRecord: &record.Record{Deadline: t0.Add(time.Hour), PodUID: podUID, Entries: 1,
				First: alice.Entry(t0), Last: alice.Entry(t0)},
		},
		{
			name:        "conflict twice, then written",
			pod:         newPod(nil),
			setup:       conflicts(2),
			keys:        []string{keyFor(t, alice)},
			want:        []item{{outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}},
			wantPatches: 3, wantGets: 3,
			wantRecord: &record.Record{Deadline: t0.Add(time.Hour), PodUID: podUID, Entries: 1,
				First: alice.Entry(t0), Last: alice.Entry(t0)},
		},
		{
			name:  "conflict every time gives up",
			pod:   newPod(nil),
			setup: conflicts(1000),
			keys:  []string{keyFor(t, alice)},
			want:  []item{{err: "writing record on pod team-a/web-0"}},
			// The first 409 is put down to the watch cache's copy.
			wantPatches: 6, wantGets: 6,
		},
		{
			name:        "forbidden patch",
			pod:         newPod(nil),
			setup:       failing("patch", forbidden),
			keys:        []string{keyFor(t, alice)},
			want:        []item{{err: "writing record on pod team-a/web-0 is forbidden to exec-reaper (check its RBAC)"}},
			wantPatches: 1, wantGets: 1,
		},
		{
			name:        "forbidden get",
			pod:         newPod(nil),
			setup:       failing("get", forbidden),
			keys:        []string{keyFor(t, alice)},
			want:        []item{{err: "reading pod team-a/web-0 is forbidden to exec-reaper (check its RBAC)"}},
			wantPatches: 0, wantGets: 1,
		},
		{
			name:        "server error on patch",
			pod:         newPod(nil),
			setup:       failing("patch", apierrors.NewInternalError(errors.New("etcd is sad"))),
			keys:        []string{keyFor(t, alice)},
			want:        []item{{err: "writing record on pod team-a/web-0: Internal error occurred: etcd is sad"}},
			wantPatches: 1, wantGets: 1,
		},
		{
			name: "missing pod",
			keys: []string{keyFor(t, alice)},
			want: []item{{err: "pod team-a/web-0 not found"}},
			// Too new for the watch cache, perhaps: read again.
			wantPatches: 0, wantGets: 2,
		},
		{
			name:        "bad key version",
			pod:         newPod(nil),
			keys:        []string{"v3:" + keyFor(t, alice)[3:]},
			want:        []item{{err: `unsupported key version "v3"`}},
			wantPatches: 0, wantGets: 0,
		},
		{
			name:        "invalid key next to a valid one",
			pod:         newPod(nil),
			keys:        []string{keyFor(t, execBy("alice", "req-1", "0s")), keyFor(t, alice)},
			want:        []item{{err: "outside (0, 720h0m0s]"}, {outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}},
			wantPatches: 1, wantGets: 1,
			wantRecord: &record.Record{Deadline: t0.Add(time.Hour), PodUID: podUID, Entries: 1,
				First: alice.Entry(t0), Last: alice.Entry(t0)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var objects []runtime.Object
			if tt.pod != nil {
				objects = append(objects, tt.pod.DeepCopy())
			}
			e := newEnv(t, objects...)
			if tt.setup != nil {
				tt.setup(e.cs)
			}
			var rvBefore string
			if tt.pod != nil {
				rvBefore = getPod(t, e.cs).ResourceVersion
			}
			resp, pr := post(t, e.gatekeeper(t), e.url(), providerRequest(t, tt.keys...))
			if resp.StatusCode != http.StatusOK || pr.Response.SystemError != "" {
				t.Fatalf("status %d, systemError %q; want 200 and none", resp.StatusCode, pr.Response.SystemError)
			}
			checkItems(t, pr, tt.keys, tt.want)
			if n := len(patchActions(e.cs)); n != tt.wantPatches {
				t.Errorf("%d patch actions, want %d", n, tt.wantPatches)
			}
			if n := countActions(e.cs, "get", "pods"); n != tt.wantGets {
				t.Errorf("%d get actions, want %d", n, tt.wantGets)
			}
			for _, p := range patchActions(e.cs) {
				checkPatch(t, p, rvBefore)
			}
			if tt.pod == nil {
				return
			}
			got := getPod(t, e.cs)
			if tt.wantRecord == nil {
				if !equalMaps(got.Labels, tt.pod.Labels) || !equalMaps(got.Annotations, tt.pod.Annotations) {
					t.Errorf("pod changed: labels %v, annotations %v", got.Labels, got.Annotations)
				}
				return
			}
			checkRecord(t, got, *tt.wantRecord)
		})
	}
}

// checkPatch checks that a patch is a JSON merge patch of the record's
// labels and annotations only, on the status subresource, bound to the
// resourceVersion that was read.
func checkPatch(t *testing.T, p clienttesting.PatchAction, rv string) {
	t.Helper()
	if p.GetPatchType() != types.MergePatchType {
		t.Errorf("patch type %q, want %q", p.GetPatchType(), types.MergePatchType)
	}
	// The status subresource: Gatekeeper's webhook never reviews it, so the
	// write cannot wait on the review that is waiting on it (recorder.go).
	if p.GetSubresource() != "status" {
		t.Errorf("patch subresource %q, want status", p.GetSubresource())
	}
	var patch map[string]map[string]json.RawMessage
	if err := json.Unmarshal(p.GetPatch(), &patch); err != nil {
		t.Fatalf("patch %s: %v", p.GetPatch(), err)
	}
	if len(patch) != 1 || len(patch["metadata"]) != 3 {
		t.Errorf("patch %s, want only metadata.{resourceVersion,labels,annotations}", p.GetPatch())
	}
	var gotRV string
	if err := json.Unmarshal(patch["metadata"]["resourceVersion"], &gotRV); err != nil || gotRV == "" || gotRV != rv {
		t.Errorf("patch resourceVersion %s, want %q (as read)", patch["metadata"]["resourceVersion"], rv)
	}
	var labels map[string]string
	if err := json.Unmarshal(patch["metadata"]["labels"], &labels); err != nil || len(labels) != 2 || labels[record.DeadlineLabel] == "" || labels[record.PodUIDLabel] == "" {
		t.Errorf("patch labels %s, want only %s and %s", patch["metadata"]["labels"], record.DeadlineLabel, record.PodUIDLabel)
	}
}

// checkItems checks one item per key, in order, against want.
func checkItems(t *testing.T, pr provider.ProviderResponse, keys []string, want []item) {
	t.Helper()
	if !pr.Response.Idempotent {
		t.Errorf("idempotent = false, want true")
	}
	if len(pr.Response.Items) != len(want) {
		t.Fatalf("%d items, want %d: %+v", len(pr.Response.Items), len(want), pr.Response.Items)
	}
	for i, it := range pr.Response.Items {
		w := want[i]
		if it.Key != keys[i] {
			t.Errorf("item %d key = %q, want %q", i, it.Key, keys[i])
		}
		if w.err != "" {
			if !strings.Contains(it.Error, w.err) || it.Value != nil {
				t.Errorf("item %d = {value %+v, error %q}, want no value and an error containing %q", i, it.Value, it.Error, w.err)
			}
			continue
		}
		if it.Error != "" || it.Value == nil {
			t.Errorf("item %d = {value %+v, error %q}, want a value", i, it.Value, it.Error)
			continue
		}
		if it.Value.Outcome != w.outcome || !it.Value.Deadline.Equal(w.deadline) {
			t.Errorf("item %d value = %s at %v, want %s at %v", i, it.Value.Outcome, it.Value.Deadline, w.outcome, w.deadline)
		}
	}
}

// checkRecord checks the record on pod against want, and that the pod's own
// labels and annotations survived.
func checkRecord(t *testing.T, pod *corev1.Pod, want record.Record) {
	t.Helper()
	if pod.Labels["app"] != "web" || pod.Annotations["note"] != "keep me" {
		t.Errorf("the pod's own metadata was lost: labels %v, annotations %v", pod.Labels, pod.Annotations)
	}
	if v := pod.Labels[record.DeadlineLabel]; !digitsOnly.MatchString(v) || v != record.FormatDeadline(want.Deadline) {
		t.Errorf("label %s=%q, want %q", record.DeadlineLabel, v, record.FormatDeadline(want.Deadline))
	}
	got, err := record.Read(pod.Labels, pod.Annotations)
	if err != nil {
		t.Fatalf("record on pod: %v", err)
	}
	if !recordsEqual(got, want) {
		t.Errorf("record on pod =\n%+v\nwant\n%+v", got, want)
	}
	// The annotation holds the username verbatim, as JSON.
	var first struct {
		User   string   `json:"user"`
		Groups []string `json:"groups"`
	}
	if err := json.Unmarshal([]byte(pod.Annotations[record.FirstEntryAnnotation]), &first); err != nil || first.User != want.First.User {
		t.Errorf("annotation %s = %q, want user %q", record.FirstEntryAnnotation, pod.Annotations[record.FirstEntryAnnotation], want.First.User)
	}
}

// recordsEqual compares records as they read back from a pod: times by
// instant, nil and empty lists alike.
func recordsEqual(a, b record.Record) bool {
	entryEqual := func(x, y record.Entry) bool {
		return x.User == y.User && strings.Join(x.Groups, "\x00") == strings.Join(y.Groups, "\x00") &&
			len(x.Groups) == len(y.Groups) && x.Time.Equal(y.Time) && x.Operation == y.Operation &&
			x.Container == y.Container && len(x.Command) == len(y.Command) &&
			strings.Join(x.Command, "\x00") == strings.Join(y.Command, "\x00") && x.RequestUID == y.RequestUID
	}
	return a.Deadline.Equal(b.Deadline) && a.PodUID == b.PodUID && a.Entries == b.Entries &&
		entryEqual(a.First, b.First) && entryEqual(a.Last, b.Last)
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestHandlerRepeat replays a kubectl exec that reaches admission twice (a
// WebSocket attempt, then the SPDY fallback, each with its own request UID):
// the second is a repeat and writes nothing, unless it asks for an earlier
// deadline. A different entry, or the same one again later than
// RepeatWindow, is added. Calls for the same admission (one per matching
// constraint) are repeats that still move the deadline earlier, and need no
// API call when they do not.
func TestHandlerRepeat(t *testing.T) {
	e := newEnv(t, newPod(nil))
	c := e.gatekeeper(t)
	steps := []struct {
		name        string
		advance     time.Duration
		req         provider.Request
		want        item
		wantPatches int // in total so far
		wantGets    int // in total so far; 0: not checked
		wantEntries int
		wantLastUID string
	}{
		{name: "first", req: execBy("alice", "req-ws", "1h"),
			want: item{outcome: record.OutcomeFirst, deadline: t0.Add(time.Hour)}, wantPatches: 1, wantEntries: 1, wantLastUID: "req-ws"},
		{name: "SPDY fallback", advance: 500 * time.Millisecond, req: execBy("alice", "req-spdy", "1h"),
			want: item{outcome: record.OutcomeRepeat, deadline: t0.Add(time.Hour)}, wantPatches: 1, wantEntries: 1, wantLastUID: "req-ws"},
		{name: "same request again", req: execBy("alice", "req-spdy", "1h"),
			want: item{outcome: record.OutcomeRepeat, deadline: t0.Add(time.Hour)}, wantPatches: 1, wantEntries: 1, wantLastUID: "req-ws"},
		{name: "repeat with a shorter ttl moves the deadline earlier", req: execBy("alice", "req-x", "1m"),
			want: item{outcome: record.OutcomeEarlier, deadline: t0.Add(61 * time.Second)}, wantPatches: 2, wantEntries: 1, wantLastUID: "req-ws"},
		{name: "different command within the window", advance: time.Second, req: func() provider.Request {
			r := execBy("alice", "req-2", "1h")
			r.Command = []string{"cat", "/etc/passwd"}
			return r
		}(), want: item{outcome: record.OutcomeAdded, deadline: t0.Add(61 * time.Second)}, wantPatches: 3, wantEntries: 2, wantLastUID: "req-2"},
		// The first command is compared with every recent entry, not only
		// the last (cat), and it is more than RepeatWindow after it.
		{name: "first command again, on purpose", advance: record.RepeatWindow + time.Second, req: execBy("alice", "req-3", "30s"),
			want: item{outcome: record.OutcomeAdded, deadline: t0.Add(34 * time.Second)}, wantPatches: 4, wantEntries: 3, wantLastUID: "req-3"},
		// Two more constraints match req-3: one with a shorter ttl, which
		// moves the deadline, then one with a longer ttl, answered from
		// memory without a call to the API server (wantGets: 3 so far: the
		// first entry's read of the watch cache, the SPDY fallback's read
		// from etcd, since it writes nothing, and the read of the watch
		// cache more than two seconds after the last write; the entries
		// in between start from the pod the last write returned).
		{name: "the same admission, a shorter ttl", req: execBy("alice", "req-3", "10s"),
			want: item{outcome: record.OutcomeEarlier, deadline: t0.Add(14 * time.Second)}, wantPatches: 5, wantGets: 3, wantEntries: 3, wantLastUID: "req-3"},
		{name: "the same admission, a longer ttl", req: execBy("alice", "req-3", "1h"),
			want: item{outcome: record.OutcomeRepeat, deadline: t0.Add(14 * time.Second)}, wantPatches: 5, wantGets: 3, wantEntries: 3, wantLastUID: "req-3"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			e.clock.Step(s.advance)
			key := keyFor(t, s.req)
			_, pr := post(t, c, e.url(), providerRequest(t, key))
			checkItems(t, pr, []string{key}, []item{s.want})
			if n := len(patchActions(e.cs)); n != s.wantPatches {
				t.Errorf("%d patch actions in total, want %d", n, s.wantPatches)
			}
			if n := countActions(e.cs, "get", "pods"); s.wantGets != 0 && n != s.wantGets {
				t.Errorf("%d get actions in total, want %d", n, s.wantGets)
			}
			rec, err := record.Read(getPod(t, e.cs).Labels, getPod(t, e.cs).Annotations)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Entries != s.wantEntries || rec.Last.RequestUID != s.wantLastUID || rec.First.RequestUID != "req-ws" {
				t.Errorf("record has %d entries, first %q, last %q; want %d, req-ws, %q",
					rec.Entries, rec.First.RequestUID, rec.Last.RequestUID, s.wantEntries, s.wantLastUID)
			}
		})
	}
}

// TestHandlerDamagedRecordKeepsDeadline: a record whose label and pod UID are
// intact binds the pod (the deleter evicts on record.Binding alone), so a
// damaged descriptive annotation must not let a new entry postpone it.
func TestHandlerDamagedRecordKeepsDeadline(t *testing.T) {
	pod := newPod(existing(t0.Add(-59*time.Minute), time.Hour)) // due at t0+1m
	delete(pod.Annotations, record.FirstEntryAnnotation)
	e := newEnv(t, pod)
	key := keyFor(t, execBy("alice", "req-1", "1h"))
	_, pr := post(t, e.gatekeeper(t), e.url(), providerRequest(t, key))
	checkItems(t, pr, []string{key}, []item{{outcome: record.OutcomeAdded, deadline: t0.Add(time.Minute)}})
	if got := getPod(t, e.cs).Labels[record.DeadlineLabel]; got != record.FormatDeadline(t0.Add(time.Minute)) {
		t.Errorf("deadline label = %s, want %s (unchanged)", got, record.FormatDeadline(t0.Add(time.Minute)))
	}
}

// FuzzHandler feeds arbitrary bodies to the handler: it never panics, always
// answers a well-formed ProviderResponse, and answers either a systemError or
// one item per key, in order.
func FuzzHandler(f *testing.F) {
	valid := keyFor(f, execBy("alice", "req-1", "1h"))
	f.Add(providerRequest(f, valid))
	f.Add(providerRequest(f, valid, "v2:{}", "", keyFor(f, execBy("bob", "req-2", "0s"))))
	f.Add(providerRequest(f))
	f.Add(providerRequest(f, strings.Repeat("x", 100)))
	trial := execBy("alice", "req-3", "1m")
	trial.Trial = true
	long := execBy(strings.Repeat("u", 5000), "req-4", "1h")
	long.Command = []string{"sh", "-c", strings.Repeat("\u2028\x00<", 3000)}
	f.Add(providerRequest(f, keyFor(f, trial), keyFor(f, long), keyFor(f, execBy("alice", "req-3", "30s"))))
	f.Add([]byte(`{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest","request":{"keys":["v1:{}"],"future":true},"future":{}}`))
	f.Add([]byte(`{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest","request":{"keys":[null, "v1:null"]}}`))
	f.Add([]byte(`{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest","request":{"keys":["a"]},"Request":{"keys":["b","c"]}}`))
	f.Add([]byte(`{"apiVersion":"v1","kind":"ProviderRequest","request":{"keys":["a"]}}`))
	f.Add([]byte(`{"kind":"ProviderRequest"} {}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	f.Add([]byte("\xff\xfe"))

	cs := fake.NewClientset(newPod(nil))
	h := provider.NewRouter(provider.NewHandler(provider.NewRecorder(cs, clocktesting.NewFakeClock(t0), nil), time.Second))
	f.Fuzz(func(t *testing.T, body []byte) {
		cs.ClearActions()
		req := httptest.NewRequestWithContext(quiet(), http.MethodPost, provider.Path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rr := httptest.NewRecorder()
		h.ServeHTTP(rr, req)

		pr := decodeResponse(t, rr.Code, rr.Header(), rr.Body)
		if pr.Response.SystemError != "" {
			if rr.Code < 400 || rr.Code >= 500 || len(pr.Response.Items) != 0 {
				t.Fatalf("systemError %q with status %d and %d items", pr.Response.SystemError, rr.Code, len(pr.Response.Items))
			}
			return
		}
		if rr.Code != http.StatusOK {
			t.Fatalf("status %d without a systemError", rr.Code)
		}
		var in provider.ProviderRequest
		if err := json.Unmarshal(body, &in); err != nil {
			t.Fatalf("accepted a body that is not JSON: %v", err)
		}
		keys := in.Request.Keys
		if len(keys) == 0 || len(pr.Response.Items) != len(keys) {
			t.Fatalf("%d items for %d keys", len(pr.Response.Items), len(keys))
		}
		for i, it := range pr.Response.Items {
			if it.Key != keys[i] {
				t.Fatalf("item %d key = %q, want %q", i, it.Key, keys[i])
			}
			if (it.Error == "") == (it.Value == nil) {
				t.Fatalf("item %d = %+v: want exactly one of value and error", i, it)
			}
		}
	})
}

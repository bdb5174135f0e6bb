package provider_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/record"
)

// pollTimeout bounds every wait for something asynchronous.
const pollTimeout = 10 * time.Second

// eventCount reads exec_reaper_provider_events_total{result}. The metrics are
// package globals, so tests compare differences, the tests that read them do
// not run in parallel, and no test returns while a sink of its own still
// writes (see drain).
func eventCount(t *testing.T, result string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	provider.Register(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "exec_reaper_provider_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// entered returns a record whose last entry is by user with requestUID.
func entered(user, requestUID string) record.Record {
	e := record.Entry{User: user, Time: t0, Operation: record.OpExec, Container: "app",
		Command: []string{"sh", "-c", "cat /etc/shadow"}, RequestUID: requestUID}
	rec, _ := record.Apply(nil, podUID, e, time.Hour, record.ActionEvict)
	return rec
}

// wantEventName is the deterministic name of the Event for (pod UID, request UID).
func wantEventName(pod *corev1.Pod, requestUID string) string {
	sum := sha256.Sum256([]byte(string(pod.UID) + "/" + requestUID))
	return pod.Name + ".exec-reaper." + hex.EncodeToString(sum[:8])
}

func listEvents(t *testing.T, cs *fake.Clientset) []corev1.Event {
	t.Helper()
	l, err := cs.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// drain runs s with a cancelled context: Run then writes what is queued and
// returns, so the test needs no waiting. drain returns only once Run has,
// even when Run is slower than pollTimeout (which fails the test): a Run
// left writing would count its Events into whatever test runs next, the
// metrics being process-wide (on a loaded machine, a burst's drain that
// gave up left its Events to land in TestEventSinkAnnounce's count).
func drain(t *testing.T, s *provider.EventSink) {
	t.Helper()
	ctx, cancel := context.WithCancel(quiet())
	cancel()
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(pollTimeout):
		t.Errorf("Run did not return within %s after its context was cancelled; waiting for it", pollTimeout)
		<-done
		t.FailNow()
	}
}

func TestEventSinkAnnounce(t *testing.T) {
	pod := newPod(nil)
	cs := fake.NewClientset(pod)
	sink := provider.NewEventSink(cs, 8, 1)
	created := eventCount(t, "created")

	ctx, cancel := context.WithCancel(quiet())
	done := make(chan struct{})
	go func() { sink.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	rec := entered("alice@example.com", "req-1")
	sink.Announce(pod, rec, record.OutcomeFirst)
	// The counter rises just after the Event is stored: wait for both.
	err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, pollTimeout, true, func(context.Context) (bool, error) {
		return len(listEvents(t, cs)) > 0 && eventCount(t, "created") > created, nil
	})
	if err != nil {
		t.Fatalf("no Event created: %v", err)
	}
	evs := listEvents(t, cs)
	if len(evs) != 1 {
		t.Fatalf("%d Events, want 1: %+v", len(evs), evs)
	}
	ev := evs[0]
	if want := wantEventName(pod, "req-1"); ev.Name != want {
		t.Errorf("Event name = %q, want %q", ev.Name, want)
	}
	checks := []struct {
		what      string
		got, want string
	}{
		{"namespace", ev.Namespace, namespace},
		{"involvedObject.kind", ev.InvolvedObject.Kind, "Pod"},
		{"involvedObject.name", ev.InvolvedObject.Name, podName},
		{"involvedObject.uid", string(ev.InvolvedObject.UID), string(podUID)},
		{"reason", ev.Reason, provider.ReasonEntered},
		{"type", ev.Type, corev1.EventTypeWarning},
		{"source", ev.Source.Component, provider.Component},
		{"action", ev.Action, "exec"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("Event %s = %q, want %q", c.what, c.got, c.want)
		}
	}
	for _, s := range []string{"alice@example.com", "exec into container app", "cat /etc/shadow",
		"2026-11-26T10:00:00Z", "2026-11-26T11:00:00Z"} {
		if !strings.Contains(ev.Message, s) {
			t.Errorf("Event message %q lacks %q", ev.Message, s)
		}
	}
	if !ev.FirstTimestamp.Time.Equal(t0) || ev.Count != 1 {
		t.Errorf("Event firstTimestamp %v, count %d; want %v, 1", ev.FirstTimestamp, ev.Count, t0)
	}
	if got := eventCount(t, "created") - created; got != 1 {
		t.Errorf("created counter rose by %v, want 1", got)
	}
}

// TestEventSinkOncePerEntry announces one entry twice, as a retry would: one
// Event, the second announcement folded into the first and counted as a
// duplicate; and once more after its Event exists, as another replica would:
// the Create is refused and counted as a duplicate. A different request UID
// is a different Event.
func TestEventSinkOncePerEntry(t *testing.T) {
	pod := newPod(nil)
	cs := fake.NewClientset(pod)
	sink := provider.NewEventSink(cs, 8, 1)
	created, duplicate := eventCount(t, "created"), eventCount(t, "duplicate")

	sink.Announce(pod, entered("alice", "req-1"), record.OutcomeFirst)
	sink.Announce(pod, entered("alice", "req-1"), record.OutcomeAdded)
	sink.Announce(pod, entered("alice", "req-2"), record.OutcomeAdded)
	drain(t, sink)

	names := map[string]bool{}
	for _, ev := range listEvents(t, cs) {
		names[ev.Name] = true
	}
	want := map[string]bool{wantEventName(pod, "req-1"): true, wantEventName(pod, "req-2"): true}
	if len(names) != len(want) || !names[wantEventName(pod, "req-1")] || !names[wantEventName(pod, "req-2")] {
		t.Errorf("Events %v, want %v", names, want)
	}
	if n := countActions(cs, "create", "events"); n != 2 {
		t.Errorf("%d Event creates, want 2", n)
	}
	sink.Announce(pod, entered("alice", "req-1"), record.OutcomeAdded)
	drain(t, sink)
	if n := countActions(cs, "create", "events"); n != 3 || len(listEvents(t, cs)) != 2 {
		t.Errorf("%d Event creates, %d Events; want 3 and 2", n, len(listEvents(t, cs)))
	}
	if got := eventCount(t, "created") - created; got != 2 {
		t.Errorf("created counter rose by %v, want 2", got)
	}
	if got := eventCount(t, "duplicate") - duplicate; got != 2 {
		t.Errorf("duplicate counter rose by %v, want 2 (one folded, one refused)", got)
	}
}

func TestEventSinkRepeatAnnouncesNothing(t *testing.T) {
	pod := newPod(nil)
	cs := fake.NewClientset(pod)
	sink := provider.NewEventSink(cs, 8, 1)
	sink.Announce(pod, entered("alice", "req-1"), record.OutcomeRepeat)
	drain(t, sink)
	if n := countActions(cs, "create", "events"); n != 0 {
		t.Errorf("%d Event creates for a repeat, want 0", n)
	}

	// A nil sink (no Events configured) ignores everything.
	var none *provider.EventSink
	none.Announce(pod, entered("alice", "req-1"), record.OutcomeFirst)
}

// TestEventSinkFullQueue checks that Announce never waits and never drops
// an entry silently: with no writer and a full queue, further entries into
// a pod are folded into one Event that counts them and names the last; only
// when the table of folded Events is full too (more pods than the queue
// holds) is one dropped, and counted. (Before, every entry past the queue
// was dropped: 7,541 of 10,000 in a burst.)
func TestEventSinkFullQueue(t *testing.T) {
	pod := newPod(nil)
	other := newPod(nil)
	other.Name, other.UID = "web-1", podUID+"-1"
	cs := fake.NewClientset(pod, other)
	sink := provider.NewEventSink(cs, 1, 1)
	dropped, folded := eventCount(t, "dropped"), eventCount(t, "folded")

	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, uid := range []string{"req-1", "req-2", "req-3", "req-4"} {
			sink.Announce(pod, entered("alice", uid), record.OutcomeAdded)
		}
		sink.Announce(other, entered("bob", "req-5"), record.OutcomeAdded) // a second pod: no room
	}()
	select {
	case <-done:
	case <-time.After(pollTimeout):
		t.Fatal("Announce blocked on a full queue")
	}
	if got := eventCount(t, "folded") - folded; got != 3 {
		t.Errorf("folded counter rose by %v, want 3", got)
	}
	if got := eventCount(t, "dropped") - dropped; got != 1 {
		t.Errorf("dropped counter rose by %v, want 1 (the second pod's entry)", got)
	}
	drain(t, sink)
	evs := map[string]corev1.Event{}
	for _, ev := range listEvents(t, cs) {
		evs[ev.Name] = ev
	}
	if _, ok := evs[wantEventName(pod, "req-1")]; !ok || len(evs) != 2 {
		t.Fatalf("Events %v, want req-1's and one folded", evs)
	}
	delete(evs, wantEventName(pod, "req-1"))
	for _, ev := range evs {
		if ev.Count != 3 || ev.Reason != provider.ReasonEntered || ev.InvolvedObject.UID != podUID ||
			!strings.HasPrefix(ev.Message, "3 entries into this pod came too fast for an Event each (each is in the pod's record); the last: alice entered") ||
			!strings.Contains(ev.Name, ".exec-reaper-folded.") {
			t.Errorf("folded Event %+v, want count 3 and the last entry", ev)
		}
	}
}

// TestEventSinkWriters: with several writers, Event creates are made in
// parallel (one writer made about 5 a second when each took 200 ms), and
// every one is written. The API server here holds each create until as many
// are in flight as there are writers, so one writer alone never finishes.
func TestEventSinkWriters(t *testing.T) {
	const writers, events = 4, 20
	var inFlight, created atomic.Int32
	allIn := make(chan struct{})
	var once sync.Once
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if inFlight.Add(1) >= writers {
			once.Do(func() { close(allIn) })
		}
		defer inFlight.Add(-1)
		select {
		case <-allIn:
		case <-time.After(pollTimeout):
			http.Error(w, "writers not in parallel", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		created.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	}))
	defer api.Close()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL, QPS: -1})
	if err != nil {
		t.Fatal(err)
	}
	pod := newPod(nil)
	sink := provider.NewEventSink(client, 64, writers)
	for i := range events {
		sink.Announce(pod, entered("alice", fmt.Sprintf("req-%d", i)), record.OutcomeAdded)
	}
	drain(t, sink) // writes everything at once
	select {
	case <-allIn:
	default:
		t.Errorf("never %d creates in flight at once", writers)
	}
	if n := created.Load(); n != events {
		t.Errorf("%d Events created, want %d", n, events)
	}
}

// TestEventSinkFailure checks that a failed write is counted and does not
// stop the writer.
func TestEventSinkFailure(t *testing.T) {
	pod := newPod(nil)
	cs := fake.NewClientset(pod)
	calls := 0
	cs.PrependReactor("create", "events", func(clienttesting.Action) (bool, runtime.Object, error) {
		calls++
		if calls == 1 {
			return true, nil, apierrors.NewInternalError(errors.New("etcd is sad"))
		}
		return false, nil, nil
	})
	sink := provider.NewEventSink(cs, 8, 1)
	failed := eventCount(t, "failed")
	sink.Announce(pod, entered("alice", "req-1"), record.OutcomeFirst)
	sink.Announce(pod, entered("alice", "req-2"), record.OutcomeAdded)
	drain(t, sink)
	if got := eventCount(t, "failed") - failed; got != 1 {
		t.Errorf("failed counter rose by %v, want 1", got)
	}
	if evs := listEvents(t, cs); len(evs) != 1 || evs[0].Name != wantEventName(pod, "req-2") {
		t.Errorf("Events %+v, want only the second", evs)
	}
}

// TestRecorderAnnounces checks the Recorder's use of the sink: an Event for
// a first or added entry, none for a repeat or a failed write.
func TestRecorderAnnounces(t *testing.T) {
	pod := newPod(nil)
	cs := fake.NewClientset(pod)
	clk := clocktesting.NewFakeClock(t0)
	sink := provider.NewEventSink(cs, 8, 1)
	rec := provider.NewRecorder(cs, clk, sink)

	steps := []struct {
		name    string
		advance time.Duration
		uid     string
		user    string
		want    record.Outcome
	}{
		{name: "first", uid: "req-1", user: "alice", want: record.OutcomeFirst},
		{name: "repeat", advance: time.Second, uid: "req-2", user: "alice", want: record.OutcomeRepeat},
		{name: "added", advance: time.Second, uid: "req-3", user: "bob", want: record.OutcomeAdded},
	}
	for _, s := range steps {
		clk.Step(s.advance)
		req, err := provider.Decode(keyFor(t, execBy(s.user, s.uid, "1h")))
		if err != nil {
			t.Fatal(err)
		}
		res, err := rec.Record(quiet(), req)
		if err != nil || res.Outcome != s.want {
			t.Fatalf("%s: Record = %+v, %v; want outcome %s", s.name, res, err, s.want)
		}
	}
	drain(t, sink)
	names := map[string]bool{}
	for _, ev := range listEvents(t, cs) {
		names[ev.Name] = true
	}
	if len(names) != 2 || !names[wantEventName(pod, "req-1")] || !names[wantEventName(pod, "req-3")] {
		t.Errorf("Events %v, want those of req-1 and req-3", names)
	}
}

package provider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/exec-reaper/exec-reaper/record"
)

// ReasonEntered is the reason of the Event exec-reaper emits on a pod that
// someone entered.
const ReasonEntered = "ExecReaperEntered"

// ReasonTrialEntry is the reason of the Event for an entry recorded by a
// constraint in trial mode: no consequence.
const ReasonTrialEntry = "ExecReaperTrialEntry"

// Component names exec-reaper's provider as the source of its Events.
const Component = "exec-reaper-provider"

// eventTimeout bounds one Event write; Events are best effort.
const eventTimeout = 5 * time.Second

// eventDelay is how long an Event waits before it is written: as long as
// Gatekeeper's default webhook timeout, so that every call of one admission
// (one per matching constraint) has been made and the Event tells the
// admission's final, earliest deadline. The provider may only create Events
// (its RBAC), never update one, so it waits instead.
const eventDelay = 3 * time.Second

// DefaultEventWriters is how many Events are written at once by default.
// Each Event create is a round trip through the API server and, because
// Gatekeeper's webhook reviews Events too, through a Gatekeeper serving slot
// (briefly: no exec-reaper constraint matches Events, so no provider call).
// One writer managed about 5 Events per second under a burst of entries,
// where a round trip took about 200 ms; four keep up with about 20.
const DefaultEventWriters = 4

// EventSink emits Events off the admission path: Announce only queues, a
// dispatcher folds announcements of the same entry into one Event and
// releases each eventDelay after it was first announced, and writers (see
// NewEventSink) create them. Announce never waits: when the queue is full
// (the writers fall behind a burst of entries), the announcement is folded
// into one Event per pod that counts the entries it stands for (Count) and
// names the last of them, written once the pressure allows; every entry is
// in the pod's record either way. Only when that table too is full (more
// pods at once than the queue holds Events) is an announcement dropped:
// counted (exec_reaper_provider_events_total{result="dropped"}) and logged.
type EventSink struct {
	client  kubernetes.Interface
	queue   chan announcement
	delay   time.Duration
	writers int

	mu sync.Mutex
	// folded holds the announcements that found the queue full, one per
	// pod and kind (trial or not), at most cap(queue).
	folded map[foldKey]*foldedEvent
	// dropped counts announcements dropped since the last log line.
	dropped int
}

// foldKey identifies the Event that folds a pod's overflowing announcements.
type foldKey struct {
	pod   types.UID
	trial bool
}

// foldedEvent is what is known of the overflowing announcements of one pod.
type foldedEvent struct {
	first, last announcement
	entries     int32
}

// announcement is what the writer needs to build an Event; building it
// (a hash, a message) is left to the writer, off the admission path.
type announcement struct {
	pod *corev1.Pod
	// entry is what the Event describes; eventUID, the request UID its name
	// is derived from (the entry's, or that of the entry it repeats).
	entry    record.Entry
	eventUID string
	// deadline is when the pod will be (for a trial, would be) evicted.
	deadline time.Time
	trial    bool
	// quarantine says a constraint asked for the pod to be quarantined, not
	// evicted, at the deadline.
	quarantine bool
	// update is set when a repeat moved the deadline earlier or asked for
	// quarantine: this announcement replaces the entry's Event if it is not
	// written yet.
	update bool
}

// NewEventSink returns a sink that holds at most size pending Events and
// writes with the given number of writers (DefaultEventWriters if not
// positive).
func NewEventSink(client kubernetes.Interface, size, writers int) *EventSink {
	if writers <= 0 {
		writers = DefaultEventWriters
	}
	return &EventSink{client: client, queue: make(chan announcement, size), delay: eventDelay, writers: writers,
		folded: map[foldKey]*foldedEvent{}}
}

// Announce queues the Event for rec's last entry, if outcome says it is new.
// A nil sink does nothing.
func (s *EventSink) Announce(pod *corev1.Pod, rec record.Record, outcome record.Outcome) {
	if outcome != record.OutcomeFirst && outcome != record.OutcomeAdded {
		return
	}
	s.announce(announcement{pod: pod, entry: rec.Last, eventUID: rec.Last.RequestUID, deadline: rec.Deadline,
		quarantine: rec.Action == record.ActionQuarantine})
}

// announce queues a, never waiting: when the queue is full, a is folded into
// its pod's counting Event. A nil sink or an empty announcement does nothing.
func (s *EventSink) announce(a announcement) {
	if s == nil || a.pod == nil {
		return
	}
	select {
	case s.queue <- a:
	default:
		s.fold(a)
	}
}

// fold adds a to its pod's counting Event, or drops it (counted) when the
// table of those is full.
func (s *EventSink) fold(a announcement) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := foldKey{a.pod.UID, a.trial}
	f, ok := s.folded[k]
	switch {
	case ok:
		if !a.update { // an update is the same entry, with an earlier deadline
			f.entries++
			f.last = a
		}
		if a.deadline.Before(f.last.deadline) {
			f.last.deadline = a.deadline
		}
		f.last.quarantine = f.last.quarantine || a.quarantine
	case a.update:
		// The entry's own Event is queued already; it keeps the deadline
		// it was announced with.
		eventsTotal.WithLabelValues("duplicate").Inc()
		return
	case len(s.folded) < cap(s.queue):
		s.folded[k] = &foldedEvent{first: a, last: a, entries: 1}
	default:
		s.dropped++
		eventsTotal.WithLabelValues("dropped").Inc()
		return
	}
	eventsTotal.WithLabelValues("folded").Inc()
}

// takeFolded returns the counting Events gathered so far, and forgets them.
func (s *EventSink) takeFolded(ctx context.Context) []*corev1.Event {
	s.mu.Lock()
	folded, dropped := s.folded, s.dropped
	s.folded, s.dropped = map[foldKey]*foldedEvent{}, 0
	s.mu.Unlock()
	if dropped > 0 {
		klog.FromContext(ctx).Info("Dropped Events about entries: more pods were entered at once than the event queue holds; "+
			"every entry is in its pod's record; raise --event-queue or --event-writers", "dropped", dropped, "queue", cap(s.queue))
	}
	evs := make([]*corev1.Event, 0, len(folded))
	for _, f := range folded {
		evs = append(evs, buildFoldedEvent(f))
	}
	return evs
}

// Run writes queued Events until ctx is done, then writes what is still
// queued, waiting or folded, each bounded by eventTimeout.
func (s *EventSink) Run(ctx context.Context) {
	// The writers outlive ctx, to write what is left.
	wctx := context.WithoutCancel(ctx)
	work := make(chan *corev1.Event, s.writers)
	var wg sync.WaitGroup
	for range s.writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range work {
				s.write(wctx, ev)
			}
		}()
	}
	defer func() { close(work); wg.Wait() }()
	w := &eventWriter{sink: s, pending: map[string]*pendingEvent{}, limit: cap(s.queue), work: work}
	// Folded Events gather for a delay, as other Events wait for theirs.
	tick := time.NewTicker(s.delay)
	defer tick.Stop()
	for {
		var wake <-chan time.Time
		if len(w.order) > 0 {
			wake = time.After(time.Until(w.pending[w.order[0]].due))
		}
		select {
		case a := <-s.queue:
			w.add(a)
		case <-wake:
			w.writeDue(time.Now())
		case <-tick.C:
			w.addFolded(ctx)
		case <-ctx.Done():
			for {
				select {
				case a := <-s.queue:
					w.add(a)
				default:
					w.addFolded(wctx)
					w.writeDue(time.Time{}) // everything
					return
				}
			}
		}
	}
}

// eventWriter holds the Events waiting to be written, by name, oldest first.
type eventWriter struct {
	sink    *EventSink
	pending map[string]*pendingEvent
	order   []string
	limit   int
	work    chan<- *corev1.Event
}

type pendingEvent struct {
	ev  *corev1.Event
	due time.Time
}

// add folds a into the waiting Events.
func (w *eventWriter) add(a announcement) {
	w.addEvent(buildEvent(a), a.update, time.Now().Add(w.sink.delay))
}

// addEvent adds ev, due at due, to the waiting Events; if one of that name
// waits already, ev replaces it only if replace.
func (w *eventWriter) addEvent(ev *corev1.Event, replace bool, due time.Time) {
	if p, ok := w.pending[ev.Name]; ok {
		if replace {
			p.ev = ev // the same entry, with an earlier deadline
		}
		eventsTotal.WithLabelValues("duplicate").Inc()
		return
	}
	if len(w.order) >= w.limit {
		w.writeOne() // never hold more than the queue may
	}
	w.pending[ev.Name] = &pendingEvent{ev: ev, due: due}
	w.order = append(w.order, ev.Name)
}

// addFolded adds the folded Events gathered so far, due at once.
func (w *eventWriter) addFolded(ctx context.Context) {
	now := time.Now()
	for _, ev := range w.sink.takeFolded(ctx) {
		w.addEvent(ev, true, now)
	}
}

// writeDue hands the Events due at now to the writers; all of them if now is
// zero.
func (w *eventWriter) writeDue(now time.Time) {
	for len(w.order) > 0 && (now.IsZero() || !w.pending[w.order[0]].due.After(now)) {
		w.writeOne()
	}
}

// writeOne hands the oldest waiting Event to the writers, waiting for one to
// be free: meanwhile the queue fills, and what overflows it is folded.
func (w *eventWriter) writeOne() {
	name := w.order[0]
	w.order = w.order[1:]
	p := w.pending[name]
	delete(w.pending, name)
	w.work <- p.ev
}

func (s *EventSink) write(ctx context.Context, ev *corev1.Event) {
	ctx, cancel := context.WithTimeout(ctx, eventTimeout)
	defer cancel()
	_, err := s.client.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
	switch {
	case err == nil:
		eventsTotal.WithLabelValues("created").Inc()
	case apierrors.IsAlreadyExists(err):
		// Another replica, or a retry, announced the same entry.
		eventsTotal.WithLabelValues("duplicate").Inc()
	default:
		eventsTotal.WithLabelValues("failed").Inc()
		klog.FromContext(ctx).Error(err, "Creating event", "pod", klog.KRef(ev.Namespace, ev.InvolvedObject.Name), "reason", ev.Reason)
	}
}

// maxMessageBytes bounds an Event's message; what a requester controls in it
// is cut well before.
const maxMessageBytes = 1024

// buildEvent builds the Event for a. Its name is derived from the pod's UID
// and the request UID, so announcing the same entry twice creates one Event;
// a trial entry's Event has a name of its own.
func buildEvent(a announcement) *corev1.Event {
	pod, e := a.pod, a.entry
	seed, infix, reason, typ := string(pod.UID)+"/"+a.eventUID, ".exec-reaper.", ReasonEntered, corev1.EventTypeWarning
	if a.trial {
		seed, infix, reason, typ = string(pod.UID)+"/trial/"+a.eventUID, ".exec-reaper-trial.", ReasonTrialEntry, corev1.EventTypeNormal
	}
	what := string(e.Operation)
	if e.Container != "" {
		what += " into container " + truncate(e.Container, 64)
	}
	if len(e.Command) > 0 {
		what += fmt.Sprintf(" (command: %s)", truncate(strings.Join(e.Command, " "), 200))
	}
	who, when, deadline := truncate(e.User, 256), e.Time.UTC().Format(time.RFC3339), a.deadline.UTC().Format(time.RFC3339)
	msg := fmt.Sprintf("%s entered this pod by %s at %s; exec-reaper will evict it at %s", who, what, when, deadline)
	if a.quarantine {
		msg = fmt.Sprintf("%s entered this pod by %s at %s; exec-reaper will quarantine it at %s (take it out of service and keep it for forensics), as a constraint asked", who, what, when, deadline)
	}
	if a.trial {
		removal := "evicted"
		if a.quarantine {
			removal = "quarantined"
		}
		msg = fmt.Sprintf("%s entered this pod by %s at %s; it would be %s at %s; this constraint is in trial mode, nothing will happen", who, what, when, removal, deadline)
	}
	now := metav1.NewTime(e.Time)
	return &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      eventName(pod, infix, seed),
			Namespace: pod.Namespace,
		},
		InvolvedObject: corev1.ObjectReference{
			Kind:            "Pod",
			APIVersion:      "v1",
			Namespace:       pod.Namespace,
			Name:            pod.Name,
			UID:             pod.UID,
			ResourceVersion: pod.ResourceVersion,
		},
		Reason:              reason,
		Message:             truncate(msg, maxMessageBytes),
		Type:                typ,
		Source:              corev1.EventSource{Component: Component},
		ReportingController: "exec-reaper.io/provider",
		ReportingInstance:   Component,
		Action:              string(e.Operation),
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
	}
}

// eventName returns the name of the Event about pod with the given infix,
// derived from seed.
func eventName(pod *corev1.Pod, infix, seed string) string {
	sum := sha256.Sum256([]byte(seed))
	name := pod.Name
	if len(name) > 200 {
		// Cut, the name must still end in an alphanumeric to stay valid.
		name = strings.TrimRight(name[:200], ".-")
	}
	return name + infix + hex.EncodeToString(sum[:8])
}

// FoldedEventInfix is in the name of every Event that folds several entries
// into one pod (and of no other ReasonEntered Event).
const FoldedEventInfix = ".exec-reaper-folded."

// buildFoldedEvent builds the Event that stands for f's entries: the Event
// of the last of them, counting them all, named after the first (so a
// replica that folds the same entries names it the same).
func buildFoldedEvent(f *foldedEvent) *corev1.Event {
	ev := buildEvent(f.last)
	pod, seed, infix := f.first.pod, string(f.first.pod.UID)+"/folded/"+f.first.eventUID, FoldedEventInfix
	if f.first.trial {
		seed, infix = string(pod.UID)+"/trial-folded/"+f.first.eventUID, ".exec-reaper-trial-folded."
	}
	ev.Name = eventName(pod, infix, seed)
	ev.Count = f.entries
	ev.FirstTimestamp = metav1.NewTime(f.first.entry.Time)
	ev.Message = truncate(fmt.Sprintf("%d entries into this pod came too fast for an Event each (each is in the pod's record); the last: %s",
		f.entries, ev.Message), maxMessageBytes)
	return ev
}

// truncate cuts s to at most n bytes, on a character boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

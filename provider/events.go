package provider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// EventSink emits Events off the admission path: Announce only queues, and a
// single goroutine writes, each Event eventDelay after it was first
// announced, announcements of the same entry folded into one. When the queue
// is full an Event is dropped and counted, never waited for: the record on
// the pod is what matters, and it is already written.
type EventSink struct {
	client kubernetes.Interface
	queue  chan announcement
	delay  time.Duration
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
	// update is set when a repeat moved the deadline earlier: this
	// announcement replaces the entry's Event if it is not written yet.
	update bool
}

// NewEventSink returns a sink that holds at most size pending Events.
func NewEventSink(client kubernetes.Interface, size int) *EventSink {
	return &EventSink{client: client, queue: make(chan announcement, size), delay: eventDelay}
}

// Announce queues the Event for rec's last entry, if outcome says it is new.
// A nil sink does nothing.
func (s *EventSink) Announce(pod *corev1.Pod, rec record.Record, outcome record.Outcome) {
	if outcome != record.OutcomeFirst && outcome != record.OutcomeAdded {
		return
	}
	s.announce(announcement{pod: pod, entry: rec.Last, eventUID: rec.Last.RequestUID, deadline: rec.Deadline})
}

// announce queues a, never waiting. A nil sink or an empty announcement does
// nothing.
func (s *EventSink) announce(a announcement) {
	if s == nil || a.pod == nil {
		return
	}
	select {
	case s.queue <- a:
	default:
		eventsTotal.WithLabelValues("dropped").Inc()
	}
}

// Run writes queued Events until ctx is done, then writes what is still
// queued or waiting, each bounded by eventTimeout.
func (s *EventSink) Run(ctx context.Context) {
	w := &eventWriter{sink: s, pending: map[string]*pendingEvent{}, limit: cap(s.queue)}
	for {
		var wake <-chan time.Time
		if len(w.order) > 0 {
			wake = time.After(time.Until(w.pending[w.order[0]].due))
		}
		select {
		case a := <-s.queue:
			w.add(ctx, a)
		case <-wake:
			w.writeDue(ctx, time.Now())
		case <-ctx.Done():
			ctx = context.WithoutCancel(ctx)
			for {
				select {
				case a := <-s.queue:
					w.add(ctx, a)
				default:
					w.writeDue(ctx, time.Time{}) // everything
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
}

type pendingEvent struct {
	ev  *corev1.Event
	due time.Time
}

// add folds a into the waiting Events.
func (w *eventWriter) add(ctx context.Context, a announcement) {
	ev := buildEvent(a)
	if p, ok := w.pending[ev.Name]; ok {
		if a.update {
			p.ev = ev // the same entry, with an earlier deadline
		}
		eventsTotal.WithLabelValues("duplicate").Inc()
		return
	}
	if len(w.order) >= w.limit {
		w.writeOne(ctx) // never hold more than the queue may
	}
	w.pending[ev.Name] = &pendingEvent{ev: ev, due: time.Now().Add(w.sink.delay)}
	w.order = append(w.order, ev.Name)
}

// writeDue writes the Events due at now; all of them if now is zero.
func (w *eventWriter) writeDue(ctx context.Context, now time.Time) {
	for len(w.order) > 0 && (now.IsZero() || !w.pending[w.order[0]].due.After(now)) {
		w.writeOne(ctx)
	}
}

// writeOne writes the oldest waiting Event.
func (w *eventWriter) writeOne(ctx context.Context) {
	name := w.order[0]
	w.order = w.order[1:]
	p := w.pending[name]
	delete(w.pending, name)
	w.sink.write(ctx, p.ev)
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
	sum := sha256.Sum256([]byte(seed))
	name := pod.Name
	if len(name) > 200 {
		// Cut, the name must still end in an alphanumeric to stay valid.
		name = strings.TrimRight(name[:200], ".-")
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
	if a.trial {
		msg = fmt.Sprintf("%s entered this pod by %s at %s; it would be evicted at %s; this constraint is in trial mode, nothing will happen", who, what, when, deadline)
	}
	now := metav1.NewTime(e.Time)
	return &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name + infix + hex.EncodeToString(sum[:8]),
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

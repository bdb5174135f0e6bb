package provider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

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

// Component names exec-reaper's provider as the source of its Events.
const Component = "exec-reaper-provider"

// eventTimeout bounds one Event write; Events are best effort.
const eventTimeout = 5 * time.Second

// EventSink emits Events off the admission path: Announce only queues, and a
// single goroutine writes. When the queue is full an Event is dropped and
// counted, never waited for: the record on the pod is what matters, and it is
// already written.
type EventSink struct {
	client kubernetes.Interface
	queue  chan announcement
}

// announcement is what the writer needs to build an Event; building it
// (a hash, a message) is left to the writer, off the admission path.
type announcement struct {
	pod *corev1.Pod
	rec record.Record
}

// NewEventSink returns a sink that holds at most size pending Events.
func NewEventSink(client kubernetes.Interface, size int) *EventSink {
	return &EventSink{client: client, queue: make(chan announcement, size)}
}

// Announce queues the Event for a new entry. A nil sink does nothing.
func (s *EventSink) Announce(pod *corev1.Pod, rec record.Record, outcome record.Outcome) {
	if s == nil || outcome == record.OutcomeRepeat {
		return
	}
	select {
	case s.queue <- announcement{pod, rec}:
	default:
		eventsTotal.WithLabelValues("dropped").Inc()
	}
}

// Run writes queued Events until ctx is done, then writes what is still
// queued, each bounded by eventTimeout.
func (s *EventSink) Run(ctx context.Context) {
	for {
		select {
		case a := <-s.queue:
			s.write(ctx, enteredEvent(a.pod, a.rec))
		case <-ctx.Done():
			for {
				select {
				case a := <-s.queue:
					s.write(context.WithoutCancel(ctx), enteredEvent(a.pod, a.rec))
				default:
					return
				}
			}
		}
	}
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
		klog.FromContext(ctx).Error(err, "Creating event", "pod", klog.KRef(ev.Namespace, ev.InvolvedObject.Name))
	}
}

// enteredEvent builds the Event for rec's last entry. Its name is derived from
// the pod's UID and the entry's request UID, so announcing the same entry
// twice creates one Event.
func enteredEvent(pod *corev1.Pod, rec record.Record) *corev1.Event {
	e := rec.Last
	sum := sha256.Sum256([]byte(string(pod.UID) + "/" + e.RequestUID))
	name := pod.Name
	if len(name) > 200 {
		// Cut, the name must still end in an alphanumeric to stay valid.
		name = strings.TrimRight(name[:200], ".-")
	}
	what := string(e.Operation)
	if e.Container != "" {
		what += " into container " + e.Container
	}
	if len(e.Command) > 0 {
		what += fmt.Sprintf(" (command: %s)", truncate(strings.Join(e.Command, " "), 200))
	}
	msg := fmt.Sprintf("%s entered this pod by %s at %s; exec-reaper will evict it at %s",
		e.User, what, e.Time.UTC().Format(time.RFC3339), rec.Deadline.UTC().Format(time.RFC3339))
	now := metav1.NewTime(e.Time)
	return &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name + ".exec-reaper." + hex.EncodeToString(sum[:8]),
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
		Reason:              ReasonEntered,
		Message:             msg,
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: Component},
		ReportingController: "exec-reaper.io/provider",
		ReportingInstance:   Component,
		Action:              string(e.Operation),
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

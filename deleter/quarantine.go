package deleter

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/record"
)

// QuarantinePrefix is the prefix of the keys quarantine writes. It is not
// under record.Prefix on purpose: the record guard lets no one but the
// provider touch exec-reaper.io/ keys, and the deleter is not the provider.
const QuarantinePrefix = "quarantine.exec-reaper.io/"

const (
	// QuarantineLabel replaces a quarantined pod's own labels, so that its
	// controller releases it (and starts a replacement) and no Service
	// selects it; its value is the pod's UID, which the NetworkPolicy selects.
	QuarantineLabel = QuarantinePrefix + "pod"
	// QuarantineAnnotation holds the JSON of a Quarantine.
	QuarantineAnnotation = QuarantinePrefix + "quarantine"
	// ReasonQuarantined is the Event reason of a quarantined pod.
	ReasonQuarantined = "ExecReaperQuarantined"
)

// Quarantine is what the deleter records on a pod it takes out of service.
// Who entered it, and how, is in the record's own annotations.
type Quarantine struct {
	// At is when the pod was quarantined; Until when it is deleted.
	At, Until time.Time
	// Deadline is the record's deadline that passed.
	Deadline time.Time
	// Labels are the pod's labels before quarantine (exec-reaper.io/ ones
	// stay on the pod).
	Labels map[string]string `json:",omitempty"`
	// NetworkPolicy names the policy that isolates the pod.
	NetworkPolicy string
}

// ReadQuarantine reads the quarantine record from a pod's annotations; ok
// is false if there is none (or it cannot be read: then the pod is
// quarantined again, which is idempotent).
func ReadQuarantine(annotations map[string]string) (Quarantine, bool) {
	var q Quarantine
	v, ok := annotations[QuarantineAnnotation]
	if !ok || json.Unmarshal([]byte(v), &q) != nil || q.Until.IsZero() {
		return Quarantine{}, false
	}
	return q, true
}

// quarantined reads pod's quarantine record, and reports it only if the pod
// is out of service as quarantine leaves it: QuarantineLabel set to its UID
// and no label of its own left (the record's labels stay).
func quarantined(pod *corev1.Pod) (Quarantine, bool) {
	q, ok := ReadQuarantine(pod.Annotations)
	if !ok || pod.Labels[QuarantineLabel] != string(pod.UID) {
		return Quarantine{}, false
	}
	for k := range pod.Labels {
		if k != QuarantineLabel && !strings.HasPrefix(k, record.Prefix) {
			return Quarantine{}, false
		}
	}
	return q, true
}

// Quarantiner takes an entered pod out of service instead of evicting it and
// keeps it for Retention, for forensics: it relabels the pod (its controller
// releases it and starts a replacement at once; no Service selects it),
// isolates it with a NetworkPolicy denying all ingress and egress, records
// what it did in an annotation, and deletes the pod when Retention ends.
// NetworkPolicy takes effect only where the network plugin enforces it.
type Quarantiner struct {
	// Client reads and patches the pod, creates the NetworkPolicy and deletes
	// the pod at the end.
	Client API
	// Recorder reports on the pod.
	Recorder EventRecorder
	// Clock tells the time.
	Clock clock.PassiveClock
	// Retention is how long a quarantined pod is kept.
	Retention time.Duration
}

// Name implements Action.
func (*Quarantiner) Name() string { return "quarantine" }

// Act implements Action.
//
// It reads the pod first, every time: the quarantine annotation alone proves
// nothing, since anyone who may patch the pod can write it (the record guard
// protects exec-reaper.io/ keys only). Only a pod also out of service (see
// quarantined) is retained; any other is quarantined now, which replaces a
// forged annotation with the deleter's own.
func (a *Quarantiner) Act(ctx context.Context, t Target) (Result, error) {
	// Up to three calls (read, isolate, relabel; or read and delete), each
	// bounded as one eviction is, so a slow API server cannot hold a worker.
	ctx, cancel := context.WithTimeout(ctx, 3*evictTimeout)
	defer cancel()
	pod, err := a.Client.GetPod(ctx, t.Namespace, t.Name)
	switch {
	case apierrors.IsNotFound(err):
		return Result{}, nil
	case err != nil:
		return Result{}, fmt.Errorf("reading %s/%s to quarantine it: %w", t.Namespace, t.Name, err)
	case pod.UID != t.UID:
		evictionsTotal.WithLabelValues("other_pod").Inc()
		return Result{}, nil
	}
	if q, done := quarantined(pod); done {
		return a.retain(ctx, t, q)
	}
	if why := replacementBlocked(pod); why != "" {
		return Result{}, &quarantineNotPossibleError{why: why + ", so quarantine would take the replica down until the retention ends"}
	}
	now := a.Clock.Now()
	q := Quarantine{At: now.UTC().Truncate(time.Second), Until: now.Add(a.Retention).UTC().Truncate(time.Second),
		Deadline: t.Deadline.UTC(), Labels: map[string]string{}, NetworkPolicy: quarantinePolicyName(pod.Name)}
	// The policy first: once the label is set, the pod is isolated.
	if err := a.isolate(ctx, pod, q.NetworkPolicy); err != nil {
		return Result{}, err
	}
	labels := map[string]any{QuarantineLabel: string(pod.UID)}
	for k, v := range pod.Labels {
		if !strings.HasPrefix(k, record.Prefix) {
			q.Labels[k] = v
			labels[k] = nil
		}
	}
	qJSON, err := json.Marshal(q)
	if err != nil {
		return Result{}, fmt.Errorf("encoding the quarantine record: %w", err)
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		// The resourceVersion makes the patch fail if the pod changed since
		// it was read, so no label added meanwhile is left behind.
		"uid": pod.UID, "resourceVersion": pod.ResourceVersion,
		"labels": labels, "annotations": map[string]any{QuarantineAnnotation: string(qJSON)},
	}})
	if err != nil {
		return Result{}, fmt.Errorf("encoding the quarantine patch: %w", err)
	}
	err = a.Client.PatchPod(ctx, t.Namespace, t.Name, types.MergePatchType, patch)
	switch {
	case apierrors.IsNotFound(err):
		return Result{}, nil
	case refused(err):
		// E.g. a policy that requires labels on every pod: the relabel can
		// never succeed. The NetworkPolicy selects a label the pod never
		// got and goes with the pod (its owner).
		return Result{}, &quarantineNotPossibleError{why: fmt.Sprintf("the API server refused to relabel it (%v)", err)}
	case err != nil:
		evictionsTotal.WithLabelValues("error").Inc()
		return Result{}, fmt.Errorf("relabelling %s/%s to quarantine it: %w", t.Namespace, t.Name, err)
	}
	evictionsTotal.WithLabelValues("quarantined").Inc()
	a.Recorder.Eventf(t.Object, nil, corev1.EventTypeWarning, ReasonQuarantined, "Quarantine",
		"exec-reaper quarantined this pod: %s. Its labels were replaced by %s=%s (the old ones are in annotation %s), so its controller starts a replacement and no Service selects it; NetworkPolicy %s denies all its traffic where the network plugin enforces NetworkPolicy; it is deleted at %s%s",
		recordReason(t.Deadline), QuarantineLabel, pod.UID, QuarantineAnnotation, q.NetworkPolicy, q.Until.Format(time.RFC3339), forcedNote(t.Forced))
	klog.FromContext(ctx).Info("Quarantined", "deadline", t.Deadline, "until", q.Until)
	return Result{Taken: true, After: q.Until.Sub(now)}, nil
}

// quarantineNotPossibleError is a pod that quarantine would take out of
// service until its retention ends, because its controller cannot run its
// replacement beside it, or that the API server will not let the deleter
// quarantine. The controller evicts such a pod instead.
type quarantineNotPossibleError struct{ why string }

func (e *quarantineNotPossibleError) Error() string {
	return "the pod cannot be quarantined: " + e.why
}

// replacementBlocked says why pod's controller could not run a replacement
// while the quarantined pod keeps running, or "" if it can:
//   - a StatefulSet's replacement needs the pod's name (and its volumes);
//   - a DaemonSet's replacement goes on the same node, where the pod holds
//     its host ports (the scheduler will not place the replacement) or,
//     on the host's network, every port it listens on (the replacement
//     would fail to bind them).
//
// Ports of init containers count too: a sidecar's do, and for the others
// evicting instead of quarantining is the safe mistake.
func replacementBlocked(pod *corev1.Pod) string {
	ref := metav1.GetControllerOfNoCopy(pod)
	if ref == nil {
		return ""
	}
	switch groupKind(*ref) {
	case "apps/StatefulSet":
		return "it belongs to a StatefulSet, which cannot start its replacement while the pod keeps its name and volumes"
	case "apps/DaemonSet":
		if pod.Spec.HostNetwork {
			return "it belongs to a DaemonSet and uses the host's network, so its replacement on the same node could not listen on the ports the pod holds"
		}
		for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
			for _, c := range cs {
				for _, p := range c.Ports {
					if p.HostPort != 0 {
						return fmt.Sprintf("it belongs to a DaemonSet and holds host port %d (container %s), so its replacement on the same node cannot be scheduled",
							p.HostPort, c.Name)
					}
				}
			}
		}
	}
	return ""
}

// isolate creates the NetworkPolicy that denies all of pod's traffic once it
// carries QuarantineLabel. The pod owns it, so it goes with the pod.
func (a *Quarantiner) isolate(ctx context.Context, pod *corev1.Pod, name string) error {
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: pod.Namespace,
			Labels:          map[string]string{QuarantineLabel: string(pod.UID)},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}}},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{QuarantineLabel: string(pod.UID)}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		},
	}
	err := a.Client.CreateNetworkPolicy(ctx, np)
	switch {
	case err == nil, apierrors.IsAlreadyExists(err):
		return nil
	case refused(err):
		return &quarantineNotPossibleError{why: fmt.Sprintf("the API server refused the NetworkPolicy that would isolate it (%v)", err)}
	}
	return fmt.Errorf("creating NetworkPolicy %s/%s to isolate the pod: %w", pod.Namespace, name, err)
}

// refused says whether err is the API server turning a request down for
// good (RBAC, an admission policy or webhook, validation), which no retry of
// the same request mends; a quarantine so refused becomes an eviction, or
// the pod would stay in service past its deadline.
func refused(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err)
}

// retain waits for the end of q's retention, then deletes the pod.
func (a *Quarantiner) retain(ctx context.Context, t Target, q Quarantine) (Result, error) {
	if left := q.Until.Sub(a.Clock.Now()); left > 0 {
		return Result{After: left}, nil
	}
	err := a.Client.DeletePod(ctx, t.Namespace, t.Name, t.UID)
	switch {
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		return Result{}, nil
	case err != nil:
		return Result{}, fmt.Errorf("deleting %s/%s at the end of its quarantine: %w", t.Namespace, t.Name, err)
	}
	evictionsTotal.WithLabelValues("quarantine_ended").Inc()
	a.Recorder.Eventf(t.Object, nil, corev1.EventTypeNormal, ReasonDeleted, "Delete",
		"exec-reaper deleted this pod: its quarantine (since %s) ended at %s", q.At.Format(time.RFC3339), q.Until.Format(time.RFC3339))
	return Result{}, nil
}

// quarantinePolicyName names a pod's NetworkPolicy within the 253 characters
// of an object name.
func quarantinePolicyName(pod string) string {
	const prefix = "exec-reaper-quarantine-"
	if len(prefix)+len(pod) > 253 {
		pod = pod[:253-len(prefix)]
	}
	return prefix + pod
}

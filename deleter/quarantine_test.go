package deleter

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/exec-reaper/exec-reaper/internal/kubetest"
	"github.com/exec-reaper/exec-reaper/record"
)

func TestQuarantine(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_900_000_000, 0).UTC()
	clk := clocktesting.NewFakeClock(now)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "ns", UID: "uid-web", ResourceVersion: "7",
		Labels: map[string]string{"app": "web", "pod-template-hash": "6f9", record.DeadlineLabel: "1899999990", record.PodUIDLabel: "uid-web"}}}
	client := fake.NewClientset(pod)
	rec := &notes{}
	a := &Quarantiner{Client: kubetest.API{Interface: client}, Recorder: rec, Clock: clk, Retention: time.Hour}
	target := Target{Object: pod.DeepCopy(), Namespace: "ns", Name: "web-1", UID: "uid-web", Deadline: now.Add(-10 * time.Second), Kind: KindReplicated}

	res, err := a.Act(ctx, target)
	if err != nil || !res.Taken || res.After != time.Hour {
		t.Fatalf("quarantine: %+v, %v; want taken, back in an hour", res, err)
	}
	got, err := client.CoreV1().Pods("ns").Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantLabels := map[string]string{QuarantineLabel: "uid-web", record.DeadlineLabel: "1899999990", record.PodUIDLabel: "uid-web"}
	if len(got.Labels) != len(wantLabels) {
		t.Errorf("labels = %v, want %v (the record kept, the pod's own labels gone)", got.Labels, wantLabels)
	}
	for k, v := range wantLabels {
		if got.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, got.Labels[k], v)
		}
	}
	q, ok := ReadQuarantine(got.Annotations)
	if !ok || q.Labels["app"] != "web" || !q.Until.Equal(now.Add(time.Hour)) || !q.Deadline.Equal(target.Deadline) {
		t.Errorf("quarantine annotation = %+v (ok %v), want the old labels and the end of retention", q, ok)
	}
	np, err := client.NetworkingV1().NetworkPolicies("ns").Get(ctx, q.NetworkPolicy, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("NetworkPolicy: %v", err)
	}
	if np.Spec.PodSelector.MatchLabels[QuarantineLabel] != "uid-web" || len(np.Spec.PolicyTypes) != 2 ||
		len(np.Spec.Ingress) != 0 || len(np.Spec.Egress) != 0 || np.OwnerReferences[0].UID != "uid-web" {
		t.Errorf("NetworkPolicy = %+v, want deny-all ingress and egress for the pod, owned by it", np)
	}
	if len(rec.lines) != 1 || !strings.Contains(rec.lines[0], ReasonQuarantined) || !strings.Contains(rec.lines[0], "where the network plugin enforces") {
		t.Errorf("events = %q, want one Quarantined, honest about enforcement", rec.lines)
	}

	// The cache now shows the quarantine: wait for its end, then delete.
	target.Object = got
	if res, err := a.Act(ctx, target); err != nil || res.Taken || res.After != time.Hour {
		t.Fatalf("during retention: %+v, %v; want to come back at its end", res, err)
	}
	clk.Step(time.Hour)
	if res, err := a.Act(ctx, target); err != nil || res.After != 0 {
		t.Fatalf("at the end of retention: %+v, %v; want done", res, err)
	}
	if _, err := client.CoreV1().Pods("ns").Get(ctx, "web-1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("pod after retention: %v, want deleted", err)
	}
}

func TestQuarantineOtherPod(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "ns", UID: "uid-new"}}
	client := fake.NewClientset(pod)
	a := &Quarantiner{Client: kubetest.API{Interface: client}, Recorder: &notes{}, Clock: clocktesting.NewFakeClock(time.Now()), Retention: time.Hour}
	res, err := a.Act(context.Background(), Target{Namespace: "ns", Name: "web-1", UID: "uid-old"})
	if err != nil || res.Taken {
		t.Fatalf("%+v, %v; want nothing done", res, err)
	}
	if nps, _ := client.NetworkingV1().NetworkPolicies("ns").List(context.Background(), metav1.ListOptions{}); len(nps.Items) != 0 {
		t.Errorf("NetworkPolicies = %v, want none for a pod no one entered", nps.Items)
	}
}

// TestQuarantineForgedRecord: anyone who may patch a pod can write the
// quarantine annotation (the record guard protects exec-reaper.io/ keys
// only). A pod that carries one but was never taken out of service (its own
// labels still on it) is quarantined for real when due, with a retention
// of the deleter's choosing, not kept until the forged end.
func TestQuarantineForgedRecord(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_900_000_000, 0).UTC()
	clk := clocktesting.NewFakeClock(now)
	forged := `{"At":"2030-03-17T17:46:30Z","Until":"2099-01-01T00:00:00Z","Deadline":"2030-03-17T17:46:30Z","NetworkPolicy":"none"}`
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "ns", UID: "uid-web", ResourceVersion: "7",
		Labels:      map[string]string{"app": "web", record.DeadlineLabel: "1899999990", record.PodUIDLabel: "uid-web"},
		Annotations: map[string]string{QuarantineAnnotation: forged}}}
	client := fake.NewClientset(pod)
	a := &Quarantiner{Client: kubetest.API{Interface: client}, Recorder: &notes{}, Clock: clk, Retention: time.Hour}
	target := Target{Object: pod.DeepCopy(), Namespace: "ns", Name: "web-1", UID: "uid-web", Deadline: now.Add(-10 * time.Second), Kind: KindReplicated}

	res, err := a.Act(ctx, target)
	if err != nil || !res.Taken || res.After != time.Hour {
		t.Fatalf("quarantine of a pod with a forged record: %+v, %v; want taken, back in an hour", res, err)
	}
	got, err := client.CoreV1().Pods("ns").Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, kept := got.Labels["app"]; kept || got.Labels[QuarantineLabel] != "uid-web" {
		t.Errorf("labels = %v, want the pod's own labels replaced by %s", got.Labels, QuarantineLabel)
	}
	q, ok := ReadQuarantine(got.Annotations)
	if !ok || !q.Until.Equal(now.Add(time.Hour)) || q.Labels["app"] != "web" {
		t.Errorf("quarantine annotation = %+v (ok %v), want the deleter's own, ending in an hour", q, ok)
	}
	if _, err := client.NetworkingV1().NetworkPolicies("ns").Get(ctx, q.NetworkPolicy, metav1.GetOptions{}); err != nil {
		t.Errorf("NetworkPolicy: %v", err)
	}
}

// slowAPI is an API whose reads and writes each take delay, and whose pod
// patch never answers: it waits for its context to end.
type slowAPI struct {
	API
	pod   *corev1.Pod
	delay time.Duration
	calls []string
}

func (s *slowAPI) wait(ctx context.Context, call string) error {
	s.calls = append(s.calls, call)
	select {
	case <-time.After(s.delay):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *slowAPI) GetPod(ctx context.Context, _, _ string) (*corev1.Pod, error) {
	if err := s.wait(ctx, "get"); err != nil {
		return nil, err
	}
	return s.pod.DeepCopy(), nil
}

func (s *slowAPI) CreateNetworkPolicy(ctx context.Context, _ *networkingv1.NetworkPolicy) error {
	return s.wait(ctx, "isolate")
}

func (s *slowAPI) PatchPod(ctx context.Context, _, _ string, _ types.PatchType, _ []byte) error {
	s.calls = append(s.calls, "relabel")
	<-ctx.Done()
	return ctx.Err()
}

// TestQuarantineBoundedByItsTimeout: a slow API server cannot hold a worker
// for longer than the quarantine's three calls are allowed together (three
// evictions' time, 90 s), however that time is spread over them: the read and
// the isolation take 40 s each, the relabel never answers, and Act returns
// its error 90 s after it began, not later. (testing/synctest: the clock is
// the bubble's, so the test takes no real time.)
func TestQuarantineBoundedByItsTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "ns", UID: "uid-web", ResourceVersion: "7",
			Labels: map[string]string{"app": "web"}}}
		api := &slowAPI{pod: pod, delay: 40 * time.Second}
		a := &Quarantiner{Client: api, Recorder: &notes{}, Clock: clock.RealClock{}, Retention: time.Hour}
		start := time.Now()
		res, err := a.Act(context.Background(), Target{Object: pod, Namespace: "ns", Name: "web-1", UID: "uid-web", Deadline: start, Kind: KindReplicated})
		took := time.Since(start)
		if err == nil || res.Taken || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Act = %+v, %v; want the relabel's deadline exceeded", res, err)
		}
		if want := 3 * evictTimeout; took != want {
			t.Errorf("Act returned after %s, want %s (the three calls' shared bound)", took, want)
		}
		if got := strings.Join(api.calls, ","); got != "get,isolate,relabel" {
			t.Errorf("calls %s, want get,isolate,relabel", got)
		}
	})
}

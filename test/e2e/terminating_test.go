//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/test/cluster"
	"github.com/exec-reaper/exec-reaper/test/fixture"
)

// terminatingGrace is the grace period the pod of TestEntryIntoATerminatingPod
// is deleted with: longer than the suite's ttl plus the deleter's minute of
// slack, short enough that the test can wait for its end.
const terminatingGrace = 75 * time.Second

// TestEntryIntoATerminatingPod: a pod deleted with a long grace period (the
// API server accepts any, from whoever may delete the pod), whose container
// ignores SIGTERM and so runs all of it, is entered while it terminates. The
// entry is recorded before it is admitted (before, the provider took the
// termination for the pod going and wrote nothing). Nothing makes such a pod
// go sooner, so at the deadline the deleter says so in a Warning and counts
// the pod overdue, and the pod goes when its grace period ends, not before.
func TestEntryIntoATerminatingPod(t *testing.T) {
	ns := namespace(t, "e2e-terminating")
	spec := corev1.PodSpec{
		Containers: []corev1.Container{{
			Name: "app", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"sh", "-c", `trap '' TERM; while true; do sleep 1; done`},
		}},
		TerminationGracePeriodSeconds: ptr.To(int64(terminatingGrace / time.Second)),
	}
	pod := nodePod(t, ns, "stubborn", nil, &spec)
	ctx := context.Background()
	w, err := fixture.WatchPod(ctx, c.Client(), pod, "app")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)

	deleted := time.Now()
	if err := c.Client().CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Until(ctx, podTimeout, fixture.Marked); err != nil {
		t.Fatalf("the delete: %v", err)
	}

	// alice enters it while it terminates.
	kubectlExec(t, aliceKubeconfig, pod, "true")
	rec := waitRecord(t, pod)
	if rec.PodUID != pod.UID || rec.First.User != alice {
		t.Fatalf("record %+v, want alice's entry bound to %s", rec, pod.UID)
	}
	evs := waitEvents(t, pod, "ExecReaperTerminationOutlivesDeadline", 1)
	if evs[0].Type != corev1.EventTypeWarning || !strings.Contains(evs[0].Message, "it was already terminating") {
		t.Errorf("Event %+v, want a Warning that the pod terminates past its deadline", evs[0])
	}
	pollCluster(t, "the pod counted overdue", recordTimeout, func(ctx context.Context) bool {
		m, err := inst.DeleterMetrics(ctx, leaderIndex(t))
		return err == nil && metric(m, "exec_reaper_deleter_overdue_pods") >= 1
	})

	// It goes when its grace period ends.
	tm, err := w.Until(ctx, time.Until(deleted.Add(terminatingGrace))+30*time.Second, fixture.Deleted)
	if err != nil {
		t.Fatalf("the pod still there 30 s after its grace period ended: %v", err)
	}
	if early := deleted.Add(terminatingGrace - 2*time.Second).Sub(tm.GoneAt); early > 0 {
		t.Errorf("the pod went %s before its grace period ended: something removed it", early)
	}
	if got := events(t, pod, "ExecReaperEvicted"); len(got) != 0 {
		t.Errorf("Evicted Events %+v, want none", got)
	}
}

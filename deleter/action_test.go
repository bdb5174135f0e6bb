package deleter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/exec-reaper/exec-reaper/internal/kubetest"
)

// notes is an events.EventRecorder keeping "Reason: note" lines.
type notes struct {
	mu    sync.Mutex
	lines []string
}

func (n *notes) Eventf(_, _ runtime.Object, _, reason, _, note string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lines = append(n.lines, reason+": "+fmt.Sprintf(note, args...))
}

func TestEvictClassifiesAnswers(t *testing.T) {
	pods := corev1.Resource("pods")
	apf := apierrors.NewTooManyRequests("Too many requests, please try again later.", 1)
	twoBudgets := apierrors.NewInternalError(errors.New("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."))
	conflict := apierrors.NewConflict(pods, "web", errors.New("the object has been modified"))
	for _, tc := range []struct {
		name string
		// podUID is the UID of the pod a GET finds; empty: not found.
		podUID    string
		err       error
		wantTaken bool
		wantErr   error // nil: done
		wantRetry bool  // an error of no particular kind
		result    string
	}{
		{name: "evicted", podUID: "uid-web", result: "evicted", wantTaken: true},
		{name: "APF 429 is not a budget", podUID: "uid-web", err: apf, wantErr: errThrottled, result: "throttled"},
		{name: "two budgets", podUID: "uid-web", err: twoBudgets, wantErr: errImpossible, result: "multiple_budgets"},
		{name: "conflict, same pod", podUID: "uid-web", err: conflict, wantRetry: true, result: "conflict"},
		{name: "conflict, pod replaced", podUID: "uid-new", err: conflict, result: "other_pod"},
		{name: "conflict, pod gone", err: conflict, result: "gone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "uid-web"}})
			client.PrependReactor("get", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
				if tc.podUID == "" {
					return true, nil, apierrors.NewNotFound(pods, "web")
				}
				return true, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: types.UID(tc.podUID)}}, nil
			})
			if tc.err != nil {
				client.PrependReactor("create", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
					return a.GetSubresource() == "eviction", nil, tc.err
				})
			}
			before := metricCount(t, tc.result)
			rec := &notes{}
			a := &Evict{Client: kubetest.API{Interface: client}, Recorder: rec}
			res, err := a.Act(context.Background(), Target{Namespace: "ns", Name: "web", UID: "uid-web", Deadline: time.Unix(0, 0), Kind: KindBare})
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			case tc.wantRetry && (err == nil || errors.Is(err, errRefused) || errors.Is(err, errImpossible)):
				t.Errorf("err = %v, want a plain retriable error", err)
			case tc.wantErr == nil && !tc.wantRetry && err != nil:
				t.Errorf("err = %v, want nil", err)
			}
			if res.Taken != tc.wantTaken {
				t.Errorf("taken = %v, want %v", res.Taken, tc.wantTaken)
			}
			if got := metricCount(t, tc.result) - before; got != 1 {
				t.Errorf("evictions_total{result=%s} grew by %v, want 1", tc.result, got)
			}
			if tc.wantTaken && (len(rec.lines) != 1 || !strings.Contains(rec.lines[0], "for good") ||
				!strings.Contains(rec.lines[0], "record says it was entered")) {
				t.Errorf("events = %q, want one saying the bare pod is gone for good and what the deleter knows", rec.lines)
			}
		})
	}
}

// metricCount reads evictions_total{result}.
func metricCount(t *testing.T, result string) float64 {
	t.Helper()
	c, err := evictionsTotal.GetMetricWithLabelValues(result)
	if err != nil {
		t.Fatal(err)
	}
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

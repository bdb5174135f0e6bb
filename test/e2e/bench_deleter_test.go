//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/deleter"
	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/test/fixture"
)

// Sizes and bounds of the removal-at-scale benchmark. The whole of it takes
// a few minutes on 2 cores: creating and recording 10,000 pods dominates.
const (
	// scaleRecorded is how many recorded pods the memory figures are for.
	scaleRecorded = 10_000
	// scaleDue is how many pods share one deadline (and the floor evicts).
	scaleDue = 1_000
	// scaleOverdue is how many pods are overdue at a cold start.
	scaleOverdue = 5_000
	// scaleWorkers is the parallelism of the benchmark's own clients, and
	// of the floor: the deleter's default --workers.
	scaleWorkers = deleter.DefaultWorkers
	// scaleFailovers is how many takeovers are timed per kind.
	scaleFailovers = 3
	// scaleTimeout bounds each wait of the benchmark.
	scaleTimeout = 6 * time.Minute
	// scaleSettle is how long memory is left to settle (the Go scavenger
	// returns freed pages over seconds) before a steady RSS is read. A
	// measurement interval, not a synchronisation.
	scaleSettle = 10 * time.Second
)

// removalNS is the benchmark's namespace; it is deleted at the end.
const removalNS = "e2e-bench-removal"

// scaleResults are the figures, printed as a table at the end.
var scaleResults []string

func scaleResult(format string, args ...any) {
	scaleResults = append(scaleResults, fmt.Sprintf(format, args...))
}

// BenchmarkRemovalAtScale measures the deleter on the real API server:
// memory with 0 and 10,000 recorded pods (steady, and right after a restart)
// and with unrecorded pods; 1,000 pods sharing a deadline against a floor of
// the same evictions made directly; a cold start with 5,000 overdue pods;
// and failover, killed and graceful. Each part runs once however many times
// the framework calls it (see once). Pods are never scheduled (appSpec), so
// an eviction deletes them at once; records are written as the provider
// writes them, through pods/status with the provider's credential.
func BenchmarkRemovalAtScale(b *testing.B) {
	ns := namespace(b, removalNS)
	b.Cleanup(func() {
		// Wait until its ~16,000 pods are gone: the namespace controller
		// deleting them would load the API server under the benchmarks
		// that make bench runs next.
		ctx := context.Background()
		_ = c.Client().CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
		if err := fixture.Poll(ctx, "namespace "+ns+" gone", scaleTimeout, func(ctx context.Context) (bool, error) {
			_, err := c.Client().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			b.Error(err)
		}
	})
	s := newScale(b, ns)
	b.Run("memory", once(s.memory))
	b.Run("cold-start-5000-overdue", once(s.coldStart))
	b.Run("1000-sharing-a-deadline", once(s.shared))
	b.Run("failover", once(s.failover))
	// To stderr, as the other benchmarks' tables: the framework cuts a
	// benchmark's log short.
	fmt.Fprintf(os.Stderr, "removal at scale (%s):\n  %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(scaleResults, "\n  "))
}

// once runs measure the first time the framework calls a benchmark and
// reports its figures every time: -benchtime 300x calls it twice (b.N 1,
// then 300), and these scenarios are far too big to repeat.
func once(measure func(b *testing.B) map[string]float64) func(*testing.B) {
	var figures map[string]float64
	return func(b *testing.B) {
		if figures == nil {
			figures = measure(b)
		}
		for unit, v := range figures {
			b.ReportMetric(v, unit)
		}
		b.ReportMetric(0, "ns/op") // the time of one call means nothing here
	}
}

// scale holds the clients and the pod watch of the benchmark.
type scale struct {
	ns string
	// admin creates and evicts pods; provider writes records. Neither has a
	// client-side rate limit: the benchmark's own pace is its parallelism.
	admin, provider kubernetes.Interface

	// names and uids are the recorded pods the memory part leaves for the
	// cold start.
	names []string
	uids  []types.UID
	// created is how long the last createPods took.
	created time.Duration

	mu sync.Mutex
	// gone is when the watch saw each pod deleted.
	gone map[string]time.Time
}

func newScale(b *testing.B, ns string) *scale {
	b.Helper()
	s := &scale{ns: ns, gone: map[string]time.Time{}}
	s.admin = unlimitedClient(b, "")
	kc, err := c.Kubeconfig("bench-provider", inst.ProviderUser, "system:serviceaccounts", "system:serviceaccounts:"+inst.Namespace, "system:authenticated")
	if err != nil {
		b.Fatal(err)
	}
	s.provider = unlimitedClient(b, kc)
	s.watch(b)
	return s
}

func unlimitedClient(b *testing.B, kubeconfig string) kubernetes.Interface {
	b.Helper()
	cfg, err := c.RESTConfig(kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS = -1
	cl, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return cl
}

// watch records when each pod of the namespace is deleted, until the
// benchmark ends. Lags are measured by the same watch for the deleter and
// the floor, so its delivery delay is in both.
func (s *scale) watch(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	list, err := s.admin.CoreV1().Pods(s.ns).List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		b.Fatal(err)
	}
	rv := list.ResourceVersion
	go func() {
		for ctx.Err() == nil {
			w, err := s.admin.CoreV1().Pods(s.ns).Watch(ctx, metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true})
			if err != nil {
				continue
			}
			for ev := range w.ResultChan() {
				if m, ok := ev.Object.(metav1.Object); ok {
					rv = m.GetResourceVersion()
					if ev.Type == watch.Deleted {
						s.mu.Lock()
						s.gone[m.GetName()] = time.Now()
						s.mu.Unlock()
					}
				}
			}
		}
	}()
}

// goneAt returns when the watch saw name deleted.
func (s *scale) goneAt(name string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.gone[name]
	return t, ok
}

// waitGone waits until every pod in names was seen deleted. On a timeout
// it fails the benchmark but returns, so that what was measured is still
// reported (over the pods that did go).
func (s *scale) waitGone(b *testing.B, what string, names []string) {
	b.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, scaleTimeout, true, func(context.Context) (bool, error) {
		for _, n := range names {
			if _, ok := s.goneAt(n); !ok {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		gone := 0
		for _, n := range names {
			if _, ok := s.goneAt(n); ok {
				gone++
			}
		}
		b.Errorf("waiting %v for %s: %d of %d gone", scaleTimeout, what, gone, len(names))
	}
}

// parallel runs f for 0..n-1 on scaleWorkers goroutines and returns the
// first error.
func parallel(n int, f func(i int) error) error {
	var next atomic.Int64
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	for range scaleWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || first.Load() != nil {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	wg.Wait()
	if err := first.Load(); err != nil {
		return *err
	}
	return nil
}

// createPods creates n never-scheduled pods named prefix-i, without owner
// (so that no per-owner pacing applies: each pod is its own), and returns
// their names and UIDs.
func (s *scale) createPods(b *testing.B, prefix string, n int) ([]string, []types.UID) {
	b.Helper()
	names, uids := make([]string, n), make([]types.UID, n)
	start := time.Now()
	err := parallel(n, func(i int) error {
		names[i] = fmt.Sprintf("%s-%05d", prefix, i)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: names[i], Labels: map[string]string{"bench": prefix}}, Spec: appSpec()}
		for {
			got, err := s.admin.CoreV1().Pods(s.ns).Create(context.Background(), pod, metav1.CreateOptions{})
			switch {
			case err == nil:
				uids[i] = got.UID
				return nil
			case apierrors.IsTooManyRequests(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err):
				continue // the API server sheds load; try again
			default:
				return fmt.Errorf("creating %s: %w", names[i], err)
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	s.created = time.Since(start)
	b.Logf("created %d pods in %s", n, s.created.Round(time.Millisecond))
	return names, uids
}

// recordPods writes a record with deadline on each pod, as the provider
// does: a merge patch of pods/status with the provider's credential.
func (s *scale) recordPods(b *testing.B, names []string, uids []types.UID, deadline time.Time) {
	b.Helper()
	start := time.Now()
	err := parallel(len(names), func(i int) error {
		e := record.Entry{User: alice, Groups: []string{"dev"}, Time: deadline.Add(-time.Hour), Operation: record.OpExec,
			Container: "app", Command: []string{"sh"}, RequestUID: fmt.Sprintf("bench-%s-%d", uids[i], deadline.Unix())}
		r := record.Record{Deadline: deadline, PodUID: uids[i], Entries: 1, First: e, Last: e, Recent: []record.Mark{e.Mark(e.Time)}}
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": r.Labels(), "annotations": r.Annotations()}})
		if err != nil {
			return err
		}
		for {
			_, err = s.provider.CoreV1().Pods(s.ns).Patch(context.Background(), names[i], types.MergePatchType, patch, metav1.PatchOptions{}, "status")
			if apierrors.IsTooManyRequests(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("recording %s: %w", names[i], err)
			}
			return nil
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("recorded %d pods in %s", len(names), time.Since(start).Round(time.Millisecond))
}

// leader returns the index of the deleter replica holding the Lease,
// waiting for one to.
func (s *scale) leader(b *testing.B) int {
	b.Helper()
	n := -1
	poll(b, "a deleter to lead", scaleTimeout, func(ctx context.Context) (bool, error) {
		lease, err := s.admin.CoordinationV1().Leases(inst.Namespace).Get(ctx, "exec-reaper-deleter", metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil {
			return false, nil
		}
		for i := range inst.Deleters {
			if *lease.Spec.HolderIdentity == fmt.Sprintf("exec-reaper-deleter-%d", i) && inst.Deleters[i] != nil {
				n = i
				return true, nil
			}
		}
		return false, nil
	})
	return n
}

// memKiB reads a field (VmRSS, VmHWM) of replica n's /proc status, in KiB.
func memKiB(b *testing.B, n int, field string) float64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", inst.Deleters[n].Pid()))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kib, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kib
		}
	}
	b.Fatalf("no %s in /proc status", field)
	return 0
}

func mib(kib float64) float64 { return kib / 1024 }

// waitRecorded waits until replica n's cache holds want recorded pods.
func waitRecorded(b *testing.B, n, want int) {
	b.Helper()
	poll(b, fmt.Sprintf("deleter %d to cache %d recorded pods", n, want), scaleTimeout, func(ctx context.Context) (bool, error) {
		got, err := cachedRecorded(ctx, n)
		return err == nil && got == want, nil
	})
}

// cachedRecorded is how many recorded pods replica n's cache holds, all
// namespaces (the benchmarks before this one leave theirs).
func cachedRecorded(ctx context.Context, n int) (int, error) {
	text, err := inst.DeleterMetrics(ctx, n)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(line, "exec_reaper_deleter_recorded_pods "); ok {
			got, err := strconv.ParseFloat(v, 64)
			return int(got), err
		}
	}
	return 0, errors.New("no exec_reaper_deleter_recorded_pods in the deleter's metrics")
}

// restartAlone stops every deleter replica and starts replica n alone.
func restartAlone(b *testing.B, n int) { restartAloneWith(b, n, nil) }

// restartAloneWith is restartAlone with extra flags for replica n.
func restartAloneWith(b *testing.B, n int, extra map[string]string) {
	b.Helper()
	for i := range inst.Deleters {
		if err := inst.StopDeleter(i); err != nil {
			b.Fatal(err)
		}
	}
	if err := inst.StartDeleterWith(context.Background(), n, extra); err != nil {
		b.Fatal(err)
	}
}

// startAll starts the replicas that are down.
func startAll(b *testing.B) {
	b.Helper()
	for i := range inst.Deleters {
		if inst.Deleters[i] == nil {
			if err := inst.StartDeleter(context.Background(), i); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// memory: RSS with no recorded pods, with 10,000 unrecorded (flat), with
// 10,000 recorded (steady), and right after a restart with them (peak during
// the initial list: VmHWM). The recorded pods stay for the cold start.
func (s *scale) memory(b *testing.B) map[string]float64 {
	restartAlone(b, 0)
	// Other benchmarks' recorded pods (make bench runs them first) stay,
	// and are counted in every figure: the ~1% they add is left in.
	others, err := cachedRecorded(context.Background(), 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d pods recorded by earlier benchmarks", others)
	time.Sleep(scaleSettle)
	idle := memKiB(b, 0, "VmRSS")

	s.names, s.uids = s.createPods(b, "rec", scaleRecorded)
	time.Sleep(scaleSettle)
	unrecorded := memKiB(b, 0, "VmRSS")

	s.recordPods(b, s.names, s.uids, time.Now().Add(time.Hour))
	waitRecorded(b, 0, others+scaleRecorded)
	time.Sleep(scaleSettle)
	steady := memKiB(b, 0, "VmRSS")
	// What of it is the binary's own pages (file-backed), what heap and stacks.
	steadyFile, steadyAnon := memKiB(b, 0, "RssFile"), memKiB(b, 0, "RssAnon")

	restartAlone(b, 0)
	waitRecorded(b, 0, others+scaleRecorded)
	restartPeak := memKiB(b, 0, "VmHWM")
	time.Sleep(scaleSettle)
	restartSteady := memKiB(b, 0, "VmRSS")

	// Beside it, the same deleter with every pod's wait in its work queue:
	// a resync longer than the records' hour puts them all within the
	// queue's horizon (what the deleter did before it had one).
	restartAloneWith(b, 0, map[string]string{"resync": "2h"})
	waitRecorded(b, 0, others+scaleRecorded)
	time.Sleep(scaleSettle)
	allQueued := memKiB(b, 0, "VmRSS")
	restartAlone(b, 0)
	waitRecorded(b, 0, others+scaleRecorded)

	perPod := (steady - idle) * 1024 / scaleRecorded
	scaleResult("memory: RSS %.1f MiB with 0 recorded, %.1f MiB with %d unrecorded pods (flat), %.1f MiB with %d recorded (%.1f MiB of it the binary's pages, %.1f MiB anonymous; %.0f B per recorded pod); "+
		"after a restart with them: peak %.1f MiB, then %.1f MiB (goal ≤ 40 MiB); with every wait queued (--resync=2h): %.1f MiB",
		mib(idle), mib(unrecorded), scaleRecorded, mib(steady), scaleRecorded, mib(steadyFile), mib(steadyAnon), perPod, mib(restartPeak), mib(restartSteady), mib(allQueued))
	return map[string]float64{
		"idle-MiB": mib(idle), "unrecorded-10k-MiB": mib(unrecorded), "recorded-10k-MiB": mib(steady), "recorded-10k-file-MiB": mib(steadyFile), "recorded-10k-anon-MiB": mib(steadyAnon),
		"restart-peak-MiB": mib(restartPeak), "restart-MiB": mib(restartSteady), "B/recorded-pod": perPod,
		"all-queued-10k-MiB": mib(allQueued),
	}
}

// coldStart: with the deleters down, 5,000 of the recorded pods become
// overdue (the provider moves their deadline earlier); one replica starts;
// how fast it clears them, from its start, and once it acts.
func (s *scale) coldStart(b *testing.B) map[string]float64 {
	if len(s.names) < scaleOverdue {
		b.Fatal("the memory part did not leave recorded pods")
	}
	for i := range inst.Deleters {
		if err := inst.StopDeleter(i); err != nil {
			b.Fatal(err)
		}
	}
	due := s.names[:scaleOverdue]
	s.recordPods(b, due, s.uids[:scaleOverdue], time.Now().Add(-time.Minute).Truncate(time.Second))
	start := time.Now()
	if err := inst.StartDeleter(context.Background(), 0); err != nil {
		b.Fatal(err)
	}
	s.waitGone(b, "the overdue pods to be evicted", due)
	var first, last time.Time
	for _, n := range due {
		t, ok := s.goneAt(n)
		if !ok {
			continue
		}
		if first.IsZero() || t.Before(first) {
			first = t
		}
		if t.After(last) {
			last = t
		}
	}
	total := last.Sub(start)
	rate := float64(scaleOverdue) / last.Sub(first).Seconds()
	scaleResult("cold start with %d overdue (and %d more recorded): all evicted %.1f s after the process started; first after %.1f s; %.0f evictions/s from first to last",
		scaleOverdue, scaleRecorded-scaleOverdue, total.Seconds(), first.Sub(start).Seconds(), rate)
	// The rest are not needed any more.
	if err := s.admin.CoreV1().Pods(s.ns).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)},
		metav1.ListOptions{LabelSelector: "bench=rec"}); err != nil {
		// A busy API server may cut a 5,000-pod delete short; the namespace
		// goes at the end anyway.
		b.Logf("deleting the remaining recorded pods: %v", err)
	}
	startAll(b)
	return map[string]float64{"clear-s": total.Seconds(), "evictions/s": rate, "first-s": first.Sub(start).Seconds()}
}

// shared: two floors first, then 1,000 recorded pods sharing one deadline
// for the deleter. A floor is a client with the deleter's parallelism that
// evicts 1,000 pods the instant a whole second passes: pods without a record
// (the cluster without exec-reaper), and pods recorded as the deleter's are,
// with a deadline an hour away, evicted as long after their records were
// written as the deleter's are (what the same evictions cost the API server
// with exec-reaper watching those pods, the deleter's own work aside). All
// lags are measured by the same watch, from that instant to the pod's
// deletion.
func (s *scale) shared(b *testing.B) map[string]float64 {
	floorNames, floorUIDs := s.createPods(b, "floor", scaleDue)
	floor := s.evictAt(b, "the floor's evictions", floorNames, floorUIDs, time.Now().Add(2*time.Second).Truncate(time.Second))

	recNames, recUIDs := s.createPods(b, "floor-recorded", scaleDue)
	// As far ahead as the deleter's deadline below, from the records.
	at := time.Now().Add(10*time.Second + 2*s.created).Truncate(time.Second)
	s.recordPods(b, recNames, recUIDs, time.Now().Add(time.Hour))
	recorded := s.evictAt(b, "the recorded floor's evictions", recNames, recUIDs, at)

	names, uids := s.createPods(b, "due", scaleDue)
	// Far enough ahead for the records to be written first: recording
	// takes as long again as creating.
	deadline := time.Now().Add(10*time.Second + 2*s.created).Truncate(time.Second)
	s.recordPods(b, names, uids, deadline)
	if time.Now().After(deadline) {
		b.Errorf("recording %d pods took past their deadline; raise the margin", scaleDue)
	}
	s.waitGone(b, "the deleter's evictions", names)
	lags, early := s.lags(names, deadline)
	scaleResult("%d pods sharing a deadline: deleter p50 %.0f ms, p99 %.0f ms, max %.0f ms after it, %d early (goal p99 ≤ 1 s); "+
		"floor (%d direct evictions, %d in parallel) p50 %.0f ms, p99 %.0f ms, max %.0f ms; "+
		"of recorded pods p50 %.0f ms, p99 %.0f ms, max %.0f ms",
		scaleDue, lags[0], lags[1], lags[2], early, scaleDue, scaleWorkers, floor[0], floor[1], floor[2],
		recorded[0], recorded[1], recorded[2])
	if early > 0 {
		b.Errorf("%d pods were evicted before their deadline", early)
	}
	return map[string]float64{
		"p50-ms": lags[0], "p99-ms": lags[1], "max-ms": lags[2], "early": float64(early),
		"floor-p50-ms": floor[0], "floor-p99-ms": floor[1], "floor-max-ms": floor[2],
		"floor-recorded-p50-ms": recorded[0], "floor-recorded-p99-ms": recorded[1], "floor-recorded-max-ms": recorded[2],
	}
}

// evictAt evicts the pods names (bound to uids) directly at at, scaleWorkers
// at a time, and returns the p50, p99 and max of their deletions after at.
func (s *scale) evictAt(b *testing.B, what string, names []string, uids []types.UID, at time.Time) [3]float64 {
	b.Helper()
	time.Sleep(time.Until(at)) // the floor's "deadline"
	err := parallel(len(names), func(i int) error {
		uid := uids[i]
		return s.admin.PolicyV1().Evictions(s.ns).Evict(context.Background(), &policyv1.Eviction{
			ObjectMeta:    metav1.ObjectMeta{Name: names[i], Namespace: s.ns},
			DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
		})
	})
	if err != nil {
		b.Fatal(err)
	}
	s.waitGone(b, what, names)
	lags, _ := s.lags(names, at)
	return lags
}

// lags returns p50, p99 and max of the deletion times of names after at, in
// milliseconds, and how many went before at.
func (s *scale) lags(names []string, at time.Time) ([3]float64, int) {
	ls := make([]float64, 0, len(names))
	early := 0
	for _, n := range names {
		t, ok := s.goneAt(n)
		if !ok {
			continue // counted as missing by waitGone
		}
		if t.Before(at) {
			early++
		}
		ls = append(ls, float64(t.Sub(at).Microseconds())/1000)
	}
	if len(ls) == 0 {
		return [3]float64{}, early
	}
	slices.Sort(ls)
	q := func(p float64) float64 { return ls[int(p*float64(len(ls)-1))] }
	return [3]float64{q(0.5), q(0.99), ls[len(ls)-1]}, early
}

// failover: the leader is killed (SIGKILL) or stopped (SIGTERM: it releases
// the Lease) just before a recorded pod's deadline; the time from then to
// the pod's eviction by the standby is the takeover.
func (s *scale) failover(b *testing.B) map[string]float64 {
	startAll(b)
	figures := map[string]float64{}
	for _, kind := range []string{"killed", "graceful"} {
		var takeovers []float64
		for trial := range scaleFailovers {
			old := s.leader(b)
			// The standby must be synced (ready) to take over at once.
			names, uids := s.createPods(b, fmt.Sprintf("failover-%s-%d", kind, trial), 1)
			deadline := time.Now().Add(3 * time.Second).Truncate(time.Second)
			s.recordPods(b, names, uids, deadline)
			stopAt := deadline.Add(-300 * time.Millisecond)
			time.Sleep(time.Until(stopAt))
			stopped := time.Now()
			if kind == "killed" {
				if err := syscall.Kill(inst.Deleters[old].Pid(), syscall.SIGKILL); err != nil {
					b.Fatal(err)
				}
				<-inst.Deleters[old].Done()
				_ = inst.StopDeleter(old)
			} else if err := inst.StopDeleter(old); err != nil {
				b.Fatal(err)
			}
			s.waitGone(b, "the standby's eviction", names)
			gone, _ := s.goneAt(names[0])
			if gone.Before(deadline) {
				b.Errorf("%s failover: pod evicted %v before its deadline", kind, deadline.Sub(gone))
			}
			takeovers = append(takeovers, gone.Sub(stopped).Seconds())
			// Back to two ready replicas for the next trial.
			if err := inst.StartDeleter(context.Background(), old); err != nil {
				b.Fatal(err)
			}
		}
		slices.Sort(takeovers)
		scaleResult("failover, leader %s 0.3 s before a deadline: the standby evicted the pod %.2f–%.2f s later (median %.2f s, %d trials; goal ≤ 5 s when killed)",
			kind, takeovers[0], takeovers[len(takeovers)-1], takeovers[len(takeovers)/2], len(takeovers))
		figures[kind+"-max-s"] = takeovers[len(takeovers)-1]
		figures[kind+"-median-s"] = takeovers[len(takeovers)/2]
	}
	return figures
}

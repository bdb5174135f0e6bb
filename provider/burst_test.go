package provider_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/record"
)

// versionedAPI makes a fake clientset keep resourceVersions as the API
// server does: every write of a pod bumps it, and a merge patch that names
// another one fails with 409 Conflict. It counts the pod GETs and PATCHes.
// It keeps Events itself, by name (a second create of one name fails with
// 409 AlreadyExists, as the API server's does): the fake's own tracker
// rebuilds a REST mapper on every create, which under the race detector on
// a loaded machine made writing a burst's 100 Events outlast pollTimeout.
type versionedAPI struct {
	cs            *fake.Clientset
	gets, patches atomic.Int64
	mu            sync.Mutex
	events        map[string]*corev1.Event
	// beforeGet, if set, runs before each GET is answered (n counts from 1).
	beforeGet func(n int64)
	// beforePatch, if set, runs before each PATCH is applied.
	beforePatch func(n int64)
	// cache, if set, answers a GET with resourceVersion "0" (served by the
	// API server's watch cache, which may lag): a copy of a pod, or an error
	// (NotFound: the pod is too new for it). cacheGets counts those GETs.
	cache     func() (*corev1.Pod, error)
	cacheGets atomic.Int64
}

func newVersionedAPI(objects ...runtime.Object) *versionedAPI {
	a := &versionedAPI{cs: fake.NewClientset(objects...), events: map[string]*corev1.Event{}}
	podsGVR := corev1.SchemeGroupVersion.WithResource("pods")
	a.cs.PrependReactor("create", "events", func(act clienttesting.Action) (bool, runtime.Object, error) {
		ev := act.(clienttesting.CreateAction).GetObject().(*corev1.Event).DeepCopy()
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, ok := a.events[ev.Name]; ok {
			return true, nil, apierrors.NewAlreadyExists(corev1.Resource("events"), ev.Name)
		}
		a.events[ev.Name] = ev
		return true, ev, nil
	})
	a.cs.PrependReactor("get", "pods", func(act clienttesting.Action) (bool, runtime.Object, error) {
		n := a.gets.Add(1)
		if a.beforeGet != nil {
			a.beforeGet(n)
		}
		if act.(clienttesting.GetActionImpl).GetGetOptions().ResourceVersion == "0" {
			a.cacheGets.Add(1)
			if a.cache != nil {
				pod, err := a.cache()
				return true, pod, err
			}
		}
		return false, nil, nil
	})
	a.cs.PrependReactor("patch", "pods", func(act clienttesting.Action) (bool, runtime.Object, error) {
		n := a.patches.Add(1)
		if a.beforePatch != nil {
			a.beforePatch(n)
		}
		p := act.(clienttesting.PatchAction)
		var patch struct {
			Metadata struct {
				ResourceVersion string            `json:"resourceVersion"`
				Labels          map[string]string `json:"labels"`
				Annotations     map[string]string `json:"annotations"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(p.GetPatch(), &patch); err != nil {
			return true, nil, apierrors.NewBadRequest(err.Error())
		}
		obj, err := a.cs.Tracker().Get(podsGVR, p.GetNamespace(), p.GetName())
		if err != nil {
			return true, nil, err
		}
		pod := obj.(*corev1.Pod).DeepCopy()
		if rv := patch.Metadata.ResourceVersion; rv != "" && rv != pod.ResourceVersion {
			return true, nil, apierrors.NewConflict(podsGVR.GroupResource(), pod.Name, errors.New("the object has been modified"))
		}
		a.bump(pod)
		for k, v := range patch.Metadata.Labels {
			if pod.Labels == nil {
				pod.Labels = map[string]string{}
			}
			pod.Labels[k] = v
		}
		for k, v := range patch.Metadata.Annotations {
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			pod.Annotations[k] = v
		}
		if err := a.cs.Tracker().Update(podsGVR, pod, pod.Namespace); err != nil {
			return true, nil, err
		}
		return true, pod, nil
	})
	return a
}

// createdEvents returns how many Events were created.
func (a *versionedAPI) createdEvents() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.events)
}

// bump gives pod the next resourceVersion.
func (a *versionedAPI) bump(pod *corev1.Pod) {
	n, _ := strconv.Atoi(pod.ResourceVersion)
	pod.ResourceVersion = strconv.Itoa(n + 1)
}

// otherWriter changes the test pod behind the provider's back, as the
// kubelet or a second replica would.
func (a *versionedAPI) otherWriter(t *testing.T) {
	podsGVR := corev1.SchemeGroupVersion.WithResource("pods")
	obj, err := a.cs.Tracker().Get(podsGVR, namespace, podName)
	if err != nil {
		t.Error(err)
		return
	}
	pod := obj.(*corev1.Pod).DeepCopy()
	a.bump(pod)
	pod.Annotations["other-writer"] = pod.ResourceVersion
	if err := a.cs.Tracker().Update(podsGVR, pod, namespace); err != nil {
		t.Error(err)
	}
}

// burstEntry is the i-th entry of a burst: ten users, each command distinct,
// so that none repeats another (record.RepeatWindow).
func burstEntry(t *testing.T, i int, ttl string) provider.Request {
	t.Helper()
	r := execBy(fmt.Sprintf("user-%d@example.com", i%10), fmt.Sprintf("req-%03d", i), ttl)
	r.Command = []string{"sh", "-c", fmt.Sprintf("echo %d", i)}
	req, err := provider.Decode(keyFor(t, r))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestRecorderCoalescesABurst: 100 concurrent entries into one pod, while the
// first one's GET is in flight, are written together: every entry recorded,
// every caller answered with the earliest deadline any of them asked for, in
// two PATCHes and one GET (the second batch is bound to the resourceVersion
// the first PATCH returned), with one Event per entry. Before, each entry did
// its own GET and PATCH, and concurrent PATCHes conflicted until some gave up
// after maxConflicts ("could not record").
func TestRecorderCoalescesABurst(t *testing.T) {
	for _, tt := range []struct {
		name string
		// otherWriter changes the pod just before that PATCH (0: never).
		otherWriterAt        int64
		wantGets, wantPatchs int64
	}{
		{name: "alone", wantGets: 1, wantPatchs: 2},
		// A conflict re-reads the pod and re-folds the whole batch once.
		{name: "with another writer", otherWriterAt: 2, wantGets: 2, wantPatchs: 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const n = 100
			api := newVersionedAPI(newPod(nil))
			inGet, release := make(chan struct{}), make(chan struct{})
			api.beforeGet = func(n int64) {
				if n == 1 {
					close(inGet)
					<-release
				}
			}
			api.beforePatch = func(n int64) {
				if n == tt.otherWriterAt {
					api.otherWriter(t)
				}
			}
			sink := provider.NewEventSink(api.cs, 2*n, 0)
			rec := provider.NewRecorder(api.cs, clocktesting.NewFakeClock(t0), sink)
			ctx, cancel := context.WithTimeout(quiet(), pollTimeout)
			defer cancel()

			results := make([]provider.Result, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := func(i int) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ttl := "1h"
					if i == 57 {
						ttl = "10m" // the earliest deadline, in the middle of the burst
					}
					results[i], errs[i] = rec.Record(ctx, burstEntry(t, i, ttl))
				}()
			}
			start(0)
			<-inGet // the first entry's batch is reading the pod
			for i := 1; i < n; i++ {
				start(i)
			}
			if err := wait.PollUntilContextTimeout(ctx, time.Millisecond, pollTimeout, true, func(context.Context) (bool, error) {
				return rec.Waiting(namespace, podName) == n-1, nil
			}); err != nil {
				t.Fatalf("%d entries waiting, want %d: %v", rec.Waiting(namespace, podName), n-1, err)
			}
			close(release)
			wg.Wait()

			outcomes := map[record.Outcome]int{}
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("entry %d: %v", i, errs[i])
				}
				outcomes[results[i].Outcome]++
				want := t0.Add(10 * time.Minute)
				if i == 0 {
					want = t0.Add(time.Hour) // its batch was written before the others arrived
				}
				if !results[i].Deadline.Equal(want) {
					t.Errorf("entry %d: deadline %s, want %s", i, results[i].Deadline, want)
				}
			}
			if outcomes[record.OutcomeFirst] != 1 || outcomes[record.OutcomeAdded] != n-1 {
				t.Errorf("outcomes %v, want 1 first and %d added", outcomes, n-1)
			}
			pod := getPod(t, api.cs)
			r, err := record.Read(pod.Labels, pod.Annotations)
			if err != nil {
				t.Fatal(err)
			}
			// The last entry is whichever arrived last.
			if r.Entries != n || !r.Deadline.Equal(t0.Add(10*time.Minute)) || r.First.RequestUID != "req-000" || len(r.Recent) != record.MaxRecent {
				t.Errorf("record: %d entries, deadline %s, first %s, %d recent; want %d, %s, req-000, %d",
					r.Entries, r.Deadline, r.First.RequestUID, len(r.Recent), n, t0.Add(10*time.Minute), record.MaxRecent)
			}
			if tt.otherWriterAt != 0 && pod.Annotations["other-writer"] == "" {
				t.Error("the other writer's change was lost")
			}
			if g, p := api.gets.Load(), api.patches.Load(); g != tt.wantGets || p != tt.wantPatchs {
				t.Errorf("%d GETs and %d PATCHes, want %d and %d", g, p, tt.wantGets, tt.wantPatchs)
			}
			drain(t, sink)
			if got := api.createdEvents(); got != n {
				t.Errorf("%d Events, want one per entry (%d)", got, n)
			}
		})
	}
}

// numberedPods returns n test pods, web-0 to web-(n-1), each its own UID.
func numberedPods(n int) []runtime.Object {
	objects := make([]runtime.Object, 0, n)
	for p := range n {
		pod := newPod(nil)
		pod.Name = fmt.Sprintf("web-%d", p)
		pod.UID = types.UID(fmt.Sprintf("%s-%d", podUID, p))
		objects = append(objects, pod)
	}
	return objects
}

// TestRecorderConcurrentPods: entries into several pods at once, with no
// lining up, under the race detector: all recorded, none failed, no more
// writes than entries.
func TestRecorderConcurrentPods(t *testing.T) {
	const pods, perPod = 5, 40
	api := newVersionedAPI(numberedPods(pods)...)
	rec := provider.NewRecorder(api.cs, clocktesting.NewFakeClock(t0), nil)
	ctx, cancel := context.WithTimeout(quiet(), pollTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range pods * perPod {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := burstEntry(t, i, "1h")
			req.Name = fmt.Sprintf("web-%d", i%pods)
			if _, err := rec.Record(ctx, req); err != nil {
				failed.Add(1)
				t.Errorf("entry %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	for p := range pods {
		obj, err := api.cs.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), namespace, fmt.Sprintf("web-%d", p))
		if err != nil {
			t.Fatal(err)
		}
		pod := obj.(*corev1.Pod)
		r, err := record.Read(pod.Labels, pod.Annotations)
		if err != nil || r.Entries != perPod {
			t.Errorf("pod %s: %d entries (%v), want %d", pod.Name, r.Entries, err, perPod)
		}
	}
	if p := api.patches.Load(); p > pods*perPod {
		t.Errorf("%d PATCHes for %d entries", p, pods*perPod)
	}
}

// TestRecorderReadsTheWatchCacheFirst: a batch's first read is served by
// the API server's watch cache (resourceVersion "0": no etcd read on the
// admission path), and a copy that may be stale decides nothing without a
// write bound to its resourceVersion: a stale copy costs a 409 and a fresh
// read, a pod too new for the cache a fresh read, and a copy that says the
// pod is going (it may be an earlier pod of the same name) or that nothing
// needs writing (a record since lifted) is read again. Every entry is
// recorded, on the pod that exists.
func TestRecorderReadsTheWatchCacheFirst(t *testing.T) {
	podsGVR := corev1.SchemeGroupVersion.WithResource("pods")
	stale := newPod(nil)
	stale.ResourceVersion = "6"
	going := newPod(nil)
	going.UID = "an-earlier-pod-of-that-name"
	going.DeletionTimestamp = &metav1.Time{Time: t0}
	for _, tt := range []struct {
		name string
		// cache answers the read from the cache; nil: the live pod.
		cache func(a *versionedAPI) (*corev1.Pod, error)
		// lifted: the entry was recorded, the cache keeps that copy, and
		// the record has since been lifted from the live pod.
		lifted                 bool
		wantFresh, wantPatches int64
	}{
		{name: "up to date", wantFresh: 0, wantPatches: 1},
		{name: "stale", cache: func(*versionedAPI) (*corev1.Pod, error) { return stale.DeepCopy(), nil }, wantFresh: 1, wantPatches: 2},
		{name: "too new for the cache", cache: func(*versionedAPI) (*corev1.Pod, error) {
			return nil, apierrors.NewNotFound(podsGVR.GroupResource(), podName)
		}, wantFresh: 1, wantPatches: 1},
		{name: "an earlier pod going", cache: func(*versionedAPI) (*corev1.Pod, error) { return going.DeepCopy(), nil }, wantFresh: 1, wantPatches: 1},
		{name: "a record since lifted", lifted: true, wantFresh: 1, wantPatches: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			api := newVersionedAPI(newPod(nil))
			rec := provider.NewRecorder(api.cs, clocktesting.NewFakeClock(t0), nil)
			ctx, cancel := context.WithTimeout(quiet(), pollTimeout)
			defer cancel()
			req := burstEntry(t, 0, "1h")
			if tt.lifted {
				if _, err := rec.Record(ctx, req); err != nil {
					t.Fatal(err)
				}
				recorded := getPod(t, api.cs)
				tt.cache = func(*versionedAPI) (*corev1.Pod, error) { return recorded.DeepCopy(), nil }
				lifted := recorded.DeepCopy()
				for k := range lifted.Labels {
					if strings.HasPrefix(k, record.Prefix) {
						delete(lifted.Labels, k)
					}
				}
				for k := range lifted.Annotations {
					if strings.HasPrefix(k, record.Prefix) {
						delete(lifted.Annotations, k)
					}
				}
				api.bump(lifted)
				if err := api.cs.Tracker().Update(podsGVR, lifted, namespace); err != nil {
					t.Fatal(err)
				}
				api.gets.Store(0)
				api.cacheGets.Store(0)
				api.patches.Store(0)
				// A replica that did not write it, so it has no copy of
				// its own (TestRecorderStartsFromItsLastWrite).
				rec = provider.NewRecorder(api.cs, clocktesting.NewFakeClock(t0), nil)
			}
			if tt.cache != nil {
				api.cache = func() (*corev1.Pod, error) { return tt.cache(api) }
			}
			res, err := rec.Record(ctx, req)
			if err != nil {
				t.Fatalf("Record: %v", err)
			}
			pod := getPod(t, api.cs)
			r, err := record.Read(pod.Labels, pod.Annotations)
			if err != nil || r.Entries != 1 || r.PodUID != podUID || !res.Deadline.Equal(t0.Add(time.Hour)) {
				t.Fatalf("record %+v (%v), answer %+v: want the entry recorded on pod %s, due in an hour", r, err, res, podUID)
			}
			if c := api.cacheGets.Load(); c != 1 {
				t.Errorf("%d reads from the cache, want 1 (the first)", c)
			}
			if fresh, p := api.gets.Load()-api.cacheGets.Load(), api.patches.Load(); fresh != tt.wantFresh || p != tt.wantPatches {
				t.Errorf("%d fresh reads and %d PATCHes, want %d and %d", fresh, p, tt.wantFresh, tt.wantPatches)
			}
		})
	}
}

// TestRecorderStartsFromItsLastWrite: an entry into a pod the recorder wrote
// less than two seconds before starts from the pod that write returned, with
// no read (the watch cache may not have the write yet); a change by another
// writer since costs a 409 and a read from etcd; later than that, it reads
// the watch cache again.
func TestRecorderStartsFromItsLastWrite(t *testing.T) {
	api := newVersionedAPI(newPod(nil))
	clk := clocktesting.NewFakeClock(t0)
	rec := provider.NewRecorder(api.cs, clk, nil)
	ctx, cancel := context.WithTimeout(quiet(), pollTimeout)
	defer cancel()
	record1 := func(i int) {
		t.Helper()
		if _, err := rec.Record(ctx, burstEntry(t, i, "1h")); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	check := func(step string, cacheGets, gets, patches int64) {
		t.Helper()
		if c, g, p := api.cacheGets.Load(), api.gets.Load(), api.patches.Load(); c != cacheGets || g != gets || p != patches {
			t.Errorf("%s: %d cache reads, %d reads, %d PATCHes in all; want %d, %d, %d", step, c, g, p, cacheGets, gets, patches)
		}
	}
	record1(0)
	check("first entry", 1, 1, 1)
	clk.Step(time.Second)
	record1(1)
	check("an entry 1 s later", 1, 1, 2)
	api.otherWriter(t)
	clk.Step(time.Second / 2)
	record1(2)
	check("after another writer", 1, 2, 4)
	clk.Step(3 * time.Second)
	record1(3)
	check("3 s later", 2, 3, 5)
	pod := getPod(t, api.cs)
	if r, err := record.Read(pod.Labels, pod.Annotations); err != nil || r.Entries != 4 || pod.Annotations["other-writer"] == "" {
		t.Errorf("record %+v (%v), other writer's annotation %q: want 4 entries and the other writer's change kept", r, err, pod.Annotations["other-writer"])
	}
}

// TestRecorderKeepsABoundedNumberOfWrites: entries into more pods than
// MaxWritten within two seconds keep only MaxWritten of them for their next
// writer; an entry into one of the others reads the watch cache again, and
// is recorded all the same.
func TestRecorderKeepsABoundedNumberOfWrites(t *testing.T) {
	const pods = provider.MaxWritten + 1
	api := newVersionedAPI(numberedPods(pods)...)
	rec := provider.NewRecorder(api.cs, clocktesting.NewFakeClock(t0), nil)
	entry := func(i, p int) {
		t.Helper()
		req := burstEntry(t, i, "1h")
		req.Name = fmt.Sprintf("web-%d", p)
		// Each entry has the whole deadline: a thousand of them under the
		// race detector on a busy machine took longer than one.
		ctx, cancel := context.WithTimeout(quiet(), pollTimeout)
		defer cancel()
		if _, err := rec.Record(ctx, req); err != nil {
			t.Fatalf("entry %d into web-%d: %v", i, p, err)
		}
	}
	for p := range pods {
		entry(p, p)
	}
	if c := api.cacheGets.Load(); c != pods {
		t.Fatalf("%d reads of the cache, want one per pod (%d)", c, pods)
	}
	entry(pods, 0) // kept: no read
	if c := api.cacheGets.Load(); c != pods {
		t.Errorf("an entry into a kept pod read the cache (%d reads, want %d)", c, pods)
	}
	entry(pods+1, pods-1) // the one past the bound: read again
	if c := api.cacheGets.Load(); c != pods+1 {
		t.Errorf("an entry into the pod past the bound: %d reads of the cache in all, want %d", c, pods+1)
	}
	for _, p := range []int{0, pods - 1} {
		obj, err := api.cs.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), namespace, fmt.Sprintf("web-%d", p))
		if err != nil {
			t.Fatal(err)
		}
		pod := obj.(*corev1.Pod)
		if r, err := record.Read(pod.Labels, pod.Annotations); err != nil || r.Entries != 2 {
			t.Errorf("pod %s: %d entries (%v), want 2", pod.Name, r.Entries, err)
		}
	}
}

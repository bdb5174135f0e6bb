package deleter_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/deleter"
)

// maxCachedBytesPerPod bounds what one recorded pod costs in the deleter's
// cache (live heap), so that 10,000 fit the README's figure with room.
const maxCachedBytesPerPod = 1024

// TestCachedPodCost measures the live heap of a cache of stripped recorded
// pods, as the informer keeps them: the metadata as the API serves it (two
// entries' JSON, managed fields, an owner) goes through StripPod into a
// store keyed by namespace/name.
func TestCachedPodCost(t *testing.T) {
	const n = 10_000
	before := liveHeap()
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for i := range n {
		obj, err := deleter.StripPod(servedPod(i))
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	perPod := (liveHeap() - before) / n
	runtime.KeepAlive(store)
	t.Logf("cache: %d bytes per recorded pod (%d pods)", perPod, n)
	if perPod > maxCachedBytesPerPod {
		t.Errorf("a cached recorded pod costs %d bytes of heap, want at most %d", perPod, maxCachedBytesPerPod)
	}
}

// servedPod is recorded pod i's metadata as the API serves it.
func servedPod(i int) *metav1.PartialObjectMetadata {
	p := asMetadata(recordedPod(fmt.Sprintf("web-%06d-abcde", i), types.UID(fmt.Sprintf("6f0c2d1e-0000-4000-8000-%012d", i)), epoch.Add(time.Hour)))
	p.ResourceVersion = fmt.Sprint(1_000_000 + i)
	p.Labels["app"] = "web"
	p.Labels["pod-template-hash"] = "5d8f7c9b6"
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: fmt.Sprintf("web-%06d", i),
		UID: types.UID(fmt.Sprintf("0a1b2c3d-0000-4000-8000-%012d", i)), Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate}}
	// Decoded, as from the API: every string its own allocation.
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	var served metav1.PartialObjectMetadata
	if err := json.Unmarshal(b, &served); err != nil {
		panic(err)
	}
	return &served
}

func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

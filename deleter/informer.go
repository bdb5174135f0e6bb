package deleter

import (
	"context"
	"time"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/cache"

	"github.com/exec-reaper/exec-reaper/record"
)

// MirrorAnnotation marks a static pod's mirror in the API (the kubelet runs
// the pod from a file; the Eviction API cannot stop it). The cache keeps it so
// the deleter can tell mirror pods apart.
const MirrorAnnotation = corev1.MirrorPodAnnotationKey

// PodsResource is what the deleter's informer lists and watches.
var PodsResource = corev1.SchemeGroupVersion.WithResource("pods")

// podType is the TypeMeta of every cached pod. The metadata API leaves it
// empty or says PartialObjectMetadata; the Events recorder takes the kind of
// the object an Event regards from it, so it must say Pod.
var podType = metav1.TypeMeta{APIVersion: corev1.SchemeGroupVersion.String(), Kind: "Pod"}

// NewPodInformer returns the informer the deleter runs on: recorded pods only
// (ListOptions, server-side), as metadata only (the metadata API: no spec, no
// status), stripped to what the deleter acts on (StripPod) before they are
// cached. It keeps no indexes; lookups are by namespace/name.
//
// Why metadata: a whole Pod with every record annotation (the entries' JSON)
// cost 4.8 KiB per recorded pod in the cache and more while the initial list
// was decoded; see README, "Sizing the deleter", for what this costs instead.
// With client-go's WatchListClient (on by default) and an API server that
// streams the initial list, each pod is stripped as it arrives, so the
// initial list never holds whole objects at once either.
//
// It is built on tools/cache directly, not client-go's metadatainformer, which
// imports the clientset's scheme (see API).
func NewPodInformer(client metadata.Interface, resync time.Duration) cache.SharedIndexInformer {
	pods := client.Resource(PodsResource).Namespace(metav1.NamespaceAll)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			ListOptions(&o)
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			ListOptions(&o)
			return pods.Watch(ctx, o)
		},
	}
	informer := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, client),
		&metav1.PartialObjectMetadata{}, resync, cache.Indexers{})
	// SetTransform fails only on a started informer; this one is new.
	_ = informer.SetTransform(StripPod)
	return informer
}

// ListOptions filters the informer server-side to recorded pods, so the
// deleter never caches the rest of the cluster.
func ListOptions(o *metav1.ListOptions) { o.LabelSelector = record.Selector }

// StripPod is an informer transform that keeps only what the deleter acts
// on: name, namespace, UID, resourceVersion and deletionTimestamp; the
// record's binding (its labels, and the pod-UID annotation only for a record
// from before the UID was a label: see record.Binding) and the action it
// asks for (record.ActionLabel); the controller's
// ownerReference; the mirror-pod annotation; and the quarantine record
// (QuarantineAnnotation), which says when a quarantined pod is deleted. Everything else (the
// entries' JSON, managedFields, other labels and annotations) is dropped, so
// a cached pod costs a few hundred bytes. Keys are the package constants and
// the owner's kind and API version are interned, so the copies share their
// storage. It is idempotent, and passes through anything that is not
// PartialObjectMetadata (a tombstone).
func StripPod(obj any) (any, error) {
	pod, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil
	}
	out := &metav1.PartialObjectMetadata{
		TypeMeta: podType,
		ObjectMeta: metav1.ObjectMeta{
			Name:              pod.Name,
			Namespace:         unique.Make(pod.Namespace).Value(),
			UID:               pod.UID,
			ResourceVersion:   pod.ResourceVersion,
			DeletionTimestamp: pod.DeletionTimestamp,
			// With the timestamp, when the termination began (outlives).
			DeletionGracePeriodSeconds: pod.DeletionGracePeriodSeconds,
		},
	}
	out.Labels = keep(pod.Labels, nil, record.DeadlineLabel, record.PodUIDLabel, record.ActionLabel)
	switch uid := out.Labels[record.PodUIDLabel]; {
	case uid == "": // missing or empty: record.Binding reads the annotation
		out.Annotations = keep(pod.Annotations, nil, record.PodUIDAnnotation)
	case uid == string(pod.UID):
		out.Labels[record.PodUIDLabel] = string(out.UID) // one copy of the UID, not two
	}
	out.Annotations = keep(pod.Annotations, out.Annotations, MirrorAnnotation, QuarantineAnnotation)
	if owner := metav1.GetControllerOfNoCopy(pod); owner != nil {
		out.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: unique.Make(owner.APIVersion).Value(),
			Kind:       unique.Make(owner.Kind).Value(),
			Name:       owner.Name,
			UID:        owner.UID,
			Controller: owner.Controller,
		}}
	}
	return out, nil
}

// keep copies the given keys of from that are present into to (made if nil
// and needed), under the constant key strings, and returns to.
func keep(from, to map[string]string, keys ...string) map[string]string {
	for _, k := range keys {
		v, ok := from[k]
		if !ok {
			continue
		}
		if to == nil {
			to = make(map[string]string, len(keys))
		}
		to[k] = v
	}
	return to
}

package deleter

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// PodKind is what a pod's removal means, decided by who owns it. The
// deleter's informer transform must keep what Classify reads: annotations
// (the mirror annotation) and owner references.
type PodKind string

// The kinds of pod the deleter tells apart. The README's removal table says
// what the deleter does with each and why.
const (
	// KindMirror is a static pod's mirror. Evicting it deletes only the API
	// object: the kubelet keeps the containers running and recreates the
	// mirror, so the deleter skips it and says so.
	KindMirror PodKind = "mirror"
	// KindBare is a pod no controller owns: evicted, it is gone for good.
	KindBare PodKind = "bare"
	// KindJob is a Job's pod: its eviction counts as a failure against the
	// Job's backoffLimit unless a podFailurePolicy ignores DisruptionTarget.
	KindJob PodKind = "job"
	// KindDaemonSet is a DaemonSet's pod: recreated on the same node.
	KindDaemonSet PodKind = "daemonset"
	// KindReplicated is a pod of a ReplicaSet, StatefulSet or
	// ReplicationController: its controller creates a replacement.
	KindReplicated PodKind = "replicated"
	// KindOther is a pod of any other controller (a custom resource).
	KindOther PodKind = "other"
)

// Classify says what kind of pod meta is.
func Classify(meta metav1.Object) PodKind {
	if _, ok := meta.GetAnnotations()[MirrorAnnotation]; ok {
		return KindMirror
	}
	owner := metav1.GetControllerOfNoCopy(meta)
	if owner == nil {
		return KindBare
	}
	switch groupKind(*owner) {
	case "batch/Job":
		return KindJob
	case "apps/DaemonSet":
		return KindDaemonSet
	case "apps/ReplicaSet", "apps/StatefulSet", "/ReplicationController":
		return KindReplicated
	}
	return KindOther
}

// groupKind is "group/Kind" of ref ("/Kind" for the core group).
func groupKind(ref metav1.OwnerReference) string {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil {
		return ""
	}
	return gv.Group + "/" + ref.Kind
}

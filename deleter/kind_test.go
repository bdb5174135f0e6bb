package deleter

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ownedBy returns object metadata controlled by an owner of apiVersion and kind.
func ownedBy(apiVersion, kind string) *metav1.ObjectMeta {
	yes := true
	return &metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "uid-p", OwnerReferences: []metav1.OwnerReference{
		{APIVersion: apiVersion, Kind: kind, Name: "o", UID: "uid-o", Controller: &yes},
	}}
}

func TestClassify(t *testing.T) {
	mirror := ownedBy("v1", "Node")
	mirror.Annotations = map[string]string{MirrorAnnotation: "abc"}
	notController := ownedBy("apps/v1", "ReplicaSet")
	notController.OwnerReferences[0].Controller = nil
	for _, tc := range []struct {
		name string
		meta *metav1.ObjectMeta
		want PodKind
	}{
		{"mirror pod (owned by its Node)", mirror, KindMirror},
		{"no owner", &metav1.ObjectMeta{Name: "p"}, KindBare},
		{"owner that is not a controller", notController, KindBare},
		{"Job", ownedBy("batch/v1", "Job"), KindJob},
		{"DaemonSet", ownedBy("apps/v1", "DaemonSet"), KindDaemonSet},
		{"ReplicaSet", ownedBy("apps/v1", "ReplicaSet"), KindReplicated},
		{"StatefulSet", ownedBy("apps/v1", "StatefulSet"), KindReplicated},
		{"ReplicationController", ownedBy("v1", "ReplicationController"), KindReplicated},
		{"custom controller", ownedBy("example.com/v1", "Rollout"), KindOther},
		{"a ReplicaSet of another group", ownedBy("example.com/v1", "ReplicaSet"), KindOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(tc.meta); got != tc.want {
				t.Errorf("Classify = %q, want %q", got, tc.want)
			}
		})
	}
}

// Package kubetest adapts client-go's clientset (its fake, in unit tests) to
// the narrow clients the deleter runs on (deleter.API, lease.Client,
// record.EventSink), so its tests keep client-go's fake and reactors. Only
// tests import it: it links the clientset the deleter itself avoids.
package kubetest

import (
	"context"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// API implements deleter.API on a clientset.
type API struct{ kubernetes.Interface }

func (a API) Evict(ctx context.Context, namespace, name string, uid types.UID) error {
	return a.PolicyV1().Evictions(namespace).Evict(ctx, &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: name, Namespace: namespace},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
	})
}

func (a API) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return a.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (a API) ListPods(ctx context.Context, namespace string, selector labels.Selector) (*corev1.PodList, error) {
	return a.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
}

func (a API) PatchPod(ctx context.Context, namespace, name string, pt types.PatchType, patch []byte) error {
	_, err := a.CoreV1().Pods(namespace).Patch(ctx, name, pt, patch, metav1.PatchOptions{})
	return err
}

func (a API) DeletePod(ctx context.Context, namespace, name string, uid types.UID) error {
	return a.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
}

func (a API) CreateNetworkPolicy(ctx context.Context, np *networkingv1.NetworkPolicy) error {
	_, err := a.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{})
	return err
}

func (a API) GetReplicaSet(ctx context.Context, namespace, name string) (*appsv1.ReplicaSet, error) {
	return a.AppsV1().ReplicaSets(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (a API) GetStatefulSet(ctx context.Context, namespace, name string) (*appsv1.StatefulSet, error) {
	return a.AppsV1().StatefulSets(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (a API) GetDaemonSet(ctx context.Context, namespace, name string) (*appsv1.DaemonSet, error) {
	return a.AppsV1().DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (a API) GetReplicationController(ctx context.Context, namespace, name string) (*corev1.ReplicationController, error) {
	return a.CoreV1().ReplicationControllers(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (a API) GetValidatingAdmissionPolicy(ctx context.Context, name string) (*admissionregistrationv1.ValidatingAdmissionPolicy, error) {
	return a.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, name, metav1.GetOptions{})
}

func (a API) GetValidatingAdmissionPolicyBinding(ctx context.Context, name string) (*admissionregistrationv1.ValidatingAdmissionPolicyBinding, error) {
	return a.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, name, metav1.GetOptions{})
}

// Lease implements lease.Client on a clientset.
type Lease struct {
	Client          kubernetes.Interface
	Namespace, Name string
}

func (l Lease) Get(ctx context.Context) (*coordinationv1.Lease, error) {
	return l.Client.CoordinationV1().Leases(l.Namespace).Get(ctx, l.Name, metav1.GetOptions{})
}

// Create and Update name the object as lease.Client's REST implementation
// does: the Lease is the client's, whatever obj says.
func (l Lease) Create(ctx context.Context, obj *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	return l.Client.CoordinationV1().Leases(l.Namespace).Create(ctx, l.own(obj), metav1.CreateOptions{})
}

func (l Lease) Update(ctx context.Context, obj *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	return l.Client.CoordinationV1().Leases(l.Namespace).Update(ctx, l.own(obj), metav1.UpdateOptions{})
}

func (l Lease) own(obj *coordinationv1.Lease) *coordinationv1.Lease {
	obj = obj.DeepCopy()
	obj.Namespace, obj.Name = l.Namespace, l.Name
	return obj
}

func (l Lease) Describe() string { return l.Namespace + "/" + l.Name }

// EventSink is record.EventSink on a clientset's core/v1 Events.
func EventSink(c kubernetes.Interface) record.EventSink {
	return &typedcorev1.EventSinkImpl{Interface: c.CoreV1().Events("")}
}

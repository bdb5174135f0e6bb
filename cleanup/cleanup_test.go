package cleanup_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/exec-reaper/exec-reaper/cleanup"
)

func constraint(kind, name string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("constraints.gatekeeper.sh/v1beta1")
	u.SetKind(kind)
	u.SetName(name)
	return u
}

var otherKind = schema.GroupVersionResource{Group: "constraints.gatekeeper.sh", Version: "v1beta1", Resource: "k8srequiredlabels"}

// newClient holds the constraints under Gatekeeper's resource names (the
// lowercase kind, no plural s), which the fake would not guess.
func newClient(t *testing.T, objs ...*unstructured.Unstructured) *dynamicfake.FakeDynamicClient {
	t.Helper()
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		cleanup.Kinds[0]: "K8sExecReaperList",
		cleanup.Kinds[1]: "K8sExecReaperRecordGuardList",
		// A kind of someone else's, which must be left alone.
		otherKind: "K8sRequiredLabelsList",
	})
	for _, o := range objs {
		gvr := schema.GroupVersionResource{Group: "constraints.gatekeeper.sh", Version: "v1beta1", Resource: strings.ToLower(o.GetKind())}
		if err := client.Tracker().Create(gvr, o, ""); err != nil {
			t.Fatal(err)
		}
	}
	return client
}

func TestRemoveConstraints(t *testing.T) {
	client := newClient(t,
		constraint("K8sExecReaper", "exec-reaper"),
		constraint("K8sExecReaper", "exec-reaper-strict"), // applied with kubectl
		constraint("K8sExecReaperRecordGuard", "exec-reaper-record-guard"),
		constraint("K8sRequiredLabels", "owner-label"),
	)
	var out bytes.Buffer
	if err := cleanup.RemoveConstraints(context.Background(), client, cleanup.Kinds, &out); err != nil {
		t.Fatal(err)
	}
	for _, gvr := range cleanup.Kinds {
		list, err := client.Resource(gvr).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 0 {
			t.Errorf("%d %s left", len(list.Items), gvr.Resource)
		}
	}
	if _, err := client.Resource(otherKind).Get(context.Background(), "owner-label", metav1.GetOptions{}); err != nil {
		t.Errorf("another template's constraint was touched: %v", err)
	}
	for _, want := range []string{"deleted k8sexecreaper exec-reaper\n", "deleted k8sexecreaper exec-reaper-strict\n", "deleted k8sexecreaperrecordguard exec-reaper-record-guard\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// A kind whose CRD is gone (the template was deleted first) is nothing to do.
func TestRemoveConstraintsKindMissing(t *testing.T) {
	client := newClient(t)
	client.PrependReactor("list", "k8sexecreaperrecordguard", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(schema.GroupResource{Group: "constraints.gatekeeper.sh", Resource: "k8sexecreaperrecordguard"}, "")
	})
	var out bytes.Buffer
	if err := cleanup.RemoveConstraints(context.Background(), client, cleanup.Kinds, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "no k8sexecreaperrecordguard constraints") {
		t.Errorf("output: %s", out.String())
	}
}

// A refused deletion is an error that names the constraint and what to do,
// and does not stop the others.
func TestRemoveConstraintsReportsFailures(t *testing.T) {
	client := newClient(t, constraint("K8sExecReaper", "a"), constraint("K8sExecReaper", "b"))
	client.PrependReactor("delete", "k8sexecreaper", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.DeleteAction).GetName() == "a" {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "k8sexecreaper"}, "a", errors.New("no"))
		}
		return false, nil, nil
	})
	var out bytes.Buffer
	err := cleanup.RemoveConstraints(context.Background(), client, cleanup.Kinds, &out)
	if err == nil || !strings.Contains(err.Error(), "deleting k8sexecreaper a") || !strings.Contains(err.Error(), "kubectl delete k8sexecreaper --all") {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(out.String(), "deleted k8sexecreaper b") {
		t.Errorf("b not deleted after a failed: %s", out.String())
	}
}

//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/exec-reaper/exec-reaper/test/cluster"
)

// TestInstallInItsOwnNamespace installs the chart into a namespace of its
// own (helm install -n exec-reaper --create-namespace), not Gatekeeper's, on
// a control plane of its own with the current Gatekeeper, and runs the
// chart's whole life there (chartLifecycle: recorded, guarded, evicted at
// the deadline, constraints removed by the uninstall hook). What lives in
// the release namespace moves with it: the provider's certificate Secret
// and the deleter's Lease; Gatekeeper's namespace gets nothing of
// exec-reaper's.
func TestInstallInItsOwnNamespace(t *testing.T) {
	const ns = "exec-reaper"
	oc, oi := chartLifecycle(t, cluster.Options{Tools: cluster.DefaultTools(), Gatekeeper: true}, ns)
	ctx := context.Background()
	cs := oc.Client()
	if _, err := cs.CoreV1().Secrets(ns).Get(ctx, oi.CertSecret, metav1.GetOptions{}); err != nil {
		t.Errorf("the provider's certificate Secret %s/%s: %v", ns, oi.CertSecret, err)
	}
	secrets, err := cs.CoreV1().Secrets(cluster.GatekeeperNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		if s.Name != "gatekeeper-webhook-server-cert" {
			t.Errorf("Secret %s/%s: exec-reaper installed into %s wrote into Gatekeeper's namespace", s.Namespace, s.Name, ns)
		}
	}
	for _, kind := range []string{"serviceaccounts", "roles", "rolebindings", "leases", "configmaps"} {
		out, _, err := oc.Kubectl(ctx, "", "get", kind, "-n", cluster.GatekeeperNamespace, "-o", "name")
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range strings.Fields(out) {
			if strings.Contains(name, "exec-reaper") {
				t.Errorf("%s in Gatekeeper's namespace: exec-reaper installed into %s put it there", name, ns)
			}
		}
	}
}

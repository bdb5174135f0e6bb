// Package cleanup removes exec-reaper's Gatekeeper constraints, for the
// chart's pre-delete hook. Without it, `helm uninstall` would leave every
// K8sExecReaper constraint (the chart's, and any applied with kubectl)
// naming a Provider that no longer exists: with failurePolicy Fail, every
// exec in the cluster is then denied until someone notices. Record-guard
// constraints go too: once the provider's ServiceAccount is gone, they would
// keep anyone but the extension groups from removing the records left on
// pods.
package cleanup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// Kinds are the constraint resources exec-reaper's templates create, in
// Gatekeeper's constraints.gatekeeper.sh group.
var Kinds = []schema.GroupVersionResource{
	{Group: "constraints.gatekeeper.sh", Version: "v1beta1", Resource: "k8sexecreaper"},
	{Group: "constraints.gatekeeper.sh", Version: "v1beta1", Resource: "k8sexecreaperrecordguard"},
}

// RemoveConstraints deletes every constraint of kinds and reports each
// deletion to out. A kind whose CRD does not exist (its template was never
// applied, or is already gone) has nothing to delete. It returns an error
// naming every constraint it could not delete, after trying them all.
func RemoveConstraints(ctx context.Context, client dynamic.Interface, kinds []schema.GroupVersionResource, out io.Writer) error {
	var errs []error
	for _, gvr := range kinds {
		list, err := client.Resource(gvr).List(ctx, metav1.ListOptions{})
		if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
			fmt.Fprintf(out, "no %s constraints: the kind does not exist\n", gvr.Resource)
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("listing %s constraints: %w", gvr.Resource, err))
			continue
		}
		names := make([]string, 0, len(list.Items))
		for _, c := range list.Items {
			names = append(names, c.GetName())
		}
		slices.Sort(names)
		for _, name := range names {
			err := client.Resource(gvr).Delete(ctx, name, metav1.DeleteOptions{})
			switch {
			case apierrors.IsNotFound(err):
				fmt.Fprintf(out, "%s %s: already gone\n", gvr.Resource, name)
			case err != nil:
				errs = append(errs, fmt.Errorf("deleting %s %s: %w", gvr.Resource, name, err))
			default:
				fmt.Fprintf(out, "deleted %s %s\n", gvr.Resource, name)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w; delete them by hand (kubectl delete %s --all), or entries may be refused for want of a provider", errors.Join(errs...), kinds[0].Resource)
	}
	return nil
}

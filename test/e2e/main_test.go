//go:build e2e

// Package e2e proves exec-reaper on a real control plane: etcd,
// kube-apiserver, kube-controller-manager, the Gatekeeper manager and kubectl,
// all built from pinned module versions, with exec-reaper's provider and
// deleter running as their chart ServiceAccounts, and one real node
// (kube-scheduler, containerd, kubelet) whose pods run local images. The
// scenarios a user meets run on the node (nodePod, nodeDeployment); tests of
// admission alone use pods that are never scheduled (barePod, deployment),
// because admission runs before the API server contacts a kubelet.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/exec-reaper/exec-reaper/test/cluster"
	"github.com/exec-reaper/exec-reaper/test/install"
)

// TTL is the constraints' ttl in this suite: short, so evictions are seen.
const TTL = 5 * time.Second

// Namespaces with a special role in the suite.
const (
	strictNS   = "e2e-strict"
	excludedNS = "e2e-excluded"
	// portForwardNS has a constraint that opts in to port-forward.
	portForwardNS = "e2e-portforward"
)

// Users of the suite.
const (
	alice      = "alice@example.com"
	breakglass = "breakglass@example.com"
	oncall     = "oncall-exempt"
)

var (
	c    *cluster.Cluster
	inst *install.Install
	// aliceKubeconfig authenticates as alice, group dev.
	aliceKubeconfig string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	dir, err := os.MkdirTemp("", "exec-reaper-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	c, err = cluster.Start(ctx, cluster.Options{Tools: cluster.DefaultTools(), Dir: dir, Log: os.Stderr, Gatekeeper: true, Node: true})
	if err != nil {
		fmt.Fprintf(os.Stderr, "starting control plane: %v\n", err)
		if c != nil {
			fmt.Fprintln(os.Stderr, c.Logs())
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "control plane with Gatekeeper and a node up in %s\n", time.Since(start).Round(time.Millisecond))
	code := runSuite(ctx, m, start)
	stopAt := time.Now()
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stopping the cluster: %v\n", err)
		code = 1
	}
	fmt.Fprintf(os.Stderr, "cluster stopped in %s\n", time.Since(stopAt).Round(time.Millisecond))
	// Stop also fails when the node left the machine changed.
	return code
}

// runSuite installs exec-reaper and runs the tests.
func runSuite(ctx context.Context, m *testing.M, start time.Time) int {
	if err := setup(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "installing exec-reaper: %v\n%s\n", err, c.Logs())
		return 1
	}
	fmt.Fprintf(os.Stderr, "exec-reaper installed in %s after start\n", time.Since(start).Round(time.Millisecond))
	code := m.Run()
	fmt.Fprintf(os.Stderr, "e2e suite took %s\n", time.Since(start).Round(time.Second))
	return code
}

func setup(ctx context.Context) error {
	root, err := filepath.Abs("../..")
	if err != nil {
		return err
	}
	helm := os.Getenv("EXEC_REAPER_HELM")
	if helm == "" {
		return fmt.Errorf("EXEC_REAPER_HELM is not set (make e2e sets it from hack/tools.sh helm)")
	}
	inst, err = install.Setup(ctx, install.Options{
		Cluster:  c,
		RepoRoot: root,
		Helm:     helm,
		// Evictions refused by a PodDisruptionBudget are retried every
		// second here, so the test sees the eviction soon after the budget
		// allows it.
		Values:          []string{"deleter.retryMaxDelay=1s", "guard.extensionGroups={" + extenders + "}"},
		DeleterReplicas: 2,
		Log:             os.Stderr,
	})
	if err != nil {
		return err
	}
	if err := grantUsers(ctx); err != nil {
		return err
	}
	ttl := fmt.Sprintf("%q", TTL.String())
	if err := inst.ApplyPolicies(ctx, "templates/exec-reaper/template.yaml", map[string]string{
		"constraints/default.yaml": `{"spec":{"match":{"excludedNamespaces":["kube-system","gatekeeper-system","` + strictNS + `","` + excludedNS + `","` + portForwardNS + `"]},` +
			`"parameters":{"ttl":` + ttl + `,"exemptUsers":["` + breakglass + `"],"exemptGroups":["` + oncall + `"],"recordCommand":"full"}}}`,
		"constraints/strict.yaml": `{"spec":{"match":{"namespaces":["` + strictNS + `"]},"parameters":{"ttl":` + ttl + `,"recordCommand":"full"}}}`,
	}); err != nil {
		return err
	}
	return applyPortForwardConstraint(ctx, ttl)
}

// applyPortForwardConstraint applies a copy of the default constraint that
// opts in to port-forward, in portForwardNS only.
func applyPortForwardConstraint(ctx context.Context, ttl string) error {
	root, err := filepath.Abs("../..")
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(root, "constraints/default.yaml"))
	if err != nil {
		return err
	}
	var obj map[string]any
	if err := yaml.Unmarshal(b, &obj); err != nil {
		return err
	}
	obj["metadata"] = map[string]any{"name": "exec-reaper-portforward"}
	spec := obj["spec"].(map[string]any)
	spec["match"].(map[string]any)["namespaces"] = []string{portForwardNS}
	delete(spec["match"].(map[string]any), "excludedNamespaces")
	params := spec["parameters"].(map[string]any)
	params["portForward"] = true
	params["ttl"] = strings.Trim(ttl, `"`)
	out, err := yaml.Marshal(obj)
	if err != nil {
		return err
	}
	path := filepath.Join(c.Dir, "portforward-constraint.yaml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return err
	}
	return c.ApplyFile(ctx, "", path)
}

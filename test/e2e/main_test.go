//go:build e2e

// Package e2e proves exec-reaper on a real control plane: etcd,
// kube-apiserver, kube-controller-manager, the Gatekeeper manager and kubectl,
// all built from pinned module versions, with exec-reaper's provider and
// deleter running as their chart ServiceAccounts. Pods need no node:
// admission runs before the API server contacts a kubelet.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/exec-reaper/exec-reaper/test/cluster"
	"github.com/exec-reaper/exec-reaper/test/install"
)

// TTL is the constraints' ttl in this suite: short, so evictions are seen.
const TTL = 5 * time.Second

// Namespaces with a special role in the suite.
const (
	strictNS   = "e2e-strict"
	excludedNS = "e2e-excluded"
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
	c, err = cluster.Start(ctx, cluster.Options{Tools: cluster.DefaultTools(), Dir: dir, Log: os.Stderr, Gatekeeper: true})
	if err != nil {
		fmt.Fprintf(os.Stderr, "starting control plane: %v\n", err)
		if c != nil {
			fmt.Fprintln(os.Stderr, c.Logs())
		}
		return 1
	}
	defer c.Stop()
	fmt.Fprintf(os.Stderr, "control plane with Gatekeeper up in %s\n", time.Since(start).Round(time.Millisecond))

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
	return inst.ApplyPolicies(ctx, "templates/exec-reaper/template.yaml", map[string]string{
		"constraints/default.yaml": `{"spec":{"match":{"excludedNamespaces":["kube-system","gatekeeper-system","` + strictNS + `","` + excludedNS + `"]},` +
			`"parameters":{"ttl":` + ttl + `,"exemptUsers":["` + breakglass + `"],"exemptGroups":["` + oncall + `"]}}}`,
		"constraints/strict.yaml": `{"spec":{"match":{"namespaces":["` + strictNS + `"]},"parameters":{"ttl":` + ttl + `}}}`,
	})
}

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// repoRoot is the repository's root, relative to this package.
var repoRoot = filepath.Join("..", "..")

// versionRE matches a full version as the docs write one.
var versionRE = regexp.MustCompile(`\bv\d+\.\d+\.\d+\b`)

// TestDocsNameThePinnedVersions fails when README.md or BENCHMARKS.md names
// a version that is not pinned (a copy left behind by a bump), names a tool
// with another tool's version, or lacks a headline version.
func TestDocsNameThePinnedVersions(t *testing.T) {
	v, err := pinnedVersions(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	pinned := map[string]bool{}
	for _, version := range v {
		pinned[version] = true
	}
	// The versions each tool may be mentioned with.
	toolVersions := map[string][]string{
		"etcd":           {v["ETCD_VERSION"]},
		"kube-apiserver": {v["KUBE_VERSION"]},
		"kubectl":        {v["KUBE_VERSION"]},
		"ctr":            {v["CONTAINERD_VERSION"]},
		"containerd":     {v["CONTAINERD_VERSION"]},
		"Gatekeeper":     {v["GATEKEEPER_VERSION"], v["GATEKEEPER_OLD_VERSION"]},
		"helm":           {v["HELM_VERSION"]},
		"staticcheck":    {v["STATICCHECK_VERSION"]},
	}
	mentionRE := regexp.MustCompile(`\b(etcd|kube-apiserver|kubectl|ctr|containerd|Gatekeeper|helm|staticcheck) (v\d+\.\d+\.\d+)\b`)
	headlines := map[string][]string{
		"README.md": {
			"etcd " + v["ETCD_VERSION"],
			"kubectl " + v["KUBE_VERSION"],
			"ctr " + v["CONTAINERD_VERSION"],
			"Gatekeeper " + v["GATEKEEPER_VERSION"],
			"Gatekeeper " + v["GATEKEEPER_OLD_VERSION"],
			"helm " + v["HELM_VERSION"],
			"staticcheck " + v["STATICCHECK_VERSION"],
		},
		"BENCHMARKS.md": {
			"etcd " + v["ETCD_VERSION"],
			"kube-apiserver " + v["KUBE_VERSION"],
			"Gatekeeper " + v["GATEKEEPER_VERSION"],
		},
	}
	for doc, want := range headlines {
		b, err := os.ReadFile(filepath.Join(repoRoot, doc))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Join(strings.Fields(string(b)), " ") // a mention may wrap
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Errorf("%s does not say %q (the pinned version; hack/tools.sh versions)", doc, w)
			}
		}
		for _, m := range versionRE.FindAllString(text, -1) {
			if !pinned[m] {
				t.Errorf("%s names %s, which is no pinned version (hack/tools.sh versions): update the prose", doc, m)
			}
		}
		for _, m := range mentionRE.FindAllStringSubmatch(text, -1) {
			if ok := contains(toolVersions[m[1]], m[2]); !ok {
				t.Errorf("%s says %q; %s is pinned at %v", doc, m[0], m[1], toolVersions[m[1]])
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// TestClientFollowsKubernetes fails when go.mod's Kubernetes libraries
// (k8s.io/api, apimachinery, client-go, v0.X.Y) are not the minor release of
// the Kubernetes the tests run (test/tools/go.mod's v1.X.Y): the suites
// prove the client against that control plane and no other.
func TestClientFollowsKubernetes(t *testing.T) {
	v, err := pinnedVersions(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	minor := strings.SplitN(strings.TrimPrefix(v["KUBE_VERSION"], "v1."), ".", 2)[0]
	for _, mod := range []string{"k8s.io/api", "k8s.io/apimachinery", "k8s.io/client-go"} {
		cmd := exec.Command("go", "list", "-m", "-f", "{{.Version}}", mod)
		cmd.Dir = repoRoot
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -m %s: %v", mod, err)
		}
		got := strings.TrimSpace(string(out))
		if !strings.HasPrefix(got, "v0."+minor+".") {
			t.Errorf("go.mod requires %s %s; the control plane is Kubernetes %s (test/tools/go.mod): want v0.%s.*", mod, got, v["KUBE_VERSION"], minor)
		}
	}
}

// TestCacheKeysNameEveryVersion fails when a tool's cache directory does not
// name a version its binaries are built from, so that a bump of that
// version would reuse a stale binary (as etcd's once did under the
// Kubernetes version alone).
func TestCacheKeysNameEveryVersion(t *testing.T) {
	v, err := pinnedVersions(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for tool, versions := range map[string][]string{
		"kube":           {v["KUBE_VERSION"], v["ETCD_VERSION"]},
		"node":           {v["KUBE_VERSION"], v["CONTAINERD_VERSION"]},
		"gatekeeper":     {v["GATEKEEPER_VERSION"]},
		"gatekeeper-old": {v["GATEKEEPER_OLD_VERSION"]},
		"gator":          {v["GATEKEEPER_VERSION"]},
		"helm":           {v["HELM_VERSION"]},
		"staticcheck":    {v["STATICCHECK_VERSION"]},
	} {
		key, err := toolsSh(repoRoot, "key", tool)
		if err != nil {
			t.Fatal(err)
		}
		for _, version := range versions {
			if !strings.Contains(key, version) {
				t.Errorf("hack/tools.sh key %s = %s, which does not name %s", tool, key, version)
			}
		}
	}
}

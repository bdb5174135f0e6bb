package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFile writes content to root/rel, making its directories.
func writeFile(t *testing.T, root, rel, content string) {
	t.Helper()
	path := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCheckThenWrite: -check names a stale, a missing and a left-over copy
// and the command to run, and writes nothing; a run without -check makes
// them match, after which -check passes.
func TestCheckThenWrite(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "templates/a/template.yaml", "a: new\n")
	writeFile(t, root, "templates/b/template.yaml", "b: 1\n")
	writeFile(t, root, "charts/exec-reaper/files/templates/a/template.yaml", "a: old\n")
	writeFile(t, root, "charts/exec-reaper/files/templates/gone/template.yaml", "gone: 1\n")

	var out strings.Builder
	err := run(root, true, &out, chartTemplates)
	if err == nil || !strings.Contains(err.Error(), "make generate") {
		t.Fatalf("check of stale copies: err = %v, want one naming `make generate`", err)
	}
	for _, want := range []string{
		"stale: charts/exec-reaper/files/templates/a/template.yaml",
		"missing: charts/exec-reaper/files/templates/b/template.yaml",
		"left over (its source is gone): charts/exec-reaper/files/templates/gone/template.yaml",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "charts/exec-reaper/files/templates/a/template.yaml")); string(b) != "a: old\n" {
		t.Errorf("-check wrote the copy: %q", b)
	}

	if err := run(root, false, &out, chartTemplates); err != nil {
		t.Fatalf("generate: %v", err)
	}
	for src, want := range map[string]string{"a": "a: new\n", "b": "b: 1\n"} {
		b, err := os.ReadFile(filepath.Join(root, "charts/exec-reaper/files/templates", src, "template.yaml"))
		if err != nil || string(b) != want {
			t.Errorf("copy of %s = %q, %v; want %q", src, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "charts/exec-reaper/files/templates/gone")); !os.IsNotExist(err) {
		t.Errorf("the left-over copy's directory is still there (%v)", err)
	}
	out.Reset()
	if err := run(root, true, &out, chartTemplates); err != nil {
		t.Errorf("check after generate: %v\n%s", err, out.String())
	}
}

// TestRepositoryIsGenerated is the repository's own check, as
// `make generate-check` runs it.
func TestRepositoryIsGenerated(t *testing.T) {
	var out strings.Builder
	if err := run(filepath.Join("..", ".."), true, &out, chartTemplates, toolDirs); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
}

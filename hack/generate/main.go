// Command generate writes the repository's generated files from their
// sources, so that no copy is kept by hand:
//
//   - charts/exec-reaper/files/templates/<name>/template.yaml, the chart's
//     byte-for-byte copies of templates/<name>/template.yaml (a chart cannot
//     read files outside its directory).
//   - test/cluster/tooldirs.go, the names of the directories hack/tools.sh
//     builds the pinned tools into (hack/tools.sh key NAME), where
//     test/cluster looks when no EXEC_REAPER_* variable names them.
//
// With -check it writes nothing and fails, naming each stale, missing or
// left-over file and the command that refreshes them, when the generated
// files differ from what their sources give. `make generate` and
// `make generate-check` run it from the repository's root.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// fixCommand is what a stale check tells the reader to run.
const fixCommand = "make generate"

func main() {
	root := flag.String("root", ".", "the repository's root")
	check := flag.Bool("check", false, "write nothing; fail when a generated file is stale")
	flag.Parse()
	if err := run(*root, *check, os.Stdout, chartTemplates, toolDirs); err != nil {
		fmt.Fprintln(os.Stderr, "generate:", err)
		os.Exit(1)
	}
}

// A part adds the files generated from one kind of source to g.
type part func(root string, g *generated) error

// run generates the parts' files under root, or with check reports the ones
// that differ.
func run(root string, check bool, out io.Writer, parts ...part) error {
	g, err := plan(root, parts)
	if err != nil {
		return err
	}
	if check {
		if problems := g.stale(root); len(problems) > 0 {
			for _, p := range problems {
				fmt.Fprintln(out, p)
			}
			return fmt.Errorf("%d generated file(s) are stale: run `%s` and commit the result", len(problems), fixCommand)
		}
		return nil
	}
	return g.write(root)
}

// generated is the set of files the generator owns: want holds each one's
// content by slash-separated path relative to the root; owned are the glob
// patterns under which any other file is left over from a removed source.
type generated struct {
	want  map[string][]byte
	owned []string
}

// plan computes the parts' files from their sources.
func plan(root string, parts []part) (generated, error) {
	g := generated{want: map[string][]byte{}}
	for _, p := range parts {
		if err := p(root, &g); err != nil {
			return generated{}, err
		}
	}
	return g, nil
}

// chartTemplates adds the chart's copies of templates/*/template.yaml.
func chartTemplates(root string, g *generated) error {
	sources, err := filepath.Glob(filepath.Join(root, "templates", "*", "template.yaml"))
	if err != nil {
		return err
	}
	if len(sources) == 0 {
		return fmt.Errorf("no templates/*/template.yaml under %s: run from the repository's root or pass -root", root)
	}
	for _, src := range sources {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		name := filepath.Base(filepath.Dir(src))
		g.want["charts/exec-reaper/files/templates/"+name+"/template.yaml"] = b
	}
	g.owned = append(g.owned, "charts/exec-reaper/files/templates/*/template.yaml")
	return nil
}

// leftovers returns the files matched by the owned patterns that have no
// source any more, sorted.
func (g generated) leftovers(root string) ([]string, error) {
	var left []string
	for _, pattern := range g.owned {
		matches, err := filepath.Glob(filepath.Join(root, filepath.FromSlash(pattern)))
		if err != nil {
			return nil, err
		}
		for _, m := range matches {
			rel, err := filepath.Rel(root, m)
			if err != nil {
				return nil, err
			}
			if _, ok := g.want[filepath.ToSlash(rel)]; !ok {
				left = append(left, filepath.ToSlash(rel))
			}
		}
	}
	sort.Strings(left)
	return left, nil
}

// paths returns the generated files' paths, sorted.
func (g generated) paths() []string {
	var ps []string
	for p := range g.want {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// stale describes each generated file that differs from its source, is
// missing, or is left over.
func (g generated) stale(root string) []string {
	var problems []string
	for _, p := range g.paths() {
		have, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(p)))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			problems = append(problems, "missing: "+p)
		case err != nil:
			problems = append(problems, fmt.Sprintf("unreadable: %s: %v", p, err))
		case !bytes.Equal(have, g.want[p]):
			problems = append(problems, "stale: "+p)
		}
	}
	left, err := g.leftovers(root)
	if err != nil {
		problems = append(problems, fmt.Sprintf("listing generated files: %v", err))
	}
	for _, p := range left {
		problems = append(problems, "left over (its source is gone): "+p)
	}
	return problems
}

// write writes every generated file that differs and removes the left-over
// ones.
func (g generated) write(root string) error {
	for _, p := range g.paths() {
		path := filepath.Join(root, filepath.FromSlash(p))
		if have, err := os.ReadFile(path); err == nil && bytes.Equal(have, g.want[p]) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, g.want[p], 0o644); err != nil {
			return err
		}
	}
	left, err := g.leftovers(root)
	if err != nil {
		return err
	}
	for _, p := range left {
		path := filepath.Join(root, filepath.FromSlash(p))
		if err := os.Remove(path); err != nil {
			return err
		}
		// The copy's directory goes with it when nothing else is in it.
		_ = os.Remove(filepath.Dir(path))
	}
	return nil
}

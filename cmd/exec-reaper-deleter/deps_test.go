package main

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// TestDeleterLinksNoClientset: the deleter binary links none of client-go's
// clientset. Its scheme registers every built-in API group when the process
// starts, which cost the deleter about 6 MiB of its 29 MiB idle RSS (README,
// "Sizing the deleter"); the deleter talks to the six kinds it needs through
// deleter.API, and holds its Lease through internal/lease. An import that
// brings the clientset back (client-go's informers, tools/events,
// tools/leaderelection, a typed client) fails here, naming the path.
func TestDeleterLinksNoClientset(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	importers := map[string][]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, " ")
		for imp := range strings.FieldsSeq(imports) {
			importers[imp] = append(importers[imp], pkg)
		}
	}
	for _, banned := range []string{"k8s.io/client-go/kubernetes", "k8s.io/client-go/kubernetes/scheme"} {
		if by, ok := importers[banned]; ok {
			if len(by) > 3 {
				by = append(by[:3], fmt.Sprintf("%d more", len(by)-3))
			}
			t.Errorf("the deleter links %s (imported by %s): use deleter.API and internal/lease instead", banned, strings.Join(by, ", "))
		}
	}
}

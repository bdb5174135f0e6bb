package tlscerts

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr/funcr"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/klog/v2"

	"github.com/exec-reaper/exec-reaper/internal/pki"
)

// TestReloadNotIssuedIsQuiet: before the first certificate exists, a reload
// (as the Gatekeeper CA mirror triggers on a fresh start) is a wait logged
// at V(1), not an error, and counts no failed reload. Once something was
// loaded, a missing file is an error again.
func TestReloadNotIssuedIsQuiet(t *testing.T) {
	dir := t.TempDir()
	c := NewCerts(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt"))
	var lines []string
	log := funcr.New(func(prefix, args string) { lines = append(lines, prefix+" "+args) }, funcr.Options{Verbosity: 1})
	ctx := klog.NewContext(context.Background(), log)
	errorsBefore := failedReloads(t)

	// Gatekeeper's CA arrives first, the serving certificate not yet.
	ca, err := pki.NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFileAtomic(filepath.Join(dir, "ca.crt"), ca.CertPEM); err != nil {
		t.Fatal(err)
	}
	c.ReloadAndReport(ctx)
	if got := failedReloads(t) - errorsBefore; got != 0 {
		t.Errorf("a certificate not yet issued counted %v failed reloads", got)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], `"level"=1`) || !strings.Contains(lines[0], "Waiting for the certificates") {
		t.Errorf("log = %q, want one V(1) line about waiting", lines)
	}

	pair, err := ca.Server("s", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for f, data := range map[string][]byte{"tls.crt": pair.CertPEM, "tls.key": pair.KeyPEM} {
		if err := pki.WriteFileAtomic(filepath.Join(dir, f), data); err != nil {
			t.Fatal(err)
		}
	}
	c.ReloadAndReport(ctx)
	if err := c.Ready(); err != nil {
		t.Fatal(err)
	}
	lines = nil
	if err := os.Remove(filepath.Join(dir, "tls.key")); err != nil {
		t.Fatal(err)
	}
	c.ReloadAndReport(ctx)
	if got := failedReloads(t) - errorsBefore; got != 1 {
		t.Errorf("a file gone after a load counted %v failed reloads, want 1", got)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], `"error"=`) {
		t.Errorf("log = %q, want one error", lines)
	}
}

func failedReloads(t *testing.T) float64 {
	t.Helper()
	var m dto.Metric
	if err := certReloadsTotal.WithLabelValues("error").Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

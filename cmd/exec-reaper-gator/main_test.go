package main

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/exec-reaper/exec-reaper/verifier"
)

func TestParseVerify(t *testing.T) {
	tests := []struct {
		args    []string
		want    options
		wantErr string
	}{{
		args: []string{"./policies/..."},
		want: options{cfg: verifier.Config{Path: "./policies/...", Providers: []string{"exec-reaper"}}},
	}, {
		args: []string{"./policies/...", "-v", "--run", "exec//port", "-t"},
		want: options{verbose: true, cfg: verifier.Config{Path: "./policies/...", Run: "exec//port", Trace: true, Providers: []string{"exec-reaper"}}},
	}, {
		args: []string{"-r=x", "--verbose", "p", "--enable-k8s-native-validation=false", "--provider", "a, b"},
		want: options{verbose: true, cfg: verifier.Config{Path: "p", Run: "x", DisableK8sCEL: true, Providers: []string{"a", "b"}}},
	}, {
		args: []string{"-v", "--", "-odd-dir"},
		want: options{verbose: true, cfg: verifier.Config{Path: "-odd-dir", Providers: []string{"exec-reaper"}}},
	}, {
		args: []string{}, wantErr: "accepts 1 arg(s), received 0",
	}, {
		args: []string{"a", "b"}, wantErr: "accepts 1 arg(s), received 2",
	}, {
		args: []string{"a", "--nope"}, wantErr: "flag provided but not defined: -nope",
	}}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, err := parseVerify(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// The command prints and exits as gator verify: the Go-style report on
// stdout, "Error: ..." on stderr and status 1 on failure.
func TestRealMain(t *testing.T) {
	tests := []struct {
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr string
	}{{
		args:       []string{"verify", "../../templates/record-guard/...", "--run", "^record-guard$//^pod-delete$", "-v"},
		wantStdout: []string{"=== RUN   record-guard\n", "    --- PASS: pod-delete\t", "=== SKIP  shipped-constraint\n", "ok\t../../templates/record-guard/suite.yaml\t", "\nPASS\n\n"},
	}, {
		args:       []string{"verify", "../../templates/no-such-dir/..."},
		wantCode:   1,
		wantStderr: "Error: listing test files: ",
	}, {
		args:       []string{"verify"},
		wantCode:   1,
		wantStderr: "Error: accepts 1 arg(s), received 0\nUsage:",
	}, {
		args:       []string{"frobnicate"},
		wantCode:   1,
		wantStderr: `Error: unknown command "frobnicate"`,
	}, {
		args:       []string{"help"},
		wantStdout: []string{"Usage:\n  exec-reaper-gator verify PATH [flags]"},
	}}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := realMain(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr %s", code, tt.wantCode, stderr.String())
			}
			for _, want := range tt.wantStdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
				}
			}
			if !strings.HasPrefix(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr = %q, want it to start with %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}

func TestRealMainFailure(t *testing.T) {
	dir := t.TempDir()
	suite := "kind: Suite\napiVersion: test.gatekeeper.sh/v1alpha1\ntests:\n  - name: broken\n    template: missing.yaml\n    constraint: missing.yaml\n"
	if err := os.WriteFile(filepath.Join(dir, "suite.yaml"), []byte(suite), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	if code := realMain(context.Background(), []string{"verify", dir}, &stdout, &stderr); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if out := stdout.String(); !strings.Contains(out, "--- FAIL: broken\t") || !strings.HasSuffix(out, "\nFAIL\n\n") {
		t.Errorf("stdout:\n%s", out)
	}
	if stderr.String() != "Error: FAIL\n" {
		t.Errorf("stderr = %q, want gator's %q", stderr.String(), "Error: FAIL\n")
	}
}

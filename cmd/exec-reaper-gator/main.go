// Command exec-reaper-gator runs Gatekeeper policy suites the way `gator
// verify` does, with external_data available: exec-reaper's real provider
// answers in-process, over mutual TLS, against each case's inventory. Stock
// gator cannot load a template that calls external_data (Gatekeeper issue
// #2659); use this in its place in CI:
//
//	go run github.com/exec-reaper/exec-reaper/cmd/exec-reaper-gator@VERSION verify ./policies/...
//
// Suites, filters, output and exit status are gator's own: the runner and
// printer are Gatekeeper's pkg/gator/verify.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/open-policy-agent/gatekeeper/v3/pkg/gator/verify"

	"github.com/exec-reaper/exec-reaper/verifier"
)

const usage = `Usage:
  exec-reaper-gator verify PATH [flags]
  exec-reaper-gator version

verify runs the gator suites (kind: Suite, test.gatekeeper.sh/v1alpha1) at
PATH, a suite file or a directory; PATH/... includes subdirectories. Templates
may call external_data: exec-reaper's provider answers under the name
"exec-reaper" (see --provider), against each case's inventory, so a pod exists
exactly when the case's inventory holds it. Any other provider name gets the
system error Gatekeeper gives for a Provider that does not exist.

Flags (anywhere after verify):
  -r, --run REGEX       run only tests and cases whose names match:
                        "TEST//CASE", or one regex matching either
  -v, --verbose         print every test and case
  -t, --trace           include a trace of each evaluation
      --enable-k8s-native-validation
                        also load Gatekeeper's CEL driver (default true)
      --provider NAMES  comma-separated Provider names exec-reaper's
                        provider answers under (default "exec-reaper")

Examples:
  exec-reaper-gator verify ./policies/...
  exec-reaper-gator verify ./policies/... --run 'exec-reaper//port-forward'
`

// options are the parsed command line of verify.
type options struct {
	cfg     verifier.Config
	verbose bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := realMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// realMain runs the command and returns its exit status: 0 when every suite
// passed, 1 otherwise, as gator.
func realMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 1
	}
	switch args[0] {
	case "verify":
	case "version", "--version":
		fmt.Fprintln(stdout, "exec-reaper-gator", version())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "Error: unknown command %q\n%s", args[0], usage)
		return 1
	}
	opts, err := parseVerify(args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v\n%s", err, usage)
		return 1
	}
	if err := run(ctx, opts, stdout); err != nil {
		fmt.Fprintln(stderr, "Error:", err)
		return 1
	}
	return 0
}

// parseVerify parses verify's arguments. Flags may come before or after
// the path, as with gator's (cobra) command line.
func parseVerify(args []string) (options, error) {
	var o options
	var providers string
	noCEL := false
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	for _, name := range []string{"run", "r"} {
		fs.StringVar(&o.cfg.Run, name, "", "")
	}
	for _, name := range []string{"verbose", "v"} {
		fs.BoolVar(&o.verbose, name, false, "")
	}
	for _, name := range []string{"trace", "t"} {
		fs.BoolVar(&o.cfg.Trace, name, false, "")
	}
	fs.BoolFunc("enable-k8s-native-validation", "", func(s string) error {
		switch s {
		case "true":
			noCEL = false
		case "false":
			noCEL = true
		default:
			return fmt.Errorf("want true or false, got %q", s)
		}
		return nil
	})
	fs.StringVar(&providers, "provider", verifier.ProviderName, "")

	// After "--" everything is a path.
	var paths []string
	for i, a := range args {
		if a == "--" {
			paths = append(paths, args[i+1:]...)
			args = args[:i]
			break
		}
	}
	var before []string
	for {
		if err := fs.Parse(args); err != nil {
			return o, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		before = append(before, args[0])
		args = args[1:]
	}
	paths = append(before, paths...)
	if len(paths) != 1 {
		return o, fmt.Errorf("accepts 1 arg(s), received %d", len(paths))
	}
	o.cfg.Path = paths[0]
	o.cfg.DisableK8sCEL = noCEL
	for _, name := range strings.Split(providers, ",") {
		if name = strings.TrimSpace(name); name != "" {
			o.cfg.Providers = append(o.cfg.Providers, name)
		}
	}
	return o, nil
}

func run(ctx context.Context, o options, stdout io.Writer) error {
	results, err := verifier.Verify(ctx, o.cfg)
	if err != nil {
		return err
	}
	w := &strings.Builder{}
	if err := (verify.PrinterGo{}).Print(w, results, o.verbose); err != nil {
		return err
	}
	// gator prints the report with Println: one blank line after PASS/FAIL.
	fmt.Fprintln(stdout, w)
	if verifier.Failed(results) {
		return errors.New("FAIL")
	}
	return nil
}

// version is the module version this binary was built from: the tag when
// run as `go run …@vX.Y.Z`.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

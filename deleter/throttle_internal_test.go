package deleter

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
)

// TestThrottleReporterLogs: throttling is reported at the default
// verbosity, once at first and then at most once per ThrottleLogEvery with
// what happened since; short waits are not reported.
func TestThrottleReporterLogs(t *testing.T) {
	var lines []string
	now := time.Unix(1_900_000_000, 0)
	r := &throttleReporter{
		log: funcr.New(func(_, args string) { lines = append(lines, args) }, funcr.Options{Verbosity: 0}),
		now: func() time.Time { return now },
	}
	observe := func(d time.Duration) { r.Observe(context.Background(), "POST", url.URL{}, d) }

	observe(time.Millisecond) // not throttled
	if len(lines) != 0 {
		t.Fatalf("a 1ms wait was logged: %q", lines)
	}
	observe(200 * time.Millisecond)
	if len(lines) != 1 || !strings.Contains(lines[0], "--kube-api-qps") {
		t.Fatalf("after the first throttled request, log = %q, want one line naming --kube-api-qps", lines)
	}
	now = now.Add(time.Second)
	observe(time.Second)
	observe(300 * time.Millisecond)
	if len(lines) != 1 {
		t.Fatalf("throttling within %v was logged again: %q", ThrottleLogEvery, lines)
	}
	now = now.Add(ThrottleLogEvery)
	observe(100 * time.Millisecond)
	if len(lines) != 2 || !strings.Contains(lines[1], `"requests"=3`) || !strings.Contains(lines[1], `"longestWait"="1s"`) {
		t.Errorf("second report = %q, want the 3 requests since the first, longest 1s", lines)
	}
}

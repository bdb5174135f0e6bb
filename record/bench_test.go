package record_test

import (
	"testing"
	"time"

	"github.com/exec-reaper/exec-reaper/record"
)

// BenchmarkApplyAndEncode measures folding an entry into an existing record
// and encoding the result as labels and annotations: the provider's work
// between its GET and its PATCH.
func BenchmarkApplyAndEncode(b *testing.B) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	e := record.Entry{User: "alice@example.com", Groups: []string{"dev", "system:authenticated"}, Time: now,
		Operation: record.OpExec, Container: "app", Command: []string{"sh", "-c", "echo hi"}, RequestUID: "r1"}
	first, _ := record.Apply(nil, "uid-1", e, time.Hour, record.ActionEvict)
	labels, annotations := first.Labels(), first.Annotations()
	b.ReportAllocs()
	for b.Loop() {
		existing, err := record.Read(labels, annotations)
		if err != nil {
			b.Fatal(err)
		}
		e.Time = now.Add(time.Minute)
		e.Command = []string{"cat", "/etc/passwd"}
		rec, _ := record.Apply(&existing, "uid-1", e, time.Hour, record.ActionEvict)
		_, _ = rec.Labels(), rec.Annotations()
	}
}

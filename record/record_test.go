package record_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/exec-reaper/exec-reaper/record"
)

// t0 is a whole second, so expected deadlines read as plain sums.
var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

const uid = types.UID("6f0c1c2e-0000-4000-8000-000000000001")

func alice(at time.Time, requestUID string) record.Entry {
	return record.Entry{
		User:       "alice@example.com",
		Groups:     []string{"system:authenticated", "devs"},
		Time:       at,
		Operation:  record.OpExec,
		Container:  "app",
		Command:    []string{"sh", "-c", "id"},
		RequestUID: requestUID,
	}
}

func TestDeadline(t *testing.T) {
	berlin := time.FixedZone("CET", 3600)
	tests := []struct {
		name     string
		existing time.Time
		now      time.Time
		ttl      time.Duration
		want     time.Time
	}{
		{name: "no record, whole seconds", now: t0, ttl: time.Hour, want: t0.Add(time.Hour)},
		{name: "sub-second now rounds up", now: t0.Add(300 * time.Millisecond), ttl: time.Hour, want: t0.Add(time.Hour + time.Second)},
		{name: "one nanosecond past a second rounds up", now: t0.Add(time.Nanosecond), ttl: time.Minute, want: t0.Add(time.Minute + time.Second)},
		{name: "sub-second ttl rounds up", now: t0, ttl: 1500 * time.Millisecond, want: t0.Add(2 * time.Second)},
		{name: "fractions adding to a whole second are kept", now: t0.Add(500 * time.Millisecond), ttl: 500 * time.Millisecond, want: t0.Add(time.Second)},
		{name: "earlier existing kept", existing: t0.Add(10 * time.Minute), now: t0, ttl: time.Hour, want: t0.Add(10 * time.Minute)},
		{name: "overdue existing kept", existing: t0.Add(-time.Minute), now: t0, ttl: time.Hour, want: t0.Add(-time.Minute)},
		{name: "later existing replaced", existing: t0.Add(2 * time.Hour), now: t0, ttl: time.Hour, want: t0.Add(time.Hour)},
		{name: "equal existing", existing: t0.Add(time.Hour), now: t0, ttl: time.Hour, want: t0.Add(time.Hour)},
		{name: "existing compared after rounding up", existing: t0.Add(time.Hour + 500*time.Millisecond), now: t0.Add(100 * time.Millisecond), ttl: time.Hour, want: t0.Add(time.Hour + 500*time.Millisecond)},
		{name: "other time zone yields UTC", now: t0.In(berlin), ttl: time.Minute, want: t0.Add(time.Minute)},
		{name: "existing in other time zone yields UTC", existing: t0.Add(time.Minute).In(berlin), now: t0, ttl: time.Hour, want: t0.Add(time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := record.Deadline(tt.existing, tt.now, tt.ttl)
			if !got.Equal(tt.want) {
				t.Errorf("Deadline(%v, %v, %v) = %v, want %v", tt.existing, tt.now, tt.ttl, got, tt.want)
			}
			if got.Location() != time.UTC {
				t.Errorf("Deadline location = %v, want UTC", got.Location())
			}
			if !tt.existing.IsZero() && got.After(tt.existing) {
				t.Errorf("Deadline %v is later than the existing %v", got, tt.existing)
			}
			if tt.existing.IsZero() && got.Before(tt.now.Add(tt.ttl)) {
				t.Errorf("Deadline %v is before now+ttl %v", got, tt.now.Add(tt.ttl))
			}
		})
	}
}

func TestApply(t *testing.T) {
	first := alice(t0, "req-1")
	existing := record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 1, First: first, Last: first}
	bob := record.Entry{User: "bob", Time: t0.Add(10 * time.Minute), Operation: record.OpAttach, RequestUID: "req-2"}

	// with returns a copy of e changed by f.
	with := func(e record.Entry, f func(*record.Entry)) record.Entry { f(&e); return e }

	tests := []struct {
		name        string
		existing    *record.Record
		podUID      types.UID
		entry       record.Entry
		ttl         time.Duration
		want        record.Record
		wantOutcome record.Outcome
	}{
		{
			name:        "first entry",
			podUID:      uid,
			entry:       first,
			ttl:         time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 1, First: first, Last: first},
			wantOutcome: record.OutcomeFirst,
		},
		{
			// The deadline counts from the exact time and rounds up, so it is
			// never early; the entry keeps whole seconds.
			name:        "first entry time is stored in UTC, to the second",
			podUID:      uid,
			entry:       with(first, func(e *record.Entry) { e.Time = t0.Add(700 * time.Millisecond).In(time.FixedZone("X", -7200)) }),
			ttl:         time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour + time.Second), PodUID: uid, Entries: 1, First: first, Last: first},
			wantOutcome: record.OutcomeFirst,
		},
		{
			name:        "record of another pod UID is no record",
			existing:    &record.Record{Deadline: t0.Add(time.Minute), PodUID: "someone-else", Entries: 7, First: bob, Last: bob},
			podUID:      uid,
			entry:       first,
			ttl:         time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 1, First: first, Last: first},
			wantOutcome: record.OutcomeFirst,
		},
		{
			name:        "added entry moves the deadline earlier",
			existing:    &existing,
			podUID:      uid,
			entry:       bob,
			ttl:         5 * time.Minute,
			want:        record.Record{Deadline: t0.Add(15 * time.Minute), PodUID: uid, Entries: 2, First: first, Last: bob},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "added entry never moves the deadline later",
			existing:    &existing,
			podUID:      uid,
			entry:       bob,
			ttl:         24 * time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 2, First: first, Last: bob},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "repeat within the window changes nothing",
			existing:    &existing,
			podUID:      uid,
			entry:       alice(t0.Add(time.Second), "req-websocket-fallback"),
			ttl:         2 * time.Hour,
			want:        existing,
			wantOutcome: record.OutcomeRepeat,
		},
		{
			name:        "repeat asking for less time moves the deadline earlier",
			existing:    &existing,
			podUID:      uid,
			entry:       alice(t0.Add(time.Second), "req-websocket-fallback"),
			ttl:         time.Minute,
			want:        record.Record{Deadline: t0.Add(time.Minute + time.Second), PodUID: uid, Entries: 1, First: first, Last: first},
			wantOutcome: record.OutcomeEarlier,
		},
		{
			name:        "same request UID later is still a repeat, its deadline counted from the first call",
			existing:    &existing,
			podUID:      uid,
			entry:       alice(t0.Add(time.Minute), "req-1"),
			ttl:         time.Minute,
			want:        record.Record{Deadline: t0.Add(time.Minute), PodUID: uid, Entries: 1, First: first, Last: first},
			wantOutcome: record.OutcomeEarlier,
		},
		{
			name:        "repeat at exactly the window",
			existing:    &existing,
			podUID:      uid,
			entry:       alice(t0.Add(record.RepeatWindow), "req-3"),
			ttl:         2 * time.Hour,
			want:        existing,
			wantOutcome: record.OutcomeRepeat,
		},
		{
			name:        "identical entry just outside the window is added",
			existing:    &existing,
			podUID:      uid,
			entry:       alice(t0.Add(record.RepeatWindow+time.Millisecond), "req-3"),
			ttl:         2 * time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 2, First: first, Last: alice(t0.Add(record.RepeatWindow), "req-3")},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "repeat arriving before the last entry's time",
			existing:    &existing,
			podUID:      uid,
			entry:       alice(t0.Add(-time.Second), "req-3"),
			ttl:         2 * time.Hour,
			want:        existing,
			wantOutcome: record.OutcomeRepeat,
		},
		{
			name:        "same act long before the last entry is added",
			existing:    &existing,
			podUID:      uid,
			entry:       alice(t0.Add(-time.Hour), "req-3"),
			ttl:         time.Minute,
			want:        record.Record{Deadline: t0.Add(-time.Hour + time.Minute), PodUID: uid, Entries: 2, First: first, Last: alice(t0.Add(-time.Hour), "req-3")},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "same user outside the window is added",
			existing:    &existing,
			podUID:      uid,
			entry:       alice(t0.Add(record.RepeatWindow+time.Second), "req-3"),
			ttl:         time.Minute,
			want:        record.Record{Deadline: t0.Add(record.RepeatWindow + time.Second + time.Minute), PodUID: uid, Entries: 2, First: first, Last: alice(t0.Add(record.RepeatWindow+time.Second), "req-3")},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "same user, different command is added",
			existing:    &existing,
			podUID:      uid,
			entry:       with(alice(t0.Add(time.Second), "req-3"), func(e *record.Entry) { e.Command = []string{"sh", "-c", "whoami"} }),
			ttl:         2 * time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 2, First: first, Last: with(alice(t0.Add(time.Second), "req-3"), func(e *record.Entry) { e.Command = []string{"sh", "-c", "whoami"} })},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "same user, other container is added",
			existing:    &existing,
			podUID:      uid,
			entry:       with(alice(t0.Add(time.Second), "req-3"), func(e *record.Entry) { e.Container = "sidecar" }),
			ttl:         2 * time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 2, First: first, Last: with(alice(t0.Add(time.Second), "req-3"), func(e *record.Entry) { e.Container = "sidecar" })},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "same user, other operation is added",
			existing:    &existing,
			podUID:      uid,
			entry:       with(alice(t0.Add(time.Second), "req-3"), func(e *record.Entry) { e.Operation = record.OpDebug }),
			ttl:         2 * time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 2, First: first, Last: with(alice(t0.Add(time.Second), "req-3"), func(e *record.Entry) { e.Operation = record.OpDebug })},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "other user at the same time is added",
			existing:    &existing,
			podUID:      uid,
			entry:       with(alice(t0, "req-3"), func(e *record.Entry) { e.User = "mallory" }),
			ttl:         2 * time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 2, First: first, Last: with(alice(t0, "req-3"), func(e *record.Entry) { e.User = "mallory" })},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "unreadable entry count restarts at one",
			existing:    &record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 0, First: first, Last: first},
			podUID:      uid,
			entry:       bob,
			ttl:         2 * time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 2, First: first, Last: bob},
			wantOutcome: record.OutcomeAdded,
		},
		{
			name:        "entry count grows",
			existing:    &record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 5, First: first, Last: first},
			podUID:      uid,
			entry:       bob,
			ttl:         2 * time.Hour,
			want:        record.Record{Deadline: t0.Add(time.Hour), PodUID: uid, Entries: 6, First: first, Last: bob},
			wantOutcome: record.OutcomeAdded,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before record.Record
			if tt.existing != nil {
				before = deepCopy(t, *tt.existing)
			}
			got, outcome := record.Apply(tt.existing, tt.podUID, tt.entry, tt.ttl, record.ActionEvict)
			if outcome != tt.wantOutcome {
				t.Errorf("outcome = %q, want %q", outcome, tt.wantOutcome)
			}
			// The fingerprints are TestApplyRecent's business.
			if tt.existing == nil || !reflect.DeepEqual(got.Recent, tt.existing.Recent) || outcome == record.OutcomeAdded || outcome == record.OutcomeFirst {
				got.Recent = nil
			}
			if tt.want.Action == "" {
				tt.want.Action = record.ActionEvict // the table asks for nothing else (TestApplyAction does)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("record =\n%+v\nwant\n%+v", got, tt.want)
			}
			if tt.existing != nil && !reflect.DeepEqual(*tt.existing, before) {
				t.Errorf("Apply changed its input: %+v, was %+v", *tt.existing, before)
			}
			if tt.existing != nil && tt.existing.PodUID == tt.podUID && got.Deadline.After(tt.existing.Deadline) {
				t.Errorf("deadline moved later: %v after %v", got.Deadline, tt.existing.Deadline)
			}
		})
	}
}

func deepCopy(t *testing.T, r record.Record) record.Record {
	t.Helper()
	for _, e := range []*record.Entry{&r.First, &r.Last} {
		e.Groups = slices.Clone(e.Groups)
		e.Command = slices.Clone(e.Command)
	}
	return r
}

var digits = regexp.MustCompile(`^[0-9]+$`)

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		user    string
		groups  []string
		command []string
	}{
		{name: "plain", user: "bob"},
		{name: "email", user: "alice@example.com", groups: []string{"devs"}},
		{name: "slashes", user: "system:serviceaccount:ns/name", groups: []string{"org/team"}},
		{name: "OIDC URL with at sign", user: "https://idp.example.com/users/alice@example.com#sub", groups: []string{"oidc:/a/b"}},
		{name: "spaces", user: "Alice Liddell", groups: []string{"tea party"}, command: []string{"sh", "-c", "echo hi  there"}},
		{name: "unicode", user: "Zoë 山田 🚀", groups: []string{"équipe"}, command: []string{"echo", "日本語"}},
		{name: "JSON and HTML metacharacters", user: `q"u\o'te<&>`, command: []string{`{"a":1}`, "\n\t"}},
		{name: "HTML metacharacters", user: "a<b>&c", groups: []string{"<devs>"}, command: []string{"sh", "-c", "a && b > c"}},
		{name: "control characters", user: "line\nbreak\x00nul", groups: []string{"\u2028"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := record.Entry{User: tt.user, Groups: tt.groups, Time: t0, Operation: record.OpDebug,
				Container: "debugger-x7", Command: tt.command, RequestUID: "req-" + tt.name}
			rec, outcome := record.Apply(nil, uid, e, 90*time.Minute, record.ActionEvict)
			if outcome != record.OutcomeFirst {
				t.Fatalf("outcome = %q, want first", outcome)
			}
			later := record.Entry{User: tt.user + "-2", Groups: tt.groups, Time: t0.Add(time.Hour), Operation: record.OpPortForward, RequestUID: "req-2"}
			rec, _ = record.Apply(&rec, uid, later, time.Minute, record.ActionEvict)

			labels, annotations := rec.Labels(), rec.Annotations()
			for k, v := range labels {
				if errs := validation.IsQualifiedName(k); len(errs) > 0 {
					t.Errorf("label key %q invalid: %v", k, errs)
				}
				if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
					t.Errorf("label %s=%q invalid: %v", k, v, errs)
				}
			}
			if v := labels[record.DeadlineLabel]; !digits.MatchString(v) {
				t.Errorf("label %s=%q, want only digits", record.DeadlineLabel, v)
			}
			for k := range annotations {
				if errs := validation.IsQualifiedName(k); len(errs) > 0 {
					t.Errorf("annotation key %q invalid: %v", k, errs)
				}
			}
			if got, err := time.Parse(time.RFC3339, annotations[record.DeadlineAnnotation]); err != nil || !got.Equal(rec.Deadline) {
				t.Errorf("annotation %s=%q, want %v", record.DeadlineAnnotation, annotations[record.DeadlineAnnotation], rec.Deadline)
			}
			if got := annotations[record.EntriesAnnotation]; got != "2" {
				t.Errorf("annotation %s=%q, want 2", record.EntriesAnnotation, got)
			}
			// Plain names read verbatim in the annotation, for kubectl users.
			if !strings.ContainsAny(tt.user, "\"\\\x00\n\u2028") && !strings.Contains(annotations[record.FirstEntryAnnotation], `"user":"`+tt.user+`"`) {
				t.Errorf("annotation %s = %s, want the user %q verbatim", record.FirstEntryAnnotation, annotations[record.FirstEntryAnnotation], tt.user)
			}
			var first record.Entry
			if err := json.Unmarshal([]byte(annotations[record.FirstEntryAnnotation]), &first); err != nil || first.User != tt.user {
				t.Errorf("first-entry annotation %q: user %q, err %v; want user %q", annotations[record.FirstEntryAnnotation], first.User, err, tt.user)
			}

			got, err := record.Read(labels, annotations)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if !reflect.DeepEqual(got, rec) {
				t.Errorf("Read =\n%+v\nwant\n%+v", got, rec)
			}
			deadline, podUID, err := record.Binding(labels, annotations)
			if err != nil || !deadline.Equal(rec.Deadline) || podUID != uid {
				t.Errorf("Binding = %v, %q, %v; want %v, %q, nil", deadline, podUID, err, rec.Deadline, uid)
			}
		})
	}
}

func TestReadErrors(t *testing.T) {
	good := func() (map[string]string, map[string]string) {
		rec, _ := record.Apply(nil, uid, alice(t0, "req-1"), time.Hour, record.ActionEvict)
		return rec.Labels(), rec.Annotations()
	}
	tests := []struct {
		name          string
		change        func(labels, annotations map[string]string)
		noMaps        bool
		wantNoRecord  bool
		wantErr       string // substring of Read's error
		wantBindingOK bool   // Binding still succeeds
	}{
		{name: "nil maps", noMaps: true, wantNoRecord: true},
		{name: "annotations without label", change: func(l, _ map[string]string) { delete(l, record.DeadlineLabel) }, wantNoRecord: true},
		{name: "other labels only", change: func(l, _ map[string]string) {
			delete(l, record.DeadlineLabel)
			l["app"] = "web"
		}, wantNoRecord: true},
		{name: "empty label", change: func(l, _ map[string]string) { l[record.DeadlineLabel] = "" }, wantErr: record.DeadlineLabel},
		{name: "label not a number", change: func(l, _ map[string]string) { l[record.DeadlineLabel] = "tomorrow" }, wantErr: record.DeadlineLabel},
		{name: "label RFC 3339", change: func(l, _ map[string]string) { l[record.DeadlineLabel] = "2026-11-26T10:00:00Z" }, wantErr: record.DeadlineLabel},
		{name: "label zero", change: func(l, _ map[string]string) { l[record.DeadlineLabel] = "0" }, wantErr: "positive"},
		{name: "label negative", change: func(l, _ map[string]string) { l[record.DeadlineLabel] = "-5" }, wantErr: "positive"},
		{name: "label fractional", change: func(l, _ map[string]string) { l[record.DeadlineLabel] = "1795000000.5" }, wantErr: record.DeadlineLabel},
		{name: "label overflows int64", change: func(l, _ map[string]string) { l[record.DeadlineLabel] = "99999999999999999999" }, wantErr: record.DeadlineLabel},
		{name: "pod UID missing", change: func(l, a map[string]string) { delete(l, record.PodUIDLabel); delete(a, record.PodUIDAnnotation) }, wantErr: record.PodUIDLabel},
		{name: "pod UID empty", change: func(l, a map[string]string) { l[record.PodUIDLabel] = ""; a[record.PodUIDAnnotation] = "" }, wantErr: record.PodUIDLabel},
		{name: "first entry missing", change: func(_, a map[string]string) { delete(a, record.FirstEntryAnnotation) }, wantErr: record.FirstEntryAnnotation, wantBindingOK: true},
		{name: "first entry not JSON", change: func(_, a map[string]string) { a[record.FirstEntryAnnotation] = "alice" }, wantErr: record.FirstEntryAnnotation, wantBindingOK: true},
		{name: "first entry wrong type", change: func(_, a map[string]string) { a[record.FirstEntryAnnotation] = `{"user":5}` }, wantErr: record.FirstEntryAnnotation, wantBindingOK: true},
		{name: "first entry bad time", change: func(_, a map[string]string) { a[record.FirstEntryAnnotation] = `{"user":"a","time":"yesterday"}` }, wantErr: record.FirstEntryAnnotation, wantBindingOK: true},
		{name: "last entry missing", change: func(_, a map[string]string) { delete(a, record.LastEntryAnnotation) }, wantErr: record.LastEntryAnnotation, wantBindingOK: true},
		{name: "last entry truncated", change: func(_, a map[string]string) { a[record.LastEntryAnnotation] = a[record.LastEntryAnnotation][:10] }, wantErr: record.LastEntryAnnotation, wantBindingOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var labels, annotations map[string]string
			if !tt.noMaps {
				labels, annotations = good()
				tt.change(labels, annotations)
			}
			_, err := record.Read(labels, annotations)
			_, _, bindErr := record.Binding(labels, annotations)
			if tt.wantNoRecord {
				if !errors.Is(err, record.ErrNoRecord) || !errors.Is(bindErr, record.ErrNoRecord) {
					t.Errorf("Read err = %v, Binding err = %v; want ErrNoRecord", err, bindErr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Read err = %v, want one containing %q", err, tt.wantErr)
			}
			if errors.Is(err, record.ErrNoRecord) {
				t.Errorf("Read err = %v, want a defect, not ErrNoRecord", err)
			}
			if tt.wantBindingOK != (bindErr == nil) {
				t.Errorf("Binding err = %v, want ok=%v", bindErr, tt.wantBindingOK)
			}
		})
	}
}

// TestReadEntryCount pins down that an unreadable entry count is not an
// error: it reads as zero, and Apply counts on from one.
func TestReadEntryCount(t *testing.T) {
	for _, v := range []string{"", "many", "-3", "0", "1.5"} {
		t.Run(v, func(t *testing.T) {
			rec, _ := record.Apply(nil, uid, alice(t0, "req-1"), time.Hour, record.ActionEvict)
			annotations := rec.Annotations()
			annotations[record.EntriesAnnotation] = v
			got, err := record.Read(rec.Labels(), annotations)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if got.Entries != 0 {
				t.Errorf("Entries = %d, want 0", got.Entries)
			}
		})
	}
}

func TestParseDeadline(t *testing.T) {
	for _, want := range []time.Time{t0, time.Unix(1, 0).UTC(), t0.Add(30 * 24 * time.Hour)} {
		v := record.FormatDeadline(want)
		if !digits.MatchString(v) {
			t.Errorf("FormatDeadline(%v) = %q, want digits", want, v)
		}
		got, err := record.ParseDeadline(v)
		if err != nil || !got.Equal(want) || got.Location() != time.UTC {
			t.Errorf("ParseDeadline(%q) = %v, %v; want %v in UTC", v, got, err, want)
		}
	}
	// FormatDeadline drops fractions; Deadline never produces them.
	if got := record.FormatDeadline(t0.Add(999 * time.Millisecond)); got != record.FormatDeadline(t0) {
		t.Errorf("FormatDeadline with fraction = %q, want %q", got, record.FormatDeadline(t0))
	}
}

func TestOperationValid(t *testing.T) {
	tests := map[record.Operation]bool{
		record.OpExec: true, record.OpAttach: true, record.OpDebug: true, record.OpPortForward: true,
		"": false, "EXEC": false, "port-forward": false, "ephemeralcontainers": false, "exec ": false,
	}
	for op, want := range tests {
		if got := op.Valid(); got != want {
			t.Errorf("Operation(%q).Valid() = %v, want %v", op, got, want)
		}
	}
}

// TestBindingByLabel: the pod UID binding is read from the label, which a
// kubelet cannot change through pods/status (NodeRestriction), so removing or
// rewriting the annotation (which it can) neither unbinds nor rebinds a
// record; records written before the label existed still bind by annotation.
func TestBindingByLabel(t *testing.T) {
	deadline := time.Unix(1795000000, 0).UTC()
	rec := record.Record{Deadline: deadline, PodUID: "uid-a", Entries: 1}
	for _, tt := range []struct {
		name    string
		change  func(labels, annotations map[string]string)
		wantUID types.UID
	}{
		{name: "as written", change: func(_, _ map[string]string) {}, wantUID: "uid-a"},
		{name: "annotation removed", change: func(_, a map[string]string) { delete(a, record.PodUIDAnnotation) }, wantUID: "uid-a"},
		{name: "annotation rewritten", change: func(_, a map[string]string) { a[record.PodUIDAnnotation] = "uid-b" }, wantUID: "uid-a"},
		{name: "written before the label", change: func(l, _ map[string]string) { delete(l, record.PodUIDLabel) }, wantUID: "uid-a"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			labels, annotations := rec.Labels(), rec.Annotations()
			tt.change(labels, annotations)
			gotDeadline, uid, err := record.Binding(labels, annotations)
			if err != nil || uid != tt.wantUID || !gotDeadline.Equal(deadline) {
				t.Fatalf("Binding = %s, %q, %v; want %s, %q, nil", gotDeadline, uid, err, deadline, tt.wantUID)
			}
		})
	}
}

// TestSelector: the recorded pods' selector matches every record's labels,
// a damaged deadline too (the deleter reports it rather than never seeing
// it), and nothing without the deadline label.
func TestSelector(t *testing.T) {
	sel, err := labels.Parse(record.Selector)
	if err != nil {
		t.Fatalf("parsing record.Selector %q: %v", record.Selector, err)
	}
	rec := record.Record{Deadline: time.Unix(1_900_000_000, 0), PodUID: "u-1"}
	for _, tc := range []struct {
		labels map[string]string
		want   bool
	}{
		{rec.Labels(), true},
		{map[string]string{record.DeadlineLabel: "garbage"}, true},
		{map[string]string{record.PodUIDLabel: "u-1"}, false},
		{map[string]string{"app": "web"}, false},
		{nil, false},
	} {
		if got := sel.Matches(labels.Set(tc.labels)); got != tc.want {
			t.Errorf("selector %q matches %v = %v, want %v", sel, tc.labels, got, tc.want)
		}
	}
}

// TestApplyAction: the record keeps the strictest action any entry's
// constraint asked for, whatever the order; a repeat of the same admission
// that asks for quarantine changes the record (OutcomeStricter), and the
// label says it.
func TestApplyAction(t *testing.T) {
	q, e := record.ActionQuarantine, record.ActionEvict
	tests := []struct {
		name        string
		asks        []record.Action // one admission each, a minute apart, unless repeat
		repeat      bool            // the later asks are the first admission's other constraints
		want        record.Action
		wantOutcome record.Outcome // of the last ask
	}{
		{name: "evict alone", asks: []record.Action{e}, want: e, wantOutcome: record.OutcomeFirst},
		{name: "quarantine alone", asks: []record.Action{q}, want: q, wantOutcome: record.OutcomeFirst},
		{name: "a later entry asks for quarantine", asks: []record.Action{e, q}, want: q, wantOutcome: record.OutcomeAdded},
		{name: "a later entry cannot soften quarantine", asks: []record.Action{q, e}, want: q, wantOutcome: record.OutcomeAdded},
		{name: "a second constraint of the same admission asks for quarantine", asks: []record.Action{e, q}, repeat: true, want: q, wantOutcome: record.OutcomeStricter},
		{name: "a second constraint of the same admission asks for eviction", asks: []record.Action{q, e}, repeat: true, want: q, wantOutcome: record.OutcomeRepeat},
		{name: "the same admission asks for quarantine twice", asks: []record.Action{q, q}, repeat: true, want: q, wantOutcome: record.OutcomeRepeat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec *record.Record
			var outcome record.Outcome
			for i, a := range tt.asks {
				entry := alice(t0, "req-1")
				if !tt.repeat {
					entry = alice(t0.Add(time.Duration(i)*time.Minute), fmt.Sprintf("req-%d", i+1))
				}
				next, o := record.Apply(rec, uid, entry, time.Hour, a)
				rec, outcome = &next, o
			}
			if rec.Action != tt.want || outcome != tt.wantOutcome {
				t.Errorf("action %q, outcome %q; want %q, %q", rec.Action, outcome, tt.want, tt.wantOutcome)
			}
			got, err := record.Read(rec.Labels(), rec.Annotations())
			if err != nil || got.Action != tt.want {
				t.Errorf("read back: action %q, err %v; want %q", got.Action, err, tt.want)
			}
			if _, labelled := rec.Labels()[record.ActionLabel]; labelled != (tt.want == q) {
				t.Errorf("labels %v: want the %s label only on a quarantine", rec.Labels(), record.ActionLabel)
			}
		})
	}
}

func TestReadAction(t *testing.T) {
	first := alice(t0, "req-1")
	rec, _ := record.Apply(nil, uid, first, time.Hour, record.ActionEvict)
	l := rec.Labels()
	l[record.ActionLabel] = "shred"
	got, err := record.Read(l, rec.Annotations())
	if !errors.Is(err, record.ErrUnknownAction) || !strings.Contains(err.Error(), record.ActionLabel) || !strings.Contains(err.Error(), `"shred"`) {
		t.Errorf("Read with an unknown action: err %v, want ErrUnknownAction naming the label and its value", err)
	}
	if got.Entries != 1 || got.First.User != first.User || got.Action != record.ActionEvict || len(got.Recent) != 1 {
		t.Errorf("Read with an unknown action: %+v, want the whole record (its history kept), action evict", got)
	}
	if a, ok := record.ActionOf(l); ok || a != "shred" {
		t.Errorf("ActionOf = %q, %v; want shred, false", a, ok)
	}
	delete(l, record.ActionLabel)
	if a, ok := record.ActionOf(l); !ok || a != record.ActionEvict {
		t.Errorf("ActionOf without the label = %q, %v; want evict, true (a record written before actions)", a, ok)
	}
}

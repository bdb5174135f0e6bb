package record_test

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/exec-reaper/exec-reaper/record"
)

// TestApplyRecent checks the repeat rule against the list of recent entries:
// one kubectl invocation reaching admission twice is one entry even with
// someone else's entry in between; the same command run again on purpose,
// later than RepeatWindow, is a second entry; the same request UID is always
// a repeat.
func TestApplyRecent(t *testing.T) {
	bob := func(at time.Time, uid string) record.Entry {
		return record.Entry{User: "bob", Time: at, Operation: record.OpAttach, RequestUID: uid}
	}
	steps := []struct {
		name        string
		entry       record.Entry
		ttl         time.Duration
		wantOutcome record.Outcome
		wantEntries int
		wantLast    string
	}{
		{"alice's WebSocket attempt", alice(t0, "ws"), time.Hour, record.OutcomeFirst, 1, "ws"},
		{"bob in between", bob(t0.Add(300*time.Millisecond), "bob-1"), time.Hour, record.OutcomeAdded, 2, "bob-1"},
		{"alice's SPDY fallback", alice(t0.Add(600*time.Millisecond), "spdy"), time.Hour, record.OutcomeRepeat, 2, "bob-1"},
		{"alice's first call again, for another constraint", alice(t0.Add(time.Second), "ws"), time.Hour, record.OutcomeRepeat, 2, "bob-1"},
		{"alice runs it again on purpose", alice(t0.Add(5*time.Second), "again"), time.Hour, record.OutcomeAdded, 3, "again"},
	}
	var rec *record.Record
	for _, s := range steps {
		got, outcome := record.Apply(rec, uid, s.entry, s.ttl, record.ActionEvict)
		if outcome != s.wantOutcome || got.Entries != s.wantEntries || got.Last.RequestUID != s.wantLast {
			t.Errorf("%s: outcome %s, %d entries, last %q; want %s, %d, %q", s.name, outcome, got.Entries, got.Last.RequestUID, s.wantOutcome, s.wantEntries, s.wantLast)
		}
		if len(got.Recent) != s.wantEntries {
			t.Errorf("%s: %d recent marks, want %d", s.name, len(got.Recent), s.wantEntries)
		}
		rec = &got
	}

	// The list keeps the last MaxRecent entries, so the oldest falls out.
	for i := range record.MaxRecent {
		got, _ := record.Apply(rec, uid, bob(t0.Add(time.Minute+time.Duration(i)*2*record.RepeatWindow), "bob-x"+string(rune('a'+i))), time.Hour, record.ActionEvict)
		rec = &got
	}
	if len(rec.Recent) != record.MaxRecent || rec.Recent[0].RequestUID != "bob-xa" {
		t.Errorf("recent = %+v, want the last %d, oldest bob-xa", rec.Recent, record.MaxRecent)
	}
	if _, outcome := record.Apply(rec, uid, alice(t0.Add(2*time.Minute), "ws"), time.Hour, record.ActionEvict); outcome != record.OutcomeAdded {
		t.Errorf("a request UID no longer in the list: outcome %s, want added", outcome)
	}
	// The record reads back with its list.
	got, err := record.Read(rec.Labels(), rec.Annotations())
	if err != nil || !reflect.DeepEqual(got.Recent, rec.Recent) {
		t.Errorf("Read recent = %+v, %v; want %+v", got.Recent, err, rec.Recent)
	}
	// A damaged list reads as none: it only helps to recognise repeats.
	a := rec.Annotations()
	a[record.RecentAnnotation] = "[{"
	if got, err := record.Read(rec.Labels(), a); err != nil || got.Recent != nil {
		t.Errorf("damaged list: Read = %+v, %v; want no list and no error", got.Recent, err)
	}
}

// TestBound checks what Bound keeps of entries too large to store.
func TestBound(t *testing.T) {
	long := strings.Repeat("x", 17<<10)
	many := make([]string, 400)
	for i := range many {
		many[i] = "group-" + strings.Repeat("g", 40) + string(rune('a'+i%26))
	}
	tests := []struct {
		name          string
		entry         record.Entry
		wantTruncated []string
		check         func(t *testing.T, in, got record.Entry)
	}{
		{name: "small entry unchanged", entry: alice(t0, "r"), check: func(t *testing.T, in, got record.Entry) {
			if !reflect.DeepEqual(got, in) {
				t.Errorf("Bound = %+v, want %+v", got, in)
			}
		}},
		{name: "17 KB command keeps its beginning", entry: with(alice(t0, "r"), func(e *record.Entry) { e.Command = []string{"sh", "-c", long} }),
			wantTruncated: []string{"command"}, check: func(t *testing.T, in, got record.Entry) {
				if len(got.Command) != 3 || got.Command[0] != "sh" || got.Command[1] != "-c" || !strings.HasPrefix(long, got.Command[2]) || len(got.Command[2]) < 3000 {
					t.Errorf("command = %q…, want sh -c and a long prefix of the script", got.Command[:2])
				}
				if got.User != in.User || !slices.Equal(got.Groups, in.Groups) {
					t.Errorf("user or groups changed: %+v", got)
				}
			}},
		{name: "hundreds of groups after the command", entry: with(alice(t0, "r"), func(e *record.Entry) { e.Groups = many }),
			wantTruncated: []string{"groups"}, check: func(t *testing.T, in, got record.Entry) {
				n := len(got.Groups)
				if n < 2 || n >= len(many) || !slices.Equal(got.Groups[:n-1], many[:n-1]) || !strings.HasPrefix(many[n-1], got.Groups[n-1]) {
					t.Errorf("%d groups kept, want the first ones", n)
				}
				if !slices.Equal(got.Command, in.Command) {
					t.Errorf("command changed to %q, though it fits", got.Command)
				}
			}},
		{name: "everything huge", entry: record.Entry{User: long, Groups: many, Time: t0, Operation: record.OpDebug, Container: long, Command: many, RequestUID: "r"},
			wantTruncated: []string{"command", "container", "groups", "user"}, check: func(t *testing.T, in, got record.Entry) {
				if got.User == "" || !strings.HasPrefix(long, got.User) {
					t.Errorf("user %q…, want a prefix of the original", got.User[:min(10, len(got.User))])
				}
			}},
		{name: "template's digest kept, field cut further", entry: with(alice(t0, "r"), func(e *record.Entry) {
			e.Command = []string{"sh", "-c", long}
			e.Truncated = []string{"command"}
			e.Digests = map[string]string{"command": strings.Repeat("ab", 32)}
		}), wantTruncated: []string{"command"}, check: func(t *testing.T, in, got record.Entry) {
			if got.Digests["command"] != strings.Repeat("ab", 32) {
				t.Errorf("digest %q, want the template's", got.Digests["command"])
			}
		}},
		{name: "escapes count", entry: with(alice(t0, "r"), func(e *record.Entry) { e.Command = []string{strings.Repeat("\x01\u2028\"", 3000)} }),
			wantTruncated: []string{"command"}},
		{name: "invalid UTF-8 made valid", entry: with(alice(t0, "r"), func(e *record.Entry) { e.User = "a\xffb" }), check: func(t *testing.T, in, got record.Entry) {
			if got.User != "a\uFFFDb" {
				t.Errorf("user %q, want a\\uFFFDb", got.User)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := deepCopyEntry(tt.entry)
			got := record.Bound(tt.entry)
			if !reflect.DeepEqual(tt.entry, in) {
				t.Errorf("Bound changed its input")
			}
			if n := entryLen(t, got); n > record.MaxEntryBytes {
				t.Errorf("bounded entry is %d bytes, more than %d", n, record.MaxEntryBytes)
			}
			if !slices.Equal(got.Truncated, tt.wantTruncated) {
				t.Errorf("truncated = %q, want %q", got.Truncated, tt.wantTruncated)
			}
			for _, f := range got.Truncated {
				if len(got.Digests[f]) != 64 {
					t.Errorf("digest of %s = %q, want 64 hex digits", f, got.Digests[f])
				}
			}
			if len(got.Digests) != len(got.Truncated) {
				t.Errorf("digests %v for truncated %v", got.Digests, got.Truncated)
			}
			if slices.Contains(got.Truncated, "command") && in.Digests == nil && got.Digests["command"] != record.Digest(in.Command) {
				t.Errorf("command digest %s, want the digest of the original %s", got.Digests["command"], record.Digest(in.Command))
			}
			if tt.check != nil {
				tt.check(t, in, got)
			}
		})
	}
}

// TestDigest pins the digest to what Rego's crypto.sha256(json.marshal(v))
// gives: OPA's json.marshal is Go's json.Marshal, which escapes <, > and &.
// The values were computed with printf | sha256sum.
func TestDigest(t *testing.T) {
	tests := []struct {
		v    any
		want string
	}{
		{[]string{"sh", "-c", "a < b"}, "b8a9352291a5179161c63489e5c5a9effa93c6b75ac2a751edd188c28ff31036"}, // ["sh","-c","a \u003c b"]
		{"alice@example.com", "b595101af3afe93343acb7181bc1593573485685c06d714e9a9398b0207f8952"},           // "alice@example.com"
	}
	for _, tt := range tests {
		if got := record.Digest(tt.v); got != tt.want {
			t.Errorf("Digest(%q) = %s, want %s", tt.v, got, tt.want)
		}
	}
}

func with(e record.Entry, f func(*record.Entry)) record.Entry { f(&e); return e }

func deepCopyEntry(e record.Entry) record.Entry {
	e.Groups = slices.Clone(e.Groups)
	e.Command = slices.Clone(e.Command)
	e.Truncated = slices.Clone(e.Truncated)
	if e.Digests != nil {
		d := map[string]string{}
		for k, v := range e.Digests {
			d[k] = v
		}
		e.Digests = d
	}
	return e
}

// entryLen is the size of e as the record stores it.
func entryLen(t testing.TB, e record.Entry) int {
	t.Helper()
	rec, _ := record.Apply(nil, uid, e, time.Hour, record.ActionEvict)
	return len(rec.Annotations()[record.FirstEntryAnnotation])
}

// recordSize is the size of every key and value of the record and trial.
func recordSize(labels, annotations map[string]string) int {
	n := 0
	for _, m := range []map[string]string{labels, annotations} {
		for k, v := range m {
			n += len(k) + len(v)
		}
	}
	return n
}

// FuzzBound checks, for any user, container, groups and command, that the
// stored entries fit MaxEntryBytes, the whole record (trial included) fits
// MaxRecordBytes, and the record reads back as it was written.
func FuzzBound(f *testing.F) {
	f.Add("alice", "app", "dev\nsystem:authenticated", "sh\n-c\nid", uint16(0))
	f.Add(strings.Repeat("u", 5000), strings.Repeat("c", 5000), strings.Repeat("g\n", 3000), strings.Repeat("a\n", 9000), uint16(7))
	f.Add("\xff\xfe", "\u2028", "<&>", strings.Repeat("\x00", 9000), uint16(300))
	f.Add("", "", "", "", uint16(1))
	f.Fuzz(func(t *testing.T, user, container, groups, command string, repeat uint16) {
		split := func(s string) []string {
			if s == "" {
				return nil
			}
			parts := strings.Split(s, "\n")
			// Grow the input cheaply, beyond what the fuzzer writes itself,
			// up to a MiB, as much as a key may carry.
			for size := len(s) + 1; size < 1<<19 && len(parts) < 1<<14; size *= 2 {
				if repeat == 0 {
					break
				}
				repeat--
				parts = append(parts, parts...)
			}
			return parts
		}
		e := record.Entry{User: user, Groups: split(groups), Time: t0, Operation: record.OpExec, Container: container, Command: split(command), RequestUID: "req-1"}
		rec, _ := record.Apply(nil, uid, e, time.Hour, record.ActionEvict)
		e2 := e
		e2.RequestUID, e2.User, e2.Time = "req-2", "x"+user, t0.Add(time.Minute)
		rec, _ = record.Apply(&rec, uid, e2, time.Hour, record.ActionEvict)
		trial, _ := record.ApplyTrial(nil, uid, e, time.Minute)

		labels, annotations := rec.Labels(), rec.Annotations()
		for k, v := range trial.Annotations() {
			annotations[k] = v
		}
		for _, k := range []string{record.FirstEntryAnnotation, record.LastEntryAnnotation} {
			if n := len(annotations[k]); n > record.MaxEntryBytes {
				t.Fatalf("%s is %d bytes, more than %d", k, n, record.MaxEntryBytes)
			}
		}
		if n := recordSize(labels, annotations); n > record.MaxRecordBytes {
			t.Fatalf("record is %d bytes, more than %d", n, record.MaxRecordBytes)
		}
		got, err := record.Read(labels, annotations)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if !reflect.DeepEqual(got, rec) {
			t.Fatalf("Read =\n%+v\nwant\n%+v", got, rec)
		}
		gotTrial, err := record.ReadTrial(annotations)
		if err != nil {
			t.Fatalf("ReadTrial: %v", err)
		}
		if !reflect.DeepEqual(gotTrial, trial) {
			t.Fatalf("ReadTrial =\n%+v\nwant\n%+v", gotTrial, trial)
		}
		if rec.Entries != 2 && user != "x"+user {
			// "x"+user differs from user, so the second entry is never a repeat.
			t.Fatalf("entries = %d, want 2", rec.Entries)
		}
	})
}

// TestApplyTrial: trial entries follow the rules of real ones, in their own
// annotation: a repeat that asks for less time moves WouldEvictAt earlier, an
// annotation bound to another pod is replaced, a damaged one is an error.
func TestApplyTrial(t *testing.T) {
	tr, outcome := record.ApplyTrial(nil, uid, alice(t0, "req-1"), time.Hour)
	if outcome != record.OutcomeFirst || tr.Entries != 1 || !tr.WouldEvictAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("first trial entry: %+v, %s", tr, outcome)
	}
	tr, outcome = record.ApplyTrial(&tr, uid, alice(t0.Add(time.Second), "req-1"), 10*time.Minute)
	if outcome != record.OutcomeEarlier || tr.Entries != 1 || !tr.WouldEvictAt.Equal(t0.Add(10*time.Minute)) {
		t.Errorf("same admission, shorter ttl: %+v, %s; want earlier, t0+10m", tr, outcome)
	}
	if _, outcome := record.ApplyTrial(&tr, uid, alice(t0.Add(time.Second), "req-2"), 2*time.Hour); outcome != record.OutcomeRepeat {
		t.Errorf("SPDY fallback: %s, want repeat", outcome)
	}
	added, outcome := record.ApplyTrial(&tr, uid, alice(t0.Add(time.Minute), "req-3"), 2*time.Hour)
	if outcome != record.OutcomeAdded || added.Entries != 2 || !added.WouldEvictAt.Equal(t0.Add(10*time.Minute)) {
		t.Errorf("later entry: %+v, %s; want added, WouldEvictAt kept", added, outcome)
	}
	if other, outcome := record.ApplyTrial(&tr, "another-pod", alice(t0, "req-4"), time.Hour); outcome != record.OutcomeFirst || other.PodUID != "another-pod" {
		t.Errorf("trial record of another pod: %+v, %s; want a new one", other, outcome)
	}
	if _, err := record.ReadTrial(map[string]string{}); !errors.Is(err, record.ErrNoRecord) {
		t.Errorf("ReadTrial of nothing: %v, want ErrNoRecord", err)
	}
	for _, bad := range []string{"{", `{"entries":1}`, `{"podUID":"u","wouldEvictAt":"soon"}`} {
		if _, err := record.ReadTrial(map[string]string{record.TrialAnnotation: bad}); err == nil || errors.Is(err, record.ErrNoRecord) || !strings.Contains(err.Error(), record.TrialAnnotation) {
			t.Errorf("ReadTrial(%q) = %v, want an error naming the annotation", bad, err)
		}
	}
}

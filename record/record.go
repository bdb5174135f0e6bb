// Package record is the contract between exec-reaper's provider, which writes a
// record on every pod that someone entered, and its deleter, which evicts that
// pod at the record's deadline.
//
// The record lives on the pod itself, so it is durable, visible with kubectl,
// bound to that pod and gone with it:
//
//	labels:
//	  exec-reaper.io/deadline: "1795000000"              # Unix seconds; the deleter selects on it
//	  exec-reaper.io/pod-uid: "6f0c…"                     # the pod the record is bound to
//	annotations:
//	  exec-reaper.io/deadline: "2026-11-26T10:45:00Z"    # the same instant, for people
//	  exec-reaper.io/pod-uid: "6f0c…"                     # the pod the record is bound to
//	  exec-reaper.io/entries: "2"                        # distinct entries so far
//	  exec-reaper.io/first-entry: '{"user":"alice@example.com",…}'
//	  exec-reaper.io/last-entry: '{"user":"bob",…}'
//	  exec-reaper.io/recent: '[{"uid":"…","sum":"…","time":"…"},…]'   # the last few entries' fingerprints
//	  exec-reaper.io/trial: '{"entries":1,"last":{…},"wouldEvictAt":"…",…}'  # entries of constraints in trial mode
//
// Usernames, groups and commands can hold any character, so they live only in
// annotations. What binds the record (its deadline and pod UID) is in labels,
// authoritative for the deleter; the annotations explain it. Labels because
// the API server's NodeRestriction plugin refuses a kubelet's label changes
// through pods/status but not its annotation changes: a node credential
// stolen from an entered container cannot unbind a record by deleting an
// annotation. The chart's ValidatingAdmissionPolicy guards both.
//
// What is stored is bounded whatever a requester sends: the JSON of one
// stored entry is at most MaxEntryBytes (Bound shortens the command, then the
// groups, then the user and container, and says so in the entry's Truncated
// and Digests), so the whole record stays under MaxRecordBytes, far below the
// 256 KiB Kubernetes allows for all of a pod's annotations together.
//
// # Repeats
//
// One act must yield one entry and one Event, and two acts two. An entry is a
// repeat, and adds nothing, when
//   - it carries the request UID of an entry already recorded: the same
//     admission, reaching the provider once per matching constraint; or
//   - it is identical (user, operation, container, command) to one of the
//     last MaxRecent entries and at most RepeatWindow apart from it: the same
//     kubectl invocation reaching admission twice, which happens when its
//     WebSocket connection fails after admission and it falls back to SPDY,
//     within moments, under a new request UID.
//
// Against a working kubelet one kubectl exec is one admission. The window is
// short so that a person running the same command again on purpose, which
// takes longer than RepeatWindow, is recorded again; the list is kept so that
// someone else's entry in between does not split one invocation in two. The
// price: a script running the same command in a tight loop, less than
// RepeatWindow apart, is counted once; its deadline is the same either way,
// which is what matters. A repeat still moves the deadline earlier when it asks for less time (two
// constraints with different TTLs match the same admission): the deadline is
// always the earliest any matching constraint asked for.
package record

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Prefix is the common prefix of every label and annotation key exec-reaper owns.
const Prefix = "exec-reaper.io/"

const (
	// DeadlineLabel holds the deadline as decimal Unix seconds. The deleter's
	// informer selects on its existence, so unrecorded pods are never cached.
	DeadlineLabel = Prefix + "deadline"
	// Selector is the label selector of recorded pods: those that carry
	// DeadlineLabel, whatever its value (a damaged one is reported, not
	// hidden). The deleter's informer lists and watches with it.
	Selector = DeadlineLabel
	// ActionLabel says what the deleter does with the pod at its deadline
	// when a constraint asked for more than eviction: "quarantine" (see
	// Action). Absent on a record whose constraints asked for nothing else,
	// as on every record written before it existed. A label, like what binds
	// the record, because it decides what happens to the pod: a node
	// credential stolen from the entered container cannot turn a quarantine,
	// which keeps the evidence, into an eviction, which destroys it.
	ActionLabel = Prefix + "action"
	// DeadlineAnnotation holds the deadline in RFC 3339, for people.
	DeadlineAnnotation = Prefix + "deadline"
	// PodUIDLabel holds the UID of the pod the record was written on. The
	// deleter evicts with this UID as a precondition, so a pod recreated under the
	// same name is never evicted for its predecessor's entry.
	PodUIDLabel = Prefix + "pod-uid"
	// PodUIDAnnotation repeats the pod UID for records written before it was a
	// label: Binding falls back to it when the label is missing.
	PodUIDAnnotation = Prefix + "pod-uid"
	// EntriesAnnotation counts distinct entries, in decimal.
	EntriesAnnotation = Prefix + "entries"
	// FirstEntryAnnotation is the JSON of the entry that set the deadline first.
	FirstEntryAnnotation = Prefix + "first-entry"
	// LastEntryAnnotation is the JSON of the most recent distinct entry.
	LastEntryAnnotation = Prefix + "last-entry"
	// RecentAnnotation is the JSON list of the fingerprints of the last
	// MaxRecent distinct entries, oldest first: what repeats are compared with.
	RecentAnnotation = Prefix + "recent"
	// TrialAnnotation is the JSON of the entries recorded for constraints in
	// trial mode (Trial). It never sets the deadline label.
	TrialAnnotation = Prefix + "trial"
)

// RepeatWindow is how close in time two identical entries with different
// request UIDs must be to count as one: a kubectl exec whose WebSocket
// connection failed after admission falls back to SPDY within moments, under
// a new request UID (11–44 ms after the first admission, measured on a
// control plane without nodes, where every exec falls back). A person running
// the same command again takes longer. See the package doc.
const RepeatWindow = time.Second

// MaxRecent is how many recent entries' fingerprints a record keeps.
const MaxRecent = 8

// MaxEntryBytes bounds the JSON of one stored entry (see Bound).
const MaxEntryBytes = 4 << 10

// MaxRecordBytes bounds the keys and values of all of exec-reaper's labels
// and annotations on a pod together: two entries, a trial entry, and the
// small rest.
const MaxRecordBytes = 16 << 10

// Field names that Bound (or the template) may shorten, as in Entry.Truncated.
const (
	FieldCommand   = "command"
	FieldContainer = "container"
	FieldGroups    = "groups"
	FieldUser      = "user"
)

// Action is what a constraint asks the deleter to do with an entered pod at
// its deadline.
type Action string

const (
	// ActionEvict evicts the pod (or whatever the deleter is configured to
	// do with pods whose constraints asked for nothing else). The default.
	ActionEvict Action = "evict"
	// ActionQuarantine takes the pod out of service and keeps it for
	// forensics until the deleter's retention ends.
	ActionQuarantine Action = "quarantine"
)

// Valid reports whether a is one of the known actions.
func (a Action) Valid() bool { return a == ActionEvict || a == ActionQuarantine }

// Stricter returns the action that serves both a and b: quarantine when
// either asked for it, since it removes the pod from service at the same
// deadline as eviction and keeps the evidence that eviction destroys.
func Stricter(a, b Action) Action {
	if a == ActionQuarantine || b == ActionQuarantine {
		return ActionQuarantine
	}
	return ActionEvict
}

// ActionOf reads the action a record asks for from a pod's labels: eviction
// when ActionLabel is absent. ok is false for a value this version does not
// know (written by a newer provider); the caller decides what to do then.
func ActionOf(labels map[string]string) (a Action, ok bool) {
	v, present := labels[ActionLabel]
	if !present {
		return ActionEvict, true
	}
	a = Action(v)
	return a, a.Valid()
}

// Operation is how someone entered a pod.
type Operation string

// The operations exec-reaper records.
const (
	OpExec        Operation = "exec"
	OpAttach      Operation = "attach"
	OpDebug       Operation = "debug"
	OpPortForward Operation = "portforward"
)

// Valid reports whether o is one of the known operations.
func (o Operation) Valid() bool {
	switch o {
	case OpExec, OpAttach, OpDebug, OpPortForward:
		return true
	}
	return false
}

// Entry is one person's way into a pod.
type Entry struct {
	// User is the Kubernetes username of whoever entered.
	User string `json:"user"`
	// Groups are that user's groups at the time.
	Groups []string `json:"groups,omitempty"`
	// Time is when the admission request was recorded, to the second.
	Time time.Time `json:"time"`
	// Operation is how they entered.
	Operation Operation `json:"operation"`
	// Container is the target container; empty when the client left the choice
	// to the API server (the default container).
	Container string `json:"container,omitempty"`
	// Command is the command of an exec or of a debug container.
	Command []string `json:"command,omitempty"`
	// RequestUID is the AdmissionRequest UID that carried the entry.
	RequestUID string `json:"requestUID"`
	// Truncated names the fields that were shortened before they were stored
	// (by the template, or by Bound), sorted: a subset of command, container,
	// groups and user.
	Truncated []string `json:"truncated,omitempty"`
	// Digests holds, for each field in Truncated, the lowercase hex SHA-256
	// of the JSON of the whole original value (see Digest), so that the
	// original can be checked against an audit log.
	Digests map[string]string `json:"digests,omitempty"`
}

// Mark is the fingerprint of an entry, kept for the last few entries so that
// repeats are recognised (see the package doc).
type Mark struct {
	// RequestUID is the entry's AdmissionRequest UID.
	RequestUID string `json:"uid"`
	// Sum identifies the act: user, operation, container, command (and the
	// digests of any of them that were shortened).
	Sum string `json:"sum"`
	// Time is when the entry was recorded, to the millisecond.
	Time time.Time `json:"time"`
}

// Mark returns e's fingerprint, as recorded at the given time.
func (e Entry) Mark(at time.Time) Mark {
	digests := map[string]string{}
	for _, f := range []string{FieldUser, FieldContainer, FieldCommand} {
		if d, ok := e.Digests[f]; ok {
			digests[f] = d
		}
	}
	b, _ := json.Marshal(struct {
		User      string            `json:"u"`
		Operation Operation         `json:"o"`
		Container string            `json:"c"`
		Command   []string          `json:"x"`
		Digests   map[string]string `json:"d"`
	}{e.User, e.Operation, e.Container, e.Command, digests})
	sum := sha256.Sum256(b)
	return Mark{RequestUID: e.RequestUID, Sum: hex.EncodeToString(sum[:8]), Time: at.UTC().Truncate(time.Millisecond)}
}

// RepeatOf returns the mark that m repeats, if any: the one with the same
// request UID, or else the latest of the same act within RepeatWindow.
func RepeatOf(marks []Mark, m Mark) (Mark, bool) {
	for i := len(marks) - 1; i >= 0; i-- {
		if marks[i].RequestUID == m.RequestUID {
			return marks[i], true
		}
	}
	for i := len(marks) - 1; i >= 0; i-- {
		d := m.Time.Sub(marks[i].Time)
		if marks[i].Sum == m.Sum && d <= RepeatWindow && d >= -RepeatWindow {
			return marks[i], true
		}
	}
	return Mark{}, false
}

// remember appends m to marks, keeping the last MaxRecent, in a new slice.
func remember(marks []Mark, m Mark) []Mark {
	out := append(slices.Clone(marks), m)
	if len(out) > MaxRecent {
		out = out[len(out)-MaxRecent:]
	}
	return out
}

// Record is the state exec-reaper keeps on a pod.
type Record struct {
	// Deadline is when the pod must go.
	Deadline time.Time
	// PodUID is the UID of the pod the record belongs to.
	PodUID types.UID
	// Action is what is done with the pod at the deadline: the strictest
	// that any entry's constraint asked for (Stricter).
	Action Action
	// Entries counts distinct entries.
	Entries int
	// First is the entry that first set a deadline.
	First Entry
	// Last is the most recent distinct entry.
	Last Entry
	// Recent holds the fingerprints of the last MaxRecent distinct entries,
	// oldest first.
	Recent []Mark
}

// Outcome says what an entry changed.
type Outcome string

const (
	// OutcomeFirst means the pod had no record: this entry set the deadline.
	OutcomeFirst Outcome = "first"
	// OutcomeAdded means a further, distinct entry into an already recorded pod.
	OutcomeAdded Outcome = "added"
	// OutcomeRepeat means the entry repeats one already recorded (the same
	// admission or the same kubectl call reaching the provider again); nothing
	// changes and no Event is due.
	OutcomeRepeat Outcome = "repeat"
	// OutcomeEarlier means a repeat that asked for less time: it moved the
	// deadline earlier, and the entry's Event is updated, not added.
	OutcomeEarlier Outcome = "earlier"
	// OutcomeStricter means a repeat that asked for a stricter action
	// (quarantine where the record asked for eviction) and no earlier
	// deadline: the record's action changes, and the entry's Event is
	// updated, not added.
	OutcomeStricter Outcome = "stricter"
)

// ErrNoRecord is returned by Read for a pod that carries no record.
var ErrNoRecord = errors.New("no exec-reaper record")

// ErrUnknownAction is wrapped by Read's error for a record whose ActionLabel
// holds a value this version does not know (written by a newer provider, or
// by whoever created the pod). Everything else in the record is read as
// usual; Action reads as ActionEvict.
var ErrUnknownAction = errors.New("unknown action")

// Read decodes the record on a pod from its labels and annotations. A pod
// without the deadline label has no record (ErrNoRecord); a missing or
// malformed deadline, pod UID or entry is an error that says which key is
// wrong (an unreadable entry count only reads as zero). On an error in the
// entries, the record returned still holds the deadline, pod UID and count;
// on an unknown action (ErrUnknownAction) it is complete, its Action evict.
func Read(labels, annotations map[string]string) (Record, error) {
	deadline, uid, err := Binding(labels, annotations)
	r := Record{Deadline: deadline, PodUID: uid}
	if err != nil {
		return r, err
	}
	action, known := ActionOf(labels)
	r.Action = ActionEvict
	if known {
		r.Action = action
	}
	if n, err := strconv.Atoi(annotations[EntriesAnnotation]); err == nil && n > 0 {
		r.Entries = n
	}
	if err := decodeEntry(annotations, FirstEntryAnnotation, &r.First); err != nil {
		return r, err
	}
	if err := decodeEntry(annotations, LastEntryAnnotation, &r.Last); err != nil {
		return r, err
	}
	r.Recent = readMarks(annotations[RecentAnnotation])
	if !known {
		return r, fmt.Errorf("label %s=%q is neither %q nor %q: %w", ActionLabel, string(action), ActionEvict, ActionQuarantine, ErrUnknownAction)
	}
	return r, nil
}

// readMarks decodes a list of marks. The list only helps to recognise
// repeats, so a missing or damaged one (a record written before it existed)
// reads as empty rather than as an error.
func readMarks(s string) []Mark {
	var marks []Mark
	if s == "" || json.Unmarshal([]byte(s), &marks) != nil || len(marks) == 0 || len(marks) > MaxRecent {
		return nil
	}
	return marks
}

func decodeEntry(annotations map[string]string, key string, e *Entry) error {
	s, ok := annotations[key]
	if !ok {
		return fmt.Errorf("annotation %s is missing", key)
	}
	if err := json.Unmarshal([]byte(s), e); err != nil {
		return fmt.Errorf("annotation %s: %w", key, err)
	}
	return nil
}

// Binding returns what the deleter needs of a record: the deadline and the UID
// of the pod it is bound to, both from labels (the UID from the annotation
// only for a record written before the UID was a label). Unlike Read it
// ignores the descriptive annotations, so a damaged entry never stops an
// eviction that is due.
func Binding(labels, annotations map[string]string) (time.Time, types.UID, error) {
	v, ok := labels[DeadlineLabel]
	if !ok {
		return time.Time{}, "", ErrNoRecord
	}
	deadline, err := ParseDeadline(v)
	if err != nil {
		return time.Time{}, "", err
	}
	// The label wins over the annotation: a kubelet may change annotations
	// through pods/status, so a disagreement must not unbind the record.
	uid := types.UID(labels[PodUIDLabel])
	if uid == "" {
		uid = types.UID(annotations[PodUIDAnnotation])
	}
	if uid == "" {
		return deadline, "", fmt.Errorf("label %s is missing", PodUIDLabel)
	}
	return deadline, uid, nil
}

// ParseDeadline decodes the deadline label's value: positive decimal Unix seconds.
func ParseDeadline(v string) (time.Time, error) {
	s, err := strconv.ParseInt(v, 10, 64)
	if err != nil || s <= 0 {
		return time.Time{}, fmt.Errorf("label %s=%q is not a positive Unix time in seconds", DeadlineLabel, v)
	}
	return time.Unix(s, 0).UTC(), nil
}

// FormatDeadline encodes a deadline as the label's value.
func FormatDeadline(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// Deadline returns when a pod entered at now with the given ttl must go, given
// the deadline already recorded (zero if none): the earlier of the two, so
// entering again never moves a deadline later. The result is rounded up to a
// whole second, as the label stores seconds.
func Deadline(existing, now time.Time, ttl time.Duration) time.Time {
	d := now.Add(ttl)
	if t := d.Truncate(time.Second); !t.Equal(d) {
		d = t.Add(time.Second)
	}
	if !existing.IsZero() && existing.Before(d) {
		return existing.UTC()
	}
	return d.UTC()
}

// Apply folds a new entry into the record found on a pod with UID podUID.
// existing is the record read from the pod, or nil if it has none or one that
// does not decode. A record bound to another UID (labels copied from another
// pod's manifest, say) is no record: the deleter would never act on it either.
// The entry is stored bounded (Bound). action is what the entry's constraint
// asks for at the deadline; the record keeps the stricter of it and what it
// held (Stricter), so no entry can soften what another asked. Apply is pure:
// the caller writes the result.
func Apply(existing *Record, podUID types.UID, e Entry, ttl time.Duration, action Action) (Record, Outcome) {
	at := e.Time // the deadline counts from the exact time, the record keeps seconds
	e = Bound(e)
	e.Time = e.Time.UTC().Truncate(time.Second)
	m := e.Mark(at)
	if existing == nil || existing.PodUID != podUID {
		return Record{Deadline: Deadline(time.Time{}, at, ttl), PodUID: podUID, Action: Stricter(action, ActionEvict),
			Entries: 1, First: e, Last: e, Recent: []Mark{m}}, OutcomeFirst
	}
	r := *existing
	stricter := Stricter(r.Action, action)
	changed := stricter != Stricter(r.Action, ActionEvict) // a zero Action reads as eviction
	r.Action = stricter
	marks := r.Recent
	if len(marks) == 0 && r.Last.RequestUID != "" {
		// A record from before the list existed: its last entry is all there is.
		marks = []Mark{r.Last.Mark(r.Last.Time)}
	}
	if d, outcome, ok := foldRepeat(marks, m, r.Deadline, at, ttl); ok {
		r.Deadline = d
		if outcome == OutcomeRepeat && changed {
			outcome = OutcomeStricter
		}
		return r, outcome
	}
	r.Deadline = Deadline(r.Deadline, at, ttl)
	r.Entries = max(r.Entries, 1) + 1
	if r.First.User == "" {
		r.First = e // a repaired record whose first entry was lost
	}
	r.Last = e
	r.Recent = remember(marks, m)
	return r, OutcomeAdded
}

// Labels returns the record's labels.
func (r Record) Labels() map[string]string {
	l := map[string]string{DeadlineLabel: FormatDeadline(r.Deadline), PodUIDLabel: string(r.PodUID)}
	if r.Action == ActionQuarantine {
		l[ActionLabel] = string(r.Action)
	}
	return l
}

// Annotations returns the record's annotations.
func (r Record) Annotations() map[string]string {
	return map[string]string{
		DeadlineAnnotation:   r.Deadline.UTC().Format(time.RFC3339),
		PodUIDAnnotation:     string(r.PodUID),
		EntriesAnnotation:    strconv.Itoa(r.Entries),
		FirstEntryAnnotation: entryJSON(r.First),
		LastEntryAnnotation:  entryJSON(r.Last),
		RecentAnnotation:     marksJSON(r.Recent),
	}
}

func marksJSON(marks []Mark) string {
	if marks == nil {
		marks = []Mark{}
	}
	b, _ := json.Marshal(marks) // marks always encode.
	return string(b)
}

// entryJSON encodes e for an annotation, leaving <, > and & as they are:
// people read these with kubectl, and no browser does.
func entryJSON(e Entry) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(e) // Entry always encodes.
	return strings.TrimSuffix(b.String(), "\n")
}

// foldRepeat reports whether m repeats one of marks and, if it does, the
// deadline after it: current, or earlier when the repeat asks for less time
// (OutcomeEarlier rather than OutcomeRepeat). The same admission's deadlines
// count from its first call, so the earliest wins whatever the order of the
// calls.
func foldRepeat(marks []Mark, m Mark, current, at time.Time, ttl time.Duration) (time.Time, Outcome, bool) {
	prev, ok := RepeatOf(marks, m)
	if !ok {
		return current, "", false
	}
	from := at
	if prev.RequestUID == m.RequestUID {
		from = prev.Time
	}
	if d := Deadline(current, from, ttl); d.Before(current) {
		return d, OutcomeEarlier, true
	}
	return current, OutcomeRepeat, true
}

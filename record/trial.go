package record

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Trial is what exec-reaper keeps on a pod for the constraints in trial mode,
// in the one annotation TrialAnnotation: the entries they saw and when the pod
// would be evicted if they were enforced. It has no consequence: it never sets
// the deadline label, which is all the deleter reads, and never changes the
// record's deadline.
type Trial struct {
	// PodUID is the UID of the pod the trial entries were recorded on; an
	// annotation copied from another pod is no trial record.
	PodUID types.UID `json:"podUID"`
	// Entries counts distinct trial entries.
	Entries int `json:"entries"`
	// Last is the most recent distinct trial entry.
	Last Entry `json:"last"`
	// WouldEvictAt is the deadline the trial entries would have set: the
	// earliest of their entry times plus their constraints' ttl.
	WouldEvictAt time.Time `json:"wouldEvictAt"`
	// Recent holds the fingerprints of the last MaxRecent trial entries, to
	// recognise repeats as a Record does.
	Recent []Mark `json:"recent,omitempty"`
}

// ReadTrial decodes the trial record in a pod's annotations: ErrNoRecord if
// there is none, an error naming the annotation if it does not decode.
func ReadTrial(annotations map[string]string) (Trial, error) {
	var t Trial
	s, ok := annotations[TrialAnnotation]
	if !ok {
		return t, ErrNoRecord
	}
	if err := json.Unmarshal([]byte(s), &t); err != nil {
		return Trial{}, fmt.Errorf("annotation %s: %w", TrialAnnotation, err)
	}
	if t.PodUID == "" || t.WouldEvictAt.IsZero() {
		return Trial{}, fmt.Errorf("annotation %s has no pod UID or deadline", TrialAnnotation)
	}
	if len(t.Recent) == 0 || len(t.Recent) > MaxRecent {
		t.Recent = nil
	}
	t.WouldEvictAt = t.WouldEvictAt.UTC()
	return t, nil
}

// ApplyTrial folds a trial entry into the trial record found on a pod with
// UID podUID (nil if it has none or one that does not decode), as Apply does
// for a Record: repeats are recognised the same way, and a repeat that asks
// for less time moves WouldEvictAt earlier. ApplyTrial is pure.
func ApplyTrial(existing *Trial, podUID types.UID, e Entry, ttl time.Duration) (Trial, Outcome) {
	at := e.Time
	e = Bound(e)
	e.Time = e.Time.UTC().Truncate(time.Second)
	m := e.Mark(at)
	if existing == nil || existing.PodUID != podUID {
		return Trial{PodUID: podUID, Entries: 1, Last: e, WouldEvictAt: Deadline(time.Time{}, at, ttl), Recent: []Mark{m}}, OutcomeFirst
	}
	t := *existing
	if d, outcome, ok := foldRepeat(t.Recent, m, t.WouldEvictAt, at, ttl); ok {
		t.WouldEvictAt = d
		return t, outcome
	}
	t.WouldEvictAt = Deadline(t.WouldEvictAt, at, ttl)
	t.Entries = max(t.Entries, 0) + 1
	t.Last = e
	t.Recent = remember(t.Recent, m)
	return t, OutcomeAdded
}

// Annotations returns the trial record's one annotation.
func (t Trial) Annotations() map[string]string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // as entryJSON: people read it with kubectl
	_ = enc.Encode(struct {
		Entries      int       `json:"entries"`
		WouldEvictAt string    `json:"wouldEvictAt"`
		Last         Entry     `json:"last"`
		PodUID       types.UID `json:"podUID"`
		Recent       []Mark    `json:"recent,omitempty"`
	}{t.Entries, t.WouldEvictAt.UTC().Format(time.RFC3339), t.Last, t.PodUID, t.Recent}) // always encodes
	return map[string]string{TrialAnnotation: strings.TrimSuffix(b.String(), "\n")}
}

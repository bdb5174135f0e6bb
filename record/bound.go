package record

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"unicode/utf8"
)

// maxOtherBytes bounds, in encoded JSON, the fields no requester controls
// (request UID, operation): the provider validates them, and Bound keeps its
// promise even for entries that did not come through the provider.
const maxOtherBytes = 256

// shortenable lists the fields Bound shortens, in the order it shortens them.
var shortenable = []string{FieldCommand, FieldGroups, FieldUser, FieldContainer}

// Digest returns the lowercase hex SHA-256 of v's JSON as Go's json.Marshal
// writes it, which is how Rego's json.marshal writes it too (OPA calls
// json.Marshal), so a digest made by the template and one made by Bound agree.
func Digest(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Bound returns e as it may be stored: its JSON (as the record's annotations
// hold it) at most MaxEntryBytes. When e is larger it shortens the command
// (keeping its first arguments), then the groups (keeping the first), then the
// user and the container (keeping their beginning), each only as far as
// needed; it adds each shortened field to Truncated and, unless the template
// already gave one, the Digest of the value it received to Digests. It also
// makes every string valid UTF-8 (as JSON stores it), drops Truncated names
// and Digests that are not about a shortened field, and returns empty lists
// and maps as nil (as they read back). The input is never changed.
func Bound(e Entry) Entry {
	e = normalize(e)
	if entrySize(e) <= MaxEntryBytes {
		return e
	}
	// First each field is shortened only down to a share of the bound, so
	// that a huge list of groups does not cost the whole command; only if
	// that is not enough (it always is for what the provider accepts) are
	// fields shortened further, in the same order.
	for _, floors := range []map[string]int{keep, nil} {
		for _, f := range shortenable {
			over := entrySize(e) - MaxEntryBytes
			if over <= 0 {
				return e
			}
			if fieldSize(e, f) <= floors[f] {
				continue
			}
			if !slices.Contains(e.Truncated, f) {
				if _, ok := e.Digests[f]; !ok {
					if e.Digests == nil {
						e.Digests = map[string]string{}
					}
					e.Digests[f] = Digest(fieldValue(e, f))
				}
				e.Truncated = append(e.Truncated, f)
				slices.Sort(e.Truncated)
				over = entrySize(e) - MaxEntryBytes
			}
			// The estimate of an encoding's size is exact for what Go's
			// encoder does today; the loop keeps the bound even if it were not.
			for over > 0 && fieldSize(e, f) > floors[f] {
				shorten(&e, f, min(over, fieldSize(e, f)-floors[f]))
				over = entrySize(e) - MaxEntryBytes
			}
		}
	}
	return e
}

// keep is how much of each field (its encoded size) the first round of
// shortening leaves: together with the rest of an entry, less than
// MaxEntryBytes.
var keep = map[string]int{FieldCommand: 1536, FieldGroups: 1024, FieldUser: 512, FieldContainer: 256}

// fieldSize is the encoded size of field f of e, 0 when it is empty.
func fieldSize(e Entry, f string) int {
	switch f {
	case FieldCommand:
		return listSize(e.Command)
	case FieldGroups:
		return listSize(e.Groups)
	case FieldUser:
		if e.User != "" {
			return stringSize(e.User)
		}
	case FieldContainer:
		if e.Container != "" {
			return stringSize(e.Container)
		}
	}
	return 0
}

func listSize(list []string) int {
	if len(list) == 0 {
		return 0
	}
	n := 1 + len(list) // brackets and commas
	for _, s := range list {
		n += stringSize(s)
	}
	return n
}

// normalize returns a copy of e that shares nothing with it, with valid
// UTF-8, bounded fields no requester controls, consistent Truncated and
// Digests, and nil for empty lists and maps.
func normalize(e Entry) Entry {
	e.User = valid(e.User)
	e.Container = valid(e.Container)
	e.RequestUID = cut(valid(e.RequestUID), maxOtherBytes)
	e.Operation = Operation(cut(valid(string(e.Operation)), maxOtherBytes))
	e.Groups = validAll(e.Groups)
	e.Command = validAll(e.Command)
	var truncated []string
	for _, f := range shortenable {
		if slices.Contains(e.Truncated, f) {
			truncated = append(truncated, f)
		}
	}
	slices.Sort(truncated)
	e.Truncated = truncated
	var digests map[string]string
	for _, f := range truncated {
		if d, ok := e.Digests[f]; ok && isDigest(d) {
			if digests == nil {
				digests = map[string]string{}
			}
			digests[f] = d
		}
	}
	e.Digests = digests
	return e
}

func isDigest(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func valid(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

func validAll(list []string) []string {
	if len(list) == 0 {
		return nil
	}
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = valid(s)
	}
	return out
}

func fieldValue(e Entry, f string) any {
	switch f {
	case FieldCommand:
		return e.Command
	case FieldGroups:
		return e.Groups
	case FieldUser:
		return e.User
	}
	return e.Container
}

// shorten removes at least over encoded bytes from field f of e, or all of it.
func shorten(e *Entry, f string, over int) {
	switch f {
	case FieldCommand:
		e.Command = shortenList(e.Command, over)
	case FieldGroups:
		e.Groups = shortenList(e.Groups, over)
	case FieldUser:
		e.User = cut(e.User, max(stringSize(e.User)-over, 0))
	case FieldContainer:
		e.Container = cut(e.Container, max(stringSize(e.Container)-over, 0))
	}
}

// shortenList drops items from the end of list, then cuts the last one kept,
// until its encoding is at least over bytes shorter; nil if nothing is left.
func shortenList(list []string, over int) []string {
	list = slices.Clone(list)
	for len(list) > 0 && over > 0 {
		last := list[len(list)-1]
		cost := stringSize(last) // what dropping it saves, with its comma
		if len(list) > 1 {
			cost++
		}
		if over >= cost {
			list = list[:len(list)-1]
			over -= cost
			continue
		}
		if kept := cut(last, stringSize(last)-over); kept != "" {
			list[len(list)-1] = kept
		} else {
			list = list[:len(list)-1]
		}
		over = 0
	}
	if len(list) == 0 {
		return nil
	}
	return list
}

// cut returns the longest prefix of s, on a character boundary, whose JSON
// string encoding (quotes included) is at most size bytes.
func cut(s string, size int) string {
	if stringSize(s) <= size {
		return s
	}
	n := 2 // the quotes
	for i, r := range s {
		c := runeSize(r)
		if n+c > size {
			return s[:i]
		}
		n += c
	}
	return s
}

// stringSize is the length of s encoded as a JSON string, quotes included,
// as entryJSON encodes it (HTML characters left as they are).
func stringSize(s string) int {
	n := 2
	for _, r := range s {
		n += runeSize(r)
	}
	return n
}

// runeSize is the length of r in a JSON string as Go's encoder writes it
// without HTML escaping.
func runeSize(r rune) int {
	switch {
	case r == '"' || r == '\\' || r == '\n' || r == '\r' || r == '\t' || r == '\b' || r == '\f':
		return 2
	case r < 0x20, r == '\u2028', r == '\u2029':
		return 6 // \u00XX, \u2028, \u2029
	}
	return utf8.RuneLen(r)
}

// entrySize is the length of e's JSON as the record stores it.
func entrySize(e Entry) int { return len(entryJSON(e)) }

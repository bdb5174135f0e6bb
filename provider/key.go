package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	kjson "sigs.k8s.io/json"

	"github.com/exec-reaper/exec-reaper/record"
)

// KeyVersion is the prefix of the keys the templates build today (contract
// v2, see KeyVersionV1 for the one before). A provider rejects keys of a
// version it does not know, so an old provider never misreads a newer
// template.
const KeyVersion = "v2:"

// KeyVersionV1 is the prefix of the keys of older templates, still accepted:
// no trial mode, nothing shortened by the template.
const KeyVersionV1 = "v1:"

// MaxKeyBytes bounds one key. A v2 key stays far below it whatever the
// requester sends, since the template shortens long values; a v1 key (older
// template) may carry a long command whole, and the provider bounds what it
// stores (record.Bound) either way.
const MaxKeyBytes = 1 << 20

// MaxUIDBytes bounds the request UID: the API server makes it, a UUID.
const MaxUIDBytes = 128

// The bounds the template applies to what a requester controls (KEY-V2): the
// same numbers are in templates/exec-reaper/template.yaml, and a test there
// checks that they agree. Lengths count characters (code points), as Rego's
// substring does.
const (
	// MaxUserChars bounds the username.
	MaxUserChars = 256
	// MaxContainerChars bounds the container name.
	MaxContainerChars = 256
	// MaxGroups bounds the number of groups.
	MaxGroups = 32
	// MaxGroupChars bounds one group.
	MaxGroupChars = 256
	// MaxCommandArgs bounds the number of command arguments.
	MaxCommandArgs = 32
	// MaxArgChars bounds one command argument.
	MaxArgChars = 1024
)

// MaxTTL bounds the ttl a constraint may ask for; a typo such as "5000h"
// would otherwise keep a tampered pod around for half a year.
const MaxTTL = 30 * 24 * time.Hour

// Request is one decoded key: someone entering a pod.
type Request struct {
	// UID is the AdmissionRequest UID. It makes every key unique, so
	// Gatekeeper's response cache never hides an entry.
	UID string `json:"uid"`
	// Namespace and Name identify the pod.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// TTL is how long the pod may live after it was entered, as a Go duration.
	TTL string `json:"ttl"`
	// User and Groups are the requester's identity.
	User   string   `json:"user"`
	Groups []string `json:"groups"`
	// Operation is exec, attach, debug or portforward.
	Operation record.Operation `json:"operation"`
	// Container is the target container, possibly empty.
	Container string `json:"container"`
	// Command is the exec command or the debug container's command.
	Command []string `json:"command"`
	// Trial is set by a constraint in trial mode: the entry is recorded
	// without consequence (v2).
	Trial bool `json:"trial"`
	// Truncated names the fields the template shortened, sorted (v2).
	Truncated []string `json:"truncated"`
	// Digests holds, for each field in Truncated, the lowercase hex SHA-256
	// of the JSON of its whole original value (v2).
	Digests map[string]string `json:"digests"`
	// Action is what the constraint asks for at the deadline: "quarantine",
	// or "evict" (the default, also when absent). Optional, unlike every
	// other v2 field: a template sends it only when a constraint asks for
	// quarantine, so the keys of every other constraint are what they were,
	// and a provider that predates actions refuses only the keys it could
	// not honour (unknown field "action"), never the rest.
	Action record.Action `json:"action"`

	ttl time.Duration
}

// v2Only are the fields a v1 key does not have.
var v2Only = map[string]bool{"trial": true, "truncated": true, "digests": true, "action": true}

// optional are the v2 fields a key may leave out (see Request.Action).
var optional = map[string]bool{"action": true}

// Decode parses a key built by the templates: "v2:" (or "v1:") followed by a
// JSON object. It is strict: unknown fields, fields in another case or given
// twice, trailing data, missing fields (in v2, every field) and invalid values
// are errors, each message naming the problem. A bad ttl is reported as the
// configuration error of the constraint that it is.
func Decode(key string) (Request, error) {
	var r Request
	if len(key) > MaxKeyBytes {
		return r, fmt.Errorf("key is %d bytes, more than the %d allowed", len(key), MaxKeyBytes)
	}
	version, body, ok := strings.Cut(key, ":")
	if !ok || (version+":" != KeyVersion && version+":" != KeyVersionV1) {
		v := version
		if !ok {
			v = ""
		}
		if len(v) > 10 {
			v = v[:10] + "…"
		}
		return r, fmt.Errorf("unsupported key version %q: this provider reads %q and %q; a newer template needs a newer provider, upgrade exec-reaper's provider", v, strings.TrimSuffix(KeyVersion, ":"), strings.TrimSuffix(KeyVersionV1, ":"))
	}
	v2 := version+":" == KeyVersion
	if err := decodeStrict(version, body, v2, &r); err != nil {
		return Request{}, err
	}
	if err := r.validate(); err != nil {
		return Request{}, err
	}
	return r, nil
}

// keyFieldNames are the exact field names of a v2 key: Request's JSON names.
var keyFieldNames = func() map[string]bool {
	fields := map[string]bool{}
	t := reflect.TypeFor[Request]()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			fields[name] = true
		}
	}
	return fields
}()

// decodeStrict decodes body into r. sigs.k8s.io/json rejects what
// encoding/json lets through: unknown fields, field names in another case
// ("UID") and fields given twice, any of which could make one reader of a
// key see something other than another. What it does not check is written
// here, each for its reason:
//   - the key must be an object: null decodes into a struct without error;
//   - data after the object is reported as such, not as a syntax error, so
//     that a template (or tampering) appending to a key is named plainly;
//   - a v1 key may not carry v2's fields, which Request knows;
//   - a v2 key must carry every field (no JSON decoder reports a field left
//     out), so that a template that drops one is caught, not read as zero.
func decodeStrict(version, body string, v2 bool, r *Request) error {
	data := []byte(body)
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return fmt.Errorf("key is not valid %s JSON: want an object", version)
	}
	strict, err := kjson.UnmarshalStrict(data, r)
	if err != nil {
		*r = Request{}
		if trailing(data) {
			return errors.New("key has data after its JSON object")
		}
		return fmt.Errorf("key is not valid %s JSON: %w", version, err)
	}
	if len(strict) > 0 {
		*r = Request{}
		return strictError(strict[0])
	}
	// Which fields were given: Request's zero values cannot say.
	var present map[string]json.RawMessage
	if err := json.Unmarshal(data, &present); err != nil {
		*r = Request{}
		return fmt.Errorf("key is not valid %s JSON: %w", version, err)
	}
	if !v2 {
		for name := range present {
			if v2Only[name] {
				*r = Request{}
				return fmt.Errorf("key has unknown field %q", name)
			}
		}
		return nil
	}
	var missing []string
	for name := range keyFieldNames {
		if _, ok := present[name]; !ok && !optional[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		*r = Request{}
		slices.Sort(missing)
		return fmt.Errorf("key has no field %s (a v2 key has every field; is the template current?)", strings.Join(missing, ", "))
	}
	return nil
}

// strictError words one of sigs.k8s.io/json's strict errors (an unknown or
// duplicate field) as Decode's other errors are, quoting little of the name.
func strictError(err error) error {
	name := err.Error()
	var fe kjson.FieldError
	if errors.As(err, &fe) {
		name = fe.FieldPath()
	}
	if strings.HasPrefix(err.Error(), "duplicate field") {
		return fmt.Errorf("key has field %q twice", cutForLog(name))
	}
	return fmt.Errorf("key has unknown field %q", cutForLog(name))
}

// trailing reports whether data starts with one whole JSON value followed by
// something other than white space.
func trailing(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	var v json.RawMessage
	if err := dec.Decode(&v); err != nil {
		return false
	}
	return !onlySpace(string(data[dec.InputOffset():]))
}

// cutForLog shortens a requester-influenced string quoted in an error.
func cutForLog(s string) string {
	if len(s) > 64 {
		return strings.ToValidUTF8(s[:64], "") + "…"
	}
	return s
}

func onlySpace(s string) bool { return len(bytes.TrimSpace([]byte(s))) == 0 }

func (r *Request) validate() error {
	switch {
	case r.UID == "":
		return errors.New("key has no uid")
	case len(r.UID) > MaxUIDBytes:
		return fmt.Errorf("key has a uid of %d bytes, more than the %d allowed", len(r.UID), MaxUIDBytes)
	case r.User == "":
		return errors.New("key has no user")
	case !r.Operation.Valid():
		return fmt.Errorf("key has unknown operation %q", cutForLog(string(r.Operation)))
	}
	if errs := validation.IsDNS1123Label(r.Namespace); len(errs) > 0 {
		return fmt.Errorf("key has invalid namespace %q: %s", cutForLog(r.Namespace), strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(r.Name); len(errs) > 0 {
		return fmt.Errorf("key has invalid pod name %q: %s", cutForLog(r.Name), strings.Join(errs, "; "))
	}
	if err := r.validateTruncated(); err != nil {
		return err
	}
	ttl, err := time.ParseDuration(r.TTL)
	if err != nil {
		return &ConfigError{fmt.Sprintf("the constraint's ttl %q is not a Go duration such as 30m or 1h", cutForLog(r.TTL))}
	}
	if ttl <= 0 || ttl > MaxTTL {
		return &ConfigError{fmt.Sprintf("the constraint's ttl %s is outside (0, %s]", ttl, MaxTTL)}
	}
	r.ttl = ttl
	switch {
	case r.Action == "":
		r.Action = record.ActionEvict
	case !r.Action.Valid():
		return &ConfigError{fmt.Sprintf("the constraint's action %q is neither %q nor %q", cutForLog(string(r.Action)), record.ActionEvict, record.ActionQuarantine)}
	}
	return nil
}

// ConfigError is a key refused because of how the constraint is configured,
// not because of anything transient: retrying will not help, fixing the
// constraint will.
type ConfigError struct{ problem string }

func (e *ConfigError) Error() string {
	return "configuration error: " + e.problem + "; fix the constraint's parameters"
}

// validateTruncated checks the template's account of what it shortened: known
// field names, sorted, each once, each with a digest and no digest besides.
func (r *Request) validateTruncated() error {
	known := map[string]bool{record.FieldCommand: true, record.FieldContainer: true, record.FieldGroups: true, record.FieldUser: true}
	for i, f := range r.Truncated {
		switch {
		case !known[f]:
			return fmt.Errorf("key has unknown truncated field %q", cutForLog(f))
		case i > 0 && r.Truncated[i-1] >= f:
			return fmt.Errorf("key's truncated fields %q are not sorted and distinct", r.Truncated)
		case !isDigest(r.Digests[f]):
			return fmt.Errorf("key has truncated field %q without a digest (64 lowercase hex digits)", f)
		}
	}
	if len(r.Digests) != len(r.Truncated) {
		return fmt.Errorf("key has %d digests for %d truncated fields", len(r.Digests), len(r.Truncated))
	}
	if len(r.Truncated) == 0 {
		r.Truncated, r.Digests = nil, nil // as a v1 key, whatever the JSON said
	}
	return nil
}

func isDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Entry returns the record entry for this request, made at now.
func (r Request) Entry(now time.Time) record.Entry {
	return record.Entry{
		User:       r.User,
		Groups:     r.Groups,
		Time:       now,
		Operation:  r.Operation,
		Container:  r.Container,
		Command:    r.Command,
		RequestUID: r.UID,
		Truncated:  r.Truncated,
		Digests:    r.Digests,
	}
}

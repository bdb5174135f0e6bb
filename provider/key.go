package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/exec-reaper/exec-reaper/record"
)

// KeyVersion is the prefix of every key the templates build. A provider
// rejects keys of a version it does not know, so an old provider never
// misreads a newer template.
const KeyVersion = "v1:"

// MaxKeyBytes bounds one key. Commands can be long, but not this long.
const MaxKeyBytes = 16 << 10

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

	ttl time.Duration
}

// Decode parses a key built by the templates: "v1:" followed by a JSON
// object. It is strict: unknown fields, trailing data, missing fields and
// invalid names are errors, each message naming the problem.
func Decode(key string) (Request, error) {
	if strings.HasPrefix(key, interimKeyVersion2) {
		return decodeV2Interim(key) // INTERIM: see key_v2_interim.go
	}
	var r Request
	if len(key) > MaxKeyBytes {
		return r, fmt.Errorf("key is %d bytes, more than the %d allowed", len(key), MaxKeyBytes)
	}
	body, ok := strings.CutPrefix(key, KeyVersion)
	if !ok {
		v, _, _ := strings.Cut(key, ":")
		if len(v) > 10 {
			v = v[:10] + "…"
		}
		return r, fmt.Errorf("unsupported key version %q (this provider reads %q)", v, KeyVersion)
	}
	if err := checkFields(body); err != nil {
		return r, err
	}
	// checkFields has already rejected unknown fields.
	dec := json.NewDecoder(strings.NewReader(body))
	if err := dec.Decode(&r); err != nil {
		return Request{}, fmt.Errorf("key is not valid %s JSON: %w", strings.TrimSuffix(KeyVersion, ":"), err)
	}
	if dec.More() || !onlySpace(body[dec.InputOffset():]) {
		return Request{}, errors.New("key has data after its JSON object")
	}
	if err := r.validate(); err != nil {
		return Request{}, err
	}
	return r, nil
}

// v1Fields are the exact field names of a v1 key: Request's JSON names.
var v1Fields = func() map[string]bool {
	fields := map[string]bool{}
	t := reflect.TypeFor[Request]()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			fields[name] = true
		}
	}
	return fields
}()

// checkFields rejects what encoding/json lets through: field names in
// another case ("UID") and fields given twice, either of which could make
// one reader of a key see something other than another.
func checkFields(body string) error {
	dec := json.NewDecoder(strings.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errors.New("key is not valid v1 JSON: want an object")
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fmt.Errorf("key is not valid v1 JSON: %w", err)
		}
		name, _ := t.(string)
		if !v1Fields[name] {
			return fmt.Errorf("key has unknown field %q", name)
		}
		if seen[name] {
			return fmt.Errorf("key has field %q twice", name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("key is not valid v1 JSON: %w", err)
		}
	}
	return nil
}

func onlySpace(s string) bool { return len(bytes.TrimSpace([]byte(s))) == 0 }

func (r *Request) validate() error {
	switch {
	case r.UID == "":
		return errors.New("key has no uid")
	case r.User == "":
		return errors.New("key has no user")
	case !r.Operation.Valid():
		return fmt.Errorf("key has unknown operation %q", r.Operation)
	}
	if errs := validation.IsDNS1123Label(r.Namespace); len(errs) > 0 {
		return fmt.Errorf("key has invalid namespace %q: %s", r.Namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(r.Name); len(errs) > 0 {
		return fmt.Errorf("key has invalid pod name %q: %s", r.Name, strings.Join(errs, "; "))
	}
	ttl, err := time.ParseDuration(r.TTL)
	if err != nil {
		return fmt.Errorf("key has invalid ttl %q: %w", r.TTL, err)
	}
	if ttl <= 0 || ttl > MaxTTL {
		return fmt.Errorf("key has ttl %s outside (0, %s]", ttl, MaxTTL)
	}
	r.ttl = ttl
	return nil
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
	}
}

package provider

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/exec-reaper/exec-reaper/record"
)

// keyFields is the JSON object of a valid key, as a template builds it.
func keyFields() map[string]any {
	return map[string]any{
		"uid":       "705ab4f5-6393-11e8-b7cc-42010a800002",
		"namespace": "team-a",
		"name":      "web-0",
		"ttl":       "1h",
		"user":      "alice@example.com",
		"groups":    []string{"system:authenticated", "devs"},
		"operation": "exec",
		"container": "app",
		"command":   []string{"sh", "-c", "id"},
		"trial":     false,
		"truncated": []string{},
		"digests":   map[string]string{},
	}
}

// v1Fields is the JSON object of a valid v1 key, as an older template builds it.
func v1Fields() map[string]any {
	f := keyFields()
	delete(f, "trial")
	delete(f, "truncated")
	delete(f, "digests")
	return f
}

// keyV1With is keyWith for a v1 key.
func keyV1With(t testing.TB, change map[string]any) string {
	t.Helper()
	return KeyVersionV1 + changed(t, v1Fields(), change)
}

// keyWith returns a valid key changed by change; a nil value deletes a field.
func keyWith(t testing.TB, change map[string]any) string {
	t.Helper()
	return KeyVersion + changed(t, keyFields(), change)
}

// changed applies change to fields (a nil value deletes one) and encodes them.
func changed(t testing.TB, f, change map[string]any) string {
	t.Helper()
	for k, v := range change {
		if v == nil {
			delete(f, k)
		} else {
			f[k] = v
		}
	}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var validRequest = Request{
	UID:       "705ab4f5-6393-11e8-b7cc-42010a800002",
	Namespace: "team-a",
	Name:      "web-0",
	TTL:       "1h",
	User:      "alice@example.com",
	Groups:    []string{"system:authenticated", "devs"},
	Operation: record.OpExec,
	Container: "app",
	Command:   []string{"sh", "-c", "id"},
	Action:    record.ActionEvict,
	ttl:       time.Hour,
}

// padTo returns a valid key grown to exactly n bytes with trailing spaces.
func padTo(t testing.TB, n int) string {
	k := keyWith(t, nil)
	return k + strings.Repeat(" ", n-len(k))
}

// sha is a syntactically valid digest.
var sha = strings.Repeat("0123456789abcdef", 4)

func TestDecode(t *testing.T) {
	valid := keyWith(t, nil)
	with := func(f func(*Request)) Request { r := validRequest; f(&r); return r }
	tests := []struct {
		name    string
		key     string
		want    Request
		wantErr string // substring; empty means success
	}{
		{name: "valid", key: valid, want: validRequest},
		{name: "surrounding whitespace", key: "v2: \n" + keyWith(t, nil)[3:] + " \t\n", want: validRequest},
		{name: "v1", key: keyV1With(t, nil), want: validRequest},
		{name: "v1 optional fields absent", key: keyV1With(t, map[string]any{"groups": nil, "container": nil, "command": nil}),
			want: with(func(r *Request) { r.Groups, r.Container, r.Command = nil, "", nil })},
		{name: "v2 null lists", key: keyWith(t, map[string]any{"groups": json.RawMessage("null"), "command": json.RawMessage("null"), "truncated": json.RawMessage("null"), "digests": json.RawMessage("null")}),
			want: with(func(r *Request) { r.Groups, r.Command = nil, nil })},
		{name: "trial", key: keyWith(t, map[string]any{"trial": true}), want: with(func(r *Request) { r.Trial = true })},
		{name: "action quarantine", key: keyWith(t, map[string]any{"action": "quarantine"}), want: with(func(r *Request) { r.Action = record.ActionQuarantine })},
		{name: "action evict", key: keyWith(t, map[string]any{"action": "evict"}), want: validRequest},
		{name: "action unknown", key: keyWith(t, map[string]any{"action": "shred"}), wantErr: `configuration error: the constraint's action "shred" is neither "evict" nor "quarantine"`},
		{name: "action in a v1 key", key: keyV1With(t, map[string]any{"action": "quarantine"}), wantErr: `unknown field "action"`},
		{name: "action not a string", key: keyWith(t, map[string]any{"action": 1}), wantErr: "not valid v2 JSON"},
		{name: "truncated with digests", key: keyWith(t, map[string]any{"truncated": []string{"command", "groups"}, "digests": map[string]string{"command": sha, "groups": sha}}),
			want: with(func(r *Request) {
				r.Truncated, r.Digests = []string{"command", "groups"}, map[string]string{"command": sha, "groups": sha}
			})},
		{name: "long command accepted whole", key: keyWith(t, map[string]any{"command": []string{"sh", "-c", strings.Repeat("x", 17<<10)}}),
			want: with(func(r *Request) { r.Command = []string{"sh", "-c", strings.Repeat("x", 17<<10)} })},
		{name: "attach", key: keyWith(t, map[string]any{"operation": "attach", "command": []string{}}),
			want: with(func(r *Request) { r.Operation, r.Command = record.OpAttach, []string{} })},
		{name: "v1 attach", key: keyV1With(t, map[string]any{"operation": "attach", "command": nil}),
			want: with(func(r *Request) { r.Operation, r.Command = record.OpAttach, nil })},
		{name: "debug", key: keyWith(t, map[string]any{"operation": "debug"}), want: with(func(r *Request) { r.Operation = record.OpDebug })},
		{name: "portforward", key: keyWith(t, map[string]any{"operation": "portforward"}), want: with(func(r *Request) { r.Operation = record.OpPortForward })},
		{name: "dotted pod name", key: keyWith(t, map[string]any{"name": "web.v2-0"}), want: with(func(r *Request) { r.Name = "web.v2-0" })},
		{name: "ttl compound", key: keyWith(t, map[string]any{"ttl": "1h30m"}), want: with(func(r *Request) { r.TTL, r.ttl = "1h30m", 90*time.Minute })},
		{name: "ttl smallest", key: keyWith(t, map[string]any{"ttl": "1ns"}), want: with(func(r *Request) { r.TTL, r.ttl = "1ns", 1 })},
		{name: "ttl at MaxTTL", key: keyWith(t, map[string]any{"ttl": "720h"}), want: with(func(r *Request) { r.TTL, r.ttl = "720h", MaxTTL })},
		{name: "user with @ / space unicode", key: keyWith(t, map[string]any{"user": "https://idp/ä b@c"}), want: with(func(r *Request) { r.User = "https://idp/ä b@c" })},
		{name: "exactly MaxKeyBytes", key: padTo(t, MaxKeyBytes), want: validRequest},

		{name: "version v3", key: "v3:" + valid[3:], wantErr: `unsupported key version "v3": this provider reads "v2" and "v1"; a newer template needs a newer provider, upgrade exec-reaper's provider`},
		{name: "v1 with a v2 field", key: keyV1With(t, map[string]any{"trial": true}), wantErr: `unknown field "trial"`},
		{name: "v2 field missing", key: keyWith(t, map[string]any{"trial": nil}), wantErr: "key has no field trial"},
		{name: "v2 fields missing", key: keyWith(t, map[string]any{"groups": nil, "command": nil}), wantErr: "key has no field command, groups"},
		{name: "unknown truncated field", key: keyWith(t, map[string]any{"truncated": []string{"ttl"}, "digests": map[string]string{"ttl": sha}}), wantErr: `unknown truncated field "ttl"`},
		{name: "truncated unsorted", key: keyWith(t, map[string]any{"truncated": []string{"user", "command"}, "digests": map[string]string{"user": sha, "command": sha}}), wantErr: "not sorted and distinct"},
		{name: "truncated twice", key: keyWith(t, map[string]any{"truncated": []string{"user", "user"}, "digests": map[string]string{"user": sha}}), wantErr: "not sorted and distinct"},
		{name: "truncated without digest", key: keyWith(t, map[string]any{"truncated": []string{"user"}}), wantErr: `truncated field "user" without a digest`},
		{name: "digest not hex", key: keyWith(t, map[string]any{"truncated": []string{"user"}, "digests": map[string]string{"user": strings.ToUpper(sha)}}), wantErr: `without a digest`},
		{name: "digest of a field not truncated", key: keyWith(t, map[string]any{"digests": map[string]string{"user": sha}}), wantErr: "1 digests for 0 truncated fields"},
		{name: "trial not a bool", key: keyWith(t, map[string]any{"trial": "yes"}), wantErr: "not valid v2 JSON"},
		{name: "uid too long", key: keyWith(t, map[string]any{"uid": strings.Repeat("u", MaxUIDBytes+1)}), wantErr: "more than the 128 allowed"},
		{name: "no version", key: valid[3:], wantErr: "unsupported key version"},
		{name: "upper-case version", key: "V2:" + valid[3:], wantErr: "unsupported key version"},
		{name: "empty key", key: "", wantErr: "unsupported key version"},
		{name: "version only", key: "v2:", wantErr: "not valid v2 JSON"},
		{name: "malformed JSON", key: "v2:{", wantErr: "not valid v2 JSON"},
		{name: "truncated JSON", key: valid[:len(valid)-5], wantErr: "not valid v2 JSON"},
		{name: "array", key: "v2:[]", wantErr: "not valid v2 JSON"},
		{name: "string", key: `v2:"exec"`, wantErr: "not valid v2 JSON"},
		{name: "null", key: "v2:null", wantErr: "not valid v2 JSON: want an object"},
		{name: "v1 null", key: "v1:null", wantErr: "not valid v1 JSON: want an object"},
		// encoding/json alone would accept both of these.
		{name: "field name in another case", key: strings.Replace(valid, `"uid"`, `"UID"`, 1), wantErr: `unknown field "UID"`},
		{name: "field twice", key: strings.Replace(valid, `{`, `{"user":"eve",`, 1), wantErr: `field "user" twice`},
		{name: "unknown field", key: keyWith(t, map[string]any{"tty": true}), wantErr: `unknown field "tty"`},
		{name: "wrong type", key: keyWith(t, map[string]any{"ttl": 3600}), wantErr: "not valid v2 JSON"},
		{name: "command not a list", key: keyWith(t, map[string]any{"command": "sh"}), wantErr: "not valid v2 JSON"},
		{name: "second object", key: valid + "{}", wantErr: "data after its JSON object"},
		{name: "trailing garbage", key: valid + " x", wantErr: "data after its JSON object"},
		{name: "trailing bracket", key: valid + "]", wantErr: "data after its JSON object"},
		{name: "trailing NUL", key: valid + "\x00", wantErr: "data after its JSON object"},
		{name: "missing uid", key: keyWith(t, map[string]any{"uid": nil}), wantErr: "no field uid"},
		{name: "v1 missing uid", key: keyV1With(t, map[string]any{"uid": nil}), wantErr: "no uid"},
		{name: "empty uid", key: keyWith(t, map[string]any{"uid": ""}), wantErr: "no uid"},
		{name: "missing user", key: keyWith(t, map[string]any{"user": nil}), wantErr: "no field user"},
		{name: "empty user", key: keyWith(t, map[string]any{"user": ""}), wantErr: "no user"},
		{name: "missing operation", key: keyV1With(t, map[string]any{"operation": nil}), wantErr: "unknown operation"},
		{name: "bad operation", key: keyWith(t, map[string]any{"operation": "shell"}), wantErr: `unknown operation "shell"`},
		{name: "upper-case operation", key: keyWith(t, map[string]any{"operation": "EXEC"}), wantErr: "unknown operation"},
		{name: "missing namespace", key: keyV1With(t, map[string]any{"namespace": nil}), wantErr: "invalid namespace"},
		{name: "upper-case namespace", key: keyWith(t, map[string]any{"namespace": "Team-A"}), wantErr: "invalid namespace"},
		{name: "dotted namespace", key: keyWith(t, map[string]any{"namespace": "team.a"}), wantErr: "invalid namespace"},
		{name: "long namespace", key: keyWith(t, map[string]any{"namespace": strings.Repeat("n", 64)}), wantErr: "invalid namespace"},
		{name: "missing pod name", key: keyV1With(t, map[string]any{"name": nil}), wantErr: "invalid pod name"},
		{name: "pod name with slash", key: keyWith(t, map[string]any{"name": "web/0"}), wantErr: "invalid pod name"},
		{name: "pod name dot-dot", key: keyWith(t, map[string]any{"name": ".."}), wantErr: "invalid pod name"},
		{name: "pod name too long", key: keyWith(t, map[string]any{"name": strings.Repeat("p", 254)}), wantErr: "invalid pod name"},
		{name: "missing ttl", key: keyV1With(t, map[string]any{"ttl": nil}), wantErr: `configuration error: the constraint's ttl "" is not a Go duration such as 30m or 1h; fix the constraint's parameters`},
		{name: "ttl without unit", key: keyWith(t, map[string]any{"ttl": "3600"}), wantErr: `configuration error: the constraint's ttl "3600" is not a Go duration`},
		{name: "ttl in days", key: keyWith(t, map[string]any{"ttl": "1d"}), wantErr: "configuration error"},
		{name: "ttl overflows", key: keyWith(t, map[string]any{"ttl": "99999999999h"}), wantErr: "configuration error"},
		{name: "zero ttl", key: keyWith(t, map[string]any{"ttl": "0s"}), wantErr: "configuration error: the constraint's ttl 0s is outside (0, 720h0m0s]; fix the constraint's parameters"},
		{name: "bare zero ttl", key: keyWith(t, map[string]any{"ttl": "0"}), wantErr: "outside"},
		{name: "negative ttl", key: keyWith(t, map[string]any{"ttl": "-5m"}), wantErr: "outside"},
		{name: "ttl over MaxTTL", key: keyWith(t, map[string]any{"ttl": "720h0m1s"}), wantErr: "outside"},
		{name: "ttl typo", key: keyWith(t, map[string]any{"ttl": "5000h"}), wantErr: "outside"},
		{name: "over MaxKeyBytes", key: padTo(t, MaxKeyBytes+1), wantErr: "1048577 bytes, more than the 1048576 allowed"},
		{name: "huge and unversioned", key: strings.Repeat("x", 1<<21), wantErr: "more than the 1048576 allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.key)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode err = %v, want one containing %q", err, tt.wantErr)
				}
				if !reflect.DeepEqual(got, Request{}) {
					t.Errorf("Decode returned %+v with its error, want the zero Request", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decode =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// TestDecodeErrorQuotesLittle checks that a key of an unknown version is not
// echoed in full: keys carry usernames and commands, and errors are logged.
func TestDecodeErrorQuotesLittle(t *testing.T) {
	_, err := Decode(`{"user":"alice@example.com","command":["cat","/secret"]}`)
	if err == nil {
		t.Fatal("Decode succeeded, want an error")
	}
	for _, s := range []string{"alice", "/secret"} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q quotes %q from the key", err, s)
		}
	}
}

func TestRequestEntry(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	got := validRequest.Entry(now)
	want := record.Entry{
		User:       validRequest.User,
		Groups:     validRequest.Groups,
		Time:       now,
		Operation:  record.OpExec,
		Container:  "app",
		Command:    validRequest.Command,
		RequestUID: validRequest.UID,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Entry = %+v, want %+v", got, want)
	}
}

// FuzzDecode checks that Decode never panics, returns the zero Request with
// every error, that what it accepts is valid, is stored within record's
// bounds and survives re-encoding (as v2, whatever version it came in).
func FuzzDecode(f *testing.F) {
	f.Add(keyWith(f, nil))
	f.Add(keyWith(f, map[string]any{"groups": nil, "command": nil, "container": nil, "operation": "attach"}))
	f.Add(keyWith(f, map[string]any{"user": "https://idp/u/ä b@c", "groups": []string{}, "ttl": "720h"}))
	f.Add(keyWith(f, map[string]any{"command": []string{"<script>&", "\u2028", "\x00"}}))
	f.Add(keyWith(f, map[string]any{"ttl": "0s"}))
	f.Add(keyWith(f, map[string]any{"tty": false}))
	f.Add(keyWith(f, map[string]any{"namespace": "Team"}))
	f.Add("v3:" + keyWith(f, nil)[3:])
	f.Add(keyV1With(f, nil))
	f.Add(keyV1With(f, map[string]any{"trial": true}))
	f.Add(keyWith(f, map[string]any{"trial": true, "truncated": []string{"command", "user"}, "digests": map[string]string{"command": sha, "user": sha}}))
	f.Add(keyWith(f, map[string]any{"truncated": []string{"user"}}))
	f.Add(keyWith(f, map[string]any{"groups": nil}))
	f.Add(keyWith(f, nil)[3:])
	f.Add(keyWith(f, nil) + "{}")
	f.Add(`v1:{"UID":"a","uid":"b","user":"u","namespace":"n","name":"p","ttl":"1s","operation":"exec"}`)
	f.Add("v1:")
	f.Add("v2:null")
	f.Add("")
	f.Fuzz(func(t *testing.T, key string) {
		r, err := Decode(key)
		if err != nil {
			if !reflect.DeepEqual(r, Request{}) {
				t.Fatalf("Decode(%q) returned %+v with error %v", key, r, err)
			}
			return
		}
		if len(key) > MaxKeyBytes || !strings.HasPrefix(key, KeyVersion) && !strings.HasPrefix(key, KeyVersionV1) {
			t.Fatalf("Decode accepted %q (%d bytes)", key, len(key))
		}
		// Whatever was accepted is stored within the bounds, and reads back.
		rec, _ := record.Apply(nil, "pod-uid", r.Entry(time.Unix(1795000000, 0)), r.ttl, record.ActionEvict)
		for _, k := range []string{record.FirstEntryAnnotation, record.LastEntryAnnotation} {
			if n := len(rec.Annotations()[k]); n > record.MaxEntryBytes {
				t.Fatalf("stored %s is %d bytes, more than %d", k, n, record.MaxEntryBytes)
			}
		}
		if got, err := record.Read(rec.Labels(), rec.Annotations()); err != nil || !reflect.DeepEqual(got, rec) {
			t.Fatalf("stored record reads back as %+v, %v; want %+v", got, err, rec)
		}
		check := r
		if err := check.validate(); err != nil {
			t.Fatalf("Decode(%q) = %+v, which does not validate: %v", key, r, err)
		}
		if check.ttl != r.ttl || r.ttl <= 0 || r.ttl > MaxTTL {
			t.Fatalf("Decode(%q) ttl = %v, validate says %v", key, r.ttl, check.ttl)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshalling %+v: %v", r, err)
		}
		again := KeyVersion + string(b)
		r2, err := Decode(again)
		if len(again) > MaxKeyBytes {
			// Escaping can make the re-encoding longer than the original.
			if err == nil {
				t.Fatalf("Decode accepted a %d-byte key", len(again))
			}
			return
		}
		if err != nil {
			t.Fatalf("re-encoded key %q does not decode: %v", again, err)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("re-encoded key decodes to\n%+v\nwant\n%+v", r2, r)
		}
	})
}

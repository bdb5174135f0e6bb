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
	}
}

// keyWith returns a valid key changed by change; a nil value deletes a field.
func keyWith(t testing.TB, change map[string]any) string {
	t.Helper()
	f := keyFields()
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
	return KeyVersion + string(b)
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
	ttl:       time.Hour,
}

// padTo returns a valid key grown to exactly n bytes with trailing spaces.
func padTo(t testing.TB, n int) string {
	k := keyWith(t, nil)
	return k + strings.Repeat(" ", n-len(k))
}

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
		{name: "surrounding whitespace", key: "v1: \n" + keyWith(t, nil)[3:] + " \t\n", want: validRequest},
		{name: "optional fields absent", key: keyWith(t, map[string]any{"groups": nil, "container": nil, "command": nil}),
			want: with(func(r *Request) { r.Groups, r.Container, r.Command = nil, "", nil })},
		{name: "attach", key: keyWith(t, map[string]any{"operation": "attach", "command": nil}),
			want: with(func(r *Request) { r.Operation, r.Command = record.OpAttach, nil })},
		{name: "debug", key: keyWith(t, map[string]any{"operation": "debug"}), want: with(func(r *Request) { r.Operation = record.OpDebug })},
		{name: "portforward", key: keyWith(t, map[string]any{"operation": "portforward"}), want: with(func(r *Request) { r.Operation = record.OpPortForward })},
		{name: "dotted pod name", key: keyWith(t, map[string]any{"name": "web.v2-0"}), want: with(func(r *Request) { r.Name = "web.v2-0" })},
		{name: "ttl compound", key: keyWith(t, map[string]any{"ttl": "1h30m"}), want: with(func(r *Request) { r.TTL, r.ttl = "1h30m", 90*time.Minute })},
		{name: "ttl smallest", key: keyWith(t, map[string]any{"ttl": "1ns"}), want: with(func(r *Request) { r.TTL, r.ttl = "1ns", 1 })},
		{name: "ttl at MaxTTL", key: keyWith(t, map[string]any{"ttl": "720h"}), want: with(func(r *Request) { r.TTL, r.ttl = "720h", MaxTTL })},
		{name: "user with @ / space unicode", key: keyWith(t, map[string]any{"user": "https://idp/ä b@c"}), want: with(func(r *Request) { r.User = "https://idp/ä b@c" })},
		{name: "exactly MaxKeyBytes", key: padTo(t, MaxKeyBytes), want: validRequest},

		{name: "version v3", key: "v3:" + valid[3:], wantErr: `unsupported key version "v3"`},
		{name: "no version", key: valid[3:], wantErr: "unsupported key version"},
		{name: "upper-case version", key: "V1:" + valid[3:], wantErr: "unsupported key version"},
		{name: "empty key", key: "", wantErr: "unsupported key version"},
		{name: "version only", key: "v1:", wantErr: "not valid v1 JSON"},
		{name: "malformed JSON", key: "v1:{", wantErr: "not valid v1 JSON"},
		{name: "truncated JSON", key: valid[:len(valid)-5], wantErr: "not valid v1 JSON"},
		{name: "array", key: "v1:[]", wantErr: "not valid v1 JSON"},
		{name: "string", key: `v1:"exec"`, wantErr: "not valid v1 JSON"},
		{name: "null", key: "v1:null", wantErr: "not valid v1 JSON: want an object"},
		// encoding/json alone would accept both of these.
		{name: "field name in another case", key: strings.Replace(valid, `"uid"`, `"UID"`, 1), wantErr: `unknown field "UID"`},
		{name: "field twice", key: strings.Replace(valid, `{`, `{"user":"eve",`, 1), wantErr: `field "user" twice`},
		{name: "unknown field", key: keyWith(t, map[string]any{"tty": true}), wantErr: `unknown field "tty"`},
		{name: "wrong type", key: keyWith(t, map[string]any{"ttl": 3600}), wantErr: "not valid v1 JSON"},
		{name: "command not a list", key: keyWith(t, map[string]any{"command": "sh"}), wantErr: "not valid v1 JSON"},
		{name: "second object", key: valid + "{}", wantErr: "data after its JSON object"},
		{name: "trailing garbage", key: valid + " x", wantErr: "data after its JSON object"},
		{name: "trailing bracket", key: valid + "]", wantErr: "data after its JSON object"},
		{name: "trailing NUL", key: valid + "\x00", wantErr: "data after its JSON object"},
		{name: "missing uid", key: keyWith(t, map[string]any{"uid": nil}), wantErr: "no uid"},
		{name: "empty uid", key: keyWith(t, map[string]any{"uid": ""}), wantErr: "no uid"},
		{name: "missing user", key: keyWith(t, map[string]any{"user": nil}), wantErr: "no user"},
		{name: "empty user", key: keyWith(t, map[string]any{"user": ""}), wantErr: "no user"},
		{name: "missing operation", key: keyWith(t, map[string]any{"operation": nil}), wantErr: "unknown operation"},
		{name: "bad operation", key: keyWith(t, map[string]any{"operation": "shell"}), wantErr: `unknown operation "shell"`},
		{name: "upper-case operation", key: keyWith(t, map[string]any{"operation": "EXEC"}), wantErr: "unknown operation"},
		{name: "missing namespace", key: keyWith(t, map[string]any{"namespace": nil}), wantErr: "invalid namespace"},
		{name: "upper-case namespace", key: keyWith(t, map[string]any{"namespace": "Team-A"}), wantErr: "invalid namespace"},
		{name: "dotted namespace", key: keyWith(t, map[string]any{"namespace": "team.a"}), wantErr: "invalid namespace"},
		{name: "long namespace", key: keyWith(t, map[string]any{"namespace": strings.Repeat("n", 64)}), wantErr: "invalid namespace"},
		{name: "missing pod name", key: keyWith(t, map[string]any{"name": nil}), wantErr: "invalid pod name"},
		{name: "pod name with slash", key: keyWith(t, map[string]any{"name": "web/0"}), wantErr: "invalid pod name"},
		{name: "pod name dot-dot", key: keyWith(t, map[string]any{"name": ".."}), wantErr: "invalid pod name"},
		{name: "pod name too long", key: keyWith(t, map[string]any{"name": strings.Repeat("p", 254)}), wantErr: "invalid pod name"},
		{name: "missing ttl", key: keyWith(t, map[string]any{"ttl": nil}), wantErr: "invalid ttl"},
		{name: "ttl without unit", key: keyWith(t, map[string]any{"ttl": "3600"}), wantErr: "invalid ttl"},
		{name: "ttl in days", key: keyWith(t, map[string]any{"ttl": "1d"}), wantErr: "invalid ttl"},
		{name: "ttl overflows", key: keyWith(t, map[string]any{"ttl": "99999999999h"}), wantErr: "invalid ttl"},
		{name: "zero ttl", key: keyWith(t, map[string]any{"ttl": "0s"}), wantErr: "outside (0, 720h0m0s]"},
		{name: "bare zero ttl", key: keyWith(t, map[string]any{"ttl": "0"}), wantErr: "outside"},
		{name: "negative ttl", key: keyWith(t, map[string]any{"ttl": "-5m"}), wantErr: "outside"},
		{name: "ttl over MaxTTL", key: keyWith(t, map[string]any{"ttl": "720h0m1s"}), wantErr: "outside"},
		{name: "ttl typo", key: keyWith(t, map[string]any{"ttl": "5000h"}), wantErr: "outside"},
		{name: "over MaxKeyBytes", key: padTo(t, MaxKeyBytes+1), wantErr: "16385 bytes, more than the 16384 allowed"},
		{name: "huge and unversioned", key: strings.Repeat("x", 1<<20), wantErr: "more than the 16384 allowed"},
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
// every error, and that what it accepts is valid and survives re-encoding.
func FuzzDecode(f *testing.F) {
	f.Add(keyWith(f, nil))
	f.Add(keyWith(f, map[string]any{"groups": nil, "command": nil, "container": nil, "operation": "attach"}))
	f.Add(keyWith(f, map[string]any{"user": "https://idp/u/ä b@c", "groups": []string{}, "ttl": "720h"}))
	f.Add(keyWith(f, map[string]any{"command": []string{"<script>&", "\u2028", "\x00"}}))
	f.Add(keyWith(f, map[string]any{"ttl": "0s"}))
	f.Add(keyWith(f, map[string]any{"tty": false}))
	f.Add(keyWith(f, map[string]any{"namespace": "Team"}))
	f.Add("v2:" + keyWith(f, nil)[3:])
	f.Add(keyWith(f, nil)[3:])
	f.Add(keyWith(f, nil) + "{}")
	f.Add(`v1:{"UID":"a","uid":"b","user":"u","namespace":"n","name":"p","ttl":"1s","operation":"exec"}`)
	f.Add("v1:")
	f.Add("v1:null")
	f.Add("")
	f.Fuzz(func(t *testing.T, key string) {
		r, err := Decode(key)
		if err != nil {
			if !reflect.DeepEqual(r, Request{}) {
				t.Fatalf("Decode(%q) returned %+v with error %v", key, r, err)
			}
			return
		}
		if len(key) > MaxKeyBytes || !strings.HasPrefix(key, KeyVersion) {
			t.Fatalf("Decode accepted %q (%d bytes)", key, len(key))
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

package templates_test

// Tests of the key the exec-reaper template builds (key contract v2): the
// template's real Rego, evaluated by OPA with external_data replaced by a
// recorder of the keys it is given, against random, huge and odd requests.
// Every key must stay within the contract's bounds, mark and digest what it
// shortened, and decode with the provider's own Decode.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/types"
	"sigs.k8s.io/yaml"

	"github.com/exec-reaper/exec-reaper/provider"
	"github.com/exec-reaper/exec-reaper/record"
)

// Bounds of key contract v2: the provider's (provider/key.go);
// TestSharedConstants checks that the template's Rego has the same.
const (
	keyVersion        = provider.KeyVersion
	maxUserChars      = provider.MaxUserChars
	maxContainerChars = provider.MaxContainerChars
	maxGroups         = provider.MaxGroups
	maxGroupChars     = provider.MaxGroupChars
	maxCommandArgs    = provider.MaxCommandArgs
	maxArgChars       = provider.MaxArgChars
	// maxKeyBytes is the contract's worst case for a key ("< 400 KB even if
	// every character JSON-escapes to \u00XX"); the provider accepts
	// provider.MaxKeyBytes.
	maxKeyBytes = 400 << 10
)

// keyFields are the exact fields of a v2 key.
var keyFields = []string{"command", "container", "digests", "groups", "name", "namespace", "operation", "trial", "truncated", "ttl", "uid", "user"}

// templateRego returns the Rego of templates/exec-reaper/template.yaml and
// the template's parameter schema.
func templateRego(t testing.TB) (string, map[string]any) {
	t.Helper()
	data, err := os.ReadFile("exec-reaper/template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var tmpl struct {
		Spec struct {
			CRD struct {
				Spec struct {
					Validation struct {
						OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
					} `json:"validation"`
				} `json:"spec"`
			} `json:"crd"`
			Targets []struct {
				Rego string `json:"rego"`
			} `json:"targets"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &tmpl); err != nil {
		t.Fatal(err)
	}
	if len(tmpl.Spec.Targets) != 1 {
		t.Fatalf("template has %d targets, want 1", len(tmpl.Spec.Targets))
	}
	return tmpl.Spec.Targets[0].Rego, tmpl.Spec.CRD.Spec.Validation.OpenAPIV3Schema
}

// regoEval evaluates the template's Rego as Gatekeeper does (Rego v0, input
// {review, parameters}), answering external_data with answer and recording
// every key it is asked for.
type regoEval struct {
	query  rego.PreparedEvalQuery
	mu     sync.Mutex
	keys   []string
	answer func(key string) map[string]any
}

func newRegoEval(t testing.TB, answer func(key string) map[string]any) *regoEval {
	t.Helper()
	src, _ := templateRego(t)
	// Gatekeeper's driver registers its own external_data globally once a
	// gator client exists in this process, and OPA would call that one; so
	// the only change made to the template's Rego is the builtin's name.
	if n := strings.Count(src, "external_data("); n != 1 {
		t.Fatalf("the template calls external_data %d times, want exactly once", n)
	}
	src = strings.Replace(src, "external_data(", "recorded_external_data(", 1)
	e := &regoEval{answer: answer}
	externalData := rego.Function1(&rego.Function{
		Name: "recorded_external_data",
		Decl: types.NewFunction(types.Args(types.A), types.A),
	}, func(_ rego.BuiltinContext, req *ast.Term) (*ast.Term, error) {
		var r struct {
			Provider string   `json:"provider"`
			Keys     []string `json:"keys"`
		}
		if err := ast.As(req.Value, &r); err != nil {
			// As in Gatekeeper: the call fails, and nothing is recorded.
			return nil, err
		}
		e.mu.Lock()
		e.keys = append(e.keys, r.Keys...)
		e.mu.Unlock()
		v, err := ast.InterfaceToValue(e.answer(r.Keys[0]))
		if err != nil {
			return nil, err
		}
		return ast.NewTerm(v), nil
	})
	q, err := rego.New(
		rego.Query("data.k8sexecreaper.violation"),
		rego.Module("template.rego", src),
		rego.SetRegoVersion(ast.RegoV0),
		externalData,
	).PrepareForEval(context.Background())
	if err != nil {
		t.Fatalf("compiling the template's Rego: %v", err)
	}
	e.query = q
	return e
}

// recorded answers as exec-reaper's provider does for a recorded entry.
func recorded(key string) map[string]any {
	return map[string]any{
		"responses":   []any{[]any{key, map[string]any{"deadline": "2026-11-26T11:00:00Z"}}},
		"errors":      []any{},
		"status_code": 200,
	}
}

// eval returns the violations' messages for review and the keys sent.
func (e *regoEval) eval(t testing.TB, review map[string]any, params map[string]any) ([]string, []string) {
	t.Helper()
	e.mu.Lock()
	e.keys = nil
	e.mu.Unlock()
	// As in Gatekeeper, the request reaches Rego through JSON: the API
	// server's AdmissionReview, decoded by the webhook (invalid UTF-8
	// becomes U+FFFD there).
	var input map[string]any
	b, err := json.Marshal(map[string]any{"review": review, "parameters": params})
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &input); err != nil {
		t.Fatal(err)
	}
	rs, err := e.query.Eval(context.Background(), rego.EvalInput(input))
	if err != nil {
		t.Fatalf("evaluating: %v", err)
	}
	var msgs []string
	for _, r := range rs {
		for _, x := range r.Expressions {
			for _, v := range x.Value.([]any) {
				msgs = append(msgs, v.(map[string]any)["msg"].(string))
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return msgs, slices.Clone(e.keys)
}

// entry is what a requester controls in one entry into a pod.
type entry struct {
	user      string
	groups    []string
	container string
	command   []string
	debug     bool
}

func (en entry) review() map[string]any {
	groups := make([]any, len(en.groups))
	for i, g := range en.groups {
		groups[i] = g
	}
	command := make([]any, len(en.command))
	for i, a := range en.command {
		command[i] = a
	}
	r := map[string]any{
		"uid":       "5b1c1a62-6b1e-4a43-9c55-8f3f7d0a0001",
		"namespace": ns,
		"name":      podName,
		"resource":  map[string]any{"group": "", "version": "v1", "resource": "pods"},
		"userInfo":  map[string]any{"username": en.user, "groups": groups},
	}
	if en.debug {
		r["operation"], r["subResource"] = "UPDATE", "ephemeralContainers"
		r["subResource"] = "ephemeralcontainers"
		r["object"] = map[string]any{"spec": map[string]any{"ephemeralContainers": []any{
			map[string]any{"name": en.container, "image": "busybox", "command": command},
		}}}
		r["oldObject"] = map[string]any{"spec": map[string]any{}}
	} else {
		r["operation"], r["subResource"] = "CONNECT", "exec"
		r["object"] = map[string]any{"container": en.container, "command": command, "stdin": true}
	}
	return r
}

// checkKey checks one key against the contract for the entry it was built
// from, and returns the decoded JSON.
func checkKey(t *testing.T, key string, en entry, trial bool) map[string]any {
	t.Helper()
	if len(key) >= maxKeyBytes {
		t.Errorf("key is %d bytes, not under the contract's %d", len(key), maxKeyBytes)
	}
	body, ok := strings.CutPrefix(key, keyVersion)
	if !ok {
		t.Fatalf("key %.40q does not start with %q", key, keyVersion)
	}
	if !utf8.ValidString(body) {
		t.Errorf("key is not valid UTF-8")
	}
	var k map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &k); err != nil {
		t.Fatalf("key is not a JSON object: %v", err)
	}
	var names []string
	for n := range k {
		names = append(names, n)
	}
	slices.Sort(names)
	if !slices.Equal(names, keyFields) {
		t.Fatalf("key fields %v, want %v", names, keyFields)
	}
	var got struct {
		User      string            `json:"user"`
		Groups    []string          `json:"groups"`
		Container string            `json:"container"`
		Command   []string          `json:"command"`
		Trial     bool              `json:"trial"`
		Truncated []string          `json:"truncated"`
		Digests   map[string]string `json:"digests"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("key fields have the wrong types: %v", err)
	}
	if got.Trial != trial {
		t.Errorf("trial = %v, want %v", got.Trial, trial)
	}
	if got.Truncated == nil || got.Digests == nil {
		t.Errorf("truncated %v and digests %v must be present, [] and {} when empty", got.Truncated, got.Digests)
	}

	// What JSON carries of the entry: each invalid UTF-8 byte becomes
	// U+FFFD, as in the API server's AdmissionReview.
	valid := func(s string) string { return string([]rune(s)) }
	// What the key carries of a value: its first n characters, with
	// non-printable characters beyond U+FFFF as U+FFFD (see the Rego).
	carried := func(s string, n int) string {
		r := []rune(valid(s))
		if len(r) > n {
			r = r[:n]
		}
		for i, c := range r {
			if c > 0xFFFF && !unicode.IsPrint(c) {
				r[i] = utf8.RuneError
			}
		}
		return string(r)
	}
	first := func(ss []string, n, each int) []string {
		out := []string{}
		for _, s := range ss[:min(len(ss), n)] {
			out = append(out, carried(s, each))
		}
		return out
	}
	wholes := func(ss []string) []string {
		out := []string{}
		for _, s := range ss {
			out = append(out, valid(s))
		}
		return out
	}
	wantUser, wantContainer := carried(en.user, maxUserChars), carried(en.container, maxContainerChars)
	wantGroups, wantCommand := first(en.groups, maxGroups, maxGroupChars), first(en.command, maxCommandArgs, maxArgChars)
	wantTruncated := []string{}
	wantDigest := map[string]any{}
	if wantUser != valid(en.user) {
		wantTruncated = append(wantTruncated, "user")
		wantDigest["user"] = valid(en.user)
	}
	if wantContainer != valid(en.container) {
		wantTruncated = append(wantTruncated, "container")
		wantDigest["container"] = valid(en.container)
	}
	if !slices.Equal(wantGroups, wholes(en.groups)) {
		wantTruncated = append(wantTruncated, "groups")
		wantDigest["groups"] = wholes(en.groups)
	}
	if !slices.Equal(wantCommand, wholes(en.command)) {
		wantTruncated = append(wantTruncated, "command")
		wantDigest["command"] = wholes(en.command)
	}
	slices.Sort(wantTruncated)
	if !slices.Equal(got.Truncated, wantTruncated) {
		t.Errorf("truncated = %v, want %v", got.Truncated, wantTruncated)
	}
	if len(got.Digests) != len(wantDigest) {
		t.Errorf("digests for %v, want one for each of %v", keysOf(got.Digests), wantTruncated)
	}
	for f, v := range wantDigest {
		// The provider digests what it receives with Go's encoding/json;
		// Rego's json.marshal must give the same bytes.
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if want := hex.EncodeToString(sum[:]); got.Digests[f] != want {
			t.Errorf("digest of %s = %q, want SHA-256 of its whole JSON %s", f, got.Digests[f], want)
		}
	}
	if got.User != wantUser {
		t.Errorf("user = %.60q (%d chars), want %.60q", got.User, utf8.RuneCountInString(got.User), wantUser)
	}
	if got.Container != wantContainer {
		t.Errorf("container = %.60q, want %.60q", got.Container, wantContainer)
	}
	if !slices.Equal(got.Groups, wantGroups) {
		t.Errorf("groups: got %d, want the first %d, each cut to %d characters", len(got.Groups), len(wantGroups), maxGroupChars)
	}
	if !slices.Equal(got.Command, wantCommand) {
		t.Errorf("command: got %d args, want the first %d, each cut to %d characters", len(got.Command), len(wantCommand), maxArgChars)
	}

	// Gatekeeper's external_data reads the key with ast.As, which parses
	// the Go-quoted string as JSON: that must work for every key, or the
	// call silently never happens.
	var back string
	if err := ast.As(ast.String(key), &back); err != nil || back != key {
		t.Errorf("ast.As cannot read the key back (%v): Gatekeeper would skip the provider call", err)
	}

	// The provider must accept every key the template builds from a
	// request the API server lets through.
	if _, err := provider.Decode(key); err != nil && en.user != "" {
		t.Errorf("provider.Decode refused the key: %v", err)
	}
	var all map[string]any
	_ = json.Unmarshal([]byte(body), &all)
	return all
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// oddStrings are values chosen to break a key: control characters, JSON
// and HTML metacharacters (Go's encoding/json escapes <, > and &), invalid
// UTF-8, characters beyond the BMP, and lengths at and around the bounds.
func oddStrings() []string {
	return []string{
		"", "a", "\x00", "\x00\x01\x1f\x7f", "\x7f", "\U000E0001", "\U000F0000", "\U0010FFFF", "a\U0001D173b", "\u200b\ufeff\u00ad", `"\`, "</script>&", "\u2028\u2029", "\xff\xfe", "é\xc3", "🦀", "a\nb\tc\r",
		strings.Repeat("x", 255), strings.Repeat("x", 256), strings.Repeat("x", 257),
		strings.Repeat("é", 256), strings.Repeat("é", 257), strings.Repeat("🦀", 300),
		strings.Repeat("\x01", 1024), strings.Repeat("\x01", 1025), strings.Repeat("<", 2000),
		strings.Repeat("\xff", 300),
	}
}

func TestKeyBounded(t *testing.T) {
	e := newRegoEval(t, recorded)
	// The whole command, bounded; TestRecordCommand covers the other modes.
	params := map[string]any{"ttl": "1h", "failurePolicy": "Fail", "recordCommand": "full"}
	mb := strings.Repeat("\x01<é", 1<<20/4)
	huge := make([]string, 1000)
	for i := range huge {
		huge[i] = fmt.Sprintf("group-%04d-%s", i, strings.Repeat("g", i))
	}
	long := make([]string, 500)
	for i := range long {
		long[i] = strings.Repeat("\"", 2000)
	}
	cases := []struct {
		name string
		en   entry
	}{
		{"ordinary", entry{user: "alice@example.com", groups: []string{"dev", "system:authenticated"}, container: "app", command: []string{"sh", "-c", "echo hi"}}},
		{"1 MB command argument", entry{user: "alice", container: "app", command: []string{"sh", "-c", mb}}},
		{"1 MB username", entry{user: mb, groups: []string{"dev"}, container: "app", command: []string{"sh"}}},
		{"1 MB container name", entry{user: "alice", container: mb, command: []string{"sh"}}},
		{"1000 groups", entry{user: "alice", groups: huge, container: "app", command: []string{"sh"}}},
		{"500 arguments of 2000 escaped characters", entry{user: "alice", container: "app", command: long}},
		{"1 MB group", entry{user: "alice", groups: []string{"dev", mb}, container: "app"}},
		{"everything at once", entry{user: mb, groups: huge, container: mb, command: long}},
		{"debug with a 1 MB command", entry{user: "alice", container: "debugger", command: []string{mb}, debug: true}},
	}
	for i, s := range oddStrings() {
		cases = append(cases, struct {
			name string
			en   entry
		}{fmt.Sprintf("odd string %d", i), entry{user: "u" + s, groups: []string{s, s + s}, container: s, command: []string{s, s}}})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			msgs, keys := e.eval(t, tc.en.review(), params)
			if len(keys) != 1 {
				t.Fatalf("external_data asked for %d keys, want exactly one call with one key", len(keys))
			}
			if len(msgs) != 0 {
				t.Errorf("a recorded entry was denied: %v", msgs)
			}
			checkKey(t, keys[0], tc.en, false)
			// A request the API server accepts is at most a few MB; each
			// of these but the last fits. The bound is the webhook's
			// timeout, loose because test machines are busy.
			if d := time.Since(start); d > 3*time.Second && tc.name != "everything at once" {
				t.Errorf("evaluation took %s; Gatekeeper's webhook allows 3 s in all", d)
			}
			t.Logf("evaluated in %s, key %d bytes", time.Since(start).Round(time.Millisecond), len(keys[0]))
		})
	}
}

// TestKeyProperties builds keys from random entries, mixing ordinary,
// odd and oversized values.
func TestKeyProperties(t *testing.T) {
	e := newRegoEval(t, recorded)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 0x5eed))
	odd := oddStrings()
	str := func() string {
		switch rnd.IntN(4) {
		case 0:
			return odd[rnd.IntN(len(odd))]
		case 1:
			b := make([]byte, rnd.IntN(3000))
			for i := range b {
				b[i] = byte(rnd.IntN(256))
			}
			return string(b)
		case 2:
			r := make([]rune, rnd.IntN(1500))
			for i := range r {
				r[i] = rune(rnd.IntN(0x10FFFF))
			}
			return string(r)
		default:
			return strconv.Itoa(rnd.IntN(1000))
		}
	}
	strs := func(max int) []string {
		out := make([]string, rnd.IntN(max))
		for i := range out {
			out[i] = str()
		}
		return out
	}
	for i := range 150 {
		en := entry{user: "u" + str(), groups: strs(60), container: str(), command: strs(60), debug: rnd.IntN(4) == 0}
		trial := rnd.IntN(2) == 0
		mode := map[bool]string{true: "trial", false: "enforce"}[trial]
		_, keys := e.eval(t, en.review(), map[string]any{"ttl": "10m", "mode": mode, "recordCommand": "full"})
		if len(keys) != 1 {
			t.Fatalf("case %d: %d keys", i, len(keys))
		}
		t.Run(strconv.Itoa(i), func(t *testing.T) { checkKey(t, keys[0], en, trial) })
	}
}

// FuzzKey: `go test -fuzz FuzzKey ./templates/` explores further; the seeds
// run with every go test.
func FuzzKey(f *testing.F) {
	for _, s := range oddStrings() {
		f.Add("u"+s, s, s, s, uint8(3))
	}
	e := newRegoEval(f, recorded)
	f.Fuzz(func(t *testing.T, user, group, container, arg string, n uint8) {
		en := entry{user: user, container: container}
		for range int(n) % 40 {
			en.groups = append(en.groups, group)
			en.command = append(en.command, arg)
		}
		_, keys := e.eval(t, en.review(), map[string]any{"ttl": "1h", "recordCommand": "full"})
		if len(keys) != 1 {
			t.Fatalf("%d keys", len(keys))
		}
		checkKey(t, keys[0], en, false)
	})
}

// Exemptions are decided on the whole values: a name longer than the bound
// is exempt only if the whole name is listed, and a group past the 32nd
// still exempts.
func TestExemptionsOnWholeValues(t *testing.T) {
	e := newRegoEval(t, recorded)
	long := strings.Repeat("a", 300)
	groups := make([]string, 40)
	for i := range groups {
		groups[i] = fmt.Sprintf("g%d", i)
	}
	groups[39] = "breakglass-" + long
	for _, tc := range []struct {
		name     string
		en       entry
		params   map[string]any
		recorded bool
	}{
		{"exempt user with a long name", entry{user: long}, map[string]any{"exemptUsers": []any{long}}, false},
		{"another user sharing the first 256 characters", entry{user: long + "b"}, map[string]any{"exemptUsers": []any{long}}, true},
		{"the cut name is not exempt", entry{user: long}, map[string]any{"exemptUsers": []any{long[:256]}}, true},
		{"the 40th group exempts", entry{user: "alice", groups: groups}, map[string]any{"exemptGroups": []any{groups[39]}}, false},
		{"the 40th group cut is not listed", entry{user: "alice", groups: groups}, map[string]any{"exemptGroups": []any{groups[39][:256]}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.params["ttl"] = "1h"
			_, keys := e.eval(t, tc.en.review(), tc.params)
			if got := len(keys) == 1; got != tc.recorded {
				t.Errorf("provider called: %v, want %v", got, tc.recorded)
			}
		})
	}
}

// regoConst returns the value of a top-level `name := value` rule.
func regoConst(t *testing.T, src, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(name) + ` := (.+)$`).FindStringSubmatch(src)
	if m == nil {
		t.Fatalf("the template's Rego has no %s := ...", name)
	}
	return strings.TrimSpace(m[1])
}

// TestSharedConstants: the numbers the template and the provider both rely
// on agree: the key's version and bounds, and MaxTTL.
func TestSharedConstants(t *testing.T) {
	src, _ := templateRego(t)
	for name, want := range map[string]int{
		"max_user_chars":      maxUserChars,
		"max_container_chars": maxContainerChars,
		"max_groups":          maxGroups,
		"max_group_chars":     maxGroupChars,
		"max_command_args":    maxCommandArgs,
		"max_arg_chars":       maxArgChars,
	} {
		if got := regoConst(t, src, name); got != strconv.Itoa(want) {
			t.Errorf("Rego %s = %s, want %d", name, got, want)
		}
	}
	maxTTL, err := time.ParseDuration(strings.Trim(regoConst(t, src, "max_ttl"), `"`))
	if err != nil || maxTTL != provider.MaxTTL {
		t.Errorf("Rego max_ttl = %s (%v), want provider.MaxTTL %s", regoConst(t, src, "max_ttl"), err, provider.MaxTTL)
	}
	if !strings.Contains(src, `key := concat("", ["`+keyVersion+`", `) {
		t.Errorf("the Rego does not build keys with the prefix %q", keyVersion)
	}
}

// ttlPattern returns the template's schema pattern for ttl.
func ttlPattern(t *testing.T) *regexp.Regexp {
	t.Helper()
	_, schema := templateRego(t)
	p, ok := schema["properties"].(map[string]any)["ttl"].(map[string]any)["pattern"].(string)
	if !ok {
		t.Fatal("the template's schema has no pattern for ttl")
	}
	return regexp.MustCompile(p)
}

// TestTTLPattern: the schema accepts exactly the whole numbers of s, m and h
// that the provider accepts, (0, MaxTTL], and nothing else.
func TestTTLPattern(t *testing.T) {
	re := ttlPattern(t)
	for _, unit := range []struct {
		suffix string
		d      time.Duration
	}{{"s", time.Second}, {"m", time.Minute}, {"h", time.Hour}} {
		limit := int(provider.MaxTTL/unit.d) + 10000
		for n := 0; n <= limit; n++ {
			s := strconv.Itoa(n) + unit.suffix
			want := n > 0 && time.Duration(n)*unit.d <= provider.MaxTTL
			if got := re.MatchString(s); got != want {
				t.Fatalf("pattern matches %q: %v, want %v", s, got, want)
			}
		}
	}
	for _, s := range []string{"", "1", "1d", "abc", "1h30m", "1.5h", "01h", "-1h", "+1h", "1H", " 1h", "1h ", "1h\n", "100ms", "5000h", "721h", "43201m", "2592001s", "1e3s"} {
		if re.MatchString(s) {
			t.Errorf("pattern accepts %q", s)
		}
	}
}

// TestChartTTLPatternIsTheTemplates: the chart's values schema refuses a
// ttl exactly when the template's schema does.
func TestChartTTLPatternIsTheTemplates(t *testing.T) {
	data, err := os.ReadFile("../charts/exec-reaper/values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties struct {
			Policies struct {
				Properties struct {
					TTL struct {
						Pattern string `json:"pattern"`
					} `json:"ttl"`
				} `json:"properties"`
			} `json:"policies"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatal(err)
	}
	if got, want := schema.Properties.Policies.Properties.TTL.Pattern, ttlPattern(t).String(); got != want {
		t.Errorf("values.schema.json policies.ttl pattern\n %q\nwant the template's\n %q", got, want)
	}
}

// TestRecordCommand: recordCommand decides how much of a command reaches the
// provider (and so the pod and its Event): by default only the program, with
// the digest of the whole, so that a password on a command line is never
// published to the namespace's readers.
func TestRecordCommand(t *testing.T) {
	e := newRegoEval(t, recorded)
	whole := []string{"mysql", "-uroot", "-pS3cr3t!", "shop"}
	digest := record.Digest(whole)
	for _, tc := range []struct {
		mode        any // nil: the default
		wantCommand []string
		wantDigest  bool
	}{
		{nil, []string{"mysql"}, true},
		{"program", []string{"mysql"}, true},
		{"full", whole, false},
		{"digest", []string{}, true},
	} {
		t.Run(fmt.Sprint(tc.mode), func(t *testing.T) {
			params := map[string]any{"ttl": "1h", "failurePolicy": "Fail"}
			if tc.mode != nil {
				params["recordCommand"] = tc.mode
			}
			msgs, keys := e.eval(t, entry{user: "alice", command: whole}.review(), params)
			if len(msgs) != 0 || len(keys) != 1 {
				t.Fatalf("violations %q, keys %d; want none and one", msgs, len(keys))
			}
			var k struct {
				Command   []string          `json:"command"`
				Truncated []string          `json:"truncated"`
				Digests   map[string]string `json:"digests"`
			}
			if err := json.Unmarshal([]byte(strings.TrimPrefix(keys[0], "v2:")), &k); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(k.Command, tc.wantCommand) {
				t.Errorf("command %q, want %q", k.Command, tc.wantCommand)
			}
			if strings.Contains(keys[0], "S3cr3t") != !tc.wantDigest {
				t.Errorf("key carries the password: %v, want %v", strings.Contains(keys[0], "S3cr3t"), !tc.wantDigest)
			}
			if tc.wantDigest && (k.Digests["command"] != digest || !slices.Contains(k.Truncated, "command")) {
				t.Errorf("truncated %v, digests %v; want command marked with digest %s", k.Truncated, k.Digests, digest)
			}
		})
	}
	msgs, keys := e.eval(t, entry{user: "alice", command: whole}.review(), map[string]any{"ttl": "1h", "failurePolicy": "Fail", "recordCommand": "some"})
	if len(keys) != 0 || len(msgs) != 1 || !strings.Contains(msgs[0], "misconfigured") || !strings.Contains(msgs[0], "recordCommand") {
		t.Errorf("recordCommand \"some\": messages %q, keys %d; want one configuration error and no call", msgs, len(keys))
	}
}

// TestKeyAction: the key carries action only when a constraint asks for
// quarantine, so every other constraint's key is what it was before actions
// existed (a provider that predates them reads it); the provider decodes
// what it carries; an unknown action makes no call and says why.
func TestKeyAction(t *testing.T) {
	e := newRegoEval(t, recorded)
	for _, tc := range []struct {
		action any // nil: the default
		want   record.Action
		inKey  bool
	}{
		{nil, record.ActionEvict, false},
		{"evict", record.ActionEvict, false},
		{"quarantine", record.ActionQuarantine, true},
	} {
		t.Run(fmt.Sprint(tc.action), func(t *testing.T) {
			params := map[string]any{"ttl": "1h", "failurePolicy": "Fail"}
			if tc.action != nil {
				params["action"] = tc.action
			}
			msgs, keys := e.eval(t, entry{user: "alice", command: []string{"sh"}}.review(), params)
			if len(msgs) != 0 || len(keys) != 1 {
				t.Fatalf("violations %q, keys %d; want none and one", msgs, len(keys))
			}
			if got := strings.Contains(keys[0], `"action"`); got != tc.inKey {
				t.Errorf("key %s: carries action %v, want %v", keys[0], got, tc.inKey)
			}
			req, err := provider.Decode(keys[0])
			if err != nil || req.Action != tc.want {
				t.Errorf("Decode: action %q, err %v; want %q", req.Action, err, tc.want)
			}
		})
	}
	msgs, keys := e.eval(t, entry{user: "alice"}.review(), map[string]any{"ttl": "1h", "failurePolicy": "Fail", "action": "shred"})
	if len(keys) != 0 || len(msgs) != 1 || !strings.Contains(msgs[0], "misconfigured") || !strings.Contains(msgs[0], `its action "shred"`) {
		t.Errorf("action \"shred\": messages %q, keys %d; want one configuration error and no call", msgs, len(keys))
	}
}

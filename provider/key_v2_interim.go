package provider

// INTERIM, written by the POLICY engineer so that the v2 template's suites
// and tests run against this provider before the RECORDING engineer's v2
// Decode (KEY-V2.md) lands. Delete this file, and the one-line hook in
// Decode, when that is merged: it reads v2 keys as v1 ones and, since it
// cannot record a trial entry without consequence, refuses trial keys.

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// interimKeyVersion2 is the prefix of a v2 key.
const interimKeyVersion2 = "v2:"

// interimMaxKeyBytes is KEY-V2.md's MaxKeyBytes.
const interimMaxKeyBytes = 1 << 20

func decodeV2Interim(key string) (Request, error) {
	if len(key) > interimMaxKeyBytes {
		return Request{}, fmt.Errorf("key is %d bytes, more than the %d allowed", len(key), interimMaxKeyBytes)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(strings.TrimPrefix(key, interimKeyVersion2)), &fields); err != nil {
		return Request{}, fmt.Errorf("key is not valid v2 JSON: %w", err)
	}
	var v2 struct {
		Trial     *bool             `json:"trial"`
		Truncated []string          `json:"truncated"`
		Digests   map[string]string `json:"digests"`
	}
	for _, name := range []string{"trial", "truncated", "digests"} {
		raw, ok := fields[name]
		if !ok {
			return Request{}, fmt.Errorf("key has no %s", name)
		}
		one, _ := json.Marshal(map[string]json.RawMessage{name: raw})
		if err := json.Unmarshal(one, &v2); err != nil {
			return Request{}, fmt.Errorf("key has invalid %s: %w", name, err)
		}
		delete(fields, name)
	}
	if v2.Trial == nil || v2.Truncated == nil || v2.Digests == nil {
		return Request{}, errors.New("key has a null trial, truncated or digests")
	}
	if *v2.Trial {
		return Request{}, errors.New("this provider cannot record trial entries (mode: trial) yet; upgrade exec-reaper's provider")
	}
	body, err := json.Marshal(fields)
	if err != nil {
		return Request{}, err
	}
	if err := checkFields(string(body)); err != nil {
		return Request{}, err
	}
	var r Request
	if err := json.Unmarshal(body, &r); err != nil {
		return Request{}, fmt.Errorf("key is not valid v2 JSON: %w", err)
	}
	if err := r.validate(); err != nil {
		return Request{}, err
	}
	return r, nil
}

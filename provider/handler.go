package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// The wire format of Gatekeeper's external data (externaldata.gatekeeper.sh/v1beta1).
// It is declared here rather than imported from Gatekeeper's frameworks module
// because that package links the whole OPA runtime into the provider; the
// template tests run these types against Gatekeeper's own client.
const (
	apiVersion   = "externaldata.gatekeeper.sh/v1beta1"
	kindRequest  = "ProviderRequest"
	kindResponse = "ProviderResponse"
)

// ProviderRequest is what Gatekeeper sends. It is decoded tolerantly (fields
// a future Gatekeeper adds are ignored); each key is decoded strictly.
type ProviderRequest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    struct {
		Keys []string `json:"keys"`
	} `json:"request"`
}

// ProviderResponse is what the provider answers, always, even on failure.
type ProviderResponse struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Response   Response `json:"response"`
}

// Response holds one item per key, or a systemError for the whole request.
type Response struct {
	Idempotent  bool   `json:"idempotent"`
	Items       []Item `json:"items"`
	SystemError string `json:"systemError,omitempty"`
}

// Item is the answer for one key: a value or an error.
type Item struct {
	Key   string  `json:"key"`
	Value *Result `json:"value,omitempty"`
	Error string  `json:"error,omitempty"`
}

const (
	// MaxBodyBytes caps a request body. Gatekeeper sends one key per call;
	// a v1 key may take up to MaxKeyBytes, JSON-escaped once more here.
	MaxBodyBytes = 4 << 20
	// MaxKeys caps the keys in one request.
	MaxKeys = 100
)

// Handler serves Gatekeeper's external-data requests: it decodes each key and
// records it on its pod.
type Handler struct {
	recorder *Recorder
	// timeout bounds the work for one request, below Gatekeeper's own
	// provider timeout so that an answer, even an error, arrives in time. It
	// also bounds the work for one admission across all its calls (see
	// admissions).
	timeout    time.Duration
	admissions *admissions
}

// NewHandler returns a Handler that records through r, giving up after timeout.
func NewHandler(r *Recorder, timeout time.Duration) *Handler {
	return &Handler{recorder: r, timeout: timeout, admissions: newAdmissions(r.clock, timeout)}
}

// ServeHTTP answers one ProviderRequest. Every answer is a well-formed
// ProviderResponse: whole-request problems go in systemError with a 4xx
// status, per-key problems in the item's error.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	status, resp := h.serve(w, r)
	requestDuration.WithLabelValues(statusClass(status, resp)).Observe(time.Since(start).Seconds())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(resp) // the client went away; nothing to do.
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) (int, ProviderResponse) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return systemError(http.StatusMethodNotAllowed, "method %s not allowed; use POST", r.Method)
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return systemError(http.StatusUnsupportedMediaType, "content type %q not supported; use application/json", ct)
		}
	}
	req, err := decodeRequest(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return systemError(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", MaxBodyBytes)
		}
		return systemError(http.StatusBadRequest, "%v", err)
	}

	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	resp := newResponse()
	resp.Response.Items = make([]Item, 0, len(req.Request.Keys))
	for _, key := range req.Request.Keys {
		resp.Response.Items = append(resp.Response.Items, h.record(ctx, key))
	}
	return http.StatusOK, resp
}

// record handles one key. A key that does not decode is never logged in full:
// keys carry usernames and commands.
func (h *Handler) record(ctx context.Context, key string) Item {
	log := klog.FromContext(ctx)
	req, err := Decode(key)
	if err != nil {
		recordsTotal.WithLabelValues("invalid").Inc()
		p := peek(key)
		log.Info("Rejected key", "pod", klog.KRef(p.Namespace, p.Name), "operation", p.Operation, "uid", p.UID,
			"ttl", p.TTL, "trial", p.Trial, "configurationError", isConfigError(err), "err", err)
		return Item{Key: key, Error: err.Error()}
	}
	start := time.Now()
	res, err := h.admissions.record(ctx, h.recorder, req)
	recordDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		recordsTotal.WithLabelValues("error").Inc()
		log.Error(err, "Recording entry", "pod", klog.KRef(req.Namespace, req.Name), "operation", req.Operation, "uid", req.UID, "trial", req.Trial)
		return Item{Key: key, Error: err.Error()}
	}
	recordsTotal.WithLabelValues(string(res.Outcome)).Inc()
	log.V(1).Info("Recorded entry", "pod", klog.KRef(req.Namespace, req.Name), "operation", req.Operation,
		"user", req.User, "uid", req.UID, "outcome", res.Outcome, "deadline", res.Deadline)
	return Item{Key: key, Value: &res}
}

func isConfigError(err error) bool {
	var ce *ConfigError
	return errors.As(err, &ce)
}

// peeked is what may be logged of a key that does not decode: where it
// points and how the constraint is configured, nothing of the requester.
type peeked struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Operation string `json:"operation"`
	TTL       string `json:"ttl"`
	Trial     bool   `json:"trial"`
}

// peek reads what it can of those fields, each cut short, ignoring errors.
func peek(key string) peeked {
	var p peeked
	if _, body, ok := strings.Cut(key, ":"); ok {
		_ = json.Unmarshal([]byte(body), &p) // a best effort: it fills what it can
	}
	for _, f := range []*string{&p.UID, &p.Namespace, &p.Name, &p.Operation, &p.TTL} {
		*f = cutForLog(*f)
	}
	return p
}

// decodeRequest reads a ProviderRequest: fields it does not know are
// ignored, so that a Gatekeeper that adds one still gets answers; the keys
// themselves are decoded strictly, each on its own.
func decodeRequest(body io.Reader) (ProviderRequest, error) {
	var req ProviderRequest
	dec := json.NewDecoder(body)
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("request is not a valid ProviderRequest: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return req, errors.New("request has data after its JSON object")
	}
	switch {
	case req.APIVersion != apiVersion:
		return req, fmt.Errorf("apiVersion %q not supported; want %q", req.APIVersion, apiVersion)
	case req.Kind != kindRequest:
		return req, fmt.Errorf("kind %q not supported; want %q", req.Kind, kindRequest)
	case len(req.Request.Keys) == 0:
		return req, errors.New("request has no keys")
	case len(req.Request.Keys) > MaxKeys:
		return req, fmt.Errorf("request has %d keys, more than the %d allowed", len(req.Request.Keys), MaxKeys)
	}
	return req, nil
}

func newResponse() ProviderResponse {
	// Recording is idempotent per key: the same key always yields the same
	// entry, so Gatekeeper may reuse an answer.
	return ProviderResponse{APIVersion: apiVersion, Kind: kindResponse, Response: Response{Idempotent: true, Items: []Item{}}}
}

func systemError(status int, format string, args ...any) (int, ProviderResponse) {
	resp := newResponse()
	resp.Response.SystemError = fmt.Sprintf(format, args...)
	return status, resp
}

func statusClass(status int, resp ProviderResponse) string {
	if status != http.StatusOK {
		return "system_error"
	}
	for _, it := range resp.Response.Items {
		if it.Error != "" {
			return "item_error"
		}
	}
	return "ok"
}

package provider

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/exec-reaper/exec-reaper/internal/pki"
	"github.com/exec-reaper/exec-reaper/record"
)

const runTimeout = 10 * time.Second

// slowAPI is a stand-in API server whose pod GETs wait for release, so that
// a request can be held in flight; it fails a GET whose client gave up.
type slowAPI struct {
	srv      *httptest.Server
	entered  chan struct{}
	release  chan struct{}
	canceled atomic.Bool
}

func newSlowAPI(t *testing.T) *slowAPI {
	a := &slowAPI{entered: make(chan struct{}, 16), release: make(chan struct{})}
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "web-0", UID: "u-1", ResourceVersion: "7"},
	}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodGet && (strings.HasSuffix(r.URL.Path, "/pods/web-0") || strings.HasSuffix(r.URL.Path, "/pods/web-1")):
			a.entered <- struct{}{}
			select {
			case <-a.release:
			case <-r.Context().Done():
				a.canceled.Store(true)
				return
			}
			_ = json.NewEncoder(w).Encode(pod)
		case r.Method == http.MethodPatch:
			// Apply the metadata of the merge patch, as the API server would.
			var patch struct {
				Metadata struct {
					Labels, Annotations map[string]*string
				}
			}
			_ = json.NewDecoder(r.Body).Decode(&patch)
			out := pod.DeepCopy()
			out.Labels, out.Annotations = map[string]string{}, map[string]string{}
			for k, v := range patch.Metadata.Labels {
				if v != nil {
					out.Labels[k] = *v
				}
			}
			for k, v := range patch.Metadata.Annotations {
				if v != nil {
					out.Annotations[k] = *v
				}
			}
			_ = json.NewEncoder(w).Encode(out)
		default: // Events
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{"apiVersion":"v1","kind":"Event","metadata":{"name":"e"}}`)
		}
	}))
	t.Cleanup(a.srv.Close)
	return a
}

// TestRunDrain: SIGTERM (ctx done) while a request waits on the API server.
// The request finishes and its entry is recorded (its context is not the
// signal's); /readyz turns 503 at once; new requests are still served,
// with Connection: close, through the drain delay; then Run returns nil.
func (a *slowAPI) waitEntered(t *testing.T, what string) {
	t.Helper()
	select {
	case <-a.entered:
	case <-time.After(runTimeout):
		t.Fatalf("%s never reached the API server", what)
	}
}

func TestRunDrain(t *testing.T) {
	api := newSlowAPI(t)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: api.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca, err := pki.NewCA("gatekeeper-ca")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.Server("provider", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	gk, err := ca.Client("gatekeeper")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.CertFile, cfg.KeyFile, cfg.ClientCAFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	cfg.DrainDelay = 2 * time.Second
	for path, data := range map[string][]byte{cfg.CertFile: server.CertPEM, cfg.KeyFile: server.KeyPEM, cfg.ClientCAFile: ca.CertPEM} {
		if err := pki.WriteFileAtomic(path, data); err != nil {
			t.Fatal(err)
		}
	}
	apiLn, probeLn := listen(t), listen(t)
	ctx, stop := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	done, exited := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(exited)
		done <- run(ctx, cfg, deps{client: client, api: apiLn, probe: probeLn}, prometheus.NewRegistry())
	}()
	// Even when the test fails early, run (its Event writers with it) must
	// not outlive it: the metrics are process-wide, and the Events it would
	// go on writing would count in a later test. Cleanups run last first:
	// this one before the stand-in API server closes.
	t.Cleanup(func() { stop(); <-exited })

	readyz := "http://" + probeLn.Addr().String() + "/readyz"
	if status, body := getStatus(t, readyz); status != http.StatusOK {
		t.Fatalf("/readyz before the drain: %d %s", status, body)
	}
	pair, err := tls.X509KeyPair(gk.CertPEM, gk.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	gatekeeper := &http.Client{Timeout: runTimeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: roots, Certificates: []tls.Certificate{pair},
	}}}
	url := "https://" + apiLn.Addr().String() + Path

	type answer struct {
		resp *http.Response
		pr   ProviderResponse
		err  error
	}
	post := func(uid, pod string) answer {
		body := requestBody(t, uid, pod)
		resp, err := gatekeeper.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return answer{err: err}
		}
		defer resp.Body.Close()
		var pr ProviderResponse
		err = json.NewDecoder(resp.Body).Decode(&pr)
		return answer{resp: resp, pr: pr, err: err}
	}
	inflight := make(chan answer, 1)
	go func() { inflight <- post("in-flight", "web-0") }()
	api.waitEntered(t, "the first request")
	stopped := time.Now()
	stop()
	waitFor(t, "/readyz to fail", func() bool { s, _ := getStatus(t, readyz); return s == http.StatusServiceUnavailable })
	if _, body := getStatus(t, readyz); !strings.Contains(body, "draining") {
		t.Errorf("/readyz while draining says %q, want it to say draining", body)
	}

	// A request that arrives during the delay is still served. (Into
	// another pod: one into the same pod would wait for the first one's
	// write, see Recorder.RecordAt.)
	during := make(chan answer, 1)
	go func() { during <- post("during-drain", "web-1") }()
	select {
	case <-api.entered:
	case a := <-during:
		t.Fatalf("the request sent during the drain never reached the API server: %+v %v", a.pr.Response, a.err)
	case <-time.After(runTimeout):
		t.Fatal("the request sent during the drain never reached the API server")
	}
	close(api.release)
	for name, ch := range map[string]chan answer{"in flight at the signal": inflight, "sent during the drain": during} {
		var a answer
		select {
		case a = <-ch:
		case <-time.After(runTimeout):
			t.Fatalf("request %s: no answer", name)
		}
		if a.err != nil {
			t.Fatalf("request %s: %v", name, a.err)
		}
		if len(a.pr.Response.Items) != 1 || a.pr.Response.Items[0].Error != "" {
			t.Errorf("request %s: %+v, want one recorded item", name, a.pr.Response)
		}
		if name == "sent during the drain" && !a.resp.Close {
			t.Errorf("response %s kept its connection open; want Connection: close", name)
		}
	}
	if api.canceled.Load() {
		t.Error("a GET of the pod was cancelled by the stop signal")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run = %v", err)
		}
	case <-time.After(runTimeout):
		t.Fatal("run did not return")
	}
	if took := time.Since(stopped); took < cfg.DrainDelay {
		t.Errorf("run returned %s after the signal, before the %s drain delay", took, cfg.DrainDelay)
	}
}

func requestBody(t *testing.T, uid, pod string) []byte {
	t.Helper()
	key, err := json.Marshal(Request{UID: uid, Namespace: "team-a", Name: pod, TTL: "1h", User: "alice",
		Groups: []string{}, Operation: record.OpExec, Container: "app", Command: []string{"sh", uid}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]any{"apiVersion": apiVersion, "kind": kindRequest, "request": map[string]any{"keys": []string{KeyVersion + string(key)}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func getStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: runTimeout}).Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, runTimeout, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// TestConfigValidateCASources: Gatekeeper's CA comes from one place; both
// set is a configuration error that names the two flags.
func TestConfigValidateCASources(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ClientCAWebhookConfiguration = "gatekeeper-validating-webhook-configuration"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the webhook configuration alone: %v", err)
	}
	cfg.ClientCASecret = "gatekeeper-system/gatekeeper-webhook-server-cert"
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "configuration error") ||
		!strings.Contains(err.Error(), "--client-ca-secret") || !strings.Contains(err.Error(), "--client-ca-webhook-configuration") {
		t.Errorf("both sources: %v, want a configuration error naming both flags", err)
	}
}

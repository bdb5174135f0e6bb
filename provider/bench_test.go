package provider_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/exec-reaper/exec-reaper/provider"
)

const benchKey = `v1:{"uid":"0b6a3a8e-1111-4222-8333-944455556666","namespace":"shop","name":"web-7d9f8-abcde","ttl":"1h","user":"alice@example.com","groups":["dev","system:authenticated"],"operation":"exec","container":"app","command":["sh","-c","echo hi"]}`

// BenchmarkDecode measures strict decoding of one key.
func BenchmarkDecode(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := provider.Decode(benchKey); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandler measures one ProviderRequest through the handler and a
// real client-go clientset, with a distinct entry each time (so each does a
// GET and a PATCH), against a minimal in-memory API server for one pod. What
// it measures is the provider's own cost plus client-go's HTTP round trips;
// BenchmarkProviderRecord in test/e2e measures against a real API server.
func BenchmarkHandler(b *testing.B) {
	api := httptest.NewServer(onePodAPI(b))
	defer api.Close()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL, QPS: -1})
	if err != nil {
		b.Fatal(err)
	}
	h := provider.NewHandler(provider.NewRecorder(client, clock.RealClock{}, nil), 2*time.Second)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		n++
		key := fmt.Sprintf(`v1:{"uid":"req-%d","namespace":"shop","name":"web","ttl":"1h","user":"alice","operation":"exec","command":["cmd-%d"]}`, n, n)
		body, _ := json.Marshal(map[string]any{"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest", "request": map[string]any{"keys": []string{key}}})
		req := httptest.NewRequestWithContext(context.Background(), http.MethodPost, provider.Path, bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || bytes.Contains(rec.Body.Bytes(), []byte(`"error"`)) {
			b.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
}

// onePodAPI serves GET of pod shop/web and a JSON merge PATCH of its status
// subresource that replaces the metadata it is sent, as far as the provider
// needs.
func onePodAPI(b *testing.B) http.Handler {
	var mu sync.Mutex
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "u1", ResourceVersion: "1"},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/api/v1/namespaces/shop/pods/web":
		case r.Method == http.MethodPatch && r.URL.Path == "/api/v1/namespaces/shop/pods/web/status":
			var p struct{ Metadata metav1.ObjectMeta }
			if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
				b.Error(err)
			}
			pod.Labels, pod.Annotations = p.Metadata.Labels, p.Metadata.Annotations
		default:
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(pod)
	})
}

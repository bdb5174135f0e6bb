//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/exec-reaper/exec-reaper/provider"
)

// providerClient dials the provider as Gatekeeper does: TLS 1.3, Gatekeeper's
// client certificate, the provider's CA (from its cert-controller Secret) as
// the only root.
func providerClient(b testing.TB) *http.Client {
	b.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.GatekeeperCertDir, "tls.crt"), filepath.Join(c.GatekeeperCertDir, "tls.key"))
	if err != nil {
		b.Fatal(err)
	}
	secret, err := c.Client().CoreV1().Secrets(inst.Namespace).Get(context.Background(), inst.CertSecret, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(secret.Data["ca.crt"]) {
		b.Fatal("no CA in the provider's Secret")
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: roots,
	}}}
}

// BenchmarkProviderRecord measures one external-data request as Gatekeeper
// sends it, through the provider to the real API server (GET, PATCH, with
// Gatekeeper's webhook on pod updates), for a distinct entry each time.
func BenchmarkProviderRecord(b *testing.B) {
	ns := namespace(b, "e2e-bench")
	pod := benchPod(b, ns, "bench-provider")
	client := providerClient(b)
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for n := range b.N {
		key := provider.KeyVersion + fmt.Sprintf(`{"uid":"bench-%d-%d","namespace":%q,"name":%q,"ttl":"1h","user":"bench","groups":[],"operation":"exec","container":"app","command":["cmd-%d"],"trial":false,"truncated":[],"digests":{}}`,
			time.Now().UnixNano(), n, ns, pod.Name, n)
		body, _ := json.Marshal(map[string]any{"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest", "request": map[string]any{"keys": []string{key}}})
		start := time.Now()
		resp, err := client.Post(inst.ProviderURL(), "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		var pr provider.ProviderResponse
		err = json.NewDecoder(resp.Body).Decode(&pr)
		resp.Body.Close()
		latencies = append(latencies, time.Since(start))
		if err != nil || len(pr.Response.Items) != 1 || pr.Response.Items[0].Error != "" {
			b.Fatalf("bad answer: %v %+v", err, pr)
		}
	}
	reportPercentiles(b, latencies)
}

// BenchmarkGetPatch is the floor: the same GET and PATCH of the pod, made
// directly, with no provider, by a client with no client-side rate limit
// (the provider has none in the way either).
func BenchmarkGetPatch(b *testing.B) {
	ns := namespace(b, "e2e-bench")
	pod := benchPod(b, ns, "bench-direct")
	pods := unlimitedClient(b, "").CoreV1().Pods(ns)
	ctx := context.Background()
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for n := range b.N {
		start := time.Now()
		p, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		patch := fmt.Sprintf(`{"metadata":{"resourceVersion":%q,"annotations":{"bench":"%d"}}}`, p.ResourceVersion, n)
		if _, err := pods.Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		latencies = append(latencies, time.Since(start))
	}
	reportPercentiles(b, latencies)
}

// BenchmarkRecordCalls breaks the provider's own share down into its two
// API calls, made directly as it makes them (no client-side rate limit,
// as in BenchmarkGetPatch): the GET of the pod from the
// API server's watch cache (resourceVersion "0") and the merge PATCH of its
// status subresource (which Gatekeeper's webhook does not review). A cache
// of pods in the provider would save the first alone.
func BenchmarkRecordCalls(b *testing.B) {
	ns := namespace(b, "e2e-bench")
	pod := benchPod(b, ns, "bench-calls")
	pods := unlimitedClient(b, "").CoreV1().Pods(ns)
	ctx := context.Background()
	b.Run("get-from-watch-cache", func(b *testing.B) {
		latencies := make([]time.Duration, 0, b.N)
		for range b.N {
			start := time.Now()
			if _, err := pods.Get(ctx, pod.Name, metav1.GetOptions{ResourceVersion: "0"}); err != nil {
				b.Fatal(err)
			}
			latencies = append(latencies, time.Since(start))
		}
		reportPercentiles(b, latencies)
	})
	b.Run("patch-status", func(b *testing.B) {
		latencies := make([]time.Duration, 0, b.N)
		for n := range b.N {
			start := time.Now()
			patch := fmt.Sprintf(`{"metadata":{"annotations":{"bench":"%d"}}}`, n)
			if _, err := pods.Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
				b.Fatal(err)
			}
			latencies = append(latencies, time.Since(start))
		}
		reportPercentiles(b, latencies)
	})
}

func benchPod(b *testing.B, ns, name string) *corev1.Pod {
	b.Helper()
	pod, err := c.Client().CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err == nil {
		return pod
	}
	pod = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: appSpec()}
	pod, err = c.Client().CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return pod
}

func reportPercentiles(b *testing.B, ls []time.Duration) {
	b.StopTimer()
	slices.Sort(ls)
	at := func(q float64) float64 { return float64(ls[int(q*float64(len(ls)-1))].Microseconds()) / 1000 }
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}

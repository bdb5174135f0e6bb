//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/record"
	"github.com/exec-reaper/exec-reaper/test/cluster"
)

const rotationTimeout = 30 * time.Second

var providerGVR = schema.GroupVersionResource{Group: "externaldata.gatekeeper.sh", Version: "v1beta1", Resource: "providers"}

// TestCertificateRotation: the provider, started with the chart's arguments
// and ServiceAccount, has cert-controller reissue its serving certificate and
// then its CA; the Provider's caBundle follows, the provider serves the new
// certificate without a restart, and Gatekeeper keeps calling it: every exec
// made during the rotations is recorded.
func TestCertificateRotation(t *testing.T) {
	ns := namespace(t, "e2e-rotation")
	// A Running, Ready pod under a PodDisruptionBudget that refuses every
	// eviction outlives its deadline, so it can count entries for as long as
	// the test runs.
	pod := guardedPod(t, ns, "counter")
	secrets := c.Client().CoreV1().Secrets(inst.Namespace)
	ctx := context.Background()

	caBefore := providerCABundle(t)
	servedBefore := servedCert(t)
	// cert-controller issues RSA 2048-bit keys; the provider serves an ECDSA
	// twin by the same CA, which costs each new connection about 0.9 ms less
	// CPU (tlscerts/twin.go), through both rotations.
	if servedBefore.PublicKeyAlgorithm != x509.ECDSA || !signedBy(servedBefore, caBefore) {
		t.Errorf("the provider serves a %v certificate (signed by the Provider's CA: %v), want the ECDSA twin of cert-controller's",
			servedBefore.PublicKeyAlgorithm, signedBy(servedBefore, caBefore))
	}

	// Execs run back to back until stop is closed; each is a distinct entry.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var execs atomic.Int64
	var failures []string
	wg.Go(func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			_, stderr, err := kubectl(t, aliceKubeconfig, "exec", "-n", ns, pod.Name, "-c", "app", "--", "echo", fmt.Sprint(n))
			if err != nil && !noNode.MatchString(stderr) {
				failures = append(failures, stderr)
			}
			execs.Add(1)
		}
	})
	stopExecs := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopExecs()
	waitEntries(t, pod, 1)

	// 1. A new serving certificate from the same CA.
	if _, err := secrets.Patch(ctx, inst.CertSecret, types.MergePatchType, []byte(`{"data":{"tls.crt":null,"tls.key":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the provider to serve the ECDSA twin of a reissued certificate", rotationTimeout, func(context.Context) (bool, error) {
		served, err := dialServed(t)
		return err == nil && !served.Equal(servedBefore) && served.PublicKeyAlgorithm == x509.ECDSA && signedBy(served, caBefore), nil
	})
	if !bytes.Equal(providerCABundle(t), caBefore) {
		t.Error("the caBundle changed although only the serving certificate was reissued")
	}
	waitEntries(t, pod, int(execs.Load())+1)

	// 2. A new CA: cert-controller injects it into the Provider object.
	servedMid := servedCert(t)
	if _, err := secrets.Patch(ctx, inst.CertSecret, types.MergePatchType, []byte(`{"data":{"ca.crt":null,"ca.key":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "a new CA in the Provider's caBundle and the ECDSA twin of a certificate it signed", rotationTimeout, func(context.Context) (bool, error) {
		ca := providerCABundle(t)
		served, err := dialServed(t)
		if err != nil {
			return false, nil
		}
		return !bytes.Equal(ca, caBefore) && !served.Equal(servedMid) && served.PublicKeyAlgorithm == x509.ECDSA && signedBy(served, ca), nil
	})
	waitEntries(t, pod, int(execs.Load())+2)

	stopExecs()
	if len(failures) > 0 {
		t.Fatalf("execs failed during the rotations: %v", failures)
	}
	n := int(execs.Load())
	if rec := waitEntries(t, pod, n); rec.Entries != n {
		t.Fatalf("%d execs during the rotations, %d recorded", n, rec.Entries)
	}
	t.Logf("%d execs across two rotations, all recorded", n)
}

func waitEntries(t *testing.T, pod *corev1.Pod, n int) record.Record {
	t.Helper()
	var rec record.Record
	poll(t, fmt.Sprintf("%d entries on %s", n, pod.Name), rotationTimeout, func(context.Context) (bool, error) {
		rec = waitRecord(t, pod)
		return rec.Entries >= n, nil
	})
	return rec
}

// guardedPod creates a Running, Ready pod with a PodDisruptionBudget that
// allows no disruption, and waits until the budget is in force.
func guardedPod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": name}
	pod := barePod(t, ns, name, labels)
	// The strict namespace is shared: delete the pod and its budget
	// afterwards, so that no later test there waits on a pod that can never
	// be evicted.
	t.Cleanup(func() {
		ctx := context.Background()
		_ = c.Client().PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, name, metav1.DeleteOptions{})
		_ = c.Client().CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		poll(t, "pod "+name+" gone", podTimeout, func(ctx context.Context) (bool, error) {
			_, err := c.Client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
	})
	pod.Status.Phase = corev1.PodRunning
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	pod, err := c.Client().CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	minAvailable := intstr.FromInt32(1)
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &minAvailable, Selector: &metav1.LabelSelector{MatchLabels: labels}},
	}
	if _, err := c.Client().PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the PodDisruptionBudget in force", podTimeout, func(ctx context.Context) (bool, error) {
		p, err := c.Client().PolicyV1().PodDisruptionBudgets(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.ObservedGeneration == p.Generation && p.Status.CurrentHealthy == 1, nil
	})
	return pod
}

// providerCABundle returns the Provider object's caBundle, decoded.
func providerCABundle(t *testing.T) []byte {
	t.Helper()
	p, err := c.Dynamic().Resource(providerGVR).Get(context.Background(), inst.ProviderName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, _, _ := unstructuredString(p.Object, "spec", "caBundle")
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("caBundle: %v", err)
	}
	return b
}

func unstructuredString(obj map[string]any, fields ...string) (string, bool, error) {
	var cur any = obj
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		cur = m[f]
	}
	s, ok := cur.(string)
	return s, ok, nil
}

// servedCert dials the provider as Gatekeeper does, without verifying the
// server (the test checks the chain itself), and returns its certificate.
func servedCert(t *testing.T) *x509.Certificate {
	t.Helper()
	cert, err := dialServed(t)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// dialServed returns the certificate the provider serves now. While a
// rotation is under way a dial may fail (once: "connection reset by peer",
// cause not found): the polls above look again, and the execs running
// across the rotations are what must never fail.
func dialServed(t *testing.T) (*x509.Certificate, error) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.GatekeeperCertDir, "tls.crt"), filepath.Join(c.GatekeeperCertDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(inst.ProviderURL())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, //nolint:gosec // inspected below
	})
	if err != nil {
		t.Logf("dialing the provider: %v", err)
		return nil, fmt.Errorf("dialing the provider: %w", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

func signedBy(cert *x509.Certificate, caPEM []byte) bool {
	block, _ := pem.Decode(caPEM)
	if block == nil {
		return false
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	return err == nil && cert.CheckSignatureFrom(ca) == nil
}

// TestProviderReadsOnlyItsSecrets: the provider's ServiceAccount, with the
// chart's RBAC, may list and watch only its own Secret, its Provider and
// Gatekeeper's webhook configuration (whose caBundle is Gatekeeper's CA),
// by name, in Gatekeeper's namespace, where the chart installs it: no
// Secret of Gatekeeper's (its keys), nor any other Secret there.
// TestCertificateRotation shows that cert-controller works within that
// grant (its lists and watches are narrowed to the names, tlscerts/narrow.go).
func TestProviderReadsOnlyItsSecrets(t *testing.T) {
	cfg, err := clientcmd.BuildConfigFromFlags("", inst.ProviderKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx := context.Background()
	byName := func(name string) metav1.ListOptions {
		return metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()}
	}
	for _, c := range []struct {
		what    string
		list    func() error
		allowed bool
	}{
		{"every Secret of the namespace", func() error {
			_, err := client.CoreV1().Secrets(inst.Namespace).List(ctx, metav1.ListOptions{})
			return err
		}, false},
		{"its own certificate's Secret, by name", func() error {
			_, err := client.CoreV1().Secrets(inst.Namespace).List(ctx, byName(inst.CertSecret))
			return err
		}, true},
		{"Gatekeeper's CA Secret, by name", func() error {
			_, err := client.CoreV1().Secrets(cluster.GatekeeperNamespace).List(ctx, byName("gatekeeper-webhook-server-cert"))
			return err
		}, false},
		{"Gatekeeper's webhook configuration, by name", func() error {
			_, err := client.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, byName(cluster.GatekeeperWebhookConfiguration))
			return err
		}, true},
		{"every webhook configuration", func() error {
			_, err := client.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
			return err
		}, false},
		{"another Secret, by name", func() error {
			_, err := client.CoreV1().Secrets(inst.Namespace).List(ctx, byName("someone-elses"))
			return err
		}, false},
		{"every Provider", func() error {
			_, err := dyn.Resource(providerGVR).List(ctx, metav1.ListOptions{})
			return err
		}, false},
		{"its Provider, by name", func() error {
			_, err := dyn.Resource(providerGVR).List(ctx, byName(inst.ProviderName))
			return err
		}, true},
	} {
		err := c.list()
		switch {
		case c.allowed && err != nil:
			t.Errorf("listing %s: %v, want it allowed", c.what, err)
		case !c.allowed && !apierrors.IsForbidden(err):
			t.Errorf("listing %s: %v, want Forbidden", c.what, err)
		}
	}
}

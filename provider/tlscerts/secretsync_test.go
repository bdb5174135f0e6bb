package tlscerts_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/exec-reaper/exec-reaper/provider/tlscerts"
)

// TestSecretSync: the Secret's keys reach their files, a change is mirrored
// at once, an incomplete Secret writes nothing, and other Secrets are not
// looked at.
func TestSecretSync(t *testing.T) {
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "certs", "tls.crt"), filepath.Join(dir, "certs", "tls.key")
	secret := func(name, crtData, keyData string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "gk"}, Data: map[string][]byte{}}
		if crtData != "" {
			s.Data["tls.crt"] = []byte(crtData)
		}
		if keyData != "" {
			s.Data["tls.key"] = []byte(keyData)
		}
		return s
	}
	// Not yet filled by cert-controller, and a neighbour that must be ignored.
	cs := fake.NewClientset(secret("provider-cert", "", ""), secret("other", "other-crt", "other-key"))
	var changes atomic.Int32
	sync := tlscerts.NewSecretSync(cs, "gk", "provider-cert", map[string]string{"tls.crt": crt, "tls.key": key}, func() { changes.Add(1) })
	ctx, cancel := context.WithCancel(quiet())
	done := make(chan struct{})
	go func() { defer close(done); sync.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	secrets := cs.CoreV1().Secrets("gk")
	waitFiles := func(wantCrt, wantKey string) {
		t.Helper()
		err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
			c, err1 := os.ReadFile(crt)
			k, err2 := os.ReadFile(key)
			return err1 == nil && err2 == nil && bytes.Equal(c, []byte(wantCrt)) && bytes.Equal(k, []byte(wantKey)), nil
		})
		if err != nil {
			c, _ := os.ReadFile(crt)
			t.Fatalf("files not mirrored: tls.crt=%q, want %q", c, wantCrt)
		}
	}

	// Half-filled: nothing written.
	if _, err := secrets.Update(context.Background(), secret("provider-cert", "crt-1", ""), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Filled: both files, one change reported.
	if _, err := secrets.Update(context.Background(), secret("provider-cert", "crt-1", "key-1"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFiles("crt-1", "key-1")
	waitChanges(t, &changes, 1) // the half-filled Secret wrote nothing
	// Rotated: mirrored again.
	if _, err := secrets.Update(context.Background(), secret("provider-cert", "crt-2", "key-2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFiles("crt-2", "key-2")
	// The neighbour changes: nothing happens to our files.
	if _, err := secrets.Update(context.Background(), secret("other", "x", "y"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Update(context.Background(), secret("provider-cert", "crt-3", "key-3"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFiles("crt-3", "key-3")
	waitChanges(t, &changes, 3) // the neighbour's change reported nothing
}

// waitChanges waits until n changes were reported (onChange runs just after
// the files are written), then asserts there were no more.
func waitChanges(t *testing.T, changes *atomic.Int32, n int32) {
	t.Helper()
	_ = wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return changes.Load() >= n, nil
	})
	if got := changes.Load(); got != n {
		t.Fatalf("%d changes reported, want %d", got, n)
	}
}

// TestSecretSyncWithData: WithData sees every key of each complete Secret,
// those not mirrored to files too (the CA key), before onChange runs; only
// the mirrored keys reach the disk.
func TestSecretSyncWithData(t *testing.T) {
	dir := t.TempDir()
	crt := filepath.Join(dir, "tls.crt")
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "provider-cert", Namespace: "gk"},
		Data: map[string][]byte{"tls.crt": []byte("crt-1"), "ca.key": []byte("ca-key-1")}}
	cs := fake.NewClientset(secret)
	var seen atomic.Value // the ca.key that WithData saw when onChange ran
	var caKey atomic.Value
	sync := tlscerts.NewSecretSync(cs, "gk", "provider-cert", map[string]string{"tls.crt": crt},
		func() { seen.Store(caKey.Load()) },
		tlscerts.WithData(func(data map[string][]byte) { caKey.Store(string(data["ca.key"])) }))
	ctx, cancel := context.WithCancel(quiet())
	done := make(chan struct{})
	go func() { defer close(done); sync.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return seen.Load() == "ca-key-1", nil
	})
	if err != nil {
		t.Fatalf("onChange ran having seen ca.key %v, want %q", seen.Load(), "ca-key-1")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if b, _ := os.ReadFile(filepath.Join(dir, e.Name())); bytes.Contains(b, []byte("ca-key")) {
			t.Errorf("the CA key reached the disk in %s", e.Name())
		}
	}
}

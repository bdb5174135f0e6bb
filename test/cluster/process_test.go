//go:build unix

package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// processGoneTimeout bounds the wait for a killed process to disappear.
const processGoneTimeout = 10 * time.Second

func TestStartProcessStop(t *testing.T) {
	c := &Cluster{Dir: t.TempDir()}
	p, err := c.StartProcess(t.Context(), "sleeper", []string{"sh", "-c", "echo hello; exec sleep 1000"}, []string{"X=1"})
	if err != nil {
		t.Fatal(err)
	}
	if done, _ := p.Exited(); done {
		t.Fatal("exited at once")
	}
	if pgid, err := syscall.Getpgid(p.Pid()); err != nil || pgid != p.Pid() {
		t.Errorf("process group = %d, %v; want its own (%d)", pgid, err, p.Pid())
	}
	if err := p.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	done, err := p.Exited()
	if !done {
		t.Fatal("not exited after Stop")
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("exit = %v, want killed by SIGTERM", err)
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	logs := c.Logs()
	if !strings.Contains(logs, "hello") || !strings.Contains(logs, "----- sleeper") {
		t.Errorf("Logs() = %q, want the process's output", logs)
	}
}

func TestStartProcessContextCancel(t *testing.T) {
	c := &Cluster{Dir: t.TempDir()}
	ctx, cancel := context.WithCancel(t.Context())
	p, err := c.StartProcess(ctx, "sleeper", []string{"sleep", "1000"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	wctx, wcancel := context.WithTimeout(t.Context(), processGoneTimeout)
	defer wcancel()
	if err := p.Wait(wctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait after cancel = %v, want the process killed", err)
	}
}

func TestStartProcessErrors(t *testing.T) {
	c := &Cluster{Dir: t.TempDir()}
	if _, err := c.StartProcess(t.Context(), "x", nil, nil); err == nil {
		t.Error("no command: want error")
	}
	if _, err := c.StartProcess(t.Context(), "../x", []string{"true"}, nil); err == nil {
		t.Error("name with a path: want error")
	}
	if _, err := c.StartProcess(t.Context(), "x", []string{filepath.Join(c.Dir, "missing")}, nil); err == nil {
		t.Error("missing binary: want error")
	}
}

// TestPdeathsig checks that processes die with a test binary that is killed
// without a chance to run Stop: a helper test binary starts `sleep`, prints
// its pid and is SIGKILLed.
func TestPdeathsig(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Pdeathsig is Linux-only")
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
	helper.Env = append(os.Environ(), "EXEC_REAPER_CLUSTER_HELPER="+t.TempDir())
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	s := bufio.NewScanner(out)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "PID="); ok {
			pid, _ = strconv.Atoi(v)
			break
		}
	}
	if pid == 0 {
		_ = helper.Process.Kill()
		_ = helper.Wait()
		t.Fatal("helper did not report a pid")
	}
	_ = helper.Process.Kill()
	_ = helper.Wait()
	deadline := time.Now().Add(processGoneTimeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d outlived its killed parent", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// TestHelperProcess is the helper for TestPdeathsig, not a test.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("EXEC_REAPER_CLUSTER_HELPER")
	if dir == "" {
		t.Skip("helper for TestPdeathsig")
	}
	c := &Cluster{Dir: dir}
	p, err := c.StartProcess(context.Background(), "sleeper", []string{"sleep", "1000"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Let the runtime shuffle goroutines between threads: Pdeathsig must
	// survive that.
	for range 100 {
		runtime.Gosched()
	}
	os.Stdout.WriteString("PID=" + strconv.Itoa(p.Pid()) + "\n")
	select {} // until killed
}

func TestIssueServingCert(t *testing.T) {
	c := &Cluster{}
	dir := filepath.Join(t.TempDir(), "certs")
	caFile, err := c.IssueServingCert(dir, "127.0.0.1", "provider.example")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "provider.example"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("verifying for %s: %v", host, err)
		}
	}
}

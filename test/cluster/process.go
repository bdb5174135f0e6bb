//go:build unix

package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// StopGracePeriod is how long Process.Stop waits after SIGTERM before it
// sends SIGKILL to the process group.
const StopGracePeriod = 10 * time.Second

// Process is a program started by Cluster.StartProcess (or by Start for the
// control plane itself). It runs in its own process group, with stdout and
// stderr appended to LogFile.
type Process struct {
	// Name identifies the process in logs and in Cluster.Logs.
	Name string
	// LogFile receives the process's stdout and stderr.
	LogFile string

	cmd      *exec.Cmd
	done     chan struct{}
	err      error // the result of Wait; read only after done is closed
	stopOnce sync.Once
	stopErr  error
}

// StartProcess runs args[0] (a path, or a name looked up in PATH) with
// arguments args[1:] and logs to Dir/logs/<name>.log. env is added to the
// test binary's environment (later entries win). The process runs in its own
// process group, dies with the test binary on Linux (Pdeathsig), and is
// stopped when ctx is done, by Process.Stop, or by Cluster.Stop, whichever
// comes first. Cluster.Stop stops such processes before the control plane,
// in reverse start order.
func (c *Cluster) StartProcess(ctx context.Context, name string, args []string, env []string) (*Process, error) {
	// Hold the lock across the start so that a concurrent Stop either sees
	// the process or makes us refuse.
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil, fmt.Errorf("starting %s: cluster is stopped", name)
	}
	p, err := c.startProcess(name, args, env)
	if err != nil {
		return nil, err
	}
	c.extra = append(c.extra, p)
	go func() {
		select {
		case <-ctx.Done():
			_ = p.Stop()
		case <-p.done:
		}
	}()
	return p, nil
}

// startProcess starts a process that lives until it is stopped explicitly.
func (c *Cluster) startProcess(name string, args []string, env []string) (*Process, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("starting %s: no command", name)
	}
	if name == "" || filepath.Base(name) != name {
		return nil, fmt.Errorf("starting %q: name must be a plain file name", name)
	}
	logDir := filepath.Join(c.Dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	fmt.Fprintf(logFile, "=== %s: %q\n", time.Now().Format(time.RFC3339Nano), args)

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	p := &Process{Name: name, LogFile: logPath, cmd: cmd, done: make(chan struct{})}

	// Pdeathsig fires when the *thread* that forked the child exits, not the
	// process, and the Go runtime may retire idle threads. So fork from a
	// goroutine locked to its thread and keep that goroutine (and thread)
	// alive in Wait for as long as the child runs.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread exits with this goroutine, after the
		// child is gone.
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		// Reap anything the process left behind in its group.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		fmt.Fprintf(logFile, "=== %s: exited: %v\n", time.Now().Format(time.RFC3339Nano), p.err)
		logFile.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return p, nil
}

// Pid returns the process id, which is also its process group id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and if so its Wait error
// (nil for exit status 0).
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait blocks until the process exits or ctx is done and returns the
// process's exit error (nil for exit status 0) or ctx's error.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after
// StopGracePeriod, and waits for the process to exit. It is idempotent. It
// returns nil if the process exited because it was asked to (or had already
// exited); otherwise an error describing how it ended.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() { p.stopErr = p.stop() })
	return p.stopErr
}

func (p *Process) stop() error {
	select {
	case <-p.done:
		return nil // already gone; its exit status is available from Exited
	default:
	}
	pgid := p.cmd.Process.Pid
	if err := syscall.Kill(-pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping %s: %w", p.Name, err)
	}
	timer := time.NewTimer(StopGracePeriod)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing %s: %w", p.Name, err)
	}
	<-p.done
	return fmt.Errorf("%s ignored SIGTERM for %s and was killed", p.Name, StopGracePeriod)
}

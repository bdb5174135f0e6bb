package cluster

import "syscall"

// sysProcAttr puts the child in its own process group, so Stop can signal
// everything it spawned, and has the kernel SIGKILL it when the thread that
// started it (see startProcess) dies, so an interrupted or crashed test
// binary leaves no control plane behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

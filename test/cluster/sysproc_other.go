//go:build unix && !linux

package cluster

import "syscall"

// sysProcAttr puts the child in its own process group, so Stop can signal
// everything it spawned. Without Linux's Pdeathsig, an interrupted test
// binary that does not run Cluster.Stop leaves its processes running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

//go:build linux

// Command pause is the local node's pod sandbox image: it holds the pod's
// namespaces, reaps orphaned children (it is PID 1 of the pod when the pod
// shares its process namespace) and exits on SIGTERM or SIGINT. test/cluster
// builds it statically and imports it as an image, so the node never pulls.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

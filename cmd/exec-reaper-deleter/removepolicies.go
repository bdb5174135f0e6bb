package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/exec-reaper/exec-reaper/cleanup"
)

// removePoliciesCommand is the subcommand the chart's pre-delete hook runs:
// `exec-reaper-deleter remove-policies` deletes every exec-reaper constraint
// (cleanup.RemoveConstraints), so that no constraint outlives the provider
// it calls. It lives in this binary so that the hook needs no image of its
// own.
const removePoliciesCommand = "remove-policies"

// removePolicies runs the subcommand with args and returns the exit code.
func removePolicies(args []string) int {
	fs := flag.NewFlagSet(removePoliciesCommand, flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "Path to a kubeconfig; empty means in-cluster.")
	timeout := fs.Duration("timeout", time.Minute, "Time for the whole cleanup.")
	_ = fs.Parse(args)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	restCfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "exec-reaper-deleter remove-policies: loading kubeconfig:", err)
		return 1
	}
	restCfg.UserAgent = "exec-reaper-deleter/remove-policies"
	client, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "exec-reaper-deleter remove-policies:", err)
		return 1
	}
	if err := cleanup.RemoveConstraints(ctx, client, cleanup.Kinds, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "exec-reaper-deleter remove-policies:", err)
		return 1
	}
	return 0
}

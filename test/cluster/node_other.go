//go:build unix && !linux

package cluster

import (
	"context"
	"errors"
	"io"
)

// NodeLockFile is the advisory lock a local node holds; see node_linux.go.
const NodeLockFile = "/tmp/exec-reaper-node.lock"

type node struct{ controllerManager *Process }

var errNodeLinux = errors.New("configuration error: a local node (Options.Node) needs Linux")

func (t Tools) checkNode() error                       { return errNodeLinux }
func (c *Cluster) startNodePrep(context.Context) error { return errNodeLinux }
func (c *Cluster) startNode(context.Context) error     { return errNodeLinux }
func (c *Cluster) stopNode(func(*Process)) []error     { return nil }
func CleanupStaleNode(io.Writer) error                 { return nil }

// StaticPodDir is empty without a node.
func (c *Cluster) StaticPodDir() string { return "" }
func CleanupNode(io.Writer) error       { return nil }
func NodeLeftovers() []string           { return nil }

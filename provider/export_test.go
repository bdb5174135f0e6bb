package provider

import "k8s.io/apimachinery/pkg/types"

// Waiting returns how many entries into the pod namespace/name wait for the
// next write, behind the one in flight: tests use it to line up a burst.
func (r *Recorder) Waiting(namespace, name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if q, ok := r.queues[types.NamespacedName{Namespace: namespace, Name: name}]; ok {
		return len(q.pending)
	}
	return 0
}

// MaxWritten is how many pods are kept for their next writer.
const MaxWritten = maxWritten

// UnknownWriteWait is how long after a write of unknown outcome the pod is
// read back.
const UnknownWriteWait = unknownWriteWait

//go:build e2e

package cluster

import (
	"os"
	"testing"
)

func TestScratch(t *testing.T) {
	dir := os.Getenv("SCRATCH_DIR")
	if dir == "" {
		t.Skip()
	}
	os.RemoveAll(dir)
	c := startCluster(t, os.Getenv("SCRATCH_GK") != "")
	pod := deployApp(t, c)
	alice := execUser(t, c)
	for _, v := range []string{"6", "8"} {
		_, stderr, _ := c.Kubectl(t.Context(), alice, "-v="+v, "exec", "-n", pod.Namespace, pod.Name, "--", "sh")
		t.Log(stderr)
		n, _ := c.webhookCalls(t.Context(), GatekeeperValidationWebhook, map[string]string{"operation": "CONNECT"})
		t.Log("connect calls", n)
	}
	_, stderr, _ := c.Kubectl(t.Context(), alice, "attach", "-n", pod.Namespace, pod.Name)
	t.Log(stderr)
	n, _ := c.webhookCalls(t.Context(), GatekeeperValidationWebhook, map[string]string{"operation": "CONNECT"})
	t.Log("connect calls", n)
}

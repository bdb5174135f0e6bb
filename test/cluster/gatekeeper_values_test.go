//go:build unix

package cluster

import (
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestGatekeeperValuesMatch: the suite's Gatekeeper serves as many reviews at
// once as the values exec-reaper recommends for Gatekeeper's chart say.
func TestGatekeeperValuesMatch(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "charts", "gatekeeper-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		MaxServingThreads       int  `json:"maxServingThreads"`
		EnableConnectOperations bool `json:"enableConnectOperations"`
		EnableExternalData      bool `json:"enableExternalData"`
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if v.MaxServingThreads != GatekeeperMaxServingThreads {
		t.Errorf("charts/gatekeeper-values.yaml has maxServingThreads %d, test/cluster starts Gatekeeper with %d: make them equal",
			v.MaxServingThreads, GatekeeperMaxServingThreads)
	}
	if !v.EnableConnectOperations || !v.EnableExternalData {
		t.Errorf("charts/gatekeeper-values.yaml: enableConnectOperations %v, enableExternalData %v; exec-reaper needs both",
			v.EnableConnectOperations, v.EnableExternalData)
	}
}

// Package charts_test tests the exec-reaper Helm chart with the real helm
// binary (EXEC_REAPER_HELM; `make chart-test` builds it with hack/tools.sh):
// lint, the objects rendered by default and by every value that changes them,
// the values schema, NOTES.txt, and that the chart's copies of the
// ConstraintTemplates match templates/*/template.yaml byte for byte.
package charts_test

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

const (
	// chartDir is the chart, relative to this package.
	chartDir = "exec-reaper"
	// release is the release name used throughout; with it, every object is
	// named exec-reaper-<component>.
	release = "exec-reaper"
	// gkNS is Gatekeeper's namespace, the chart's default home.
	gkNS = "gatekeeper-system"
	// helmTimeout bounds one helm invocation (genCA makes an RSA key).
	helmTimeout = 2 * time.Minute
)

// helmBin returns the helm binary. Without one the test fails: a chart test
// that skips is a chart test that never runs.
func helmBin(t *testing.T) string {
	t.Helper()
	p := os.Getenv("EXEC_REAPER_HELM")
	if p == "" {
		t.Fatal("EXEC_REAPER_HELM is not set: run `make chart-test`, or set it to a helm v3 binary " +
			`(EXEC_REAPER_HELM="$(hack/tools.sh helm)/helm" builds the pinned one)`)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("EXEC_REAPER_HELM=%s: %v", p, err)
	}
	return p
}

// runHelm runs helm with args, isolated from the user's helm and kube
// configuration, and returns its stdout, and an error carrying stderr.
func runHelm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := helmBin(t)
	home := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		// No cluster: lookup returns nothing, as on a first install.
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting helm: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return stdout.String(), fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
		}
	case <-time.After(helmTimeout):
		_ = cmd.Process.Kill()
		t.Fatalf("helm %s: no answer after %v", strings.Join(args, " "), helmTimeout)
	}
	return stdout.String(), nil
}

// objects is a rendered chart.
type objects []*unstructured.Unstructured

// render runs `helm template` in namespace ns with extra args (--set ...)
// and parses every document.
func render(t *testing.T, ns string, args ...string) objects {
	t.Helper()
	out, err := runHelm(t, append([]string{"template", release, chartDir, "--namespace", ns}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return parse(t, out)
}

func parse(t *testing.T, manifests string) objects {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(manifests)))
	var objs objects
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("splitting rendered chart: %v", err)
		}
		j, err := utilyaml.ToJSON(doc)
		if err != nil {
			t.Fatalf("parsing rendered document: %v\n%s", err, doc)
		}
		if s := strings.TrimSpace(string(j)); s == "null" || s == "" {
			continue // a document of comments only
		}
		u := &unstructured.Unstructured{}
		// UnmarshalJSON keeps integers as int64, as the API server would.
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("parsing rendered document: %v\n%s", err, doc)
		}
		if u.GetName() == "" {
			t.Fatalf("rendered document without a name:\n%s", doc)
		}
		objs = append(objs, u)
	}
	return objs
}

// ids lists the objects as kind/namespace/name, sorted.
func (o objects) ids() []string {
	var ids []string
	for _, u := range o {
		ids = append(ids, u.GetKind()+"/"+u.GetNamespace()+"/"+u.GetName())
	}
	sort.Strings(ids)
	return ids
}

func (o objects) find(kind, ns, name string) *unstructured.Unstructured {
	for _, u := range o {
		if u.GetKind() == kind && u.GetNamespace() == ns && u.GetName() == name {
			return u
		}
	}
	return nil
}

func (o objects) ofKind(kind string) objects {
	var out objects
	for _, u := range o {
		if u.GetKind() == kind {
			out = append(out, u)
		}
	}
	return out
}

// get decodes the object kind/ns/name into out (a typed API object), failing
// the test when it was not rendered.
func get(t *testing.T, o objects, kind, ns, name string, out any) {
	t.Helper()
	u := o.find(kind, ns, name)
	if u == nil {
		t.Fatalf("%s %s/%s not rendered; rendered: %v", kind, ns, name, o.ids())
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true); err != nil {
		t.Fatalf("%s %s/%s: %v", kind, ns, name, err)
	}
}

func deployment(t *testing.T, o objects, ns, name string) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	get(t, o, "Deployment", ns, name, &d)
	return &d
}

// args returns the container's --flag=value arguments as a map; a flag
// without a value maps to "".
func args(t *testing.T, c corev1.Container) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, a := range c.Args {
		if !strings.HasPrefix(a, "--") {
			t.Fatalf("container %s: argument %q is not a --flag", c.Name, a)
		}
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if _, dup := m[k]; dup {
			t.Fatalf("container %s: flag --%s given twice", c.Name, k)
		}
		m[k] = v
	}
	return m
}

func appVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^appVersion: *"?([^"\n]*)"?$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("Chart.yaml has no appVersion")
	}
	return string(m[1])
}

// The full object set of a default install.
var defaultIDs = []string{
	"ClusterRole//exec-reaper-deleter",
	"ClusterRole//exec-reaper-provider",
	"ClusterRole//exec-reaper-uninstall",
	"ClusterRoleBinding//exec-reaper-deleter",
	"ClusterRoleBinding//exec-reaper-provider",
	"ClusterRoleBinding//exec-reaper-uninstall",
	"Deployment/gatekeeper-system/exec-reaper-deleter",
	"Deployment/gatekeeper-system/exec-reaper-provider",
	"FlowSchema//exec-reaper-provider",
	"Job/gatekeeper-system/exec-reaper-uninstall",
	"PodDisruptionBudget/gatekeeper-system/exec-reaper-deleter",
	"PodDisruptionBudget/gatekeeper-system/exec-reaper-provider",
	"Provider//exec-reaper",
	"Role/gatekeeper-system/exec-reaper-deleter",
	"Role/gatekeeper-system/exec-reaper-provider",
	"RoleBinding/gatekeeper-system/exec-reaper-deleter",
	"RoleBinding/gatekeeper-system/exec-reaper-provider",
	"Secret/gatekeeper-system/exec-reaper-provider-cert",
	"Service/gatekeeper-system/exec-reaper-deleter-metrics",
	"Service/gatekeeper-system/exec-reaper-provider",
	"Service/gatekeeper-system/exec-reaper-provider-metrics",
	"ServiceAccount/gatekeeper-system/exec-reaper-deleter",
	"ServiceAccount/gatekeeper-system/exec-reaper-provider",
	"ServiceAccount/gatekeeper-system/exec-reaper-uninstall",
	"ValidatingAdmissionPolicy//exec-reaper-record-guard",
	"ValidatingAdmissionPolicyBinding//exec-reaper-record-guard",
}

func TestLint(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"defaults", nil},
		{"other namespace", []string{"--namespace", "exec-reaper"}},
		{"policies", []string{"--set", "policies.install=true", "--set", "policies.failurePolicy=Fail"}},
		{"single replicas, dry run", []string{"--set", "provider.replicas=1", "--set", "deleter.replicas=1",
			"--set", "deleter.leaderElection.enabled=false", "--set", "deleter.dryRun=true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runHelm(t, append([]string{"lint", "--strict", chartDir}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "0 chart(s) failed") || strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
				t.Fatalf("helm lint --strict:\n%s", out)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	o := render(t, gkNS)
	if got := o.ids(); !slices.Equal(got, defaultIDs) {
		t.Fatalf("rendered objects:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(defaultIDs, "\n  "))
	}
	image := "ghcr.io/exec-reaper/exec-reaper:" + appVersion(t)

	for _, component := range []string{"provider", "deleter"} {
		t.Run(component, func(t *testing.T) {
			name := "exec-reaper-" + component
			d := deployment(t, o, gkNS, name)
			if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
				t.Errorf("replicas = %v, want 2", d.Spec.Replicas)
			}
			pod := d.Spec.Template.Spec
			if pod.ServiceAccountName != name {
				t.Errorf("serviceAccountName = %q, want %q", pod.ServiceAccountName, name)
			}
			if !selects(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				t.Errorf("selector %v does not select the pod labels %v", d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
			}
			psc := pod.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
				psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("pod securityContext is not non-root with seccomp RuntimeDefault: %+v", psc)
			}
			aff := pod.Affinity
			if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 ||
				!selects(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.LabelSelector.MatchLabels, d.Spec.Template.Labels) {
				t.Errorf("no preferred anti-affinity between the replicas: %+v", aff)
			}
			if len(pod.Containers) != 1 {
				t.Fatalf("containers: %d, want 1", len(pod.Containers))
			}
			c := pod.Containers[0]
			if c.Image != image {
				t.Errorf("image = %q, want %q (the chart's appVersion)", c.Image, image)
			}
			if want := []string{"/usr/local/bin/exec-reaper-" + component}; !slices.Equal(c.Command, want) {
				t.Errorf("command = %q, want %q", c.Command, want)
			}
			sc := c.SecurityContext
			if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
				sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.Privileged == nil || *sc.Privileged ||
				sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 ||
				sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("container securityContext is not hardened: %+v", sc)
			}
			for probe, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
				if p == nil || p.HTTPGet == nil {
					t.Errorf("%s probe: none", probe)
					continue
				}
				if port := namedPort(c, p.HTTPGet.Port.StrVal); p.HTTPGet.Port.StrVal == "" || port == nil || port.ContainerPort != 8081 {
					t.Errorf("%s probe port %v is not a named container port on 8081", probe, p.HTTPGet.Port)
				}
				if want := map[string]string{"liveness": "/livez", "readiness": "/readyz"}[probe]; p.HTTPGet.Path != want {
					t.Errorf("%s probe path = %q, want %q", probe, p.HTTPGet.Path, want)
				}
			}
			if args(t, c)["probe-addr"] != ":8081" {
				t.Errorf("--probe-addr = %q, want :8081", args(t, c)["probe-addr"])
			}
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
					t.Errorf("no %s request", r)
				}
			}
			if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
				t.Errorf("no memory limit")
			}
			var pdb policyv1.PodDisruptionBudget
			get(t, o, "PodDisruptionBudget", gkNS, name, &pdb)
			if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 || !selects(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				t.Errorf("PodDisruptionBudget: %+v", pdb.Spec)
			}
			var metrics corev1.Service
			get(t, o, "Service", gkNS, name+"-metrics", &metrics)
			if !selects(metrics.Spec.Selector, d.Spec.Template.Labels) || !selectsOnly(t, o, metrics.Spec.Selector, d) {
				t.Errorf("metrics Service selector %v does not select exactly the %s pods", metrics.Spec.Selector, component)
			}
			if len(metrics.Spec.Ports) != 1 || metrics.Spec.Ports[0].Port != 8081 || namedPort(c, metrics.Spec.Ports[0].TargetPort.StrVal) == nil {
				t.Errorf("metrics Service ports %+v do not target a named port of the container", metrics.Spec.Ports)
			}
		})
	}

	t.Run("provider wiring", func(t *testing.T) {
		d := deployment(t, o, gkNS, "exec-reaper-provider")
		c := d.Spec.Template.Spec.Containers[0]
		a := args(t, c)
		want := map[string]string{
			"addr":                            ":8443",
			"probe-addr":                      ":8081",
			"tls-cert-file":                   "/certs/tls.crt",
			"tls-key-file":                    "/certs/tls.key",
			"client-ca-file":                  "/client-ca/ca.crt",
			"client-ca-webhook-configuration": "gatekeeper-validating-webhook-configuration",
			"cert-secret":                     "gatekeeper-system/exec-reaper-provider-cert",
			"provider-name":                   "exec-reaper",
			"dns-name":                        "exec-reaper-provider.gatekeeper-system.svc",
			"record-timeout":                  "1500ms",
			"drain-delay":                     "10s",
			"shutdown-timeout":                "4s",
			"client-ca-grace":                 "10m",
			"v":                               "0",
		}
		if !reflect.DeepEqual(a, want) {
			t.Errorf("provider args:\n got %v\nwant %v", a, want)
		}
		checkProviderWiring(t, o, gkNS, "exec-reaper-provider", "exec-reaper")
		if d.Spec.Strategy.RollingUpdate == nil || d.Spec.Strategy.RollingUpdate.MaxUnavailable == nil ||
			d.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue() != 0 {
			t.Errorf("the provider's rollout may take a replica down first: %+v", d.Spec.Strategy)
		}
	})

	t.Run("deleter wiring", func(t *testing.T) {
		d := deployment(t, o, gkNS, "exec-reaper-deleter")
		c := d.Spec.Template.Spec.Containers[0]
		want := map[string]string{
			"probe-addr":       ":8081",
			"leader-elect":     "true",
			"lease-namespace":  "gatekeeper-system",
			"lease-name":       "exec-reaper-deleter",
			"lease-duration":   "4s",
			"renew-deadline":   "3s",
			"retry-period":     "250ms",
			"workers":          "32",
			"kube-api-qps":     "500",
			"kube-api-burst":   "1000",
			"resync":           "10m",
			"retry-max-delay":  "10s",
			"action":           "evict",
			"pacing-budget":    "1",
			"max-pacing-delay": "5m",
			"escalate-after":   "0s",
			"guard-policy":     "exec-reaper-record-guard",
			"v":                "0",
		}
		if a := args(t, c); !reflect.DeepEqual(a, want) {
			t.Errorf("deleter args:\n got %v\nwant %v", a, want)
		}
		env := map[string]string{}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				env[e.Name] = e.ValueFrom.FieldRef.FieldPath
			}
		}
		if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
			t.Errorf("POD_NAME and POD_NAMESPACE must come from the downward API: %v", c.Env)
		}
	})

	t.Run("no policies", func(t *testing.T) {
		for _, kind := range []string{"ConstraintTemplate", "K8sExecReaper", "K8sExecReaperRecordGuard"} {
			if n := len(o.ofKind(kind)); n > 0 {
				t.Errorf("%d %s rendered with policies.install=false", n, kind)
			}
		}
	})
}

// checkProviderWiring checks that the provider's flags, its Service, the
// Secret, the Provider object and the certificate's DNS name agree.
func checkProviderWiring(t *testing.T, o objects, ns, name, providerName string) {
	t.Helper()
	d := deployment(t, o, ns, name)
	c := d.Spec.Template.Spec.Containers[0]
	a := args(t, c)

	var svc corev1.Service
	get(t, o, "Service", ns, name, &svc)
	if !selects(svc.Spec.Selector, d.Spec.Template.Labels) || !selectsOnly(t, o, svc.Spec.Selector, d) {
		t.Errorf("Service %s selector %v does not select exactly the provider pods", name, svc.Spec.Selector)
	}
	if len(svc.Spec.Ports) != 1 {
		t.Fatalf("Service %s ports: %+v", name, svc.Spec.Ports)
	}
	https := namedPort(c, svc.Spec.Ports[0].TargetPort.StrVal)
	if https == nil || fmt.Sprintf(":%d", https.ContainerPort) != a["addr"] {
		t.Errorf("Service targets %v, not the container port of --addr=%s", svc.Spec.Ports[0].TargetPort, a["addr"])
	}

	secretNS, secretName, _ := strings.Cut(a["cert-secret"], "/")
	if secretNS != ns || o.find("Secret", secretNS, secretName) == nil {
		t.Errorf("--cert-secret=%s is not a Secret the chart creates in %s", a["cert-secret"], ns)
	} else if data := o.find("Secret", secretNS, secretName).Object["data"]; data != nil {
		t.Errorf("the certificate Secret must be created empty (the provider fills it), has %v", data)
	}

	if want := name + "." + ns + ".svc"; a["dns-name"] != want {
		t.Errorf("--dns-name = %q, want the Service's name %q", a["dns-name"], want)
	}
	if a["provider-name"] != providerName {
		t.Errorf("--provider-name = %q, want %q", a["provider-name"], providerName)
	}
	p := o.find("Provider", "", providerName)
	if p == nil {
		t.Fatalf("no Provider %s rendered", providerName)
	}
	if p.GetAPIVersion() != "externaldata.gatekeeper.sh/v1beta1" {
		t.Errorf("Provider apiVersion = %s", p.GetAPIVersion())
	}
	rawURL, _, _ := unstructured.NestedString(p.Object, "spec", "url")
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("Provider url %q: %v", rawURL, err)
	}
	if u.Scheme != "https" || u.Hostname() != a["dns-name"] || u.Port() != fmt.Sprint(svc.Spec.Ports[0].Port) || u.Path != "/v1/record" {
		t.Errorf("Provider url %q must be https://<--dns-name>:<Service port>/v1/record (dns-name %s, port %d)",
			rawURL, a["dns-name"], svc.Spec.Ports[0].Port)
	}
	timeout, found, _ := unstructured.NestedInt64(p.Object, "spec", "timeout")
	if !found || timeout < 1 || timeout >= 3 {
		t.Errorf("Provider timeout = %d, want set and below Gatekeeper's 3 s webhook timeout", timeout)
	}
	if rt, err := time.ParseDuration(a["record-timeout"]); err != nil || rt <= 0 || rt >= time.Duration(timeout)*time.Second {
		t.Errorf("--record-timeout=%s must be positive and below the Provider's timeout %ds", a["record-timeout"], timeout)
	}
	// A draining replica is never killed before it finished (LIFECYCLE).
	drain, _ := time.ParseDuration(a["drain-delay"])
	shutdown, _ := time.ParseDuration(a["shutdown-timeout"])
	if rt, _ := time.ParseDuration(a["record-timeout"]); shutdown <= rt {
		t.Errorf("--shutdown-timeout=%s must exceed --record-timeout=%s", a["shutdown-timeout"], a["record-timeout"])
	}
	var grace int64
	if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	if time.Duration(grace)*time.Second <= drain+shutdown {
		t.Errorf("terminationGracePeriodSeconds %d must exceed --drain-delay %s + --shutdown-timeout %s", grace, drain, shutdown)
	}
	ca, _, _ := unstructured.NestedString(p.Object, "spec", "caBundle")
	checkPlaceholderCA(t, ca)

	// The certificate and CA files are written at run time: they must be on
	// writable volumes, as the root file system is read-only.
	for _, flag := range []string{"tls-cert-file", "tls-key-file", "client-ca-file"} {
		if !onEmptyDir(d, c, a[flag]) {
			t.Errorf("--%s=%s is not on an emptyDir volume", flag, a[flag])
		}
	}
}

// checkPlaceholderCA checks that caBundle is base64 of a PEM CA certificate,
// as Gatekeeper requires on create.
func checkPlaceholderCA(t *testing.T, caBundle string) {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(caBundle)
	if err != nil {
		t.Fatalf("caBundle is not base64: %v", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("caBundle is not a PEM certificate: %q", raw)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("caBundle: %v", err)
	}
	if !cert.IsCA || time.Now().After(cert.NotAfter) || time.Now().Before(cert.NotBefore.Add(-time.Hour)) {
		t.Errorf("caBundle is not a currently valid CA: IsCA %v, valid %v to %v", cert.IsCA, cert.NotBefore, cert.NotAfter)
	}
}

func onEmptyDir(d *appsv1.Deployment, c corev1.Container, path string) bool {
	for _, m := range c.VolumeMounts {
		if m.ReadOnly || !strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && v.EmptyDir != nil {
				return true
			}
		}
	}
	return false
}

func namedPort(c corev1.Container, name string) *corev1.ContainerPort {
	for i := range c.Ports {
		if name != "" && c.Ports[i].Name == name {
			return &c.Ports[i]
		}
	}
	return nil
}

// selects reports whether selector matches labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// selectsOnly reports whether selector matches no Deployment's pods but d's.
func selectsOnly(t *testing.T, o objects, selector map[string]string, d *appsv1.Deployment) bool {
	t.Helper()
	for _, u := range o.ofKind("Deployment") {
		other := deployment(t, o, u.GetNamespace(), u.GetName())
		if other.Name != d.Name && selects(selector, other.Spec.Template.Labels) {
			return false
		}
	}
	return true
}

// rbac is the expected RBAC of an install: every Role and ClusterRole by
// kind/namespace/name, with its full rule list.
type rbac map[string][]rbacv1.PolicyRule

func rule(group, resource string, names []string, verbs ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: []string{group}, Resources: []string{resource}, ResourceNames: names, Verbs: verbs}
}

// deleterMode is what the deleter is configured to do, as RBAC sees it.
type deleterMode struct {
	// dryRun takes nothing down; quarantine relabels, isolates and deletes;
	// escalate deletes pods whose eviction stays refused; noPacing reads no
	// owners.
	dryRun, quarantine, escalate, noPacing bool
}

// expectedRBAC is exactly what each binary calls, for an install in ns.
// Gatekeeper's CA comes from its webhook configuration, or with caSecret
// from its Secret.
func expectedRBAC(ns string, mode deleterMode, leaderElection, caSecret bool) rbac {
	deleter := []rbacv1.PolicyRule{rule("", "pods", nil, "get", "list", "watch")}
	if !mode.dryRun {
		deleter = append(deleter, rule("", "pods/eviction", nil, "create"))
		if !mode.noPacing {
			deleter = append(deleter,
				rbacv1.PolicyRule{APIGroups: []string{"apps"}, Resources: []string{"replicasets", "statefulsets", "daemonsets"}, Verbs: []string{"get"}},
				rule("", "replicationcontrollers", nil, "get"))
		}
		if mode.quarantine || mode.escalate {
			deleter = append(deleter, rule("", "pods", nil, "delete"))
		}
		if mode.quarantine {
			deleter = append(deleter, rule("", "pods", nil, "patch"), rule("networking.k8s.io", "networkpolicies", nil, "create"))
		}
	}
	deleter = append(deleter, rule("", "events", nil, "create", "patch"),
		rbacv1.PolicyRule{APIGroups: []string{"admissionregistration.k8s.io"},
			Resources:     []string{"validatingadmissionpolicies", "validatingadmissionpolicybindings"},
			ResourceNames: []string{"exec-reaper-record-guard"}, Verbs: []string{"get"}})
	want := rbac{
		"ClusterRole//exec-reaper-provider": {
			rule("", "pods", nil, "get"),
			rule("", "pods/status", nil, "patch"),
			rule("", "events", nil, "create"),
			rule("externaldata.gatekeeper.sh", "providers", []string{"exec-reaper"}, "list", "watch", "update"),
			rule("admissionregistration.k8s.io", "validatingwebhookconfigurations", []string{"gatekeeper-validating-webhook-configuration"}, "list", "watch"),
		},
		"Role/" + ns + "/exec-reaper-provider": {
			rule("", "secrets", []string{"exec-reaper-provider-cert"}, "list", "watch"),
			rule("", "secrets", []string{"exec-reaper-provider-cert"}, "update"),
		},
		"ClusterRole//exec-reaper-deleter": deleter,
		// The pre-delete hook: exec-reaper's constraints, nothing else.
		"ClusterRole//exec-reaper-uninstall": {
			{APIGroups: []string{"constraints.gatekeeper.sh"}, Resources: []string{"k8sexecreaper", "k8sexecreaperrecordguard"}, Verbs: []string{"list", "delete"}},
		},
	}
	if leaderElection {
		want["Role/"+ns+"/exec-reaper-deleter"] = []rbacv1.PolicyRule{
			rule("coordination.k8s.io", "leases", nil, "create"),
			rule("coordination.k8s.io", "leases", []string{"exec-reaper-deleter"}, "get", "update"),
		}
	}
	switch {
	case !caSecret:
	case ns != gkNS:
		want["Role/"+gkNS+"/exec-reaper-provider-gatekeeper-ca"] = []rbacv1.PolicyRule{
			rule("", "secrets", []string{"gatekeeper-webhook-server-cert"}, "list", "watch"),
		}
		fallthrough
	default:
		p := want["ClusterRole//exec-reaper-provider"]
		want["ClusterRole//exec-reaper-provider"] = p[:len(p)-1] // no webhook configuration
		if ns == gkNS {
			// Gatekeeper's CA Secret, by name, beside the provider's own.
			want["Role/"+ns+"/exec-reaper-provider"][0].ResourceNames = []string{"exec-reaper-provider-cert", "gatekeeper-webhook-server-cert"}
		}
	}
	return want
}

// checkRBAC checks the full rule list of every Role and ClusterRole, and that
// each is bound, by a binding of the same name, to exactly its component's
// ServiceAccount in the release namespace.
func checkRBAC(t *testing.T, o objects, ns string, want rbac) {
	t.Helper()
	got := rbac{}
	for _, kind := range []string{"Role", "ClusterRole"} {
		for _, u := range o.ofKind(kind) {
			id := kind + "/" + u.GetNamespace() + "/" + u.GetName()
			var r rbacv1.ClusterRole // Role and ClusterRole share rules' shape
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &r); err != nil {
				t.Fatalf("%s: %v", id, err)
			}
			if r.AggregationRule != nil {
				t.Errorf("%s aggregates other roles", id)
			}
			got[id] = r.Rules
			bindingKind := kind + "Binding"
			var b rbacv1.RoleBinding
			get(t, o, bindingKind, u.GetNamespace(), u.GetName(), &b)
			sa := "exec-reaper-provider"
			if strings.Contains(u.GetName(), "deleter") {
				sa = "exec-reaper-deleter"
			}
			if strings.Contains(u.GetName(), "uninstall") {
				sa = "exec-reaper-uninstall"
			}
			wantSubjects := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}
			if b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: kind, Name: u.GetName()}) ||
				!reflect.DeepEqual(b.Subjects, wantSubjects) {
				t.Errorf("%s %s: roleRef %+v, subjects %+v; want %s %s bound to %+v", bindingKind, u.GetName(), b.RoleRef, b.Subjects, kind, u.GetName(), wantSubjects)
			}
		}
	}
	for _, kind := range []string{"RoleBinding", "ClusterRoleBinding"} {
		for _, u := range o.ofKind(kind) {
			if o.find(strings.TrimSuffix(kind, "Binding"), u.GetNamespace(), u.GetName()) == nil {
				t.Errorf("%s %s/%s binds a role the chart does not create", kind, u.GetNamespace(), u.GetName())
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("RBAC:\n%s\nwant:\n%s", formatRBAC(got), formatRBAC(want))
	}
}

func formatRBAC(r rbac) string {
	var ids []string
	for id := range r {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var b strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&b, "  %s\n", id)
		for _, p := range r[id] {
			fmt.Fprintf(&b, "    groups %q resources %q names %q verbs %q\n", p.APIGroups, p.Resources, p.ResourceNames, p.Verbs)
		}
	}
	return b.String()
}

func TestRBAC(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ns     string
		args   []string
		mode   deleterMode
		leader bool
		// caSecret: Gatekeeper's CA read from its Secret.
		caSecret bool
	}{
		{name: "gatekeeper namespace", ns: gkNS, leader: true},
		{name: "other namespace", ns: "exec-reaper", leader: true},
		{name: "dry run: no eviction", ns: gkNS, args: []string{"--set", "deleter.dryRun=true"}, mode: deleterMode{dryRun: true}, leader: true},
		{name: "quarantine: patch, delete, NetworkPolicy", ns: gkNS, args: []string{"--set", "deleter.action=quarantine"}, mode: deleterMode{quarantine: true}, leader: true},
		{name: "escalation: delete", ns: gkNS, args: []string{"--set", "deleter.escalateAfter=1h"}, mode: deleterMode{escalate: true}, leader: true},
		{name: "quarantine allowed for constraints: patch, delete, NetworkPolicy", ns: gkNS, args: []string{"--set", "deleter.allowQuarantine=true"}, mode: deleterMode{quarantine: true}, leader: true},
		{name: "quarantine allowed but dry run: no eviction, no quarantine", ns: gkNS, args: []string{"--set", "deleter.allowQuarantine=true", "--set", "deleter.dryRun=true"}, mode: deleterMode{dryRun: true}, leader: true},
		{name: "escalation off written as 0h0m", ns: gkNS, args: []string{"--set", "deleter.escalateAfter=0h0m"}, leader: true},
		{name: "no pacing: no owner reads", ns: gkNS, args: []string{"--set", "deleter.pacing.budget=-1"}, mode: deleterMode{noPacing: true}, leader: true},
		{name: "no leader election: no Lease", ns: gkNS, args: []string{"--set", "deleter.replicas=1", "--set", "deleter.leaderElection.enabled=false"}},
		{name: "with policies", ns: gkNS, args: []string{"--set", "policies.install=true"}, leader: true},
		{name: "Gatekeeper's CA from its Secret: that Secret, by name", ns: gkNS, args: []string{"--set", "gatekeeper.webhookConfiguration="}, leader: true, caSecret: true},
		{name: "other namespace, Gatekeeper's CA from its Secret: a Role there", ns: "exec-reaper", args: []string{"--set", "gatekeeper.webhookConfiguration="}, leader: true, caSecret: true},
		// helm upgrade --reuse-values from a release before the key: the
		// Secret, as that release read it.
		{name: "values without gatekeeper.webhookConfiguration: Gatekeeper's CA from its Secret", ns: gkNS, args: []string{"--set", "gatekeeper.webhookConfiguration=null"}, leader: true, caSecret: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkRBAC(t, render(t, tc.ns, tc.args...), tc.ns, expectedRBAC(tc.ns, tc.mode, tc.leader, tc.caSecret))
		})
	}
}

func TestOtherNamespace(t *testing.T) {
	const ns = "exec-reaper"
	o := render(t, ns)
	var want []string
	for _, id := range defaultIDs {
		want = append(want, strings.Replace(id, "/"+gkNS+"/", "/"+ns+"/", 1))
	}
	sort.Strings(want)
	if got := o.ids(); !slices.Equal(got, want) {
		t.Fatalf("rendered objects:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	checkProviderWiring(t, o, ns, "exec-reaper-provider", "exec-reaper")
	a := args(t, deployment(t, o, ns, "exec-reaper-provider").Spec.Template.Spec.Containers[0])
	if a["client-ca-webhook-configuration"] != "gatekeeper-validating-webhook-configuration" || a["client-ca-secret"] != "" || a["cert-secret"] != ns+"/exec-reaper-provider-cert" {
		t.Errorf("--client-ca-webhook-configuration=%s --client-ca-secret=%s --cert-secret=%s", a["client-ca-webhook-configuration"], a["client-ca-secret"], a["cert-secret"])
	}
	if l := args(t, deployment(t, o, ns, "exec-reaper-deleter").Spec.Template.Spec.Containers[0])["lease-namespace"]; l != ns {
		t.Errorf("--lease-namespace=%s, want %s", l, ns)
	}

	// Gatekeeper's CA from its Secret: a Role in Gatekeeper's namespace for
	// that Secret alone.
	o = render(t, ns, "--set", "gatekeeper.webhookConfiguration=")
	want = append(want, "Role/gatekeeper-system/exec-reaper-provider-gatekeeper-ca", "RoleBinding/gatekeeper-system/exec-reaper-provider-gatekeeper-ca")
	sort.Strings(want)
	if got := o.ids(); !slices.Equal(got, want) {
		t.Fatalf("rendered objects:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	a = args(t, deployment(t, o, ns, "exec-reaper-provider").Spec.Template.Spec.Containers[0])
	if a["client-ca-secret"] != "gatekeeper-system/gatekeeper-webhook-server-cert" || a["client-ca-webhook-configuration"] != "" {
		t.Errorf("--client-ca-secret=%s --client-ca-webhook-configuration=%s", a["client-ca-secret"], a["client-ca-webhook-configuration"])
	}

	// Gatekeeper itself elsewhere, and exec-reaper beside it: no extra Role.
	o = render(t, "opa", "--set", "gatekeeper.namespace=opa", "--set", "gatekeeper.webhookConfiguration=", "--set", "gatekeeper.caSecret=opa-cert")
	if n := len(o.ofKind("Role")); n != 2 {
		t.Errorf("%d Roles with exec-reaper in Gatekeeper's namespace, want 2: %v", n, o.ids())
	}
	if a := args(t, deployment(t, o, "opa", "exec-reaper-provider").Spec.Template.Spec.Containers[0]); a["client-ca-secret"] != "opa/opa-cert" {
		t.Errorf("--client-ca-secret=%s, want opa/opa-cert", a["client-ca-secret"])
	}
}

// TestValues covers every value that changes the output.
func TestValues(t *testing.T) {
	provider := func(t *testing.T, o objects) (*appsv1.Deployment, map[string]string) {
		d := deployment(t, o, gkNS, "exec-reaper-provider")
		return d, args(t, d.Spec.Template.Spec.Containers[0])
	}
	deleter := func(t *testing.T, o objects) (*appsv1.Deployment, map[string]string) {
		d := deployment(t, o, gkNS, "exec-reaper-deleter")
		return d, args(t, d.Spec.Template.Spec.Containers[0])
	}
	for _, tc := range []struct {
		name  string
		set   []string
		check func(t *testing.T, o objects)
	}{
		{"provider.replicas=1: no provider PDB", []string{"provider.replicas=1"}, func(t *testing.T, o objects) {
			if d, _ := provider(t, o); *d.Spec.Replicas != 1 {
				t.Errorf("replicas = %d", *d.Spec.Replicas)
			}
			if o.find("PodDisruptionBudget", gkNS, "exec-reaper-provider") != nil {
				t.Error("PodDisruptionBudget with one replica would block every node drain")
			}
			if o.find("PodDisruptionBudget", gkNS, "exec-reaper-deleter") == nil {
				t.Error("the deleter's PodDisruptionBudget went too")
			}
		}},
		{"deleter.replicas=1: no deleter PDB", []string{"deleter.replicas=1"}, func(t *testing.T, o objects) {
			if d, _ := deleter(t, o); *d.Spec.Replicas != 1 {
				t.Errorf("replicas = %d", *d.Spec.Replicas)
			}
			if o.find("PodDisruptionBudget", gkNS, "exec-reaper-deleter") != nil {
				t.Error("PodDisruptionBudget with one replica")
			}
		}},
		{"replicas=3, PDBs off", []string{"provider.replicas=3", "deleter.replicas=3", "provider.podDisruptionBudget.enabled=false", "deleter.podDisruptionBudget.enabled=false"}, func(t *testing.T, o objects) {
			if d, _ := provider(t, o); *d.Spec.Replicas != 3 {
				t.Errorf("provider replicas = %d", *d.Spec.Replicas)
			}
			if d, _ := deleter(t, o); *d.Spec.Replicas != 3 {
				t.Errorf("deleter replicas = %d", *d.Spec.Replicas)
			}
			if n := len(o.ofKind("PodDisruptionBudget")); n != 0 {
				t.Errorf("%d PodDisruptionBudgets", n)
			}
		}},
		{"podDisruptionBudget.minAvailable", []string{"provider.replicas=3", "provider.podDisruptionBudget.minAvailable=2"}, func(t *testing.T, o objects) {
			var pdb policyv1.PodDisruptionBudget
			get(t, o, "PodDisruptionBudget", gkNS, "exec-reaper-provider", &pdb)
			if pdb.Spec.MinAvailable.IntValue() != 2 {
				t.Errorf("minAvailable = %v", pdb.Spec.MinAvailable)
			}
		}},
		{"deleter.dryRun", []string{"deleter.dryRun=true"}, func(t *testing.T, o objects) {
			if _, a := deleter(t, o); a["dry-run"] != "" || !hasKey(a, "dry-run") {
				t.Errorf("args %v lack --dry-run", a)
			}
		}},
		{"deleter without leader election", []string{"deleter.replicas=1", "deleter.leaderElection.enabled=false"}, func(t *testing.T, o objects) {
			_, a := deleter(t, o)
			if a["leader-elect"] != "false" || hasKey(a, "lease-name") || hasKey(a, "lease-namespace") {
				t.Errorf("args %v", a)
			}
			if o.find("Role", gkNS, "exec-reaper-deleter") != nil || o.find("RoleBinding", gkNS, "exec-reaper-deleter") != nil {
				t.Error("Lease Role without leader election")
			}
		}},
		{"deleter tuning", []string{"deleter.leaderElection.leaseName=reaper-lock", "deleter.workers=5", "deleter.resync=1h", "deleter.retryMaxDelay=30s", "deleter.logLevel=2"}, func(t *testing.T, o objects) {
			_, a := deleter(t, o)
			for k, v := range map[string]string{"lease-name": "reaper-lock", "workers": "5", "resync": "1h", "retry-max-delay": "30s", "v": "2"} {
				if a[k] != v {
					t.Errorf("--%s=%q, want %q", k, a[k], v)
				}
			}
			if names := grantedNames(t, o, "Role", gkNS, "exec-reaper-deleter", "leases", "update"); !slices.Equal(names, []string{"reaper-lock"}) {
				t.Errorf("Lease update granted on %v, want the lease name", names)
			}
		}},
		{"image override", []string{"image.repository=registry.example/reaper", "image.tag=v9", "image.pullPolicy=Always", "imagePullSecrets[0]=regcred"}, func(t *testing.T, o objects) {
			for _, d := range []*appsv1.Deployment{deployment(t, o, gkNS, "exec-reaper-provider"), deployment(t, o, gkNS, "exec-reaper-deleter")} {
				c := d.Spec.Template.Spec.Containers[0]
				if c.Image != "registry.example/reaper:v9" || c.ImagePullPolicy != corev1.PullAlways {
					t.Errorf("%s: image %q, policy %q", d.Name, c.Image, c.ImagePullPolicy)
				}
				if !reflect.DeepEqual(d.Spec.Template.Spec.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "regcred"}}) {
					t.Errorf("%s: imagePullSecrets %v", d.Name, d.Spec.Template.Spec.ImagePullSecrets)
				}
			}
		}},
		{"image digest", []string{"image.digest=sha256:" + strings.Repeat("ab", 32)}, func(t *testing.T, o objects) {
			d, _ := provider(t, o)
			if want := "ghcr.io/exec-reaper/exec-reaper@sha256:" + strings.Repeat("ab", 32); d.Spec.Template.Spec.Containers[0].Image != want {
				t.Errorf("image %q, want %q", d.Spec.Template.Spec.Containers[0].Image, want)
			}
		}},
		{"provider name, timeout, port, secret", []string{"provider.providerName=reaper", "provider.timeout=1", "provider.service.port=443", "provider.certSecretName=reaper-tls", "provider.logLevel=3", "provider.extraArgs[0]=--event-queue=4096"}, func(t *testing.T, o objects) {
			checkProviderWiring(t, o, gkNS, "exec-reaper-provider", "reaper")
			_, a := provider(t, o)
			for k, v := range map[string]string{"provider-name": "reaper", "record-timeout": "500ms", "cert-secret": gkNS + "/reaper-tls", "v": "3", "event-queue": "4096"} {
				if a[k] != v {
					t.Errorf("--%s=%q, want %q", k, a[k], v)
				}
			}
			p := o.find("Provider", "", "reaper")
			if u, _, _ := unstructured.NestedString(p.Object, "spec", "url"); u != "https://exec-reaper-provider.gatekeeper-system.svc:443/v1/record" {
				t.Errorf("url %s", u)
			}
			if to, _, _ := unstructured.NestedInt64(p.Object, "spec", "timeout"); to != 1 {
				t.Errorf("timeout %d", to)
			}
			if names := grantedNames(t, o, "ClusterRole", "", "exec-reaper-provider", "providers", "update"); !slices.Equal(names, []string{"reaper"}) {
				t.Errorf("Provider update granted on %v", names)
			}
			if names := grantedNames(t, o, "Role", gkNS, "exec-reaper-provider", "secrets", "update"); !slices.Equal(names, []string{"reaper-tls"}) {
				t.Errorf("Secret update granted on %v", names)
			}
		}},
		{"names: fullnameOverride", []string{"fullnameOverride=reaper"}, func(t *testing.T, o objects) {
			checkProviderWiring(t, o, gkNS, "reaper-provider", "exec-reaper")
			if d := deployment(t, o, gkNS, "reaper-deleter"); d.Spec.Template.Spec.ServiceAccountName != "reaper-deleter" {
				t.Errorf("deleter ServiceAccount %s", d.Spec.Template.Spec.ServiceAccountName)
			}
		}},
		{"metrics Services off", []string{"metrics.service.enabled=false"}, func(t *testing.T, o objects) {
			for _, n := range []string{"exec-reaper-provider-metrics", "exec-reaper-deleter-metrics"} {
				if o.find("Service", gkNS, n) != nil {
					t.Errorf("Service %s rendered", n)
				}
			}
		}},
		{"metrics port and annotations", []string{"metrics.service.port=9090", "metrics.service.annotations.prometheus\\.io/scrape=yes"}, func(t *testing.T, o objects) {
			var s corev1.Service
			get(t, o, "Service", gkNS, "exec-reaper-deleter-metrics", &s)
			if s.Spec.Ports[0].Port != 9090 || s.Annotations["prometheus.io/scrape"] != "yes" {
				t.Errorf("metrics Service %+v %v", s.Spec.Ports, s.Annotations)
			}
		}},
		{"commonLabels", []string{"commonLabels.team=platform"}, func(t *testing.T, o objects) {
			for _, u := range o {
				if u.GetLabels()["team"] != "platform" {
					t.Errorf("%s %s lacks the common label", u.GetKind(), u.GetName())
				}
			}
		}},
		{"scheduling", []string{"provider.nodeSelector.pool=infra", "provider.tolerations[0].key=infra", "provider.tolerations[0].operator=Exists",
			"provider.priorityClassName=system-cluster-critical", "deleter.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
			"deleter.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
			"provider.topologySpreadConstraints[0].maxSkew=1", "provider.topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
			"provider.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway"}, func(t *testing.T, o objects) {
			p, _ := provider(t, o)
			ps := p.Spec.Template.Spec
			if ps.NodeSelector["pool"] != "infra" || len(ps.Tolerations) != 1 || ps.PriorityClassName != "system-cluster-critical" || len(ps.TopologySpreadConstraints) != 1 {
				t.Errorf("provider scheduling: %+v %+v %q %+v", ps.NodeSelector, ps.Tolerations, ps.PriorityClassName, ps.TopologySpreadConstraints)
			}
			d, _ := deleter(t, o)
			if a := d.Spec.Template.Spec.Affinity; a == nil || a.NodeAffinity == nil || a.PodAntiAffinity != nil {
				t.Errorf("deleter affinity is not the user's: %+v", a)
			}
		}},
		{"pod labels, annotations, ServiceAccount annotations", []string{"provider.podLabels.tier=admission", "deleter.podAnnotations.note=x", "provider.serviceAccount.annotations.owner=me"}, func(t *testing.T, o objects) {
			p, _ := provider(t, o)
			if p.Spec.Template.Labels["tier"] != "admission" {
				t.Errorf("pod labels %v", p.Spec.Template.Labels)
			}
			d, _ := deleter(t, o)
			if d.Spec.Template.Annotations["note"] != "x" {
				t.Errorf("pod annotations %v", d.Spec.Template.Annotations)
			}
			var sa corev1.ServiceAccount
			get(t, o, "ServiceAccount", gkNS, "exec-reaper-provider", &sa)
			if sa.Annotations["owner"] != "me" {
				t.Errorf("ServiceAccount annotations %v", sa.Annotations)
			}
		}},
		{"resources and security contexts", []string{"provider.resources.requests.cpu=200m", "securityContext.runAsUser=1000", "podSecurityContext.fsGroup=2000"}, func(t *testing.T, o objects) {
			p, _ := provider(t, o)
			c := p.Spec.Template.Spec.Containers[0]
			if c.Resources.Requests.Cpu().String() != "200m" || *c.SecurityContext.RunAsUser != 1000 || *p.Spec.Template.Spec.SecurityContext.FSGroup != 2000 {
				t.Errorf("resources %v, securityContext %+v, pod %+v", c.Resources, c.SecurityContext, p.Spec.Template.Spec.SecurityContext)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a []string
			for _, s := range tc.set {
				a = append(a, "--set", s)
			}
			tc.check(t, render(t, gkNS, a...))
		})
	}
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

// grantedNames returns the resourceNames of the rule of role kind/ns/name
// that grants verb on resource.
func grantedNames(t *testing.T, o objects, kind, ns, name, resource, verb string) []string {
	t.Helper()
	var r rbacv1.ClusterRole
	get(t, o, kind, ns, name, &r)
	for _, p := range r.Rules {
		if slices.Contains(p.Resources, resource) && slices.Contains(p.Verbs, verb) {
			return p.ResourceNames
		}
	}
	t.Fatalf("%s %s/%s grants no %s on %s", kind, ns, name, verb, resource)
	return nil
}

// constraintParams is what a rendered constraint says.
type constraintParams struct {
	EnforcementAction string
	Excluded          []string
	Params            map[string]any
	Hook              map[string]string
}

func constraint(t *testing.T, o objects, kind, name string) constraintParams {
	t.Helper()
	u := o.find(kind, "", name)
	if u == nil {
		t.Fatalf("%s %s not rendered: %v", kind, name, o.ids())
	}
	var c constraintParams
	c.EnforcementAction, _, _ = unstructured.NestedString(u.Object, "spec", "enforcementAction")
	c.Excluded, _, _ = unstructured.NestedStringSlice(u.Object, "spec", "match", "excludedNamespaces")
	c.Params, _, _ = unstructured.NestedMap(u.Object, "spec", "parameters")
	c.Hook = u.GetAnnotations()
	return c
}

func TestPolicies(t *testing.T) {
	hook := map[string]string{"helm.sh/hook": "post-install,post-upgrade", "helm.sh/hook-delete-policy": "before-hook-creation"}
	provider := "system:serviceaccount:gatekeeper-system:exec-reaper-provider"

	t.Run("defaults", func(t *testing.T) {
		o := render(t, gkNS, "--set", "policies.install=true")
		checkTemplatesMatchSources(t, o, []string{"exec-reaper", "record-guard"})
		c := constraint(t, o, "K8sExecReaper", "exec-reaper")
		want := constraintParams{
			EnforcementAction: "warn",
			Excluded:          []string{"kube-system", "gatekeeper-system"},
			Params: map[string]any{"ttl": "1h", "mode": "enforce", "action": "evict", "failurePolicy": "Ignore", "notice": true, "portForward": false, "recordCommand": "program",
				"exemptUsers": []any{}, "exemptGroups": []any{}, "provider": "exec-reaper"},
			Hook: hook,
		}
		if !reflect.DeepEqual(c, want) {
			t.Errorf("K8sExecReaper:\n got %+v\nwant %+v", c, want)
		}
		kinds, _, _ := unstructured.NestedSlice(o.find("K8sExecReaper", "", "exec-reaper").Object, "spec", "match", "kinds")
		if !reflect.DeepEqual(kinds, []any{map[string]any{"apiGroups": []any{""}, "kinds": []any{"PodExecOptions", "PodAttachOptions", "PodPortForwardOptions", "Pod"}}}) {
			t.Errorf("match kinds %v", kinds)
		}
		g := constraint(t, o, "K8sExecReaperRecordGuard", "exec-reaper-record-guard")
		wantGuard := constraintParams{
			EnforcementAction: "deny",
			Excluded:          []string{"kube-system", "gatekeeper-system"},
			Params:            map[string]any{"allowedUsers": []any{provider}, "extensionGroups": []any{}},
			Hook:              hook,
		}
		if !reflect.DeepEqual(g, wantGuard) {
			t.Errorf("K8sExecReaperRecordGuard:\n got %+v\nwant %+v", g, wantGuard)
		}
		// Templates are ordinary resources (deleted on uninstall, with
		// their constraints); only constraints are hooks.
		for _, u := range o.ofKind("ConstraintTemplate") {
			if _, ok := u.GetAnnotations()["helm.sh/hook"]; ok {
				t.Errorf("ConstraintTemplate %s is a hook", u.GetName())
			}
		}
	})

	t.Run("fail closed, TTL, exemptions", func(t *testing.T) {
		o := render(t, gkNS, "--set", "policies.install=true", "--set", "policies.failurePolicy=Fail", "--set", "policies.ttl=30m",
			"--set", "policies.exemptUsers={alice@example.com,system:admin}", "--set", "policies.exemptGroups={sre}",
			"--set", "policies.portForward=true", "--set", "policies.excludedNamespaces={kube-system,monitoring}",
			"--set", "policies.constraintName=reaper", "--set", "provider.providerName=reaper-provider",
			"--set", "guard.extensionGroups={reaper-admins}")
		c := constraint(t, o, "K8sExecReaper", "reaper")
		want := constraintParams{
			EnforcementAction: "deny",
			Excluded:          []string{"kube-system", "monitoring", "gatekeeper-system"},
			// notice: true (the default) is dropped: with deny it would
			// refuse every entry.
			Params: map[string]any{"ttl": "30m", "mode": "enforce", "action": "evict", "failurePolicy": "Fail", "notice": false, "portForward": true, "recordCommand": "program",
				"exemptUsers": []any{"alice@example.com", "system:admin"}, "exemptGroups": []any{"sre"}, "provider": "reaper-provider"},
			Hook: hook,
		}
		if !reflect.DeepEqual(c, want) {
			t.Errorf("K8sExecReaper:\n got %+v\nwant %+v", c, want)
		}
		g := constraint(t, o, "K8sExecReaperRecordGuard", "reaper-record-guard")
		if !reflect.DeepEqual(g.Params["extensionGroups"], []any{"reaper-admins"}) {
			t.Errorf("record guard extensionGroups %v", g.Params["extensionGroups"])
		}
	})

	t.Run("trial", func(t *testing.T) {
		o := render(t, gkNS, "--set", "policies.install=true", "--set", "policies.mode=trial")
		if c := constraint(t, o, "K8sExecReaper", "exec-reaper"); c.Params["mode"] != "trial" || c.EnforcementAction != "warn" {
			t.Errorf("mode %v, action %s; want trial, warn", c.Params["mode"], c.EnforcementAction)
		}
	})

	t.Run("quarantine", func(t *testing.T) {
		o := render(t, gkNS, "--set", "policies.install=true", "--set", "policies.action=quarantine", "--set", "deleter.allowQuarantine=true")
		if c := constraint(t, o, "K8sExecReaper", "exec-reaper"); c.Params["action"] != "quarantine" {
			t.Errorf("action %v, want quarantine", c.Params["action"])
		}
		// A constraint asking for what the deleter may not do is a
		// configuration error at install, not an eviction later.
		out, err := runHelm(t, "template", release, chartDir, "--namespace", gkNS, "--set", "policies.install=true", "--set", "policies.action=quarantine")
		if err == nil || !strings.Contains(out+err.Error(), "configuration error: policies.action is quarantine") {
			t.Errorf("policies.action=quarantine without deleter.allowQuarantine: %v, want a configuration error", err)
		}
	})

	t.Run("notice off", func(t *testing.T) {
		o := render(t, gkNS, "--set", "policies.install=true", "--set", "policies.notice=false")
		if c := constraint(t, o, "K8sExecReaper", "exec-reaper"); c.Params["notice"] != false || c.EnforcementAction != "warn" {
			t.Errorf("notice %v, action %s", c.Params["notice"], c.EnforcementAction)
		}
	})

	t.Run("other namespace", func(t *testing.T) {
		o := render(t, "exec-reaper", "--set", "policies.install=true")
		if c := constraint(t, o, "K8sExecReaper", "exec-reaper"); !slices.Equal(c.Excluded, []string{"kube-system", "gatekeeper-system", "exec-reaper"}) {
			t.Errorf("excludedNamespaces %v: the release namespace must be excluded", c.Excluded)
		}
		g := constraint(t, o, "K8sExecReaperRecordGuard", "exec-reaper-record-guard")
		if !reflect.DeepEqual(g.Params["allowedUsers"], []any{"system:serviceaccount:exec-reaper:exec-reaper-provider"}) {
			t.Errorf("allowedUsers %v, want the provider's ServiceAccount", g.Params["allowedUsers"])
		}
	})

	t.Run("without record guard", func(t *testing.T) {
		o := render(t, gkNS, "--set", "policies.install=true", "--set", "policies.recordGuard.install=false")
		checkTemplatesMatchSources(t, o, []string{"exec-reaper"})
		if len(o.ofKind("K8sExecReaperRecordGuard")) != 0 {
			t.Error("record-guard constraint rendered")
		}
	})
}

// checkTemplatesMatchSources checks that the rendered ConstraintTemplates are
// exactly those of ../templates/<dir>/template.yaml for dirs, the same in
// every field but the labels the chart adds.
func checkTemplatesMatchSources(t *testing.T, o objects, dirs []string) {
	t.Helper()
	rendered := o.ofKind("ConstraintTemplate")
	if len(rendered) != len(dirs) {
		t.Errorf("%d ConstraintTemplates rendered, want %d (%v)", len(rendered), len(dirs), dirs)
	}
	for _, dir := range dirs {
		src, err := os.ReadFile(filepath.Join("..", "templates", dir, "template.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		want := parse(t, string(src))
		if len(want) != 1 {
			t.Fatalf("templates/%s/template.yaml: %d documents", dir, len(want))
		}
		got := o.find("ConstraintTemplate", "", want[0].GetName())
		if got == nil {
			t.Errorf("ConstraintTemplate %s (templates/%s) not rendered", want[0].GetName(), dir)
			continue
		}
		if _, ok := got.GetLabels()["app.kubernetes.io/managed-by"]; !ok {
			t.Errorf("ConstraintTemplate %s has no chart labels", got.GetName())
		}
		got = got.DeepCopy()
		got.SetLabels(want[0].GetLabels())
		if !reflect.DeepEqual(got.Object, want[0].Object) {
			t.Errorf("ConstraintTemplate %s differs from templates/%s/template.yaml", got.GetName(), dir)
		}
	}
}

// TestTemplateCopies fails when the chart's copies of the ConstraintTemplates
// differ from templates/*/template.yaml in any byte, or one is missing or
// left over.
func TestTemplateCopies(t *testing.T) {
	sources, err := filepath.Glob(filepath.Join("..", "templates", "*", "template.yaml"))
	if err != nil || len(sources) == 0 {
		t.Fatalf("no templates/*/template.yaml found (%v)", err)
	}
	copies, err := filepath.Glob(filepath.Join(chartDir, "files", "templates", "*", "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const fix = "run `make generate` (hack/generate writes the copies)"
	want := map[string]bool{}
	for _, src := range sources {
		dir := filepath.Base(filepath.Dir(src))
		want[dir] = true
		a, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(chartDir, "files", "templates", dir, "template.yaml"))
		if err != nil {
			t.Errorf("the chart has no copy of templates/%s/template.yaml (%v); %s", dir, err, fix)
			continue
		}
		if !bytes.Equal(a, b) {
			t.Errorf("charts/exec-reaper/files/templates/%s/template.yaml differs from templates/%s/template.yaml; %s", dir, dir, fix)
		}
	}
	for _, c := range copies {
		if dir := filepath.Base(filepath.Dir(c)); !want[dir] {
			t.Errorf("charts/exec-reaper/files/templates/%s/template.yaml has no source in templates/; %s", dir, fix)
		}
	}
}

func TestSchemaRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		msg  string // in helm's error
	}{
		{"ttl not a duration", []string{"--set-string", "policies.ttl=1 hour"}, "/policies/ttl"},
		{"ttl without unit", []string{"--set-string", "policies.ttl=60"}, "/policies/ttl"},
		{"ttl not a string", []string{"--set", "policies.ttl=60"}, "/policies/ttl"},
		// Each of these would fail every exec at the provider.
		{"ttl zero", []string{"--set-string", "policies.ttl=0s"}, "/policies/ttl"},
		{"ttl over 720h", []string{"--set-string", "policies.ttl=800h"}, "/policies/ttl"},
		{"ttl 721h", []string{"--set-string", "policies.ttl=721h"}, "/policies/ttl"},
		{"ttl abc", []string{"--set-string", "policies.ttl=abc"}, "/policies/ttl"},
		{"ttl in days", []string{"--set-string", "policies.ttl=1d"}, "/policies/ttl"},
		{"ttl compound", []string{"--set-string", "policies.ttl=1h30m"}, "/policies/ttl"},
		{"unknown mode", []string{"--set", "policies.mode=dryrun"}, "/policies/mode"},
		{"removeConstraints not a bool", []string{"--set-string", "uninstall.removeConstraints=yes"}, "/uninstall/removeConstraints"},
		{"provider replicas 0", []string{"--set", "provider.replicas=0"}, "/provider/replicas"},
		{"deleter replicas negative", []string{"--set", "deleter.replicas=-1"}, "/deleter/replicas"},
		{"replicas not a number", []string{"--set-string", "provider.replicas=two"}, "/provider/replicas"},
		{"unknown failurePolicy", []string{"--set", "policies.failurePolicy=Maybe"}, "/policies/failurePolicy"},
		{"unknown top-level key", []string{"--set", "replicas=2"}, "additional properties 'replicas'"},
		{"unknown nested key", []string{"--set", "provider.replica=2"}, "additional properties 'replica'"},
		{"unknown policies key", []string{"--set", "policies.enforcementAction=deny"}, "additional properties 'enforcementAction'"},
		{"provider timeout 0", []string{"--set", "provider.timeout=0"}, "/provider/timeout"},
		{"provider timeout beyond the webhook's", []string{"--set", "provider.timeout=30"}, "/provider/timeout"},
		{"two deleters without leader election", []string{"--set", "deleter.leaderElection.enabled=false"}, "/deleter/replicas"},
		{"bad pull policy", []string{"--set", "image.pullPolicy=Sometimes"}, "/image/pullPolicy"},
		{"bad digest", []string{"--set", "image.digest=latest"}, "/image/digest"},
		{"bad namespace", []string{"--set", "gatekeeper.namespace=Gatekeeper_System"}, "/gatekeeper/namespace"},
		{"bad provider name", []string{"--set", "provider.providerName=Exec Reaper"}, "/provider/providerName"},
		{"bad resync", []string{"--set", "deleter.resync=often"}, "/deleter/resync"},
		{"exemptUsers not a list", []string{"--set", "policies.exemptUsers=alice"}, "/policies/exemptUsers"},
		{"bad port", []string{"--set", "provider.service.port=70000"}, "/provider/service/port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runHelm(t, append([]string{"template", release, chartDir, "--namespace", gkNS}, tc.args...)...)
			if err == nil {
				t.Fatalf("helm template %v succeeded; the schema must reject it", tc.args)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("helm template %v failed, but not on the schema at %q:\n%v", tc.args, tc.msg, err)
			}
		})
	}
}

// TestNotes renders NOTES.txt. helm template leaves it out and helm install
// --dry-run needs a cluster, so a copy of the chart renders it into a
// ConfigMap.
func TestNotes(t *testing.T) {
	notes := func(t *testing.T, ns string, args ...string) string {
		t.Helper()
		dir := filepath.Join(t.TempDir(), "exec-reaper")
		if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
			t.Fatal(err)
		}
		body, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, "templates", "NOTES.txt")); err != nil {
			t.Fatal(err)
		}
		tpl := "{{- define \"test.notes\" -}}\n" + string(body) + "\n{{- end -}}\n"
		cm := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"test.notes\" . | quote }}\n"
		for name, content := range map[string]string{"_notes_test.tpl": tpl, "notes-test.yaml": cm} {
			if err := os.WriteFile(filepath.Join(dir, "templates", name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		out, err := runHelm(t, append([]string{"template", release, dir, "--namespace", ns, "--show-only", "templates/notes-test.yaml"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		o := parse(t, out)
		s, _, _ := unstructured.NestedString(o[0].Object, "data", "notes")
		return s
	}
	for _, tc := range []struct {
		name      string
		ns        string
		args      []string
		want, not []string
	}{
		{"defaults", gkNS, nil,
			[]string{"enableConnectOperations", "CONNECT", "gatekeeper-validating-webhook-configuration",
				"rollout status deployment/exec-reaper-provider", "get provider exec-reaper",
				"kubectl apply -f templates/exec-reaper/template.yaml", "exec deploy/demo", "exec-reaper.io/deadline", "ExecReaperEntered",
				"constraints/trial.yaml"},
			[]string{"Exempt namespace", "dry-run", "allowedUsers"}},
		{"policies", gkNS, []string{"--set", "policies.install=true", "--set", "policies.failurePolicy=Fail", "--set", "policies.ttl=15m"},
			[]string{"constraint exec-reaper", "15m", "fail closed", "--wait"}, []string{"kubectl apply -f templates"}},
		{"policies in trial mode", gkNS, []string{"--set", "policies.install=true", "--set", "policies.mode=trial"},
			[]string{"in trial mode: no pod is ever evicted", "exec-reaper.io/trial"}, []string{"the pod is evicted 1h"}},
		{"other namespace, dry run", "exec-reaper", []string{"--set", "deleter.dryRun=true"},
			[]string{"Exempt namespace exec-reaper", "ExecReaperWouldEvict", "-n exec-reaper rollout status",
				"system:serviceaccount:exec-reaper:exec-reaper-provider: put it in"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := notes(t, tc.ns, tc.args...)
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("NOTES lack %q:\n%s", w, s)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(s, n) {
					t.Errorf("NOTES contain %q:\n%s", n, s)
				}
			}
		})
	}
}

// TestValuesDocumented checks that every key of values.yaml that the schema
// defines (the chart's own keys, not the contents of Kubernetes fields such as
// resources) has a comment right above it, and that the schema knows every
// key values.yaml sets at those levels.
func TestValuesDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	// defined: every property path of the schema; strict: paths of objects
	// whose keys the schema closes (additionalProperties: false).
	defined, strict := map[string]bool{}, map[string]bool{"": true}
	var walk func(s map[string]any, prefix string)
	walk = func(s map[string]any, prefix string) {
		props, _ := s["properties"].(map[string]any)
		for k, v := range props {
			p := strings.TrimPrefix(prefix+"."+k, ".")
			defined[p] = true
			sub, _ := v.(map[string]any)
			if sub["additionalProperties"] == false {
				strict[p] = true
			}
			walk(sub, p)
		}
	}
	walk(schema, "")

	key := regexp.MustCompile(`^( *)([A-Za-z][A-Za-z0-9]*):`)
	var stack []string // the path to the current line, by indentation level
	lines := strings.Split(string(b), "\n")
	checked := 0
	for i, line := range lines {
		m := key.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		level := len(m[1]) / 2
		if level > len(stack) {
			continue // inside a list item
		}
		stack = append(stack[:level], m[2])
		path := strings.Join(stack, ".")
		parent := strings.Join(stack[:level], ".")
		if !strict[parent] {
			continue // the contents of a free-form field
		}
		if !defined[path] {
			t.Errorf("values.yaml:%d: %s is not in values.schema.json", i+1, path)
		}
		if i == 0 || !strings.HasPrefix(strings.TrimSpace(lines[i-1]), "#") {
			t.Errorf("values.yaml:%d: %s has no comment", i+1, path)
		}
		checked++
	}
	if checked < 50 {
		t.Errorf("only %d keys checked; is values.yaml indented by two spaces?", checked)
	}
}

// TestImage checks that `make image` tags the image with the chart's
// appVersion, which is also the chart's default tag, and that the Dockerfile
// installs both binaries where the chart runs them.
func TestImage(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("make not found: %v", err)
	}
	cmd := exec.Command("make", "-n", "-s", "image")
	cmd.Dir = ".."
	recipe, err := cmd.Output()
	if err != nil {
		t.Fatalf("make -n image: %v", err)
	}
	// Run the recipe with docker replaced by echo.
	sh := exec.Command("bash", "-c", "docker() { echo \"$@\"; }\n"+string(recipe))
	sh.Dir = ".."
	out, err := sh.CombinedOutput()
	if err != nil {
		t.Fatalf("make image recipe: %v\n%s", err, out)
	}
	// The image make builds is the one the chart runs by default.
	if want := "-t ghcr.io/exec-reaper/exec-reaper:" + appVersion(t) + " "; !strings.Contains(string(out), want) {
		t.Errorf("make image runs %q, want the chart's default image tagged with appVersion (%q)", out, want)
	}

	df, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/exec-reaper-provider", "./cmd/exec-reaper-deleter",
		"/usr/local/bin/", "USER 65532:65532", ":nonroot"} {
		if !bytes.Contains(df, []byte(want)) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

// TestUninstallHook: helm uninstall first deletes every exec-reaper
// constraint, with a pre-delete hook Job that runs the deleter's image and
// binary under a ServiceAccount of its own, which may list and delete
// exec-reaper's two constraint kinds and nothing else (TestRBAC). Helm
// deletes the hook's objects once it succeeds.
func TestUninstallHook(t *testing.T) {
	o := render(t, gkNS)
	wantHook := map[string]string{"pre-delete": ""}
	for _, id := range []string{"ServiceAccount/" + gkNS + "/exec-reaper-uninstall", "ClusterRole//exec-reaper-uninstall",
		"ClusterRoleBinding//exec-reaper-uninstall", "Job/" + gkNS + "/exec-reaper-uninstall"} {
		parts := strings.SplitN(id, "/", 3)
		u := o.find(parts[0], parts[1], parts[2])
		if u == nil {
			t.Fatalf("%s not rendered", id)
		}
		a := u.GetAnnotations()
		if _, ok := wantHook[a["helm.sh/hook"]]; !ok {
			t.Errorf("%s: helm.sh/hook %q, want pre-delete", id, a["helm.sh/hook"])
		}
		if a["helm.sh/hook-delete-policy"] != "before-hook-creation,hook-succeeded" {
			t.Errorf("%s: hook-delete-policy %q", id, a["helm.sh/hook-delete-policy"])
		}
		// The ServiceAccount and its RBAC exist before the Job runs.
		wantWeight := "-10"
		if parts[0] == "Job" {
			wantWeight = "0"
		}
		if a["helm.sh/hook-weight"] != wantWeight {
			t.Errorf("%s: hook-weight %q, want %s", id, a["helm.sh/hook-weight"], wantWeight)
		}
	}
	var job batchv1.Job
	get(t, o, "Job", gkNS, "exec-reaper-uninstall", &job)
	pod := job.Spec.Template.Spec
	if pod.ServiceAccountName != "exec-reaper-uninstall" || pod.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("Job pod: serviceAccountName %q, restartPolicy %q", pod.ServiceAccountName, pod.RestartPolicy)
	}
	if job.Spec.ActiveDeadlineSeconds == nil || *job.Spec.ActiveDeadlineSeconds > 600 {
		t.Errorf("Job activeDeadlineSeconds %v: a stuck hook must not block helm uninstall for long", job.Spec.ActiveDeadlineSeconds)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	d := deployment(t, o, gkNS, "exec-reaper-deleter")
	if c.Image != d.Spec.Template.Spec.Containers[0].Image {
		t.Errorf("hook image %q, want the deleter's %q: no image of its own", c.Image, d.Spec.Template.Spec.Containers[0].Image)
	}
	if !slices.Equal(c.Command, []string{"/usr/local/bin/exec-reaper-deleter", "remove-policies"}) {
		t.Errorf("hook command %q", c.Command)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("hook container securityContext not hardened: %+v", sc)
	}

	t.Run("off", func(t *testing.T) {
		o := render(t, gkNS, "--set", "uninstall.removeConstraints=false")
		for _, u := range o {
			if strings.Contains(u.GetName(), "uninstall") {
				t.Errorf("%s %s rendered with uninstall.removeConstraints=false", u.GetKind(), u.GetName())
			}
		}
	})
}

// TestGuard: the record guard is on by default, names the provider's
// ServiceAccount of this release, denies, fails closed, and the deleter is
// told to require it; guard.enabled=false removes all three.
func TestGuard(t *testing.T) {
	o := render(t, "exec-reaper")
	policy := o.find("ValidatingAdmissionPolicy", "", "exec-reaper-record-guard")
	binding := o.find("ValidatingAdmissionPolicyBinding", "", "exec-reaper-record-guard")
	if policy == nil || binding == nil {
		t.Fatal("no record guard policy or binding in the default render")
	}
	if fp, _, _ := unstructured.NestedString(policy.Object, "spec", "failurePolicy"); fp != "Fail" {
		t.Errorf("guard failurePolicy %q, want Fail", fp)
	}
	b, _ := json.Marshal(policy.Object)
	if !strings.Contains(string(b), "system:serviceaccount:exec-reaper:exec-reaper-provider") {
		t.Error("guard does not name this release's provider ServiceAccount")
	}
	if acts, _, _ := unstructured.NestedStringSlice(binding.Object, "spec", "validationActions"); !slices.Equal(acts, []string{"Deny"}) {
		t.Errorf("binding validationActions %v, want [Deny]", acts)
	}
	if a := args(t, deployment(t, o, "exec-reaper", "exec-reaper-deleter").Spec.Template.Spec.Containers[0]); a["guard-policy"] != "exec-reaper-record-guard" {
		t.Errorf("deleter args %v lack --guard-policy", a)
	}
	off := render(t, "exec-reaper", "--set", "guard.enabled=false")
	if off.find("ValidatingAdmissionPolicy", "", "exec-reaper-record-guard") != nil {
		t.Error("guard.enabled=false still renders the policy")
	}
	if a := args(t, deployment(t, off, "exec-reaper", "exec-reaper-deleter").Spec.Template.Spec.Containers[0]); a["guard-policy"] != "" {
		t.Errorf("guard.enabled=false still passes --guard-policy=%s", a["guard-policy"])
	}
}

// TestDeleterQuarantineFlags: the deleter gets quarantine's flags exactly
// when it may quarantine: its own action, or allowQuarantine for the
// constraints that ask for it.
func TestDeleterQuarantineFlags(t *testing.T) {
	for _, tc := range []struct {
		name      string
		set       []string
		allow     bool // --allow-quarantine
		retention bool // --quarantine-retention
	}{
		{name: "default"},
		{name: "action quarantine", set: []string{"deleter.action=quarantine"}, retention: true},
		{name: "allowed for constraints", set: []string{"deleter.allowQuarantine=true"}, allow: true, retention: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var extra []string
			for _, s := range tc.set {
				extra = append(extra, "--set", s)
			}
			c := deployment(t, render(t, gkNS, extra...), gkNS, "exec-reaper-deleter").Spec.Template.Spec.Containers[0]
			a := args(t, c)
			if _, ok := a["allow-quarantine"]; ok != tc.allow {
				t.Errorf("--allow-quarantine given: %v, want %v (args %v)", ok, tc.allow, c.Args)
			}
			if r, ok := a["quarantine-retention"]; ok != tc.retention || ok && r != "24h" {
				t.Errorf("--quarantine-retention=%q given: %v, want %v with 24h", r, ok, tc.retention)
			}
		})
	}
}

// TestProviderFlowSchema: the provider's own API requests (on the admission
// path of every entry) get the priority level asked for, by a FlowSchema
// that matches its ServiceAccount alone, wherever it is installed, ahead of
// "service-accounts" (9000) and behind the control plane's own schemas
// (up to 900); an empty level adds none.
func TestProviderFlowSchema(t *testing.T) {
	for _, ns := range []string{gkNS, "exec-reaper"} {
		var fs flowcontrolv1.FlowSchema
		get(t, render(t, ns), "FlowSchema", "", "exec-reaper-provider", &fs)
		if fs.Spec.PriorityLevelConfiguration.Name != "workload-high" {
			t.Errorf("%s: priority level %q, want workload-high", ns, fs.Spec.PriorityLevelConfiguration.Name)
		}
		if p := fs.Spec.MatchingPrecedence; p <= 900 || p >= 9000 {
			t.Errorf("%s: matchingPrecedence %d, want between the control plane's schemas (900) and service-accounts (9000)", ns, p)
		}
		if len(fs.Spec.Rules) != 1 || len(fs.Spec.Rules[0].Subjects) != 1 {
			t.Fatalf("%s: rules %+v, want one with one subject", ns, fs.Spec.Rules)
		}
		sub := fs.Spec.Rules[0].Subjects[0]
		if sub.Kind != flowcontrolv1.SubjectKindServiceAccount || sub.ServiceAccount == nil ||
			sub.ServiceAccount.Name != "exec-reaper-provider" || sub.ServiceAccount.Namespace != ns {
			t.Errorf("%s: subject %+v, want the provider's ServiceAccount %s/exec-reaper-provider alone", ns, sub, ns)
		}
		if fs.Spec.DistinguisherMethod == nil || fs.Spec.DistinguisherMethod.Type != flowcontrolv1.FlowDistinguisherMethodByUserType {
			t.Errorf("%s: distinguisher %+v, want ByUser", ns, fs.Spec.DistinguisherMethod)
		}
	}
	var fs flowcontrolv1.FlowSchema
	get(t, render(t, gkNS, "--set", "provider.apiPriorityLevel=system"), "FlowSchema", "", "exec-reaper-provider", &fs)
	if fs.Spec.PriorityLevelConfiguration.Name != "system" {
		t.Errorf("provider.apiPriorityLevel=system: priority level %q", fs.Spec.PriorityLevelConfiguration.Name)
	}
	if n := len(render(t, gkNS, "--set", "provider.apiPriorityLevel=").ofKind("FlowSchema")); n != 0 {
		t.Errorf("provider.apiPriorityLevel empty: %d FlowSchemas, want none", n)
	}
}

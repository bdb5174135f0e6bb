//go:build unix

package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"

	"github.com/exec-reaper/exec-reaper/internal/pki"
)

// Names of Gatekeeper's objects, as its Helm chart creates them.
const (
	// GatekeeperNamespace is where Gatekeeper runs and keeps its status
	// objects; its webhook never sees requests in it.
	GatekeeperNamespace = "gatekeeper-system"
	// GatekeeperUser is the identity the manager authenticates as. Gatekeeper
	// exempts requests from its own service account.
	GatekeeperUser = "system:serviceaccount:gatekeeper-system:gatekeeper-admin"
	// GatekeeperWebhookConfiguration is the name of the
	// ValidatingWebhookConfiguration, as in the chart.
	GatekeeperWebhookConfiguration = "gatekeeper-validating-webhook-configuration"
	// GatekeeperValidationWebhook is the name of the webhook that evaluates
	// constraints, including CONNECT requests (exec, attach, port-forward).
	GatekeeperValidationWebhook = "validation.gatekeeper.sh"
	// GatekeeperCheckIgnoreLabelWebhook is the webhook that stops namespaces
	// other than Gatekeeper's from setting admission.gatekeeper.sh/ignore.
	GatekeeperCheckIgnoreLabelWebhook = "check-ignore-label.gatekeeper.sh"
	// GatekeeperMaxServingThreads is the manager's --max-serving-threads:
	// what charts/gatekeeper-values.yaml recommends (its maxServingThreads;
	// TestGatekeeperValuesMatch keeps them equal), so that the suite and its
	// benchmarks run the Gatekeeper exec-reaper tells teams to run.
	GatekeeperMaxServingThreads = 100
	// GatekeeperPod is the Pod object Gatekeeper reads as its own (see
	// ensureGatekeeperPod).
	GatekeeperPod = "gatekeeper-controller-manager"
	// unscheduled is a scheduler that does not exist: a pod that names it
	// is never bound to a node.
	unscheduled = "exec-reaper.test/never"
)

// gatekeeperSubResources is the chart's validatingWebhookSubResources
// default (v3.23.1): every subresource but status, so that exec, attach,
// port-forward and ephemeral containers reach Gatekeeper.
var gatekeeperSubResources = []string{
	"pods/ephemeralcontainers",
	"pods/exec",
	"pods/log",
	"pods/eviction",
	"pods/portforward",
	"pods/proxy",
	"pods/attach",
	"pods/binding",
	"pods/resize",
	"deployments/scale",
	"replicasets/scale",
	"statefulsets/scale",
	"replicationcontrollers/scale",
	"services/proxy",
	"nodes/proxy",
	"services/status",
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// fieldManager names this harness in managedFields.
const fieldManager = "exec-reaper-test-cluster"

// GatekeeperCAFile returns the path of the CA certificate that signs
// Gatekeeper's webhook certificate, which Gatekeeper also presents as its
// client certificate to external-data providers: a provider verifies
// Gatekeeper against it. It is empty without Options.Gatekeeper.
func (c *Cluster) GatekeeperCAFile() string {
	if c.GatekeeperCertDir == "" {
		return ""
	}
	return filepath.Join(c.GatekeeperCertDir, "ca.crt")
}

// GatekeeperCA returns the PEM contents of GatekeeperCAFile, or nil without
// Options.Gatekeeper.
func (c *Cluster) GatekeeperCA() (certPEM []byte) {
	if c.GatekeeperCertDir == "" {
		return nil
	}
	data, err := os.ReadFile(c.GatekeeperCAFile())
	if err != nil {
		return nil // written by Start; only a deleted Dir gets here
	}
	return data
}

func (c *Cluster) startGatekeeper(ctx context.Context, pre323 bool) error {
	if err := c.applyGatekeeperCRDs(ctx); err != nil {
		return err
	}
	if err := c.ensureNamespace(ctx, GatekeeperNamespace); err != nil {
		return err
	}
	if err := c.ensureGatekeeperPod(ctx); err != nil {
		return err
	}

	// The chart's service account becomes a user with a client certificate
	// and the same groups, bound to cluster-admin (the chart's narrower
	// ClusterRole matters in production, not in a test cluster).
	kubeconfig, err := c.Kubeconfig("gatekeeper", GatekeeperUser,
		"system:serviceaccounts", "system:serviceaccounts:"+GatekeeperNamespace, "system:authenticated")
	if err != nil {
		return err
	}
	_, err = c.client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "gatekeeper-manager-rolebinding"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: GatekeeperUser}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("binding Gatekeeper to cluster-admin: %w", err)
	}

	// Gatekeeper's own CA, as its cert rotator would make it (which is off:
	// it would want a Service DNS name, not 127.0.0.1): RSA 2048-bit keys,
	// as cert-controller's, since Gatekeeper signs every new external-data
	// connection's handshake with this key. clientAuth too, because
	// Gatekeeper presents this certificate to external-data providers.
	ca, err := pki.NewRSACA("gatekeeper-ca")
	if err != nil {
		return err
	}
	c.GatekeeperCertDir = filepath.Join(c.Dir, "gatekeeper", "certs")
	pair, err := ca.Issue("gatekeeper-webhook-service.gatekeeper-system.svc", nil,
		[]string{"127.0.0.1", "localhost", "gatekeeper-webhook-service.gatekeeper-system.svc"},
		x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return err
	}
	if err := ca.WriteDir(c.GatekeeperCertDir, pair); err != nil {
		return fmt.Errorf("writing Gatekeeper's certificates: %w", err)
	}

	port, err := FreePort()
	if err != nil {
		return err
	}
	healthPort, err := FreePort()
	if err != nil {
		return err
	}
	// Gatekeeper's Prometheus exporter listens on all interfaces at a fixed
	// 8888 by default, which would collide between clusters; there is no
	// flag to turn it off.
	promPort, err := FreePort()
	if err != nil {
		return err
	}
	c.GatekeeperMetricsURL = fmt.Sprintf("http://127.0.0.1:%d/metrics", promPort)
	args := []string{filepath.Join(c.tools.GatekeeperDir, "manager"),
		"--kubeconfig=" + kubeconfig,
		"--operation=webhook",
		"--operation=status",
		// Without generate (new in v3.23), constraint CRDs are never created.
		"--operation=generate",
		"--port=" + strconv.Itoa(port),
		"--host=127.0.0.1",
		"--cert-dir=" + c.GatekeeperCertDir,
		"--disable-cert-rotation",
		"--health-addr=127.0.0.1:" + strconv.Itoa(healthPort),
		"--metrics-addr=0",
		"--prometheus-port=" + strconv.Itoa(promPort),
		"--enable-external-data=true",
		"--max-serving-threads=" + strconv.Itoa(gatekeeperMaxServingThreads()),
		"--external-data-provider-response-cache-ttl=3m",
		"--exempt-namespace=" + GatekeeperNamespace,
		"--log-denies=true",
		"--shutdown-delay=0",
	}
	if pre323 {
		// Older managers refuse these flags; their webhook operation
		// creates constraint CRDs, and they have no shutdown delay.
		args = slices.DeleteFunc(args, func(a string) bool {
			return a == "--operation=generate" || a == "--shutdown-delay=0"
		})
	}
	p, err := c.startCore("gatekeeper", args, []string{"POD_NAMESPACE=" + GatekeeperNamespace, "POD_NAME=" + GatekeeperPod})
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	err = c.poll(ctx, p, GatekeeperReadyTimeout, func(ctx context.Context) (bool, error) {
		return httpGetOK(ctx, hc, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort)), nil
	})
	if err != nil {
		return fmt.Errorf("waiting for Gatekeeper /readyz: %w", err)
	}
	c.logf("gatekeeper ready")

	// Only now register the webhook: registered before Gatekeeper answers,
	// a failurePolicy Fail webhook would block the control plane.
	c.GatekeeperWebhookURL = fmt.Sprintf("https://127.0.0.1:%d/v1/admit", port)
	vwc := gatekeeperWebhookConfiguration(fmt.Sprintf("https://127.0.0.1:%d", port), ca.CertPEM)
	c.mu.Lock()
	c.webhooks = true // set first, so a failed or slow create is still cleaned up
	c.mu.Unlock()
	if _, err := c.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, vwc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("registering Gatekeeper's webhook: %w", err)
	}
	if err := c.waitForWebhook(ctx, p); err != nil {
		return err
	}
	c.logf("gatekeeper webhook effective")
	return nil
}

// ensureGatekeeperPod creates the Pod object that Gatekeeper, run as a
// process, reads as its own (POD_NAME): it owns Gatekeeper's status objects
// (ConstraintPodStatus and the like) through it. No scheduler binds it and
// no kubelet runs it. Without it (--debug-use-fake-pod) those objects name
// an owner that does not exist, so the garbage collector deletes each as
// soon as it is written and Gatekeeper writes it again: a loop of about 90
// API writes a second (about 800 in one 9 s window), with Gatekeeper
// reconciling each, that started about 30 s after the cluster (the
// collector's discovery of Gatekeeper's resources) and loaded the API
// server, the controller manager and Gatekeeper under every later test and
// benchmark.
func (c *Cluster) ensureGatekeeperPod(ctx context.Context) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: GatekeeperPod, Namespace: GatekeeperNamespace, Labels: map[string]string{"control-plane": "controller-manager"}},
		Spec: corev1.PodSpec{
			SchedulerName: unscheduled,
			Containers:    []corev1.Container{{Name: "manager", Image: "gatekeeper-runs-as-a-process-of-the-test-cluster"}},
		},
	}
	_, err := c.client.CoreV1().Pods(GatekeeperNamespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the Pod object Gatekeeper owns its status objects by: %w", err)
	}
	return nil
}

// gatekeeperMaxServingThreads is GatekeeperMaxServingThreads, or the value of
// EXEC_REAPER_GATEKEEPER_MAX_SERVING_THREADS when set: a benchmark run may try
// another setting (BENCHMARKS.md compares them) without editing the source.
func gatekeeperMaxServingThreads() int {
	if v, err := strconv.Atoi(os.Getenv("EXEC_REAPER_GATEKEEPER_MAX_SERVING_THREADS")); err == nil && v != 0 {
		return v
	}
	return GatekeeperMaxServingThreads
}

// gatekeeperWebhookConfiguration mirrors the chart's
// ValidatingWebhookConfiguration (v3.23.1, enableConnectOperations: true)
// with URLs instead of a Service.
func gatekeeperWebhookConfiguration(base string, caBundle []byte) *admissionregistrationv1.ValidatingWebhookConfiguration {
	none := admissionregistrationv1.SideEffectClassNone
	exact := admissionregistrationv1.Exact
	allScopes := admissionregistrationv1.AllScopes
	return &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{
			Name:   GatekeeperWebhookConfiguration,
			Labels: map[string]string{"gatekeeper.sh/system": "yes"},
		},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{
			{
				Name:                    GatekeeperValidationWebhook,
				AdmissionReviewVersions: []string{"v1", "v1beta1"},
				ClientConfig: admissionregistrationv1.WebhookClientConfig{
					URL:      ptr.To(base + "/v1/admit"),
					CABundle: caBundle,
				},
				FailurePolicy: ptr.To(admissionregistrationv1.Ignore),
				MatchPolicy:   &exact,
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "admission.gatekeeper.sh/ignore", Operator: metav1.LabelSelectorOpDoesNotExist},
					// The chart exempts only Gatekeeper's namespace; kube-system
					// too here, so a broken policy in a test never blocks the
					// control plane's own objects.
					{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn,
						Values: []string{GatekeeperNamespace, metav1.NamespaceSystem}},
				}},
				ObjectSelector: &metav1.LabelSelector{},
				Rules: []admissionregistrationv1.RuleWithOperations{{
					Operations: []admissionregistrationv1.OperationType{
						admissionregistrationv1.Create,
						admissionregistrationv1.Update,
						admissionregistrationv1.Connect,
					},
					Rule: admissionregistrationv1.Rule{
						APIGroups:   []string{"*"},
						APIVersions: []string{"*"},
						Resources:   append([]string{"*"}, gatekeeperSubResources...),
						Scope:       &allScopes,
					},
				}},
				SideEffects:    &none,
				TimeoutSeconds: ptr.To[int32](3),
			},
			{
				Name:                    GatekeeperCheckIgnoreLabelWebhook,
				AdmissionReviewVersions: []string{"v1", "v1beta1"},
				ClientConfig: admissionregistrationv1.WebhookClientConfig{
					URL:      ptr.To(base + "/v1/admitlabel"),
					CABundle: caBundle,
				},
				FailurePolicy: ptr.To(admissionregistrationv1.Fail),
				MatchPolicy:   &exact,
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{GatekeeperNamespace}},
				}},
				Rules: []admissionregistrationv1.RuleWithOperations{{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
					Rule: admissionregistrationv1.Rule{
						APIGroups:   []string{""},
						APIVersions: []string{"*"},
						Resources:   []string{"namespaces"},
						Scope:       &allScopes,
					},
				}},
				SideEffects:    &none,
				TimeoutSeconds: ptr.To[int32](3),
			},
		},
	}
}

// waitForWebhook proves that the API server calls Gatekeeper and gets an
// answer. With failurePolicy Ignore a request succeeds whether or not the
// webhook is reachable, so success alone proves nothing; the API server's
// own counter of webhook responses by HTTP code does. Each round sends a
// dry-run ConfigMap create (nothing is stored) to trigger a call.
func (c *Cluster) waitForWebhook(ctx context.Context, p *Process) error {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "gatekeeper-webhook-probe", Namespace: metav1.NamespaceDefault}}
	var lastErr error
	err := c.poll(ctx, p, WebhookEffectiveTimeout, func(ctx context.Context) (bool, error) {
		_, err := c.client.CoreV1().ConfigMaps(cm.Namespace).Create(ctx, cm, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			lastErr = err
			return false, nil
		}
		n, err := c.webhookCalls(ctx, GatekeeperValidationWebhook, map[string]string{"code": "200"})
		if err != nil {
			lastErr = err
			return false, nil
		}
		return n > 0, nil
	})
	if err != nil {
		if lastErr != nil {
			err = fmt.Errorf("%w (last: %v)", err, lastErr)
		}
		return fmt.Errorf("waiting for the API server to call Gatekeeper's webhook: %w", err)
	}
	return nil
}

// webhookCalls sums the API server's apiserver_admission_webhook_request_total
// for webhook name over the series whose labels include want (e.g.
// {"code": "200", "operation": "CONNECT"}).
func (c *Cluster) webhookCalls(ctx context.Context, name string, want map[string]string) (float64, error) {
	body, err := c.client.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading API server metrics: %w", err)
	}
	var total float64
	s := bufio.NewScanner(bytes.NewReader(body))
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		line := s.Text()
		const metric = "apiserver_admission_webhook_request_total{"
		if !strings.HasPrefix(line, metric) {
			continue
		}
		labels := map[string]string{}
		for _, m := range labelRE.FindAllStringSubmatch(line[len(metric):], -1) {
			labels[m[1]] = m[2]
		}
		if labels["name"] != name || !hasLabels(labels, want) {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("parsing metric %q: %w", line, err)
		}
		total += v
	}
	return total, s.Err()
}

// labelRE matches one label of a Prometheus text exposition line; values
// here never contain escaped quotes.
var labelRE = regexp.MustCompile(`(\w+)="([^"]*)"`)

func hasLabels(labels, want map[string]string) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (c *Cluster) deleteGatekeeperWebhooks(ctx context.Context) error {
	err := c.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(ctx, GatekeeperWebhookConfiguration, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing Gatekeeper's webhook configuration: %w", err)
	}
	return nil
}

// applyGatekeeperCRDs server-side applies every CRD in GatekeeperDir/crds and
// waits until all are Established.
func (c *Cluster) applyGatekeeperCRDs(ctx context.Context) error {
	files, err := filepath.Glob(filepath.Join(c.tools.GatekeeperDir, "crds", "*.yaml"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no CRDs in %s", filepath.Join(c.tools.GatekeeperDir, "crds"))
	}
	sort.Strings(files)
	var names []string
	for _, f := range files {
		objs, err := readObjects(f)
		if err != nil {
			return err
		}
		for _, obj := range objs {
			if obj.GetKind() != "CustomResourceDefinition" {
				continue
			}
			data, err := json.Marshal(obj.Object)
			if err != nil {
				return err
			}
			_, err = c.dynamic.Resource(crdResource).Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
				metav1.PatchOptions{FieldManager: fieldManager, Force: ptr.To(true)})
			if err != nil {
				return fmt.Errorf("applying CRD %s from %s: %w", obj.GetName(), f, err)
			}
			names = append(names, obj.GetName())
		}
	}
	for _, name := range names {
		if err := c.WaitForCRD(ctx, name); err != nil {
			return err
		}
	}
	c.logf("%d Gatekeeper CRDs established", len(names))
	return nil
}

// WaitForCRD waits up to CRDEstablishedTimeout until the
// CustomResourceDefinition name (e.g. "k8sdenyexec.constraints.gatekeeper.sh")
// exists and is Established. Clients may still see "no matches for kind"
// for a moment after that, until their discovery cache refreshes.
func (c *Cluster) WaitForCRD(ctx context.Context, name string) error {
	err := c.poll(ctx, nil, CRDEstablishedTimeout, func(ctx context.Context) (bool, error) {
		crd, err := c.dynamic.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cond := range conds {
			m, ok := cond.(map[string]any)
			if ok && m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for CRD %s: %w", name, err)
	}
	return nil
}

// readObjects decodes every non-empty document of a multi-document YAML file.
func readObjects(path string) ([]*unstructured.Unstructured, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	objs, err := DecodeObjects(f)
	if err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	return objs, nil
}

// DecodeObjects reads a stream of YAML or JSON documents (kubectl's
// manifests, helm template's output) into objects, skipping empty ones.
func DecodeObjects(r io.Reader) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 64*1024)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// Package e2e runs the driver on a real kubelet: it applies deploy/, then
// every example that can be built here, and checks what the app container
// reads against what the backend holds. It runs only when MFCP_E2E=1 and
// KUBECONFIG point at a cluster whose node is this machine (make test-e2e
// brings one up with hack/local-cluster).
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

const (
	driverNS   = "mfcp-system"
	driverName = "meta-fuse-csi-plugin.csi.storage.pfn.io"
	// seeded is what every example's backend holds at test.txt and subdir/test.txt.
	seeded = "This is a test file for meta-fuse-csi-plugin\n"
)

// examples that can be built and run here (mountpoint-s3 and ros3fs cannot):
// the pod's name and its manifest under examples/.
var examples = []struct{ pod, manifest string }{
	{"mfcp-example-starter-sshfs", "starter/sshfs/deploy.yaml"},
	{"mfcp-example-proxy-sshfs", "proxy/sshfs/deploy.yaml"},
	{"mfcp-example-proxy-s3fs", "proxy/s3fs/deploy.yaml"},
	{"mfcp-example-proxy-rclone", "proxy/rclone/deploy.yaml"},
	{"mfcp-example-proxy-goofys", "proxy/goofys/deploy.yaml"},
	{"mfcp-example-starter-gcsfuse", "starter/gcsfuse/deploy-emulator.yaml"},
	{"mfcp-example-proxy-gcsfuse", "proxy/gcsfuse/deploy-emulator.yaml"},
	{"mfcp-example-static-pv", "static-pv/deploy.yaml"},
}

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func kubectl(t testing.TB, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	return kubectlIn(t, timeout, "", args...)
}

func mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := kubectl(t, 3*time.Minute, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestMain(m *testing.M) {
	if os.Getenv("MFCP_E2E") != "1" || os.Getenv("KUBECONFIG") == "" {
		fmt.Println("e2e: skipped (set MFCP_E2E=1 and KUBECONFIG; make test-e2e does both)")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// deployDriver applies deploy/ and waits until kubelet registered the driver.
// Without the node-driver-registrar image (MFCP_E2E_BUILTIN_REGISTRAR=1) the
// DaemonSet is switched to the driver's own registration.
func deployDriver(t *testing.T) {
	t.Helper()
	deployOnce.Do(func() { deployErr = deploy(t) })
	if deployErr != "" {
		t.Fatal(deployErr)
	}
}

var (
	deployOnce sync.Once
	deployErr  string
)

func deploy(t *testing.T) (failure string) {
	root := repoRoot(t)
	// A DaemonSet left by an earlier run would be merged with, not replaced.
	kubectl(t, 2*time.Minute, "-n", driverNS, "delete", "ds", "meta-fuse-csi-plugin", "--ignore-not-found", "--wait=true")
	// The namespace first; the apiserver may take a moment before it admits
	// objects into a namespace it just created.
	for _, f := range []string{"csi-driver.yaml", "csi-driver-daemonset.yaml"} {
		var out string
		var err error
		for try := 0; try < 10; try++ {
			if out, err = kubectl(t, time.Minute, "apply", "-f", filepath.Join(root, "deploy", f)); err == nil {
				break
			}
			time.Sleep(time.Second)
		}
		if err != nil {
			return fmt.Sprintf("kubectl apply -f deploy/%s: %v\n%s", f, err, out)
		}
	}
	if os.Getenv("MFCP_E2E_BUILTIN_REGISTRAR") == "1" {
		patch := `[
{"op":"remove","path":"/spec/template/spec/containers/1"},
{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--register-with-kubelet"},
{"op":"add","path":"/spec/template/spec/containers/0/volumeMounts/-","value":{"name":"registration-dir","mountPath":"/var/lib/kubelet/plugins_registry"}}
]`
		if out, err := kubectl(t, time.Minute, "-n", driverNS, "patch", "ds", "meta-fuse-csi-plugin", "--type", "json", "-p", patch); err != nil {
			return fmt.Sprintf("switching to the built-in registration: %v\n%s", err, out)
		}
	}
	if out, err := kubectl(t, 4*time.Minute, "-n", driverNS, "rollout", "status", "ds/meta-fuse-csi-plugin", "--timeout=180s"); err != nil {
		desc, _ := kubectl(t, time.Minute, "-n", driverNS, "describe", "pods")
		return fmt.Sprintf("driver DaemonSet not ready: %v\n%s\n%s", err, out, desc)
	}
	for start := time.Now(); ; time.Sleep(time.Second) {
		out, _ := kubectl(t, 30*time.Second, "get", "csinode", "-o", "jsonpath={.items[*].spec.drivers[*].name}")
		if strings.Contains(out, driverName) {
			return ""
		}
		if time.Since(start) > 2*time.Minute {
			logs, _ := kubectl(t, time.Minute, "-n", driverNS, "logs", "ds/meta-fuse-csi-plugin", "--all-containers")
			return "the driver did not register with kubelet:\n" + logs
		}
	}
}

func waitFor(t *testing.T, limit time.Duration, what string, f func() bool) {
	t.Helper()
	for start := time.Now(); !f(); time.Sleep(time.Second) {
		if time.Since(start) > limit {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
	}
}

func podUID(t *testing.T, name string) string {
	return mustKubectl(t, "get", "pod", name, "-o", "jsonpath={.metadata.uid}")
}

// nodeMountinfo reads the node's mount table: here, or through the command
// in MFCP_E2E_NODE_EXEC when the node is a container (kind).
func nodeMountinfo(t *testing.T) []byte {
	t.Helper()
	if prefix := strings.Fields(os.Getenv("MFCP_E2E_NODE_EXEC")); len(prefix) > 0 {
		out, err := exec.Command(prefix[0], append(prefix[1:], "cat", "/proc/self/mountinfo")...).Output()
		if err != nil {
			t.Fatalf("reading the node's mount table: %v", err)
		}
		return out
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fuseMountsOfPod lists FUSE mounts of the pod on the node.
func fuseMountsOfPod(t *testing.T, uid string) []string {
	b := nodeMountinfo(t)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.Contains(f[4], "/pods/"+uid+"/") && strings.Contains(l, " - fuse") {
			out = append(out, f[4])
		}
	}
	return out
}

func describe(t *testing.T, name string) string {
	out, _ := kubectl(t, time.Minute, "describe", "pod", name)
	logs, _ := kubectl(t, time.Minute, "logs", name, "--all-containers", "--tail=30")
	return out + "\n--- logs ---\n" + logs
}

func TestExamples(t *testing.T) {
	deployDriver(t)
	for _, ex := range examples {
		name := ex.pod
		t.Run(strings.TrimPrefix(name, "mfcp-example-"), func(t *testing.T) {
			start := time.Now()
			applyExample(t, name, ex.manifest)
			t.Logf("%s: kubectl apply → Ready in %v", name, time.Since(start).Round(10*time.Millisecond))

			// The app container (non-root) reads the backend's file at /data and at a subPath.
			for _, p := range []string{"/data/test.txt", "/data-subpath/test.txt"} {
				got := mustKubectl(t, "exec", name, "-c", "busybox", "--", "cat", p)
				if got != seeded {
					t.Fatalf("%s in the app container = %q, want %q\n%s", p, got, seeded, describe(t, name))
				}
			}
			if id := mustKubectl(t, "exec", name, "-c", "busybox", "--", "id", "-u"); strings.TrimSpace(id) == "0" {
				t.Errorf("the app container runs as root")
			}

			deleteAndCheckUnmounted(t, name)
		})
	}
}

// Deleting the driver's pod (an upgrade, a crash) leaves running volumes
// served, and the new driver pod unpublishes them later.
func TestDriverRestartKeepsVolumesServed(t *testing.T) {
	deployDriver(t)
	name := "mfcp-example-proxy-s3fs"
	applyExample(t, name, "proxy/s3fs/deploy.yaml")
	mustKubectl(t, "-n", driverNS, "delete", "pod", "-l", "app.kubernetes.io/name=meta-fuse-csi-plugin", "--wait=true")
	mustKubectl(t, "-n", driverNS, "rollout", "status", "ds/meta-fuse-csi-plugin", "--timeout=180s")
	if got := mustKubectl(t, "exec", name, "-c", "busybox", "--", "cat", "/data/test.txt"); got != seeded {
		t.Fatalf("after the driver restart: %q", got)
	}
	deleteAndCheckUnmounted(t, name)
}

// The FUSE sidecar's process dies; kubelet restarts the container, the
// driver stacks a new mount on the dead one, and the app container, which
// keeps running, reads through it again.
func TestSidecarCrashRecovery(t *testing.T) {
	deployDriver(t)
	name := "mfcp-example-proxy-s3fs"
	applyExample(t, name, "proxy/s3fs/deploy.yaml")
	// SIGTERM to the FUSE program (PID 1 of the sidecar container).
	mustKubectl(t, "exec", name, "-c", "starter", "--", "kill", "1")
	start := time.Now()
	restarts := func(c string) string {
		return mustKubectl(t, "get", "pod", name, "-o", `jsonpath={.status.initContainerStatuses[?(@.name=="`+c+`")].restartCount}{.status.containerStatuses[?(@.name=="`+c+`")].restartCount}`)
	}
	waitFor(t, 2*time.Minute, "the sidecar to restart and the app to read again", func() bool {
		if restarts("starter") == "0" {
			return false
		}
		got, err := kubectl(t, 30*time.Second, "exec", name, "-c", "busybox", "--", "cat", "/data/test.txt")
		return err == nil && got == seeded
	})
	t.Logf("sidecar killed → app reads again after %v (app container restarts: %s)", time.Since(start).Round(10*time.Millisecond), restarts("busybox"))
	if r := restarts("busybox"); r != "0" {
		t.Fatalf("the app container was restarted (%s)", r)
	}
}

// applyExample applies examples/<manifest>, deletes it when the test ends,
// and waits until the pod name is Ready.
func applyExample(t *testing.T, name, manifest string) {
	t.Helper()
	path := filepath.Join(repoRoot(t), "examples", manifest)
	mustKubectl(t, "apply", "-f", path)
	t.Cleanup(func() { kubectl(t, 2*time.Minute, "delete", "-f", path, "--wait=true", "--timeout=90s") })
	if out, err := kubectl(t, 4*time.Minute, "wait", "--for=condition=Ready", "pod/"+name, "--timeout=180s"); err != nil {
		t.Fatalf("pod not Ready: %v\n%s\n%s", err, out, describe(t, name))
	}
}

// deleteAndCheckUnmounted deletes the pod and checks that its FUSE mounts
// leave the node (kubelet's NodeUnpublishVolume).
func deleteAndCheckUnmounted(t *testing.T, name string) {
	t.Helper()
	uid := podUID(t, name)
	if len(fuseMountsOfPod(t, uid)) == 0 {
		t.Fatalf("no FUSE mount of the pod on the node")
	}
	mustKubectl(t, "delete", "pod", name, "--wait=true", "--timeout=90s")
	waitFor(t, time.Minute, "the pod's FUSE mount to go", func() bool { return len(fuseMountsOfPod(t, uid)) == 0 })
}

// The driver's Prometheus metrics, scraped through kubectl port-forward
// (the pod network is not routed from the node here), follow a served pod.
func TestMetricsScrape(t *testing.T) {
	deployDriver(t)
	name := "mfcp-example-proxy-s3fs"
	applyExample(t, name, "proxy/s3fs/deploy.yaml")
	pod := strings.TrimSpace(mustKubectl(t, "-n", driverNS, "get", "pod", "-l", "app.kubernetes.io/name=meta-fuse-csi-plugin", "-o", "jsonpath={.items[0].metadata.name}"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pf := exec.CommandContext(ctx, "kubectl", "-n", driverNS, "port-forward", "pod/"+pod, ":9809")
	stdout, err := pf.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	pf.Stderr = os.Stderr
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	defer pf.Wait()
	defer cancel()
	// "Forwarding from 127.0.0.1:NNNNN -> 9809"
	local := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "Forwarding" && strings.HasPrefix(f[2], "127.0.0.1:") {
				local <- f[2]
				break
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	var addr string
	select {
	case addr = <-local:
	case <-time.After(time.Minute):
		t.Fatal("kubectl port-forward did not start")
	}
	var values map[string]float64
	waitFor(t, time.Minute, "a scrape of /metrics", func() bool {
		var err error
		values, err = harness.ScrapeMetrics(addr)
		return err == nil
	})
	for _, k := range []string{`mfcp_fd_handovers_total{result="ok"}`, `mfcp_node_publish_duration_seconds_count{code="OK"}`, "mfcp_active_mounts", "mfcp_volumes_published"} {
		if values[k] < 1 {
			t.Errorf("%s = %v, want >= 1 with a served pod", k, values[k])
		}
	}
	t.Logf("scraped %d series from %s; handovers ok %v, active mounts %v", len(values), pod, values[`mfcp_fd_handovers_total{result="ok"}`], values["mfcp_active_mounts"])
	deleteAndCheckUnmounted(t, name)
}

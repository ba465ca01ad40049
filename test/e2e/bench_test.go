package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkPodReady compares, on a real kubelet whose node is this machine
// (hack/local-cluster; hack/bench-cluster.sh deploys the driver and runs
// it), the time from `kubectl create` to the pod's Ready condition of:
//
//   - emptydir: an app container (busybox) with an emptyDir at /data;
//   - fuse: the README's pod: the same app container with the CSI volume at
//     /data, and a native sidecar running fuse-starter and a go-fuse
//     loopback server as uid 65534 without capabilities, whose startupProbe
//     (periodSeconds: 1) holds the app back until /data is a FUSE mount;
//   - fuse-poststart: the same with a postStart hook that waits (polling
//     every 50 ms) until /data is a FUSE mount instead of the startupProbe:
//     kubelet starts the next container once a sidecar's postStart hook
//     has completed, without the probe's one-second period;
//   - fuse-noprobe: the same without the startupProbe.
//
// The sidecar's binaries are built here (static) and reach the pod through
// a hostPath, in the busybox image, so that no image has to be built. For the
// FUSE pods it also reports when the node first sees the file served at the
// volume's target. Pods of the three kinds alternate; one warm-up pod of
// each kind is not counted. It asserts no time.
func BenchmarkPodReady(b *testing.B) {
	if os.Getenv("MFCP_E2E_NODE_EXEC") != "" {
		b.Skip("needs the node to be this machine (hack/local-cluster), for the hostPath and the node's mount table")
	}
	if out, _ := kubectl(b, time.Minute, "get", "csinode", "-o", "jsonpath={.items[*].spec.drivers[*].name}"); !strings.Contains(out, driverName) {
		b.Fatalf("the driver is not registered on the node (%q): deploy it first (hack/bench-cluster.sh does)", out)
	}
	dir := benchHostDir(b)
	ns := "mfcp-bench"
	kubectl(b, time.Minute, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=120s")
	if out, err := kubectl(b, time.Minute, "create", "namespace", ns); err != nil {
		b.Fatalf("creating namespace %s: %v\n%s", ns, err, out)
	}
	b.Cleanup(func() {
		kubectl(b, 3*time.Minute, "delete", "namespace", ns, "--wait=true", "--timeout=150s")
	})
	// The namespace's default service account must exist before a pod.
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		if _, err := kubectl(b, 30*time.Second, "-n", ns, "get", "serviceaccount", "default"); err == nil {
			break
		}
		if time.Since(start) > time.Minute {
			b.Fatalf("no default service account in %s", ns)
		}
	}

	kubeletDir := os.Getenv("MFCP_KUBELET_DIR")
	if kubeletDir == "" {
		kubeletDir = "/var/lib/kubelet"
	}
	kinds := []string{"emptydir", "fuse", "fuse-poststart", "fuse-noprobe"}
	ready := map[string][]time.Duration{}
	served := map[string][]time.Duration{}
	seq := 0
	one := func(kind string, record bool) {
		seq++
		name := fmt.Sprintf("bench-%s-%d", kind, seq)
		manifest := benchPod(name, kind, dir)
		start := time.Now()
		uid, err := kubectlIn(b, time.Minute, manifest, "-n", ns, "create", "-f", "-", "-o", "jsonpath={.metadata.uid}")
		if err != nil {
			b.Fatalf("creating %s: %v\n%s", name, err, uid)
		}
		var servedAt chan time.Duration
		if kind != "emptydir" {
			servedAt = make(chan time.Duration, 1)
			target := filepath.Join(kubeletDir, "pods", strings.TrimSpace(uid), "volumes", "kubernetes.io~csi", "data", "mount", "hello.txt")
			go func() {
				var st unix.Stat_t
				for time.Since(start) < 3*time.Minute {
					if unix.Stat(target, &st) == nil {
						servedAt <- time.Since(start)
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
				servedAt <- -1
			}()
		}
		if out, err := kubectl(b, 4*time.Minute, "-n", ns, "wait", "--for=condition=Ready", "pod/"+name, "--timeout=180s"); err != nil {
			desc, _ := kubectl(b, time.Minute, "-n", ns, "describe", "pod", name)
			b.Fatalf("pod %s not Ready: %v\n%s\n%s", name, err, out, desc)
		}
		took := time.Since(start)
		var s time.Duration
		if servedAt != nil {
			s = <-servedAt
			if s < 0 {
				b.Fatalf("pod %s: the node never saw %s served", name, kind)
			}
		}
		if record {
			ready[kind] = append(ready[kind], took)
			if servedAt != nil {
				served[kind] = append(served[kind], s)
			}
		}
		if servedAt != nil {
			b.Logf("%s: Ready after %v (served on the node after %v)", name, took.Round(time.Millisecond), s.Round(time.Millisecond))
		} else {
			b.Logf("%s: Ready after %v", name, took.Round(time.Millisecond))
		}
		if out, err := kubectl(b, 3*time.Minute, "-n", ns, "delete", "pod", name, "--wait=true", "--timeout=120s"); err != nil {
			b.Fatalf("deleting %s: %v\n%s", name, err, out)
		}
	}
	for _, k := range kinds {
		one(k, false)
	}
	i := 0
	for b.Loop() {
		for j := range kinds {
			one(kinds[(i+j)%len(kinds)], true)
		}
		i++
	}
	for _, k := range kinds {
		b.ReportMetric(median(ready[k]).Seconds(), "s/ready-"+k+"-median")
		if len(served[k]) > 0 {
			b.ReportMetric(median(served[k]).Seconds(), "s/served-"+k+"-median")
		}
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchHostDir builds fuse-starter and the benchmark's loopback server
// (static) into a fresh 0755 directory with data/hello.txt, for the pods'
// hostPath; removed at the end.
func benchHostDir(b *testing.B) string {
	b.Helper()
	dir, err := os.MkdirTemp("/tmp", "mfcp-bench-cluster-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	for _, p := range []string{dir, filepath.Join(dir, "data")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.Chmod(p, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "data", "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, pkg := range []string{"./cmd/fuse-starter", "./hack/bench/loopback"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, filepath.Base(pkg)), pkg)
		cmd.Dir = repoRoot(nil)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return dir
}

// benchPod is the manifest of one pod of the benchmark.
func benchPod(name, kind, hostDir string) string {
	app := `  - name: app
    image: docker.io/library/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000000000 & wait"]
    securityContext: {runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    volumeMounts:
    - name: data
      mountPath: /data
`
	head := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  terminationGracePeriodSeconds: 5
`, name)
	if kind == "emptydir" {
		return head + "  containers:\n" + app + `  volumes:
  - name: data
    emptyDir: {}
`
	}
	probe := ""
	switch kind {
	case "fuse":
		probe = `    startupProbe:
      exec:
        command: ["sh", "-c", "grep -q ' /data fuse' /proc/mounts && ls /data"]
      periodSeconds: 1
      failureThreshold: 60
`
	case "fuse-poststart":
		probe = `    lifecycle:
      postStart:
        exec:
          command: ["sh", "-c", "i=0; until grep -q ' /data fuse' /proc/mounts && ls /data >/dev/null; do i=$((i+1)); [ $i -lt 1200 ] || exit 1; sleep 0.05; done"]
`
	}
	return head + `  initContainers:
  - name: fuse
    image: docker.io/library/busybox:latest
    imagePullPolicy: IfNotPresent
    restartPolicy: Always
    command: ["/bench/fuse-starter", "--fd-passing-socket-path", "/fuse-fd-passing/fuse-csi-ephemeral.sock", "--",
              "/bench/loopback", "-q", "/dev/fd/3", "/bench/data"]
    securityContext: {runAsUser: 65534, runAsGroup: 65534, runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    volumeMounts:
    - name: fuse-fd-passing
      mountPath: /fuse-fd-passing
    - name: bench
      mountPath: /bench
      readOnly: true
    - name: data
      mountPath: /data
      mountPropagation: HostToContainer
` + probe + "  containers:\n" + strings.Replace(app, "      mountPath: /data\n", "      mountPath: /data\n      mountPropagation: HostToContainer\n", 1) + fmt.Sprintf(`  volumes:
  - name: fuse-fd-passing
    emptyDir: {}
  - name: bench
    hostPath: {path: %s, type: Directory}
  - name: data
    csi:
      driver: %s
      volumeAttributes:
        fdPassingEmptyDirName: fuse-fd-passing
        fdPassingSocketName: fuse-csi-ephemeral.sock
`, hostDir, driverName)
}

// kubectlIn runs kubectl with stdin (if not empty), bounded by timeout.
func kubectlIn(b testing.TB, timeout time.Duration, stdin string, args ...string) (string, error) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

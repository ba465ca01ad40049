package integration

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

const (
	emptyDirName = "fuse-fd-passing"
	socketName   = "fuse-csi-ephemeral.sock"
	// waitLimit guards against hangs; it is not a performance target.
	waitLimit = 30 * time.Second
)

type env struct {
	bins *harness.Bins
	k    *harness.Kubelet
	d    *harness.Driver
}

// setup skips without root and /dev/fuse, and starts a kubelet dir and the driver.
func setup(t testing.TB, driverArgs ...string) *env {
	t.Helper()
	if err := harness.Requirements(); err != nil {
		t.Skip("needs root and /dev/fuse: ", err)
	}
	harness.LeakCheck(t)
	bins := harness.Binaries(t)
	k := harness.NewKubelet(t)
	d := harness.StartDriver(t, k, bins, driverArgs...)
	return &env{bins: bins, k: k, d: d}
}

func attrs(extra ...string) map[string]string {
	a := map[string]string{"fdPassingEmptyDirName": emptyDirName, "fdPassingSocketName": socketName}
	for i := 0; i+1 < len(extra); i += 2 {
		a[extra[i]] = extra[i+1]
	}
	return a
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return c
}

// volume is one published CSI volume of a pod.
type volume struct {
	pod    *harness.Pod
	name   string
	req    *csi.NodePublishVolumeRequest
	target string
}

func (e *env) publish(t testing.TB, pod *harness.Pod, name string, a map[string]string, readOnly bool) *volume {
	t.Helper()
	req := pod.PublishRequest(name, a, readOnly)
	if _, err := e.d.Node.NodePublishVolume(ctx(t), req); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	return &volume{pod: pod, name: name, req: req, target: req.TargetPath}
}

func (e *env) unpublish(t testing.TB, v *volume) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := e.d.Node.NodeUnpublishVolume(ctx(t), v.pod.UnpublishRequest(v.name)); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	took := time.Since(start)
	if err := v.pod.RemoveTarget(v.name); err != nil {
		t.Fatalf("after unpublish: %v", err)
	}
	return took
}

// podWithVolume makes a pod with the fd-passing emptyDir and publishes a volume.
func (e *env) podWithVolume(t testing.TB, readOnly bool, extra ...string) (*harness.Pod, *volume) {
	t.Helper()
	pod := e.k.NewPod(t, "app")
	pod.AddEmptyDir(emptyDirName)
	return pod, e.publish(t, pod, "fuse-vol", attrs(extra...), readOnly)
}

// backingDir makes a directory the loopback server exports, with one file.
func backingDir(t testing.TB) string {
	t.Helper()
	dir := harness.NewDir(t, 0o777)
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello from the backing dir\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// starter runs fuse-starter with a FUSE program in the pod, as uid 65534.
func (e *env) starter(t testing.TB, pod *harness.Pod, program ...string) *harness.Proc {
	t.Helper()
	args := append([]string{e.bins.Starter, "--fd-passing-socket-path", pod.ViewPath("fd") + "/" + socketName, "--connect-timeout", "20s", "--"}, program...)
	return pod.Run(t, harness.RunOptions{
		Name:   "fuse-sidecar",
		Mounts: []harness.Mount{{Name: "fd", Source: pod.EmptyDirPath(emptyDirName)}},
		Args:   args,
	})
}

// fuseMount returns the mountinfo line of the FUSE mount at target, or "".
func fuseMount(t testing.TB, target string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && fields[4] == target {
			for i, x := range fields {
				if x == "-" && i+1 < len(fields) && harness.IsFuseType(fields[i+1]) {
					return sc.Text()
				}
			}
		}
	}
	return ""
}

// waitServed waits until the FUSE mount at target answers with file's content.
func waitServed(t testing.TB, target, file string, sidecar *harness.Proc) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < waitLimit {
		if sidecar != nil && sidecar.Exited() {
			t.Fatalf("FUSE sidecar exited before serving:\n%s", sidecar.Output())
		}
		if fuseMount(t, target) != "" {
			if b, err := os.ReadFile(filepath.Join(target, file)); err == nil {
				return string(b), time.Since(start)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	out := ""
	if sidecar != nil {
		out = sidecar.Output()
	}
	t.Fatalf("volume at %s not served within %v; sidecar output:\n%s", target, waitLimit, out)
	return "", 0
}

// app runs a shell command in the pod with the volume at $DATA.
func app(t testing.TB, pod *harness.Pod, target string, uid int, script string) (int, string) {
	t.Helper()
	p := pod.Run(t, harness.RunOptions{
		Name:   "app",
		UID:    uid,
		GID:    uid,
		Mounts: []harness.Mount{{Name: "data", Source: target}},
		Env:    []string{"DATA=" + pod.ViewPath("data")},
		Args:   []string{"/bin/sh", "-c", script},
	})
	code, err := p.Wait(waitLimit)
	if err != nil {
		t.Fatalf("app: %v\n%s", err, p.Output())
	}
	return code, p.Output()
}

func requireNothingMounted(t testing.TB, k *harness.Kubelet) {
	t.Helper()
	m, err := k.MountsUnder()
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 0 {
		t.Fatalf("still mounted under the kubelet dir: %v", m)
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return !errors.Is(err, os.ErrNotExist)
}

// requireNotServed checks that reading through the target fails: ENOTCONN
// from the dead FUSE mount, or ENOENT once the driver covered it with its
// empty placeholder.
func requireNotServed(t testing.TB, path string) {
	t.Helper()
	_, err := os.ReadFile(path)
	if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) && !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("read %s: %v, want ENOTCONN (dead mount) or ENOENT (placeholder)", path, err)
	}
}

// fuseTop returns the mountinfo line of the topmost mount at target, or "".
func fuseTop(t testing.TB, target string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	top := ""
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == target {
			top = l
		}
	}
	return top
}

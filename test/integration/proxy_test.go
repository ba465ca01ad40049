package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// proxySidecar runs a FUSE program in the pod as uid 65534 with
// fusermount3-proxy installed as /usr/bin/fusermount3 and /usr/bin/fusermount,
// the fd-passing emptyDir at "fd" and the volume at "data" (HostToContainer),
// and FUSERMOUNT3PROXY_FDPASSING_SOCKPATH set as a user would set it.
func (e *env) proxySidecar(t testing.TB, pod *harness.Pod, v *volume, logPath, home string, program ...string) *harness.Proc {
	t.Helper()
	return e.proxySidecarEnv(t, pod, v, logPath, home, nil, program...)
}

// proxySidecarEnv is proxySidecar with more environment for the program.
func (e *env) proxySidecarEnv(t testing.TB, pod *harness.Pod, v *volume, logPath, home string, env []string, program ...string) *harness.Proc {
	t.Helper()
	binds := []harness.Bind{{Source: e.bins.Proxy, Target: "/usr/bin/fusermount3"}}
	if st, err := os.Lstat("/usr/bin/fusermount"); err == nil && st.Mode()&os.ModeSymlink == 0 {
		binds = append(binds, harness.Bind{Source: e.bins.Proxy, Target: "/usr/bin/fusermount"})
	}
	return pod.Run(t, harness.RunOptions{
		Name:  "proxy-sidecar",
		Home:  home,
		Binds: binds,
		Mounts: []harness.Mount{
			{Name: "fd", Source: pod.EmptyDirPath(emptyDirName)},
			{Name: "data", Source: v.target},
		},
		Env: append([]string{
			"FUSERMOUNT3PROXY_FDPASSING_SOCKPATH=" + pod.ViewPath("fd") + "/" + socketName,
			"FUSERMOUNT3PROXY_LOG=" + logPath,
		}, env...),
		Args: program,
	})
}

func proxyLog(t testing.TB) string {
	dir := harness.NewDir(t, 0o777)
	return filepath.Join(dir, "fusermount3-proxy.log")
}

// sshfs (libfuse 3) mounts through the proxy; -o auto_unmount makes libfuse
// skip its own open of /dev/fuse. SIGTERM makes sshfs run `fusermount3 -u`,
// which the proxy turns into an unmount by the driver.
func TestProxySshfs(t *testing.T) {
	e := setup(t)
	sshd := harness.StartSshd(t)
	os.WriteFile(filepath.Join(sshd.DataDir, "remote.txt"), []byte("stored behind sshd\n"), 0o644)
	pod, v := e.podWithVolume(t, false)
	logPath := proxyLog(t)
	sidecar := e.proxySidecar(t, pod, v, logPath, sshd.ClientHome,
		"sshfs", "-f", "-o", "auto_unmount", "-F", sshd.ConfigPath, harness.SshHostAlias+":"+sshd.DataDir, pod.ViewPath("data"))
	got, took := waitServed(t, v.target, "remote.txt", sidecar)
	if got != "stored behind sshd\n" {
		t.Fatalf("read %q", got)
	}
	t.Logf("sshfs through fusermount3-proxy: launch → served %v", took)
	line := fuseMount(t, v.target)
	if !strings.Contains(line, " - fuse.sshfs ") || !strings.Contains(line, "nosuid") {
		t.Errorf("mount entry: %s", line)
	}
	if err := os.WriteFile(filepath.Join(v.target, "from-node.txt"), []byte("via sftp"), 0o644); err != nil {
		t.Fatalf("write through sshfs: %v", err)
	}
	code, out := app(t, pod, v.target, 1000, `cat "$DATA/from-node.txt"`)
	if code != 0 || out != "via sftp" {
		t.Fatalf("app: %d %q", code, out)
	}

	// Shut the sidecar down as kubelet would; sshfs unmounts through the proxy.
	sidecar.Signal(syscall.SIGTERM)
	// sshfs's own exit status after SIGTERM is 1; what matters is that it exits and unmounts.
	if code, err := sidecar.Wait(waitLimit); err != nil {
		log, _ := os.ReadFile(logPath)
		t.Fatalf("sshfs after SIGTERM: %d %v\n%s\nproxy log:\n%s", code, err, sidecar.Output(), log)
	}
	// fusermount3 -u ends the connection; the dead mount stays until unpublish.
	requireNotServed(t, filepath.Join(v.target, "remote.txt"))
	log, _ := os.ReadFile(logPath)
	t.Logf("proxy log:\n%s", log)
	for _, want := range []string{`"-o" "rw,nosuid,nodev,fsname=`, "auto_unmount", "the driver ended the FUSE connection"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("proxy log lacks %q", want)
		}
	}
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

// go-fuse runs the helper found in PATH with an empty environment (only
// _FUSE_COMMFD): the proxy finds the socket in its parent's environment.
func TestProxyGoFuseClearedEnvironment(t *testing.T) {
	e := setup(t)
	pod, v := e.podWithVolume(t, false)
	logPath := proxyLog(t)
	backing := backingDir(t)
	sidecar := e.proxySidecar(t, pod, v, logPath, "", e.bins.Loopback, pod.ViewPath("data"), backing)
	got, took := waitServed(t, v.target, "hello.txt", sidecar)
	if !strings.Contains(got, "hello") {
		t.Fatalf("read %q", got)
	}
	t.Logf("go-fuse loopback through fusermount3-proxy: launch → served %v", took)
	if line := fuseMount(t, v.target); !strings.Contains(line, "max_read=") {
		t.Errorf("go-fuse's max_read did not reach the mount: %s", line)
	}
	if err := os.WriteFile(filepath.Join(v.target, "w.txt"), []byte("w"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(backing, "w.txt")); string(b) != "w" {
		t.Fatalf("backing w.txt = %q", b)
	}
	// go-fuse runs `fusermount3 -u` and waits for the connection to end.
	sidecar.Signal(syscall.SIGTERM)
	if _, err := sidecar.Wait(waitLimit); err != nil {
		t.Fatalf("go-fuse did not exit after SIGTERM: %v", err)
	}
	log, _ := os.ReadFile(logPath)
	t.Logf("proxy log:\n%s", log)
	if !strings.Contains(string(log), "parent's environment") {
		t.Errorf("the proxy did not take the socket from the parent's environment")
	}
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

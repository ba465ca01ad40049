package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// The pod side really is unprivileged: it can neither open /dev/fuse nor mount.
func TestPodSideIsUnprivileged(t *testing.T) {
	e := setup(t)
	pod := e.k.NewPod(t, "privcheck")
	p := pod.Run(t, harness.RunOptions{Args: []string{e.bins.PrivCheck}})
	code, err := p.Wait(waitLimit)
	if err != nil || code != 0 {
		t.Fatalf("privcheck as the pod user: code %d, err %v:\n%s", code, err, p.Output())
	}
}

// The whole flow with go-fuse's loopback example: publish, fuse-starter as
// uid 65534, reads and writes from root and from another unprivileged uid
// (through a HostToContainer view, as an app container), unpublish.
func TestLoopbackReadWrite(t *testing.T) {
	e := setup(t)
	pod, v := e.podWithVolume(t, false)
	ed := pod.EmptyDirPath(emptyDirName)

	// The socket is there, connectable by the emptyDir's users.
	st, err := os.Lstat(filepath.Join(ed, socketName))
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o666 {
		t.Fatalf("socket in emptyDir: %v %v", st, err)
	}

	backing := backingDir(t)
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backing)
	got, took := waitServed(t, v.target, "hello.txt", sidecar)
	if got != "hello from the backing dir\n" {
		t.Fatalf("read %q through the mount", got)
	}
	t.Logf("publish → served: %v", took)

	line := fuseMount(t, v.target)
	for _, want := range []string{"nosuid", "nodev", "user_id=65534", "group_id=65534", "allow_other", "default_permissions", " rw,"} {
		if !strings.Contains(line, want) {
			t.Errorf("mount entry lacks %q: %s", want, line)
		}
	}

	// Root writes through the target; the file lands in the backing dir, owned by the FUSE user.
	if err := os.WriteFile(filepath.Join(v.target, "from-root.txt"), []byte("root wrote this"), 0o644); err != nil {
		t.Fatalf("root write: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(backing, "from-root.txt"))
	if err != nil || string(b) != "root wrote this" {
		t.Fatalf("backing file: %q %v", b, err)
	}
	var sys syscall.Stat_t
	if err := syscall.Stat(filepath.Join(backing, "from-root.txt"), &sys); err != nil || sys.Uid != 65534 {
		t.Fatalf("backing file owner %d, want 65534 (%v)", sys.Uid, err)
	}

	// Another unprivileged uid in an app container of the pod reads and writes.
	code, out := app(t, pod, v.target, 1000, `cat "$DATA/hello.txt" && echo user1000 > "$DATA/u1000.txt" && cat "$DATA/u1000.txt" && grep -c . /proc/self/mounts >/dev/null`)
	if code != 0 || !strings.Contains(out, "hello from the backing dir") || !strings.Contains(out, "user1000") {
		t.Fatalf("app as uid 1000: code %d:\n%s", code, out)
	}
	if b, _ := os.ReadFile(filepath.Join(backing, "u1000.txt")); string(b) != "user1000\n" {
		t.Fatalf("backing u1000.txt = %q", b)
	}

	took = e.unpublish(t, v)
	t.Logf("unpublish: %v", took)
	requireNothingMounted(t, e.k)
	if exists(filepath.Join(ed, socketName)) {
		t.Errorf("socket still in the emptyDir after unpublish")
	}
	// The FUSE server sees its connection end and exits; fuse-starter passes its status on.
	if code, err := sidecar.Wait(waitLimit); err != nil {
		t.Fatalf("sidecar did not exit after unpublish: %v", err)
	} else {
		t.Logf("sidecar exited with %d", code)
	}
}

func TestReadOnlyGivesEROFS(t *testing.T) {
	for _, tc := range []struct {
		name     string
		readOnly bool
		extra    []string
	}{
		{"readOnly flag", true, nil},
		{"mountOptions ro", false, []string{"mountOptions", "ro,noatime"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t)
			pod, v := e.podWithVolume(t, tc.readOnly, tc.extra...)
			sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
			waitServed(t, v.target, "hello.txt", sidecar)
			if line := fuseMount(t, v.target); !strings.Contains(line, " ro,") {
				t.Errorf("mount entry is not ro: %s", line)
			}
			err := os.WriteFile(filepath.Join(v.target, "x"), []byte("x"), 0o644)
			if !errors.Is(err, syscall.EROFS) {
				t.Fatalf("write to a read-only volume: %v, want EROFS", err)
			}
			e.unpublish(t, v)
			requireNothingMounted(t, e.k)
		})
	}
}

// sshfs from Debian (libfuse 3) against a local sshd, served through /dev/fd/3.
func TestSshfs(t *testing.T) {
	e := setup(t)
	sshd := harness.StartSshd(t)
	if err := os.WriteFile(filepath.Join(sshd.DataDir, "remote.txt"), []byte("stored behind sshd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chown(filepath.Join(sshd.DataDir, "remote.txt"), 65534, 65534)
	pod, v := e.podWithVolume(t, false)
	sidecar := pod.Run(t, harness.RunOptions{
		Name:   "sshfs-sidecar",
		Home:   sshd.ClientHome,
		Mounts: []harness.Mount{{Name: "fd", Source: pod.EmptyDirPath(emptyDirName)}},
		Args: []string{e.bins.Starter, "--fd-passing-socket-path", pod.ViewPath("fd") + "/" + socketName, "--",
			"sshfs", "-f", "-F", sshd.ConfigPath, harness.SshHostAlias + ":" + sshd.DataDir, "/dev/fd/3"},
	})
	got, took := waitServed(t, v.target, "remote.txt", sidecar)
	if got != "stored behind sshd\n" {
		t.Fatalf("read %q", got)
	}
	t.Logf("sshfs publish → served: %v", took)
	if err := os.WriteFile(filepath.Join(v.target, "from-node.txt"), []byte("via sftp"), 0o644); err != nil {
		t.Fatalf("write through sshfs: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(sshd.DataDir, "from-node.txt")); err != nil || string(b) != "via sftp" {
		t.Fatalf("remote file: %q %v", b, err)
	}
	code, out := app(t, pod, v.target, 1000, `cat "$DATA/remote.txt"`)
	if code != 0 || !strings.Contains(out, "stored behind sshd") {
		t.Fatalf("app as uid 1000: %d\n%s", code, out)
	}
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

// Republishing is idempotent; a republish with other attributes is refused;
// a second FUSE server for a served volume is refused with a clear message.
func TestRepublishAndSecondConnection(t *testing.T) {
	e := setup(t)
	pod, v := e.podWithVolume(t, false)
	for range 3 {
		if _, err := e.d.Node.NodePublishVolume(ctx(t), v.req); err != nil {
			t.Fatalf("republish: %v", err)
		}
	}
	other := pod.PublishRequest(v.name, attrs("mountOptions", "noexec"), false)
	_, err := e.d.Node.NodePublishVolume(ctx(t), other)
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("republish with other attributes: %v, want AlreadyExists", err)
	}
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, v.target, "hello.txt", sidecar)

	second := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	code, err := second.Wait(waitLimit)
	if err != nil || code == 0 || !strings.Contains(second.Output(), "already served") {
		t.Fatalf("second FUSE server: code %d err %v:\n%s", code, err, second.Output())
	}
	if _, err := e.d.Node.NodePublishVolume(ctx(t), v.req); err != nil {
		t.Fatalf("republish while served: %v", err)
	}
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

// Different volumes publish and serve in parallel.
func TestParallelVolumes(t *testing.T) {
	e := setup(t)
	const n = 6
	type item struct {
		pod *harness.Pod
		v   *volume
	}
	items := make([]item, n)
	for i := range items {
		pod := e.k.NewPod(t, fmt.Sprintf("p%d", i))
		pod.AddEmptyDir(emptyDirName)
		items[i].pod = pod
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range items {
		req := items[i].pod.PublishRequest("vol", attrs(), false)
		items[i].v = &volume{pod: items[i].pod, name: "vol", req: req, target: req.TargetPath}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.d.Node.NodePublishVolume(ctx(t), req); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("parallel publish: %v", err)
	}
	for _, it := range items {
		s := e.starter(t, it.pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
		waitServed(t, it.v.target, "hello.txt", s)
	}
	for _, it := range items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.d.Node.NodeUnpublishVolume(ctx(t), it.pod.UnpublishRequest("vol")); err != nil {
				t.Errorf("parallel unpublish: %v", err)
			}
		}()
	}
	wg.Wait()
	requireNothingMounted(t, e.k)
}

// fuse-starter passes the program's exit status on, and fails clearly on its own errors.
func TestStarterExitStatus(t *testing.T) {
	e := setup(t)
	pod, v := e.podWithVolume(t, false)
	p := e.starter(t, pod, "/bin/sh", "-c", `test -e /proc/self/fd/3 && exit 7`)
	if code, err := p.Wait(waitLimit); err != nil || code != 7 {
		t.Fatalf("starter exit code %d (%v), want the program's 7:\n%s", code, err, p.Output())
	}
	e.unpublish(t, v)

	// No socket: fuse-starter gives up with a message and a non-zero status.
	lone := e.k.NewPod(t, "lonely")
	lone.AddEmptyDir(emptyDirName)
	p = lone.Run(t, harness.RunOptions{
		Mounts: []harness.Mount{{Name: "fd", Source: lone.EmptyDirPath(emptyDirName)}},
		Args:   []string{e.bins.Starter, "--fd-passing-socket-path", lone.ViewPath("fd") + "/" + socketName, "--connect-timeout", "500ms", "--", "/bin/true"},
	})
	if code, _ := p.Wait(waitLimit); code == 0 || !strings.Contains(p.Output(), "did not accept a connection") {
		t.Fatalf("starter without a driver: code %d:\n%s", code, p.Output())
	}
	// A program that does not exist.
	p = lone.Run(t, harness.RunOptions{Args: []string{e.bins.Starter, "--fd-passing-socket-path", "/nonexistent.sock", "--", "/no/such/program"}})
	if code, _ := p.Wait(waitLimit); code == 0 || !strings.Contains(p.Output(), "no/such/program") {
		t.Fatalf("starter with a missing program: code %d:\n%s", code, p.Output())
	}
}

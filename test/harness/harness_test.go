package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if Requirements() == nil {
		if err := SweepStale(); err != nil {
			fmt.Fprintf(os.Stderr, "%v\n", err)
		}
	}
	code := m.Run()
	if err := CleanupBinaries(); err != nil {
		fmt.Fprintf(os.Stderr, "CleanupBinaries: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// setup skips without root etc., registers the leak check (first, so it runs last) and a
// final check that nothing is mounted under /tmp/mfcp-*-<our pid>-* (other test binaries,
// run in parallel by go test ./..., have their own pid in their directory names).
func setup(t *testing.T) {
	t.Helper()
	if err := Requirements(); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() {
		ms, err := readMounts()
		if err != nil {
			t.Fatal(err)
		}
		ours := fmt.Sprintf("-%d-", os.Getpid())
		for _, m := range ms {
			if strings.HasPrefix(m.Mountpoint, tmpRoot+"/"+tmpPrefix) && strings.Contains(m.Mountpoint, ours) {
				t.Errorf("left mounted: %s (%s)", m.Mountpoint, m.FSType)
			}
		}
	})
	LeakCheck(t)
}

// waitFor polls cond (bounded) and fails the test with what if it never holds.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRequestsMatchKubelet(t *testing.T) {
	setup(t)
	k := NewKubelet(t)
	pod := k.NewPod(t, "mypod")

	fi, err := os.Stat(k.Dir)
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("kubelet dir mode: %v %v", fi.Mode(), err)
	}
	ed := pod.AddEmptyDir("fuse-fd-passing")
	if fi, err := os.Stat(ed); err != nil || fi.Mode().Perm() != 0o777 {
		t.Fatalf("emptyDir %s mode %v, err %v; want 0777", ed, fi.Mode(), err)
	}
	if want := filepath.Join(k.Dir, "pods", pod.UID, "volumes", "kubernetes.io~empty-dir", "fuse-fd-passing"); ed != want {
		t.Fatalf("emptyDir path %s, want %s", ed, want)
	}

	req := pod.PublishRequest("fuse-csi-ephemeral", map[string]string{"fdPassingEmptyDirName": "fuse-fd-passing", "fdPassingSocketName": "fuse-csi-ephemeral.sock"}, true)
	// Known value: sha256("<uid>" + "fuse-csi-ephemeral"), computed independently.
	out, err := exec.Command("sh", "-c", `printf %s "$1" | sha256sum`, "sh", pod.UID+"fuse-csi-ephemeral").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "csi-" + strings.Fields(string(out))[0]; req.VolumeId != want {
		t.Fatalf("VolumeId %s, want %s", req.VolumeId, want)
	}
	if want := filepath.Join(k.Dir, "pods", pod.UID, "volumes", "kubernetes.io~csi", "fuse-csi-ephemeral", "mount"); req.TargetPath != want {
		t.Fatalf("TargetPath %s, want %s", req.TargetPath, want)
	}
	if _, err := os.Stat(filepath.Dir(req.TargetPath)); err != nil {
		t.Fatalf("parent of target not created: %v", err)
	}
	if _, err := os.Stat(req.TargetPath); !os.IsNotExist(err) {
		t.Fatalf("target must not exist before NodePublishVolume, stat: %v", err)
	}
	if !req.Readonly || req.VolumeCapability.GetMount() == nil ||
		req.VolumeCapability.GetAccessMode().GetMode() != csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER {
		t.Fatalf("bad request: %v", req)
	}
	want := map[string]string{
		"fdPassingEmptyDirName":                  "fuse-fd-passing",
		"fdPassingSocketName":                    "fuse-csi-ephemeral.sock",
		"csi.storage.k8s.io/pod.name":            "mypod",
		"csi.storage.k8s.io/pod.namespace":       "default",
		"csi.storage.k8s.io/pod.uid":             pod.UID,
		"csi.storage.k8s.io/serviceAccount.name": "default",
		"csi.storage.k8s.io/ephemeral":           "true",
	}
	if fmt.Sprint(req.VolumeContext) != fmt.Sprint(want) {
		t.Fatalf("VolumeContext %v, want %v", req.VolumeContext, want)
	}
	un := pod.UnpublishRequest("fuse-csi-ephemeral")
	if un.VolumeId != req.VolumeId || un.TargetPath != req.TargetPath {
		t.Fatalf("unpublish %v does not match publish", un)
	}
	if len(pod.UID) != 36 || pod.UID[14] != '4' {
		t.Fatalf("pod uid %q is not a UUID v4", pod.UID)
	}
}

// TestPropagationIntoPod: a mount made on the host at a CSI target after the pod process
// started shows up at the process's view path (HostToContainer), and the emptyDir is shared.
func TestPropagationIntoPod(t *testing.T) {
	setup(t)
	k := NewKubelet(t)
	pod := k.NewPod(t, "prop")
	ed := pod.AddEmptyDir("ed")
	req := pod.PublishRequest("vol", nil, false)
	if err := os.Mkdir(req.TargetPath, 0o750); err != nil { // what the driver does
		t.Fatal(err)
	}
	script := `i=0
while [ ! -e "$1/marker" ]; do
	i=$((i+1)); if [ $i -gt 1200 ]; then echo "marker never appeared"; exit 3; fi
	sleep 0.05
done
cat "$1/marker"; id -u; echo from-pod > "$2/written-by-pod"`
	proc := pod.Run(t, RunOptions{
		Args:   []string{"sh", "-c", script, "sh", pod.ViewPath("vol"), pod.ViewPath("ed")},
		Mounts: []Mount{{Name: "vol", Source: req.TargetPath}, {Name: "ed", Source: ed}},
	})
	// The host view path stays empty: the binds exist only in the pod namespace.
	if ents, err := os.ReadDir(pod.ViewPath("vol")); err != nil || len(ents) != 0 {
		t.Fatalf("host view dir: %v %v", ents, err)
	}
	if err := unix.Mount("tmpfs", req.TargetPath, "tmpfs", 0, "mode=755"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(req.TargetPath, "marker"), []byte("hello-from-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, err := proc.Wait(60 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("pod proc: code %d err %v output:\n%s", code, err, proc.Output())
	}
	if got := proc.Output(); got != "hello-from-host\n65534\n" {
		t.Fatalf("pod output %q", got)
	}
	if b, err := os.ReadFile(filepath.Join(ed, "written-by-pod")); err != nil || string(b) != "from-pod\n" {
		t.Fatalf("emptyDir file: %q %v", b, err)
	}
	mounts, err := k.MountsUnder()
	if err != nil || len(mounts) != 1 || mounts[0] != req.TargetPath {
		t.Fatalf("MountsUnder = %v, %v; want [%s]", mounts, err, req.TargetPath)
	}
	if err := pod.RemoveTarget("vol"); err == nil {
		t.Fatalf("RemoveTarget succeeded on a mounted target")
	}
	// The tmpfs is left for the kubelet cleanup to detach.
}

func TestPrivCheckInPod(t *testing.T) {
	setup(t)
	privcheck := BuildPackage(t, PrivCheckPkg)
	k := NewKubelet(t)
	pod := k.NewPod(t, "priv")
	proc := pod.Run(t, RunOptions{Args: []string{privcheck}})
	code, err := proc.Wait(30 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("privcheck in pod: code %d err %v output:\n%s", code, err, proc.Output())
	}
	var r struct {
		UID          int    `json:"uid"`
		CapEff       string `json:"capEff"`
		NoNewPrivs   string `json:"noNewPrivs"`
		Unprivileged bool   `json:"unprivileged"`
	}
	if err := json.Unmarshal([]byte(proc.Output()), &r); err != nil {
		t.Fatalf("privcheck output %q: %v", proc.Output(), err)
	}
	if r.UID != 65534 || r.CapEff != "0000000000000000" || r.NoNewPrivs != "1" || !r.Unprivileged {
		t.Fatalf("privcheck report: %s", proc.Output())
	}

	// And privcheck does notice privilege: as root here it must exit 1.
	out, err := exec.Command(privcheck).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("privcheck as root: err %v, output %s", err, out)
	}
}

func TestSshdSftp(t *testing.T) {
	setup(t)
	s := StartSshd(t)
	marker := filepath.Join(s.DataDir, "marker-file.txt")
	if err := os.WriteFile(marker, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	batch := filepath.Join(s.ClientHome, "batch")
	if err := os.WriteFile(batch, []byte("ls -1 "+s.DataDir+"\nput "+batch+" "+s.DataDir+"/uploaded\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCmd("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
		"env", "-i", "PATH="+podPATH, "HOME="+s.ClientHome, tagEnvVar(),
		"sftp", "-F", s.ConfigPath, "-b", batch, SshHostAlias)
	if err != nil {
		t.Fatalf("%v\nsshd log:\n%s", err, s.Logs())
	}
	if !strings.Contains(out, "marker-file.txt") {
		t.Fatalf("sftp listing lacks the marker:\n%s", out)
	}
	fi, err := os.Stat(filepath.Join(s.DataDir, "uploaded"))
	if err != nil {
		t.Fatalf("upload: %v\n%s", err, out)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 {
		t.Fatalf("uploaded file owned by %d, want 65534", st.Uid)
	}
}

// TestDriverLifecycle runs StartDriver, Kill, Restart and Stop against a stub CSI plugin.
func TestDriverLifecycle(t *testing.T) {
	setup(t)
	stub := BuildPackage(t, "./test/tools/csistub")
	k := NewKubelet(t)
	d := StartDriver(t, k, &Bins{Driver: stub})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := d.Node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || info.NodeId != "test-node" {
		t.Fatalf("NodeGetInfo: %v %v", info, err)
	}
	pid1 := d.Pid()
	d.Kill()
	if d.Running() {
		t.Fatalf("driver still running after Kill")
	}
	if ws := d.ExitState().Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("exit state after Kill: %v", d.ExitState())
	}
	d.Restart(t) // the killed stub left its socket file behind; the stub removes it
	if d.Pid() == pid1 {
		t.Fatalf("Restart did not start a new process")
	}
	if _, err := d.Identity.Probe(ctx, &csi.ProbeRequest{}); err != nil {
		t.Fatalf("Probe after restart: %v", err)
	}
	d.Stop()
	if st := d.ExitState(); st == nil || !st.Exited() || st.ExitCode() != 0 {
		t.Fatalf("exit state after Stop: %v", st)
	}
	d.Restart(t)
	logs := d.Logs()
	for _, want := range []string{"=== harness: start #1", "=== harness: start #2", "=== harness: start #3", "csistub: got terminated"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("driver log lacks %q:\n%s", want, logs)
		}
	}
	if !strings.Contains(strings.Join(d.Args, " "), "--kubelet-dir "+k.Dir) {
		t.Fatalf("args %v", d.Args)
	}
	// The cleanup stops the third instance.
}

// TestDriverStartFailure: a driver that exits at once fails StartDriver with its log, and
// the cleanups still leave nothing behind.
func TestDriverStartFailure(t *testing.T) {
	setup(t)
	stub := BuildPackage(t, "./test/tools/csistub")
	k := NewKubelet(t)
	r := &recT{T: t}
	r.run(func() { StartDriver(r, k, &Bins{Driver: stub}, "--no-such-flag") })
	if len(r.fatals) != 1 || !strings.Contains(r.fatals[0], "exited before answering a Probe") ||
		!strings.Contains(r.fatals[0], "flag provided but not defined: -no-such-flag") {
		t.Fatalf("fatals: %q", r.fatals)
	}
	n := len(r.fatals)
	r.runCleanups(30 * time.Second)
	if len(r.fatals) != n {
		t.Fatalf("cleanup failures: %q", r.fatals[n:])
	}
}

// TestHungFuseCleanup: the kubelet cleanup aborts and detaches a FUSE mount whose server is
// SIGSTOPped and a reader is blocked on, without hanging and without stat'ing it.
func TestHungFuseCleanup(t *testing.T) {
	t.Run("mounted-fusectl", testHungFuseCleanup)
	t.Run("temporary-fusectl", func(t *testing.T) {
		useMountedFusectl = false
		defer func() { useMountedFusectl = true }()
		testHungFuseCleanup(t)
	})
}

func testHungFuseCleanup(t *testing.T) {
	setup(t)
	loopback := BuildPackage(t, LoopbackPkg)
	r := &recT{T: t}
	var k *Kubelet
	r.run(func() { k = NewKubelet(r) })
	if k == nil {
		t.Fatalf("NewKubelet: %q", r.fatals)
	}
	target := filepath.Join(k.Dir, "pods", "hung", "mount")
	if err := os.MkdirAll(target, 0o750); err != nil {
		t.Fatal(err)
	}
	orig := t.TempDir()
	for _, f := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(orig, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	server := exec.Command(loopback, "-directmountstrict", "-q", target, orig)
	server.Env = append(os.Environ(), tagEnvVar())
	server.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	serverDone := make(chan struct{})
	go func() { server.Wait(); close(serverDone) }()
	t.Cleanup(func() {
		syscall.Kill(-server.Process.Pid, syscall.SIGCONT)
		syscall.Kill(-server.Process.Pid, syscall.SIGKILL)
		<-serverDone
	})
	waitFor(t, 30*time.Second, "the loopback mount", func() bool {
		ms, _ := mountsUnder(target, true)
		return len(ms) == 1 && IsFuseType(ms[0].FSType)
	})
	if b, err := os.ReadFile(filepath.Join(target, "a")); err != nil || string(b) != "a" {
		t.Fatalf("reading through the mount: %q %v", b, err)
	}
	if err := syscall.Kill(server.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// A reader that blocks on the stopped server (b was never looked up, so the kernel must ask).
	reader := exec.Command("cat", filepath.Join(target, "b"))
	reader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var readerOut strings.Builder
	reader.Stdout, reader.Stderr = &readerOut, &readerOut
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	readerDone := make(chan error, 1)
	go func() { readerDone <- reader.Wait() }()
	t.Cleanup(func() { syscall.Kill(-reader.Process.Pid, syscall.SIGKILL) })
	waitFor(t, 30*time.Second, "the reader to block", func() bool { return procState(reader.Process.Pid) == "S" || procState(reader.Process.Pid) == "D" })

	r.runCleanups(60 * time.Second)
	if len(r.fatals) != 0 {
		t.Fatalf("kubelet cleanup: %q", r.fatals)
	}
	if _, err := os.Lstat(k.Dir); !os.IsNotExist(err) {
		t.Fatalf("kubelet dir still there: %v", err)
	}
	if ms, _ := mountsUnder(k.Dir, true); len(ms) != 0 {
		t.Fatalf("still mounted: %v", ms)
	}
	select {
	case err := <-readerDone:
		if err == nil {
			t.Fatalf("reader succeeded on an aborted connection: %q", readerOut.String())
		}
		t.Logf("blocked reader ended with %v: %s", err, strings.TrimSpace(readerOut.String()))
	case <-time.After(30 * time.Second):
		t.Fatalf("reader still blocked after the connection was aborted")
	}
}

// TestProcCleanup: a pod process's cleanup kills a stopped process and a child that left
// the process group with setsid.
func TestProcCleanup(t *testing.T) {
	setup(t)
	k := NewKubelet(t)
	pod := k.NewPod(t, "cleanup")
	r := &recT{T: t}
	var proc *Proc
	r.run(func() {
		proc = pod.Run(r, RunOptions{Args: []string{"sh", "-c", "setsid sleep 1001 & sleep 1002"}})
	})
	if proc == nil {
		t.Fatalf("Run: %q", r.fatals)
	}
	var escaped int
	waitFor(t, 30*time.Second, "the setsid child", func() bool {
		for _, d := range descendants(proc.Pid()) {
			if p, ok := readProc(d); ok && strings.Contains(p.Cmdline, "sleep 1001") && p.PGid != proc.Pid() {
				escaped = d
				return true
			}
		}
		return false
	})
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	r.runCleanups(30 * time.Second)
	if len(r.fatals) != 0 {
		t.Fatalf("cleanup: %q", r.fatals)
	}
	if !proc.Exited() {
		t.Fatalf("process not reaped")
	}
	if code, _ := proc.Wait(0); code != 128+int(syscall.SIGKILL) {
		t.Fatalf("exit code %d", code)
	}
	waitFor(t, 10*time.Second, "the escaped child to die", func() bool {
		st := procState(escaped)
		return st == "gone" || st == "Z"
	})
}

// TestLeakCheckDetects: a tagged process left running is reported, and killed.
func TestLeakCheckDetects(t *testing.T) {
	if err := Requirements(); err != nil {
		t.Skip(err)
	}
	r := &recT{T: t}
	r.run(func() { LeakCheck(r) })
	cmd := exec.Command("sleep", "1003")
	cmd.Env = []string{tagEnvVar()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	r.runCleanups(30 * time.Second)
	if len(r.fatals) != 1 || !strings.Contains(r.fatals[0], "sleep 1003") {
		t.Fatalf("fatals: %q", r.fatals)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("LeakCheck did not kill the leaked process")
	}
}

// recT is a T whose cleanups the test runs itself, to check cleanup behaviour.
type recT struct {
	*testing.T
	mu       sync.Mutex
	cleanups []func()
	fatals   []string
}

func (r *recT) Cleanup(f func()) { r.mu.Lock(); r.cleanups = append(r.cleanups, f); r.mu.Unlock() }
func (r *recT) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.fatals = append(r.fatals, fmt.Sprintf(format, args...))
	r.mu.Unlock()
	runtime.Goexit()
}
func (r *recT) Failed() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.fatals) > 0 }

// run runs f as a test body (Fatalf ends it), on its own goroutine.
func (r *recT) run(f func()) {
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	<-done
}

// runCleanups runs the cleanups in reverse order, each on its own goroutine so that a
// Fatalf in one does not stop the others, and fails the real test if they do not finish in
// a bounded time (a hang is the failure mode being tested).
func (r *recT) runCleanups(timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := len(r.cleanups) - 1; i >= 0; i-- {
			r.run(r.cleanups[i])
		}
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		r.T.Fatalf("cleanups did not finish within %v", timeout)
	}
}

// TestLeakCheckMounts: a mount left under a harness directory is reported.
func TestLeakCheckMounts(t *testing.T) {
	if err := Requirements(); err != nil {
		t.Skip(err)
	}
	r := &recT{T: t}
	r.run(func() { LeakCheck(r) })
	dir, err := makeDir("leak", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeDirSafely(dir); err != nil {
			t.Error(err)
		}
	})
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	r.runCleanups(30 * time.Second)
	if len(r.fatals) != 1 || !strings.Contains(r.fatals[0], "mounts left under harness directories") || !strings.Contains(r.fatals[0], dir) {
		t.Fatalf("fatals: %q", r.fatals)
	}
}

// TestSweepStale: directories (with mounts) of a dead harness user are removed, those of
// live ones are not.
func TestSweepStale(t *testing.T) {
	setup(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPid := dead.Process.Pid
	staleDir := fmt.Sprintf("%s/%skubelet-%d-sweeptest", tmpRoot, tmpPrefix, deadPid)
	liveDir := NewDir(t, 0o755)
	if err := os.Mkdir(staleDir, 0o750); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeDirSafely(staleDir) })
	if err := unix.Mount(staleDir, staleDir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", staleDir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(staleDir+"/pods/x/mount", 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", staleDir+"/pods/x/mount", "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	if err := SweepStale(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(staleDir); !os.IsNotExist(err) {
		t.Fatalf("stale dir still there: %v", err)
	}
	if ms, _ := mountsUnder(staleDir, true); len(ms) != 0 {
		t.Fatalf("still mounted: %v", ms)
	}
	if _, err := os.Stat(liveDir); err != nil {
		t.Fatalf("live dir swept: %v", err)
	}
}

// TestRunOptions: read-only mounts, working directory, environment, exit codes, AsRoot.
func TestRunOptions(t *testing.T) {
	setup(t)
	k := NewKubelet(t)
	pod := k.NewPod(t, "opts")
	ed := pod.AddEmptyDir("ed")
	script := `touch "$1/x" 2>/dev/null && echo ro-writable || echo ro-denied
touch y && echo rw-ok
pwd
echo "HOME=$HOME FOO=$FOO PATH=$PATH"
tr '\0' '\n' < /proc/$$/environ | cut -d= -f1 | sort | tr '\n' ' '; echo
id -u; id -g; id -G
grep CapEff /proc/self/status
exit 7`
	proc := pod.Run(t, RunOptions{
		Args:   []string{"sh", "-c", script, "sh", pod.ViewPath("ro")},
		Mounts: []Mount{{Name: "ro", Source: ed, ReadOnly: true}, {Name: "rw", Source: ed}},
		Dir:    pod.ViewPath("rw"),
		Env:    []string{"FOO=bar"},
		UID:    1234, GID: 2345,
	})
	code, err := proc.Wait(30 * time.Second)
	if err != nil || code != 7 {
		t.Fatalf("code %d err %v output:\n%s", code, err, proc.Output())
	}
	out := proc.Output()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	home := lines[3][len("HOME="):strings.Index(lines[3], " ")]
	want := []string{"ro-denied", "rw-ok", pod.ViewPath("rw"),
		"HOME=" + home + " FOO=bar PATH=" + podPATH,
		"FOO HOME " + TagEnv + " PATH ", // the program's own initial environment
		"1234", "2345", "2345", "CapEff:\t0000000000000000"}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("output:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
	}
	if fi, err := os.Stat(home); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 1234 || fi.Mode().Perm() != 0o700 {
		t.Fatalf("home %s: %v %v", home, fi, err)
	}
	if fi, err := os.Stat(filepath.Join(ed, "y")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 1234 {
		t.Fatalf("file written through the rw mount: %v %v", fi, err)
	}

	root := pod.Run(t, RunOptions{AsRoot: true, Args: []string{"sh", "-c", "id -u; grep -E 'CapEff|NoNewPrivs' /proc/self/status"}})
	if code, err := root.Wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("AsRoot: %d %v %s", code, err, root.Output())
	}
	if got := root.Output(); got != "0\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n" {
		t.Fatalf("AsRoot output %q", got)
	}

	bad := pod.Run(t, RunOptions{Args: []string{"true"}, Mounts: []Mount{{Name: "missing", Source: ed + "/does-not-exist"}}})
	if code, _ := bad.Wait(30 * time.Second); code != 125 || !strings.Contains(bad.Output(), "harness: cannot bind-mount") {
		t.Fatalf("bad mount: code %d output %q", code, bad.Output())
	}
}

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// A FUSE server killed with SIGKILL leaves a dead (ENOTCONN) mount;
// unpublish removes it without touching it.
func TestUnpublishAfterFUSEServerKilled(t *testing.T) {
	e := setup(t)
	pod, v := e.podWithVolume(t, false)
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, v.target, "hello.txt", sidecar)
	if err := sidecar.Kill(); err != nil {
		t.Fatal(err)
	}
	requireNotServed(t, filepath.Join(v.target, "hello.txt"))
	t.Logf("unpublish with a killed FUSE server: %v", e.unpublish(t, v))
	requireNothingMounted(t, e.k)
}

// A FUSE server stopped with SIGSTOP hangs every access; unpublish still
// completes at once, and a reader blocked on the mount is released.
func TestUnpublishAfterFUSEServerStopped(t *testing.T) {
	e := setup(t)
	pod, v := e.podWithVolume(t, false)
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, v.target, "hello.txt", sidecar)
	// Signal the whole sidecar: fuse-starter and the loopback server.
	if err := sidecar.SignalGroup(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitGroupStopped(t, sidecar.Pid())
	// A reader that blocks on the stopped server (a separate process, so the
	// test itself can never hang on the mount).
	reader := exec.Command("cat", filepath.Join(v.target, "new-file-not-cached"))
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	readerDone := make(chan error, 1)
	go func() { readerDone <- reader.Wait() }()
	t.Cleanup(func() { reader.Process.Kill() })
	select {
	case err := <-readerDone:
		t.Fatalf("reader did not block on the stopped server: %v", err)
	case <-time.After(200 * time.Millisecond):
	}

	took := e.unpublish(t, v)
	t.Logf("unpublish with a SIGSTOPped FUSE server: %v", took)
	requireNothingMounted(t, e.k)
	select {
	case err := <-readerDone:
		if err == nil {
			t.Fatalf("blocked reader succeeded after the abort")
		}
	case <-time.After(waitLimit):
		t.Fatalf("reader still blocked after unpublish")
	}
	sidecar.SignalGroup(syscall.SIGCONT)
}

// The driver killed with SIGKILL and restarted: a served volume keeps
// working through the outage and unpublishes afterwards; a published but
// not yet connected volume is served after the restart.
func TestDriverRestart(t *testing.T) {
	e := setup(t)
	served, sv := e.podWithVolume(t, false)
	sidecar := e.starter(t, served, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, sv.target, "hello.txt", sidecar)

	pending, pv := e.podWithVolume(t, false)

	e.d.Kill()
	if b, err := os.ReadFile(filepath.Join(sv.target, "hello.txt")); err != nil || !strings.Contains(string(b), "hello") {
		t.Fatalf("served volume while the driver is down: %q %v", b, err)
	}
	e.d.Restart(t)

	if b, err := os.ReadFile(filepath.Join(sv.target, "hello.txt")); err != nil || !strings.Contains(string(b), "hello") {
		t.Fatalf("served volume after the restart: %q %v", b, err)
	}
	// The pending volume's socket is back (recovered at start-up).
	late := e.starter(t, pending, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, pv.target, "hello.txt", late)
	// kubelet may republish: still idempotent.
	for _, v := range []*volume{sv, pv} {
		if _, err := e.d.Node.NodePublishVolume(ctx(t), v.req); err != nil {
			t.Fatalf("republish after restart: %v", err)
		}
	}
	e.unpublish(t, sv)
	e.unpublish(t, pv)
	requireNothingMounted(t, e.k)
	if !strings.Contains(e.d.Logs(), "recovered volume") {
		t.Errorf("driver log does not show the recovery")
	}
}

// A pending volume whose driver state was lost is served again on republish.
func TestRepublishAfterStateLoss(t *testing.T) {
	stateDir := t.TempDir()
	e := setup(t, "--state-dir", stateDir)
	pod, v := e.podWithVolume(t, false)
	e.d.Kill()
	ents, _ := os.ReadDir(stateDir)
	for _, ent := range ents {
		os.Remove(filepath.Join(stateDir, ent.Name()))
	}
	e.d.Restart(t)
	if _, err := e.d.Node.NodePublishVolume(ctx(t), v.req); err != nil {
		t.Fatalf("republish: %v", err)
	}
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, v.target, "hello.txt", sidecar)
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

// Unpublish never deletes files in a target that is not mounted.
func TestUnpublishKeepsFilesOfUnmountedTarget(t *testing.T) {
	e := setup(t)
	_, v := e.podWithVolume(t, false)
	precious := filepath.Join(v.target, "precious.txt")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.Node.NodeUnpublishVolume(ctx(t), v.pod.UnpublishRequest(v.name))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "never deletes") {
		t.Fatalf("unpublish of a non-empty unmounted target: %v, want FailedPrecondition", err)
	}
	if b, err := os.ReadFile(precious); err != nil || string(b) != "keep me" {
		t.Fatalf("file in the target: %q %v", b, err)
	}
	os.Remove(precious)
	e.unpublish(t, v)
	// Unpublish is idempotent.
	if _, err := e.d.Node.NodeUnpublishVolume(ctx(t), v.pod.UnpublishRequest(v.name)); err != nil {
		t.Fatalf("second unpublish: %v", err)
	}
}

// kubelet sets a pod's volumes up in parallel: a missing emptyDir is
// retryable (Unavailable), creates nothing, and the retry succeeds.
func TestEmptyDirNotYetThere(t *testing.T) {
	e := setup(t)
	pod := e.k.NewPod(t, "early")
	req := pod.PublishRequest("vol", attrs(), false)
	_, err := e.d.Node.NodePublishVolume(ctx(t), req)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), emptyDirName) {
		t.Fatalf("publish before the emptyDir exists: %v, want Unavailable naming it", err)
	}
	if exists(req.TargetPath) {
		t.Fatalf("target created although the publish failed")
	}
	pod.AddEmptyDir(emptyDirName)
	if _, err := e.d.Node.NodePublishVolume(ctx(t), req); err != nil {
		t.Fatalf("retry: %v", err)
	}
	e.unpublish(t, &volume{pod: pod, name: "vol", req: req, target: req.TargetPath})
}

// A crashed FUSE sidecar that kubelet restarts connects again: the driver
// sees the old connection is dead, replaces the mount, and an app container
// that was running all along (HostToContainer) reads through the new one.
func TestSidecarCrashRecovery(t *testing.T) {
	for _, placeholder := range []bool{false, true} {
		t.Run(map[bool]string{false: "reconnect at once", true: "reconnect after the placeholder"}[placeholder], func(t *testing.T) {
			sidecarCrashRecovery(t, placeholder)
		})
	}
}

func sidecarCrashRecovery(t *testing.T, placeholder bool) {
	e := setup(t)
	pod, v := e.podWithVolume(t, false)
	backing := backingDir(t)
	first := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backing)
	waitServed(t, v.target, "hello.txt", first)

	// The app waits for a file that appears only after the recovery.
	appProc := pod.Run(t, harness.RunOptions{
		Name: "app", UID: 1000, GID: 1000,
		Mounts: []harness.Mount{{Name: "data", Source: v.target}},
		Env:    []string{"DATA=" + pod.ViewPath("data")},
		Args:   []string{"/bin/sh", "-c", `cat "$DATA/hello.txt" >/dev/null && echo ready && until cat "$DATA/after-crash.txt" 2>/dev/null; do sleep 0.02; done`},
	})
	for start := time.Now(); !strings.Contains(appProc.Output(), "ready"); time.Sleep(5 * time.Millisecond) {
		if appProc.Exited() || time.Since(start) > waitLimit {
			t.Fatalf("the app did not read before the crash: %q", appProc.Output())
		}
	}

	if err := first.Kill(); err != nil {
		t.Fatal(err)
	}
	requireNotServed(t, filepath.Join(v.target, "hello.txt"))
	os.WriteFile(filepath.Join(backing, "after-crash.txt"), []byte("served again\n"), 0o644)
	if placeholder {
		// The driver notices the dead connection and covers the mount, so a
		// container runtime can stat the volume to create the new sidecar.
		for start := time.Now(); !strings.Contains(fuseTop(t, v.target), "placeholder"); time.Sleep(50 * time.Millisecond) {
			if time.Since(start) > waitLimit {
				t.Fatalf("the dead mount was not covered: %s", fuseTop(t, v.target))
			}
		}
		if _, err := os.Stat(v.target); err != nil {
			t.Fatalf("stat of the covered target: %v", err)
		}
	}

	start := time.Now()
	second := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backing)
	waitServed(t, v.target, "after-crash.txt", second)
	t.Logf("restarted sidecar → volume served again: %v", time.Since(start))
	if code, err := appProc.Wait(waitLimit); err != nil || code != 0 || appProc.Output() != "ready\nserved again\n" {
		t.Fatalf("the running app did not read through the new mount: code %d, %v, %q", code, err, appProc.Output())
	}
	if !strings.Contains(e.d.Logs(), "mounting anew over the") {
		t.Errorf("driver log does not show the replacement")
	}
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

// waitGroupStopped waits until every thread of every process in the process
// group is stopped: kill(2) returns before a thread that is running takes
// the stop, and it could still answer one more FUSE request.
func waitGroupStopped(t *testing.T, pgid int) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		procs, err := harness.ListProcs()
		if err != nil {
			t.Fatal(err)
		}
		running := 0
		for _, p := range procs {
			if p.PGid != pgid {
				continue
			}
			tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", p.Pid))
			for _, task := range tasks {
				b, err := os.ReadFile(task)
				if i := strings.LastIndexByte(string(b), ')'); err == nil && i > 0 && i+2 < len(b) && b[i+2] != 'T' {
					running++
				}
			}
		}
		if running == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d threads of process group %d did not stop", running, pgid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package integration

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

func requireStateEmpty(t testing.TB, k *harness.Kubelet) {
	t.Helper()
	ents, err := os.ReadDir(k.DriverStateDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("driver state left behind: %v", names)
	}
}

func waitDriverGone(t testing.TB, d *harness.Driver) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for d.Running() {
		if time.Now().After(deadline) {
			t.Fatalf("the driver did not die at the fault point")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ws, ok := d.ExitState().Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("driver ended with %v, want SIGKILL at the fault point", d.ExitState())
	}
}

// The driver SIGKILLed at each step of a publish (built with the
// faultinject tag) and restarted: what kubelet does next (retry the
// publish, restart the FUSE container, unpublish) completes, and nothing
// is left behind.
func TestDriverKilledAtEachPublishStep(t *testing.T) {
	for _, step := range []string{"after-target", "after-listen", "after-mount", "after-send"} {
		t.Run(step, func(t *testing.T) {
			if err := harness.Requirements(); err != nil {
				t.Skip("needs root and /dev/fuse: ", err)
			}
			harness.LeakCheck(t)
			bins := *harness.Binaries(t)
			bins.Driver = harness.BuildPackageWithTags(t, harness.DriverPkg, "faultinject")
			k := harness.NewKubelet(t)
			t.Setenv("MFCP_FAULT_KILL_AT", step)
			d := harness.StartDriver(t, k, &bins)
			e := &env{bins: &bins, k: k, d: d}

			pod := k.NewPod(t, "app")
			pod.AddEmptyDir(emptyDirName)
			req := pod.PublishRequest("fuse-vol", attrs(), false)
			v := &volume{pod: pod, name: "fuse-vol", req: req, target: req.TargetPath}
			_, err := d.Node.NodePublishVolume(ctx(t), req)
			var sidecar *harness.Proc
			switch step {
			case "after-target", "after-listen":
				if err == nil {
					t.Fatalf("publish succeeded although the driver was killed in it")
				}
			default:
				if err != nil {
					t.Fatalf("publish: %v", err)
				}
				sidecar = e.starter(t, pod, bins.Loopback, "/dev/fd/3", backingDir(t))
			}
			waitDriverGone(t, d)
			os.Unsetenv("MFCP_FAULT_KILL_AT")
			d.Restart(t)

			// kubelet retries a failed publish, and republishes a published one.
			if _, err := d.Node.NodePublishVolume(ctx(t), req); err != nil {
				t.Fatalf("publish after the restart: %v", err)
			}
			switch step {
			case "after-send":
				// The FUSE server got its fd before the driver died: it serves on.
				waitServed(t, v.target, "hello.txt", sidecar)
			case "after-mount":
				// The fd died with the driver, so the FUSE process got nothing
				// and exits; kubelet restarts its container, which gets a
				// fresh mount over the dead one.
				if code, err := sidecar.Wait(waitLimit); err != nil || code == 0 {
					t.Fatalf("fuse-starter without an fd: exit %d, %v", code, err)
				}
				sidecar = e.starter(t, pod, bins.Loopback, "/dev/fd/3", backingDir(t))
				waitServed(t, v.target, "hello.txt", sidecar)
			default:
				sidecar = e.starter(t, pod, bins.Loopback, "/dev/fd/3", backingDir(t))
				waitServed(t, v.target, "hello.txt", sidecar)
			}
			e.unpublish(t, v)
			sidecar.Wait(waitLimit)
			requireNothingMounted(t, k)
			requireStateEmpty(t, k)
			if exists(filepath.Join(pod.EmptyDirPath(emptyDirName), socketName)) {
				t.Errorf("socket left in the emptyDir")
			}
		})
	}
}

// A simulated node reboot: the driver and every FUSE server die, mounts are
// gone (but for one dead FUSE mount left in the table), and sockets, target
// directories, state files and a half-written state file stay. The driver
// started again cleans up what belongs to nobody and serves the rest.
func TestNodeRebootCleanup(t *testing.T) {
	e := setup(t)
	type podVol struct {
		pod     *harness.Pod
		v       *volume
		sidecar *harness.Proc
	}
	mk := func(serve bool) *podVol {
		pod, v := e.podWithVolume(t, false)
		pv := &podVol{pod: pod, v: v}
		if serve {
			pv.sidecar = e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
			waitServed(t, v.target, "hello.txt", pv.sidecar)
		}
		return pv
	}
	served, pending, gone, deadMount := mk(true), mk(false), mk(true), mk(true)
	lost := mk(false) // its state file is lost in the crash

	e.d.Kill()
	for _, pv := range []*podVol{served, gone, deadMount} {
		pv.sidecar.Kill()
	}
	// The reboot loses every mount but one, which stays dead in the table.
	for _, pv := range []*podVol{served, gone} {
		if err := harness.DetachAll(filepath.Dir(pv.v.target), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(e.k.DriverStateDir(), ".tmp-123"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	states, _ := os.ReadDir(e.k.DriverStateDir())
	for _, s := range states {
		p := filepath.Join(e.k.DriverStateDir(), s.Name())
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), lost.pod.UID) {
			os.Remove(p)
		}
	}
	// The pod whose volume was served is deleted while the node is down.
	if err := os.RemoveAll(gone.pod.Dir); err != nil {
		t.Fatal(err)
	}
	for _, pv := range []*podVol{served, pending, deadMount, lost} {
		if st, err := os.Lstat(filepath.Join(pv.pod.EmptyDirPath(emptyDirName), socketName)); err != nil || st.Mode()&os.ModeSocket == 0 {
			t.Fatalf("the crash should leave the stale socket: %v", err)
		}
	}

	e.d.Restart(t)

	if exists(filepath.Join(e.k.DriverStateDir(), ".tmp-123")) {
		t.Errorf("half-written state file left")
	}
	ents, _ := os.ReadDir(e.k.DriverStateDir())
	if len(ents) != 3 {
		t.Errorf("state after the restart: %d entries, want 3 (served, pending, deadMount)", len(ents))
	}
	// Each restarted FUSE container connects to a fresh socket and is served.
	for _, pv := range []*podVol{served, pending, deadMount} {
		pv.sidecar = e.starter(t, pv.pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
		waitServed(t, pv.v.target, "hello.txt", pv.sidecar)
	}
	// kubelet republishes what its pods still use and unpublishes the rest.
	if _, err := e.d.Node.NodePublishVolume(ctx(t), lost.v.req); err != nil {
		t.Fatalf("republish of the volume whose state was lost: %v", err)
	}
	lost.sidecar = e.starter(t, lost.pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, lost.v.target, "hello.txt", lost.sidecar)
	for _, pv := range []*podVol{served, pending, deadMount, lost} {
		e.unpublish(t, pv.v)
		pv.sidecar.Wait(waitLimit)
	}
	requireNothingMounted(t, e.k)
	requireStateEmpty(t, e.k)
	if !strings.Contains(e.d.Logs(), "forgetting a volume whose pod is gone") {
		t.Errorf("the driver did not say it forgot the deleted pod's volume")
	}
}

// A published volume whose FUSE process never connects: after
// --pending-timeout the socket is closed, the next NodePublishVolume (kubelet
// republishes: requiresRepublish) reports why with a retryable code and makes
// the socket again, and a late FUSE process is then served.
func TestPendingTimeout(t *testing.T) {
	e := setup(t, "--pending-timeout=300ms")
	pod, v := e.podWithVolume(t, false)
	sock := filepath.Join(pod.EmptyDirPath(emptyDirName), socketName)
	deadline := time.Now().Add(waitLimit)
	for exists(sock) {
		if time.Now().After(deadline) {
			t.Fatalf("socket still there long after the pending timeout")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !exists(v.target) {
		t.Fatalf("the target must stay: kubelet considers the volume published and the app containers bind it")
	}
	_, err := e.d.Node.NodePublishVolume(ctx(t), v.req)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("republish after the timeout: %v, want DeadlineExceeded (retryable, keeps the target)", err)
	}
	msg := status.Convert(err).Message()
	for _, want := range []string{"no FUSE process connected", socketName, emptyDirName, "300ms"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not mention %q", msg, want)
		}
	}
	if !exists(sock) {
		t.Fatalf("the republish did not make the socket again")
	}
	// Reported once: the next republish succeeds (the timer runs again).
	if _, err := e.d.Node.NodePublishVolume(ctx(t), v.req); err != nil {
		t.Fatalf("second republish: %v", err)
	}
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, v.target, "hello.txt", sidecar)
	// A served volume never times out.
	time.Sleep(600 * time.Millisecond)
	if _, err := e.d.Node.NodePublishVolume(ctx(t), v.req); err != nil {
		t.Fatalf("republish of a served volume: %v", err)
	}
	waitServed(t, v.target, "hello.txt", sidecar)
	e.unpublish(t, v)
	sidecar.Wait(waitLimit)
	requireNothingMounted(t, e.k)

	// Unpublish of a timed-out volume cleans up too.
	pod2, v2 := e.podWithVolume(t, false)
	for exists(filepath.Join(pod2.EmptyDirPath(emptyDirName), socketName)) {
		time.Sleep(20 * time.Millisecond)
	}
	e.unpublish(t, v2)
	requireStateEmpty(t, e.k)
}

// scrape reads the driver's /metrics, waiting for the endpoint to answer.
func scrape(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	var err error
	for range 100 {
		var m map[string]float64
		if m, err = harness.ScrapeMetrics(addr); err == nil {
			return m
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("scraping metrics: %v", err)
	return nil
}

// The metrics follow a publish, a handover, a refused second server, a
// sidecar crash and recovery, and an unpublish.
func TestMetrics(t *testing.T) {
	addr := harness.FreeAddr(t)
	e := setup(t, "--metrics-address="+addr)
	m := scrape(t, addr)
	if m["mfcp_volumes_published"] != 0 || m["go_goroutines"] == 0 {
		t.Fatalf("at start: %v", m)
	}
	pod, v := e.podWithVolume(t, false)
	if _, err := e.d.Node.NodePublishVolume(ctx(t), pod.PublishRequest("bad", attrs("mountOptions", "suid"), false)); err == nil {
		t.Fatal("suid accepted")
	}
	m = scrape(t, addr)
	for k, want := range map[string]float64{
		"mfcp_volumes_published": 1, "mfcp_pending_listeners": 1, "mfcp_active_mounts": 0,
		`mfcp_node_publish_duration_seconds_count{code="OK"}`:              1,
		`mfcp_node_publish_duration_seconds_count{code="InvalidArgument"}`: 1,
	} {
		if m[k] != want {
			t.Errorf("after publish: %s = %v, want %v", k, m[k], want)
		}
	}
	backing := backingDir(t)
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backing)
	waitServed(t, v.target, "hello.txt", sidecar)
	second := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	second.Wait(waitLimit)
	sidecar.Kill()
	sidecar = e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backing)
	waitServed(t, v.target, "hello.txt", sidecar)
	m = scrape(t, addr)
	for k, want := range map[string]float64{
		"mfcp_pending_listeners": 0, "mfcp_active_mounts": 1,
		`mfcp_fd_handovers_total{result="ok"}`:                    2,
		`mfcp_connections_refused_total{reason="already_served"}`: 1,
		"mfcp_recoveries_total":                                   1,
	} {
		if m[k] != want {
			t.Errorf("after serving: %s = %v, want %v", k, m[k], want)
		}
	}
	e.unpublish(t, v)
	sidecar.Wait(waitLimit)
	m = scrape(t, addr)
	for k, want := range map[string]float64{
		"mfcp_volumes_published": 0, "mfcp_active_mounts": 0,
		`mfcp_node_unpublish_duration_seconds_count{code="OK"}`: 1,
		`mfcp_aborted_connections_total{cause="unpublish"}`:     2,
	} {
		if m[k] != want {
			t.Errorf("after unpublish: %s = %v, want %v", k, m[k], want)
		}
	}
	requireNothingMounted(t, e.k)
}

// With --logging-format=json every driver line is one JSON object, and the
// lines about a volume name the pod (namespace, name, uid) and the volume.
func TestJSONLogs(t *testing.T) {
	e := setup(t, "--logging-format=json")
	pod, v := e.podWithVolume(t, false)
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, v.target, "hello.txt", sidecar)
	e.unpublish(t, v)
	sidecar.Wait(waitLimit)

	seen := map[string]bool{}
	for _, line := range strings.Split(e.d.Logs(), "\n") {
		if line == "" || strings.HasPrefix(line, "=== harness") {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		msg, _ := m["msg"].(string)
		if _, ok := m["ts"].(float64); !ok || msg == "" || m["caller"] == nil {
			t.Errorf("line lacks ts, msg or caller: %s", line)
		}
		switch msg {
		case "published volume; waiting for the FUSE process to connect", "mounted and handed over FUSE fd", "unpublished volume":
			p, _ := m["pod"].(map[string]any)
			if p["namespace"] != pod.Namespace || p["name"] != pod.Name || m["podUID"] != pod.UID || m["volume"] != v.name {
				t.Errorf("%q does not name the pod and volume: %s", msg, line)
			}
			seen[msg] = true
		}
	}
	if len(seen) != 3 {
		t.Errorf("volume lines seen: %v", seen)
	}
}

// Package soak runs the real driver binary through many publish → serve →
// unpublish cycles, some in parallel, and checks from /proc that nothing
// leaks: the driver's fds, sockets, threads and goroutines, mounts, socket
// files in the pods' emptyDirs, directories under the kubelet directory and
// in the driver's state directory.
//
// To be fast, most cycles serve the volume in the test process itself: it
// connects to the volume's socket with pkg/starter, receives the /dev/fuse
// fd and serves it with a minimal go-fuse server. Every 500th cycle (and the
// first) runs the real fuse-starter with go-fuse's loopback example as uid
// 65534 in its own mount namespace, as a pod would.
//
// It needs root and /dev/fuse (it skips with the reason otherwise).
// MFCP_SOAK_CYCLES sets the number of cycles (default 10000).
package soak

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fusemount"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/starter"
	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

const (
	defaultCycles = 10000
	// workers run cycles in parallel.
	workers = 4
	// starterEvery: cycle i runs the real fuse-starter when i%starterEvery == 0.
	starterEvery = 500
	// maxFailures stops starting new cycles (the run fails anyway).
	maxFailures = 100
	// waitLimit guards against hangs; it is not a performance target.
	waitLimit = 30 * time.Second
	// settleLimit bounds how long the after-values may take to come back to
	// the baseline (the driver's watcher of a served volume wakes every 2 s).
	settleLimit = 10 * time.Second

	emptyDirName = "fuse-fd-passing"
	socketName   = "fuse.sock"
	volName      = "fuse-vol"
	fileName     = "hello.txt"
)

func TestMain(m *testing.M) { harness.Main(m) }

type soak struct {
	t       *testing.T
	k       *harness.Kubelet
	d       *harness.Driver
	bins    *harness.Bins
	backing string // the loopback server's backing directory (starter cycles)
	// metricsAddr is the driver's --metrics-address (goroutines are read there).
	metricsAddr string
	stateDir    string
	fusectl     string // where fusectl is mounted, "" if nowhere
	tmpDir      string // the test's temporary directory

	// phases sums the time in-process cycles spent in each phase.
	phases [numPhases]atomic.Int64
	inproc atomic.Int64 // in-process cycles that completed
}

const (
	phaseSetup = iota
	phasePublish
	phaseServe
	phaseUnpublish
	phaseCleanup
	numPhases
)

var phaseNames = [numPhases]string{"kubelet pod setup", "publish", "connect+mount+serve+read", "unpublish+server end", "kubelet cleanup"}

func TestSoak(t *testing.T) {
	if err := harness.Requirements(); err != nil {
		t.Skip("needs root and /dev/fuse: ", err)
	}
	cycles := defaultCycles
	if v := os.Getenv("MFCP_SOAK_CYCLES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("MFCP_SOAK_CYCLES=%q: want a positive number of cycles", v)
		}
		cycles = n
	}
	harness.LeakCheck(t)

	bins := &harness.Bins{
		Driver:   harness.BuildPackage(t, harness.DriverPkg),
		Starter:  harness.BuildPackage(t, harness.StarterPkg),
		Loopback: harness.BuildPackage(t, harness.LoopbackPkg),
	}
	bins.Dir = filepath.Dir(bins.Driver)
	s := &soak{t: t, bins: bins, tmpDir: t.TempDir()}
	s.k = harness.NewKubelet(t)
	s.stateDir = s.k.DriverStateDir()

	// -v=2: failed CSI calls are logged, not every call (the harness's -v=5
	// would write every request of 10,000 cycles).
	s.metricsAddr = harness.FreeAddr(t)
	s.d = harness.StartDriver(t, s.k, bins, "-v=2", "--metrics-address", s.metricsAddr)
	s.waitMetrics()
	s.fusectl = fusectlMount()

	s.backing = harness.NewDir(t, 0o755)
	if err := os.WriteFile(filepath.Join(s.backing, fileName), []byte("hello from the backing dir\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	before := s.settledBaseline()

	var (
		next      atomic.Int64
		failures  atomic.Int64
		starters  atomic.Int64
		mu        sync.Mutex
		errs      []string
		durations = make([]time.Duration, cycles)
		rssTenth  atomic.Int64 // driver RSS after the first tenth of the cycles
		wg        sync.WaitGroup
	)
	pk := &peaks{gorouts: -1}
	stopSampler, samplerDone := make(chan struct{}), make(chan struct{})
	go s.sample(pk, stopSampler, samplerDone)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= cycles || failures.Load() >= maxFailures {
					return
				}
				useStarter := i%starterEvery == 0
				if useStarter {
					starters.Add(1)
				}
				cs := time.Now()
				err := s.cycle(i, useStarter)
				durations[i] = time.Since(cs)
				if i == cycles/10 {
					if st, err := os.ReadFile("/proc/" + strconv.Itoa(s.d.Pid()) + "/status"); err == nil {
						rssTenth.Store(int64(statusField(st, "VmRSS")))
					}
				}
				if err != nil {
					failures.Add(1)
					mu.Lock()
					if len(errs) < 20 {
						kind := "in-process"
						if useStarter {
							kind = "fuse-starter"
						}
						errs = append(errs, fmt.Sprintf("cycle %d (%s): %v", i, kind, err))
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopSampler)
	<-samplerDone
	ran := int(min(next.Load(), int64(cycles)))

	after, problems := s.settle(before)

	s.report(ran, cycles, int(starters.Load()), int(failures.Load()), elapsed, durations[:ran], before, after, pk, int(rssTenth.Load()))
	for _, e := range errs {
		t.Errorf("%s", e)
	}
	if n := failures.Load(); n > 0 {
		t.Errorf("%d of %d cycles failed (first %d above)", n, ran, len(errs))
	}
	if ran < cycles {
		t.Errorf("stopped after %d of %d cycles: %d failures", ran, cycles, failures.Load())
	}
	for _, p := range problems {
		t.Errorf("leak: %s", p)
	}
}

// cycle is one pod's life: publish, serve, read through the target,
// unpublish, kubelet's removal of the pod's directories. Everything it
// created is released before it returns, also when it fails.
func (s *soak) cycle(i int, useStarter bool) (err error) {
	ct := &cycleT{t: s.t, tmpDir: s.tmpDir}
	var times [numPhases]time.Duration
	mark := time.Now()
	phase := func(p int) {
		now := time.Now()
		times[p] = now.Sub(mark)
		mark = now
	}
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(cycleFatal); ok {
				err = errors.New(string(f))
			} else {
				err = fmt.Errorf("panic: %v", r)
			}
		}
		ct.runCleanups()
		if ct.Failed() {
			err = errors.Join(err, errors.New(strings.Join(ct.errors(), "; ")))
		}
		if err == nil && !useStarter {
			phase(phaseCleanup)
			for p, d := range times {
				s.phases[p].Add(int64(d))
			}
			s.inproc.Add(1)
		}
	}()

	pod := s.k.NewPod(ct, fmt.Sprintf("soak-%d", i))
	podRemoved := false
	ct.Cleanup(func() {
		if !podRemoved {
			// The failure is already reported; what cannot be removed is
			// left for the after-counters (and the kubelet's cleanup).
			removePodDirs(pod)
		}
	})
	ed := pod.AddEmptyDir(emptyDirName)
	req := pod.PublishRequest(volName, map[string]string{
		"fdPassingEmptyDirName": emptyDirName,
		"fdPassingSocketName":   socketName,
	}, false)
	target := req.TargetPath
	phase(phaseSetup)

	// Registered before the call: an unpublish of a volume that is not
	// published succeeds, and a publish that failed half-way is undone.
	unpublished := false
	ct.Cleanup(func() {
		if unpublished {
			return
		}
		if err := s.unpublish(pod); err != nil {
			ct.Errorf("cleanup: NodeUnpublishVolume: %v", err)
		}
		if err := harness.DetachAll(target, true); err != nil {
			ct.Errorf("cleanup: %v", err)
		}
	})
	if err := s.publish(req); err != nil {
		return fmt.Errorf("NodePublishVolume: %w", err)
	}
	phase(phasePublish)

	var served func() error // waits until the FUSE server ended after the unpublish
	if useStarter {
		served, err = s.serveWithStarter(ct, pod, target)
	} else {
		served, err = s.serveInProcess(ct, ed, target, i)
	}
	if err != nil {
		return err
	}
	phase(phaseServe)

	if err := s.unpublish(pod); err != nil {
		return fmt.Errorf("NodeUnpublishVolume: %w", err)
	}
	unpublished = true
	if err := served(); err != nil {
		return err
	}
	phase(phaseUnpublish)
	// The driver removes the target once nothing is mounted there, so a
	// target that is gone also proves that nothing is left mounted on it
	// (no mountinfo read: it costs as much as the rest of the cycle on a
	// node with many mounts).
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		ms, _ := harness.MountsUnder(filepath.Dir(target))
		return fmt.Errorf("target %s still there after NodeUnpublishVolume (lstat: %v; mounts at or below its parent: %v)", target, err, ms)
	}
	if _, err := os.Lstat(filepath.Join(ed, socketName)); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("socket %s still in the emptyDir after NodeUnpublishVolume (lstat: %v)", socketName, err)
	}
	podRemoved = true
	return removePodDirs(pod)
}

// serveInProcess connects to the volume's socket as fuse-starter does,
// serves the received /dev/fuse fd with an in-process go-fuse server and
// reads a file through the target. The returned function waits for the
// server to end (after the unpublish aborted its connection).
func (s *soak) serveInProcess(ct *cycleT, emptyDir, target string, i int) (func() error, error) {
	// The node path of the socket is longer than a socket address allows
	// (108 bytes); reach it through a handle on the emptyDir instead, as the
	// driver binds it.
	dirFd, err := unix.Open(emptyDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the emptyDir: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	dev, _, err := starter.Receive(ctx, starter.Config{
		SocketPath:     fmt.Sprintf("/proc/self/fd/%d/%s", dirFd, socketName),
		ConnectTimeout: waitLimit,
		Client:         "soak",
	})
	cancel()
	unix.Close(dirFd)
	if err != nil {
		return nil, fmt.Errorf("receiving the /dev/fuse fd: %w", err)
	}
	content := fmt.Sprintf("soak cycle %d\n", i)
	srvDone, err := harness.ServeInProcess(dev, fileName, content)
	if err != nil {
		return nil, err
	}
	var connID string
	ct.Cleanup(func() {
		// Only matters when the cycle failed before the server ended: end
		// its connection so that its goroutines return.
		select {
		case <-srvDone:
			return
		default:
		}
		harness.DetachAll(target, true) // aborts the connection of a mount still there
		if connID != "" && s.fusectl != "" {
			abortConn(s.fusectl, connID) // one already detached
		}
		select {
		case <-srvDone:
		case <-time.After(waitLimit):
			ct.Errorf("cleanup: the in-process FUSE server did not end even after its connection %s was aborted", connID)
		}
	})

	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil {
		return nil, fmt.Errorf("stat of the target: %w", err)
	}
	connID = strconv.FormatUint(uint64(unix.Major(st.Dev))<<20|uint64(unix.Minor(st.Dev)), 10)
	got, err := harness.ReadFileDirect(filepath.Join(target, fileName))
	if err != nil {
		return nil, fmt.Errorf("reading through the target: %w", err)
	}
	if string(got) != content {
		return nil, fmt.Errorf("read %q through the target, want %q", got, content)
	}
	return func() error {
		select {
		case <-srvDone:
			return nil
		case <-time.After(waitLimit):
			return fmt.Errorf("the in-process FUSE server (connection %s) still serves %v after NodeUnpublishVolume: the connection was not aborted", connID, waitLimit)
		}
	}, nil
}

// serveWithStarter runs the real fuse-starter with go-fuse's loopback example
// as uid 65534 in its own mount namespace (the pod's FUSE sidecar) and reads
// a file through the target.
func (s *soak) serveWithStarter(ct *cycleT, pod *harness.Pod, target string) (func() error, error) {
	sidecar := pod.Run(ct, harness.RunOptions{
		Name:   "fuse-sidecar",
		Mounts: []harness.Mount{{Name: "fd", Source: pod.EmptyDirPath(emptyDirName)}},
		Args: []string{s.bins.Starter, "--fd-passing-socket-path", pod.ViewPath("fd") + "/" + socketName,
			"--connect-timeout", "20s", "--", s.bins.Loopback, "/dev/fd/3", s.backing},
	})
	want := "hello from the backing dir\n"
	deadline := time.Now().Add(waitLimit)
	for {
		if sidecar.Exited() {
			return nil, fmt.Errorf("fuse-starter exited before serving:\n%s", sidecar.Output())
		}
		// Until the driver mounted, the target is an empty directory.
		b, err := harness.ReadFileDirect(filepath.Join(target, fileName))
		if err == nil {
			if string(b) != want {
				return nil, fmt.Errorf("read %q through the target, want %q", b, want)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("reading through the target: %w", err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("not served within %v; sidecar output:\n%s", waitLimit, sidecar.Output())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return func() error {
		// The loopback server sees its connection end and exits;
		// fuse-starter passes its status on.
		if _, err := sidecar.Wait(waitLimit); err != nil {
			return fmt.Errorf("the FUSE sidecar did not exit after NodeUnpublishVolume: %w", err)
		}
		return nil
	}, nil
}

func (s *soak) publish(req *csi.NodePublishVolumeRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	_, err := s.d.Node.NodePublishVolume(ctx, req)
	return err
}

func (s *soak) unpublish(pod *harness.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	_, err := s.d.Node.NodeUnpublishVolume(ctx, pod.UnpublishRequest(volName))
	return err
}

// removePodDirs removes the pod's directories as kubelet does once the
// pod's volumes are torn down (the target, vol_data.json and the CSI volume
// directory, as Pod.RemoveTarget, then the emptyDir and the pod directory),
// with rmdir and unlink only: anything the driver left (a socket, a mount,
// files) makes it fail and stays for the counters.
func removePodDirs(pod *harness.Pod) error {
	target := pod.TargetPath(volName)
	for _, p := range []string{
		target,
		filepath.Join(filepath.Dir(target), "vol_data.json"),
		filepath.Dir(target),
		pod.EmptyDirPath(emptyDirName),
		filepath.Dir(pod.EmptyDirPath(emptyDirName)),
		filepath.Dir(filepath.Dir(pod.TargetPath(volName))),
		filepath.Join(pod.Dir, "volumes"),
		filepath.Join(pod.Dir, "plugins"),
		pod.Dir,
	} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			var left []string
			if ents, rerr := os.ReadDir(p); rerr == nil {
				for _, e := range ents {
					left = append(left, e.Name())
				}
			}
			return fmt.Errorf("removing the pod's %s: %w (holds %v)", p, err, left)
		}
	}
	return nil
}

// abortConn ends a FUSE connection through fusectl; one already gone is fine.
func abortConn(fusectl, id string) {
	f, err := os.OpenFile(filepath.Join(fusectl, id, "abort"), os.O_WRONLY, 0)
	if err != nil {
		return
	}
	f.WriteString("1")
	f.Close()
}

// cycleT is the harness.T of one cycle: its cleanups run when the cycle
// ends (not when the whole test does, which would keep 10,000 pods'
// leftovers), and Fatalf, which the harness calls from the cycle's worker
// goroutine, ends the cycle instead of the test.
type cycleT struct {
	t      *testing.T
	tmpDir string // parent of TempDir's directories (the test's own)

	mu       sync.Mutex
	cleanups []func()
	errs     []string
}

type cycleFatal string

func (c *cycleT) Helper() {}

func (c *cycleT) Logf(format string, args ...any) { c.t.Logf(format, args...) }

func (c *cycleT) Errorf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

func (c *cycleT) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.Errorf("%s", msg)
	panic(cycleFatal(msg))
}

func (c *cycleT) Failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.errs) > 0
}

func (c *cycleT) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.errs)
}

func (c *cycleT) Cleanup(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cleanups = append(c.cleanups, f)
}

func (c *cycleT) TempDir() string {
	dir, err := os.MkdirTemp(c.tmpDir, "cycle-")
	if err != nil {
		c.Fatalf("TempDir: %v", err)
	}
	c.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// runCleanups runs the cleanups last-registered first; a Fatalf in one is
// recorded and the others still run.
func (c *cycleT) runCleanups() {
	for {
		c.mu.Lock()
		if len(c.cleanups) == 0 {
			c.mu.Unlock()
			return
		}
		f := c.cleanups[len(c.cleanups)-1]
		c.cleanups = c.cleanups[:len(c.cleanups)-1]
		c.mu.Unlock()
		func() {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(cycleFatal); !ok {
						c.Errorf("cleanup panicked: %v", r)
					}
				}
			}()
			f()
		}()
	}
}

// ---- counters ----

// counters is one snapshot of everything that must not leak.
type counters struct {
	driverFDs       int
	driverSockFDs   int
	driverThreads   int
	driverGoroutine int // -1: not measured
	driverRSSKiB    int
	driverCPU       time.Duration // user+system time so far

	kubeletMounts []string // mountpoints below the kubelet directory
	fuseMounts    int      // FUSE mounts in this mount namespace, everyone's
	// driverMounts are the mounts (by mount id) a meta-fuse-csi-plugin
	// driver made (their source names it: the soak's volumes set no fsname),
	// wherever they are, except below another harness process's directories
	// (test packages run in parallel) or a real kubelet's: this driver may
	// only mount below its kubelet dir, and one it made elsewhere shows here.
	// Other programs' FUSE mounts on a shared machine do not count.
	driverMounts map[int]string
	// orphans are FUSE connections (fusectl) without a mount in this
	// namespace: a detached mount something still holds.
	orphans map[string]bool

	podSockets []string // socket files below <kubelet>/pods
	podEntries []string // everything below <kubelet>/pods
	stateFiles []string // entries in the driver's state directory

	selfGoroutines int
	selfFDs        int

	// fd link targets ("socket:[...]" without the inode), to show what leaked
	driverFDKinds map[string]int
	selfFDKinds   map[string]int
}

// fdKinds counts the link targets of /proc/<pid>/fd by kind: anonymous
// inodes and sockets without their inode number, files by path.
func fdKinds(dir string) (map[string]int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	kinds := map[string]int{}
	for _, e := range ents {
		l, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile (the directory's own fd, say)
		}
		if i := strings.Index(l, ":["); i > 0 {
			l = l[:i]
		}
		kinds[l]++
	}
	return kinds, nil
}

// kindDiff describes how the fds changed from b to a.
func kindDiff(b, a map[string]int) string {
	var d []string
	for k, n := range a {
		if n != b[k] {
			d = append(d, fmt.Sprintf("%s %d→%d", k, b[k], n))
		}
	}
	for k, n := range b {
		if _, ok := a[k]; !ok {
			d = append(d, fmt.Sprintf("%s %d→0", k, n))
		}
	}
	sort.Strings(d)
	return strings.Join(d, ", ")
}

func (s *soak) snapshot() (counters, error) {
	var c counters
	pid := s.d.Pid()
	if pid == 0 || !s.d.Running() {
		return c, fmt.Errorf("the driver is not running (exit state %v)", s.d.ExitState())
	}
	procDir := "/proc/" + strconv.Itoa(pid)
	var err error
	if c.driverFDKinds, err = fdKinds(procDir + "/fd"); err != nil {
		return c, err
	}
	for k, n := range c.driverFDKinds {
		c.driverFDs += n
		if k == "socket" {
			c.driverSockFDs += n
		}
	}
	status, err := os.ReadFile(procDir + "/status")
	if err != nil {
		return c, err
	}
	c.driverThreads = statusField(status, "Threads")
	c.driverRSSKiB = statusField(status, "VmRSS")
	c.driverCPU = cpuTime(procDir)
	if c.driverGoroutine, err = scrapeGoroutines(s.metricsAddr); err != nil {
		return c, err
	}

	ms, err := mountinfo.GetMounts(nil)
	if err != nil {
		return c, err
	}
	c.driverMounts = map[int]string{}
	mounted := map[string]bool{}
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, s.k.Dir+"/") {
			c.kubeletMounts = append(c.kubeletMounts, m.Mountpoint)
		}
		if harness.IsFuseType(m.FSType) {
			c.fuseMounts++
			mounted[strconv.FormatUint(uint64(m.Major)<<20|uint64(m.Minor), 10)] = true
		}
		if (m.Source == fusemount.DefaultSource || m.Source == fusemount.PlaceholderSource) && !othersDir(m.Mountpoint) {
			c.driverMounts[m.ID] = fmt.Sprintf("%s (%s %s)", m.Mountpoint, m.FSType, m.Source)
		}
	}
	c.orphans = map[string]bool{}
	if s.fusectl != "" {
		conns, err := os.ReadDir(s.fusectl)
		if err != nil {
			return c, err
		}
		for _, e := range conns {
			if !mounted[e.Name()] {
				c.orphans[e.Name()] = true
			}
		}
	}

	pods := s.k.PodsDir()
	err = filepath.WalkDir(pods, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == pods {
			return nil
		}
		rel, _ := filepath.Rel(pods, p)
		c.podEntries = append(c.podEntries, rel)
		if e.Type()&os.ModeSocket != 0 {
			c.podSockets = append(c.podSockets, rel)
		}
		return nil
	})
	if err != nil {
		return c, err
	}
	st, err := os.ReadDir(s.stateDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return c, err
	}
	for _, e := range st {
		c.stateFiles = append(c.stateFiles, e.Name())
	}

	c.selfGoroutines = runtime.NumGoroutine()
	if c.selfFDKinds, err = fdKinds("/proc/self/fd"); err != nil {
		return c, err
	}
	for _, n := range c.selfFDKinds {
		c.selfFDs += n
	}
	return c, nil
}

// Counter keys: each is checked, and settles, on its own.
const (
	kFDs            = "driver fds"
	kThreads        = "driver threads"
	kGoroutines     = "driver goroutines"
	kKubeletMounts  = "kubelet mounts"
	kDriverMounts   = "driver mounts"
	kOrphans        = "orphaned connections"
	kPodSockets     = "pod sockets"
	kPodEntries     = "pod entries"
	kStateFiles     = "state files"
	kSelfFDs        = "soak fds"
	kSelfGoroutines = "soak goroutines"
)

var allKeys = []string{kFDs, kThreads, kGoroutines, kKubeletMounts, kDriverMounts, kOrphans, kPodSockets, kPodEntries, kStateFiles, kSelfFDs, kSelfGoroutines}

// threadSlack is how many threads the driver may have gained. The Go
// runtime never ends an idle thread: the count rises to the peak of
// goroutines blocked in syscalls at once (mount, fsync, statfs, ...), which
// the workers' parallelism bounds; a per-cycle leak (goroutines stuck in a
// syscall, which go_goroutines also shows) would add thousands.
const threadSlack = 4 * workers

// leaks compares a snapshot with the baseline and returns, by counter key,
// what differs: mounts and directories must be back exactly; fds, sockets
// and goroutines at or below the baseline (one fewer is a connection that was
// closing when the baseline was taken, not a leak); threads within
// threadSlack.
func (s *soak) leaks(b, a counters) map[string]string {
	p := map[string]string{}
	if a.driverFDs > b.driverFDs || a.driverSockFDs > b.driverSockFDs {
		p[kFDs] = fmt.Sprintf("driver open fds: %d before, %d after (sockets %d, %d): %s",
			b.driverFDs, a.driverFDs, b.driverSockFDs, a.driverSockFDs, kindDiff(b.driverFDKinds, a.driverFDKinds))
	}
	if a.driverThreads > b.driverThreads+threadSlack {
		p[kThreads] = fmt.Sprintf("driver threads: %d before, %d after (more than %d new)", b.driverThreads, a.driverThreads, threadSlack)
	}
	if b.driverGoroutine >= 0 && a.driverGoroutine > b.driverGoroutine {
		p[kGoroutines] = fmt.Sprintf("driver goroutines (go_goroutines): %d before, %d after", b.driverGoroutine, a.driverGoroutine)
	}
	if len(a.kubeletMounts) != len(b.kubeletMounts) {
		p[kKubeletMounts] = fmt.Sprintf("mounts under the kubelet dir: %d before, %d after: %v", len(b.kubeletMounts), len(a.kubeletMounts), a.kubeletMounts)
	}
	var newMounts []string
	for id, m := range a.driverMounts {
		if _, ok := b.driverMounts[id]; !ok {
			newMounts = append(newMounts, m)
		}
	}
	if len(newMounts) > 0 {
		sort.Strings(newMounts)
		p[kDriverMounts] = fmt.Sprintf("the driver's mounts: %d new: %v", len(newMounts), newMounts)
	}
	var newOrphans []string
	for id := range a.orphans {
		if !b.orphans[id] {
			newOrphans = append(newOrphans, id)
		}
	}
	if len(newOrphans) > 0 {
		sort.Strings(newOrphans)
		p[kOrphans] = fmt.Sprintf("FUSE connections without a mount (a detached mount still held): %d new: %v", len(newOrphans), newOrphans)
	}
	list := func(key, name string, before, after []string) {
		if len(after) != len(before) {
			shown := after
			if len(shown) > 20 {
				shown = shown[:20]
			}
			p[key] = fmt.Sprintf("%s: %d before, %d after: %v", name, len(before), len(after), shown)
		}
	}
	list(kPodSockets, "socket files under pods/", b.podSockets, a.podSockets)
	list(kPodEntries, "entries under pods/", b.podEntries, a.podEntries)
	list(kStateFiles, "entries in the driver's state dir", b.stateFiles, a.stateFiles)
	// Fewer fds after than before is a transient in the baseline (a
	// connection closing), not a leak.
	if a.selfFDs > b.selfFDs {
		p[kSelfFDs] = fmt.Sprintf("soak process fds: %d before, %d after: %s", b.selfFDs, a.selfFDs, kindDiff(b.selfFDKinds, a.selfFDKinds))
	}
	if a.selfGoroutines > b.selfGoroutines {
		p[kSelfGoroutines] = fmt.Sprintf("soak process goroutines: %d before, %d after", b.selfGoroutines, a.selfGoroutines)
	}
	return p
}

// settledBaseline takes the "before" snapshot once two consecutive ones
// agree.
func (s *soak) settledBaseline() counters {
	s.t.Helper()
	prev, err := s.snapshot()
	if err != nil {
		s.t.Fatalf("baseline: %v", err)
	}
	deadline := time.Now().Add(settleLimit)
	for {
		time.Sleep(100 * time.Millisecond)
		cur, err := s.snapshot()
		if err != nil {
			s.t.Fatalf("baseline: %v", err)
		}
		if cur.driverThreads == prev.driverThreads && len(s.leaks(prev, cur)) == 0 && len(s.leaks(cur, prev)) == 0 || time.Now().After(deadline) {
			return cur
		}
		prev = cur
	}
}

// settled holds the after-values: for each counter key the snapshot in
// which it was back at the baseline, or the last one if it never was.
type settled struct {
	last counters
	at   map[string]counters
}

func (st settled) get(key string) counters {
	if c, ok := st.at[key]; ok {
		return c
	}
	return st.last
}

// settle polls, up to settleLimit, until every counter has been back at the
// baseline (each is judged on its own: a value that came back did not leak),
// and returns the after-values and what never came back.
func (s *soak) settle(before counters) (settled, []string) {
	st := settled{at: map[string]counters{}}
	deadline := time.Now().Add(settleLimit)
	for {
		after, err := s.snapshot()
		if err != nil {
			return st, []string{err.Error()}
		}
		st.last = after
		p := s.leaks(before, after)
		for _, k := range allKeys {
			if _, done := st.at[k]; !done && p[k] == "" {
				st.at[k] = after
			}
		}
		if len(st.at) == len(allKeys) {
			return st, nil
		}
		if time.Now().After(deadline) {
			var left []string
			for _, k := range allKeys {
				if _, done := st.at[k]; !done {
					left = append(left, p[k])
				}
			}
			return st, left
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// peaks are the highest values the sampler saw while the cycles ran.
type peaks struct {
	mu                                  sync.Mutex
	fds, sockFDs, threads, rss, gorouts int
	samples                             int
}

// sample reads the driver's counters every interval until stop is closed.
func (s *soak) sample(pk *peaks, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-stop:
			return
		case <-time.After(250 * time.Millisecond):
		}
		pid := s.d.Pid()
		kinds, err := fdKinds("/proc/" + strconv.Itoa(pid) + "/fd")
		if err != nil {
			continue
		}
		status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		g, _ := scrapeGoroutines(s.metricsAddr)
		n := 0
		for _, c := range kinds {
			n += c
		}
		pk.mu.Lock()
		pk.samples++
		pk.fds = max(pk.fds, n)
		pk.sockFDs = max(pk.sockFDs, kinds["socket"])
		pk.threads = max(pk.threads, statusField(status, "Threads"))
		pk.rss = max(pk.rss, statusField(status, "VmRSS"))
		pk.gorouts = max(pk.gorouts, g)
		pk.mu.Unlock()
	}
}

func (s *soak) report(ran, cycles, starters, failures int, elapsed time.Duration, durations []time.Duration, b counters, st settled, pk *peaks, rssTenth int) {
	var w strings.Builder
	fmt.Fprintf(&w, "soak summary\n")
	fmt.Fprintf(&w, "  cycles           %d of %d (%d with the real fuse-starter as uid 65534, the rest served in-process), %d workers\n", ran, cycles, starters, workers)
	fmt.Fprintf(&w, "  failures         %d\n", failures)
	fmt.Fprintf(&w, "  duration         %v\n", elapsed.Round(time.Millisecond))
	fmt.Fprintf(&w, "  cycles/s         %.1f\n", float64(ran)/elapsed.Seconds())
	if len(durations) > 0 {
		d := slices.Clone(durations)
		slices.Sort(d)
		q := func(f float64) time.Duration {
			return d[min(len(d)-1, int(f*float64(len(d))))].Round(10 * time.Microsecond)
		}
		fmt.Fprintf(&w, "  cycle latency    p50 %v, p99 %v, max %v\n", q(0.50), q(0.99), d[len(d)-1].Round(10*time.Microsecond))
	}
	if n := s.inproc.Load(); n > 0 {
		var parts []string
		for p := range numPhases {
			parts = append(parts, fmt.Sprintf("%s %v", phaseNames[p], (time.Duration(s.phases[p].Load())/time.Duration(n)).Round(10*time.Microsecond)))
		}
		fmt.Fprintf(&w, "  in-process cycle, mean per phase: %s\n", strings.Join(parts, ", "))
	}
	pk.mu.Lock()
	defer pk.mu.Unlock()
	peak := func(v int) any {
		if pk.samples == 0 || v < 0 {
			return "-"
		}
		return v
	}
	fmt.Fprintf(&w, "  %-50s %9s %9s %9s\n", "counter", "before", "peak", "after")
	row := func(name string, before, pv, after any) {
		fmt.Fprintf(&w, "  %-50s %9v %9v %9v\n", name, before, pv, after)
	}
	row("driver open fds (/proc/<pid>/fd)", b.driverFDs, peak(pk.fds), st.get(kFDs).driverFDs)
	row("driver socket fds (socket:[...])", b.driverSockFDs, peak(pk.sockFDs), st.get(kFDs).driverSockFDs)
	row(fmt.Sprintf("driver threads (may rise by %d)", threadSlack), b.driverThreads, peak(pk.threads), st.get(kThreads).driverThreads)
	if b.driverGoroutine >= 0 {
		row("driver goroutines (go_goroutines)", b.driverGoroutine, peak(pk.gorouts), st.get(kGoroutines).driverGoroutine)
	} else {
		row("driver goroutines", "n/a", "n/a", "n/a")
	}
	row("driver RSS KiB (reported only)", b.driverRSSKiB, peak(pk.rss), st.last.driverRSSKiB)
	if rssTenth > 0 {
		row(fmt.Sprintf("driver RSS KiB after cycle %d (reported only)", cycles/10), "", "", rssTenth)
	}
	row("driver CPU time, user+system (reported only)", b.driverCPU, "", st.last.driverCPU)
	row("mounts under the kubelet dir", len(b.kubeletMounts), "", len(st.get(kKubeletMounts).kubeletMounts))
	row("FUSE mounts, everyone's (reported only)", b.fuseMounts, "", st.last.fuseMounts)
	row("the driver's mounts anywhere (not other tests')", len(b.driverMounts), "", len(st.get(kDriverMounts).driverMounts))
	if s.fusectl != "" {
		row("FUSE connections without a mount (fusectl)", len(b.orphans), "", len(st.get(kOrphans).orphans))
	} else {
		row("FUSE connections without a mount", "n/a", "", "n/a")
	}
	row("socket files under pods/ (emptyDirs)", len(b.podSockets), "", len(st.get(kPodSockets).podSockets))
	row("entries under pods/", len(b.podEntries), "", len(st.get(kPodEntries).podEntries))
	row("entries in the driver's state dir", len(b.stateFiles), "", len(st.get(kStateFiles).stateFiles))
	row("soak process goroutines", b.selfGoroutines, "", st.get(kSelfGoroutines).selfGoroutines)
	row("soak process fds", b.selfFDs, "", st.get(kSelfFDs).selfFDs)
	if b.driverGoroutine < 0 {
		fmt.Fprintf(&w, "  goroutines: not measured (no --metrics-address)\n")
	}
	s.t.Logf("%s", w.String())
}

// cpuTime is a process's user+system time from /proc/<pid>/stat (fields
// 14 and 15, in clock ticks of 1/100 s on Linux).
func cpuTime(procDir string) time.Duration {
	b, err := os.ReadFile(procDir + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func statusField(status []byte, field string) int {
	if n, ok := harness.StatusField(status, field); ok {
		return int(n)
	}
	return -1
}

// othersDir reports whether p lies below a directory of another harness
// process (/tmp/mfcp-<kind>-<pid>-*: test packages run in parallel) or of a
// real kubelet on this machine (hack/local-cluster, for make test-e2e).
func othersDir(p string) bool {
	if strings.HasPrefix(p, "/var/lib/kubelet/") {
		return true
	}
	rest, ok := strings.CutPrefix(p, "/tmp/mfcp-")
	if !ok {
		return false
	}
	parts := strings.SplitN(rest, "-", 3)
	if len(parts) < 3 {
		return false
	}
	pid, err := strconv.Atoi(parts[1])
	return err == nil && pid != os.Getpid()
}

// fusectlMount is where fusectl is mounted ("" if nowhere); the driver
// mounts it at start-up when it is missing.
func fusectlMount() string {
	ms, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("fusectl"))
	if err != nil || len(ms) == 0 {
		return ""
	}
	return ms[0].Mountpoint
}

// waitMetrics waits until the driver's metrics endpoint answers.
func (s *soak) waitMetrics() {
	s.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		_, err := scrapeGoroutines(s.metricsAddr)
		if err == nil {
			return
		}
		if time.Now().After(deadline) || !s.d.Running() {
			s.t.Fatalf("the driver's --metrics-address %s: %v", s.metricsAddr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scrapeGoroutines reads go_goroutines from the driver's /metrics.
func scrapeGoroutines(addr string) (int, error) {
	m, err := harness.ScrapeMetrics(addr)
	if err != nil {
		return 0, err
	}
	g, ok := m["go_goroutines"]
	if !ok {
		return 0, errors.New("no go_goroutines in /metrics")
	}
	return int(g), nil
}

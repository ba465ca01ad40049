package integration

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// Helpers of the benchmarks. Benchmarks report figures with b.ReportMetric;
// hack/bench renders them into docs/benchmarks.md. No benchmark asserts a
// time: they fail only when something does not work.

// benchLoopbackPkg is go-fuse's loopback example with a switch for kernel FUSE
// passthrough (off by default), for the throughput comparison.
const benchLoopbackPkg = "./hack/bench/loopback"

func msOf(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(float64(len(s))*p/100+0.999999) - 1
	rank = max(0, min(rank, len(s)-1))
	return s[rank]
}

// medianOf is the median (mean of the middle two for an even count).
func medianOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// bootstrap95 is a 95 % percentile-bootstrap interval: stat computes the
// statistic on one resample drawn with rng, 2000 times (a fixed seed, so a
// run's report is reproducible from its figures). On two cores single runs
// vary by ±10 % or more, so a ratio's point value alone says little about a
// goal a few per cent from 1.
func bootstrap95(stat func(rng *rand.Rand) float64) (lo, hi float64) {
	rng := rand.New(rand.NewPCG(1, 2))
	const resamples = 2000
	xs := make([]float64, resamples)
	for i := range xs {
		xs[i] = stat(rng)
	}
	sort.Float64s(xs)
	return xs[resamples*25/1000], xs[resamples*975/1000-1]
}

// ratioInterval is the bootstrap interval of median(num)/median(den), the
// two samples resampled independently.
func ratioInterval(num, den []float64) (lo, hi float64) {
	if len(num) < 2 || len(den) < 2 {
		r := medianOf(num) / medianOf(den)
		return r, r
	}
	a, b := make([]float64, len(num)), make([]float64, len(den))
	return bootstrap95(func(rng *rand.Rand) float64 {
		for j := range a {
			a[j] = num[rng.IntN(len(num))]
		}
		for j := range b {
			b[j] = den[rng.IntN(len(den))]
		}
		return medianOf(a) / medianOf(b)
	})
}

// medianInterval is the bootstrap interval of the median of the values in
// groups, resampling whole groups. The values of one group (the chunk pairs
// of one iteration, through the same two mounts) are not independent of
// each other, so resampling them one by one would make the interval too
// narrow.
func medianInterval(groups [][]float64) (lo, hi float64) {
	all := slices.Concat(groups...)
	if len(groups) < 2 {
		m := medianOf(all)
		return m, m
	}
	return bootstrap95(func(rng *rand.Rand) float64 {
		all = all[:0]
		for range groups {
			all = append(all, groups[rng.IntN(len(groups))]...)
		}
		return medianOf(all)
	})
}

func durFloats(ds []time.Duration) []float64 {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return xs
}

func medianDur(ds []time.Duration) time.Duration {
	return time.Duration(medianOf(durFloats(ds)))
}

// envInt reads a positive integer setting of the benchmarks from the environment.
func envInt(b testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// benchSetup is setup with binaries built as they are shipped and the
// driver's verbosity as deployed (-v=2: the DaemonSet's), so that
// benchmarks do not time debug logging.
func benchSetup(b *testing.B, driverArgs ...string) *env {
	b.Helper()
	staticBuilds(b)
	return setup(b, append([]string{"-v=2"}, driverArgs...)...)
}

// staticBuilds makes the harness build the binaries static (CGO_ENABLED=0),
// as make build and the images do: a dynamically linked Go program starts
// about 1.5 ms later on this project's machines, which would count against
// the driver path (fuse-starter is one more program to start). It must be
// called before harness.Binaries, which builds once per process.
func staticBuilds(b *testing.B) {
	b.Setenv("CGO_ENABLED", "0")
}

// benchProc is a process the benchmark starts itself with fork/exec, without
// the harness's container emulation (unshare, setpriv, env), so that both
// sides of a comparison pay exactly the same launch cost.
type benchProc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// launch starts argv as uid:gid (0: root with its capabilities; otherwise
// that user, which has none), in its own process group, with extra files
// from fd 3 on. The cleanup kills the group and waits.
func launch(b testing.TB, uid int, extra []*os.File, argv ...string) *benchProc {
	b.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", harness.TagEnv + "=" + strconv.Itoa(os.Getpid())}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = extra
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting %v: %v", argv, err)
	}
	p := &benchProc{cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	b.Cleanup(func() { p.kill(b) })
	return p
}

func (p *benchProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit on its own, and kills it after limit.
func (p *benchProc) wait(b testing.TB, limit time.Duration) {
	select {
	case <-p.done:
	case <-time.After(limit):
		b.Logf("%s still running after %v; killing it", p.cmd.Path, limit)
		p.kill(b)
	}
}

func (p *benchProc) kill(b testing.TB) {
	if p.exited() {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		b.Errorf("%s (pid %d) did not exit within 10 s of SIGKILL", p.cmd.Path, p.cmd.Process.Pid)
	}
}

// waitStat polls stat(path) until it succeeds; it returns when the FUSE
// server answered a LOOKUP for it (the file exists only in the backing dir).
func waitStat(b testing.TB, path string, p *benchProc) {
	b.Helper()
	var st unix.Stat_t
	deadline := time.Now().Add(waitLimit)
	for {
		err := unix.Stat(path, &st)
		if err == nil {
			return
		}
		if p != nil && p.exited() {
			b.Fatalf("%s exited before %s was served:\n%s", p.cmd.Path, path, p.out.String())
		}
		if time.Now().After(deadline) {
			out := ""
			if p != nil {
				out = p.out.String()
			}
			b.Fatalf("%s not served within %v (last error %v):\n%s", path, waitLimit, err, out)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// openPath opens dir with O_PATH, for /proc/self/fd/N/<name> paths that stay
// short (sun_path is 108 bytes) and skip the 0750 kubelet directories, as a
// container's view of its emptyDir does.
func openPath(b testing.TB, dir string) *os.File {
	b.Helper()
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatalf("open %s: %v", dir, err)
	}
	return os.NewFile(uintptr(fd), dir)
}

// stopSelf ends a self-mounted server: it aborts the FUSE connection and
// detaches the mount (harness.DetachAll), so that the server gets ENODEV and
// exits, then waits for it. Killing the server first could leave it in D
// state: go-fuse's own requests on its mount (the poll of its epoll hack,
// the flush when it closes that file) would wait for an answer forever.
func stopSelf(b testing.TB, p *benchProc, mnt string) {
	b.Helper()
	if err := harness.DetachAll(mnt, true); err != nil {
		b.Fatalf("unmounting %s: %v", mnt, err)
	}
	p.wait(b, 10*time.Second)
}

// mountCount counts the mount table's entries (the driver runs in the host's
// mount namespace, as the test process does).
func mountCount(b testing.TB) int {
	b.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		b.Fatal(err)
	}
	return bytes.Count(data, []byte{'\n'})
}

// mountOptionsOf returns the per-mount and the super options of a mountinfo
// line, and its source and type.
func mountOptionsOf(line string) (mountOpts, superOpts, fstype, source string) {
	f := strings.Fields(line)
	for i, x := range f {
		if x == "-" && i+3 < len(f) {
			return f[5], f[i+3], f[i+1], f[i+2]
		}
	}
	return "", "", "", ""
}

// writeFile fills path with size bytes of incompressible-looking data.
func writeBigFile(b testing.TB, path string, size int64) {
	b.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	x := uint64(0x9e3779b97f4a7c15)
	for i := 0; i+8 <= len(buf); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		for k := 0; k < 8; k++ {
			buf[i+k] = byte(x >> (8 * k))
		}
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		buf[0] = byte(off >> 20) // every MiB differs
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		b.Fatal(err)
	}
}

// The benchmarks do their I/O on FUSE files with raw syscalls, never
// os.Open: Go registers a file it opens with its netpoller (epoll), and for a
// FUSE file that sends a FUSE_POLL request to the server; when the server is a
// go-fuse server in the same process on a /dev/fd/N mount (which skips
// go-fuse's own poll hack), the runtime can deadlock on it.

// dropCache drops the page cache of a file opened through a FUSE mount
// (POSIX_FADV_DONTNEED), so that one pass does not leave gigabytes of cached
// pages that make the next pass's page allocations slower: without it, the
// first write after the reads ran at half the speed of the next, whichever
// mount it went through.
func dropCache(b testing.TB, path string) {
	b.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatalf("open %s: %v", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatalf("fadvise %s: %v", path, err)
	}
}

// readSmall returns the content of a small file (see harness.ReadFileDirect).
func readSmall(path string) (string, error) {
	b, err := harness.ReadFileDirect(path)
	return string(b), err
}

// interleaved reads (or writes) a file of size bytes through each of two
// paths at once, in chunks of chunk bytes, taking turns chunk by chunk (the
// side that goes first alternates too), with bs-byte read(2)s or write(2)s,
// and returns each side's total time from open to close and the time of each
// of its chunks (chunk k of both sides ran next to each other). Taking turns every
// few tens of milliseconds means both sides see the same machine: on a
// shared 2-core VM the speed drifts by ±10 % over seconds, which, measured
// one whole file after the other, swamps a difference of a few per cent.
// For writes the files are created (O_EXCL) with a fixed non-zero pattern.
func interleaved(b testing.TB, write bool, paths [2]string, size, chunk int64, bs int) (took [2]time.Duration, chunks [2][]time.Duration) {
	b.Helper()
	buf := make([]byte, bs)
	for i := range buf {
		buf[i] = byte(i*31 + 7)
	}
	var fds [2]int
	for side, path := range paths {
		start := time.Now()
		var err error
		if write {
			fds[side], err = unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		} else {
			fds[side], err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		}
		took[side] += time.Since(start)
		if err != nil {
			if side == 1 {
				unix.Close(fds[0])
			}
			b.Fatalf("open %s: %v", path, err)
		}
	}
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	var done [2]int64
	for k := 0; done[0] < size || done[1] < size; k++ {
		for turn := range 2 {
			side := (k + turn) % 2
			start := time.Now()
			for end := min(done[side]+chunk, size); done[side] < end; {
				var n int
				var err error
				if write {
					n, err = unix.Write(fds[side], buf[:min(int64(bs), end-done[side])])
				} else {
					n, err = unix.Read(fds[side], buf)
				}
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					b.Fatalf("%s: %v", paths[side], err)
				}
				if n == 0 {
					b.Fatalf("%s ended after %d bytes, want %d", paths[side], done[side], size)
				}
				done[side] += int64(n)
			}
			d := time.Since(start)
			took[side] += d
			chunks[side] = append(chunks[side], d)
		}
	}
	for side, fd := range fds {
		start := time.Now()
		err := unix.Close(fd)
		took[side] += time.Since(start)
		fds[side] = -1
		if err != nil {
			b.Fatalf("closing %s: %v", paths[side], err)
		}
	}
	return took, chunks
}

// sidecarArgs is the argv of fuse-starter running program with the socket
// reached through fd 3 (see openPath).
func (e *env) sidecarArgs(program ...string) []string {
	return append([]string{e.bins.Starter, "--fd-passing-socket-path", filepath.Join("/proc/self/fd/3", socketName), "--quiet", "--connect-timeout", "20s", "--"}, program...)
}

// newMountpoint makes an empty directory for a self-mount; its cleanup
// detaches whatever is left mounted there.
func newMountpoint(b testing.TB) string {
	b.Helper()
	return harness.NewDir(b, 0o755)
}

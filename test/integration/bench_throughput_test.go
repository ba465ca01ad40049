package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// BenchmarkThroughput compares sequential read and write throughput through
// a mount made by the driver and served on the passed fd against a root
// self-mount of the same program, both with kernel FUSE passthrough off:
//
//   - passed: the driver's mount, served by hack/bench/loopback run by
//     fuse-starter as uid 65534 with no capabilities in a pod's mount
//     namespace (the harness's container emulation);
//   - self: the same binary as root mounting itself with mount(2).
//
// Both export the same backing directory (a tmpfs) and get the same
// mount options (checked against /proc/self/mountinfo; only user_id and
// group_id, the server's uid, differ). Each iteration mounts both afresh (so
// no FUSE page cache survives from an earlier pass; the backing file is in
// memory, so the FUSE path is what is measured), then reads the
// MFCP_BENCH_FILE_MIB (default 1024) MiB file through both with 1 MiB reads,
// taking turns every 64 MiB (see interleaved), and writes a new file of that
// size through both the same way (open to close; afterwards, untimed, the
// files' FUSE page cache is dropped and the written files deleted). The
// ratio is the median over iterations of each iteration's passed/self
// throughput ratio.
func BenchmarkThroughput(b *testing.B) {
	e := benchSetup(b)
	lb := harness.BuildPackage(b, benchLoopbackPkg)
	size := int64(envInt(b, "MFCP_BENCH_FILE_MIB", 1024)) << 20
	const bs = 1 << 20
	chunk := int64(envInt(b, "MFCP_BENCH_CHUNK_MIB", 64)) << 20

	// The backing directory is a tmpfs, so that writes do not wait for a
	// disk that other work on the machine shares: the FUSE path is measured.
	backing := harness.NewDir(b, 0o777)
	if err := unix.Mount("tmpfs", backing, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("mode=0777,size=%d", 3*size+(64<<20))); err != nil {
		b.Fatalf("mounting a tmpfs on %s: %v", backing, err)
	}
	b.Cleanup(func() { unix.Unmount(backing, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(backing, "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	big := filepath.Join(backing, "big")
	writeBigFile(b, big, size)
	// The write pass overwrites these in place, so that the backing tmpfs
	// allocates no memory while it is timed.
	// Mode 0666: the passed fd's server runs as uid 65534.
	for k := range 2 {
		w := filepath.Join(backing, fmt.Sprintf("w-%d", k))
		writeBigFile(b, w, size)
		if err := os.Chmod(w, 0o666); err != nil {
			b.Fatal(err)
		}
	}

	// The driver's mount gets go-fuse's self-mount options: max_read as
	// go-fuse sets it (its MaxWrite, 128 KiB), its fsname and subtype.
	mountOpts := fmt.Sprintf("max_read=%d,fsname=%s,subtype=loopback", 128<<10, backing)
	type mounted struct {
		dir  string
		stop func()
	}
	mountPassed := func() mounted {
		pod := e.k.NewPod(b, "bench")
		pod.AddEmptyDir(emptyDirName)
		v := e.publish(b, pod, "vol", attrs("mountOptions", mountOpts), false)
		sidecar := e.starter(b, pod, lb, "-q", "/dev/fd/3", backing)
		waitServed(b, v.target, "hello.txt", sidecar)
		return mounted{v.target, func() {
			e.unpublish(b, v)
			sidecar.Wait(waitLimit)
		}}
	}
	mountSelf := func() mounted {
		mnt := newMountpoint(b)
		p := launch(b, 0, nil, lb, "-q", "-directmountstrict", "-allow-other", mnt, backing)
		waitStat(b, filepath.Join(mnt, "hello.txt"), p)
		return mounted{mnt, func() { stopSelf(b, p, mnt) }}
	}

	// Same options on both, as the mount table shows them.
	{
		p, s := mountPassed(), mountSelf()
		pl, sl := fuseMount(b, p.dir), fuseMount(b, s.dir)
		pm, ps, pt, psrc := mountOptionsOf(pl)
		sm, ss, st, ssrc := mountOptionsOf(sl)
		norm := func(opts string) string {
			var keep []string
			for _, o := range strings.Split(opts, ",") {
				if !strings.HasPrefix(o, "user_id=") && !strings.HasPrefix(o, "group_id=") {
					keep = append(keep, o)
				}
			}
			return strings.Join(keep, ",")
		}
		if pm != sm || norm(ps) != norm(ss) || pt != st || psrc != ssrc {
			b.Fatalf("the two mounts' options differ:\npassed fd: %s\nself:      %s", pl, sl)
		}
		b.Logf("mount options (both): %s %s %s %s", pt, psrc, pm, ps)
		p.stop()
		s.stop()
	}

	var rdP, rdS, wrP, wrS []float64
	var rdRatio, wrRatio [][]float64 // per iteration, per chunk pair
	mbps := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }
	// pass runs one interleaved pass and returns both sides' throughput and
	// the passed/self throughput ratio of each pair of chunks that ran next
	// to each other.
	//
	// Whichever side writes the pass's very last chunk (side 1 goes first
	// in an odd-numbered pair) takes several times as long for it, through
	// either mount (measured with the sides swapped), so the sides swap
	// places every iteration.
	iter := 0
	pass := func(write bool, passed, self string) (mbPassed, mbSelf float64, ratios []float64) {
		paths := [2]string{passed, self}
		if iter%2 == 1 {
			paths = [2]string{self, passed}
		}
		took, chunks := interleaved(b, write, paths, size, chunk, bs)
		if iter%2 == 1 {
			took[0], took[1] = took[1], took[0]
			chunks[0], chunks[1] = chunks[1], chunks[0]
		}
		for k := range min(len(chunks[0]), len(chunks[1])) {
			ratios = append(ratios, chunks[1][k].Seconds()/chunks[0][k].Seconds())
		}
		return mbps(took[0]), mbps(took[1]), ratios
	}
	for b.Loop() {
		p, s := mountPassed(), mountSelf()
		rp, rs, rr := pass(false, filepath.Join(p.dir, "big"), filepath.Join(s.dir, "big"))
		rdP, rdS, rdRatio = append(rdP, rp), append(rdS, rs), append(rdRatio, rr)
		for _, m := range []mounted{p, s} {
			dropCache(b, filepath.Join(m.dir, "big"))
		}
		wp, ws, wr := pass(true, filepath.Join(p.dir, "w-0"), filepath.Join(s.dir, "w-1"))
		wrP, wrS, wrRatio = append(wrP, wp), append(wrS, ws), append(wrRatio, wr)
		dropCache(b, filepath.Join(p.dir, "w-0"))
		dropCache(b, filepath.Join(s.dir, "w-1"))
		p.stop()
		s.stop()
		iter++
	}
	report := func(kind string, passed, self []float64, ratios [][]float64) {
		b.ReportMetric(medianOf(passed), "MB/s-"+kind+"-passed")
		b.ReportMetric(medianOf(self), "MB/s-"+kind+"-self")
		b.ReportMetric(medianOf(slices.Concat(ratios...)), kind+"-ratio")
		lo, hi := medianInterval(ratios)
		b.ReportMetric(lo, kind+"-ratio-ci95-lo")
		b.ReportMetric(hi, kind+"-ratio-ci95-hi")
	}
	report("read", rdP, rdS, rdRatio)
	report("write", wrP, wrS, wrRatio)
	b.ReportMetric(float64(size>>20), "MiB-file")
	b.ReportMetric(float64(len(slices.Concat(rdRatio...))), "chunk-pairs")
	b.Logf("whole-file MB/s: read passed %.0f self %.0f, write passed %.0f self %.0f", rdP, rdS, wrP, wrS)
	b.Logf("per-chunk ratios: read %.3f; write %.3f", rdRatio, wrRatio)
}

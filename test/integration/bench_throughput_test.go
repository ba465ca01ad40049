package integration

import (
	"fmt"
	"os"
	"path/filepath"
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
// memory, so the FUSE path is what is measured), then, in
// alternating order, reads the MFCP_BENCH_FILE_MIB (default 1024) MiB file
// with 1 MiB reads and writes a new file of that size with 1 MiB writes
// (open to close; afterwards, untimed, the file's FUSE page cache is dropped
// and a written file deleted).
func BenchmarkThroughput(b *testing.B) {
	e := benchSetup(b)
	lb := harness.BuildPackage(b, benchLoopbackPkg)
	size := int64(envInt(b, "MFCP_BENCH_FILE_MIB", 1024)) << 20
	const bs = 1 << 20

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
	mbps := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }
	i := 0
	for b.Loop() {
		p, s := mountPassed(), mountSelf()
		order := []mounted{p, s}
		if i%2 == 1 {
			order = []mounted{s, p}
		}
		for _, m := range order {
			n, took := readAll(b, filepath.Join(m.dir, "big"), bs)
			dropCache(b, filepath.Join(m.dir, "big"))
			if n != size {
				b.Fatalf("read %d bytes through %s, want %d", n, m.dir, size)
			}
			if m.dir == p.dir {
				rdP = append(rdP, mbps(took))
			} else {
				rdS = append(rdS, mbps(took))
			}
		}
		for k := len(order) - 1; k >= 0; k-- { // the other order for writes
			m := order[k]
			name := fmt.Sprintf("w-%d-%d", i, k)
			took := writeAll(b, filepath.Join(m.dir, name), size, bs)
			dropCache(b, filepath.Join(m.dir, name))
			os.Remove(filepath.Join(backing, name))
			if m.dir == p.dir {
				wrP = append(wrP, mbps(took))
			} else {
				wrS = append(wrS, mbps(took))
			}
		}
		p.stop()
		s.stop()
		i++
	}
	b.ReportMetric(medianOf(rdP), "MB/s-read-passed")
	b.ReportMetric(medianOf(rdS), "MB/s-read-self")
	b.ReportMetric(medianOf(rdP)/medianOf(rdS), "read-ratio")
	lo, hi := ratioInterval(rdP, rdS)
	b.ReportMetric(lo, "read-ratio-ci95-lo")
	b.ReportMetric(hi, "read-ratio-ci95-hi")
	b.ReportMetric(medianOf(wrP), "MB/s-write-passed")
	b.ReportMetric(medianOf(wrS), "MB/s-write-self")
	b.ReportMetric(medianOf(wrP)/medianOf(wrS), "write-ratio")
	lo, hi = ratioInterval(wrP, wrS)
	b.ReportMetric(lo, "write-ratio-ci95-lo")
	b.ReportMetric(hi, "write-ratio-ci95-hi")
	b.ReportMetric(float64(size>>20), "MiB-file")
	b.Logf("read MB/s passed %v self %v; write MB/s passed %v self %v", rdP, rdS, wrP, wrS)
}

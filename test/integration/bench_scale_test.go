package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/starter"
	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// helloRoot is a one-file in-memory file system: hello.txt.
type helloRoot struct{ fs.Inode }

const helloContent = "hello from an in-process go-fuse server\n"

func (r *helloRoot) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, &fs.MemRegularFile{Data: []byte(helloContent), Attr: fuse.Attr{Mode: 0o644}}, fs.StableAttr{Ino: 2})
	r.AddChild("hello.txt", ch, false)
}

func (r *helloRoot) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = 0o755
	return 0
}

var (
	_ = (fs.NodeOnAdder)((*helloRoot)(nil))
	_ = (fs.NodeGetattrer)((*helloRoot)(nil))
)

// driverSample is what the scale benchmark reads about the driver process.
type driverSample struct {
	rssKiB, hwmKiB, fds, threads int
	goroutines                   int // -1: not measured (no --metrics-address)
	mounts                       int // the whole mount table (other processes' mounts too)
	mountsUnder                  int // mounts below the kubelet directory: the driver's
}

func (s driverSample) String() string {
	g := "not measured"
	if s.goroutines >= 0 {
		g = fmt.Sprint(s.goroutines)
	}
	return fmt.Sprintf("VmRSS %.1f MiB, fds %d, threads %d, goroutines %s, mounts %d (%d under the kubelet dir)",
		float64(s.rssKiB)/1024, s.fds, s.threads, g, s.mounts, s.mountsUnder)
}

// inProcessVolume is a published volume served by a go-fuse server in the
// benchmark process on the fd the driver passed.
type inProcessVolume struct {
	v      *volume
	server *fuse.Server
}

// BenchmarkScale publishes MFCP_BENCH_VOLUMES (default 500) volumes on one
// driver, one after the other, and serves every one of them at once. Each
// volume's FUSE server is an in-process go-fuse server (a one-file in-memory
// file system) that gets its /dev/fuse fd from the driver exactly as
// fuse-starter does (pkg/starter.Receive over the socket in the pod's
// emptyDir, reached through /proc/self/fd/N as a container reaches its
// emptyDir); 500 real sidecar processes would measure the machine's two
// cores rather than the driver. It reports the publish latency (the
// NodePublishVolume call, with all earlier volumes served), the time from
// connecting to the first stat answered, how many volumes read back
// correctly, the driver's VmRSS, fds, threads, goroutines (from
// --metrics-address when the driver has it) and the mount table with all
// volumes served, then unpublishes all and waits (up to 30 s) until fds,
// goroutines and mounts are back at the baseline taken after one warm-up
// volume.
func BenchmarkScale(b *testing.B) {
	n := envInt(b, "MFCP_BENCH_VOLUMES", 500)
	if err := harness.Requirements(); err != nil {
		b.Skip("needs root and /dev/fuse: ", err)
	}
	harness.LeakCheck(b)
	staticBuilds(b)
	bins := harness.Binaries(b)
	k := harness.NewKubelet(b)
	args := []string{"-v=2"}
	metricsURL := ""
	if driverFlag(b, bins.Driver, "metrics-address") {
		addr := harness.FreeAddr(b)
		args = append(args, "--metrics-address", addr)
		metricsURL = "http://" + addr + "/metrics"
	} else {
		b.Logf("the driver has no --metrics-address: goroutines not measured")
	}
	e := &env{bins: bins, k: k, d: harness.StartDriver(b, k, bins, args...)}
	pid := e.d.Pid()

	sample := func() driverSample {
		var s driverSample
		var err error
		if s.rssKiB, err = procStatus(pid, "VmRSS"); err != nil {
			b.Fatal(err)
		}
		s.hwmKiB, _ = procStatus(pid, "VmHWM")
		s.threads, _ = procStatus(pid, "Threads")
		if s.fds, err = fdCount(pid); err != nil {
			b.Fatal(err)
		}
		s.goroutines = -1
		if metricsURL != "" {
			g, err := scrapeGauge(metricsURL, "go_goroutines")
			if err != nil {
				b.Fatalf("scraping the driver's metrics: %v", err)
			}
			s.goroutines = int(g)
		}
		s.mounts = mountCount(b)
		under, err := k.MountsUnder()
		if err != nil {
			b.Fatal(err)
		}
		s.mountsUnder = len(under)
		return s
	}

	var publishLat, serveLat, unpublishLat []time.Duration
	serveOne := func(i int) *inProcessVolume {
		pod := k.NewPod(b, fmt.Sprintf("scale-%d", i))
		dir := openPath(b, pod.AddEmptyDir(emptyDirName))
		defer dir.Close()
		start := time.Now()
		v := e.publish(b, pod, "vol", attrs(), false)
		publishLat = append(publishLat, time.Since(start))

		start = time.Now()
		c, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		dev, _, err := starter.Receive(c, starter.Config{
			SocketPath:     fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), socketName),
			ConnectTimeout: waitLimit,
			Client:         "bench",
		})
		if err != nil {
			b.Fatalf("volume %d: receiving the fd: %v", i, err)
		}
		// go-fuse takes the fd number and closes it when it stops serving.
		fd, err := unix.FcntlInt(dev.Fd(), unix.F_DUPFD_CLOEXEC, 3)
		dev.Close()
		if err != nil {
			b.Fatal(err)
		}
		srv, err := fs.Mount(fmt.Sprintf("/dev/fd/%d", fd), &helloRoot{}, &fs.Options{MountOptions: fuse.MountOptions{Name: "bench"}})
		if err != nil {
			unix.Close(fd)
			b.Fatalf("volume %d: serving the fd: %v", i, err)
		}
		waitStat(b, filepath.Join(v.target, "hello.txt"), nil)
		serveLat = append(serveLat, time.Since(start))
		return &inProcessVolume{v: v, server: srv}
	}
	stop := func(iv *inProcessVolume) {
		unpublishLat = append(unpublishLat, e.unpublish(b, iv.v))
		done := make(chan struct{})
		go func() {
			iv.server.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(waitLimit):
			b.Fatalf("the go-fuse server of %s did not stop after unpublish", iv.v.target)
		}
	}

	// One warm-up volume, so that the baseline has the driver's one-time
	// allocations (gRPC, fusectl, metrics) and the figures below only what
	// volumes cost.
	stop(serveOne(-1))
	publishLat, serveLat, unpublishLat = nil, nil, nil
	time.Sleep(3 * time.Second) // watchers end within one 2 s interval
	base := sample()
	mountinfoBase := mountTableRead(b)
	b.Logf("baseline: %s", base)

	var peak, after driverSample
	var mountinfoServed time.Duration
	var served int
	var publishAll, unpublishAll, settle time.Duration
	for b.Loop() {
		vols := make([]*inProcessVolume, 0, n)
		b.Cleanup(func() {
			for _, iv := range vols {
				if iv != nil && fuseMount(b, iv.v.target) != "" {
					c, cancel := context.WithTimeout(context.Background(), waitLimit)
					e.d.Node.NodeUnpublishVolume(c, iv.v.pod.UnpublishRequest(iv.v.name))
					cancel()
				}
			}
		})
		start := time.Now()
		for i := range n {
			vols = append(vols, serveOne(i))
		}
		publishAll = time.Since(start)
		served = 0
		for _, iv := range vols {
			if got, err := readSmall(filepath.Join(iv.v.target, "hello.txt")); err == nil && got == helloContent {
				served++
			} else {
				b.Errorf("volume %s: read %q, %v", iv.v.target, got, err)
			}
		}
		peak = sample()
		mountinfoServed = mountTableRead(b)
		b.Logf("%d volumes served: %s", n, peak)

		start = time.Now()
		for _, iv := range vols {
			stop(iv)
		}
		unpublishAll = time.Since(start)
		vols = nil

		start = time.Now()
		for {
			after = sample()
			if (after.fds <= base.fds && after.goroutines <= base.goroutines && after.mountsUnder <= base.mountsUnder) ||
				time.Since(start) > 30*time.Second {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		settle = time.Since(start)
		b.Logf("after unpublishing all (%v later): %s", settle.Round(time.Millisecond), after)
	}

	b.ReportMetric(float64(n), "volumes")
	b.ReportMetric(float64(served), "served")
	b.ReportMetric(msOf(percentile(publishLat, 50)), "ms/publish-p50")
	b.ReportMetric(msOf(percentile(publishLat, 99)), "ms/publish-p99")
	b.ReportMetric(msOf(percentile(publishLat, 100)), "ms/publish-max")
	b.ReportMetric(msOf(percentile(serveLat, 50)), "ms/connect-to-served-p50")
	b.ReportMetric(msOf(percentile(serveLat, 99)), "ms/connect-to-served-p99")
	b.ReportMetric(msOf(percentile(unpublishLat, 50)), "ms/unpublish-p50")
	b.ReportMetric(msOf(percentile(unpublishLat, 99)), "ms/unpublish-p99")
	b.ReportMetric(publishAll.Seconds(), "s/publish-and-serve-all")
	b.ReportMetric(unpublishAll.Seconds(), "s/unpublish-all")
	b.ReportMetric(float64(peak.rssKiB)/1024, "MiB-rss-served")
	b.ReportMetric(float64(peak.hwmKiB)/1024, "MiB-rss-peak")
	b.ReportMetric(float64(base.rssKiB)/1024, "MiB-rss-base")
	b.ReportMetric(float64(after.rssKiB)/1024, "MiB-rss-after")
	for _, m := range []struct {
		name             string
		base, peak, post int
	}{
		{"fds", base.fds, peak.fds, after.fds},
		{"threads", base.threads, peak.threads, after.threads},
		{"goroutines", base.goroutines, peak.goroutines, after.goroutines},
		{"mounts", base.mountsUnder, peak.mountsUnder, after.mountsUnder},
	} {
		if m.base < 0 {
			continue // not measured
		}
		b.ReportMetric(float64(m.base), m.name+"-base")
		b.ReportMetric(float64(m.peak), m.name+"-served")
		b.ReportMetric(float64(m.post), m.name+"-after")
	}
	b.ReportMetric(settle.Seconds(), "s/settle")
	b.ReportMetric(msOf(mountinfoBase), "ms/mountinfo-read-base")
	b.ReportMetric(msOf(mountinfoServed), "ms/mountinfo-read-served")
}

// mountTableRead is the median time of what the driver does to look at the
// mounts of one target: read and parse /proc/self/mountinfo, keeping the
// entries of one mountpoint (fusemount.MountsAt).
func mountTableRead(b *testing.B) time.Duration {
	var ds []time.Duration
	for range 21 {
		start := time.Now()
		if _, err := mountinfo.GetMounts(func(i *mountinfo.Info) (bool, bool) { return i.Mountpoint != "/nonexistent", false }); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	return medianDur(ds)
}

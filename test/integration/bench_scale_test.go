package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/starter"
	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

const helloContent = "hello from an in-process go-fuse server\n"

// driverSample is what the scale benchmark reads about the driver process.
type driverSample struct {
	rssKiB, hwmKiB, fds, threads int
	goroutines                   int // from the driver's --metrics-address
	mounts                       int // the whole mount table (other processes' mounts too)
	mountsUnder                  int // mounts below the kubelet directory: the driver's
}

func (s driverSample) String() string {
	return fmt.Sprintf("VmRSS %.1f MiB, fds %d, threads %d, goroutines %d, mounts %d (%d under the kubelet dir)",
		float64(s.rssKiB)/1024, s.fds, s.threads, s.goroutines, s.mounts, s.mountsUnder)
}

// inProcessVolume is a published volume served by a go-fuse server in the
// benchmark process on the fd the driver passed.
type inProcessVolume struct {
	v          *volume
	serverDone <-chan struct{}
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
// --metrics-address) and the mount table with all
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
	metricsAddr := harness.FreeAddr(b)
	e := &env{bins: bins, k: k, d: harness.StartDriver(b, k, bins, "-v=2", "--metrics-address", metricsAddr)}
	pid := e.d.Pid()

	sample := func() driverSample {
		var s driverSample
		var err error
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			b.Fatal(err)
		}
		for _, f := range []struct {
			name string
			to   *int
		}{{"VmRSS", &s.rssKiB}, {"VmHWM", &s.hwmKiB}, {"Threads", &s.threads}} {
			n, _ := harness.StatusField(status, f.name)
			*f.to = int(n)
		}
		if s.fds, err = harness.FDCount(pid); err != nil {
			b.Fatal(err)
		}
		m, err := harness.ScrapeMetrics(metricsAddr)
		if err != nil {
			b.Fatalf("scraping the driver's metrics: %v", err)
		}
		s.goroutines = int(m["go_goroutines"])
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
		done, err := harness.ServeInProcess(dev, "hello.txt", helloContent)
		if err != nil {
			b.Fatalf("volume %d: serving the fd: %v", i, err)
		}
		waitStat(b, filepath.Join(v.target, "hello.txt"), nil)
		serveLat = append(serveLat, time.Since(start))
		return &inProcessVolume{v: v, serverDone: done}
	}
	stop := func(iv *inProcessVolume) {
		unpublishLat = append(unpublishLat, e.unpublish(b, iv.v))
		select {
		case <-iv.serverDone:
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

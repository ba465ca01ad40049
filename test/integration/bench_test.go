package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// BenchmarkServe measures, per volume: NodePublishVolume, the time from
// launching the unprivileged sidecar (fuse-starter + go-fuse loopback, through
// the harness's container emulation) to the first read served through the
// target, and NodeUnpublishVolume.
func BenchmarkServe(b *testing.B) {
	e := benchSetup(b)
	var publish, serve, unpublish time.Duration
	n := 0
	for b.Loop() {
		pod := e.k.NewPod(b, "bench")
		pod.AddEmptyDir(emptyDirName)
		start := time.Now()
		v := e.publish(b, pod, "vol", attrs(), false)
		publish += time.Since(start)
		backing := backingDir(b)
		start = time.Now()
		sidecar := e.starter(b, pod, e.bins.Loopback, "/dev/fd/3", backing)
		waitServed(b, v.target, "hello.txt", sidecar)
		serve += time.Since(start)
		unpublish += e.unpublish(b, v)
		sidecar.Wait(waitLimit)
		n++
	}
	b.ReportMetric(msOf(publish)/float64(n), "ms/publish")
	b.ReportMetric(msOf(serve)/float64(n), "ms/launch-to-served")
	b.ReportMetric(msOf(unpublish)/float64(n), "ms/unpublish")
}

// BenchmarkUnpublishStoppedServer measures NodeUnpublishVolume when the FUSE
// server is stopped with SIGSTOP (the case that hangs naive drivers).
func BenchmarkUnpublishStoppedServer(b *testing.B) {
	e := benchSetup(b)
	var unpublish time.Duration
	n := 0
	for b.Loop() {
		pod := e.k.NewPod(b, "bench")
		pod.AddEmptyDir(emptyDirName)
		v := e.publish(b, pod, "vol", attrs(), false)
		sidecar := e.starter(b, pod, e.bins.Loopback, "/dev/fd/3", backingDir(b))
		waitServed(b, v.target, "hello.txt", sidecar)
		sidecar.SignalGroup(syscall.SIGSTOP)
		unpublish += e.unpublish(b, v)
		sidecar.Kill()
		n++
	}
	b.ReportMetric(msOf(unpublish)/float64(n), "ms/unpublish")
}

// BenchmarkFirstStat compares, in alternating order, the time to the first
// stat answered through a new volume:
//
//   - driver: NodePublishVolume, then fuse-starter (uid 65534, no
//     capabilities) connects, the driver mounts and hands the fd over, and
//     go-fuse's loopback example serves /dev/fd/3;
//   - self: the same loopback binary started as root mounting itself with
//     mount(2) (-directmountstrict), as a privileged container would.
//
// Both are started with plain fork/exec by the benchmark (no container
// runtime emulation), so the difference is what the driver path adds:
// the publish call, the fuse-starter process, connect, mount and handover.
// Each side's clock starts before its first step and stops when
// stat(<mount>/hello.txt) succeeds (polled every 100 µs).
func BenchmarkFirstStat(b *testing.B) {
	e := benchSetup(b)
	backing := backingDir(b)

	driverPath := func() (total, publish time.Duration) {
		pod := e.k.NewPod(b, "bench")
		ed := openPath(b, pod.AddEmptyDir(emptyDirName))
		defer ed.Close()
		// kubelet's part (the target's parent, vol_data.json) before the clock starts
		req := pod.PublishRequest("vol", attrs(), false)
		start := time.Now()
		if _, err := e.d.Node.NodePublishVolume(ctx(b), req); err != nil {
			b.Fatalf("NodePublishVolume: %v", err)
		}
		publish = time.Since(start)
		v := &volume{pod: pod, name: "vol", req: req, target: req.TargetPath}
		p := launch(b, 65534, []*os.File{ed}, e.sidecarArgs(e.bins.Loopback, "-q", "/dev/fd/3", backing)...)
		waitStat(b, filepath.Join(v.target, "hello.txt"), p)
		total = time.Since(start)
		e.unpublish(b, v)
		p.wait(b, waitLimit)
		return total, publish
	}
	selfMount := func() time.Duration {
		mnt := newMountpoint(b)
		start := time.Now()
		p := launch(b, 0, nil, e.bins.Loopback, "-q", "-directmountstrict", "-allow-other", mnt, backing)
		waitStat(b, filepath.Join(mnt, "hello.txt"), p)
		took := time.Since(start)
		stopSelf(b, p, mnt)
		return took
	}
	// Warm up both (page cache of the binaries, the driver's first calls).
	driverPath()
	selfMount()

	var drv, pub, rest, self []time.Duration
	runDriver := func() {
		t, p := driverPath()
		drv, pub, rest = append(drv, t), append(pub, p), append(rest, t-p)
	}
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			runDriver()
			self = append(self, selfMount())
		} else {
			self = append(self, selfMount())
			runDriver()
		}
		i++
	}
	md, ms := medianDur(drv), medianDur(self)
	b.ReportMetric(msOf(md), "ms/driver-median")
	b.ReportMetric(msOf(ms), "ms/self-median")
	b.ReportMetric(msOf(medianDur(pub)), "ms/publish-median")
	b.ReportMetric(msOf(medianDur(rest)), "ms/driver-launch-median")
	b.ReportMetric(msOf(md)/msOf(ms), "ratio")
	lo, hi := ratioInterval(durFloats(drv), durFloats(self))
	b.ReportMetric(lo, "ratio-ci95-lo")
	b.ReportMetric(hi, "ratio-ci95-hi")

	// Where the difference goes, measured apart: the driver's own time from
	// accepting the connection to the fd sent (its log), and what starting
	// fuse-starter costs (fuse-starter --version, launched as above).
	b.StopTimer()
	if hs := handoverTimes(e.d.Logs()); len(hs) > 0 {
		b.ReportMetric(msOf(medianDur(hs)), "ms/handover-median")
	}
	var starterRuns []time.Duration
	for range max(5, len(drv)) {
		start := time.Now()
		p := launch(b, 65534, nil, e.bins.Starter, "--version")
		p.wait(b, waitLimit)
		starterRuns = append(starterRuns, time.Since(start))
	}
	b.ReportMetric(msOf(medianDur(starterRuns)), "ms/starter-exec-median")
	// A gRPC round trip to the driver, for what of the publish is transport.
	var probes []time.Duration
	for range 50 {
		start := time.Now()
		if _, err := e.d.Identity.Probe(ctx(b), &csi.ProbeRequest{}); err != nil {
			b.Fatal(err)
		}
		probes = append(probes, time.Since(start))
	}
	b.ReportMetric(msOf(medianDur(probes)), "ms/grpc-probe-median")
	b.Logf("first stat: driver %v (publish %v), self-mount %v, over %d runs each", md, medianDur(pub), ms, len(drv))
}

// handoverTimes are the driver's accept-to-fd-sent times from its log lines
// "mounted and handed over FUSE fd" (handoverDuration="1.2ms").
func handoverTimes(log string) []time.Duration {
	var out []time.Duration
	for _, m := range handoverRE.FindAllStringSubmatch(log, -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			out = append(out, d)
		}
	}
	return out
}

var handoverRE = regexp.MustCompile(`handoverDuration"?[=:]"?([0-9.]+[µunm]?s)`)

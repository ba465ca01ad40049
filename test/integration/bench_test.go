package integration

import (
	"syscall"
	"testing"
	"time"
)

// BenchmarkServe measures, per volume: NodePublishVolume, the time from
// launching the unprivileged sidecar (fuse-starter + go-fuse loopback) to the
// first read served through the target, and NodeUnpublishVolume.
func BenchmarkServe(b *testing.B) {
	e := setup(b)
	var publish, serve, unpublish time.Duration
	for range b.N {
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
	}
	n := float64(b.N)
	b.ReportMetric(float64(publish.Microseconds())/n/1000, "ms/publish")
	b.ReportMetric(float64(serve.Microseconds())/n/1000, "ms/launch-to-served")
	b.ReportMetric(float64(unpublish.Microseconds())/n/1000, "ms/unpublish")
}

// BenchmarkUnpublishStoppedServer measures NodeUnpublishVolume when the FUSE
// server is stopped with SIGSTOP (the case that hangs naive drivers).
func BenchmarkUnpublishStoppedServer(b *testing.B) {
	e := setup(b)
	var unpublish time.Duration
	for range b.N {
		pod := e.k.NewPod(b, "bench")
		pod.AddEmptyDir(emptyDirName)
		v := e.publish(b, pod, "vol", attrs(), false)
		sidecar := e.starter(b, pod, e.bins.Loopback, "/dev/fd/3", backingDir(b))
		waitServed(b, v.target, "hello.txt", sidecar)
		sidecar.SignalGroup(syscall.SIGSTOP)
		unpublish += e.unpublish(b, v)
		sidecar.Kill()
	}
	b.ReportMetric(float64(unpublish.Microseconds())/float64(b.N)/1000, "ms/unpublish")
}

package integration

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/csidriver"
	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// BenchmarkPublishInProcess runs the driver's NodePublishVolume and
// NodeUnpublishVolume in the benchmark process (no gRPC, no FUSE server), so
// that the publish path can be profiled with the standard tools:
//
//	go test -run '^$' -bench BenchmarkPublishInProcess -benchtime 2000x \
//	    -cpuprofile /tmp/cpu.out ./test/integration/ && go tool pprof -top /tmp/cpu.out
//
// It reports the median publish and unpublish times, and the median time of
// what the driver's state store does for each publish, measured on its own
// in the same directory: create a temporary file, write, fsync, close,
// rename (ms/state-save-median), and the same without the fsync
// (ms/state-save-nofsync-median). CPU profiles do not show the time a
// thread waits in fsync; these two figures do.
func BenchmarkPublishInProcess(b *testing.B) {
	if err := harness.Requirements(); err != nil {
		b.Skip("needs root and /dev/fuse: ", err)
	}
	harness.LeakCheck(b)
	// The driver logs a line per publish and unpublish, as it does at -v=2;
	// into a file here, not onto the benchmark's output.
	logf, err := os.Create(filepath.Join(b.TempDir(), "driver.log"))
	if err != nil {
		b.Fatal(err)
	}
	klog.LogToStderr(false)
	klog.SetOutput(logf)
	b.Cleanup(func() {
		klog.Flush()
		klog.SetOutput(os.Stderr)
		klog.LogToStderr(true)
		logf.Close()
	})
	k := harness.NewKubelet(b)
	stateDir := csidriver.DefaultStateDir(k.Dir)
	d, err := csidriver.New(csidriver.Config{NodeID: "bench-node", KubeletDir: k.Dir, StateDir: stateDir})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(d.Close)
	c := context.Background()

	var pub, unpub []time.Duration
	for b.Loop() {
		pod := k.NewPod(b, "bench")
		pod.AddEmptyDir(emptyDirName)
		req := pod.PublishRequest("vol", attrs(), false)
		start := time.Now()
		if _, err := d.NodePublishVolume(c, req); err != nil {
			b.Fatalf("NodePublishVolume: %v", err)
		}
		pub = append(pub, time.Since(start))
		start = time.Now()
		if _, err := d.NodeUnpublishVolume(c, pod.UnpublishRequest("vol")); err != nil {
			b.Fatalf("NodeUnpublishVolume: %v", err)
		}
		unpub = append(unpub, time.Since(start))
		if err := pod.RemoveTarget("vol"); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	save := func(sync bool) time.Duration {
		var ds []time.Duration
		data := make([]byte, 600) // about a state file's size
		for range 50 {
			start := time.Now()
			f, err := os.CreateTemp(stateDir, ".bench-")
			if err != nil {
				b.Fatal(err)
			}
			f.Write(data)
			if sync {
				f.Sync()
			}
			f.Close()
			dst := filepath.Join(stateDir, "bench.json")
			if err := os.Rename(f.Name(), dst); err != nil {
				b.Fatal(err)
			}
			ds = append(ds, time.Since(start))
			os.Remove(dst)
		}
		return medianDur(ds)
	}
	b.ReportMetric(msOf(medianDur(pub)), "ms/publish-median")
	b.ReportMetric(msOf(percentile(pub, 99)), "ms/publish-p99")
	b.ReportMetric(msOf(medianDur(unpub)), "ms/unpublish-median")
	b.ReportMetric(msOf(save(true)), "ms/state-save-median")
	b.ReportMetric(msOf(save(false)), "ms/state-save-nofsync-median")
}

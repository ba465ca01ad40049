package main

import (
	"fmt"
	"math"
	"strings"
)

// Goals of issue 6.
const (
	goalFirstStatRatio = 1.10 // publish+connect+first stat / self-mount, at most
	goalThroughput     = 0.97 // passed fd / self-mount, at least
	goalPublishP99     = 50.0 // ms, with 500 volumes served
	goalRSS            = 50.0 // MiB, with 500 volumes served
	goalPodReadyExtra  = 1.5  // s, FUSE sidecar pod vs emptyDir-only pod
)

const (
	clusterBegin = "<!-- cluster:begin -->"
	clusterEnd   = "<!-- cluster:end -->"
	clusterRow   = "| (d) "
)

func render(m machineInfo, benchtime string, rs map[string]*result, cluster *result, clusterRuns, prev string) string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }

	p("# Benchmarks\n\n")
	p("Written by `make bench` (`go run ./hack/bench`) on %s from `%s`; the whole run took %s. ", m.date, m.commit, m.took.Round(1e9))
	p("Every comparison below was measured in this one run, its two sides interleaved (alternating which goes first). ")
	p("No test asserts any of these figures: CI runs the benchmarks once (`make bench BENCHTIME=1x BENCH_OUT=...`) only to keep them working.\n\n")
	if benchtime != "" {
		p("> **Short run** (`-benchtime %s` for every benchmark): the figures show that the benchmarks work, not what the driver costs. Run `make bench` for figures worth quoting.\n\n", benchtime)
	}

	p("## Machine\n\n")
	p("| | |\n|---|---|\n")
	p("| OS, kernel | %s, %s |\n", orUnknown(m.os), orUnknown(m.kernel))
	p("| CPU | %s, %d cores as Go sees them |\n", orUnknown(m.cpu), m.cores)
	p("| memory | %s |\n", orUnknown(m.memory))
	p("| Go | %s |\n", orUnknown(m.goVersion))
	p("| load average (1, 5, 15 min) | %s at the start, %s at the end |\n\n", m.loadStart, m.loadEnd)
	p("A load average above the core count means other work competed for the CPUs during the run: the figures are then noisier (and latencies higher) than on an idle machine.\n\n")

	fs, tp, sc := rs["BenchmarkFirstStat"], rs["BenchmarkThroughput"], rs["BenchmarkScale"]

	p("## Figures against the goals\n\n")
	p("| figure | goal | measured | verdict |\n|---|---|---|---|\n")
	// (a)
	if ratio, ok := fs.get("ratio"); ok {
		d, _ := fs.get("ms/driver-median")
		s, _ := fs.get("ms/self-median")
		lo, hi := interval(fs, "ratio", ratio)
		p("| (a) new volume to first stat answered: driver path / the same program mounting itself as root (medians, %s each; 95 %% interval) | ≤ %.2f | **%.2f** (%.2f–%.2f; %s ms vs %s ms) | %s |\n",
			runs(fs.n), goalFirstStatRatio, ratio, lo, hi, f2(d), f2(s), verdictAtMost(ratio, lo, hi, goalFirstStatRatio))
	} else {
		p("| (a) new volume to first stat answered, driver path / root self-mount | ≤ %.2f | – | %s |\n", goalFirstStatRatio, fs.err)
	}
	// (b)
	for _, kind := range []string{"read", "write"} {
		if ratio, ok := tp.get(kind + "-ratio"); ok {
			pv, _ := tp.get("MB/s-" + kind + "-passed")
			sv, _ := tp.get("MB/s-" + kind + "-self")
			size, _ := tp.get("MiB-file")
			lo, hi := interval(tp, kind+"-ratio", ratio)
			p("| (b) sequential %s of %s MiB, passed fd / root self-mount, passthrough off (median over chunk pairs, %s; 95 %% interval) | ≥ %.2f | **%.3f** (%.3f–%.3f; %s vs %s MB/s) | %s |\n",
				kind, f0(size), runs(tp.n), goalThroughput, ratio, lo, hi, f0(pv), f0(sv), verdictAtLeast(ratio, lo, hi, goalThroughput))
		} else {
			p("| (b) sequential %s, passed fd / root self-mount | ≥ %.2f | – | %s |\n", kind, goalThroughput, tp.err)
		}
	}
	// (c)
	if vols, ok := sc.get("volumes"); ok {
		served, _ := sc.get("served")
		p50, _ := sc.get("ms/publish-p50")
		p99, _ := sc.get("ms/publish-p99")
		rss, _ := sc.get("MiB-rss-served")
		hwm, _ := sc.get("MiB-rss-peak")
		p("| (c) %s volumes published and served at once | every one served | %s of %s | %s |\n", f0(vols), f0(served), f0(vols), verdict(served == vols))
		p("| (c) publish latency with up to %s volumes served, p50 / p99 | p99 ≤ %.0f ms | %s / **%s** ms | %s |\n", f0(vols), goalPublishP99, f2(p50), f2(p99), verdict(p99 <= goalPublishP99))
		p("| (c) driver RSS with %s volumes served (VmRSS; VmHWM) | ≤ %.0f MiB | **%s** MiB (peak %s) | %s |\n", f0(vols), goalRSS, f1(rss), f1(hwm), verdict(rss <= goalRSS && hwm <= goalRSS))
		for _, what := range []string{"fds", "goroutines", "mounts"} {
			base, ok := sc.get(what + "-base")
			if !ok {
				p("| (c) driver %s after unpublishing all | back to the baseline | not measured (the driver has no `--metrics-address`) | – |\n", what)
				continue
			}
			peak, _ := sc.get(what + "-served")
			after, _ := sc.get(what + "-after")
			p("| (c) driver %s after unpublishing all | back to the baseline | %s → %s with all served → **%s** | %s |\n", label(what), f0(base), f0(peak), f0(after), verdict(after <= base))
		}
	} else {
		p("| (c) 500 volumes served at once | every one served, p99 ≤ 50 ms, RSS ≤ 50 MiB, back to baseline | – | %s |\n", sc.err)
	}
	// (d)
	dRow, dBlock := renderCluster(cluster, clusterRuns, m.date)
	if cluster == nil {
		if row, block, ok := previousCluster(prev); ok {
			dRow, dBlock = row, block
		}
	}
	p("%s\n\n", dRow)

	p("## Method and details\n\n")
	p("The integration benchmarks (`test/integration/bench*_test.go`) run the real binaries, built static as `make build` and the images build them, the driver at `-v=2` (the DaemonSet's verbosity) on a kubelet-like directory (`test/harness`), as root, with real `/dev/fuse` mounts. `make bench` runs each with its own iteration count (`-benchtime`: (a) %s, (b) %s (two cores make single runs vary by about ±10 %%, in either direction), (c) %s, the per-volume latencies %s, the publish profile %s; `BENCHTIME` overrides them all). Each ratio comes with a 95 %% percentile-bootstrap interval (2000 resamples of both sides' runs): where it holds the goal, the run cannot tell met from missed.\n\n",
		defaultRuns("BenchmarkFirstStat"), defaultRuns("BenchmarkThroughput"), defaultRuns("BenchmarkScale"), defaultRuns("BenchmarkServe"), defaultRuns("BenchmarkPublishInProcess"))

	p("### (a) New volume to first stat answered (`BenchmarkFirstStat`)\n\n")
	p("- **Driver path:** the clock starts before `NodePublishVolume` (kubelet's part, the target's parent and `vol_data.json`, is done before), then `fuse-starter` is started as uid 65534 with no capabilities and connects to the socket in the emptyDir; the driver mounts and passes the fd; `fuse-starter` starts go-fuse's `loopback` example on `/dev/fd/3`. The clock stops when `stat(<target>/hello.txt)` (a file only the backing directory has) succeeds, polled every 100 µs.\n")
	p("- **Self-mount:** the same `loopback` binary started as root with `-directmountstrict -allow-other` on an empty directory, clock from the start to the same stat.\n")
	p("- Both are started with plain fork/exec by the benchmark, not through the harness's container emulation, so that both pay the same launch cost; the emptyDir is reached through `/proc/self/fd/N` (a container sees it at a short path). One warm-up run of each is not counted.\n\n")
	if fs.ok() {
		p("| part (medians) | ms |\n|---|---|\n")
		for _, r := range []struct{ unit, what string }{
			{"ms/driver-median", "driver path, total"},
			{"ms/publish-median", "… `NodePublishVolume` over gRPC"},
			{"ms/grpc-probe-median", "…… for comparison: a gRPC round trip to the driver (`Probe`)"},
			{"ms/driver-launch-median", "… from the publish's return to the first stat answered"},
			{"ms/handover-median", "…… of which the driver's accept → mount → fd sent (its log's `handoverDuration`)"},
			{"ms/starter-exec-median", "`fuse-starter --version` started as uid 65534 until it exits (what starting the extra process costs)"},
			{"ms/self-median", "self-mount, total"},
		} {
			if v, ok := fs.get(r.unit); ok {
				p("| %s | %s |\n", r.what, f2(v))
			}
		}
		p("\n")
	}

	p("### (b) Sequential throughput (`BenchmarkThroughput`)\n\n")
	p("- One backing file of `MFCP_BENCH_FILE_MIB` MiB (default 1024) in a tmpfs, so that neither reads nor writes wait for a disk that other work shares: the FUSE data path is what is measured.\n")
	p("- **Passed fd:** the driver's mount, served by `hack/bench/loopback` (go-fuse's loopback example with kernel FUSE passthrough switched off; go-fuse turns it on by itself when it has CAP_SYS_ADMIN) started by `fuse-starter` as uid 65534 without capabilities in a pod's mount namespace. **Self-mount:** the same binary as root with `-directmountstrict -allow-other`, passthrough off too.\n")
	p("- Same mount options on both, checked in `/proc/self/mountinfo` (the benchmark fails otherwise): the volume asks for `mountOptions: max_read=131072,fsname=<backing dir>,subtype=loopback`, which is what go-fuse passes when it mounts itself (its `max_read` is its MaxWrite, 128 KiB), and both mounts read `rw,nosuid,nodev,relatime` with `default_permissions,allow_other,max_read=131072`; only `user_id`/`group_id` (the server's uid) differ.\n")
	p("- Each iteration mounts both afresh (no FUSE page cache survives), then reads the file through both mounts at once, **taking turns every 64 MiB** (`MFCP_BENCH_CHUNK_MIB`; the side that goes first alternates chunk by chunk) with 1 MiB `read(2)`s, and then overwrites a file of the same size in place through each mount (one each, made before, so that the tmpfs allocates nothing while timed) the same way with 1 MiB `write(2)`s, open to close. Afterwards, untimed, the files' FUSE page cache is dropped (`POSIX_FADV_DONTNEED`).\n")
	p("- **Why turns:** on this VM the speed of either side drifts by ±10 %% over seconds and stalls for tens of milliseconds now and then, which, with one whole file after the other, swamps a difference of a few per cent (the previous method, whole files in alternating order, gave 95 %% intervals of 0.89–1.06). Two chunks that ran next to each other saw the same machine, so **the ratio is the median, over all pairs of chunks, of passed/self throughput** (%s pairs in this run). Its 95 %% interval resamples whole iterations, not single pairs: the pairs of one iteration go through the same two mounts and processes and are not independent. The MB/s figures are the medians of whole-file throughput, open to close. The pass's very last write chunk takes several times as long as the others through whichever mount writes it (measured with the two swapped), so the mounts swap places every iteration.\n\n", f0(orZero(tp, "chunk-pairs")))
	if tp.ok() {
		p("| medians | passed fd, MB/s | self-mount, MB/s | ratio (per chunk pair) | 95 %% interval |\n|---|---|---|---|---|\n")
		for _, kind := range []string{"read", "write"} {
			pv, _ := tp.get("MB/s-" + kind + "-passed")
			sv, _ := tp.get("MB/s-" + kind + "-self")
			r, _ := tp.get(kind + "-ratio")
			lo, hi := interval(tp, kind+"-ratio", r)
			p("| %s | %s | %s | %.3f | %.3f–%.3f |\n", kind, f0(pv), f0(sv), r, lo, hi)
		}
		p("\n")
	}

	p("### (c) 500 volumes at once (`BenchmarkScale`)\n\n")
	p("- One driver; `MFCP_BENCH_VOLUMES` (default 500) pods, each with an emptyDir and one volume, published one after the other, each served before the next is published, so that publish *i* runs with *i*−1 volumes served.\n")
	p("- The FUSE servers are **in-process go-fuse servers** (a one-file in-memory file system) in the benchmark process, each on the fd the driver passed over the volume's socket exactly as `fuse-starter` gets it (`pkg/starter.Receive`): 500 sidecar processes (about 15 MB each) would measure the two cores and the memory of this machine rather than the driver.\n")
	p("- Every volume is read back through its target with all of them mounted. RSS is the driver's `VmRSS` (and `VmHWM`) from `/proc/<pid>/status`, fds count `/proc/<pid>/fd`, goroutines come from the driver's `--metrics-address` (`go_goroutines`), mounts are the mount table's entries below the kubelet directory.\n")
	p("- The baseline is taken after one warm-up volume was served and unpublished (one-time allocations: gRPC, the metrics server). After unpublishing all, the benchmark waits up to 30 s for the figures to return to it.\n\n")
	if sc.ok() {
		p("| | value |\n|---|---|\n")
		for _, r := range []struct{ unit, what string }{
			{"ms/publish-p50", "publish p50 (ms)"},
			{"ms/publish-p99", "publish p99 (ms)"},
			{"ms/publish-max", "publish max (ms)"},
			{"ms/connect-to-served-p50", "connect → first stat answered, p50 (ms)"},
			{"ms/connect-to-served-p99", "connect → first stat answered, p99 (ms)"},
			{"ms/unpublish-p50", "unpublish p50 (ms)"},
			{"ms/unpublish-p99", "unpublish p99 (ms)"},
			{"s/publish-and-serve-all", "publish and serve all, one after the other (s)"},
			{"s/unpublish-all", "unpublish all (s)"},
			{"MiB-rss-base", "driver VmRSS at the baseline (MiB)"},
			{"MiB-rss-served", "driver VmRSS with all served (MiB)"},
			{"MiB-rss-after", "driver VmRSS after unpublishing all (MiB; the Go heap is not returned at once)"},
			{"threads-base", "driver threads at the baseline"},
			{"threads-served", "driver threads with all served"},
			{"s/settle", "time for fds, goroutines and mounts to return to the baseline (s)"},
			{"ms/mountinfo-read-base", "reading and parsing `/proc/self/mountinfo` as the driver does for a target, at the baseline (ms)"},
			{"ms/mountinfo-read-served", "the same with all volumes mounted (ms)"},
		} {
			if v, ok := sc.get(r.unit); ok {
				p("| %s | %s |\n", r.what, trim(v))
			}
		}
		p("\n")
	}

	p("### (d) Pod start-up on a real kubelet (`BenchmarkPodReady`)\n\n")
	p("%s\n\n", dBlock)

	p("### Per-volume latencies (`BenchmarkServe`, `BenchmarkUnpublishStoppedServer`)\n\n")
	p("Through the harness's container emulation (unshare, setpriv, the pod's own mount namespace), one volume at a time; means.\n\n")
	p("| figure | ms |\n|---|---|\n")
	for _, r := range []struct{ bench, unit, what string }{
		{"BenchmarkServe", "ms/publish", "`NodePublishVolume` over gRPC (with kubelet's part: target parent, `vol_data.json`)"},
		{"BenchmarkServe", "ms/launch-to-served", "launch of the sidecar (`unshare` + `setpriv` + `fuse-starter` + `loopback`) to the first read through the target"},
		{"BenchmarkServe", "ms/unpublish", "`NodeUnpublishVolume` of a served volume"},
		{"BenchmarkUnpublishStoppedServer", "ms/unpublish", "`NodeUnpublishVolume` with the FUSE server stopped (SIGSTOP) and a reader blocked on it"},
	} {
		if v, ok := rs[r.bench].get(r.unit); ok {
			p("| %s | %s |\n", r.what, f2(v))
		} else {
			p("| %s | %s |\n", r.what, rs[r.bench].err)
		}
	}
	p("\n")

	p("## Findings\n\n")
	p("%s", findings(rs))

	p("## Running the benchmarks\n\n")
	p("```sh\n")
	p("make bench                                   # as root; writes docs/benchmarks.md (about 2 minutes)\n")
	p("make bench BENCHTIME=1x BENCH_OUT=/tmp/b.md  # what CI runs: every benchmark once, figures not quoted\n")
	p("MFCP_BENCH_CLUSTER=1 make bench              # also (d), on hack/local-cluster (brought up if needed)\n")
	p("go test -run '^$' -bench BenchmarkFirstStat -benchtime 30x ./test/integration/   # one benchmark\n")
	p("```\n\n")
	p("Settings: `MFCP_BENCH_FILE_MIB` (file size of (b), 1024), `MFCP_BENCH_VOLUMES` (volumes of (c), 500), `MFCP_BENCH_CLUSTER=1` (run (d)); for (d), `KUBECONFIG` to use a running cluster instead of `hack/local-cluster`, `MFCP_KEEP_CLUSTER=1` to leave a cluster it started running. `BenchmarkPublishInProcess` runs the driver's publish path inside the test process; `make bench` runs it with `-cpuprofile` and summarizes the profile under Findings (`go tool pprof` on it by hand: see the benchmark's comment).\n\n")

	if section := keepSection(prev, "## Real FUSE programs"); section != "" {
		p("%s", section)
	}
	return w.String()
}

// renderCluster renders (d): the summary row and the details block, between
// markers so that a run without MFCP_BENCH_CLUSTER=1 can keep them.
func renderCluster(r *result, runs, date string) (row, block string) {
	how := "Run with `MFCP_BENCH_CLUSTER=1 make bench`: `hack/bench-cluster.sh` brings up `hack/local-cluster` (or uses `KUBECONFIG`), deploys `deploy/`, and runs `BenchmarkPodReady` of `test/e2e`."
	if r == nil {
		return fmt.Sprintf("%spod Ready, FUSE sidecar pod vs the same pod with an emptyDir only | ≤ +%.1f s | not measured in this run | – |", clusterRow, goalPodReadyExtra),
			clusterBegin + "\nNot measured in this run. " + how + "\n" + clusterEnd
	}
	if !r.ok() {
		return fmt.Sprintf("%spod Ready, FUSE sidecar pod vs the same pod with an emptyDir only | ≤ +%.1f s | – | %s |", clusterRow, goalPodReadyExtra, r.err),
			clusterBegin + "\nThe cluster benchmark failed in this run (" + r.err + "). " + how + "\n" + clusterEnd
	}
	fuse, _ := r.get("s/ready-fuse-median")
	base, _ := r.get("s/ready-emptydir-median")
	extra := fuse - base
	row = fmt.Sprintf("%spod Ready, FUSE sidecar pod (README's pod: startupProbe on the mount) vs the same pod with an emptyDir only (medians, %s each, run of %s) | ≤ +%.1f s | **%+.2f s** (%s s vs %s s) | %s |",
		clusterRow, pods(r.n), date, goalPodReadyExtra, extra, f2(fuse), f2(base), verdict(extra <= goalPodReadyExtra))
	var b strings.Builder
	b.WriteString(clusterBegin + "\n")
	fmt.Fprintf(&b, "Measured on %s, %d pods of each kind, alternating. %s\n\n", date, r.n, how)
	b.WriteString("- Every pod has an app container (busybox, `sleep`) and a volume at `/data`. **emptyDir only:** `/data` is an emptyDir. **FUSE sidecar:** the README's pod: a native sidecar (init container with `restartPolicy: Always`) running `fuse-starter` and `hack/bench/loopback` (go-fuse's loopback example; static binaries from a hostPath, in the busybox image) as uid 65534 without capabilities, its startupProbe (`periodSeconds: 1`) checking that `/data` is a FUSE mount, and the CSI volume at `/data` of both containers (`HostToContainer`). **FUSE sidecar, postStart:** the same, but instead of the startupProbe a postStart hook that polls every 50 ms until `/data` is a FUSE mount (kubelet starts the next container once a sidecar's postStart hook completed). **FUSE sidecar, no probe:** the same without either (the app may start before the mount is served).\n")
	b.WriteString("- Time from `kubectl create` to `kubectl wait --for=condition=Ready` returning (both measured by the benchmark; the same client overhead on every pod), and, for the FUSE pods, until the node sees the file served at the volume's target (polled every 10 ms on the node).\n\n")
	b.WriteString("| pod (medians, s) | to Ready | to served on the node |\n|---|---|---|\n")
	add := func(what, ready, served string) {
		rv, ok := r.get(ready)
		if !ok {
			return
		}
		sv := "–"
		if v, ok := r.get(served); ok {
			sv = f2(v)
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", what, f2(rv), sv)
	}
	add("emptyDir only", "s/ready-emptydir-median", "")
	add("FUSE sidecar with the README's startupProbe", "s/ready-fuse-median", "s/served-fuse-median")
	add("FUSE sidecar with a postStart hook waiting for the mount instead (polls every 50 ms)", "s/ready-fuse-poststart-median", "s/served-fuse-poststart-median")
	add("FUSE sidecar without a probe", "s/ready-fuse-noprobe-median", "s/served-fuse-noprobe-median")
	if sv, ok := r.get("s/served-fuse-median"); ok {
		np, _ := r.get("s/ready-fuse-noprobe-median")
		fmt.Fprintf(&b, "\nThe FUSE volume is served on the node %s s after `kubectl create`, against %s s for the emptyDir-only pod to be Ready", f2(sv), f2(base))
		if sv <= base {
			b.WriteString(": publish, the sidecar container, connect, mount and handover fit in the time kubelet takes to start a pod anyway.")
		} else {
			fmt.Fprintf(&b, " (%+.2f s).", sv-base)
		}
		fmt.Fprintf(&b, " What the README's pod adds is its startupProbe: kubelet runs it once a period (at least 1 s), so the app container starts only at the first probe after the mount is there: %s s of the %+.2f s. Without the probe the pod is Ready %+.2f s after the emptyDir-only pod, but its app may start before the volume is served.",
			f2(fuse-np), extra, np-base)
		if ps, ok := r.get("s/ready-fuse-poststart-median"); ok {
			fmt.Fprintf(&b, " A postStart hook that waits for the mount holds the app back just as well without the period: %+.2f s after the emptyDir-only pod (a change to the README's pod, not to the driver).", ps-base)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n" + clusterEnd)
	return row, b.String()
}

// previousCluster finds (d) of an earlier run in the existing document.
func previousCluster(prev string) (row, block string, ok bool) {
	i, j := strings.Index(prev, clusterBegin), strings.Index(prev, clusterEnd)
	if i < 0 || j < i || strings.Contains(prev[i:j], "Not measured in this run") || strings.Contains(prev[i:j], "failed in this run") {
		return "", "", false
	}
	for _, line := range strings.Split(prev, "\n") {
		if strings.HasPrefix(line, clusterRow) {
			row = line
		}
	}
	if row == "" {
		return "", "", false
	}
	return row, "Not re-measured in this run; kept from an earlier run (its date is in the row above).\n\n" + prev[i:j+len(clusterEnd)], true
}

// keepSection returns a "## " section of the previous document, up to the next one.
func keepSection(prev, heading string) string {
	i := strings.Index(prev, "\n"+heading)
	if i < 0 {
		return ""
	}
	rest := prev[i+1:]
	if j := strings.Index(rest[len(heading):], "\n## "); j >= 0 {
		rest = rest[:len(heading)+j+1]
	}
	return strings.TrimRight(rest, "\n") + "\n"
}

func runs(n int) string {
	if n == 1 {
		return "1 run"
	}
	return fmt.Sprintf("%d runs", n)
}

func pods(n int) string {
	if n == 1 {
		return "1 pod"
	}
	return fmt.Sprintf("%d pods", n)
}

// interval is a ratio's 95 % bootstrap interval as the benchmark reported it
// (<metric>-ci95-lo/-hi), or the point value twice for an older run.
func interval(r *result, metric string, point float64) (lo, hi float64) {
	lo, okLo := r.get(metric + "-ci95-lo")
	hi, okHi := r.get(metric + "-ci95-hi")
	if !okLo || !okHi {
		return point, point
	}
	return lo, hi
}

// verdictAtLeast judges a ratio whose goal is a lower bound, by its point
// value, and says when the 95 % interval straddles the goal: then the run
// cannot tell met from missed.
func verdictAtLeast(point, lo, hi, goal float64) string {
	switch {
	case lo >= goal:
		return "met"
	case point >= goal:
		return "met (the interval crosses the goal)"
	case hi >= goal:
		return "**missed** (the interval crosses the goal)"
	}
	return "**missed**"
}

// verdictAtMost is verdictAtLeast for a goal that is an upper bound.
func verdictAtMost(point, lo, hi, goal float64) string {
	return verdictAtLeast(-point, -hi, -lo, -goal)
}

// orZero is a metric's value, or 0 when the benchmark did not report it.
func orZero(r *result, unit string) float64 {
	v, _ := r.get(unit)
	return v
}

// defaultRuns is the iteration count make bench gives a benchmark.
func defaultRuns(name string) string {
	for _, bm := range integration {
		if bm.name == name {
			return strings.TrimSuffix(bm.benchtime, "x")
		}
	}
	return "?"
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "**missed**"
}

func label(what string) string {
	if what == "mounts" {
		return "mounts (below the kubelet dir)"
	}
	return what
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

func f0(v float64) string { return fmt.Sprintf("%.0f", v) }
func f1(v float64) string { return fmt.Sprintf("%.1f", v) }
func f2(v float64) string { return fmt.Sprintf("%.2f", v) }

// trim prints integers without decimals.
func trim(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e9 {
		return fmt.Sprintf("%.0f", v)
	}
	return f2(v)
}

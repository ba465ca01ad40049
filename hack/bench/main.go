// Command bench runs the project's benchmarks and writes docs/benchmarks.md:
// the machine, the method and every figure against its goal, all from one
// run. It is what `make bench` runs (as root, with /dev/fuse).
//
//	go run ./hack/bench [-out docs/benchmarks.md] [-benchtime Nx]
//
// It compiles the integration tests once and runs each benchmark of
// test/integration with its own iteration count (-benchtime overrides them
// all: CI uses 1x to keep the benchmarks working without quoting figures).
// With MFCP_BENCH_CLUSTER=1 it also runs hack/bench-cluster.sh, the pod
// start-up comparison on a real kubelet (hack/local-cluster). No figure is
// asserted: the command fails only when a benchmark fails or cannot run.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// benchmark is one Go benchmark the command runs.
type benchmark struct {
	pkg, name string
	benchtime string // default iteration count
}

var integration = []benchmark{
	{"./test/integration", "BenchmarkFirstStat", "30x"},
	{"./test/integration", "BenchmarkThroughput", "16x"},
	{"./test/integration", "BenchmarkScale", "1x"},
	{"./test/integration", "BenchmarkServe", "20x"},
	{"./test/integration", "BenchmarkUnpublishStoppedServer", "20x"},
	{"./test/integration", "BenchmarkPublishInProcess", "1000x"},
}

// result is the parsed line of one benchmark.
type result struct {
	n       int
	metrics map[string]float64
	err     string // why there is no result
	took    time.Duration
	profile map[string]float64 // CPU ms per call by part (profiled benchmark)
}

func (r *result) ok() bool { return r != nil && r.err == "" }

func (r *result) get(unit string) (float64, bool) {
	if !r.ok() {
		return 0, false
	}
	v, ok := r.metrics[unit]
	return v, ok
}

func main() {
	out := flag.String("out", "docs/benchmarks.md", "the Markdown file to write")
	benchtime := flag.String("benchtime", "", "iterations (Nx) or duration for every benchmark, overriding the defaults (CI: 1x)")
	flag.Parse()
	if err := run(*out, *benchtime); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(out, benchtime string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if !filepath.IsAbs(out) {
		out = filepath.Join(root, out)
	}
	if os.Geteuid() != 0 {
		return errors.New("the benchmarks mount FUSE file systems and start a privileged driver: run as root (sudo make bench)")
	}
	started := time.Now()
	m := machine(root)

	tmp, err := os.MkdirTemp("", "mfcp-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	testBin := filepath.Join(tmp, "integration.test")
	logf("compiling the integration tests")
	if b, err := command(root, "go", "test", "-c", "-o", testBin, "./test/integration").CombinedOutput(); err != nil {
		return fmt.Errorf("go test -c ./test/integration: %v\n%s", err, b)
	}

	results := map[string]*result{}
	var failed []string
	for _, bm := range integration {
		bt := bm.benchtime
		if benchtime != "" {
			bt = benchtime
		}
		logf("%s (-benchtime %s)", bm.name, bt)
		var extra []string
		prof := filepath.Join(tmp, bm.name+".cpu")
		if bm.name == profiled {
			extra = []string{"-test.cpuprofile", prof}
		}
		r := runBenchmark(filepath.Join(root, "test", "integration"), testBin, bm.name, bt, extra)
		if bm.name == profiled && r.ok() {
			r.profile = cpuProfile(testBin, prof, r.n)
		}
		results[bm.name] = r
		if !r.ok() {
			failed = append(failed, bm.name+": "+r.err)
		}
	}

	var cluster *result
	clusterRuns := "5x"
	if benchtime != "" {
		clusterRuns = benchtime
	}
	if os.Getenv("MFCP_BENCH_CLUSTER") == "1" {
		logf("BenchmarkPodReady on the local cluster (hack/bench-cluster.sh, -benchtime %s)", clusterRuns)
		cluster = runCluster(root, clusterRuns)
		if !cluster.ok() {
			failed = append(failed, "BenchmarkPodReady: "+cluster.err)
		}
	} else {
		logf("skipping the cluster benchmark (set MFCP_BENCH_CLUSTER=1 to run it)")
	}

	if allFailed(results) {
		return fmt.Errorf("no benchmark produced figures; %s not written:\n  %s", out, strings.Join(failed, "\n  "))
	}
	m.loadEnd = loadavg()
	m.took = time.Since(started)
	prev, _ := os.ReadFile(out)
	if len(prev) == 0 && out != filepath.Join(root, "docs", "benchmarks.md") {
		prev, _ = os.ReadFile(filepath.Join(root, "docs", "benchmarks.md"))
	}
	doc := render(m, benchtime, results, cluster, clusterRuns, string(prev))
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(out, []byte(doc), 0o644); err != nil {
		return err
	}
	logf("wrote %s (%s)", out, m.took.Round(time.Second))
	if len(failed) > 0 {
		return fmt.Errorf("benchmarks failed:\n  %s", strings.Join(failed, "\n  "))
	}
	return nil
}

func allFailed(rs map[string]*result) bool {
	for _, r := range rs {
		if r.ok() {
			return false
		}
	}
	return true
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "== "+format+"\n", args...)
}

func command(dir, name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Dir = dir
	return c
}

func moduleRoot() (string, error) {
	b, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(b))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run from the meta-fuse-csi-plugin repository")
	}
	return filepath.Dir(gomod), nil
}

// benchLine matches a result line: name, GOMAXPROCS suffix, N, then value/unit pairs.
var benchLine = regexp.MustCompile(`^(Benchmark[^\s]*?)(?:-\d+)?\s+(\d+)\s+(.*)$`)

// runBenchmark runs one benchmark of a compiled test binary in dir, echoing
// its output to stderr, and parses its result line.
func runBenchmark(dir, bin, name, benchtime string, extra []string) *result {
	start := time.Now()
	args := append([]string{"-test.run", "^$", "-test.bench", "^" + name + "$", "-test.benchtime", benchtime,
		"-test.count", "1", "-test.timeout", "60m"}, extra...)
	return parseRun(command(dir, bin, args...), name, start)
}

// profiled is the benchmark whose CPU profile the report summarizes.
const profiled = "BenchmarkPublishInProcess"

// profiledFuncs are the parts of the publish path the report lists, with
// the pprof name they are found under.
var profiledFuncs = []struct{ what, fn string }{
	{"NodePublishVolume, all", "csidriver.(*Driver).NodePublishVolume"},
	{"the state file (create, write, rename)", "csidriver.(*stateStore).Save"},
	{"the target directory", "csidriver.(*Driver).makeTarget"},
	{"the socket in the emptyDir", "safefs.(*Dir).ListenUnix"},
	{"reading /proc/self/mountinfo", "mountinfo.GetMounts"},
	{"logging", "klog/v2.(*loggingT).printS"},
}

// cpuProfile summarizes a CPU profile of the publish path: CPU time per
// call of the functions in profiledFuncs (their cumulative time, restricted
// to samples under NodePublishVolume, divided by the number of calls).
func cpuProfile(bin, prof string, calls int) map[string]float64 {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=10000", "-focus", `NodePublishVolume`, bin, prof).Output()
	if err != nil || calls == 0 {
		return nil
	}
	res := map[string]float64{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		name := strings.TrimSuffix(strings.Join(f[5:], " "), " (inline)")
		for _, pf := range profiledFuncs {
			if strings.HasSuffix(name, pf.fn) {
				if d, err := time.ParseDuration(f[3]); err == nil {
					res[pf.what] += float64(d) / 1e6 / float64(calls)
				}
			}
		}
	}
	return res
}

// parseRun runs cmd, echoes its output to stderr and parses the result line of name.
func parseRun(cmd *exec.Cmd, name string, start time.Time) *result {
	var buf bytes.Buffer
	w := io.MultiWriter(&buf, os.Stderr)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	runErr := cmd.Run()
	r := parseOutput(buf.String(), name)
	r.took = time.Since(start)
	if r.err == "" && runErr != nil {
		r.err = fmt.Sprintf("exited with %v", runErr)
	}
	return r
}

func parseOutput(output, name string) *result {
	r := &result{}
	sc := bufio.NewScanner(strings.NewReader(output))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "--- SKIP: "+name) {
			r.err = "skipped"
		}
		if strings.HasPrefix(line, "--- FAIL: "+name) {
			r.err = "failed"
		}
		mm := benchLine.FindStringSubmatch(line)
		if mm == nil || mm[1] != name {
			continue
		}
		n, _ := strconv.Atoi(mm[2])
		r.n = n
		r.metrics = map[string]float64{}
		f := strings.Fields(mm[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err == nil {
				r.metrics[f[i+1]] = v
			}
		}
	}
	if r.metrics == nil && r.err == "" {
		r.err = "no result line"
	}
	if r.err != "" {
		r.metrics = nil
	}
	return r
}

// runCluster runs hack/bench-cluster.sh, which brings up (or reuses) the
// local cluster, deploys the driver and runs BenchmarkPodReady of test/e2e.
func runCluster(root, benchtime string) *result {
	cmd := command(root, filepath.Join(root, "hack", "bench-cluster.sh"))
	cmd.Env = append(os.Environ(), "BENCHTIME="+benchtime)
	return parseRun(cmd, "BenchmarkPodReady", time.Now())
}

// machineInfo describes where the figures come from.
type machineInfo struct {
	date, kernel, os, cpu, memory, goVersion, commit string
	cores                                            int
	loadStart, loadEnd                               string
	took                                             time.Duration
}

func machine(root string) machineInfo {
	m := machineInfo{date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), cores: runtime.NumCPU(), loadStart: loadavg()}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.kernel = cstr(u.Release[:]) + " (" + cstr(u.Machine[:]) + ")"
	}
	m.os = keyValue("/etc/os-release", "PRETTY_NAME", "=")
	m.cpu = keyValue("/proc/cpuinfo", "model name", ":")
	if kb, err := strconv.Atoi(strings.Fields(keyValue("/proc/meminfo", "MemTotal", ":") + " 0")[0]); err == nil {
		m.memory = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	}
	if b, err := exec.Command("go", "env", "GOVERSION").Output(); err == nil {
		m.goVersion = strings.TrimSpace(string(b))
	}
	if b, err := command(root, "git", "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		m.commit = strings.TrimSpace(string(b))
	}
	return m
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func keyValue(file, key, sep string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, sep)
		if ok && strings.TrimSpace(k) == key {
			return strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return ""
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// sortedKeys is used to list a result's metrics deterministically.
func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

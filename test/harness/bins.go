package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
)

// Bins holds the paths of the binaries the integration tests run. They live in a directory
// that uid 65534 can read and execute (0755 all the way up), because the pod-side processes
// run them as that user.
type Bins struct {
	// Dir is the directory holding all binaries.
	Dir string
	// Driver is ./cmd/meta-fuse-csi-plugin.
	Driver string
	// Starter is ./cmd/fuse-starter.
	Starter string
	// Loopback is go-fuse's example loopback server (usage: loopback [flags] MOUNTPOINT ORIGINAL);
	// it is a tool dependency in go.mod.
	Loopback string
	// PrivCheck is ./test/tools/privcheck.
	PrivCheck string
	// Proxy is ./cmd/fusermount3-proxy, which pod-side processes get over
	// /usr/bin/fusermount3 and /usr/bin/fusermount (RunOptions.Binds).
	Proxy string
}

// Package paths of the binaries in Bins.
const (
	DriverPkg    = "./cmd/meta-fuse-csi-plugin"
	StarterPkg   = "./cmd/fuse-starter"
	LoopbackPkg  = "github.com/hanwen/go-fuse/v2/example/loopback"
	PrivCheckPkg = "./test/tools/privcheck"
	ProxyPkg     = "./cmd/fusermount3-proxy"
)

// build state shared by the whole test process: one bin directory, one build per package.
var builds struct {
	sync.Mutex
	dir    string
	dirErr error
	pkgs   map[string]*buildResult
}

type buildResult struct {
	once sync.Once
	path string
	err  error
}

var (
	binsOnce sync.Once
	bins     *Bins
	binsErr  error
)

// Binaries builds the driver, fuse-starter, go-fuse's loopback server and privcheck once per
// test process (later calls, also from parallel tests, reuse the result) and returns their
// paths; it fails the test with the go build output when a build fails. Builds run from the
// module root (found with `go env GOMOD`) into a fresh 0755 directory /tmp/mfcp-bin-*.
//
// The directory is removed by CleanupBinaries, which a TestMain should call after m.Run; a
// process that does not call it leaves the directory (a few tens of MB) in /tmp.
func Binaries(t T) *Bins {
	t.Helper()
	binsOnce.Do(func() {
		pkgs := []string{DriverPkg, StarterPkg, LoopbackPkg, PrivCheckPkg, ProxyPkg}
		paths := make([]string, len(pkgs))
		errs := make([]error, len(pkgs))
		var wg sync.WaitGroup
		for i, p := range pkgs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				paths[i], errs[i] = buildPackage(p)
			}()
		}
		wg.Wait()
		var failures []string
		for _, err := range errs {
			if err != nil {
				failures = append(failures, err.Error())
			}
		}
		if len(failures) > 0 {
			binsErr = fmt.Errorf("building the test binaries:\n%s", strings.Join(failures, "\n"))
			return
		}
		bins = &Bins{Dir: filepath.Dir(paths[0]), Driver: paths[0], Starter: paths[1], Loopback: paths[2], PrivCheck: paths[3], Proxy: paths[4]}
	})
	if binsErr != nil {
		t.Fatalf("%v", binsErr)
	}
	return bins
}

// BuildPackage builds one Go package of this module (a "./..." path relative to the module
// root, or an import path the module depends on) into the shared bin directory, once per
// test process, and returns the binary's path (named after the package's last element). It
// is what Binaries uses, exported for tests that need a further helper binary without
// building the driver.
func BuildPackage(t T, pkg string) string {
	t.Helper()
	p, err := buildPackage(pkg)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return p
}

// BuildPackageWithTags is BuildPackage with build tags (comma-separated);
// the binary is named <last element>-<tags>. The fault tests build the
// driver with the faultinject tag this way.
func BuildPackageWithTags(t T, pkg, tags string) string {
	t.Helper()
	p, err := buildPackageTags(pkg, tags)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return p
}

func buildPackage(pkg string) (string, error) { return buildPackageTags(pkg, "") }

func buildPackageTags(pkg, tags string) (string, error) {
	builds.Lock()
	if builds.dir == "" && builds.dirErr == nil {
		builds.dir, builds.dirErr = makeBinDir()
	}
	dir, dirErr := builds.dir, builds.dirErr
	if builds.pkgs == nil {
		builds.pkgs = map[string]*buildResult{}
	}
	key := pkg + "@" + tags
	r := builds.pkgs[key]
	if r == nil {
		r = &buildResult{}
		builds.pkgs[key] = r
	}
	builds.Unlock()
	if dirErr != nil {
		return "", dirErr
	}
	r.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			r.err = err
			return
		}
		out := filepath.Join(dir, path.Base(pkg))
		args := []string{"build", "-o", out}
		if tags != "" {
			out += "-" + strings.ReplaceAll(tags, ",", "-")
			args = []string{"build", "-tags", tags, "-o", out}
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Dir = root
		b, err := cmd.CombinedOutput()
		if err != nil {
			r.err = fmt.Errorf("go build -o %s %s (in %s): %v\n%s", out, pkg, root, err, indent(string(b)))
			return
		}
		if err := os.Chmod(out, 0o755); err != nil {
			r.err = err
			return
		}
		r.path = out
	})
	return r.path, r.err
}

func makeBinDir() (string, error) {
	// makeDir chmods to 0755, and /tmp itself is 1777, so uid 65534 can reach the binaries.
	return makeDir("bin", 0o755)
}

// moduleRoot returns the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD: not inside the meta-fuse-csi-plugin module (got %q); run from the repository", gomod)
	}
	return filepath.Dir(gomod), nil
}

// CleanupBinaries removes the bin directory built by Binaries/BuildPackage and forgets the
// builds, so that a later Binaries call builds again. Call it from TestMain after m.Run (it is
// not a T.Cleanup because the binaries are shared by all tests of the process).
func CleanupBinaries() error {
	builds.Lock()
	dir := builds.dir
	builds.dir, builds.dirErr, builds.pkgs = "", nil, nil
	builds.Unlock()
	binsOnce = sync.Once{}
	bins, binsErr = nil, nil
	if dir == "" {
		return nil
	}
	return os.RemoveAll(dir)
}

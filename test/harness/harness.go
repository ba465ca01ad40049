// Package harness is a kubelet-like integration harness for meta-fuse-csi-plugin that needs no
// Kubernetes: it plays kubelet (a shared kubelet directory, pod directories, emptyDirs and the
// exact NodePublishVolume requests kubelet sends), the container runtime (pod-side processes in
// their own mount namespace, as an unprivileged user, with volumes bind-mounted at short paths
// and HostToContainer propagation) and the node (the driver binary, a local sshd for sshfs).
//
// It is used by integration tests and by a demo program, so it depends only on the small T
// interface below, never on package testing. Every resource it creates is released by a
// T.Cleanup function that runs even when the test failed or a step half-completed; mounts are
// found through /proc/self/mountinfo only (never by stat'ing a possibly hung FUSE mount) and
// FUSE connections are aborted before they are detached.
//
// Everything it creates on the host lives under /tmp/mfcp-<kind>-<pid>-* (short paths: Unix socket paths are
// limited to 108 bytes, and uid 65534 must be able to reach the binaries and the pod views,
// which rules out t.TempDir()'s 0700 parents). Every process it starts carries the environment
// variable MFCP_HARNESS_PID=<pid of the test process>, which LeakCheck uses to find leftovers.
//
// A test process that dies without running its cleanups (a go test -timeout panic) leaves
// mounts and directories behind; its pod processes, driver and sshd die with it (parent-death
// signal). SweepStale, called from TestMain, removes such leftovers of dead test processes.
//
// The harness needs root, /dev/fuse, unshare, setpriv and mount (util-linux); see Requirements.
//
// Typical use:
//
//	func TestMain(m *testing.M) {
//		harness.SweepStale() // leftovers of a test binary killed by a timeout
//		code := m.Run()
//		harness.CleanupBinaries()
//		os.Exit(code)
//	}
//
//	func TestSomething(t *testing.T) {
//		if err := harness.Requirements(); err != nil {
//			t.Skip(err)
//		}
//		harness.LeakCheck(t) // first, so that it checks after all other cleanups
//		bins := harness.Binaries(t)
//		k := harness.NewKubelet(t)
//		d := harness.StartDriver(t, k, bins)
//		pod := k.NewPod(t, "mypod")
//		ed := pod.AddEmptyDir("fuse-fd-passing")
//		req := pod.PublishRequest("vol", map[string]string{"fdPassingEmptyDirName": "fuse-fd-passing", "fdPassingSocketName": "fuse.sock"}, false)
//		_, err := d.Node.NodePublishVolume(ctx, req)
//		backing := harness.NewDir(t, 0o755) // then chown to 65534
//		pod.Run(t, harness.RunOptions{
//			Mounts: []harness.Mount{{Name: "fd", Source: ed}},
//			Args:   []string{bins.Starter, "--fd-passing-socket-path", pod.ViewPath("fd") + "/fuse.sock", "--", bins.Loopback, "/dev/fd/3", backing},
//		})
//		app := pod.Run(t, harness.RunOptions{Mounts: []harness.Mount{{Name: "data", Source: req.TargetPath}}, Args: ...})
//		// app sees the FUSE mount at pod.ViewPath("data")
//	}
//
// LeakCheck compares against a snapshot taken when it is called, so it does not suit tests
// that run harness processes in parallel (t.Parallel) within one test binary: it would report
// the other tests' processes.
package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// T is the subset of testing.TB the harness needs; *testing.T satisfies it and the demo provides its own.
//
// If the value also has a "Failed() bool" method (as *testing.T does), cleanups use it to decide
// whether to log the tails of the driver's and the pod processes' output.
type T interface {
	Helper()
	Logf(string, ...any)
	Fatalf(string, ...any)
	Cleanup(func())
	TempDir() string
}

// TagEnv is the name of the environment variable the harness sets, to the test process's pid,
// in every process it starts (driver, pod processes, sshd), so that leftovers can be found by
// LeakCheck even after they were re-parented away from the test process.
const TagEnv = "MFCP_HARNESS_PID"

// NobodyUID and NobodyGID are the default pod-side user: nobody/nogroup on Debian.
const (
	NobodyUID = 65534
	NobodyGID = 65534
)

// tmpRoot is where every host-side directory of the harness is created. Not os.TempDir():
// paths must stay short (sun_path) and reachable by uid 65534.
const tmpRoot = "/tmp"

// tmpPrefix starts the name of every directory the harness creates in tmpRoot.
const tmpPrefix = "mfcp-"

// podPATH is the PATH of pod-side processes, as in a typical container image.
const podPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func tagEnvVar() string { return TagEnv + "=" + strconv.Itoa(os.Getpid()) }

// Requirements reports whether the harness can run here: nil when running as root with
// /dev/fuse and the util-linux tools unshare, setpriv and mount present, otherwise an error
// naming everything that is missing. Tests call it first and t.Skip with its error, so that a
// developer machine without root skips instead of failing obscurely.
func Requirements() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, fmt.Sprintf("root (running as euid %d)", os.Geteuid()))
	}
	if fi, err := os.Stat("/dev/fuse"); err != nil {
		missing = append(missing, fmt.Sprintf("/dev/fuse (%v)", err))
	} else if fi.Mode()&os.ModeCharDevice == 0 {
		missing = append(missing, "/dev/fuse as a character device (it is "+fi.Mode().String()+")")
	}
	for _, tool := range []string{"unshare", "setpriv", "mount", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, fmt.Sprintf("%s in PATH", tool))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("harness requirements not met: missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// failed reports whether t says the test failed; T implementations without Failed() count as
// not failed.
func failed(t T) bool {
	f, ok := t.(interface{ Failed() bool })
	return ok && f.Failed()
}

// runCmd runs a short command to completion and returns its combined output; the error names
// the command and includes the output, so that a failure explains itself.
func runCmd(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w; output:\n%s", shellQuote(append([]string{name}, args...)), err, indent(out.String()))
	}
	return out.String(), nil
}

// shellQuote renders argv for error messages and logs.
func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r == '/' || r == '-' || r == '_' || r == '.' || r == '=' || r == ':' || r == ',' || r == '+' ||
				(r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z'))
		}) < 0 {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    (no output)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// tail returns at most the last n bytes of s, cut at a line start when possible.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)-1 {
		s = s[i+1:]
	}
	return "[...]\n" + s
}

// ownedDirs records every directory the harness created under tmpRoot in this process, so
// that LeakCheck can look for mounts left under them without being confused by other test
// processes (go test runs packages in parallel) that use the same prefix.
var ownedDirs struct {
	sync.Mutex
	dirs []string
}

// makeDir creates a fresh directory /tmp/mfcp-<kind>-<pid>-<random> with the given mode
// (chmod'ed explicitly, so the umask does not matter) and records it as owned by this
// process. The pid in the name lets SweepStale recognise directories of dead test processes.
func makeDir(kind string, mode os.FileMode) (string, error) {
	dir, err := os.MkdirTemp(tmpRoot, tmpPrefix+kind+"-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return "", fmt.Errorf("creating a %s directory in %s: %w", kind, tmpRoot, err)
	}
	ownedDirs.Lock()
	ownedDirs.dirs = append(ownedDirs.dirs, dir)
	ownedDirs.Unlock()
	if err := os.Chmod(dir, mode); err != nil {
		os.Remove(dir)
		return "", fmt.Errorf("chmod %o %s: %w", mode, dir, err)
	}
	return dir, nil
}

// NewDir creates a directory /tmp/mfcp-dir-<pid>-* with the given mode (exactly, whatever
// the umask), for data a pod-side process must reach (a FUSE server's backing directory, say):
// unlike t.TempDir() its parents are world-searchable and its path is short. Its cleanup
// detaches anything mounted inside and removes it. Chown it if the pod user must write to it.
func NewDir(t T, mode os.FileMode) string {
	t.Helper()
	dir, err := makeDir("dir", mode)
	if err != nil {
		t.Fatalf("NewDir: %v", err)
	}
	t.Cleanup(func() {
		if err := removeDirSafely(dir); err != nil {
			t.Fatalf("NewDir cleanup: %v", err)
		}
	})
	return dir
}

func ownedDirList() []string {
	ownedDirs.Lock()
	defer ownedDirs.Unlock()
	return append([]string(nil), ownedDirs.dirs...)
}

// mkdirMode creates one directory with exactly the given mode (chmod after mkdir, because
// the umask would otherwise strip bits such as the 0777 of an emptyDir).
func mkdirMode(path string, mode os.FileMode) error {
	if err := os.Mkdir(path, mode); err != nil {
		return err
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("chmod %o %s: %w", mode, path, err)
	}
	return nil
}

// chownTree gives a directory tree to uid:gid (used for homes and data directories of the
// pod-side user).
func chownTree(root string, uid, gid int) error {
	return walkNoFollow(root, func(p string) error {
		return os.Lchown(p, uid, gid)
	})
}

func walkNoFollow(root string, fn func(string) error) error {
	if err := fn(root); err != nil {
		return err
	}
	fi, err := os.Lstat(root)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return nil
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := walkNoFollow(root+"/"+e.Name(), fn); err != nil {
			return err
		}
	}
	return nil
}

// validName checks that a harness-level name (emptyDir, volume, view mount) is a single
// path component, so that a typo in a test cannot make the harness write outside its dirs.
func validName(kind, name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("invalid %s name %q: must be a single path component", kind, name)
	}
	return nil
}

// killGroupAndTree sends sig to every process in the tree rooted at pid (found through
// /proc's parent links, which catches children that left the process group with setsid, as
// sshd's per-connection children do) and to the process group pgid. Only for a pid that has
// not been reaped yet (so that neither it nor the group id can belong to an unrelated process).
func killGroupAndTree(pid, pgid int, sig syscall.Signal) {
	for _, d := range descendants(pid) {
		syscall.Kill(d, sig)
	}
	if pgid > 0 {
		syscall.Kill(-pgid, sig)
	}
	if pid > 0 {
		syscall.Kill(pid, sig)
	}
}

// killGroupLeftovers sends sig to the members of process group pgid that outlived its
// (already reaped) leader and are ours: tagged by the harness or running as uid (-1: tagged
// only). It signals them one by one rather than kill(-pgid): with pid_max at 32768 a reaped
// leader's pid, and so an empty group's id, can be reused by an unrelated process. It returns
// the members found.
func killGroupLeftovers(pgid, uid int, sig syscall.Signal) []ProcInfo {
	var ours []ProcInfo
	for _, m := range groupMembers(pgid) {
		if m.Tagged || m.UID == uid {
			ours = append(ours, m)
			syscall.Kill(m.Pid, sig)
		}
	}
	return ours
}

// Main is the TestMain of a package of harness tests: it sweeps what killed
// earlier runs left behind, runs the tests, and removes the built binaries.
func Main(m *testing.M) {
	if err := SweepStale(); err != nil {
		fmt.Fprintln(os.Stderr, "sweeping leftovers of earlier runs:", err)
	}
	code := m.Run()
	if err := CleanupBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, "removing test binaries:", err)
	}
	os.Exit(code)
}

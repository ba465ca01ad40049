package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Mount is one volume mount of a pod-side process.
type Mount struct {
	// Name is the directory name under the pod's view directory, i.e. the process sees the
	// volume at Pod.ViewPath(Name). A single path component.
	Name string
	// Source is the node path of the volume: an emptyDir (Pod.AddEmptyDir) or a CSI target
	// (Pod.TargetPath), which must exist when Run is called, as kubelet only starts
	// containers after their volumes are set up. Mounts made at Source later, on the host,
	// propagate into the process's view (HostToContainer).
	Source string
	// ReadOnly makes the bind mount read-only, like a volumeMount with readOnly: true.
	ReadOnly bool
}

// RunOptions describes a pod-side process.
type RunOptions struct {
	// Args is the command and its arguments; Args[0] is looked up in PATH when it has no
	// slash.
	Args []string
	// Mounts are bind-mounted (recursively, like a container runtime) at the pod's view
	// paths, only inside the process's own mount namespace.
	Mounts []Mount
	// Binds put host files or directories over existing paths inside the process's mount
	// namespace only, read-only, as files of a container image would be (for example the
	// fusermount3-proxy over /usr/bin/fusermount3). The host never sees them.
	Binds []Bind
	// UID and GID are the user the process runs as; 0 means 65534 (nobody/nogroup), unless
	// AsRoot is set.
	UID, GID int
	// AsRoot runs the process as uid/gid 0, still with every capability dropped and
	// no_new_privs, like a container running as root under PSS "restricted"-like settings.
	AsRoot bool
	// Home is the HOME directory; empty means a per-pod temporary directory owned by the
	// process's uid:gid (0700).
	Home string
	// Dir is the working directory (a view path may be used); empty means Home.
	Dir string
	// Env is added to the clean environment (PATH, HOME and TagEnv); an entry here overrides
	// those.
	Env []string
	// Name labels the process in logs and errors; empty means the base name of Args[0].
	Name string
}

// Bind is one file or directory of RunOptions.Binds.
type Bind struct {
	// Source is a host path; Target an existing absolute path it covers in the namespace.
	Source, Target string
}

// Proc is a running pod-side process.
type Proc struct {
	Name string

	t       T
	cmd     *exec.Cmd
	pid     int
	uid     int
	outPath string

	done     chan struct{}
	exitCode int
	waitErr  error

	cleanupOnce sync.Once
}

// nsScript runs inside the new mount namespace (as root): it makes the bind mounts, changes
// to the working directory and execs the rest of its arguments (setpriv ... env -i ... cmd).
// Arguments: N, then N triples "source target ro|rw", then the working directory, then argv.
const nsScript = `n=$1; shift
while [ "$n" -gt 0 ]; do
	mount --rbind -- "$1" "$2" || { echo "harness: cannot bind-mount $1 at $2 in the pod namespace" >&2; exit 125; }
	if [ "$3" = ro ]; then
		mount -o remount,bind,ro -- "$2" || { echo "harness: cannot make $2 read-only in the pod namespace" >&2; exit 125; }
	fi
	shift 3; n=$((n-1))
done
cd -- "$1" || { echo "harness: cannot chdir to $1" >&2; exit 125; }
shift
exec "$@"`

// Run starts a pod-side process the way a container runtime would: in a new mount namespace
// that is a slave of the host's (unshare --mount --propagation slave), with opts.Mounts
// bind-mounted at the pod's short view paths inside that namespace only, then as opts.UID/GID
// (default 65534) with no supplementary groups, no capabilities (inheritable and bounding sets
// cleared) and no_new_privs (setpriv), with a clean environment.
//
// The process runs in its own process group with stdin from /dev/null and stdout+stderr in
// a file (see Output). Its cleanup SIGCONTs and SIGKILLs the whole group and every descendant,
// waits for it, fails the test if a member of the group survives, and, when the test failed,
// logs the tail of its output.
//
// Because the namespace is a slave of the shared kubelet directory, and a bind of a slave
// mount is a slave of the same peer group, a FUSE mount the driver makes at a CSI target
// after the process started appears at the process's view path.
//
// Pid() is that of unshare, which execs sh, setpriv, env and finally Args[0] without
// forking, so it becomes the program's pid once the exec chain is done. If the harness's own
// setup inside the namespace fails (a bind mount, the chdir), the process exits with 125 and
// Output() says why.
//
// Mount names are per pod: two processes of a pod that mount something under the same Name
// see it at the same path, each in its own namespace, as containers of a pod see their
// volumeMounts.
func (p *Pod) Run(t T, opts RunOptions) *Proc {
	t.Helper()
	if len(opts.Args) == 0 {
		t.Fatalf("Pod.Run: no command (RunOptions.Args is empty)")
	}
	uid, gid := opts.UID, opts.GID
	if opts.AsRoot {
		uid, gid = 0, 0
	} else {
		if uid == 0 {
			uid = NobodyUID
		}
		if gid == 0 {
			gid = NobodyGID
		}
	}
	name := opts.Name
	if name == "" {
		name = filepath.Base(opts.Args[0])
	}

	home := opts.Home
	if home == "" {
		var err error
		home, err = p.home(t, uid, gid)
		if err != nil {
			t.Fatalf("Pod.Run %s: %v", name, err)
		}
	}
	dir := opts.Dir
	if dir == "" {
		dir = home
	}

	argv := []string{"unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", nsScript, "sh", strconv.Itoa(len(opts.Mounts) + len(opts.Binds))}
	for _, m := range opts.Mounts {
		if err := validName("mount", m.Name); err != nil {
			t.Fatalf("Pod.Run %s: %v", name, err)
		}
		if m.Source == "" {
			t.Fatalf("Pod.Run %s: mount %q has no Source", name, m.Name)
		}
		view := p.ViewPath(m.Name)
		if err := mkdirMode(view, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatalf("Pod.Run %s: creating view directory: %v", name, err)
		}
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		argv = append(argv, m.Source, view, mode)
	}
	for _, b := range opts.Binds {
		if b.Source == "" || !filepath.IsAbs(b.Target) {
			t.Fatalf("Pod.Run %s: bind %q -> %q needs a source and an absolute target", name, b.Source, b.Target)
		}
		argv = append(argv, b.Source, b.Target, "ro")
	}
	argv = append(argv, dir,
		// --pdeathsig after the uid change: the kernel clears the parent-death signal on a
		// credential change, and without one a pod process would outlive a test process
		// killed by a go test timeout.
		"setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(gid), "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--pdeathsig=KILL", "--",
		"env", "-i", "--", "PATH="+podPATH, "HOME="+home, tagEnvVar())
	argv = append(argv, opts.Env...)
	argv = append(argv, opts.Args...)

	outPath := filepath.Join(t.TempDir(), "output")
	out, err := os.OpenFile(outPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("Pod.Run %s: %v", name, err)
	}
	defer out.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatalf("Pod.Run %s: %v", name, err)
	}
	defer devnull.Close()

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=" + podPATH, tagEnvVar()}
	cmd.Stdin = devnull
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("Pod.Run %s: starting %s: %v", name, shellQuote(argv), err)
	}
	proc := &Proc{Name: name, t: t, cmd: cmd, pid: cmd.Process.Pid, uid: uid, outPath: outPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		proc.exitCode, proc.waitErr = exitCode(cmd, err)
		close(proc.done)
	}()
	t.Logf("pod %s: started %s (pid %d) as %d:%d: %s", p.Name, name, proc.pid, uid, gid, shellQuote(opts.Args))
	t.Cleanup(func() { proc.cleanup() })
	return proc
}

// exitCode converts the result of cmd.Wait: the exit status, or 128+signal number when the
// process was killed by a signal (as a shell reports it); err only for failures of wait itself.
func exitCode(cmd *exec.Cmd, err error) (int, error) {
	ps := cmd.ProcessState
	if ps == nil {
		return -1, err
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return ps.ExitCode(), err
	}
	return ps.ExitCode(), nil
}

// home returns the pod's default HOME for uid:gid, creating it (0700, owned by uid:gid) on
// first use.
func (p *Pod) home(t T, uid, gid int) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := [2]int{uid, gid}
	if h := p.homes[key]; h != "" {
		return h, nil
	}
	h, err := makeDir("home", 0o700)
	if err != nil {
		return "", err
	}
	t.Cleanup(func() {
		if err := removeDirSafely(h); err != nil {
			t.Fatalf("pod %s home cleanup: %v", p.Name, err)
		}
	})
	if err := os.Chown(h, uid, gid); err != nil {
		return "", fmt.Errorf("chown %d:%d %s: %w", uid, gid, h, err)
	}
	p.homes[key] = h
	return h, nil
}

// Pid is the process's pid (see Run about the exec chain).
func (p *Proc) Pid() int { return p.pid }

// Signal sends sig to the process itself (not its group); it is a no-op returning nil once
// the process has exited and been reaped.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	return syscall.Kill(p.pid, sig)
}

// SignalGroup sends sig to the process's whole process group (after the process exited: to
// the group members that outlived it).
func (p *Proc) SignalGroup(sig syscall.Signal) error {
	if p.Exited() {
		killGroupLeftovers(p.pid, p.uid, sig)
		return nil
	}
	err := syscall.Kill(-p.pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Wait waits up to timeout for the process to exit and returns its exit code (128+signal
// number if a signal killed it). It returns an error, and exit code -1, if the process is
// still running at the timeout; the process is left running. It may be called any number of
// times, also after the process exited.
func (p *Proc) Wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
		return p.exitCode, p.waitErr
	default:
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.exitCode, p.waitErr
	case <-timer.C:
		return -1, fmt.Errorf("%s (pid %d) still running after %v; output so far:\n%s", p.Name, p.pid, timeout, indent(tail(p.Output(), 4096)))
	}
}

// Exited reports whether the process has exited (and been reaped).
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Output returns everything the process wrote to stdout and stderr so far (combined, in
// order); safe to call at any time.
func (p *Proc) Output() string {
	b, err := os.ReadFile(p.outPath)
	if err != nil {
		return fmt.Sprintf("(cannot read output of %s: %v)", p.Name, err)
	}
	return string(b)
}

// Kill SIGCONTs and SIGKILLs the process's group and all its descendants, and waits (up to
// 10 s) until the process has been reaped. It returns an error if it is still there.
func (p *Proc) Kill() error {
	if p.Exited() {
		killGroupLeftovers(p.pid, p.uid, syscall.SIGCONT)
		killGroupLeftovers(p.pid, p.uid, syscall.SIGKILL)
		return nil
	}
	killGroupAndTree(p.pid, p.pid, syscall.SIGCONT)
	killGroupAndTree(p.pid, p.pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit within 10s of SIGKILL (stuck in the kernel? state %s)", p.Name, p.pid, procState(p.pid))
	}
}

func procState(pid int) string {
	if pi, ok := readProc(pid); ok {
		return pi.State
	}
	return "gone"
}

func (p *Proc) cleanup() {
	p.cleanupOnce.Do(func() {
		var problems []string
		if err := p.Kill(); err != nil {
			problems = append(problems, err.Error())
		}
		// Members of the group that outlived the leader (e.g. a FUSE server's helper):
		// kill them and check, bounded, that they are gone.
		deadline := time.Now().Add(5 * time.Second)
		var left []ProcInfo
		for {
			killGroupLeftovers(p.pid, p.uid, syscall.SIGCONT)
			left = killGroupLeftovers(p.pid, p.uid, syscall.SIGKILL)
			if len(left) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(left) > 0 {
			var lines []string
			for _, m := range left {
				lines = append(lines, "  "+m.String())
			}
			problems = append(problems, "processes of its group survived SIGKILL:\n"+strings.Join(lines, "\n"))
		}
		if failed(p.t) || len(problems) > 0 {
			code, _ := p.Wait(0)
			p.t.Logf("pod process %s (pid %d, exit %d) output:\n%s", p.Name, p.pid, code, indent(tail(p.Output(), 8192)))
		}
		if len(problems) > 0 {
			p.t.Fatalf("cleanup of %s (pid %d): %s", p.Name, p.pid, strings.Join(problems, "\n"))
		}
	})
}

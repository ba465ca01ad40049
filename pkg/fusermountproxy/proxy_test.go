package fusermountproxy

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fdpassing"
)

// The tests in this file are not parallel: they count the process's open
// fds around Proxy.Run, which only means something while no other test
// opens or closes fds.

func soon() time.Time { return time.Now().Add(10 * time.Second) }

// fakeDriver stands in for meta-fuse-csi-plugin's end of the fd-passing
// socket: it answers at most one connection.
type fakeDriver struct {
	path string
	ln   *net.UnixListener
	dev  *os.File    // stands in for /dev/fuse
	st   unix.Stat_t // dev's identity
	reqs chan *fdpassing.Request
	done chan struct{}
}

// answerFunc decides the driver's response to req and the fd sent with it
// (-1 for none).
type answerFunc func(req *fdpassing.Request, dev *os.File) (*fdpassing.Response, int)

// answerOK mounts (sending dev's fd) or acknowledges an unmount.
func answerOK(req *fdpassing.Request, dev *os.File) (*fdpassing.Response, int) {
	if req.Op == fdpassing.OpMount {
		return &fdpassing.Response{MountData: "rootmode=40000,user_id=0,group_id=0"}, int(dev.Fd())
	}
	return &fdpassing.Response{}, -1
}

func answerError(msg string) answerFunc {
	return func(*fdpassing.Request, *os.File) (*fdpassing.Response, int) {
		return &fdpassing.Response{Error: msg}, -1
	}
}

func startDriver(t *testing.T, answer answerFunc) *fakeDriver {
	t.Helper()
	dir := t.TempDir()
	d := &fakeDriver{
		path: filepath.Join(dir, "fuse-csi.sock"),
		reqs: make(chan *fdpassing.Request, 1),
		done: make(chan struct{}),
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Net: "unix", Name: d.path})
	if err != nil {
		t.Fatal(err)
	}
	d.ln = ln
	d.dev, err = os.Create(filepath.Join(dir, "fake-dev-fuse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(int(d.dev.Fd()), &d.st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.ln.Close()
		<-d.done
		d.dev.Close()
	})
	go func() {
		defer close(d.done)
		conn, err := ln.AcceptUnix()
		if err != nil {
			return // closed by wait: nobody connected
		}
		defer conn.Close()
		req, err := fdpassing.ReceiveRequest(conn, soon())
		if err != nil {
			t.Errorf("fake driver: %v", err)
			return
		}
		d.reqs <- req
		resp, fd := answer(req, d.dev)
		if err := fdpassing.SendResponse(conn, resp, fd, soon()); err != nil {
			t.Errorf("fake driver: %v", err)
		}
	}()
	return d
}

// wait stops accepting and returns the request the driver got, or nil when
// nobody connected.
func (d *fakeDriver) wait() *fdpassing.Request {
	d.ln.Close()
	<-d.done
	select {
	case r := <-d.reqs:
		return r
	default:
		return nil
	}
}

// commPair plays libfuse's side of _FUSE_COMMFD: proxyEnd is what the
// helper inherits, libEnd what the library reads the fd from.
func commPair(t *testing.T) (proxyEnd, libEnd int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return fds[0], fds[1]
}

// receiveFD reads what the helper sent on libEnd, as libfuse's
// receive_fd() does, without waiting: Run has returned by then.
func receiveFD(t *testing.T, libEnd int) (data []byte, fds []int) {
	t.Helper()
	buf := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := unix.Recvmsg(libEnd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if errors.Is(err, unix.EAGAIN) {
		return nil, nil
	}
	if err != nil {
		t.Fatalf("recvmsg on the comm socket: %v", err)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		t.Errorf("control message truncated")
	}
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		for i := range msgs {
			got, err := unix.ParseUnixRights(&msgs[i])
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, got...)
		}
	}
	for _, fd := range fds {
		t.Cleanup(func() { unix.Close(fd) })
	}
	return buf[:n], fds
}

// expectNothingSent checks that the helper wrote nothing to the comm socket.
func expectNothingSent(t *testing.T, libEnd int) {
	t.Helper()
	if data, fds := receiveFD(t, libEnd); data != nil || fds != nil {
		t.Errorf("the FUSE library got %q with fds %v, want nothing", data, fds)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func listFDs() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		out = append(out, e.Name()+"->"+target)
	}
	return strings.Join(out, " ")
}

// stderrFile is a temp file for Proxy.Stderr (not /dev/null, so the proxy
// logs to it when no log file is set).
func stderrFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

// run is one Proxy.Run with the given environments, checking that it
// leaks no fd. It returns the exit code and what went to stderr.
type runEnv struct {
	// env is the helper's own environment (both Proxy.Getenv and Lookup.Getenv).
	env map[string]string
	// parent is the FUSE program's environ block, nil for none.
	parent []byte
	// lookupEnv, when non-nil, replaces env for the Lookup (go-fuse wipes
	// the helper's environment but for _FUSE_COMMFD).
	lookupEnv map[string]string
}

func run(t *testing.T, e runEnv, args ...string) (int, string) {
	t.Helper()
	stderr := stderrFile(t)
	lookup := &Lookup{Getenv: envFunc(e.env)}
	if e.lookupEnv != nil {
		lookup.Getenv = envFunc(e.lookupEnv)
	}
	if e.parent != nil {
		lookup.ParentEnv = func() ([]byte, error) { return e.parent, nil }
	}
	p := &Proxy{Lookup: lookup, Getenv: envFunc(e.env), Stdout: stderr, Stderr: stderr, Version: "test"}
	before, beforeList := countFDs(t), listFDs()
	code := p.Run(args)
	// The fake driver's goroutine closes its end of the connection after
	// answering, possibly just after Run returned: give it a moment.
	for start := time.Now(); countFDs(t) != before && time.Since(start) < 2*time.Second; {
		time.Sleep(5 * time.Millisecond)
	}
	if after := countFDs(t); after != before {
		t.Errorf("Run(%q) changed the number of open fds from %d to %d\nbefore: %s\nafter:  %s", args, before, after, beforeList, listFDs())
	}
	return code, readString(t, stderr.Name())
}

func TestRunMountPassesFD(t *testing.T) {
	d := startDriver(t, answerOK)
	proxyEnd, libEnd := commPair(t)
	logPath := filepath.Join(t.TempDir(), "fusermount3-proxy.log")
	env := map[string]string{
		EnvSocketPath:  d.path,
		EnvLogPath:     logPath,
		"_FUSE_COMMFD": strconv.Itoa(proxyEnd),
	}
	code, stderr := run(t, runEnv{env: env}, "-o", `rw,nosuid,nodev,fsname=x\,y,subtype=sshfs,auto_unmount`, "--", "/mnt")
	req := d.wait()
	if code != 0 {
		t.Fatalf("exit code %d, stderr %q, log %q", code, stderr, readString(t, logPath))
	}
	if req == nil {
		t.Fatal("the driver got no request")
	}
	want := fdpassing.Request{Version: fdpassing.Version, Op: fdpassing.OpMount, Client: "fusermount3-proxy", MountOptions: `rw,nosuid,nodev,fsname=x\,y,subtype=sshfs`}
	if *req != want {
		t.Errorf("the driver got %+v, want %+v", *req, want)
	}

	data, fds := receiveFD(t, libEnd)
	if string(data) != "\x00" {
		t.Errorf("the FUSE library got data %q, want exactly one byte 0", data)
	}
	if len(fds) != 1 {
		t.Fatalf("the FUSE library got %d fds, want 1", len(fds))
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil {
		t.Fatal(err)
	}
	if st.Dev != d.st.Dev || st.Ino != d.st.Ino {
		t.Errorf("the fd passed on is %d:%d, want the driver's %d:%d", st.Dev, st.Ino, d.st.Dev, d.st.Ino)
	}
	expectNothingSent(t, libEnd) // one message only

	if stderr != "" {
		t.Errorf("stderr = %q, want nothing (the log goes to %s)", stderr, EnvLogPath)
	}
	log := readString(t, logPath)
	for _, s := range []string{
		"fusermount3-proxy[",
		`called as ["-o" "rw,nosuid,nodev,fsname=x\\,y,subtype=sshfs,auto_unmount" "--" "/mnt"]`,
		"driver socket " + d.path + " (from the environment)",
		`mount data "rootmode=40000,user_id=0,group_id=0"`,
		"passed the fd on _FUSE_COMMFD=" + strconv.Itoa(proxyEnd),
		"auto_unmount:",
	} {
		if !strings.Contains(log, s) {
			t.Errorf("log lacks %q:\n%s", s, log)
		}
	}
}

// The callers' real command lines and environments (fuse-experiments.md
// section 3).
func TestRunMountCallers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		options string
		goFuse  bool // environment wiped but for _FUSE_COMMFD
	}{
		{
			name:    "sshfs",
			args:    []string{"-o", "rw,nosuid,nodev,fsname=sshtest:/exp/sshdata,subtype=sshfs", "--", "/exp/mnt2"},
			options: "rw,nosuid,nodev,fsname=sshtest:/exp/sshdata,subtype=sshfs",
		},
		{
			name:    "s3fs",
			args:    []string{"-o", "rw,nosuid,nodev,subtype=s3fs", "--", "/exp/mnt3"},
			options: "rw,nosuid,nodev,subtype=s3fs",
		},
		{
			name:    "rclone",
			args:    []string{"-o", "subtype=rclone,fsname=:s3{c7xjq}:testbucket", "--", "/exp/mnt3"},
			options: "subtype=rclone,fsname=:s3{c7xjq}:testbucket",
		},
		{
			name:    "go-fuse",
			args:    []string{"/exp/mnt3", "-o", "fsname=gofusefs,subtype=gofusefs,max_read=131072"},
			options: "fsname=gofusefs,subtype=gofusefs,max_read=131072",
			goFuse:  true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDriver(t, answerOK)
			proxyEnd, libEnd := commPair(t)
			e := runEnv{env: map[string]string{"_FUSE_COMMFD": strconv.Itoa(proxyEnd)}}
			source := "environment"
			if tc.goFuse {
				e.parent = []byte("PATH=/usr/bin\x00" + EnvSocketPath + "=" + d.path + "\x00HOME=/\x00")
				source = "parent's environment"
			} else {
				e.env[EnvSocketPath] = d.path
				e.env["PATH"] = "/usr/bin"
			}
			code, stderr := run(t, e, tc.args...)
			req := d.wait()
			if code != 0 {
				t.Fatalf("exit code %d, stderr %q", code, stderr)
			}
			if req == nil || req.Op != fdpassing.OpMount || req.MountOptions != tc.options {
				t.Errorf("the driver got %+v, want a mount with options %q", req, tc.options)
			}
			data, fds := receiveFD(t, libEnd)
			if string(data) != "\x00" || len(fds) != 1 {
				t.Fatalf("the FUSE library got %q with fds %v", data, fds)
			}
			var st unix.Stat_t
			if err := unix.Fstat(fds[0], &st); err != nil || st.Dev != d.st.Dev || st.Ino != d.st.Ino {
				t.Errorf("the fd passed on is not the driver's (%v)", err)
			}
			// No log file: the log went to stderr.
			if want := "(from the " + source + ")"; !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr)
			}
		})
	}
}

func TestRunUnmount(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		goFuse bool
	}{
		{name: "libfuse -u -q -z --", args: []string{"-u", "-q", "-z", "--", "/mnt"}},
		{name: "go-fuse -u", args: []string{"-u", "/mnt"}, goFuse: true},
		{name: "long options", args: []string{"--unmount", "--lazy", "/mnt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDriver(t, answerOK)
			// No _FUSE_COMMFD: libfuse does not set it for -u.
			e := runEnv{env: map[string]string{EnvSocketPath: d.path}}
			if tc.goFuse {
				e.env = map[string]string{}
				e.parent = []byte(EnvSocketPath + "=" + d.path + "\x00")
			}
			code, stderr := run(t, e, tc.args...)
			req := d.wait()
			if code != 0 {
				t.Fatalf("exit code %d, stderr %q", code, stderr)
			}
			want := fdpassing.Request{Version: fdpassing.Version, Op: fdpassing.OpUnmount, Client: "fusermount3-proxy"}
			if req == nil || *req != want {
				t.Errorf("the driver got %+v, want %+v", req, want)
			}
			if !strings.Contains(stderr, "the driver ended the FUSE connection of the volume (/mnt)") {
				t.Errorf("stderr (the log) = %q", stderr)
			}
		})
	}
}

func TestRunDriverError(t *testing.T) {
	const refusal = `mount option "suid" is not allowed: set-user-ID programs would be honoured`
	for _, tc := range []struct {
		name    string
		args    []string
		logFile bool
		msg     string // in the log
		stderr  bool   // the "fusermount3: msg" line on stderr too
	}{
		{
			name:    "mount",
			args:    []string{"-o", "rw,suid", "--", "/mnt"},
			logFile: true,
			msg:     "mount of /mnt: the driver refused to mount: " + refusal,
			stderr:  true,
		},
		{
			name:    "mount -q",
			args:    []string{"-q", "-o", "rw,suid", "--", "/mnt"},
			logFile: true,
			msg:     "mount of /mnt: the driver refused to mount: " + refusal,
		},
		{
			name:    "unmount -u -q -z",
			args:    []string{"-u", "-q", "-z", "--", "/mnt"},
			logFile: true,
			msg:     "unmount of /mnt: the driver refused to unmount: " + refusal,
		},
		{
			name:    "unmount -u",
			args:    []string{"-u", "/mnt"},
			logFile: true,
			msg:     "unmount of /mnt: the driver refused to unmount: " + refusal,
			stderr:  true,
		},
		{
			name: "mount without a log file: the log is stderr, the message once",
			args: []string{"-o", "rw,suid", "--", "/mnt"},
			msg:  "mount of /mnt: the driver refused to mount: " + refusal,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDriver(t, answerError(refusal))
			proxyEnd, libEnd := commPair(t)
			env := map[string]string{EnvSocketPath: d.path, "_FUSE_COMMFD": strconv.Itoa(proxyEnd)}
			logPath := filepath.Join(t.TempDir(), "proxy.log")
			if tc.logFile {
				env[EnvLogPath] = logPath
			}
			code, stderr := run(t, runEnv{env: env}, tc.args...)
			if req := d.wait(); req == nil {
				t.Error("the driver got no request")
			}
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			expectNothingSent(t, libEnd)
			log := stderr
			if tc.logFile {
				log = readString(t, logPath)
			}
			if !strings.Contains(log, "error: "+tc.msg) {
				t.Errorf("log lacks %q:\n%s", "error: "+tc.msg, log)
			}
			line := "fusermount3: " + tc.msg + "\n"
			if tc.logFile {
				if tc.stderr && stderr != line {
					t.Errorf("stderr = %q, want %q", stderr, line)
				}
				if !tc.stderr && stderr != "" {
					t.Errorf("stderr = %q, want nothing with -q", stderr)
				}
			} else if n := strings.Count(stderr, tc.msg); n != 1 {
				t.Errorf("stderr holds the message %d times, want once:\n%s", n, stderr)
			}
		})
	}
}

func TestRunMissingCommFD(t *testing.T) {
	d := startDriver(t, answerOK)
	code, stderr := run(t, runEnv{env: map[string]string{EnvSocketPath: d.path}}, "-o", "rw", "--", "/mnt")
	if req := d.wait(); req != nil {
		t.Errorf("the driver was asked to mount (%+v) with nobody to hand the fd to", req)
	}
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if !strings.Contains(stderr, "error: _FUSE_COMMFD is not set") {
		t.Errorf("stderr = %q, want a message naming _FUSE_COMMFD", stderr)
	}
}

func TestRunBadCommFD(t *testing.T) {
	regular, err := os.Create(filepath.Join(t.TempDir(), "regular"))
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	for _, tc := range []struct{ name, value, msg string }{
		{"regular file", strconv.Itoa(int(regular.Fd())), "is not an open socket"},
		{"pipe", strconv.Itoa(int(pw.Fd())), "is not an open socket"},
		{"fd not open", "999999", "is not an open socket"},
		{"not a number", "three", "is not a file descriptor"},
		{"negative", "-1", "is not a file descriptor"},
		{"trailing space", "3 ", "is not a file descriptor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDriver(t, answerOK)
			code, stderr := run(t, runEnv{env: map[string]string{EnvSocketPath: d.path, "_FUSE_COMMFD": tc.value}}, "-o", "rw", "--", "/mnt")
			if req := d.wait(); req != nil {
				t.Errorf("the driver was asked to mount (%+v) with nobody to hand the fd to", req)
			}
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if !strings.Contains(stderr, "error: _FUSE_COMMFD=") || !strings.Contains(stderr, tc.msg) {
				t.Errorf("stderr = %q, want _FUSE_COMMFD ... %q", stderr, tc.msg)
			}
		})
	}
}

// The FUSE library went away between exec'ing the helper and the answer.
func TestRunCommFDPeerClosed(t *testing.T) {
	d := startDriver(t, answerOK)
	proxyEnd, libEnd := commPair(t)
	unix.Shutdown(libEnd, unix.SHUT_RDWR)
	code, stderr := run(t, runEnv{env: map[string]string{EnvSocketPath: d.path, "_FUSE_COMMFD": strconv.Itoa(proxyEnd)}}, "-o", "rw", "--", "/mnt")
	if req := d.wait(); req == nil || req.Op != fdpassing.OpMount {
		t.Errorf("the driver got %+v, want a mount", req)
	}
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if !strings.Contains(stderr, "passing the fd to the FUSE library on _FUSE_COMMFD=") {
		t.Errorf("stderr = %q", stderr)
	}
}

func TestRunNoSocketPath(t *testing.T) {
	proxyEnd, _ := commPair(t)
	for _, args := range [][]string{
		{"-o", "rw", "--", "/mnt"},
		{"-u", "-q", "-z", "--", "/mnt"},
	} {
		e := runEnv{
			env:    map[string]string{"_FUSE_COMMFD": strconv.Itoa(proxyEnd)},
			parent: []byte("A=1\x00PATH=/bin\x00"),
		}
		code, stderr := run(t, e, args...)
		if code != 1 {
			t.Errorf("%q: exit code %d, want 1", args, code)
		}
		if !strings.Contains(stderr, EnvSocketPath+" is not set") {
			t.Errorf("%q: stderr = %q, want a message naming %s", args, stderr, EnvSocketPath)
		}
	}
}

func TestRunDriverUnreachable(t *testing.T) {
	proxyEnd, libEnd := commPair(t)
	missing := filepath.Join(t.TempDir(), "not-yet.sock")
	env := map[string]string{EnvSocketPath: missing, EnvConnectTimeout: "300ms", "_FUSE_COMMFD": strconv.Itoa(proxyEnd)}
	start := time.Now()
	code, stderr := run(t, runEnv{env: env}, "-o", "rw", "--", "/mnt")
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("gave up after %v; %s=300ms", el, EnvConnectTimeout)
	}
	if !strings.Contains(stderr, "did not accept a connection within 300ms") {
		t.Errorf("stderr = %q", stderr)
	}
	expectNothingSent(t, libEnd)
}

// An unusable FUSERMOUNT3PROXY_LOG falls back to stderr.
func TestRunLogFileUnusable(t *testing.T) {
	env := map[string]string{EnvLogPath: filepath.Join(t.TempDir(), "no-such-dir", "proxy.log")}
	code, stderr := run(t, runEnv{env: env}, "-o", "rw", "--", "/mnt")
	if code != 1 || !strings.Contains(stderr, "called as") || !strings.Contains(stderr, EnvSocketPath+" is not set") {
		t.Errorf("exit code %d, stderr %q", code, stderr)
	}
}

func TestRunVersionHelpAndUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		prefix string
	}{
		{[]string{"-V"}, 0, "fusermount3 version: " + FuseVersion + " (fusermount3-proxy test of meta-fuse-csi-plugin)\n"},
		{[]string{"--version"}, 0, "fusermount3 version: " + FuseVersion + " "},
		{[]string{"-h"}, 0, "usage: fusermount3 [options] mountpoint\n"},
		{[]string{"--help"}, 0, "usage: fusermount3 "},
		{[]string{"-x", "/mnt"}, 1, "fusermount3: unknown option -x\n"},
		{[]string{"/a", "/b"}, 1, "fusermount3: extra arguments after the mountpoint"},
		{nil, 1, "fusermount3: missing mountpoint argument\n"},
	} {
		// No environment at all: these never reach the driver.
		code, stderr := run(t, runEnv{}, tc.args...)
		if code != tc.code || !strings.HasPrefix(stderr, tc.prefix) {
			t.Errorf("Run(%q) = %d, stderr %q; want %d, stderr starting with %q", tc.args, code, stderr, tc.code, tc.prefix)
		}
	}
}

func TestIsDevNull(t *testing.T) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if !isDevNull(null) {
		t.Error("isDevNull(/dev/null) = false")
	}
	if isDevNull(stderrFile(t)) {
		t.Error("isDevNull(regular file) = true")
	}
	zero, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Close()
	if isDevNull(zero) {
		t.Error("isDevNull(/dev/zero) = true")
	}
}

package starter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fdpassing"
)

func soon() time.Time { return time.Now().Add(10 * time.Second) }

// fakeDriver answers one connection on ln the way the driver does: it reads
// the request, then sends resp with fd (when fd >= 0). The request it got, or
// its error, comes back on the returned channel.
func fakeDriver(t *testing.T, ln *net.UnixListener, resp *fdpassing.Response, fd int) <-chan *fdpassing.Request {
	t.Helper()
	got := make(chan *fdpassing.Request, 1)
	go func() {
		defer close(got)
		conn, err := ln.AcceptUnix()
		if err != nil {
			t.Errorf("fake driver: accept: %v", err)
			return
		}
		defer conn.Close()
		req, err := fdpassing.ReceiveRequest(conn, soon())
		if err != nil {
			t.Errorf("fake driver: %v", err)
			return
		}
		got <- req
		if err := fdpassing.SendResponse(conn, resp, fd, soon()); err != nil {
			t.Errorf("fake driver: %v", err)
		}
	}()
	return got
}

func listen(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Net: "unix", Name: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// fuseFile stands in for /dev/fuse: a temporary file and its identity.
func fuseFile(t *testing.T) (*os.File, unix.Stat_t) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "fake-fuse"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return f, st
}

func sockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "fuse.sock")
}

func TestReceive(t *testing.T) {
	t.Parallel()
	path := sockPath(t)
	ln := listen(t, path)
	f, want := fuseFile(t)
	reqs := fakeDriver(t, ln, &fdpassing.Response{MountData: "rootmode=40000", ReadOnly: true}, int(f.Fd()))

	dev, resp, err := Receive(context.Background(), Config{SocketPath: path, ConnectTimeout: 10 * time.Second, MountOptions: "noatime", Client: "test-client"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(dev.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Dev != want.Dev || st.Ino != want.Ino {
		t.Errorf("received fd is %d:%d, want %d:%d", st.Dev, st.Ino, want.Dev, want.Ino)
	}
	if resp.MountData != "rootmode=40000" || !resp.ReadOnly {
		t.Errorf("response = %+v", resp)
	}
	req := <-reqs
	if req == nil {
		t.Fatal("the fake driver got no request")
	}
	if req.Op != fdpassing.OpMount || req.Client != "test-client" || req.MountOptions != "noatime" || req.Version != fdpassing.Version {
		t.Errorf("request = %+v", req)
	}
}

func TestReceiveDefaultClient(t *testing.T) {
	t.Parallel()
	path := sockPath(t)
	f, _ := fuseFile(t)
	reqs := fakeDriver(t, listen(t, path), &fdpassing.Response{}, int(f.Fd()))
	dev, _, err := Receive(context.Background(), Config{SocketPath: path, ConnectTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dev.Close()
	if req := <-reqs; req == nil || req.Client != "fuse-starter" {
		t.Errorf("request = %+v, want client fuse-starter", req)
	}
}

// The driver creates the socket only when kubelet publishes the volume,
// which may be after the FUSE container started.
func TestReceiveRetriesUntilSocketAppears(t *testing.T) {
	t.Parallel()
	path := sockPath(t)
	f, want := fuseFile(t)
	waiting := make(chan string, 1)
	type result struct {
		dev *os.File
		err error
	}
	done := make(chan result, 1)
	go func() {
		dev, _, err := Receive(context.Background(), Config{
			SocketPath: path, ConnectTimeout: 30 * time.Second,
			Logf: func(format string, args ...any) {
				select {
				case waiting <- fmt.Sprintf(format, args...):
				default:
				}
			},
		})
		done <- result{dev, err}
	}()
	// Receive says it is waiting after its first failed attempt; only then
	// does the socket appear.
	msg := <-waiting
	if !strings.Contains(msg, path) {
		t.Errorf("progress message %q does not name the socket", msg)
	}
	fakeDriver(t, listen(t, path), &fdpassing.Response{}, int(f.Fd()))
	r := <-done
	if r.err != nil {
		t.Fatalf("Receive = %v", r.err)
	}
	defer r.dev.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(r.dev.Fd()), &st); err != nil || st.Ino != want.Ino {
		t.Errorf("received fd is inode %d (%v), want %d", st.Ino, err, want.Ino)
	}
}

func TestReceiveGivesUp(t *testing.T) {
	t.Parallel()
	notListening := filepath.Join(t.TempDir(), "bound.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: notListening}); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{
		"missing":       sockPath(t),
		"missing dir":   filepath.Join(t.TempDir(), "no", "such", "dir", "fuse.sock"),
		"not listening": notListening,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dev, resp, err := Receive(context.Background(), Config{SocketPath: path, ConnectTimeout: 300 * time.Millisecond})
			if err == nil {
				dev.Close()
				t.Fatalf("Receive with nothing listening = %+v, want an error", resp)
			}
			for _, want := range []string{path, "did not accept a connection within 300ms"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestReceiveNotRetryable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A path through a regular file fails with ENOTDIR: no point in waiting.
	_, _, err := Receive(context.Background(), Config{SocketPath: filepath.Join(file, "fuse.sock"), ConnectTimeout: time.Hour})
	if !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("Receive through a file = %v, want ENOTDIR at once", err)
	}
}

func TestReceiveCancelled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		_, _, err := Receive(ctx, Config{SocketPath: sockPath(t), ConnectTimeout: time.Hour, Logf: func(string, ...any) {
			select {
			case waiting <- struct{}{}:
			default:
			}
		}})
		done <- err
	}()
	<-waiting
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Receive after cancel = %v, want context.Canceled", err)
	}
}

func TestReceiveDriverError(t *testing.T) {
	t.Parallel()
	path := sockPath(t)
	f, _ := fuseFile(t)
	for _, fd := range []int{-1, int(f.Fd())} { // an error response never yields an fd
		ln := listen(t, path)
		fakeDriver(t, ln, &fdpassing.Response{Error: "mounting FUSE: operation not permitted"}, fd)
		dev, resp, err := Receive(context.Background(), Config{SocketPath: path, ConnectTimeout: 10 * time.Second})
		if err == nil {
			dev.Close()
			t.Fatal("Receive of an error response succeeded")
		}
		if dev != nil {
			t.Errorf("an fd came with the error")
		}
		if !strings.Contains(err.Error(), "mounting FUSE: operation not permitted") || !strings.Contains(err.Error(), "refused") {
			t.Errorf("error %q does not carry the driver's reason", err)
		}
		if resp == nil || resp.Error == "" {
			t.Errorf("response = %+v, want the driver's error response", resp)
		}
		ln.Close()
		os.Remove(path)
	}
}

func TestReceiveDriverClosesWithoutAnswer(t *testing.T) {
	t.Parallel()
	path := sockPath(t)
	ln := listen(t, path)
	go func() {
		conn, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		fdpassing.ReceiveRequest(conn, soon())
		conn.Close()
	}()
	if _, _, err := Receive(context.Background(), Config{SocketPath: path, ConnectTimeout: 10 * time.Second}); err == nil {
		t.Errorf("Receive succeeded though the driver closed without an answer")
	}
}

func TestRunPassesFD3AndExitCode(t *testing.T) {
	t.Parallel()
	path := sockPath(t)
	f, want := fuseFile(t)
	fakeDriver(t, listen(t, path), &fdpassing.Response{MountData: "rootmode=40000"}, int(f.Fd()))
	out := filepath.Join(t.TempDir(), "out")
	code, err := Run(context.Background(), Config{
		SocketPath: path, ConnectTimeout: 10 * time.Second,
		Program: []string{"sh", "-c", `ls -l /proc/self/fd/3 >/dev/null && stat -L -c %d:%i /proc/self/fd/3 > "$0" && readlink /dev/fd/3 >> "$0"; exit 7`, out},
	})
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	if code != 7 {
		t.Errorf("exit code = %d, want 7", code)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the program did not see fd 3: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if want := fmt.Sprintf("%d:%d", want.Dev, want.Ino); lines[0] != want {
		t.Errorf("fd 3 of the program is %s, want %s (output %q)", lines[0], want, b)
	}
	if len(lines) < 2 || lines[1] != f.Name() {
		t.Errorf("fd 3 links to %q, want %q", lines[1:], f.Name())
	}
}

func TestRunExitZero(t *testing.T) {
	t.Parallel()
	path := sockPath(t)
	f, _ := fuseFile(t)
	fakeDriver(t, listen(t, path), &fdpassing.Response{}, int(f.Fd()))
	code, err := Run(context.Background(), Config{SocketPath: path, ConnectTimeout: 10 * time.Second, Program: []string{"true"}})
	if err != nil || code != 0 {
		t.Errorf("Run(true) = %d, %v; want 0, nil", code, err)
	}
}

func TestRunKilledBySignal(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGSEGV, syscall.SIGABRT} {
		path := filepath.Join(t.TempDir(), "s.sock")
		f, _ := fuseFile(t)
		fakeDriver(t, listen(t, path), &fdpassing.Response{}, int(f.Fd()))
		code, err := Run(context.Background(), Config{
			SocketPath: path, ConnectTimeout: 10 * time.Second,
			Program: []string{"sh", "-c", fmt.Sprintf("kill -%d $$", int(sig))},
		})
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
		if code != 128+int(sig) {
			t.Errorf("killed by %v: exit code %d, want %d", sig, code, 128+int(sig))
		}
	}
}

func TestRunMissingProgram(t *testing.T) {
	t.Parallel()
	path := sockPath(t)
	for _, prog := range [][]string{nil, {}, {"/nonexistent/fuse-program"}, {"no-such-fuse-program-in-path"}} {
		code, err := Run(context.Background(), Config{SocketPath: path, ConnectTimeout: time.Hour, Program: prog})
		if err == nil {
			t.Errorf("Run(%q) = %d, nil; want an error", prog, code)
		}
	}
	// The program is checked before connecting: nothing consumed the
	// driver's one-shot mount.
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket path touched: %v", err)
	}
}

func TestRunDriverError(t *testing.T) {
	t.Parallel()
	path := sockPath(t)
	fakeDriver(t, listen(t, path), &fdpassing.Response{Error: "refused the FUSE program's mount options"}, -1)
	marker := filepath.Join(t.TempDir(), "ran")
	code, err := Run(context.Background(), Config{SocketPath: path, ConnectTimeout: 10 * time.Second,
		Program: []string{"sh", "-c", `touch "$0"`, marker}})
	if err == nil {
		t.Errorf("Run with a driver error = %d, nil; want an error (fuse-starter must not exit 0)", code)
	}
	if _, serr := os.Lstat(marker); serr == nil {
		t.Errorf("the program ran without an fd")
	}
}

// TestRunForwardsSIGTERM sends SIGTERM to the test process itself, so it
// does not run in parallel with other tests that call Run.
func TestRunForwardsSIGTERM(t *testing.T) {
	path := sockPath(t)
	f, _ := fuseFile(t)
	fakeDriver(t, listen(t, path), &fdpassing.Response{}, int(f.Fd()))
	fifo := filepath.Join(t.TempDir(), "ready")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := Run(context.Background(), Config{SocketPath: path, ConnectTimeout: 10 * time.Second,
			Program: []string{"sh", "-c", `trap 'exit 42' TERM; echo ready > "$0"; while :; do sleep 0.01; done`, fifo}})
		done <- result{code, err}
	}()
	// Opening the fifo blocks until the program has trapped TERM and opened it.
	b, err := os.ReadFile(fifo)
	if err != nil || strings.TrimSpace(string(b)) != "ready" {
		t.Fatalf("reading the program's readiness: %q, %v", b, err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.code != 42 {
		t.Errorf("Run = %d, %v; want 42 (SIGTERM forwarded to the program)", r.code, r.err)
	}
}

// TestReceiveCancelledWhileWaitingForAnswer: fuse-starter gets SIGTERM (the
// pod is being deleted) while the driver has not answered yet; Receive closes
// the connection and must return an error. fdpassing.ReceiveResponse panics
// instead, because the interrupted ReadMsgUnix returns n == -1.
func TestReceiveCancelledWhileWaitingForAnswer(t *testing.T) {
	t.Parallel()
	// The cancellation races with the client entering its read; a few
	// rounds make hitting the read all but certain.
	for i := 0; i < 5; i++ {
		receiveCancelledWhileWaiting(t)
	}
}

func receiveCancelledWhileWaiting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fuse.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Net: "unix", Name: path})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	go func() {
		conn, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer conn.Close()
		fdpassing.ReceiveRequest(conn, soon())
		// Start an answer and wait until the client has read it (nothing
		// left in the socket's send queue): it then blocks reading the rest.
		conn.Write([]byte(`{"version":1`))
		raw, _ := conn.SyscallConn()
		for queued := 1; queued > 0; {
			raw.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
			runtime.Gosched()
		}
		close(got)
		<-release // never finish the answer
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-got
		cancel()
	}()
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("Receive panicked after cancellation: %v", p)
			}
		}()
		_, _, err = Receive(ctx, Config{SocketPath: path, ConnectTimeout: 10 * time.Second})
	}()
	if err == nil {
		t.Errorf("Receive returned no error after cancellation")
	}
}

package integration

// Hostile peers on the fd-passing socket, and symlink/rename races against
// the paths the driver works in.
//
// TestHostileClients and TestHostileSlowClients connect to a published
// volume's socket as a pod's process would (as uid 65534, see dialAs) and
// misbehave: garbage, oversized and never-ending requests, silence, floods,
// a second connection to a served volume, hostile mount options, unknown
// operations. After each, the driver must have answered or dropped the
// connection, mounted nothing, changed nothing on the host and given back
// every fd, and the volume must still be served to a real fuse-starter.
//
// TestSymlinkRace publishes and unpublishes in a loop while other goroutines
// swap the pod's emptyDir, the socket name and the pod's kubernetes.io~csi
// directory for symlinks to directories outside the kubelet directory, and
// checks that nothing outside ever changes or gets mounted (inotify, a
// snapshot and the mount table).
//
// Two driver bugs these tests found are fixed (docs/security.md): unpublish
// unmounting by a path whose parents the pod can swap, and a dir fd leaked
// per publish; the race tests fail should either come back.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fdpassing"
	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// ---------------------------------------------------------------------------
// Socket clients

// openEmptyDir opens the pod's emptyDir as an O_PATH handle: its socket is
// reached as /proc/self/fd/<n>/<name>, because the node path is longer than
// a socket address may be.
func openEmptyDir(t *testing.T, pod *harness.Pod) (dir *os.File, sock string) {
	t.Helper()
	fd, err := unix.Open(pod.EmptyDirPath(emptyDirName), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening the emptyDir: %v", err)
	}
	f := os.NewFile(uintptr(fd), pod.EmptyDirPath(emptyDirName))
	t.Cleanup(func() { f.Close() })
	return f, "/proc/self/fd/" + strconv.Itoa(fd) + "/" + socketName
}

// dialAs connects to the Unix socket at path from a thread whose effective
// uid and gid are uid and gid, without supplementary groups and so without
// capabilities: the driver's SO_PEERCRED then sees an unprivileged peer, as
// a pod's process is. Only that one thread's credentials change, for the
// connect (raw syscalls, not the process-wide syscall.Setuid), and they are
// restored before the thread is unlocked. The thread must not simply be
// thrown away (a goroutine ending locked to it): processes the harness
// started from that thread (the driver, sidecars) have a parent-death
// signal, which the kernel sends when the parent thread exits.
func dialAs(path string, uid, gid int) (*net.UnixConn, error) {
	type result struct {
		c   *net.UnixConn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		groups, err := unix.Getgroups()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		gids := make([]uint32, len(groups)+1) // never empty, for &gids[0]
		for i, g := range groups {
			gids[i] = uint32(g)
		}
		restore := func() error {
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
				return fmt.Errorf("restoring euid 0: %w", e)
			}
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
				return fmt.Errorf("restoring egid 0: %w", e)
			}
			if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(unsafe.Pointer(&gids[0])), 0); e != 0 {
				return fmt.Errorf("restoring the groups: %w", e)
			}
			return nil
		}
		var r result
		switch _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); {
		case e != 0:
			r.err = fmt.Errorf("setgroups: %w", e)
		default:
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(gid), ^uintptr(0)); e != 0 {
				r.err = fmt.Errorf("setresgid: %w", e)
				break
			}
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
				r.err = fmt.Errorf("setresuid: %w", e)
				break
			}
			r.c, r.err = net.DialUnix("unix", nil, &net.UnixAddr{Net: "unix", Name: path})
		}
		if err := restore(); err != nil {
			// Stay locked: the thread, with its odd credentials, ends with
			// this goroutine (and takes its children's pdeathsig along).
			if r.c != nil {
				r.c.Close()
			}
			ch <- result{err: fmt.Errorf("the thread's credentials could not be restored: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- r
	}()
	r := <-ch
	return r.c, r.err
}

// dialNobody connects as uid/gid 65534 and closes the connection at the end of the test.
func dialNobody(t *testing.T, sock string) *net.UnixConn {
	t.Helper()
	c, err := dialAs(sock, harness.NobodyUID, harness.NobodyGID)
	if err != nil {
		t.Fatalf("connecting to the driver's socket as uid %d: %v", harness.NobodyUID, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialRoot connects as the test process (root).
func dialRoot(t *testing.T, sock string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Net: "unix", Name: sock})
	if err != nil {
		t.Fatalf("connecting to the driver's socket: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// answer is what came back on a connection.
type answer struct {
	resp *fdpassing.Response // nil unless a complete line came
	raw  string
	fds  int   // fds that came with it (already closed)
	end  error // how reading ended when no line came
}

func (a answer) String() string {
	return fmt.Sprintf("answer %q (%d fds, end: %v)", a.raw, a.fds, a.end)
}

// readAnswer reads the driver's answer line and any fds with it (closing
// them), until a newline, the end of the connection or timeout.
func readAnswer(c *net.UnixConn, timeout time.Duration) answer {
	var a answer
	c.SetReadDeadline(time.Now().Add(timeout))
	data := make([]byte, fdpassing.MaxMessageSize)
	oob := make([]byte, unix.CmsgSpace(64*4))
	var buf []byte
	for bytes.IndexByte(buf, '\n') < 0 {
		n, oobn, _, _, err := c.ReadMsgUnix(data, oob)
		if n > 0 {
			buf = append(buf, data[:n]...)
		}
		if oobn > 0 {
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for i := range msgs {
				fds, _ := unix.ParseUnixRights(&msgs[i])
				a.fds += len(fds)
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
		}
		if err != nil {
			a.end = err
			break
		}
		if n == 0 && oobn == 0 {
			a.end = io.EOF
			break
		}
	}
	a.raw = string(buf)
	if i := bytes.IndexByte(buf, '\n'); i >= 0 {
		var r fdpassing.Response
		if err := json.Unmarshal(buf[:i], &r); err != nil {
			a.end = fmt.Errorf("malformed answer: %w", err)
		} else {
			a.resp = &r
		}
	}
	return a
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// requireRefused checks that the driver answered with an error naming want,
// and passed no fd.
func requireRefused(t *testing.T, a answer, want string) {
	t.Helper()
	if isTimeout(a.end) {
		t.Fatalf("the driver neither answered nor closed the connection within %v (hung?); got %s", waitLimit, a)
	}
	if a.fds != 0 {
		t.Fatalf("the driver passed %d fds to a refused client: %s", a.fds, a)
	}
	if a.resp == nil || a.resp.Error == "" {
		t.Fatalf("want an error answer mentioning %q, got %s", want, a)
	}
	if !strings.Contains(a.resp.Error, want) {
		t.Fatalf("error answer %q does not mention %q", a.resp.Error, want)
	}
}

// ---------------------------------------------------------------------------
// Driver and host state

// driverFDs lists the driver's open fds (number -> what it points at).
func driverFDs(t *testing.T, pid int) map[string]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("listing the driver's fds: %v", err)
	}
	out := make(map[string]string, len(ents))
	for _, e := range ents {
		l, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out[e.Name()] = l
	}
	return out
}

// waitDriverFDs waits until the driver holds no more fds than base (fds it
// opens for a moment, to read the mount table, come and go).
func waitDriverFDs(t *testing.T, pid int, base map[string]string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		cur := driverFDs(t, pid)
		if len(cur) <= len(base) {
			return
		}
		if time.Now().After(deadline) {
			var extra []string
			for fd, l := range cur {
				if base[fd] != l {
					extra = append(extra, fd+" -> "+l)
				}
			}
			sort.Strings(extra)
			t.Fatalf("the driver holds %d fds, %d before; new: %s", len(cur), len(base), strings.Join(extra, ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procStatusKB reads a "<field>:  N kB" line of /proc/<pid>/status.
func procStatusKB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	n, err := harness.ProcStatus(pid, field)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	id                 string
	mountpoint, fstype string
	source, superOpts  string
	opts               string
}

func readMountinfo(t *testing.T) []mountEntry {
	t.Helper()
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]mountEntry, 0, len(infos))
	for _, m := range infos {
		out = append(out, mountEntry{id: strconv.Itoa(m.ID), mountpoint: m.Mountpoint, opts: m.Options,
			fstype: m.FSType, source: m.Source, superOpts: m.VFSOptions})
	}
	return out
}

// fuseMountsAt lists the FUSE mounts at target, bottom first.
func fuseMountsAt(t *testing.T, target string) []mountEntry {
	t.Helper()
	var out []mountEntry
	for _, m := range readMountinfo(t) {
		if m.mountpoint == target && harness.IsFuseType(m.fstype) {
			out = append(out, m)
		}
	}
	return out
}

// mountsUnder lists the mounts at or below dir.
func mountsUnder(t *testing.T, dir string) []mountEntry {
	t.Helper()
	var out []mountEntry
	for _, m := range readMountinfo(t) {
		if m.mountpoint == dir || strings.HasPrefix(m.mountpoint, dir+"/") {
			out = append(out, m)
		}
	}
	return out
}

// skipUnder returns s without the entries at or below dir (a served FUSE
// mount's content is not the host's).
func skipUnder(s map[string]string, dir string) map[string]string {
	out := make(map[string]string, len(s))
	for p, v := range s {
		if p != dir && !strings.HasPrefix(p, dir+"/") {
			out[p] = v
		}
	}
	return out
}

// hostile is a published, not yet served volume that a hostile client is
// about to attack, with what is needed to prove afterwards that the attack
// changed nothing.
type hostile struct {
	e       *env
	pod     *harness.Pod
	v       *volume
	sock    string // the socket, reachable by the test process
	outside string // a directory outside the kubelet dir, with a victim file
	pid     int    // the driver's
	fds     map[string]string
	before  map[string]string
}

func (e *env) newHostile(t *testing.T) *hostile {
	t.Helper()
	outside := harness.NewDir(t, 0o755)
	must(t, os.WriteFile(filepath.Join(outside, "victim"), []byte("do not touch"), 0o644))
	pod, v := e.podWithVolume(t, false)
	_, sock := openEmptyDir(t, pod)
	h := &hostile{e: e, pod: pod, v: v, sock: sock, outside: outside, pid: e.d.Pid()}
	h.fds = driverFDs(t, h.pid)
	h.before = snapshot(t, e.k.Dir, outside)
	return h
}

// requireUnharmed checks that after the attack nothing is mounted at the
// target, nothing changed under the kubelet dir or outside it, and the
// driver holds no fd more than before.
func (h *hostile) requireUnharmed(t *testing.T) {
	t.Helper()
	if ms := fuseMountsAt(t, h.v.target); len(ms) != 0 {
		t.Fatalf("something is mounted at the target after a refused client: %+v", ms)
	}
	waitDriverFDs(t, h.pid, h.fds)
	if d := diff(h.before, snapshot(t, h.e.k.Dir, h.outside)); d != "" {
		t.Fatalf("the hostile client changed the host:\n%s", d)
	}
}

// requireServes proves that the volume is still served to a legitimate FUSE
// process: fuse-starter with go-fuse's loopback server, as uid 65534. Then
// it unpublishes and checks that nothing stays mounted. wantMounts is the
// number of FUSE mounts expected at the target once served (more than one
// when a dead one is below).
func (h *hostile) requireServes(t *testing.T, wantMounts int) {
	t.Helper()
	sidecar := h.e.starter(t, h.pod, h.e.bins.Loopback, "/dev/fd/3", backingDir(t))
	if got, _ := waitServed(t, h.v.target, "hello.txt", sidecar); got != "hello from the backing dir\n" {
		t.Fatalf("read %q through the mount", got)
	}
	ms := fuseMountsAt(t, h.v.target)
	if len(ms) != wantMounts {
		t.Fatalf("%d FUSE mounts at the target, want %d: %+v", len(ms), wantMounts, ms)
	}
	top := ms[len(ms)-1]
	for _, want := range []string{"user_id=65534", "group_id=65534", "allow_other"} {
		if !strings.Contains(","+top.superOpts+",", ","+want+",") {
			t.Errorf("served mount lacks %s: %+v", want, top)
		}
	}
	for _, want := range []string{"nosuid", "nodev"} {
		if !strings.Contains(","+top.opts+",", ","+want+",") {
			t.Errorf("served mount lacks %s: %+v", want, top)
		}
	}
	h.e.unpublish(t, h.v)
	requireNothingMounted(t, h.e.k)
	if _, err := sidecar.Wait(waitLimit); err != nil {
		t.Fatalf("the FUSE sidecar did not exit after unpublish: %v", err)
	}
}

// ---------------------------------------------------------------------------
// Hostile clients

// protoCase is a hostile client that writes bytes on the socket.
type protoCase struct {
	name string
	send []byte
	// fds: pass this many fds (of /dev/null) along with send.
	fds int
	// shutWrite ends the write side after send, so the driver reads EOF.
	shutWrite bool
	// want is in the driver's error answer.
	want string
}

func garbageCases() []protoCase {
	random := make([]byte, 4096)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(r.UintN(256))
		if random[i] == '\n' {
			random[i] = 0xff
		}
	}
	line := func(s string) []byte { return []byte(s + "\n") }
	valid := `{"version":1,"op":"mount","client":"x"}`
	return []protoCase{
		{name: "text line", send: line("GET / HTTP/1.1"), want: "malformed request"},
		{name: "random binary line", send: append(bytes.Clone(random), '\n'), want: "malformed request"},
		{name: "NUL bytes line", send: append(make([]byte, 4000), '\n'), want: "malformed request"},
		{name: "raw NUL inside a JSON string", send: line(`{"version":1,"op":"mo` + "\x00" + `unt"}`), want: "malformed request"},
		{name: "binary then EOF", send: random, shutWrite: true, want: "EOF"},
		{name: "NUL bytes then EOF", send: make([]byte, 100), shutWrite: true, want: "EOF"},
		{name: "nothing then EOF", shutWrite: true, want: "EOF"},
		{name: "empty line", send: line(""), want: "malformed request"},
		{name: "JSON array", send: line(`[1,2,3]`), want: "malformed request"},
		{name: "JSON string", send: line(`"mount"`), want: "malformed request"},
		{name: "deeply nested JSON", send: line(strings.Repeat("[", 8000)), want: "malformed request"},
		{name: "unknown field", send: line(`{"version":1,"op":"mount","target":"/etc"}`), want: `unknown field "target"`},
		{name: "wrong field type", send: line(`{"version":"1","op":"mount"}`), want: "malformed request"},
		{name: "trailing data on the line", send: line(valid + ` {"op":"unmount"}`), want: "trailing data"},
		{name: "two requests in one write", send: []byte(valid + "\n" + valid + "\n"), want: "unexpected data after the request line"},
		{name: "valid line with 64 fds attached", send: line(`{"version":1,"op":"bogus"}`), fds: 64, want: "unknown operation"},
		{name: "binary with 200 fds attached", send: append(bytes.Clone(random[:100]), '\n'), fds: 200, want: "malformed request"},
	}
}

func opCases() []protoCase {
	line := func(s string) []byte { return []byte(s + "\n") }
	return []protoCase{
		{name: "op format", send: line(`{"version":1,"op":"format"}`), want: `unknown operation "format"`},
		{name: "op MOUNT", send: line(`{"version":1,"op":"MOUNT"}`), want: `unknown operation "MOUNT"`},
		{name: "op umount", send: line(`{"version":1,"op":"umount"}`), want: `unknown operation "umount"`},
		{name: "op empty", send: line(`{"version":1,"op":""}`), want: `unknown operation ""`},
		{name: "op missing", send: line(`{"version":1}`), want: `unknown operation ""`},
		{name: "op with NUL", send: line(`{"version":1,"op":"mount\u0000"}`), want: "unknown operation"},
		{name: "op with trailing space", send: line(`{"version":1,"op":"mount "}`), want: "unknown operation"},
		{name: "op twice, last unknown", send: line(`{"version":1,"op":"mount","op":"format"}`), want: `unknown operation "format"`},
		{name: "op as array", send: line(`{"version":1,"op":["mount"]}`), want: "malformed request"},
		{name: "op as number", send: line(`{"version":1,"op":1}`), want: "malformed request"},
		{name: "version 2", send: line(`{"version":2,"op":"mount"}`), want: "protocol version 2 is not supported"},
		{name: "version 0", send: line(`{"version":0,"op":"mount"}`), want: "protocol version 0 is not supported"},
		{name: "version negative", send: line(`{"version":-1,"op":"mount"}`), want: "not supported"},
		{name: "version huge", send: line(`{"version":1e400,"op":"mount"}`), want: "malformed request"},
	}
}

// runProtoCase sends c as uid 65534 and checks the driver's answer.
func runProtoCase(t *testing.T, h *hostile, c protoCase) {
	conn := dialNobody(t, h.sock)
	conn.SetWriteDeadline(time.Now().Add(waitLimit))
	if c.fds > 0 {
		null, err := os.Open(os.DevNull)
		must(t, err)
		defer null.Close()
		fds := make([]int, c.fds)
		for i := range fds {
			fds[i] = int(null.Fd())
		}
		if _, _, err := conn.WriteMsgUnix(c.send, unix.UnixRights(fds...), nil); err != nil {
			t.Fatalf("sending: %v", err)
		}
	} else if len(c.send) > 0 {
		if _, err := conn.Write(c.send); err != nil {
			t.Fatalf("sending: %v", err)
		}
	}
	if c.shutWrite {
		must(t, conn.CloseWrite())
	}
	requireRefused(t, readAnswer(conn, waitLimit), c.want)
	// The driver closes the connection after answering.
	if b := readAnswer(conn, waitLimit); b.raw != "" || !(errors.Is(b.end, io.EOF) || b.end == nil || errors.Is(b.end, syscall.ECONNRESET)) {
		t.Fatalf("after its answer the driver did not close the connection: %s", b)
	}
}

// The fd-passing socket refuses garbage, unknown operations and hostile
// mount options from a pod's process, passes no fd, mounts nothing, and the
// volume is then served to the real FUSE sidecar. Served volumes refuse a
// second client.
func TestHostileClients(t *testing.T) {
	e := setup(t)

	t.Run("garbage", func(t *testing.T) {
		for _, c := range garbageCases() {
			t.Run(c.name, func(t *testing.T) {
				h := e.newHostile(t)
				runProtoCase(t, h, c)
				h.requireUnharmed(t)
				h.requireServes(t, 1)
			})
		}
	})

	t.Run("unknown op", func(t *testing.T) {
		for _, c := range opCases() {
			t.Run(c.name, func(t *testing.T) {
				h := e.newHostile(t)
				runProtoCase(t, h, c)
				h.requireUnharmed(t)
				h.requireServes(t, 1)
			})
		}
	})

	t.Run("oversized", func(t *testing.T) {
		bigOptions := strings.Repeat("noatime,", 2000)
		for _, c := range []protoCase{
			{name: "line of exactly the limit", send: append(bytes.Repeat([]byte("A"), fdpassing.MaxMessageSize-1), '\n'), want: "malformed request"},
			{name: "line one byte over the limit", send: append(bytes.Repeat([]byte("A"), fdpassing.MaxMessageSize), '\n'), want: "size limit"},
			{name: "valid JSON over the limit", send: []byte(`{"version":1,"op":"mount","mountOptions":"` + bigOptions + `ro"}` + "\n"), want: "size limit"},
			{name: "over the limit without newline then EOF", send: bytes.Repeat([]byte{0}, 3*fdpassing.MaxMessageSize), shutWrite: true, want: "size limit"},
		} {
			t.Run(c.name, func(t *testing.T) {
				h := e.newHostile(t)
				runProtoCase(t, h, c)
				h.requireUnharmed(t)
				h.requireServes(t, 1)
			})
		}
		// Several MiB without a newline, written as fast as the socket
		// takes them: the driver must stop at its bound, answer and close,
		// which ends the writer's writes early; it never buffers the stream.
		t.Run("32 MiB without newline", func(t *testing.T) {
			h := e.newHostile(t)
			hwm := procStatusKB(t, h.pid, "VmHWM")
			conn := dialNobody(t, h.sock)
			const total = 32 << 20
			var written atomic.Int64
			writeErr := make(chan error, 1)
			go func() {
				chunk := bytes.Repeat([]byte("A"), 1<<20)
				conn.SetWriteDeadline(time.Now().Add(waitLimit))
				for written.Load() < total {
					n, err := conn.Write(chunk)
					written.Add(int64(n))
					if err != nil {
						writeErr <- err
						return
					}
				}
				writeErr <- nil
			}()
			a := readAnswer(conn, waitLimit)
			var werr error
			select {
			case werr = <-writeErr:
			case <-time.After(waitLimit):
				conn.Close() // ends the writer
				<-writeErr
				t.Fatalf("the writer is still blocked %v after the answer: the driver neither reads nor closes", waitLimit)
			}
			requireRefused(t, a, "size limit")
			if werr == nil || written.Load() >= total {
				t.Fatalf("the driver took all %d bytes (write error %v): it must stop reading at %d", written.Load(), werr, fdpassing.MaxMessageSize)
			}
			if !errors.Is(werr, syscall.EPIPE) && !errors.Is(werr, syscall.ECONNRESET) {
				t.Errorf("writer ended with %v, want EPIPE or ECONNRESET (connection closed by the driver)", werr)
			}
			grew := procStatusKB(t, h.pid, "VmHWM") - hwm
			t.Logf("the driver closed the connection after %d of %d bytes (the rest of it sat in socket buffers); its peak RSS grew by %d KiB", written.Load(), total, grew)
			if grew > 16<<10 {
				t.Errorf("the driver's peak RSS grew by %d KiB while a client sent %d MiB: it buffers what it should refuse", grew, total>>20)
			}
			h.requireUnharmed(t)
			h.requireServes(t, 1)
		})
	})

	t.Run("hostile mount options", func(t *testing.T) {
		many := strings.TrimSuffix(strings.Repeat("noatime,", 65), ",")
		for _, c := range []struct{ name, opts, want string }{
			{"dev", "dev", `"dev" is not allowed`},
			{"suid", "suid", `"suid" is not allowed`},
			{"suid after allowed options", "noatime,ro,suid", `"suid" is not allowed`},
			{"user_id=0", "user_id=0", `"user_id=0" is not allowed`},
			{"group_id=0", "group_id=0", `"group_id=0" is not allowed`},
			{"fd=3", "fd=3", `"fd=3" is not allowed`},
			{"fd=0 after allowed options", "max_read=4096,fd=0", `"fd=0" is not allowed`},
			{"rootmode", "rootmode=40000", "rootmode"},
			{"allow_root", "allow_root", "allow_root"},
			{"blksize", "blksize=4096", "blksize"},
			{"auto_unmount", "auto_unmount", "auto_unmount"},
			{"bind", "bind", `"bind" is not allowed`},
			{"remount", "remount", `"remount" is not allowed`},
			{"comma injection", "max_read=4096,user_id=0", `"user_id=0" is not allowed`},
			{"escaped comma in subtype", `subtype=x\,user_id=0`, "subtype"},
			{"escaped comma joining dev", `noatime\,dev`, "not supported"},
			{"NUL then user_id", "fsname=a\x00,user_id=0", "printable ASCII"},
			{"newline in fsname", "fsname=a\nuser_id=0", "printable ASCII"},
			{"uppercase DEV", "DEV", "not supported"},
			{"leading space", " dev", "not supported"},
			{"empty entry", "ro,,dev", "empty mount option"},
			{"lone backslash", `ro\`, "lone backslash"},
			{"value on a flag", "nosuid=0", "takes no value"},
			{"allow_other with a value", "allow_other=0", "takes no value"},
			{"max_read 0", "max_read=0", "max_read"},
			{"SELinux context", "context=system_u:object_r:foo", "not supported"},
			{"65 options", many, "at most 64"},
			{"over 4096 bytes", "fsname=" + strings.Repeat("x", 5000), "at most 4096"},
		} {
			t.Run(c.name, func(t *testing.T) {
				h := e.newHostile(t)
				conn := dialNobody(t, h.sock)
				must(t, fdpassing.SendRequest(conn, &fdpassing.Request{Op: fdpassing.OpMount, Client: "hostile", MountOptions: c.opts}, time.Now().Add(waitLimit)))
				requireRefused(t, readAnswer(conn, waitLimit), c.want)
				h.requireUnharmed(t)
				h.requireServes(t, 1)
			})
		}
		// An escaped comma is allowed in fsname, which becomes the mount
		// source: it must stay one string there and never reach the mount
		// data, where it would set the mount's owner or device policy.
		t.Run("escaped commas in fsname stay in the source", func(t *testing.T) {
			h := e.newHostile(t)
			conn := dialNobody(t, h.sock)
			must(t, fdpassing.SendRequest(conn, &fdpassing.Request{Op: fdpassing.OpMount, Client: "hostile", MountOptions: `fsname=a\,user_id=0\,group_id=0\,dev\,suid`}, time.Now().Add(waitLimit)))
			resp, dev, err := fdpassing.ReceiveResponse(conn, time.Now().Add(waitLimit))
			if err != nil || resp.Error != "" || dev == nil {
				t.Fatalf("mount with an fsname holding commas: %+v %v", resp, err)
			}
			ms := fuseMountsAt(t, h.v.target)
			if len(ms) != 1 {
				t.Fatalf("FUSE mounts at the target: %+v", ms)
			}
			m := ms[0]
			if m.source != "a,user_id=0,group_id=0,dev,suid" {
				t.Errorf("mount source %q, want the fsname verbatim", m.source)
			}
			for _, want := range []string{",user_id=65534,", ",group_id=65534,"} {
				if !strings.Contains(","+m.superOpts+",", want) {
					t.Errorf("mount data %q lacks %s: the injected value took effect", m.superOpts, want)
				}
			}
			if !strings.Contains(","+m.opts+",", ",nosuid,") || !strings.Contains(","+m.opts+",", ",nodev,") {
				t.Errorf("mount options %q lack nosuid,nodev", m.opts)
			}
			if strings.Contains(resp.MountData, "user_id=0") || !strings.Contains(resp.MountData, "user_id=65534") {
				t.Errorf("mount data in the answer: %q", resp.MountData)
			}
			// The hostile client goes away without serving: the mount is
			// dead, and the real FUSE sidecar gets a new one on top.
			dev.Close()
			conn.Close()
			h.requireServes(t, 2)
		})
	})

	t.Run("second client while served", func(t *testing.T) {
		h := e.newHostile(t)
		sidecar := e.starter(t, h.pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
		waitServed(t, h.v.target, "hello.txt", sidecar)
		fds := driverFDs(t, h.pid)
		stillServed := func(t *testing.T) {
			t.Helper()
			if sidecar.Exited() {
				t.Fatalf("the FUSE sidecar exited:\n%s", sidecar.Output())
			}
			if b, err := os.ReadFile(filepath.Join(h.v.target, "hello.txt")); err != nil || string(b) != "hello from the backing dir\n" {
				t.Fatalf("read through the served mount: %q %v", b, err)
			}
			if ms := fuseMountsAt(t, h.v.target); len(ms) != 1 {
				t.Fatalf("want exactly the one served FUSE mount at the target, got %+v", ms)
			}
			waitDriverFDs(t, h.pid, fds)
		}
		mountReq := func(t *testing.T, conn *net.UnixConn) {
			must(t, fdpassing.SendRequest(conn, &fdpassing.Request{Op: fdpassing.OpMount, Client: "hostile"}, time.Now().Add(waitLimit)))
			resp, dev, err := fdpassing.ReceiveResponse(conn, time.Now().Add(waitLimit))
			if dev != nil {
				dev.Close()
				t.Fatalf("a second client of a served volume got a /dev/fuse fd: %+v", resp)
			}
			if err != nil || resp == nil || !strings.Contains(resp.Error, "already served") {
				t.Fatalf("second client: %+v %v, want a refusal saying the volume is already served", resp, err)
			}
		}
		t.Run("mount request as uid 65534", func(t *testing.T) {
			mountReq(t, dialNobody(t, h.sock))
			stillServed(t)
		})
		t.Run("mount request as root", func(t *testing.T) {
			mountReq(t, dialRoot(t, h.sock))
			stillServed(t)
		})
		t.Run("20 mount requests in a row", func(t *testing.T) {
			for range 20 {
				mountReq(t, dialNobody(t, h.sock))
			}
			stillServed(t)
		})
		t.Run("mount request with hostile options", func(t *testing.T) {
			conn := dialNobody(t, h.sock)
			must(t, fdpassing.SendRequest(conn, &fdpassing.Request{Op: fdpassing.OpMount, MountOptions: "dev,suid"}, time.Now().Add(waitLimit)))
			requireRefused(t, readAnswer(conn, waitLimit), `"dev" is not allowed`)
			stillServed(t)
		})
		t.Run("garbage", func(t *testing.T) {
			conn := dialNobody(t, h.sock)
			conn.Write([]byte("\x00\x01garbage\n"))
			requireRefused(t, readAnswer(conn, waitLimit), "malformed request")
			stillServed(t)
		})
		e.unpublish(t, h.v)
		requireNothingMounted(t, e.k)
	})
}

// Clients that connect and then stall are dropped after the handshake
// timeout; the one-at-a-time socket is then free for the real FUSE process.
// A flood of connections neither makes the driver hold more fds nor keeps a
// legitimate client from being served.
func TestHostileSlowClients(t *testing.T) {
	const handshake = 300 * time.Millisecond
	e := setup(t, "--handshake-timeout="+handshake.String())

	// stall makes a client that connects and never completes its request.
	type stall struct {
		name string
		send string
		// trickle: after send, one more byte every 10 ms, never a newline.
		trickle bool
	}
	for _, c := range []stall{
		{name: "silent"},
		{name: "partial request", send: `{"version":1,"op":"mou`},
		{name: "trickling one byte at a time", send: `{"version":1,"op":"mount","client":"`, trickle: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := e.newHostile(t)
			conn := dialNobody(t, h.sock)
			start := time.Now()
			if c.send != "" {
				_, err := conn.Write([]byte(c.send))
				must(t, err)
			}
			stopTrickle := make(chan struct{})
			trickled := make(chan int, 1)
			if c.trickle {
				go func() {
					n := 0
					defer func() { trickled <- n }()
					for {
						select {
						case <-stopTrickle:
							return
						case <-time.After(10 * time.Millisecond):
						}
						conn.SetWriteDeadline(time.Now().Add(time.Second))
						if _, err := conn.Write([]byte("x")); err != nil {
							return
						}
						n++
					}
				}()
			}
			// The real FUSE process connects while the staller holds the
			// socket; it waits in the listen queue and is served next.
			sidecar := e.starter(t, h.pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
			a := readAnswer(conn, waitLimit)
			took := time.Since(start)
			close(stopTrickle)
			if c.trickle {
				t.Logf("trickled %d bytes before the driver dropped the client", <-trickled)
			}
			requireRefused(t, a, "timeout")
			if took < handshake/2 {
				t.Errorf("dropped after %v, before the handshake timeout of %v", took, handshake)
			}
			t.Logf("dropped after %v (handshake timeout %v)", took, handshake)
			waitServed(t, h.v.target, "hello.txt", sidecar)
			h.e.unpublish(t, h.v)
			requireNothingMounted(t, e.k)
		})
	}

	t.Run("200 concurrent clients", func(t *testing.T) {
		h := e.newHostile(t)
		base := driverFDs(t, h.pid)
		const n = 200

		// Sample the driver's fd count while the flood lasts.
		var maxFDs atomic.Int64
		samplerStop := make(chan struct{})
		samplerDone := make(chan struct{})
		go func() {
			defer close(samplerDone)
			for {
				if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", h.pid)); err == nil && int64(len(ents)) > maxFDs.Load() {
					maxFDs.Store(int64(len(ents)))
				}
				select {
				case <-samplerStop:
					return
				case <-time.After(2 * time.Millisecond):
				}
			}
		}()
		stopSampler := sync.OnceFunc(func() { close(samplerStop); <-samplerDone })
		defer stopSampler()

		// Kinds: 0 garbage line (answered), 1 silent, 2 partial request
		// (both held open until release), 3 connect and close at once.
		var (
			wg                  sync.WaitGroup
			dialled, dialFailed atomic.Int64
			answered, badAnswer atomic.Int64
			connected           sync.WaitGroup
			begin               = make(chan struct{})
			release             = make(chan struct{})
		)
		releaseAll := sync.OnceFunc(func() { close(release) })
		defer func() { releaseAll(); wg.Wait() }()
		connected.Add(n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-begin
				c, err := net.DialUnix("unix", nil, &net.UnixAddr{Net: "unix", Name: h.sock})
				connected.Done()
				if err != nil {
					dialFailed.Add(1)
					return
				}
				defer c.Close()
				dialled.Add(1)
				switch i % 4 {
				case 0:
					c.SetWriteDeadline(time.Now().Add(waitLimit))
					c.Write([]byte("\x00garbage\xff\n"))
					a := readAnswer(c, waitLimit)
					if a.resp != nil && a.resp.Error != "" && a.fds == 0 {
						answered.Add(1)
					} else {
						badAnswer.Add(1)
					}
				case 1:
					<-release
				case 2:
					c.Write([]byte(`{"version":1,`))
					<-release
				case 3:
				}
			}()
		}
		close(begin)
		connected.Wait()
		// The legitimate FUSE process connects in the middle of the flood.
		sidecar := e.starter(t, h.pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
		// Held clients let go after a while, as the driver drops the ones it
		// gets to (each after the handshake timeout).
		time.Sleep(time.Second)
		releaseAll()
		wg.Wait()
		waitServed(t, h.v.target, "hello.txt", sidecar)
		stopSampler()

		t.Logf("%d clients connected (%d failed to), %d garbage clients answered (%d badly); driver fds: %d before, at most %d during the flood",
			dialled.Load(), dialFailed.Load(), answered.Load(), badAnswer.Load(), len(base), maxFDs.Load())
		if badAnswer.Load() != 0 {
			t.Errorf("%d garbage clients got no error answer", badAnswer.Load())
		}
		// One connection at a time: a flood may cost the driver the fd of
		// the connection it handles and the few it opens to mount, no more.
		if maxFDs.Load() > int64(len(base))+8 {
			t.Errorf("the driver held up to %d fds during the flood, %d before: it does not bound what a pod's connections cost", maxFDs.Load(), len(base))
		}
		waitDriverFDs(t, h.pid, base)
		if d := diff(skipUnder(h.before, h.v.target), skipUnder(snapshot(t, e.k.Dir, h.outside), h.v.target)); d != "" {
			t.Fatalf("the flood changed the host:\n%s", d)
		}
		e.unpublish(t, h.v)
		requireNothingMounted(t, e.k)
	})
}

// ---------------------------------------------------------------------------
// Symlink and rename races

const (
	// raceIterations publish/unpublish rounds per race, unless raceBudget
	// runs out first (a bound on the test's duration, not an assertion).
	raceIterations = 500
	raceBudget     = 8 * time.Second
)

// inotifyWatch records every change to, and every open of, the watched
// directories: a transient entry (a socket made and removed again) shows
// up although a later snapshot would not see it.
type inotifyWatch struct {
	fd    int
	names map[int32]string
}

const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_MOVED_FROM |
	unix.IN_MOVED_TO | unix.IN_CLOSE_WRITE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_OPEN

func watchDirs(t *testing.T, dirs ...string) *inotifyWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	w := &inotifyWatch{fd: fd, names: map[int32]string{}}
	for _, d := range dirs {
		w.add(t, d)
	}
	return w
}

// add watches one more directory (a new mount on a watched path).
func (w *inotifyWatch) add(t *testing.T, dir string) {
	t.Helper()
	wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask|unix.IN_DONT_FOLLOW|unix.IN_ONLYDIR)
	if err != nil {
		t.Fatalf("inotify watch on %s: %v", dir, err)
	}
	w.names[int32(wd)] = dir
}

var inotifyBits = []struct {
	bit  uint32
	name string
}{
	{unix.IN_ACCESS, "ACCESS"}, {unix.IN_MODIFY, "MODIFY"}, {unix.IN_ATTRIB, "ATTRIB"},
	{unix.IN_CLOSE_WRITE, "CLOSE_WRITE"}, {unix.IN_CLOSE_NOWRITE, "CLOSE_NOWRITE"}, {unix.IN_OPEN, "OPEN"},
	{unix.IN_MOVED_FROM, "MOVED_FROM"}, {unix.IN_MOVED_TO, "MOVED_TO"}, {unix.IN_CREATE, "CREATE"},
	{unix.IN_DELETE, "DELETE"}, {unix.IN_DELETE_SELF, "DELETE_SELF"}, {unix.IN_MOVE_SELF, "MOVE_SELF"},
	{unix.IN_UNMOUNT, "UNMOUNT"}, {unix.IN_Q_OVERFLOW, "Q_OVERFLOW"}, {unix.IN_IGNORED, "IGNORED"},
	{unix.IN_ISDIR, "ISDIR"},
}

// events drains and describes what happened since the last call.
func (w *inotifyWatch) events(t *testing.T) []string {
	t.Helper()
	var out []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return out
		}
		if err != nil {
			t.Fatalf("reading inotify events: %v", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int32(binary.NativeEndian.Uint32(buf[off:]))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
			off += unix.SizeofInotifyEvent
			name := strings.TrimRight(string(buf[off:off+nameLen]), "\x00")
			off += nameLen
			var what []string
			for _, b := range inotifyBits {
				if mask&b.bit != 0 {
					what = append(what, b.name)
				}
			}
			out = append(out, fmt.Sprintf("%s: %s", filepath.Join(w.names[wd], name), strings.Join(what, "|")))
		}
	}
}

// racers runs loops in goroutines until stop, which the test's cleanup
// calls too, so no racer outlives a failed test.
type racers struct {
	stopCh chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

func newRacers(t *testing.T) *racers {
	r := &racers{stopCh: make(chan struct{})}
	t.Cleanup(r.stop)
	return r
}

func (r *racers) loop(step func()) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			select {
			case <-r.stopCh:
				return
			default:
			}
			step()
		}
	}()
}

func (r *racers) stop() {
	r.once.Do(func() { close(r.stopCh) })
	r.wg.Wait()
}

// jitter pauses a racer for 0 to 200µs, so that its swaps land at varying
// points of the driver's work.
func jitter() {
	if d := rand.IntN(300); d > 100 {
		time.Sleep(time.Duration(d-100) * time.Microsecond)
	}
}

// swapLoop makes a racer that swaps the entries a and b of dir (one a
// directory, the other a symlink) with renameat2(RENAME_EXCHANGE), so that
// at any moment one of them is the directory and the other the symlink.
func swapLoop(t *testing.T, r *racers, dir, a, b string) (swaps *atomic.Int64, restore func()) {
	t.Helper()
	dfd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(dfd) })
	swaps = &atomic.Int64{}
	var failed atomic.Value
	r.loop(func() {
		if err := unix.Renameat2(dfd, a, dfd, b, unix.RENAME_EXCHANGE); err != nil {
			failed.Store(err)
		} else {
			swaps.Add(1)
		}
		jitter()
	})
	restore = func() {
		t.Helper()
		r.stop()
		if err, _ := failed.Load().(error); err != nil {
			t.Errorf("renameat2(RENAME_EXCHANGE) %s <-> %s: %v", a, b, err)
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, a, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := unix.Renameat2(dfd, a, dfd, b, unix.RENAME_EXCHANGE); err != nil {
				t.Fatal(err)
			}
		}
	}
	return swaps, restore
}

// outcomes counts the results of the CSI calls of a race; a result other
// than success or a refusal with a message fails the test.
type outcomes struct {
	n       map[string]int
	example map[string]string
}

func newOutcomes() *outcomes {
	return &outcomes{n: map[string]int{}, example: map[string]string{}}
}

func (o *outcomes) record(t *testing.T, call string, err error) bool {
	t.Helper()
	key := call + " OK"
	if err != nil {
		st, ok := status.FromError(err)
		if !ok {
			t.Errorf("%s: not a gRPC status: %v", call, err)
			return false
		}
		switch st.Code() {
		case codes.InvalidArgument, codes.Unavailable, codes.Internal, codes.FailedPrecondition, codes.NotFound:
		default:
			t.Errorf("%s: %v; want success or a refusal (InvalidArgument, Unavailable, Internal, FailedPrecondition or NotFound)", call, err)
		}
		if strings.TrimSpace(st.Message()) == "" {
			t.Errorf("%s: %s without a message", call, st.Code())
		}
		key = call + " " + st.Code().String()
		if _, seen := o.example[key]; !seen {
			o.example[key] = st.Message()
		}
	}
	o.n[key]++
	return err == nil
}

func (o *outcomes) log(t *testing.T) {
	t.Helper()
	keys := make([]string, 0, len(o.n))
	for k := range o.n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if ex := o.example[k]; ex != "" {
			t.Logf("  %-32s %5d  e.g. %s", k, o.n[k], ex)
		} else {
			t.Logf("  %-32s %5d", k, o.n[k])
		}
	}
}

func (e *env) publishErr(req *csi.NodePublishVolumeRequest) error {
	c, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	_, err := e.d.Node.NodePublishVolume(c, req)
	return err
}

func (e *env) unpublishErr(pod *harness.Pod, name string) error {
	c, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	_, err := e.d.Node.NodeUnpublishVolume(c, pod.UnpublishRequest(name))
	return err
}

// unpublishUntilDone retries NodeUnpublishVolume while racers may make it
// fail, as kubelet retries it; every outcome is recorded.
func (e *env) unpublishUntilDone(t *testing.T, o *outcomes, pod *harness.Pod, name string) bool {
	t.Helper()
	for range 200 {
		if o.record(t, "unpublish", e.unpublishErr(pod, name)) {
			return true
		}
		jitter()
	}
	t.Errorf("NodeUnpublishVolume did not succeed in 200 attempts")
	return false
}

// The driver follows no symlink that replaces the pod's emptyDir or the
// socket name while it publishes and unpublishes: nothing appears in or
// changes under the directory the symlinks point to.
func TestSymlinkRace(t *testing.T) {
	e := setup(t)
	t.Run("emptyDir and socket name swapped for symlinks", func(t *testing.T) { raceEmptyDir(t, e) })
	t.Run("kubernetes.io~csi swapped for a symlink", func(t *testing.T) { raceTarget(t, e) })
}

func raceEmptyDir(t *testing.T, e *env) {
	outside := harness.NewDir(t, 0o755)
	victim := filepath.Join(outside, "victim")
	must(t, os.Mkdir(victim, 0o777))
	must(t, os.Chmod(victim, 0o777)) // as writable as an emptyDir: a bind through a symlink would succeed
	precious := filepath.Join(victim, "precious")
	must(t, os.WriteFile(precious, []byte("do not touch"), 0o644))

	pod := e.k.NewPod(t, "racer")
	ed := pod.AddEmptyDir(emptyDirName)
	req := pod.PublishRequest("vol", attrs(), false)
	const swapName = "zz-swap"
	must(t, os.Symlink(victim, filepath.Join(filepath.Dir(ed), swapName)))
	// The socket racer works in the real emptyDir wherever it is renamed to.
	edFd, err := unix.Open(ed, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	t.Cleanup(func() { unix.Close(edFd) })

	pid := e.d.Pid()
	fds := driverFDs(t, pid)
	before := snapshot(t, outside)
	w := watchDirs(t, outside, victim)

	r := newRacers(t)
	swaps, restore := swapLoop(t, r, filepath.Dir(ed), emptyDirName, swapName)
	// The socket name: a symlink to the victim (to a new name in it, to a
	// file in it, to the directory itself) renamed over whatever is there,
	// the driver's socket included, then removed again.
	var plants atomic.Int64
	targets := []string{filepath.Join(victim, socketName), precious, victim}
	r.loop(func() {
		const tmp = ".race-link"
		unix.Unlinkat(edFd, tmp, 0)
		if err := unix.Symlinkat(targets[rand.IntN(len(targets))], edFd, tmp); err != nil {
			return
		}
		if unix.Renameat(edFd, tmp, edFd, socketName) == nil {
			plants.Add(1)
		}
		jitter()
		var st unix.Stat_t
		if unix.Fstatat(edFd, socketName, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			unix.Unlinkat(edFd, socketName, 0)
		}
		jitter()
	})

	o := newOutcomes()
	start := time.Now()
	n := 0
	for ; n < raceIterations && time.Since(start) < raceBudget && !t.Failed(); n++ {
		o.record(t, "publish", e.publishErr(req))
		e.unpublishUntilDone(t, o, pod, "vol")
	}
	took := time.Since(start)
	restore()
	t.Logf("%d publish/unpublish rounds in %v, %d emptyDir swaps, %d symlinks planted at the socket name; outcomes:", n, took.Round(time.Millisecond), swaps.Load(), plants.Load())
	o.log(t)
	if o.n["publish OK"] == 0 {
		t.Errorf("no publish succeeded: the race did not exercise the socket creation")
	}

	if ev := w.events(t); len(ev) > 0 {
		t.Errorf("%d inotify events outside the kubelet dir during the race, e.g.:\n%s", len(ev), strings.Join(ev[:min(len(ev), 20)], "\n"))
	}
	if d := diff(before, snapshot(t, outside)); d != "" {
		t.Errorf("the race changed files outside the kubelet dir:\n%s", d)
	}
	requireNothingMounted(t, e.k)
	waitDriverFDs(t, pid, fds) // makeTarget once leaked a dir fd per publish

	// With the racing over, the volume publishes and serves as ever.
	var st unix.Stat_t
	if unix.Fstatat(edFd, socketName, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		must(t, unix.Unlinkat(edFd, socketName, 0))
	}
	v := e.publish(t, pod, "vol", attrs(), false)
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, v.target, "hello.txt", sidecar)
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

func raceTarget(t *testing.T, e *env) {
	// Outside: <outside>/csi/vol/mount, the path the target would resolve
	// to through the symlink, with a mount of its own (a tmpfs) that must
	// stay: the driver must neither mount there nor unmount it.
	outside := harness.NewDir(t, 0o755)
	csiOut := filepath.Join(outside, "csi")
	victimMount := filepath.Join(csiOut, "vol", "mount")
	must(t, os.MkdirAll(victimMount, 0o755))
	var (
		victimID string
		w        *inotifyWatch
		detached int // times the driver detached the tmpfs (the fixed unmount-by-path bug)
	)
	mountVictim := func() {
		t.Helper()
		must(t, unix.Mount("tmpfs", victimMount, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=64k,mode=755"))
		must(t, os.WriteFile(filepath.Join(victimMount, "precious"), []byte("do not touch"), 0o644))
		ms := mountsUnder(t, outside)
		if len(ms) != 1 {
			t.Fatalf("mounts under %s: %+v", outside, ms)
		}
		victimID = ms[0].id
		if w != nil {
			w.add(t, victimMount)
		}
	}
	mountVictim()
	t.Cleanup(func() { unix.Unmount(victimMount, unix.MNT_DETACH) })
	// checkOutside checks that the tmpfs is the only mount outside. When the
	// driver detached it (the known bug), it mounts a new one so that the
	// race goes on; any other change fails the test.
	checkOutside := func() bool {
		t.Helper()
		ms := mountsUnder(t, outside)
		switch {
		case len(ms) == 1 && ms[0].id == victimID && ms[0].mountpoint == victimMount:
			return true
		case len(ms) == 0:
			detached++
			mountVictim()
			return true
		}
		t.Errorf("the mounts outside the kubelet dir changed: want only the tmpfs (id %s) at %s, got %+v", victimID, victimMount, ms)
		return false
	}

	pod := e.k.NewPod(t, "racer")
	pod.AddEmptyDir(emptyDirName)
	req := pod.PublishRequest("vol", attrs(), false)
	_, sock := openEmptyDir(t, pod)
	vols := filepath.Join(pod.Dir, "volumes")
	const swapName = "zz-swap-csi"
	must(t, os.Symlink(csiOut, filepath.Join(vols, swapName)))

	pid := e.d.Pid()
	fds := driverFDs(t, pid)
	before := snapshot(t, outside)
	w = watchDirs(t, outside, csiOut, filepath.Dir(victimMount), victimMount)

	r := newRacers(t)
	swaps, restore := swapLoop(t, r, vols, "kubernetes.io~csi", swapName)

	o := newOutcomes()
	refused := map[string]int{}
	mounted := 0
	start := time.Now()
	n := 0
	for ; n < raceIterations && time.Since(start) < raceBudget && !t.Failed(); n++ {
		if o.record(t, "publish", e.publishErr(req)) {
			// The pod's FUSE process connects while the target races.
			c, err := net.DialUnix("unix", nil, &net.UnixAddr{Net: "unix", Name: sock})
			if err != nil {
				t.Errorf("the volume was published but its socket does not accept: %v", err)
				break
			}
			err = fdpassing.SendRequest(c, &fdpassing.Request{Op: fdpassing.OpMount, Client: "racer"}, time.Now().Add(waitLimit))
			var resp *fdpassing.Response
			var dev *os.File
			if err == nil {
				resp, dev, err = fdpassing.ReceiveResponse(c, time.Now().Add(waitLimit))
			}
			c.Close()
			switch {
			case err != nil:
				t.Errorf("FUSE client: no answer from the driver: %v", err)
			case resp.Error != "":
				what, _, _ := strings.Cut(resp.Error, ":")
				refused[what]++
			default:
				mounted++
				if ms := fuseMountsUnder(t, pod.Dir); len(ms) != 1 {
					t.Errorf("want the one FUSE mount just made under the pod's dir, got %+v", ms)
				}
				dev.Close()
			}
			if !checkOutside() {
				break
			}
		}
		if !e.unpublishUntilDone(t, o, pod, "vol") {
			break
		}
		if ms := mountsUnder(t, pod.Dir); len(ms) != 0 {
			t.Errorf("NodeUnpublishVolume succeeded but left mounts: %+v", ms)
		}
		if !checkOutside() {
			break
		}
	}
	took := time.Since(start)
	restore()
	t.Logf("%d publish/connect/unpublish rounds in %v, %d swaps of kubernetes.io~csi; FUSE client mounted %d times, refused %v; the driver detached the mount outside %d times; CSI outcomes:",
		n, took.Round(time.Millisecond), swaps.Load(), mounted, refused, detached)
	o.log(t)
	if mounted == 0 {
		t.Errorf("the FUSE client never got a mount: the race did not exercise mounting and unmounting")
	}

	// Nothing else may have happened outside; with the tmpfs detached, its
	// unmount events and the new tmpfs are the bug's traces.
	var ev []string
	for _, x := range w.events(t) {
		if detached > 0 && (x == victimMount+": UNMOUNT|ISDIR" || x == victimMount+": IGNORED") {
			continue
		}
		ev = append(ev, x)
	}
	if len(ev) > 0 {
		t.Errorf("%d inotify events outside the kubelet dir during the race, e.g.:\n%s", len(ev), strings.Join(ev[:min(len(ev), 20)], "\n"))
	}
	checkOutside()
	after := snapshot(t, outside)
	if detached > 0 {
		before, after = skipUnder(before, victimMount), skipUnder(after, victimMount)
	}
	if d := diff(before, after); d != "" {
		t.Errorf("the race changed files outside the kubelet dir:\n%s", d)
	}
	if err := e.unpublishErr(pod, "vol"); err != nil {
		t.Errorf("unpublish after the race: %v", err)
	}
	requireNothingMounted(t, e.k)
	if detached > 0 {
		// Unpublish must unmount through a handle checked against the mount
		// table, never by a path whose parents the pod can swap.
		t.Errorf("the driver detached a tmpfs outside the kubelet dir (%s), %d times in %d rounds", victimMount, detached, n)
	}
	waitDriverFDs(t, pid, fds)

	// With the racing over, the volume publishes and serves as ever.
	v := e.publish(t, pod, "vol", attrs(), false)
	sidecar := e.starter(t, pod, e.bins.Loopback, "/dev/fd/3", backingDir(t))
	waitServed(t, v.target, "hello.txt", sidecar)
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
	checkOutside()
}

// fuseMountsUnder lists the FUSE mounts at or below dir.
func fuseMountsUnder(t *testing.T, dir string) []mountEntry {
	t.Helper()
	var out []mountEntry
	for _, m := range mountsUnder(t, dir) {
		if harness.IsFuseType(m.fstype) {
			out = append(out, m)
		}
	}
	return out
}

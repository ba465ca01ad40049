package fdpassing

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns the two ends of a connected AF_UNIX stream socketpair.
func pair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

func soon() time.Time { return time.Now().Add(10 * time.Second) }

// tempFile returns an open temporary file and its inode identity.
func tempFile(t *testing.T) (*os.File, unix.Stat_t) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
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

func sameInode(t *testing.T, f *os.File, want unix.Stat_t) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Dev != want.Dev || st.Ino != want.Ino {
		t.Errorf("received fd refers to %d:%d, want %d:%d", st.Dev, st.Ino, want.Dev, want.Ino)
	}
}

// openFDs counts this process's open fds. Tests that use it must not run in
// parallel with others.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// warmUp makes the runtime create its lazily made fds (netpoller) before a
// test counts fds.
func warmUp(t *testing.T) {
	t.Helper()
	a, b := pair(t)
	a.SetReadDeadline(time.Now().Add(time.Millisecond))
	a.Read(make([]byte, 1))
	a.Close()
	b.Close()
}

func TestRequestRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []Request{
		{},
		{Client: "fuse-starter"},
		{Client: "fusermount3-proxy", MountOptions: `ro,fsname=a\,b`},
		{Op: OpMount, MountOptions: "max_read=131072"},
		{Client: "ünïcödé \"quoted\"\n"},
	}
	for _, req := range tests {
		a, b := pair(t)
		sent := req
		if err := SendRequest(a, &sent, soon()); err != nil {
			t.Fatal(err)
		}
		if sent.Version != Version || sent.Op != OpMount {
			t.Errorf("SendRequest did not fill in version and op: %+v", sent)
		}
		got, err := ReceiveRequest(b, soon())
		if err != nil {
			t.Fatalf("ReceiveRequest(%+v) = %v", req, err)
		}
		if *got != sent {
			t.Errorf("ReceiveRequest = %+v, want %+v", *got, sent)
		}
	}
}

func TestResponseWithFD(t *testing.T) {
	t.Parallel()
	a, b := pair(t)
	f, st := tempFile(t)
	resp := &Response{MountData: "rootmode=40000,user_id=0,group_id=0", ReadOnly: true}
	if err := SendResponse(a, resp, int(f.Fd()), soon()); err != nil {
		t.Fatal(err)
	}
	got, dev, err := ReceiveResponse(b, soon())
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	want := Response{Version: Version, MountData: resp.MountData, ReadOnly: true}
	if *got != want {
		t.Errorf("ReceiveResponse = %+v, want %+v", *got, want)
	}
	if int(dev.Fd()) == int(f.Fd()) {
		t.Errorf("received the sender's own fd number; expected a new fd")
	}
	sameInode(t, dev, st)
	flags, err := unix.FcntlInt(dev.Fd(), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("received fd lacks FD_CLOEXEC: it would leak into unrelated children")
	}
}

// A response that arrives in pieces, the fd with the first piece.
func TestResponseInPieces(t *testing.T) {
	t.Parallel()
	a, b := pair(t)
	f, st := tempFile(t)
	line := []byte(`{"version":1,"mountData":"x"}` + "\n")
	done := make(chan error, 1)
	go func() {
		if _, _, err := a.WriteMsgUnix(line[:5], unix.UnixRights(int(f.Fd())), nil); err != nil {
			done <- err
			return
		}
		_, err := a.Write(line[5:])
		done <- err
	}()
	got, dev, err := ReceiveResponse(b, soon())
	if werr := <-done; werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if got.MountData != "x" {
		t.Errorf("MountData = %q", got.MountData)
	}
	sameInode(t, dev, st)
}

func TestSendResponseTooLarge(t *testing.T) {
	t.Parallel()
	a, _ := pair(t)
	err := SendResponse(a, &Response{Error: strings.Repeat("x", MaxMessageSize)}, -1, soon())
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("SendResponse(huge) = %v, want ErrTooLarge", err)
	}
	err = SendRequest(a, &Request{MountOptions: strings.Repeat("x", MaxMessageSize)}, soon())
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("SendRequest(huge) = %v, want ErrTooLarge", err)
	}
}

// The fd tests count open fds, so they run alone (not parallel).

func TestResponseErrorWithoutFD(t *testing.T) {
	warmUp(t)
	a, b := pair(t)
	before := openFDs(t)
	if err := SendResponse(a, &Response{Error: "mount failed: EPERM"}, -1, soon()); err != nil {
		t.Fatal(err)
	}
	got, dev, err := ReceiveResponse(b, soon())
	if err != nil {
		t.Fatal(err)
	}
	if dev != nil {
		t.Errorf("an error response came with a file")
	}
	if got.Error != "mount failed: EPERM" {
		t.Errorf("Error = %q", got.Error)
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d fds open after, %d before", n, before)
	}
}

func TestResponseErrorWithFDClosesIt(t *testing.T) {
	warmUp(t)
	a, b := pair(t)
	f, _ := tempFile(t)
	before := openFDs(t)
	if err := SendResponse(a, &Response{Error: "refused"}, int(f.Fd()), soon()); err != nil {
		t.Fatal(err)
	}
	got, dev, err := ReceiveResponse(b, soon())
	if err != nil || dev != nil || got.Error != "refused" {
		t.Fatalf("ReceiveResponse = %+v, %v, %v; want the error response and no file", got, dev, err)
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d fds open after, %d before: the fd sent with an error response leaked", n, before)
	}
}

func TestResponseFDCounts(t *testing.T) {
	tests := []struct {
		name string
		nfds int
	}{
		{"no fd", 0},
		{"two fds", 2},
		{"four fds", 4},
		{"six fds (control message truncated)", 6},
		{"sixty fds", 60},
	}
	warmUp(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t)
			f, _ := tempFile(t)
			fds := make([]int, tc.nfds)
			for i := range fds {
				fds[i] = int(f.Fd())
			}
			before := openFDs(t)
			var oob []byte
			if tc.nfds > 0 {
				oob = unix.UnixRights(fds...)
			}
			if _, _, err := a.WriteMsgUnix([]byte(`{"version":1}`+"\n"), oob, nil); err != nil {
				t.Fatal(err)
			}
			got, dev, err := ReceiveResponse(b, soon())
			if err == nil {
				dev.Close()
				t.Fatalf("ReceiveResponse with %d fds = %+v, want an error", tc.nfds, got)
			}
			if dev != nil || got != nil {
				t.Errorf("ReceiveResponse returned %v, %v with its error", got, dev)
			}
			if n := openFDs(t); n != before {
				t.Errorf("%d fds open after, %d before: received fds leaked", n, before)
			}
		})
	}
}

// Two messages each carrying an fd, both read by ReceiveResponse.
func TestResponseFDsAcrossReads(t *testing.T) {
	warmUp(t)
	a, b := pair(t)
	f, _ := tempFile(t)
	before := openFDs(t)
	if _, _, err := a.WriteMsgUnix([]byte(`{"version":1`), unix.UnixRights(int(f.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := a.WriteMsgUnix([]byte("}\n"), unix.UnixRights(int(f.Fd())), nil)
		done <- err
	}()
	got, dev, err := ReceiveResponse(b, soon())
	if werr := <-done; werr != nil {
		t.Fatal(werr)
	}
	if err == nil {
		dev.Close()
		t.Fatalf("ReceiveResponse with an fd in each of two reads = %+v, want an error", got)
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d fds open after, %d before", n, before)
	}
}

func TestReceiveResponseGarbage(t *testing.T) {
	warmUp(t)
	tests := []struct {
		name  string
		data  string
		close bool // close the sender after writing
	}{
		{"not json", "hello\n", false},
		{"json array", "[1]\n", false},
		{"truncated json", `{"version":1` + "\n", false},
		{"no data then close", "", true},
		{"partial then close", `{"version":1}`, true},
		{"wrong type", `{"version":"1"}` + "\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t)
			f, _ := tempFile(t)
			if tc.data != "" {
				if _, _, err := a.WriteMsgUnix([]byte(tc.data), unix.UnixRights(int(f.Fd())), nil); err != nil {
					t.Fatal(err)
				}
			}
			if tc.close {
				a.Close()
			}
			before := openFDs(t)
			got, dev, err := ReceiveResponse(b, soon())
			if err == nil {
				dev.Close()
				t.Fatalf("ReceiveResponse(%q) = %+v, want an error", tc.data, got)
			}
			if n := openFDs(t); n != before {
				t.Errorf("%d fds open after, %d before", n, before)
			}
		})
	}
}

func TestReceiveResponseTooLarge(t *testing.T) {
	t.Parallel()
	a, b := pair(t)
	go a.Write(bytes.Repeat([]byte("x"), MaxMessageSize+1))
	_, _, err := ReceiveResponse(b, soon())
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReceiveResponse(%d bytes without newline) = %v, want ErrTooLarge", MaxMessageSize+1, err)
	}
}

func TestReceiveResponseExactlyMax(t *testing.T) {
	t.Parallel()
	a, b := pair(t)
	// {"version":1,"error":"xxx..."}\n of exactly MaxMessageSize bytes.
	pad := MaxMessageSize - len(`{"version":1,"error":""}`+"\n")
	msg := `{"version":1,"error":"` + strings.Repeat("x", pad) + `"}` + "\n"
	if len(msg) != MaxMessageSize {
		t.Fatalf("test message is %d bytes", len(msg))
	}
	go a.Write([]byte(msg))
	got, _, err := ReceiveResponse(b, soon())
	if err != nil {
		t.Fatalf("ReceiveResponse(%d-byte message) = %v", MaxMessageSize, err)
	}
	if len(got.Error) != pad {
		t.Errorf("Error has %d bytes, want %d", len(got.Error), pad)
	}
}

// receiveResponseNoPanic calls ReceiveResponse and turns a panic into an error.
func receiveResponseNoPanic(c *net.UnixConn, deadline time.Time) (resp *Response, f *os.File, err error, panicked any) {
	defer func() { panicked = recover() }()
	resp, f, err = ReceiveResponse(c, deadline)
	return
}

// TestReceiveResponseReadError: when the read fails (deadline, connection
// reset), net.UnixConn.ReadMsgUnix returns n == -1, and ReceiveResponse
// slices data[:n] before looking at the error.
func TestReceiveResponseReadError(t *testing.T) {
	t.Parallel()
	t.Run("deadline", func(t *testing.T) {
		t.Parallel()
		_, b := pair(t)
		_, _, err, p := receiveResponseNoPanic(b, time.Now().Add(50*time.Millisecond))
		if p != nil {
			t.Fatalf("ReceiveResponse panicked on a read deadline: %v", p)
		}
		if err == nil {
			t.Errorf("ReceiveResponse with nothing sent returned no error")
		}
	})
	t.Run("connection reset", func(t *testing.T) {
		t.Parallel()
		a, b := pair(t)
		// The client's request stays unread when the driver closes: the
		// client's next read fails with ECONNRESET.
		if _, err := b.Write([]byte("{}\n")); err != nil {
			t.Fatal(err)
		}
		a.Close()
		_, _, err, p := receiveResponseNoPanic(b, soon())
		if p != nil {
			t.Fatalf("ReceiveResponse panicked on a reset connection: %v", p)
		}
		if err == nil {
			t.Errorf("ReceiveResponse on a reset connection returned no error")
		}
	})
}

func TestReceiveRequestErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		data    string
		close   bool
		wantErr error  // checked with errors.Is when set
		mention string // a substring of the error when set
	}{
		{name: "not json", data: "hello\n"},
		{name: "empty line", data: "\n"},
		{name: "unknown field", data: `{"version":1,"op":"mount","fd":3}` + "\n", mention: "fd"},
		{name: "two objects", data: `{"version":1,"op":"mount"}{"version":1,"op":"mount"}` + "\n", mention: "trailing"},
		{name: "trailing garbage", data: `{"version":1,"op":"mount"} x` + "\n"},
		{name: "trailing vertical tab", data: `{"version":1,"op":"mount"}` + "\v\n", mention: "trailing"},
		{name: "trailing form feed", data: `{"version":1,"op":"mount"}` + "\f\n", mention: "trailing"},
		{name: "trailing no-break space", data: `{"version":1,"op":"mount"}` + "\u00a0\n", mention: "trailing"},
		{name: "trailing data after newline", data: `{"version":1,"op":"mount"}` + "\nmore"},
		{name: "second line", data: `{"version":1,"op":"mount"}` + "\n" + `{"version":1,"op":"mount"}` + "\n"},
		{name: "wrong version", data: `{"version":2,"op":"mount"}` + "\n", mention: "version"},
		{name: "version zero", data: `{"op":"mount"}` + "\n", mention: "version"},
		{name: "wrong op", data: `{"version":1,"op":"umount"}` + "\n", mention: "umount"},
		{name: "missing op", data: `{"version":1}` + "\n", mention: "operation"},
		{name: "null", data: "null\n"},
		{name: "array", data: "[]\n"},
		{name: "wrong type", data: `{"version":"1","op":"mount"}` + "\n"},
		{name: "no data then close", close: true, wantErr: io.EOF},
		{name: "partial then close", data: `{"version":1,"op":"mount"}`, close: true, wantErr: io.EOF},
		{name: "MaxMessageSize without newline", data: strings.Repeat(" ", MaxMessageSize), wantErr: ErrTooLarge},
		{name: "huge without newline", data: strings.Repeat("x", 3*MaxMessageSize), wantErr: ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b := pair(t)
			go func() {
				if tc.data != "" {
					a.Write([]byte(tc.data))
				}
				if tc.close {
					a.CloseWrite()
				}
			}()
			_, err := ReceiveRequest(b, soon())
			if err == nil {
				t.Fatalf("ReceiveRequest(%.80q) returned no error", tc.data)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("ReceiveRequest(%.80q) = %v, want %v", tc.data, err, tc.wantErr)
			}
			if tc.mention != "" && !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("ReceiveRequest(%.80q) = %v, want it to mention %q", tc.data, err, tc.mention)
			}
		})
	}
}

func TestReceiveRequestDeadline(t *testing.T) {
	t.Parallel()
	for _, data := range []string{"", `{"version":1`} {
		a, b := pair(t)
		if data != "" {
			a.Write([]byte(data))
		}
		if _, err := ReceiveRequest(b, time.Now().Add(50*time.Millisecond)); err == nil {
			t.Errorf("ReceiveRequest after sending %q and waiting returned no error", data)
		}
	}
}

func TestReadLineExactlyMax(t *testing.T) {
	t.Parallel()
	a, b := pair(t)
	line := strings.Repeat("x", MaxMessageSize-1) + "\n"
	go a.Write([]byte(line))
	got, err := ReadLine(b, soon())
	if err != nil {
		t.Fatalf("ReadLine(%d bytes with newline) = %v", MaxMessageSize, err)
	}
	if len(got) != MaxMessageSize-1 {
		t.Errorf("ReadLine returned %d bytes", len(got))
	}
}

// chunkConn is a net.Conn whose Read returns the given chunks one by one,
// as a stream socket may.
type chunkConn struct {
	net.Conn
	chunks [][]byte
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks[0] = c.chunks[0][n:]
	if len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

func (c *chunkConn) SetReadDeadline(time.Time) error { return nil }

// TestReadLineBoundWithShortReads: MaxMessageSize bounds a request "newline
// included", but ReadLine only checks the bound when no newline has been seen
// yet; when the stream is delivered in reads that are not multiples of 512
// bytes, a line longer than MaxMessageSize is accepted.
func TestReadLineBoundWithShortReads(t *testing.T) {
	t.Parallel()
	total := 100 + 16*512
	data := []byte(strings.Repeat("x", total-1) + "\n")
	c := &chunkConn{chunks: [][]byte{data[:100]}}
	for rest := data[100:]; len(rest) > 0; rest = rest[512:] {
		c.chunks = append(c.chunks, rest[:512])
	}
	got, err := ReadLine(c, soon())
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReadLine(%d-byte line in short reads) = %d bytes, %v; want ErrTooLarge", total, len(got), err)
	}
}

func TestDecodeRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want *Request // nil: an error
	}{
		{`{"version":1,"op":"mount"}`, &Request{Version: 1, Op: "mount"}},
		{` {"version":1,"op":"mount","client":"c","mountOptions":"ro"} `, &Request{Version: 1, Op: "mount", Client: "c", MountOptions: "ro"}},
		{`{"version":1,"op":"mount","extra":1}`, nil},
		{`{"version":1,"op":"mount"}{}`, nil},
		{`{"version":1,"op":"mount"} 1`, nil},
		{`{"version":1,"op":"mount"`, nil},
		{``, nil},
		{`"mount"`, nil},
		{"{\"version\":1,\"op\":\"mount\"} \t\r", &Request{Version: 1, Op: "mount"}},
		{"{}\v", nil}, // found by FuzzDecodeRequest: bytes.TrimSpace let \v through
		{"{\"version\":1,\"op\":\"mount\"}\f", nil},
		{"{\"version\":1,\"op\":\"mount\"}\u0085", nil},
		{"{\"version\":1,\"op\":\"mount\"}\u00a0", nil},
		{`{"version":1.5}`, nil},
		{`{"version":1e99}`, nil},
	}
	for _, tc := range tests {
		got, err := DecodeRequest([]byte(tc.in))
		if tc.want == nil {
			if err == nil {
				t.Errorf("DecodeRequest(%q) = %+v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("DecodeRequest(%q) = %v", tc.in, err)
			continue
		}
		if *got != *tc.want {
			t.Errorf("DecodeRequest(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// TestDecodeRequestTrailingCloser: json.Decoder.More() reports false for a
// following '}' or ']', so such trailing data passes the "trailing data" check.
func TestDecodeRequestTrailingCloser(t *testing.T) {
	t.Parallel()
	for _, in := range []string{`{"version":1,"op":"mount"}}`, `{"version":1,"op":"mount"}]`, `{"version":1,"op":"mount"}]]}garbage`} {
		if got, err := DecodeRequest([]byte(in)); err == nil {
			t.Errorf("DecodeRequest(%q) = %+v, want an error (trailing data)", in, got)
		}
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	if err := (&Request{Version: Version, Op: OpMount}).Validate(); err != nil {
		t.Errorf("Validate(valid) = %v", err)
	}
	for _, r := range []Request{{Version: 0, Op: OpMount}, {Version: 2, Op: OpMount}, {Version: -1, Op: OpMount}, {Version: Version}, {Version: Version, Op: "MOUNT"}, {Version: Version, Op: "umount"}} {
		if err := r.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", r)
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"op":"mount"}`,
		`{"version":1,"op":"mount","client":"fuse-starter","mountOptions":"ro,fsname=a\\,b"}`,
		`{"version":1,"op":"mount","x":1}`,
		`{"version":1,"op":"mount"}{}`,
		`{"version":1,"op":"mount"}}`,
		`{"client":"\ud800"}`,
		`{"client":"\u0000"}`,
		`null`,
		`[]`,
		``,
		`{"VERSION":1,"Op":"mount"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRequest(b)
		if err != nil {
			if req != nil {
				t.Fatalf("DecodeRequest(%q) returned %+v with error %v", b, req, err)
			}
			return
		}
		if req == nil {
			t.Fatalf("DecodeRequest(%q) returned neither a request nor an error", b)
		}
		_ = req.Validate()
		// Whatever is accepted is one JSON value and nothing else (see
		// TestDecodeRequestTrailingCloser for the known exception).
		if !json.Valid(b) {
			t.Fatalf("DecodeRequest(%q) accepted input that is not a single JSON value", b)
		}
		// An accepted request re-encodes (as SendRequest would) and decodes
		// to the same value.
		enc, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", *req, err)
		}
		if bytes.IndexByte(enc, '\n') >= 0 {
			t.Fatalf("re-encoded request %q contains a raw newline: it would break the line protocol", enc)
		}
		again, err := DecodeRequest(enc)
		if err != nil {
			t.Fatalf("DecodeRequest(re-encoded %q) = %v (original %q)", enc, err, b)
		}
		if !reflect.DeepEqual(*again, *req) {
			t.Fatalf("round trip changed the request: %+v -> %q -> %+v", *req, enc, *again)
		}
	})
}

// Package fdpassing is the protocol between the driver and the pod side
// (fuse-starter, fusermount3-proxy) on the Unix socket the driver creates in
// the pod's emptyDir.
//
// The pod side sends one request: a JSON object ending in '\n'. The driver
// answers with one JSON object ending in '\n', sent in a single sendmsg that
// carries the /dev/fuse fd as SCM_RIGHTS when the mount succeeded. Both
// directions are bounded in size, and the driver bounds them in time.
package fdpassing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// Version is the protocol version both sides speak.
	Version = 1
	// MaxMessageSize bounds a request or a response, newline included.
	MaxMessageSize = 8192
	// OpMount asks for a FUSE mount at the volume's target and its fd.
	OpMount = "mount"
	// OpUnmount asks the driver to end the volume's FUSE connection (what
	// `fusermount3 -u` means to a FUSE program shutting down); the mount
	// itself stays until NodeUnpublishVolume.
	OpUnmount = "unmount"
)

// Request is what the pod side sends.
type Request struct {
	Version int    `json:"version"`
	Op      string `json:"op"`
	// Client names the sender for the driver's logs ("fuse-starter").
	Client string `json:"client,omitempty"`
	// MountOptions are extra options the FUSE program asked for, comma
	// separated as on a mount command line; they pass the driver's allow-list.
	MountOptions string `json:"mountOptions,omitempty"`
}

// Response is what the driver answers. Error is set when no fd follows.
type Response struct {
	Version int    `json:"version"`
	Error   string `json:"error,omitempty"`
	// MountData is the FUSE mount data the kernel got, without fd=.
	MountData string `json:"mountData,omitempty"`
	ReadOnly  bool   `json:"readOnly,omitempty"`
}

// ErrTooLarge is returned when a message exceeds MaxMessageSize.
var ErrTooLarge = errors.New("message exceeds the protocol's size limit")

// Validate checks a request the driver received.
func (r *Request) Validate() error {
	if r.Version != Version {
		return fmt.Errorf("protocol version %d is not supported (driver speaks %d): use fuse-starter or fusermount3-proxy from the same release as the driver", r.Version, Version)
	}
	if r.Op != OpMount && r.Op != OpUnmount {
		return fmt.Errorf("unknown operation %q (want %q or %q)", r.Op, OpMount, OpUnmount)
	}
	return nil
}

// jsonSpace is the whitespace JSON allows between tokens (RFC 8259).
const jsonSpace = " \t\r\n"

// DecodeRequest parses one request line.
func DecodeRequest(line []byte) (*Request, error) {
	var r Request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("malformed request: %w", err)
	}
	// Only JSON's own whitespace may follow: bytes.TrimSpace would also let
	// \v, \f, U+0085 and U+00A0 through (found by FuzzDecodeRequest).
	if rest := bytes.Trim(line[dec.InputOffset():], jsonSpace); len(rest) > 0 {
		return nil, fmt.Errorf("malformed request: trailing data after the JSON object")
	}
	return &r, nil
}

// ReadLine reads one line, at most MaxMessageSize bytes with its '\n',
// before deadline, and returns it without the newline. The sender must wait
// for the answer after its line: data after the newline is an error.
func ReadLine(conn net.Conn, deadline time.Time) ([]byte, error) {
	if err := conn.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, 512)
	chunk := make([]byte, 512)
	for {
		n, err := conn.Read(chunk)
		if n > 0 {
			buf = append(buf, chunk[:n]...)
		}
		if len(buf) > MaxMessageSize {
			return nil, ErrTooLarge
		}
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			if i+1 != len(buf) {
				return nil, fmt.Errorf("unexpected data after the request line")
			}
			return buf[:i], nil
		}
		if len(buf) >= MaxMessageSize { // no room left for the newline
			return nil, ErrTooLarge
		}
		if err != nil {
			return nil, err
		}
	}
}

// ReceiveRequest reads and decodes one request before deadline.
func ReceiveRequest(conn net.Conn, deadline time.Time) (*Request, error) {
	line, err := ReadLine(conn, deadline)
	if err != nil {
		return nil, fmt.Errorf("reading request: %w", err)
	}
	req, err := DecodeRequest(line)
	if err != nil {
		return nil, err
	}
	return req, req.Validate()
}

// SendResponse writes resp and, when fd >= 0, the fd as SCM_RIGHTS in one
// message, before deadline.
func SendResponse(conn *net.UnixConn, resp *Response, fd int, deadline time.Time) error {
	resp.Version = Version
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if len(b) > MaxMessageSize {
		return ErrTooLarge
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if err := conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	n, oobn, err := conn.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return err
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("short write of response (%d/%d bytes, %d/%d control bytes)", n, len(b), oobn, len(oob))
	}
	return nil
}

// SendRequest writes one request line.
func SendRequest(conn net.Conn, req *Request, deadline time.Time) error {
	req.Version = Version
	if req.Op == "" {
		req.Op = OpMount
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if len(b) > MaxMessageSize {
		return ErrTooLarge
	}
	if err := conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	_, err = conn.Write(b)
	return err
}

// ReceiveResponse reads the driver's answer to a mount request and the fd
// that comes with it. The fd is returned as a file only when the response
// carries no error. Extra fds a peer might send are closed.
func ReceiveResponse(conn *net.UnixConn, deadline time.Time) (*Response, *os.File, error) {
	resp, fds, err := receive(conn, deadline)
	if err != nil || resp.Error != "" {
		return resp, nil, err
	}
	if len(fds) != 1 {
		closeAll(fds)
		return nil, nil, fmt.Errorf("the driver answered with %d fds, want exactly 1", len(fds))
	}
	return resp, os.NewFile(uintptr(fds[0]), "/dev/fuse"), nil
}

// ReceiveAck reads the driver's answer to a request that carries no fd.
func ReceiveAck(conn *net.UnixConn, deadline time.Time) (*Response, error) {
	resp, fds, err := receive(conn, deadline)
	if len(fds) > 0 {
		closeAll(fds)
		if err == nil {
			return nil, fmt.Errorf("the driver answered with %d unexpected fds", len(fds))
		}
	}
	return resp, err
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// receive reads one response line and the fds that came with it; on an
// error or an error response no fd is kept open.
func receive(conn *net.UnixConn, deadline time.Time) (*Response, []int, error) {
	if err := conn.SetReadDeadline(deadline); err != nil {
		return nil, nil, err
	}
	var (
		buf  []byte
		fds  []int
		data = make([]byte, MaxMessageSize)
		oob  = make([]byte, unix.CmsgSpace(4*4))
	)
	closeFDs := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	for bytes.IndexByte(buf, '\n') < 0 {
		n, oobn, flags, _, err := conn.ReadMsgUnix(data, oob)
		if n < 0 {
			n = 0
		}
		buf = append(buf, data[:n]...)
		if oobn > 0 {
			got, perr := parseRights(oob[:oobn])
			fds = append(fds, got...)
			if perr != nil {
				closeFDs()
				return nil, nil, perr
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			closeFDs()
			return nil, nil, fmt.Errorf("control message truncated: the peer sent more fds than expected")
		}
		if len(buf) > MaxMessageSize {
			closeFDs()
			return nil, nil, ErrTooLarge
		}
		if err != nil {
			closeFDs()
			if n == 0 && len(buf) == 0 {
				return nil, nil, fmt.Errorf("the driver closed the connection without an answer: %w", err)
			}
			return nil, nil, fmt.Errorf("reading response: %w", err)
		}
		if n == 0 {
			closeFDs()
			return nil, nil, fmt.Errorf("the driver closed the connection before a complete answer")
		}
	}
	line := buf[:bytes.IndexByte(buf, '\n')]
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		closeFDs()
		return nil, nil, fmt.Errorf("malformed response from the driver: %w", err)
	}
	if resp.Error != "" {
		closeFDs()
		return &resp, nil, nil
	}
	return &resp, fds, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parsing control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

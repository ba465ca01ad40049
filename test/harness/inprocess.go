package harness

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// oneFile is a read-only root directory holding one file.
type oneFile struct {
	fs.Inode
	name, content string
}

func (r *oneFile) OnAdd(ctx context.Context) {
	f := r.NewPersistentInode(ctx, &fs.MemRegularFile{Data: []byte(r.content), Attr: fuse.Attr{Mode: 0o444}}, fs.StableAttr{Ino: 2})
	r.AddChild(r.name, f, false)
}

func (r *oneFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = 0o755
	return 0
}

var quietLogger = log.New(io.Discard, "", 0)

// ServeInProcess serves dev, a /dev/fuse fd received from the driver, with
// an in-process go-fuse server of one read-only file, name with content, for
// tests that need many served volumes without a process each. It takes dev
// (go-fuse gets a duplicate as the mountpoint "/dev/fd/N" and closes it when
// it stops). The channel is closed once the server has stopped, which it
// does when the connection ends (an unpublish aborts it).
//
// Read such a mount from the same process with ReadFileDirect.
func ServeInProcess(dev *os.File, name, content string) (<-chan struct{}, error) {
	fd, err := unix.FcntlInt(dev.Fd(), unix.F_DUPFD_CLOEXEC, 3)
	dev.Close()
	if err != nil {
		return nil, fmt.Errorf("dup of the /dev/fuse fd: %w", err)
	}
	opts := &fs.Options{Logger: quietLogger}
	opts.MountOptions.Logger = quietLogger // "Failed to read from fuse conn" once the connection is aborted
	// Without splicing go-fuse keeps no process-wide pipes or /dev/null fd,
	// so the test process's own fd count stays exact.
	opts.MountOptions.DisableSplice = true
	srv, err := fuse.NewServer(fs.NewNodeFS(&oneFile{name: name, content: content}, opts), "/dev/fd/"+strconv.Itoa(fd), &opts.MountOptions)
	if err != nil { // go-fuse closed fd
		return nil, fmt.Errorf("go-fuse on the received fd: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve()
	}()
	return done, nil
}

// ReadFileDirect reads a whole small file with plain open(2) and read(2),
// never through Go's poller: the way to read a file served by
// ServeInProcess from the same process. (Through the poller, an open makes
// the kernel ask the FUSE server for a POLL while holding the epoll
// instance's mutex and the thread's P; with GOMAXPROCS=2 and a second thread
// queued on that mutex, the server's goroutines never run to answer.
// go-fuse's own "poll hack" is skipped for /dev/fd/N mountpoints.)
func ReadFileDirect(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
	}
}

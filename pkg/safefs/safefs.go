// Package safefs does the driver's file operations in directories that a pod
// can write to (its emptyDir) or that lie under the kubelet directory,
// without following symlinks and without chdir.
//
// Every path is resolved from a directory fd with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), and every later operation
// uses a *at call on that fd, so swapping a component for a symlink between
// a check and its use makes the operation fail instead of escaping.
package safefs

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// Errors of the socket operations when the pod changes the name under them.
var (
	ErrNotSocket = errors.New("is not a socket")
	ErrReplaced  = errors.New("was replaced while the socket was being created")
)

// Dir is an open directory handle.
type Dir struct {
	f *os.File
}

// OpenRoot opens a trusted directory (the kubelet dir, the state dir) by its
// absolute path. The path itself may contain symlinks: it comes from the
// operator, not from a pod.
func OpenRoot(path string) (*Dir, error) {
	fd, err := unix.Open(path, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return &Dir{f: os.NewFile(uintptr(fd), path)}, nil
}

// OpenDir opens the directory rel beneath d. A symlink anywhere in rel, the
// last component included, fails with ELOOP; a ".." that leaves d with EXDEV.
func (d *Dir) OpenDir(rel string) (*Dir, error) {
	fd, err := openat2(int(d.f.Fd()), rel, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: d.f.Name() + "/" + rel, Err: err}
	}
	return &Dir{f: os.NewFile(uintptr(fd), d.f.Name()+"/"+rel)}, nil
}

func openat2(dirfd int, rel string, flags int) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{Flags: uint64(flags), Resolve: resolveFlags})
		if err == unix.EINTR || err == unix.EAGAIN {
			// EAGAIN: a rename raced with RESOLVE_BENEATH's checks; retry.
			continue
		}
		return fd, err
	}
}

// Name returns the path the directory was opened by, for messages.
func (d *Dir) Name() string { return d.f.Name() }

// Fd returns the directory's file descriptor.
func (d *Dir) Fd() int { return int(d.f.Fd()) }

// Close closes the handle.
func (d *Dir) Close() error { return d.f.Close() }

// Stat returns the directory's own attributes.
func (d *Dir) Stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstat(d.Fd(), &st)
	return st, err
}

// ProcPath is the magic-link path of the directory in this process, usable
// where the kernel needs a path (bind, mount) and short enough for sun_path.
func (d *Dir) ProcPath() string {
	return "/proc/self/fd/" + strconv.Itoa(d.Fd())
}

// Lstat stats the entry name of d without following it. name must be a
// single component.
func (d *Dir) Lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(d.Fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// Mkdir creates the directory name in d; an existing directory is fine, an
// existing non-directory (a symlink included) is an error.
func (d *Dir) Mkdir(name string, mode uint32) error {
	err := unix.Mkdirat(d.Fd(), name, mode)
	if err == unix.EEXIST {
		st, serr := d.Lstat(name)
		if errors.Is(serr, unix.ENOTCONN) || errors.Is(serr, unix.ECONNABORTED) {
			// The root of a dead FUSE mount: stat reaches the dead server,
			// but only directories are mounted on here (a FUSE root is one).
			return nil
		}
		if serr != nil {
			return serr
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%s/%s exists and is not a directory", d.Name(), name)
		}
		return nil
	}
	return err
}

// Rmdir removes the empty directory name in d. It never removes files:
// a non-empty directory gives ENOTEMPTY.
func (d *Dir) Rmdir(name string) error {
	return unix.Unlinkat(d.Fd(), name, unix.AT_REMOVEDIR)
}

// RemoveSocket removes name in d if it is a socket; ENOENT is not an error.
// Anything else at that name is left alone and reported.
func (d *Dir) RemoveSocket(name string) error {
	st, err := d.Lstat(name)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s/%s: %w (mode %o); leaving it alone", d.Name(), name, ErrNotSocket, st.Mode)
	}
	err = unix.Unlinkat(d.Fd(), name, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// ListenUnix binds and listens on a stream socket named name in d, without
// chdir and without following a symlink at name (bind never follows the last
// component: an existing entry gives EADDRINUSE). The socket file is then
// given uid, gid and mode, through an O_PATH|O_NOFOLLOW handle so that a
// swap of the name in between changes at most a pod-made entry, never
// anything a symlink points at.
func (d *Dir) ListenUnix(name string, uid, gid int, mode uint32) (*net.UnixListener, error) {
	addr := &net.UnixAddr{Net: "unix", Name: d.ProcPath() + "/" + name}
	if len(addr.Name) >= 108 {
		return nil, fmt.Errorf("socket name %q is too long to bind", name)
	}
	l, err := net.ListenUnix("unix", addr)
	if err != nil {
		return nil, err
	}
	// Close must not unlink by path: the path goes through /proc/self/fd
	// and the dir fd may be closed or reused by then.
	l.SetUnlinkOnClose(false)
	if err := d.chownSocket(name, uid, gid, mode); err != nil {
		l.Close()
		d.RemoveSocket(name)
		return nil, err
	}
	return l, nil
}

func (d *Dir) chownSocket(name string, uid, gid int, mode uint32) error {
	fd, err := unix.Openat(d.Fd(), name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening socket %s/%s: %w", d.Name(), name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s/%s: %w", d.Name(), name, ErrReplaced)
	}
	if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown of socket %s/%s: %w", d.Name(), name, err)
	}
	// chmod has no AT_EMPTY_PATH; the O_PATH fd's magic link names exactly
	// the inode checked above.
	if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode); err != nil {
		return fmt.Errorf("chmod of socket %s/%s: %w", d.Name(), name, err)
	}
	return nil
}

// OpenPathBeneath returns an O_PATH handle on the directory rel beneath d,
// resolved like OpenDir. An O_PATH handle reads nothing from the directory,
// which matters when a FUSE mount may sit on it.
func (d *Dir) OpenPathBeneath(rel string) (*os.File, error) {
	fd, err := openat2(d.Fd(), rel, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: d.Name() + "/" + rel, Err: err}
	}
	return os.NewFile(uintptr(fd), d.Name()+"/"+rel), nil
}

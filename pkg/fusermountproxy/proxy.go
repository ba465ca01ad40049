package fusermountproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/starter"
)

// FuseVersion is the fusermount3 version the proxy reports with -V.
const FuseVersion = "3.14.0"

// Proxy runs one invocation.
type Proxy struct {
	Lookup  *Lookup
	Getenv  func(string) string
	Stdout  *os.File // -V and -h, as fusermount3 prints them
	Stderr  *os.File
	Version string
}

// Run executes the command line args (without argv[0]) and returns the exit code.
func (p *Proxy) Run(args []string) int {
	inv, err := ParseArgs(args)
	if err != nil {
		fmt.Fprintf(p.Stderr, "fusermount3: %v\n", err)
		return 1
	}
	if inv.Help {
		fmt.Fprint(p.Stdout, usage)
		return 0
	}
	if inv.Version {
		fmt.Fprintf(p.Stdout, "fusermount3 version: %s (fusermount3-proxy %s of meta-fuse-csi-plugin)\n", FuseVersion, p.Version)
		return 0
	}
	log := p.openLog(inv.Quiet)
	defer log.Close()
	log.printf("called as %q", args)

	sock, src := p.Lookup.Get(EnvSocketPath)
	if sock == "" {
		return log.fail("%s is not set: set it in the FUSE container's environment to the path of the driver's socket in the fd-passing emptyDir (or put %s=PATH into %s)", EnvSocketPath, EnvSocketPath, DefaultConfigFile)
	}
	log.printf("driver socket %s (from the %s)", sock, src)
	timeout := 30 * time.Second
	if v, _ := p.Lookup.Get(EnvConnectTimeout); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			timeout = d
		}
	}
	cfg := starter.Config{SocketPath: sock, ConnectTimeout: timeout, Client: "fusermount3-proxy"}
	ctx := context.Background()

	if inv.Unmount {
		// Unmounting is kubelet's (NodeUnpublishVolume): the driver ends the
		// FUSE connection, so the program sees it end and exits cleanly, and
		// keeps the mount for a restarted FUSE container to be stacked on.
		if err := starter.Unmount(ctx, cfg); err != nil {
			return log.fail("unmount of %s: %v", inv.Mountpoint, err)
		}
		log.printf("the driver ended the FUSE connection of the volume (%s)", inv.Mountpoint)
		return 0
	}

	commFD, err := commFD(p.Getenv("_FUSE_COMMFD"))
	if err != nil {
		return log.fail("%v", err)
	}
	cfg.MountOptions = inv.DriverOptions()
	start := time.Now()
	dev, resp, err := starter.Receive(ctx, cfg)
	if err != nil {
		return log.fail("mount of %s: %v", inv.Mountpoint, err)
	}
	defer dev.Close()
	// Exactly what fusermount3 does: one byte, the fd as SCM_RIGHTS.
	if err := unix.Sendmsg(commFD, []byte{0}, unix.UnixRights(int(dev.Fd())), nil, 0); err != nil {
		return log.fail("passing the fd to the FUSE library on _FUSE_COMMFD=%d: %v", commFD, err)
	}
	log.printf("mounted in %v (mount data %q, read-only %v) and passed the fd on _FUSE_COMMFD=%d", time.Since(start).Round(time.Microsecond), resp.MountData, resp.ReadOnly, commFD)
	if inv.AutoUnmount {
		log.printf("auto_unmount: the volume stays mounted until kubelet unpublishes it (or the FUSE container reconnects)")
	}
	return 0
}

func commFD(v string) (int, error) {
	if v == "" {
		return 0, errors.New("_FUSE_COMMFD is not set: fusermount3-proxy mounts only for a FUSE library (libfuse, go-fuse, jacobsa/fuse) that runs it as its fusermount3 helper")
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 0 {
		return 0, fmt.Errorf("_FUSE_COMMFD=%q is not a file descriptor", v)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return 0, fmt.Errorf("_FUSE_COMMFD=%d is not an open socket", fd)
	}
	return fd, nil
}

const usage = `usage: fusermount3 [options] mountpoint

fusermount3-proxy of meta-fuse-csi-plugin, installed as fusermount3: it gets
the FUSE mount from the driver over the pod's socket
($FUSERMOUNT3PROXY_FDPASSING_SOCKPATH) instead of mounting itself.

Options:
 -h                print help
 -V                print version
 -o opt[,opt...]   mount options (checked by the driver's allow-list)
 -u                unmount (the driver ends the volume's FUSE connection)
 -q                quiet
 -z                lazy unmount (unmounts are always lazy)
 -U, --auto-unmount  accepted; the volume is unmounted by kubelet
`

// logger writes the proxy's own log where a user can find it: libfuse sends
// the helper's stderr to /dev/null.
type logger struct {
	w      io.Writer
	closer io.Closer // non-nil when the log is a file the proxy opened
	err    io.Writer // errors also go here unless -q
	quiet  bool
}

func (l *logger) printf(format string, args ...any) {
	if l.w == nil {
		return
	}
	fmt.Fprintf(l.w, "%s fusermount3-proxy[%d]: %s\n", time.Now().Format(time.RFC3339Nano), os.Getpid(), fmt.Sprintf(format, args...))
}

func (l *logger) fail(format string, args ...any) int {
	msg := fmt.Sprintf(format, args...)
	l.printf("error: %s", msg)
	if !l.quiet && l.err != nil && l.err != l.w {
		fmt.Fprintf(l.err, "fusermount3: %s\n", msg)
	}
	return 1
}

func (l *logger) Close() {
	if l.closer != nil {
		l.closer.Close()
	}
}

// openLog picks, in order: the file named by FUSERMOUNT3PROXY_LOG; stderr
// when it goes somewhere (not /dev/null); the container's main log, i.e.
// the stderr of PID 1 (what kubectl logs shows); nothing.
func (p *Proxy) openLog(quiet bool) *logger {
	l := &logger{err: p.Stderr, quiet: quiet}
	if path, _ := p.Lookup.Get(EnvLogPath); path != "" {
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			l.w, l.closer = f, f
			return l
		}
	}
	if !isDevNull(p.Stderr) {
		l.w = p.Stderr
		return l
	}
	if f, err := os.OpenFile("/proc/1/fd/2", os.O_WRONLY|os.O_APPEND, 0); err == nil {
		l.w, l.closer = f, f
	}
	return l
}

func isDevNull(f *os.File) bool {
	var a, b syscall.Stat_t
	if syscall.Fstat(int(f.Fd()), &a) != nil || syscall.Stat("/dev/null", &b) != nil {
		return true
	}
	return a.Rdev == b.Rdev && a.Mode&syscall.S_IFMT == syscall.S_IFCHR
}

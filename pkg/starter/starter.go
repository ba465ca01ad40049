// Package starter is the pod side of direct fd passing: it connects to the
// driver's socket, receives the /dev/fuse fd of the mount the driver made,
// and runs the FUSE program with it as fd 3 (so /dev/fd/3 is its mountpoint).
package starter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fdpassing"
)

// Config is what fuse-starter is told on its command line.
type Config struct {
	SocketPath     string
	ConnectTimeout time.Duration
	// Program and its arguments; "/dev/fd/3" names the mount.
	Program []string
	// Client names the sender in the driver's logs.
	Client string
	// MountOptions are sent to the driver (comma separated, optional).
	MountOptions string
	// Logf reports progress; nil is silent.
	Logf func(format string, args ...any)
}

// retryInterval is how often a missing or not yet listening socket is tried again.
const retryInterval = 200 * time.Millisecond

// dial connects, retrying until ConnectTimeout while the socket does not
// exist yet or is not listening (the driver creates it when kubelet
// publishes the volume, which may be after the FUSE container started).
func dial(ctx context.Context, cfg Config) (*net.UnixConn, error) {
	deadline := time.Now().Add(cfg.ConnectTimeout)
	for attempt := 0; ; attempt++ {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Net: "unix", Name: cfg.SocketPath})
		if err == nil {
			return c, nil
		}
		if !retryable(err) {
			return nil, fmt.Errorf("connecting to %s: %w", cfg.SocketPath, err)
		}
		if attempt == 0 && cfg.Logf != nil {
			cfg.Logf("waiting for the driver's socket %s (%v)", cfg.SocketPath, err)
		}
		if time.Now().Add(retryInterval).After(deadline) {
			return nil, fmt.Errorf("the driver's socket %s did not accept a connection within %v (last error: %w); check that the pod's CSI volume names this emptyDir and socket in volumeAttributes and that the driver runs on this node", cfg.SocketPath, cfg.ConnectTimeout, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(retryInterval):
		}
	}
}

// request connects and sends one request; the caller reads the answer.
func request(ctx context.Context, cfg Config, op string) (*net.UnixConn, func(), error) {
	conn, err := dial(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	done := func() {
		stop()
		conn.Close()
	}
	client := cfg.Client
	if client == "" {
		client = "fuse-starter"
	}
	if err := fdpassing.SendRequest(conn, &fdpassing.Request{Op: op, Client: client, MountOptions: cfg.MountOptions}, time.Now().Add(10*time.Second)); err != nil {
		done()
		return nil, nil, fmt.Errorf("sending the request to the driver: %w", err)
	}
	return conn, done, nil
}

// Receive asks the driver to mount and returns the /dev/fuse fd.
func Receive(ctx context.Context, cfg Config) (*os.File, *fdpassing.Response, error) {
	conn, done, err := request(ctx, cfg, fdpassing.OpMount)
	if err != nil {
		return nil, nil, err
	}
	defer done()
	resp, fd, err := fdpassing.ReceiveResponse(conn, time.Now().Add(30*time.Second))
	if err != nil {
		return nil, nil, err
	}
	if resp.Error != "" {
		return nil, resp, fmt.Errorf("the driver refused to mount: %s", resp.Error)
	}
	return fd, resp, nil
}

// Unmount asks the driver to end the volume's FUSE connection (fusermount3 -u).
func Unmount(ctx context.Context, cfg Config) error {
	conn, done, err := request(ctx, cfg, fdpassing.OpUnmount)
	if err != nil {
		return err
	}
	defer done()
	resp, err := fdpassing.ReceiveAck(conn, time.Now().Add(30*time.Second))
	if err != nil {
		return err
	}
	if resp.Error != "" {
		return fmt.Errorf("the driver refused to unmount: %s", resp.Error)
	}
	return nil
}

// retryable errors mean the driver has not published the volume yet.
func retryable(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) ||
		errors.Is(err, unix.EACCES) || errors.Is(err, unix.EAGAIN)
}

// Run receives the fd and runs the program with it as fd 3, forwarding
// SIGTERM, SIGINT, SIGHUP and SIGQUIT. It returns the program's exit code
// (128+signal when a signal ended it), or an error of its own.
func Run(ctx context.Context, cfg Config) (int, error) {
	if len(cfg.Program) == 0 {
		return 0, errors.New("no program given: fuse-starter --fd-passing-socket-path SOCK -- PROGRAM ARGS...")
	}
	path, err := exec.LookPath(cfg.Program[0])
	if err != nil {
		return 0, fmt.Errorf("FUSE program: %w", err)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sigs: // stopped before the program started: give up cleanly
			cancel()
		case <-rctx.Done():
		}
	}()
	start := time.Now()
	dev, resp, err := Receive(rctx, cfg)
	if err != nil {
		return 0, err
	}
	cancel()
	if cfg.Logf != nil {
		cfg.Logf("received /dev/fuse fd after %v (mount data %q, read-only %v); starting %s", time.Since(start).Round(time.Microsecond), resp.MountData, resp.ReadOnly, path)
	}

	cmd := exec.Command(path, cfg.Program[1:]...)
	cmd.Args[0] = cfg.Program[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{dev} // becomes fd 3, without close-on-exec
	err = cmd.Start()
	dev.Close() // the program holds the fd now
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s)
		case err := <-exited:
			return exitCode(cmd, err)
		}
	}
}

func exitCode(cmd *exec.Cmd, err error) (int, error) {
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return 0, err
	}
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return cmd.ProcessState.ExitCode(), nil
}

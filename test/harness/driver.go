package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// DriverReadyTimeout bounds how long StartDriver and Restart wait for the driver to answer a
// CSI Identity Probe.
var DriverReadyTimeout = 10 * time.Second

// Driver is a running meta-fuse-csi-plugin node plugin, talking CSI on a Unix socket.
type Driver struct {
	// Node and Identity are CSI clients on the driver's socket. Restart replaces them (and
	// closes the old connection), so read them from the Driver after a restart.
	Node     csi.NodeClient
	Identity csi.IdentityClient
	// SocketPath is the CSI socket, /tmp/mfcp-drv-*/csi.sock; Endpoint is "unix:"+SocketPath.
	SocketPath string
	Endpoint   string
	// LogPath is the driver's stdout+stderr; every start appends to it after a header line.
	LogPath string
	// Args are the driver's arguments (without the binary).
	Args []string

	bin string
	t   T

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	state  *os.ProcessState
	conn   *grpc.ClientConn
	starts int
}

// StartDriver runs bins.Driver as the node plugin:
//
//	meta-fuse-csi-plugin --endpoint unix:/tmp/mfcp-drv-*/csi.sock --nodeid test-node --kubelet-dir <k.Dir> -v=5 extraArgs...
//
// as root in the host mount namespace, in its own process group, with stdout+stderr
// appended to LogPath. It waits (up to DriverReadyTimeout) until the socket answers a CSI
// Identity Probe, failing the test with the log if the driver exits or does not answer. The
// cleanup stops the driver (SIGTERM, then SIGKILL after 5 s) and, if the test failed, logs the
// tail of the driver log.
func StartDriver(t T, k *Kubelet, bins *Bins, extraArgs ...string) *Driver {
	t.Helper()
	if bins == nil || bins.Driver == "" {
		t.Fatalf("StartDriver: no driver binary (use Binaries(t))")
	}
	dir, err := makeDir("drv", 0o755)
	if err != nil {
		t.Fatalf("StartDriver: %v", err)
	}
	t.Cleanup(func() {
		if err := removeDirSafely(dir); err != nil {
			t.Fatalf("driver cleanup: %v", err)
		}
	})
	sock := filepath.Join(dir, "csi.sock")
	d := &Driver{
		SocketPath: sock,
		Endpoint:   "unix:" + sock,
		LogPath:    filepath.Join(dir, "driver.log"),
		bin:        bins.Driver,
		t:          t,
	}
	d.Args = append([]string{"--endpoint", d.Endpoint, "--nodeid", "test-node", "--kubelet-dir", k.Dir, "-v=5"}, extraArgs...)
	t.Cleanup(func() {
		d.Stop()
		d.mu.Lock()
		if d.conn != nil {
			d.conn.Close()
			d.conn = nil
		}
		d.mu.Unlock()
		if failed(t) {
			t.Logf("driver log (%s), tail:\n%s", d.LogPath, indent(tail(d.Logs(), 16384)))
		}
	})
	if err := d.start(); err != nil {
		t.Fatalf("StartDriver: %v", err)
	}
	return d
}

// start launches the driver process and waits until it answers a Probe.
func (d *Driver) start() error {
	d.mu.Lock()
	d.starts++
	n := d.starts
	d.mu.Unlock()

	logf, err := os.OpenFile(d.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== harness: start #%d at %s: %s\n", n, time.Now().Format(time.RFC3339Nano), shellQuote(append([]string{d.bin}, d.Args...)))

	cmd := exec.Command(d.bin, d.Args...)
	cmd.Env = append(os.Environ(), tagEnvVar())
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own process group, so that Kill reaches helpers too; Pdeathsig so that a test binary
	// killed by a timeout does not leave a privileged driver running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", d.bin, err)
	}
	done := make(chan struct{})
	d.mu.Lock()
	d.cmd, d.done, d.state = cmd, done, nil
	d.mu.Unlock()
	go func() {
		cmd.Wait()
		d.mu.Lock()
		d.state = cmd.ProcessState
		d.mu.Unlock()
		close(done)
	}()
	d.t.Logf("driver: start #%d, pid %d, log %s", n, cmd.Process.Pid, d.LogPath)

	if err := d.waitReady(done); err != nil {
		return fmt.Errorf("%w\ndriver log tail:\n%s", err, indent(tail(d.Logs(), 8192)))
	}
	return nil
}

// waitReady waits until the socket accepts connections and a Probe succeeds, then installs
// fresh clients. Dialling the raw socket first avoids gRPC's reconnect backoff.
func (d *Driver) waitReady(done chan struct{}) error {
	deadline := time.Now().Add(DriverReadyTimeout)
	exited := func() error {
		select {
		case <-done:
			d.mu.Lock()
			st := d.state
			d.mu.Unlock()
			return fmt.Errorf("driver exited before answering a Probe: %v", st)
		default:
			return nil
		}
	}
	for {
		if err := exited(); err != nil {
			return err
		}
		c, err := net.DialTimeout("unix", d.SocketPath, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("driver socket %s not accepting connections after %v: %v", d.SocketPath, DriverReadyTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient(d.Endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return fmt.Errorf("grpc.NewClient(%s): %w", d.Endpoint, err)
	}
	identity := csi.NewIdentityClient(conn)
	var lastErr error
	for {
		if err := exited(); err != nil {
			conn.Close()
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, lastErr = identity.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if lastErr == nil {
			break
		}
		if time.Now().After(deadline) {
			conn.Close()
			return fmt.Errorf("driver did not answer Probe within %v: %v", DriverReadyTimeout, lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.mu.Lock()
	old := d.conn
	d.conn = conn
	d.Identity = identity
	d.Node = csi.NewNodeClient(conn)
	d.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Pid is the pid of the current driver process.
func (d *Driver) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Running reports whether the current driver process has not exited.
func (d *Driver) Running() bool {
	d.mu.Lock()
	done := d.done
	d.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Kill SIGKILLs the driver's process group and waits for the driver to exit, as a crash or
// an OOM kill would end it. A no-op if it is not running.
func (d *Driver) Kill() {
	d.signalAndWait(syscall.SIGKILL, 0)
}

// Stop sends SIGTERM to the driver, waits up to 5 s for it to exit, then SIGKILLs its
// process group, as kubelet stops a container. A no-op if it is not running.
func (d *Driver) Stop() {
	d.signalAndWait(syscall.SIGTERM, 5*time.Second)
}

func (d *Driver) signalAndWait(sig syscall.Signal, grace time.Duration) {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.mu.Unlock()
	if cmd == nil || done == nil {
		return
	}
	pid := cmd.Process.Pid
	select {
	case <-done:
		killGroupLeftovers(pid, -1, syscall.SIGKILL) // helpers left in the group, if any
		return
	default:
	}
	if sig == syscall.SIGKILL {
		killGroupAndTree(pid, pid, syscall.SIGKILL)
	} else {
		syscall.Kill(pid, sig)
		select {
		case <-done:
		case <-time.After(grace):
			d.t.Logf("driver (pid %d) still running %v after %v; sending SIGKILL", pid, grace, sig)
			killGroupAndTree(pid, pid, syscall.SIGKILL)
		}
	}
	select {
	case <-done:
		killGroupLeftovers(pid, -1, syscall.SIGKILL)
	case <-time.After(10 * time.Second):
		d.t.Fatalf("driver (pid %d) did not exit within 10s of SIGKILL (state %s)", pid, procState(pid))
	}
}

// ExitState is the driver's process state after it exited (nil while running).
func (d *Driver) ExitState() *os.ProcessState {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// Restart starts the driver again with the same arguments and socket path (stopping it
// first with Stop if it is still running), waits until it answers a Probe and reconnects
// Node and Identity. The harness does not remove the old socket file: a driver must cope with
// the stale socket a killed instance leaves, as it must on a node.
func (d *Driver) Restart(t T) {
	t.Helper()
	if d.Running() {
		d.Stop()
	}
	if err := d.start(); err != nil {
		t.Fatalf("Driver.Restart: %v", err)
	}
}

// Logs returns the driver log so far (all starts).
func (d *Driver) Logs() string {
	b, err := os.ReadFile(d.LogPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return ""
		}
		return fmt.Sprintf("(cannot read the driver log: %v)", err)
	}
	return string(b)
}

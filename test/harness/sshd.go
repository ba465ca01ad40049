package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SshHostAlias is the Host alias of the local sshd in Sshd.ConfigPath.
const SshHostAlias = "sshtest"

// SshdToolsTimeout bounds how long StartSshd waits for openssh-server and the ssh client
// tools to appear (an `apt-get install` may still be running in the background).
var SshdToolsTimeout = 5 * time.Minute

// Sshd is a private OpenSSH server on 127.0.0.1 that lets user nobody (uid 65534) in with a
// key and serves SFTP (internal-sftp), for sshfs tests. The host is left untouched: sshd runs
// in a private mount namespace with a tmpfs on /run (for its privilege-separation directory
// /run/sshd), and all its files live under Dir.
type Sshd struct {
	// Port is the TCP port on 127.0.0.1.
	Port int
	// Dir holds the server's files (config, keys, log): /tmp/mfcp-sshd-*.
	Dir string
	// DataDir is a directory owned by 65534 (0755) for tests to serve, e.g. sshfs
	// sshtest:<DataDir>.
	DataDir string
	// ClientHome is a home directory owned by 65534 (0700) holding .ssh/ with the client key
	// (0600), known_hosts and config; use it as HOME of the pod-side ssh client.
	ClientHome string
	// ConfigPath is the client's ssh_config (ClientHome/.ssh/config): Host sshtest with
	// HostName 127.0.0.1, Port, User nobody, IdentityFile, UserKnownHostsFile holding the host
	// key, BatchMode yes and StrictHostKeyChecking yes. Pass it with `ssh -F` / `sshfs -F`:
	// ssh looks for ~/.ssh/config in nobody's passwd home (/nonexistent), not in $HOME.
	ConfigPath string
	// LogPath is sshd's log (-e: its stderr).
	LogPath string

	hostKeyLine string
	cmd         *exec.Cmd
	done        chan struct{}
}

// StartSshd starts the server and waits until its port accepts connections. Its cleanup kills
// sshd and its per-connection children (which leave sshd's process group with setsid) and
// removes Dir.
func StartSshd(t T) *Sshd {
	t.Helper()
	if err := waitForTools(SshdToolsTimeout, "/usr/sbin/sshd", "ssh-keygen", "ssh", "sftp"); err != nil {
		t.Fatalf("StartSshd: %v (install openssh-server and openssh-client)", err)
	}
	dir, err := makeDir("sshd", 0o755)
	if err != nil {
		t.Fatalf("StartSshd: %v", err)
	}
	t.Cleanup(func() {
		if err := removeDirSafely(dir); err != nil {
			t.Fatalf("sshd cleanup: %v", err)
		}
	})
	s := &Sshd{
		Dir:        dir,
		DataDir:    filepath.Join(dir, "data"),
		ClientHome: filepath.Join(dir, "client"),
		LogPath:    filepath.Join(dir, "sshd.log"),
	}
	s.ConfigPath = filepath.Join(s.ClientHome, ".ssh", "config")
	if err := s.prepareFiles(); err != nil {
		t.Fatalf("StartSshd: %v", err)
	}
	t.Cleanup(func() {
		s.kill()
		if failed(t) {
			t.Logf("sshd log (%s):\n%s", s.LogPath, indent(tail(s.Logs(), 8192)))
		}
	})
	// The port is picked by listening on port 0 and closing: another process may grab it
	// before sshd binds, so a bind failure is retried with a new port.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if lastErr = s.start(t); lastErr == nil {
			return s
		}
		s.kill()
		if !strings.Contains(s.Logs(), "Address already in use") {
			break
		}
	}
	t.Fatalf("StartSshd: %v\nsshd log:\n%s", lastErr, indent(tail(s.Logs(), 8192)))
	return nil
}

// waitForTools waits until every tool exists (absolute paths) or is found in PATH.
func waitForTools(timeout time.Duration, tools ...string) error {
	deadline := time.Now().Add(timeout)
	for {
		var missing []string
		for _, tool := range tools {
			if strings.HasPrefix(tool, "/") {
				if _, err := os.Stat(tool); err != nil {
					missing = append(missing, tool)
				}
			} else if _, err := exec.LookPath(tool); err != nil {
				missing = append(missing, tool)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("missing %s after waiting %v", strings.Join(missing, ", "), timeout)
		}
		time.Sleep(time.Second)
	}
}

func (s *Sshd) prepareFiles() error {
	hostKey := filepath.Join(s.Dir, "ssh_host_ed25519_key")
	if _, err := runCmd("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mfcp-test-host", "-f", hostKey); err != nil {
		return err
	}
	sshDir := filepath.Join(s.ClientHome, ".ssh")
	if err := mkdirMode(s.ClientHome, 0o700); err != nil {
		return err
	}
	if err := mkdirMode(sshDir, 0o700); err != nil {
		return err
	}
	if err := mkdirMode(s.DataDir, 0o755); err != nil {
		return err
	}
	clientKey := filepath.Join(sshDir, "id_ed25519")
	if _, err := runCmd("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mfcp-test-client", "-f", clientKey); err != nil {
		return err
	}
	pub, err := os.ReadFile(clientKey + ".pub")
	if err != nil {
		return err
	}
	// Read by sshd as the logging-in user, so world-readable in a world-searchable dir.
	if err := os.WriteFile(filepath.Join(s.Dir, "authorized_keys"), pub, 0o644); err != nil {
		return err
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return err
	}
	fields := strings.Fields(string(hostPub))
	if len(fields) < 2 {
		return fmt.Errorf("unexpected host public key %q", hostPub)
	}
	s.hostKeyLine = fields[0] + " " + fields[1]
	if err := chownTree(s.ClientHome, NobodyUID, NobodyGID); err != nil {
		return err
	}
	if err := os.Chown(s.DataDir, NobodyUID, NobodyGID); err != nil {
		return err
	}
	return os.Chmod(clientKey, 0o600)
}

// writeConfigs writes sshd_config, the client's known_hosts and ssh_config for s.Port.
func (s *Sshd) writeConfigs() error {
	sshdConfig := filepath.Join(s.Dir, "sshd_config")
	cfg := strings.Join([]string{
		"ListenAddress 127.0.0.1",
		"Port " + strconv.Itoa(s.Port),
		"HostKey " + filepath.Join(s.Dir, "ssh_host_ed25519_key"),
		"PidFile none",
		"AuthorizedKeysFile " + filepath.Join(s.Dir, "authorized_keys"),
		"StrictModes no",
		"UsePAM no",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PubkeyAuthentication yes",
		"PermitRootLogin no",
		"AllowUsers nobody",
		"UseDNS no",
		"X11Forwarding no",
		"AllowTcpForwarding no",
		"PrintMotd no",
		"Subsystem sftp internal-sftp",
		"",
	}, "\n")
	if err := os.WriteFile(sshdConfig, []byte(cfg), 0o644); err != nil {
		return err
	}
	sshDir := filepath.Join(s.ClientHome, ".ssh")
	knownHosts := filepath.Join(sshDir, "known_hosts")
	if err := os.WriteFile(knownHosts, []byte(fmt.Sprintf("[127.0.0.1]:%d %s\n", s.Port, s.hostKeyLine)), 0o644); err != nil {
		return err
	}
	clientCfg := strings.Join([]string{
		"Host " + SshHostAlias,
		"  HostName 127.0.0.1",
		"  Port " + strconv.Itoa(s.Port),
		"  User nobody",
		"  IdentityFile " + filepath.Join(sshDir, "id_ed25519"),
		"  IdentitiesOnly yes",
		"  UserKnownHostsFile " + knownHosts,
		"  GlobalKnownHostsFile /dev/null",
		"  StrictHostKeyChecking yes",
		"  UpdateHostKeys no",
		"  BatchMode yes",
		"  LogLevel ERROR",
		"",
	}, "\n")
	if err := os.WriteFile(s.ConfigPath, []byte(clientCfg), 0o644); err != nil {
		return err
	}
	// ssh refuses a config or key that is not owned by the user (or root).
	for _, f := range []string{knownHosts, s.ConfigPath} {
		if err := os.Chown(f, NobodyUID, NobodyGID); err != nil {
			return err
		}
	}
	return nil
}

func freeLocalPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Sshd) start(t T) error {
	port, err := freeLocalPort()
	if err != nil {
		return fmt.Errorf("finding a free port: %w", err)
	}
	s.Port = port
	if err := s.writeConfigs(); err != nil {
		return err
	}
	logf, err := os.OpenFile(s.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	argv := []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
		`mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd && exec /usr/sbin/sshd -f "$1" -D -e`,
		"sh", filepath.Join(s.Dir, "sshd_config")}
	fmt.Fprintf(logf, "=== harness: %s\n", shellQuote(argv))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=" + podPATH, tagEnvVar()}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting sshd: %w", err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	done := s.done
	go func() { cmd.Wait(); close(done) }()

	deadline := time.Now().Add(10 * time.Second)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for {
		select {
		case <-done:
			return fmt.Errorf("sshd exited before accepting connections: %v", cmd.ProcessState)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			t.Logf("sshd: pid %d listening on %s, data %s, client config %s", cmd.Process.Pid, addr, s.DataDir, s.ConfigPath)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd not accepting connections on %s after 10s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill SIGKILLs sshd with its whole process tree and waits for it.
func (s *Sshd) kill() {
	if s.cmd == nil {
		return
	}
	pid := s.cmd.Process.Pid
	select {
	case <-s.done:
	default:
		killGroupAndTree(pid, pid, syscall.SIGKILL)
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
	killGroupLeftovers(pid, -1, syscall.SIGKILL)
	s.cmd = nil
}

// Logs returns sshd's log so far.
func (s *Sshd) Logs() string {
	b, err := os.ReadFile(s.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read the sshd log: %v)", err)
	}
	return string(b)
}

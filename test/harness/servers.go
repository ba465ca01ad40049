package harness

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Server is a backend process a FUSE program talks to (an S3 or GCS
// emulator), run on the host as root, listening on loopback only.
type Server struct {
	Name    string
	LogPath string
	// Addr is host:port, read from the address file the server writes.
	Addr string

	cmd  *exec.Cmd
	done chan struct{}
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(t T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// StartServer runs argv, which makes the server listen on addr (a loopback
// address, see FreeAddr), and waits until addr accepts connections. In argv
// and env, "{dir}" stands for a fresh directory of the server's. The cleanup
// kills the server and its process tree.
func StartServer(t T, name, addr string, env []string, argv ...string) *Server {
	t.Helper()
	dir, err := makeDir("srv", 0o755)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { removeDirSafely(dir) })
	for i, a := range argv {
		argv[i] = strings.ReplaceAll(a, "{dir}", dir)
	}
	for i, a := range env {
		env[i] = strings.ReplaceAll(a, "{dir}", dir)
	}
	s := &Server{Name: name, Addr: addr, LogPath: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(s.LogPath)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer logf.Close()
	s.cmd = exec.Command(argv[0], argv[1:]...)
	s.cmd.Env = append([]string{"PATH=" + podPATH, "HOME=" + dir, tagEnvVar()}, env...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		pid := s.cmd.Process.Pid
		killGroupAndTree(pid, pid, syscall.SIGKILL)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
		}
		killGroupLeftovers(pid, -1, syscall.SIGKILL)
		if failed(t) {
			t.Logf("%s log (%s):\n%s", name, s.LogPath, indent(tail(s.Logs(), 40)))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
		select {
		case <-s.done:
			t.Fatalf("%s exited before listening:\n%s", name, s.Logs())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start listening:\n%s", name, s.Logs())
		}
	}
	t.Logf("%s listening on %s, log %s", name, s.Addr, s.LogPath)
	return s
}

// Logs returns the server's log so far.
func (s *Server) Logs() string {
	b, _ := os.ReadFile(s.LogPath)
	return string(b)
}

// URL is http://Addr.
func (s *Server) URL() string { return "http://" + s.Addr }

// FakeS3 is the test S3 server (test/tools/fakes3): it checks no signatures,
// so plain HTTP PUT and GET reach its objects.
type FakeS3 struct {
	*Server
	Bucket string
}

// StartFakeS3 starts test/tools/fakes3 with the bucket "test-bucket".
func StartFakeS3(t T) *FakeS3 {
	t.Helper()
	bin := BuildPackage(t, "./test/tools/fakes3")
	addr := FreeAddr(t)
	return &FakeS3{Server: StartServer(t, "fakes3", addr, nil, bin, "-addr", addr, "-buckets", "test-bucket"), Bucket: "test-bucket"}
}

// Put stores an object.
func (s *FakeS3) Put(t T, key string, data []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, s.URL()+"/"+s.Bucket+"/"+key, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", key, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("PUT %s: %s", key, resp.Status)
	}
}

// Get reads an object; ok is false when it does not exist.
func (s *FakeS3) Get(t T, key string) (data []byte, ok bool) {
	t.Helper()
	resp, err := http.Get(s.URL() + "/" + s.Bucket + "/" + key)
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, false
	}
	if resp.StatusCode/100 != 2 {
		t.Fatalf("GET %s: %s: %s", key, resp.Status, b)
	}
	return b, true
}

// String describes the server.
func (s *Server) String() string { return fmt.Sprintf("%s at %s", s.Name, s.Addr) }

// FakeGCS is fake-gcs-server (a GCS emulator) with the bucket "test-bucket",
// objects kept in memory.
type FakeGCS struct {
	*Server
	Bucket string
}

// StartFakeGCS starts fake-gcs-server from PATH (hack/install-test-deps.sh
// builds it).
func StartFakeGCS(t T, bin string) *FakeGCS {
	t.Helper()
	addr := FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	s := &FakeGCS{Server: StartServer(t, "fake-gcs-server", addr, nil, bin,
		"-scheme", "http", "-host", "127.0.0.1", "-port", port, "-backend", "memory",
		"-public-host", addr, "-external-url", "http://"+addr, "-log-level", "warn"), Bucket: "test-bucket"}
	resp, err := http.Post(s.URL()+"/storage/v1/b?project=test", "application/json", strings.NewReader(`{"name":"test-bucket"}`))
	if err != nil {
		t.Fatalf("creating the bucket: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("creating the bucket: %s", resp.Status)
	}
	return s
}

// Put uploads an object.
func (s *FakeGCS) Put(t T, name string, data []byte) {
	t.Helper()
	resp, err := http.Post(s.URL()+"/upload/storage/v1/b/"+s.Bucket+"/o?uploadType=media&name="+url.QueryEscape(name), "application/octet-stream", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("uploading %s: %v", name, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("uploading %s: %s", name, resp.Status)
	}
}

// Get downloads an object; ok is false when it does not exist.
func (s *FakeGCS) Get(t T, name string) ([]byte, bool) {
	t.Helper()
	resp, err := http.Get(s.URL() + "/storage/v1/b/" + s.Bucket + "/o/" + url.PathEscape(name) + "?alt=media")
	if err != nil {
		t.Fatalf("downloading %s: %v", name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return nil, false
	}
	if resp.StatusCode/100 != 2 {
		t.Fatalf("downloading %s: %s: %s", name, resp.Status, b)
	}
	return b, true
}

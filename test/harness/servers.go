package harness

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
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

// StartServer runs argv (which must make the server write its address to
// the file named by the placeholder "{addr-file}") and waits until it is
// there. The cleanup kills the server and its process tree.
func StartServer(t T, name string, env []string, argv ...string) *Server {
	t.Helper()
	dir, err := makeDir("srv", 0o755)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { removeDirSafely(dir) })
	addrFile := filepath.Join(dir, "addr")
	for i, a := range argv {
		argv[i] = strings.ReplaceAll(a, "{addr-file}", addrFile)
	}
	s := &Server{Name: name, LogPath: filepath.Join(dir, name+".log"), done: make(chan struct{})}
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
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			s.Addr = strings.TrimSpace(string(b))
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
	return &FakeS3{Server: StartServer(t, "fakes3", nil, bin, "-addr", "127.0.0.1:0", "-addr-file", "{addr-file}", "-buckets", "test-bucket"), Bucket: "test-bucket"}
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

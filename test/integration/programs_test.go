package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// needProgram skips when a FUSE program is not installed, unless
// MFCP_REQUIRE_PROGRAMS=1 (set by .ci/run, which installs them all).
func needProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("MFCP_REQUIRE_PROGRAMS") == "1" {
			t.Fatalf("%s is not installed (hack/install-test-deps.sh installs it)", name)
		}
		t.Skipf("%s is not installed (hack/install-test-deps.sh installs it)", name)
	}
	return p
}

// scratchDir is a directory the pod user owns, for programs that insist on
// a mountpoint of their own (libfuse 2 opens it; rclone refuses a mountpoint
// that already is one). The driver mounts at the volume's target anyway.
func scratchDir(t testing.TB) string {
	dir := harness.NewDir(t, 0o755)
	if err := os.Chown(dir, harness.NobodyUID, harness.NobodyGID); err != nil {
		t.Fatal(err)
	}
	return dir
}

// readWrite proves the data path both ways: a file put into the backend is
// read at the driver's target, and a file written at the target reaches
// the backend.
func readWrite(t testing.TB, v *volume, sidecar *harness.Proc, put func(name string, data []byte), get func(name string) ([]byte, bool), canWrite bool) time.Duration {
	t.Helper()
	want, took := waitServed(t, v.target, "from-backend.txt", sidecar)
	if b, _ := get("from-backend.txt"); string(b) != want {
		t.Fatalf("read %q through the mount, the backend holds %q", want, b)
	}
	// A non-root app container of the pod reads it too (through HostToContainer).
	if code, out := app(t, v.pod, v.target, 1000, `cat "$DATA/from-backend.txt"`); code != 0 || out != want {
		t.Fatalf("app as uid 1000: exit %d, read %q, want %q", code, out, want)
	}
	if !canWrite {
		return took
	}
	data := []byte("written at the target " + time.Now().String())
	if err := os.WriteFile(filepath.Join(v.target, "from-target.txt"), data, 0o644); err != nil {
		t.Fatalf("write at the target: %v", err)
	}
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if got, ok := get("from-target.txt"); ok && bytes.Equal(got, data) {
			return took
		}
		if time.Since(start) > waitLimit {
			got, _ := get("from-target.txt")
			t.Fatalf("the file written at the target did not reach the backend: %q", got)
		}
	}
}

func s3Funcs(t testing.TB, s3 *harness.FakeS3) (func(string, []byte), func(string) ([]byte, bool)) {
	return func(name string, data []byte) { s3.Put(t, name, data) },
		func(name string) ([]byte, bool) { return s3.Get(t, name) }
}

func dirFuncs(t testing.TB, dir string) (func(string, []byte), func(string) ([]byte, bool)) {
	return func(name string, data []byte) {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}, func(name string) ([]byte, bool) {
			b, err := os.ReadFile(filepath.Join(dir, name))
			return b, err == nil
		}
}

// s3fs (libfuse 2) through fusermount3-proxy; -o auto_unmount makes libfuse
// 2 run the helper without opening /dev/fuse itself; umask=0022 lets other
// users of the pod read (s3fs shows objects as 0640 by default).
func TestProxyS3fs(t *testing.T) {
	needProgram(t, "s3fs")
	e := setup(t)
	s3 := harness.StartFakeS3(t)
	put, get := s3Funcs(t, s3)
	put("from-backend.txt", []byte("object in the bucket\n"))
	pod, v := e.podWithVolume(t, false)
	home := scratchDir(t)
	passwd := filepath.Join(home, "passwd-s3fs")
	os.WriteFile(passwd, []byte("AKIAFAKE:fakesecret\n"), 0o600)
	os.Chown(passwd, harness.NobodyUID, harness.NobodyGID)
	sidecar := e.proxySidecar(t, pod, v, proxyLog(t), home,
		"s3fs", s3.Bucket, scratchDir(t), "-f", "-o", "auto_unmount,umask=0022,use_path_request_style,url="+s3.URL()+",passwd_file="+passwd)
	took := readWrite(t, v, sidecar, put, get, true)
	t.Logf("s3fs via fusermount3-proxy: launch → first read %v", took)
	if line := fuseMount(t, v.target); !strings.Contains(line, " - fuse.s3fs ") {
		t.Errorf("mount entry: %s", line)
	}
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

// bindfs (libfuse 2) through fusermount3-proxy.
func TestProxyBindfs(t *testing.T) {
	needProgram(t, "bindfs")
	e := setup(t)
	src := backingDir(t)
	put, get := dirFuncs(t, src)
	put("from-backend.txt", []byte("file in the source dir\n"))
	pod, v := e.podWithVolume(t, false)
	sidecar := e.proxySidecar(t, pod, v, proxyLog(t), "", "bindfs", "-f", "-o", "auto_unmount", src, scratchDir(t))
	took := readWrite(t, v, sidecar, put, get, true)
	t.Logf("bindfs via fusermount3-proxy: launch → first read %v", took)
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

// rclone 1.60 `mount` (Go, runs fusermount from PATH) against the S3 server.
func TestProxyRclone(t *testing.T) {
	needProgram(t, "rclone")
	e := setup(t)
	s3 := harness.StartFakeS3(t)
	put, get := s3Funcs(t, s3)
	put("from-backend.txt", []byte("object for rclone\n"))
	pod, v := e.podWithVolume(t, false)
	home := scratchDir(t)
	sidecar := e.proxySidecarEnv(t, pod, v, proxyLog(t), home, []string{
		"RCLONE_S3_PROVIDER=Other", "RCLONE_S3_ENDPOINT=" + s3.URL(),
		"RCLONE_S3_ACCESS_KEY_ID=AKIAFAKE", "RCLONE_S3_SECRET_ACCESS_KEY=fakesecret",
	}, "rclone", "mount", "--config", "/dev/null", "--cache-dir", filepath.Join(home, "cache"), ":s3:"+s3.Bucket, scratchDir(t))
	took := readWrite(t, v, sidecar, put, get, true)
	t.Logf("rclone mount via fusermount3-proxy: launch → first read %v", took)
	if line := fuseMount(t, v.target); !strings.Contains(line, " - fuse.rclone ") {
		t.Errorf("mount entry: %s", line)
	}
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

// gcsfuse (jacobsa/fuse) takes /dev/fd/3 directly (fuse-starter), and runs
// /usr/bin/fusermount3 by path (fusermount3-proxy).
func TestGcsfuse(t *testing.T) {
	for _, mode := range []string{"starter", "proxy"} {
		t.Run(mode, func(t *testing.T) {
			gcsfuse := needProgram(t, "gcsfuse")
			e := setup(t)
			gcs := harness.StartFakeGCS(t, needProgram(t, "fake-gcs-server"))
			put, get := gcsFuncs(t, gcs)
			put("from-backend.txt", []byte("object in the GCS emulator\n"))
			pod, v := e.podWithVolume(t, false)
			var sidecar *harness.Proc
			if mode == "starter" {
				sidecar = e.starter(t, pod, append([]string{gcsfuse}, gcsfuseArgs(gcs, "/dev/fd/3")...)...)
			} else {
				sidecar = e.proxySidecar(t, pod, v, proxyLog(t), "", append([]string{gcsfuse}, gcsfuseArgs(gcs, scratchDir(t))...)...)
			}
			took := readWrite(t, v, sidecar, put, get, true)
			t.Logf("gcsfuse via %s: launch → first read %v", mode, took)
			if line := fuseMount(t, v.target); mode == "proxy" && !strings.Contains(line, " - fuse.gcsfuse ") {
				t.Errorf("mount entry: %s", line)
			}
			e.unpublish(t, v)
			requireNothingMounted(t, e.k)
		})
	}
}

func gcsfuseArgs(gcs *harness.FakeGCS, mountpoint string) []string {
	// --enable-hns=false: otherwise gcsfuse asks the emulator for the bucket
	// layout over gRPC and retries for minutes.
	return []string{"--foreground", "--anonymous-access", "--enable-hns=false", "--trace-exporters=",
		"--custom-endpoint", gcs.URL() + "/storage/v1/", gcs.Bucket, mountpoint}
}

func gcsFuncs(t testing.TB, gcs *harness.FakeGCS) (func(string, []byte), func(string) ([]byte, bool)) {
	return func(name string, data []byte) { gcs.Put(t, name, data) },
		func(name string) ([]byte, bool) { return gcs.Get(t, name) }
}

// goofys (an old jacobsa/fuse fork that refuses /dev/fd/N) through
// fusermount3-proxy against the S3 server.
func TestProxyGoofys(t *testing.T) {
	goofys := needProgram(t, "goofys")
	e := setup(t)
	s3 := harness.StartFakeS3(t)
	put, get := s3Funcs(t, s3)
	put("from-backend.txt", []byte("object for goofys\n"))
	pod, v := e.podWithVolume(t, false)
	sidecar := e.proxySidecarEnv(t, pod, v, proxyLog(t), "", []string{"AWS_ACCESS_KEY_ID=AKIAFAKE", "AWS_SECRET_ACCESS_KEY=fakesecret"},
		goofys, "-f", "--endpoint", s3.URL(), s3.Bucket, scratchDir(t))
	took := readWrite(t, v, sidecar, put, get, true)
	t.Logf("goofys via fusermount3-proxy: launch → first read %v", took)
	e.unpublish(t, v)
	requireNothingMounted(t, e.k)
}

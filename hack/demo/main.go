// Command demo runs the whole meta-fuse-csi-plugin flow on this machine with
// no Kubernetes: the driver, a NodePublishVolume exactly as kubelet sends it,
// an unprivileged FUSE sidecar (fuse-starter + go-fuse's loopback server, or
// sshfs with -sshfs) and an app container, then unpublishes and cleans up,
// also on Ctrl-C. It needs root and /dev/fuse. Run it with `make demo`.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// demoT is the harness's T for a program: Fatalf cleans up and exits.
type demoT struct {
	mu       sync.Mutex
	cleanups []func()
	once     sync.Once
	failed   bool
}

func (d *demoT) Helper()                         {}
func (d *demoT) Logf(format string, args ...any) { fmt.Printf("   · "+format+"\n", args...) }
func (d *demoT) Failed() bool                    { return d.failed }
func (d *demoT) Cleanup(f func()) {
	d.mu.Lock()
	d.cleanups = append(d.cleanups, f)
	d.mu.Unlock()
}
func (d *demoT) TempDir() string {
	dir, err := os.MkdirTemp("", "mfcp-demo-")
	if err != nil {
		d.Fatalf("%v", err)
	}
	d.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
func (d *demoT) Fatalf(format string, args ...any) {
	d.failed = true
	fmt.Fprintf(os.Stderr, "demo failed: "+format+"\n", args...)
	d.cleanup()
	os.Exit(1)
}

func (d *demoT) cleanup() {
	d.once.Do(func() {
		fmt.Println("\n== cleaning up")
		d.mu.Lock()
		fs := d.cleanups
		d.mu.Unlock()
		for i := len(fs) - 1; i >= 0; i-- {
			fs[i]()
		}
	})
}

func step(format string, args ...any) { fmt.Printf("\n== "+format+"\n", args...) }

func main() {
	useSshfs := flag.Bool("sshfs", false, "serve the volume with sshfs against a local sshd instead of go-fuse's loopback example")
	hold := flag.Duration("hold", 0, "keep the volume mounted this long before unpublishing, to look around")
	flag.Parse()
	if err := harness.Requirements(); err != nil {
		fmt.Fprintln(os.Stderr, "the demo needs root and /dev/fuse:", err)
		os.Exit(1)
	}
	harness.SweepStale()
	t := &demoT{}
	t.Cleanup(func() { harness.CleanupBinaries() })
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Printf("\n%v: stopping\n", s)
		t.cleanup()
		os.Exit(130)
	}()
	run(t, *useSshfs, *hold)
	t.cleanup()
	fmt.Println("\ndone: nothing is left mounted or running")
}

func run(t *demoT, useSshfs bool, hold time.Duration) {
	ctx := context.Background()
	step("building the driver, fuse-starter and the FUSE programs")
	bins := harness.Binaries(t)

	step("starting the driver (root, as the DaemonSet would run it) on a stand-in kubelet directory")
	k := harness.NewKubelet(t)
	d := harness.StartDriver(t, k, bins)
	fmt.Printf("   driver log: %s\n", d.LogPath)

	step("kubelet: NodePublishVolume for the pod's inline CSI volume")
	pod := k.NewPod(t, "demo")
	ed := pod.AddEmptyDir("fuse-fd-passing")
	req := pod.PublishRequest("fuse-volume", map[string]string{
		"fdPassingEmptyDirName": "fuse-fd-passing",
		"fdPassingSocketName":   "fuse-csi-ephemeral.sock",
	}, false)
	fmt.Printf("   target_path:    %s\n   volume_context: %v\n", req.TargetPath, req.VolumeContext)
	if _, err := d.Node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	st, _ := os.Lstat(filepath.Join(ed, "fuse-csi-ephemeral.sock"))
	fmt.Printf("   the driver made the socket in the pod's emptyDir: %v %s\n", st.Mode(), filepath.Join(ed, "fuse-csi-ephemeral.sock"))

	step("pod: the FUSE sidecar as uid 65534 with no capabilities, through fuse-starter")
	check := pod.Run(t, harness.RunOptions{Args: []string{bins.PrivCheck}})
	if code, _ := check.Wait(30 * time.Second); code != 0 {
		t.Fatalf("the pod user is not unprivileged:\n%s", check.Output())
	}
	fmt.Printf("   privcheck: %s", check.Output())
	sock := pod.ViewPath("fd") + "/fuse-csi-ephemeral.sock"
	opts := harness.RunOptions{Name: "fuse-sidecar", Mounts: []harness.Mount{{Name: "fd", Source: ed}}}
	var file string
	if useSshfs {
		sshd := harness.StartSshd(t)
		file = "remote.txt"
		os.WriteFile(filepath.Join(sshd.DataDir, file), []byte("this file lives behind a local sshd\n"), 0o644)
		os.Chown(filepath.Join(sshd.DataDir, file), harness.NobodyUID, harness.NobodyGID)
		opts.Home = sshd.ClientHome
		opts.Args = []string{bins.Starter, "--fd-passing-socket-path", sock, "--", "sshfs", "-f", "-F", sshd.ConfigPath, harness.SshHostAlias + ":" + sshd.DataDir, "/dev/fd/3"}
	} else {
		backing := harness.NewDir(t, 0o777)
		file = "hello.txt"
		os.WriteFile(filepath.Join(backing, file), []byte("this file lives in the loopback server's backing directory\n"), 0o644)
		opts.Args = []string{bins.Starter, "--fd-passing-socket-path", sock, "--", bins.Loopback, "/dev/fd/3", backing}
	}
	fmt.Printf("   $ %s\n", strings.Join(opts.Args, " "))
	start := time.Now()
	sidecar := pod.Run(t, opts)
	for {
		if b, err := os.ReadFile(filepath.Join(req.TargetPath, file)); err == nil {
			fmt.Printf("   served after %v; %s says: %s", time.Since(start).Round(time.Millisecond), file, b)
			break
		}
		if sidecar.Exited() || time.Since(start) > 30*time.Second {
			t.Fatalf("the volume was not served:\n%s", sidecar.Output())
		}
		time.Sleep(5 * time.Millisecond)
	}

	step("node: the mount entry the driver made")
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, req.TargetPath) {
			fmt.Println("   " + l)
		}
	}

	step("pod: an app container (uid 1000) uses the volume through HostToContainer propagation")
	app := pod.Run(t, harness.RunOptions{
		Name: "app", UID: 1000, GID: 1000,
		Mounts: []harness.Mount{{Name: "data", Source: req.TargetPath}},
		Args:   []string{"/bin/sh", "-c", "cd " + pod.ViewPath("data") + " && echo 'written by the app' > from-app.txt && ls -l && cat from-app.txt && grep ' fuse' /proc/self/mounts"},
	})
	if code, _ := app.Wait(30 * time.Second); code != 0 {
		t.Fatalf("app failed:\n%s", app.Output())
	}
	fmt.Print(indent(app.Output()))

	if hold > 0 {
		step("holding the volume for %v: try `ls %s`", hold, req.TargetPath)
		time.Sleep(hold)
	}

	step("kubelet: NodeUnpublishVolume")
	start = time.Now()
	if _, err := d.Node.NodeUnpublishVolume(ctx, pod.UnpublishRequest("fuse-volume")); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	fmt.Printf("   unpublished in %v\n", time.Since(start).Round(time.Microsecond))
	if m, _ := k.MountsUnder(); len(m) == 0 {
		fmt.Println("   nothing is mounted under the kubelet directory any more")
	} else {
		t.Fatalf("still mounted: %v", m)
	}
	code, _ := sidecar.Wait(10 * time.Second)
	fmt.Printf("   the FUSE sidecar saw its connection end and exited with %d\n", code)
}

func indent(s string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		b.WriteString("   " + sc.Text() + "\n")
	}
	return b.String()
}

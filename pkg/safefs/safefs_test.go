package safefs

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func openRoot(t *testing.T, path string) *Dir {
	t.Helper()
	d, err := OpenRoot(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func mustMkdirAll(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func lstat(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestOpenRoot(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "file"), "x")
	if err := os.Symlink(root, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	// A trusted root may be reached through a symlink.
	d := openRoot(t, filepath.Join(root, "link"))
	if st, err := d.Stat(); err != nil || st.Ino != lstat(t, root).Ino {
		t.Errorf("OpenRoot through a symlink: %+v, %v", st, err)
	}
	if _, err := OpenRoot(filepath.Join(root, "file")); !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("OpenRoot(file) = %v, want ENOTDIR", err)
	}
	if _, err := OpenRoot(filepath.Join(root, "missing")); !errors.Is(err, unix.ENOENT) {
		t.Errorf("OpenRoot(missing) = %v, want ENOENT", err)
	}
}

func TestOpenDir(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	mustMkdirAll(t, filepath.Join(root, "a", "b", "c"))
	mustMkdirAll(t, outside)
	writeFile(t, filepath.Join(root, "a", "file"), "x")
	for link, to := range map[string]string{
		"a/lnk-dir":      "b",        // relative, inside
		"a/lnk-abs":      outside,    // absolute, outside
		"a/b/lnk-up":     "../..",    // relative, to root
		"a/b/lnk-escape": "../../..", // relative, outside
		"lnk-a":          "a",
		"a/lnk-proc":     "/proc/self/root",
	} {
		if err := os.Symlink(to, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	d := openRoot(t, root)
	tests := []struct {
		rel  string
		want error // nil: success
	}{
		{"a", nil},
		{"a/b", nil},
		{"a/b/c", nil},
		{"a/b/../b/c", nil}, // ".." that stays beneath is fine
		{".", nil},
		{"a/b/c/../../..", nil},
		{"lnk-a", unix.ELOOP},
		{"lnk-a/b", unix.ELOOP},
		{"a/lnk-dir", unix.ELOOP},
		{"a/lnk-dir/c", unix.ELOOP},
		{"a/lnk-abs", unix.ELOOP},
		{"a/b/lnk-up", unix.ELOOP},
		{"a/b/lnk-up/a", unix.ELOOP},
		{"a/b/lnk-escape", unix.ELOOP},
		{"a/lnk-proc", unix.ELOOP},
		{"..", unix.EXDEV},
		{"../outside", unix.EXDEV},
		{"a/../../outside", unix.EXDEV},
		{"a/b/c/../../../..", unix.EXDEV},
		{outside, unix.EXDEV}, // absolute paths are refused by RESOLVE_BENEATH
		{"/", unix.EXDEV},
		{"a/file", unix.ENOTDIR},
		{"a/missing", unix.ENOENT},
	}
	for _, tc := range tests {
		t.Run(tc.rel, func(t *testing.T) {
			t.Parallel()
			sub, err := d.OpenDir(tc.rel)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("OpenDir(%q) = %v", tc.rel, err)
				}
				defer sub.Close()
				st, err := sub.Stat()
				if err != nil {
					t.Fatal(err)
				}
				if want := lstat(t, filepath.Join(root, tc.rel)); st.Ino != want.Ino || st.Dev != want.Dev {
					t.Errorf("OpenDir(%q) opened inode %d, want %d", tc.rel, st.Ino, want.Ino)
				}
				if !strings.HasSuffix(sub.Name(), tc.rel) {
					t.Errorf("Name() = %q", sub.Name())
				}
				return
			}
			if err == nil {
				sub.Close()
				t.Fatalf("OpenDir(%q) succeeded, want %v", tc.rel, tc.want)
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("OpenDir(%q) = %v, want %v", tc.rel, err, tc.want)
			}
		})
	}
}

// TestOpenDirLastSymlink: a symlink as the last component fails with ELOOP
// (not ENOTDIR), so the driver can say "is a symlink".
func TestOpenDirLastSymlink(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	mustMkdirAll(t, filepath.Join(root, "a"))
	if err := os.Symlink("a", filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	d := openRoot(t, root)
	if sub, err := d.OpenDir("l"); !errors.Is(err, unix.ELOOP) {
		if sub != nil {
			sub.Close()
		}
		t.Errorf("OpenDir(symlink) = %v, want ELOOP", err)
	}
}

func TestOpenPathBeneath(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	mustMkdirAll(t, filepath.Join(root, "a", "b"))
	if err := os.Symlink("a", filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	d := openRoot(t, root)
	f, err := d.OpenPathBeneath("a/b")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for rel, want := range map[string]error{"l": unix.ELOOP, "l/b": unix.ELOOP, "../x": unix.EXDEV, "a/x": unix.ENOENT} {
		if f, err := d.OpenPathBeneath(rel); !errors.Is(err, want) {
			if f != nil {
				f.Close()
			}
			t.Errorf("OpenPathBeneath(%q) = %v, want %v", rel, err, want)
		}
	}
}

func TestMkdir(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	mustMkdirAll(t, filepath.Join(root, "existing"))
	mustMkdirAll(t, outside)
	writeFile(t, filepath.Join(root, "file"), "content")
	if err := os.Symlink(outside, filepath.Join(root, "link-dir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "new"), filepath.Join(root, "dangling")); err != nil {
		t.Fatal(err)
	}
	d := openRoot(t, root)

	if err := d.Mkdir("new", 0o750); err != nil {
		t.Fatalf("Mkdir(new) = %v", err)
	}
	if st := lstat(t, filepath.Join(root, "new")); st.Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Errorf("new is not a directory: %o", st.Mode)
	}
	if err := d.Mkdir("existing", 0o750); err != nil {
		t.Errorf("Mkdir(existing dir) = %v, want nil", err)
	}
	for _, name := range []string{"file", "link-dir", "dangling"} {
		if err := d.Mkdir(name, 0o750); err == nil {
			t.Errorf("Mkdir(%s) = nil, want an error", name)
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "file")); err != nil || string(b) != "content" {
		t.Errorf("file changed: %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(root, "link-dir")); err != nil || l != outside {
		t.Errorf("link-dir changed: %q, %v", l, err)
	}
	if _, err := os.Lstat(filepath.Join(outside, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Mkdir through a dangling symlink created its target: %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("the symlink's target directory changed: %v", ents)
	}
}

func TestRmdir(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	mustMkdirAll(t, filepath.Join(root, "empty"))
	mustMkdirAll(t, filepath.Join(root, "full"))
	writeFile(t, filepath.Join(root, "full", "data"), "keep me")
	writeFile(t, filepath.Join(root, "file"), "x")
	if err := os.Symlink("empty", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	d := openRoot(t, root)

	if err := d.Rmdir("full"); !errors.Is(err, unix.ENOTEMPTY) {
		t.Errorf("Rmdir(non-empty) = %v, want ENOTEMPTY", err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "full", "data")); err != nil || string(b) != "keep me" {
		t.Errorf("files of the non-empty directory changed: %q, %v", b, err)
	}
	if err := d.Rmdir("file"); !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("Rmdir(file) = %v, want ENOTDIR", err)
	}
	if err := d.Rmdir("link"); !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("Rmdir(symlink) = %v, want ENOTDIR", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "link")); err != nil {
		t.Errorf("symlink removed: %v", err)
	}
	if err := d.Rmdir("empty"); err != nil {
		t.Errorf("Rmdir(empty) = %v", err)
	}
	if err := d.Rmdir("empty"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Rmdir(missing) = %v, want ENOENT", err)
	}
}

func makeSocket(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveSocket(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	d := openRoot(t, root)
	makeSocket(t, filepath.Join(root, "sock"))
	writeFile(t, filepath.Join(root, "file"), "x")
	mustMkdirAll(t, filepath.Join(root, "dir"))
	makeSocket(t, filepath.Join(root, "target.sock"))
	if err := os.Symlink("target.sock", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := d.RemoveSocket("sock"); err != nil {
		t.Errorf("RemoveSocket(socket) = %v", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there: %v", err)
	}
	if err := d.RemoveSocket("sock"); err != nil {
		t.Errorf("RemoveSocket(missing) = %v, want nil", err)
	}
	for _, name := range []string{"file", "dir", "link", "fifo"} {
		if err := d.RemoveSocket(name); err == nil {
			t.Errorf("RemoveSocket(%s) = nil, want an error", name)
		}
		if _, err := os.Lstat(filepath.Join(root, name)); err != nil {
			t.Errorf("RemoveSocket removed %s: %v", name, err)
		}
	}
	if st := lstat(t, filepath.Join(root, "target.sock")); st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Errorf("the symlink's target changed")
	}
}

func TestListenUnix(t *testing.T) {
	t.Parallel()
	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		uid, gid = 65534, 65534
	} else {
		t.Log("not root: the socket keeps this user's uid and gid (chown to 65534 not tested)")
	}
	for _, mode := range []uint32{0o666, 0o660, 0o600, 0o606} {
		root := t.TempDir()
		d := openRoot(t, root)
		l, err := d.ListenUnix("s.sock", uid, gid, mode)
		if err != nil {
			t.Fatalf("ListenUnix(mode %o) = %v", mode, err)
		}
		st := lstat(t, filepath.Join(root, "s.sock"))
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o7777 != mode || int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("socket has mode %o owner %d:%d, want socket %o %d:%d", st.Mode, st.Uid, st.Gid, mode, uid, gid)
		}
		// It accepts connections by its real path.
		c, err := net.Dial("unix", filepath.Join(root, "s.sock"))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		a, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		a.Close()
		c.Close()
		// Close does not unlink: the driver removes the socket through the dir fd.
		l.Close()
		if _, err := os.Lstat(filepath.Join(root, "s.sock")); err != nil {
			t.Errorf("closing the listener removed the socket: %v", err)
		}
		if err := d.RemoveSocket("s.sock"); err != nil {
			t.Error(err)
		}
	}
}

func TestListenUnixLongDirPath(t *testing.T) {
	t.Parallel()
	long := t.TempDir()
	for len(long) <= 200 {
		long = filepath.Join(long, strings.Repeat("d", 40))
	}
	mustMkdirAll(t, long)
	name := strings.Repeat("s", 80) // kubeletpath.MaxSocketNameLen
	if len(long)+1+len(name) < 108 {
		t.Fatalf("path %q is not long enough for the test", long)
	}
	d := openRoot(t, long)
	l, err := d.ListenUnix(name, os.Getuid(), os.Getgid(), 0o600)
	if err != nil {
		t.Fatalf("ListenUnix in a %d-byte directory path = %v", len(long), err)
	}
	defer l.Close()
	if st := lstat(t, filepath.Join(long, name)); st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Errorf("no socket at %s", filepath.Join(long, name))
	}
	// Connect the way a pod would, through a short path in its own view.
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	sub := openRoot(t, long)
	c, err := net.Dial("unix", sub.ProcPath()+"/"+name)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestListenUnixNameTooLong(t *testing.T) {
	t.Parallel()
	d := openRoot(t, t.TempDir())
	if l, err := d.ListenUnix(strings.Repeat("s", 100), os.Getuid(), os.Getgid(), 0o600); err == nil {
		l.Close()
		t.Errorf("ListenUnix with a 100-byte name succeeded")
	}
}

func TestListenUnixRefusesExisting(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	mustMkdirAll(t, root)
	outsideFile := filepath.Join(base, "outside-file")
	writeFile(t, outsideFile, "secret")
	outsideDir := filepath.Join(base, "outside-dir")
	mustMkdirAll(t, outsideDir)
	for name, to := range map[string]string{
		"link-file":     outsideFile,
		"link-dir":      outsideDir,
		"link-dangling": filepath.Join(outsideDir, "new.sock"),
	} {
		if err := os.Symlink(to, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(root, "file"), "x")
	mustMkdirAll(t, filepath.Join(root, "dir"))
	fileBefore := lstat(t, outsideFile)
	dirBefore := lstat(t, outsideDir)

	d := openRoot(t, root)
	for _, name := range []string{"link-file", "link-dir", "link-dangling", "file", "dir"} {
		l, err := d.ListenUnix(name, 65534, 65534, 0o666)
		if err == nil {
			l.Close()
			t.Errorf("ListenUnix(%s) succeeded", name)
			continue
		}
		if !errors.Is(err, unix.EADDRINUSE) {
			t.Errorf("ListenUnix(%s) = %v, want EADDRINUSE", name, err)
		}
	}
	if st := lstat(t, outsideFile); st.Mode != fileBefore.Mode || st.Uid != fileBefore.Uid || st.Gid != fileBefore.Gid {
		t.Errorf("outside file changed: mode %o owner %d:%d", st.Mode, st.Uid, st.Gid)
	}
	if st := lstat(t, outsideDir); st.Mode != dirBefore.Mode || st.Uid != dirBefore.Uid || st.Gid != dirBefore.Gid {
		t.Errorf("outside dir changed: mode %o owner %d:%d", st.Mode, st.Uid, st.Gid)
	}
	if ents, _ := os.ReadDir(outsideDir); len(ents) != 0 {
		t.Errorf("something was created through the dangling symlink: %v", ents)
	}
	for _, name := range []string{"link-file", "link-dir", "link-dangling"} {
		if st := lstat(t, filepath.Join(root, name)); st.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Errorf("%s is no longer a symlink", name)
		}
	}
}

// TestListenUnixSymlinkRace: another process keeps replacing the socket name
// with a symlink to a file outside while the driver creates the socket; the
// outside file's mode and owner never change.
func TestListenUnixSymlinkRace(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	mustMkdirAll(t, root)
	outside := filepath.Join(base, "outside")
	writeFile(t, outside, "secret")
	if err := os.Chmod(outside, 0o600); err != nil {
		t.Fatal(err)
	}
	before := lstat(t, outside)

	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		uid, gid = 65534, 65534
	}
	d := openRoot(t, root)
	name := "fuse.sock"
	path := filepath.Join(root, name)
	tmp := filepath.Join(root, "tmp-link")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			os.Remove(tmp)
			if err := os.Symlink(outside, tmp); err != nil {
				continue
			}
			// rename replaces whatever sits at the name (the driver's fresh
			// socket included) atomically.
			os.Rename(tmp, path)
			os.Remove(path)
		}
	}()
	var ok, failed, replaced int
	for i := 0; i < 200; i++ {
		l, err := d.ListenUnix(name, uid, gid, 0o666)
		if err != nil {
			failed++
			if strings.Contains(err.Error(), "replaced") || errors.Is(err, unix.ENOENT) {
				replaced++ // the swap hit the window between bind and chown
			}
			continue
		}
		ok++
		l.Close()
		d.RemoveSocket(name)
	}
	close(stop)
	wg.Wait()
	t.Logf("ListenUnix succeeded %d times and failed %d times (%d in the window between bind and chown)", ok, failed, replaced)

	after := lstat(t, outside)
	if after.Mode != before.Mode || after.Uid != before.Uid || after.Gid != before.Gid {
		t.Fatalf("the outside file changed: mode %o -> %o, owner %d:%d -> %d:%d",
			before.Mode, after.Mode, before.Uid, before.Gid, after.Uid, after.Gid)
	}
	if b, err := os.ReadFile(outside); err != nil || string(b) != "secret" {
		t.Errorf("outside file content changed: %q, %v", b, err)
	}
}

func TestProcPathAndLstat(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "f"), "x")
	if err := os.Symlink("f", filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	d := openRoot(t, root)
	if !strings.HasPrefix(d.ProcPath(), "/proc/self/fd/") {
		t.Errorf("ProcPath() = %q", d.ProcPath())
	}
	if target, err := os.Readlink(d.ProcPath()); err != nil || target != root {
		t.Errorf("ProcPath() links to %q, %v; want %q", target, err, root)
	}
	st, err := d.Lstat("l")
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("Lstat(symlink) = %o, %v; want a symlink (not followed)", st.Mode, err)
	}
	if _, err := d.Lstat("missing"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Lstat(missing) = %v", err)
	}
}

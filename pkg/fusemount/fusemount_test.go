package fusemount

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/mountoptions"
)

func TestRequestMountArguments(t *testing.T) {
	for _, tc := range []struct {
		name      string
		req       Request
		wantFlags uintptr
		wantData  string
		wantSrc   string
		wantType  string
	}{
		{
			name:      "defaults",
			req:       Request{UID: 65534, GID: 65534},
			wantFlags: unix.MS_NOSUID | unix.MS_NODEV,
			wantData:  "rootmode=40000,user_id=65534,group_id=65534,allow_other,default_permissions",
			wantSrc:   DefaultSource, wantType: "fuse",
		},
		{
			name:      "read-only volume",
			req:       Request{UID: 1000, GID: 2000, ReadOnly: true},
			wantFlags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_RDONLY,
			wantData:  "rootmode=40000,user_id=1000,group_id=2000,allow_other,default_permissions",
			wantSrc:   DefaultSource, wantType: "fuse",
		},
		{
			name: "user options",
			req: Request{UID: 1, GID: 1, Options: mountoptions.Options{
				Flags: unix.MS_NOEXEC | unix.MS_NOATIME, MaxRead: 131072, FsName: "sshtest:/data,x", Subtype: "sshfs",
			}},
			wantFlags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOATIME,
			wantData:  "rootmode=40000,user_id=1,group_id=1,allow_other,default_permissions,max_read=131072",
			// fsname goes to the source argument, never into the comma-separated data.
			wantSrc: "sshtest:/data,x", wantType: "fuse.sshfs",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.req.Flags(); got != tc.wantFlags {
				t.Errorf("Flags() = %#x, want %#x", got, tc.wantFlags)
			}
			if got := tc.req.Data(unix.S_IFDIR | 0o755); got != tc.wantData {
				t.Errorf("Data() = %q, want %q", got, tc.wantData)
			}
			src, typ := tc.req.SourceAndType()
			if src != tc.wantSrc || typ != tc.wantType {
				t.Errorf("SourceAndType() = %q, %q, want %q, %q", src, typ, tc.wantSrc, tc.wantType)
			}
		})
	}
}

func TestIsFUSE(t *testing.T) {
	for typ, want := range map[string]bool{"fuse": true, "fuse.sshfs": true, "fuseblk": true, "fusectl": false, "tmpfs": false, "ext4": false} {
		if got := (MountEntry{FSType: typ}).IsFUSE(); got != want {
			t.Errorf("IsFUSE(%q) = %v", typ, got)
		}
	}
}

func TestMountsAtMissingPath(t *testing.T) {
	ms, err := MountsAt("/nonexistent/path/for/mfcp")
	if err != nil || len(ms) != 0 {
		t.Fatalf("MountsAt = %v, %v", ms, err)
	}
	n, _, err := (&Unmounter{}).UnmountAll("/nonexistent/path/for/mfcp", func() (*os.File, error) { return nil, os.ErrNotExist })
	if err != nil || n != 0 {
		t.Fatalf("UnmountAll = %d, %v", n, err)
	}
}

func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount("mfcp-test", dir, "tmpfs", 0, "size=4k"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

func openPath(p string) Opener {
	return func() (*os.File, error) { return os.OpenFile(p, unix.O_PATH|unix.O_DIRECTORY, 0) }
}

// Unmounting goes through the handle, and only when the handle is on a
// mount the table shows at the path: a path that leads elsewhere (as after a
// symlink swap of a parent) unmounts nothing.
func TestUnmountAllThroughHandle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs")
	}
	base := t.TempDir()
	target, elsewhere := filepath.Join(base, "target"), filepath.Join(base, "elsewhere")
	for _, d := range []string{target, elsewhere} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mountTmpfs(t, target)
	mountTmpfs(t, target) // stacked
	mountTmpfs(t, elsewhere)

	h, err := openPath(target)()
	if err != nil {
		t.Fatal(err)
	}
	id, err := MountID(h)
	h.Close()
	ms, _ := MountsAt(target)
	if err != nil || len(ms) != 2 || id != ms[1].ID {
		t.Fatalf("MountID = %d, %v; mounts at target %+v (the handle must be on the top one)", id, err, ms)
	}

	u := &Unmounter{}
	if n, _, err := u.UnmountAll(target, openPath(elsewhere)); !errors.Is(err, errChanged) || n != 0 {
		t.Fatalf("with a handle elsewhere: %d, %v; want errChanged and nothing unmounted", n, err)
	}
	if ms, _ := MountsAt(elsewhere); len(ms) != 1 {
		t.Fatalf("the mount elsewhere was touched: %+v", ms)
	}
	if n, _, err := u.UnmountAll(target, openPath(target)); err != nil || n != 2 {
		t.Fatalf("UnmountAll = %d, %v; want 2", n, err)
	}
	if done, err := u.UnmountTopIf(elsewhere, -1, openPath(elsewhere)); err != nil || done {
		t.Fatalf("UnmountTopIf with another ID: %v, %v", done, err)
	}
	if ms, _ := MountsAt(elsewhere); len(ms) != 1 {
		t.Fatalf("UnmountTopIf with another ID unmounted: %+v", ms)
	}
}

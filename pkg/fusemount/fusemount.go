// Package fusemount makes and removes FUSE mounts with the syscalls
// themselves (no /bin/mount, no fusermount), and never touches a mount in a
// way that could hang on a dead or stopped FUSE server: state is read from
// /proc/self/mountinfo, never by stat'ing the mountpoint.
package fusemount

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/mountoptions"
)

// maxStacked bounds the mounts UnmountAll removes from one path: a FUSE
// mount replaced after its server died stays under the new one.
const maxStacked = 256

// DefaultSource is the mount source when the FUSE program names none.
const DefaultSource = "meta-fuse-csi-plugin"

// Request describes one FUSE mount.
type Request struct {
	// Target is an O_PATH (or directory) handle on the mountpoint; the mount
	// goes through its /proc/self/fd link so no path is resolved again.
	Target *os.File
	// UID and GID become user_id and group_id: the owner of the connection.
	UID, GID uint32
	ReadOnly bool
	Options  mountoptions.Options
}

// Result is a made mount.
type Result struct {
	// Dev is the open /dev/fuse; the caller hands it over and closes it.
	Dev *os.File
	// Data is the mount data without the fd= part, for logs and the pod.
	Data string
}

// Flags returns the mount(2) flags for r: nosuid and nodev always.
func (r *Request) Flags() uintptr {
	f := r.Options.Flags | unix.MS_NOSUID | unix.MS_NODEV
	if r.ReadOnly {
		f |= unix.MS_RDONLY
	}
	return f
}

// Data returns the FUSE mount data for r, without fd=.
func (r *Request) Data(rootMode uint32) string {
	d := fmt.Sprintf("rootmode=%o,user_id=%d,group_id=%d,allow_other,default_permissions",
		rootMode&unix.S_IFMT, r.UID, r.GID)
	if r.Options.MaxRead != 0 {
		d += ",max_read=" + strconv.FormatUint(r.Options.MaxRead, 10)
	}
	return d
}

// SourceAndType returns the mount source and filesystem type.
func (r *Request) SourceAndType() (string, string) {
	src, typ := DefaultSource, "fuse"
	if r.Options.FsName != "" {
		src = r.Options.FsName
	}
	if r.Options.Subtype != "" {
		typ = "fuse." + r.Options.Subtype
	}
	return src, typ
}

// Mount opens /dev/fuse and mounts it on r.Target.
func Mount(r *Request) (*Result, error) {
	var st unix.Stat_t
	err := unix.Fstat(int(r.Target.Fd()), &st)
	if errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) {
		// The target is the root of a dead FUSE mount that the new one is
		// stacked on: a FUSE root is always a directory.
		st.Mode, err = unix.S_IFDIR|0o755, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stat of mount target: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("mount target %s is not a directory", r.Target.Name())
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/fuse: %w", err)
	}
	dev := os.NewFile(uintptr(fd), "/dev/fuse")
	data := r.Data(st.Mode)
	src, typ := r.SourceAndType()
	target := "/proc/self/fd/" + strconv.Itoa(int(r.Target.Fd()))
	if err := unix.Mount(src, target, typ, r.Flags(), "fd="+strconv.Itoa(fd)+","+data); err != nil {
		dev.Close()
		return nil, fmt.Errorf("mount(%s, %s, %s, %s): %w", src, r.Target.Name(), typ, data, err)
	}
	return &Result{Dev: dev, Data: data}, nil
}

// Mount is one entry of the mount table at a mountpoint.
type MountEntry struct {
	// ID is the mount ID (mountinfo's first field, an fd's mnt_id).
	ID         int
	Mountpoint string
	FSType     string
	Source     string
	Minor      int
	Options    string
}

// IsFUSE reports whether the entry is a FUSE mount.
func (m MountEntry) IsFUSE() bool {
	return m.FSType == "fuse" || strings.HasPrefix(m.FSType, "fuse.") || m.FSType == "fuseblk"
}

// MountsAt lists the mounts whose mountpoint is exactly path, bottom first.
// path must be as the kernel shows it (no symlinks).
func MountsAt(path string) ([]MountEntry, error) {
	// Not SingleEntryFilter: it stops at the first (bottom) mount.
	infos, err := mountinfo.GetMounts(func(i *mountinfo.Info) (skip, stop bool) {
		return i.Mountpoint != path, false
	})
	if err != nil {
		return nil, err
	}
	return entries(infos), nil
}

// MountsUnder lists the mounts at or below path.
func MountsUnder(path string) ([]MountEntry, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(path))
	if err != nil {
		return nil, err
	}
	return entries(infos), nil
}

func entries(infos []*mountinfo.Info) []MountEntry {
	out := make([]MountEntry, 0, len(infos))
	for _, i := range infos {
		out = append(out, MountEntry{ID: i.ID, Mountpoint: i.Mountpoint, FSType: i.FSType, Source: i.Source, Minor: i.Minor, Options: i.Options})
	}
	return out
}

// IsFUSEMounted reports whether a FUSE mount sits at path.
func IsFUSEMounted(path string) (bool, error) {
	ms, err := MountsAt(path)
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.IsFUSE() {
			return true, nil
		}
	}
	return false, nil
}

// Unmounter removes mounts in bounded time.
type Unmounter struct {
	// FusectlDir is where fusectl is mounted ("" when it is not available);
	// its <minor>/abort files end hung connections.
	FusectlDir string
}

// Opener opens an O_PATH handle on a mountpoint without following symlinks
// (safefs's OpenPathBeneath). Unmounting goes through that handle, so a
// path changed under the driver (a renamed or symlinked parent) can never
// make it unmount something elsewhere.
type Opener func() (*os.File, error)

// UnmountAll detaches every mount at path, top first, and aborts the FUSE
// connections behind them so that a dead or stopped server cannot keep a
// process (or the kernel) waiting. It returns how many mounts it removed,
// and how many of those were FUSE mounts (whose connections it aborted).
//
// path is the mountpoint as the mount table shows it; open gives a handle on
// it. Each unmount is of the mount the handle is on, and only when that
// mount is one the table shows at path.
//
// The abort file is opened before the detach: connection numbers are device
// minors, which the kernel reuses at once, and an abort file opened on a
// connection that is already gone is harmless, while one opened afterwards
// might belong to somebody else's new mount.
func (u *Unmounter) UnmountAll(path string, open Opener) (removed, fuse int, err error) {
	n, nfuse, changed := 0, 0, 0
	for range maxStacked { // mounts can be stacked; bounded so a racing mounter cannot loop us
		f, top, err := openTop(path, open)
		if err == nil && top == nil {
			return n, nfuse, nil
		}
		if err == nil {
			err = u.detach(f, top)
			f.Close()
		}
		switch {
		case err == nil:
			n++
			if top.IsFUSE() {
				nfuse++
			}
		case errors.Is(err, errChanged), errors.Is(err, unix.EINVAL):
			// Changed or gone in between: read the table again, a few times.
			if changed++; changed > 8 {
				return n, nfuse, fmt.Errorf("unmounting %s: %w", path, err)
			}
		default:
			return n, nfuse, fmt.Errorf("unmounting %s: %w", path, err)
		}
	}
	return n, nfuse, fmt.Errorf("%s still has mounts after %d unmounts", path, maxStacked)
}

var errChanged = errors.New("the path does not lead to a mount the mount table shows there (it changed while unmounting)")

// openTop returns a handle on the mountpoint path (from open) and the mount
// table's entry of the mount the handle is on, which is the topmost mount
// at path. With nothing mounted at path both are nil. A handle on a mount
// that the table does not show at path (the path was changed under the
// driver) is errChanged. Every decision about "the mount at the target"
// (its type, its connection, unmounting it) goes through here, so none
// rests on a path resolved twice or on the table's order.
func openTop(path string, open Opener) (*os.File, *MountEntry, error) {
	ms, err := MountsAt(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading mount table: %w", err)
	}
	if len(ms) == 0 {
		return nil, nil, nil
	}
	f, err := open()
	if err != nil {
		return nil, nil, fmt.Errorf("opening the mountpoint: %w", err)
	}
	id, err := MountID(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	for i := range ms {
		if ms[i].ID == id {
			return f, &ms[i], nil
		}
	}
	f.Close()
	return nil, nil, errChanged
}

// TopMount returns the topmost mount at path, or nil (see openTop).
func TopMount(path string, open Opener) (*MountEntry, error) {
	f, top, err := openTop(path, open)
	if f != nil {
		f.Close()
	}
	return top, err
}

// detach lazily unmounts the mount f is on (entry top), aborting its FUSE
// connection.
func (u *Unmounter) detach(f *os.File, top *MountEntry) error {
	var abort *os.File
	if top.IsFUSE() && u.FusectlDir != "" {
		abort, _ = os.OpenFile(fmt.Sprintf("%s/%d/abort", u.FusectlDir, top.Minor), os.O_WRONLY, 0)
	}
	// The magic link names exactly the handle's mount root.
	err := unix.Unmount("/proc/self/fd/"+strconv.Itoa(int(f.Fd())), unix.MNT_DETACH)
	if abort != nil {
		// Whatever still holds the detached superblock (a process blocked
		// on a stopped server, an open file) is released now.
		abort.Write([]byte("1"))
		abort.Close()
	}
	return err
}

// MountID returns the ID of the mount f is on, from /proc/self/fdinfo: it
// asks nothing of the filesystem, so a hung FUSE server cannot block it.
func MountID(f *os.File) (int, error) {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		return 0, fmt.Errorf("reading the mount of a handle: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "mnt_id:"); ok {
			id, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return 0, fmt.Errorf("fdinfo mnt_id %q: %w", v, err)
			}
			return id, nil
		}
	}
	return 0, errors.New("no mnt_id in /proc/self/fdinfo (kernel older than 3.15?)")
}

// UnmountTopIf detaches the topmost mount at path if it is the mount with
// ID id (the one just made), and says whether it did.
func (u *Unmounter) UnmountTopIf(path string, id int, open Opener) (bool, error) {
	f, top, err := openTop(path, open)
	if err != nil || top == nil {
		return false, err
	}
	defer f.Close()
	if top.ID != id {
		return false, nil
	}
	return true, u.detach(f, top)
}

// EnsureFusectl returns the directory where the fusectl filesystem is
// mounted, mounting it on /sys/fs/fuse/connections (as systemd does on most
// hosts) when it is not.
func EnsureFusectl() (string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("fusectl"))
	if err != nil {
		return "", err
	}
	if len(infos) > 0 {
		return infos[0].Mountpoint, nil
	}
	const dir = "/sys/fs/fuse/connections"
	if err := unix.Mount("fusectl", dir, "fusectl", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", fmt.Errorf("mounting fusectl on %s: %w", dir, err)
	}
	return dir, nil
}

// Health is what Check found out about a FUSE mount.
type Health int

const (
	// Serving: the FUSE server answered.
	Serving Health = iota
	// Dead: the connection is gone (the server died or was aborted);
	// every access fails with ENOTCONN.
	Dead
	// Unresponsive: no answer within the timeout (a stopped or busy server).
	Unresponsive
)

func (h Health) String() string {
	return [...]string{"serving", "dead", "unresponsive"}[h]
}

// Check asks the FUSE server behind the mount open's handle is on for a
// statfs, and gives up waiting after timeout. A dead connection answers at
// once with ENOTCONN without involving any server. The statfs of an
// unresponsive server stays blocked in its goroutine until the server
// answers or the connection is aborted (which an unpublish does).
func Check(open Opener, timeout time.Duration) (Health, error) {
	select {
	case err := <-StatfsAsync(open):
		return Classify(err)
	case <-time.After(timeout):
		return Unresponsive, nil
	}
}

// StatfsAsync runs fstatfs on a handle from open in a goroutine and
// delivers its error, so a caller that must not block can wait for it, or
// keep the channel and not start another while a stopped server holds the
// first. Opening the O_PATH handle asks nothing of the FUSE server.
func StatfsAsync(open Opener) <-chan error {
	done := make(chan error, 1)
	go func() {
		f, err := open()
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		var st unix.Statfs_t
		done <- unix.Fstatfs(int(f.Fd()), &st)
	}()
	return done
}

// Classify turns the result of a statfs of a FUSE mount into its health.
func Classify(err error) (Health, error) {
	switch {
	case err == nil:
		return Serving, nil
	case errors.Is(err, unix.ENOTCONN), errors.Is(err, unix.ECONNABORTED):
		return Dead, nil
	default:
		return Serving, err
	}
}

// Abort ends the connection of the topmost FUSE mount at path and leaves the
// (now dead) mount in place: its server's reads fail and it exits, and a
// FUSE process that connects later gets a mount stacked on top, which the
// app containers' binds of this one do see. It falls back to UnmountAll when
// fusectl is not available. It reports whether there was a FUSE mount.
func (u *Unmounter) Abort(path string, open Opener) (bool, error) {
	f, top, err := openTop(path, open)
	if err != nil || top == nil {
		return false, err
	}
	defer f.Close()
	if !top.IsFUSE() {
		return false, nil
	}
	if u.FusectlDir == "" {
		_, _, err := u.UnmountAll(path, open)
		return true, err
	}
	a, err := os.OpenFile(fmt.Sprintf("%s/%d/abort", u.FusectlDir, top.Minor), os.O_WRONLY, 0)
	if err != nil {
		return true, fmt.Errorf("aborting the FUSE connection: %w", err)
	}
	defer a.Close()
	if _, err := a.Write([]byte("1")); err != nil {
		return true, fmt.Errorf("aborting the FUSE connection: %w", err)
	}
	return true, nil
}

// PlaceholderSource names the placeholder mounts in the mount table.
const PlaceholderSource = "meta-fuse-csi-plugin-placeholder"

// MountPlaceholder covers a dead FUSE mount with an empty read-only tmpfs.
// Anything that stats the volume (a container runtime creating the restarted
// FUSE container, which mounts the volume too) then succeeds instead of
// failing with ENOTCONN, and the next FUSE mount is stacked on it, which the
// containers' binds of the volume see.
func MountPlaceholder(target *os.File) error {
	err := unix.Mount(PlaceholderSource, "/proc/self/fd/"+strconv.Itoa(int(target.Fd())), "tmpfs",
		unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=4k,mode=755")
	if err != nil {
		return fmt.Errorf("mounting the placeholder: %w", err)
	}
	return nil
}

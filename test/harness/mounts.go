package harness

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// readMounts parses /proc/self/mountinfo. It never stat()s a mountpoint: a FUSE mount whose
// server is stopped would hang the caller, and a dead one returns ENOTCONN.
func readMounts() ([]*mountinfo.Info, error) {
	ms, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, fmt.Errorf("reading /proc/self/mountinfo: %w", err)
	}
	return ms, nil
}

// under reports whether mountpoint p is dir itself (when withSelf) or lies below dir.
func under(p, dir string, withSelf bool) bool {
	return (withSelf && p == dir) || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// mountsUnder returns the mount table entries below dir (and at dir, when withSelf), in
// mountinfo order.
func mountsUnder(dir string, withSelf bool) ([]*mountinfo.Info, error) {
	ms, err := readMounts()
	if err != nil {
		return nil, err
	}
	var out []*mountinfo.Info
	for _, m := range ms {
		if under(m.Mountpoint, dir, withSelf) {
			out = append(out, m)
		}
	}
	return out, nil
}

// MountsUnder returns the mountpoints below dir (dir itself excluded), read from
// /proc/self/mountinfo without touching the mounts. A path appears once per mount stacked on
// it.
func MountsUnder(dir string) ([]string, error) {
	ms, err := mountsUnder(dir, false)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Mountpoint)
	}
	return out, nil
}

// IsFuseType reports whether a mountinfo filesystem type is FUSE ("fuse", "fuse.<subtype>",
// "fuseblk").
func IsFuseType(fstype string) bool {
	return fstype == "fuse" || fstype == "fuseblk" || strings.HasPrefix(fstype, "fuse.") || strings.HasPrefix(fstype, "fuseblk.")
}

// fuseConnID is the name of a FUSE connection's directory in fusectl: the kernel's dev_t of
// the superblock, (major << 20) | minor, printed in decimal (for ordinary FUSE mounts the
// major is 0, so it is the minor).
func fuseConnID(m *mountinfo.Info) string {
	return strconv.FormatUint(uint64(m.Major)<<20|uint64(m.Minor), 10)
}

// fusectlDir returns a directory where the fusectl filesystem is mounted, mounting it on a
// private temporary directory when it is mounted nowhere (it is not, on this project's CI
// machines). The returned release function unmounts and removes such a temporary mount.
func fusectlDir() (string, func(), error) {
	ms, err := readMounts()
	if err != nil {
		return "", nil, err
	}
	for _, m := range ms {
		if m.FSType == "fusectl" && useMountedFusectl {
			return m.Mountpoint, func() {}, nil
		}
	}
	dir, err := makeDir("fusectl", 0o700)
	if err != nil {
		return "", nil, err
	}
	if err := unix.Mount("fusectl", dir, "fusectl", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		os.Remove(dir)
		return "", nil, fmt.Errorf("mounting fusectl on %s: %w", dir, err)
	}
	return dir, func() {
		unix.Unmount(dir, unix.MNT_DETACH)
		os.Remove(dir)
	}, nil
}

// useMountedFusectl is a test hook: false makes fusectlDir always use a temporary mount.
var useMountedFusectl = true

// abortFuse writes "1" to the abort file of every given FUSE connection, so that a stopped
// or hung server cannot block anything that touches its mount (path walks of the unmount
// included): requests fail with ECONNABORTED/ENOTCONN from then on. A connection that is
// already gone is not an error.
func abortFuse(fuse []*mountinfo.Info) error {
	if len(fuse) == 0 {
		return nil
	}
	ctl, release, err := fusectlDir()
	if err != nil {
		return fmt.Errorf("cannot abort FUSE connections: %w", err)
	}
	defer release()
	var errs []error
	done := map[string]bool{}
	for _, m := range fuse {
		id := fuseConnID(m)
		if done[id] {
			continue
		}
		done[id] = true
		f, err := os.OpenFile(ctl+"/"+id+"/abort", os.O_WRONLY, 0)
		if errors.Is(err, os.ErrNotExist) {
			continue // connection already gone
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("opening the abort file of FUSE connection %s (%s): %w", id, m.Mountpoint, err))
			continue
		}
		if _, err := f.WriteString("1"); err != nil && !errors.Is(err, unix.ENOTCONN) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("aborting FUSE connection %s (%s): %w", id, m.Mountpoint, err))
		}
		f.Close()
	}
	return errors.Join(errs...)
}

// DetachAll aborts the FUSE connections of and then lazily unmounts (MNT_DETACH) every mount
// below dir, deepest first, and also dir's own mounts when withSelf. It works from
// /proc/self/mountinfo only, so dead (ENOTCONN) and hung (server stopped) FUSE mounts are
// handled without blocking. It returns an error listing whatever is still mounted afterwards.
// Integration tests can use it to clean up after a driver that left something behind.
func DetachAll(dir string, withSelf bool) error {
	var errs []error
	for round := 0; round < 16; round++ {
		ms, err := mountsUnder(dir, withSelf)
		if err != nil {
			return err
		}
		if len(ms) == 0 {
			return errors.Join(errs...)
		}
		var fuse []*mountinfo.Info
		for _, m := range ms {
			if IsFuseType(m.FSType) {
				fuse = append(fuse, m)
			}
		}
		if err := abortFuse(fuse); err != nil && round == 0 {
			errs = append(errs, err)
		}
		// Deepest first; for mounts stacked on one path, one MNT_DETACH per entry removes
		// them top-down. Order within a depth does not matter.
		sort.SliceStable(ms, func(i, j int) bool {
			return strings.Count(ms[i].Mountpoint, "/") > strings.Count(ms[j].Mountpoint, "/")
		})
		progress := false
		for _, m := range ms {
			err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH)
			switch {
			case err == nil:
				progress = true
			case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
				// Already gone: propagation of an earlier unmount removed it, or it was
				// the lower one of a stack already detached together with its parent.
			default:
				if round == 0 {
					errs = append(errs, fmt.Errorf("umount2(%s, MNT_DETACH): %w", m.Mountpoint, err))
				}
			}
		}
		if !progress {
			break
		}
	}
	ms, err := mountsUnder(dir, withSelf)
	if err != nil {
		return err
	}
	if len(ms) > 0 {
		var left []string
		for _, m := range ms {
			left = append(left, fmt.Sprintf("%s (%s)", m.Mountpoint, m.FSType))
		}
		errs = append(errs, fmt.Errorf("still mounted under %s: %s", dir, strings.Join(left, ", ")))
		return errors.Join(errs...)
	}
	return nil
}

// removeDirSafely detaches whatever is mounted at or below dir and removes dir. It refuses to
// remove anything while a mount is left below dir: os.RemoveAll would otherwise descend into
// it and delete files of the mounted filesystem (a loopback FUSE mount's backing directory,
// for example).
func removeDirSafely(dir string) error {
	if err := DetachAll(dir, true); err != nil {
		return fmt.Errorf("not removing %s: %w", dir, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

// Command privcheck proves that the process running it is unprivileged in the way a
// PSS-restricted pod is: it cannot open /dev/fuse, mount a FUSE filesystem or mount a tmpfs.
//
// The integration harness runs it as the pod-side user (uid 65534, no capabilities,
// no_new_privs) so that a test which claims "the FUSE server ran unprivileged" is checked
// against the kernel rather than assumed.
//
// It prints one JSON line (uid, euid, gid, CapEff/CapPrm/NoNewPrivs from /proc/self/status and
// the result of each attempt) and exits 0 only when all three attempts failed with EACCES or
// EPERM, 1 otherwise (including when an attempt unexpectedly succeeded; whatever it managed to
// mount is unmounted again before exiting).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// attempt is the outcome of one privileged operation.
type attempt struct {
	// Err is the error text, or "" when the operation succeeded.
	Err string `json:"err"`
	// Errno is the symbolic errno ("EACCES", "EPERM", ...), or "" on success or a non-errno error.
	Errno string `json:"errno,omitempty"`
	// Denied is true when the operation failed with EACCES or EPERM, the only outcomes an
	// unprivileged process may get.
	Denied bool `json:"denied"`
}

type report struct {
	UID          int     `json:"uid"`
	EUID         int     `json:"euid"`
	GID          int     `json:"gid"`
	EGID         int     `json:"egid"`
	CapEff       string  `json:"capEff"`
	CapPrm       string  `json:"capPrm"`
	CapBnd       string  `json:"capBnd"`
	NoNewPrivs   string  `json:"noNewPrivs"`
	OpenDevFuse  attempt `json:"openDevFuse"`
	MountFuse    attempt `json:"mountFuse"`
	MountTmpfs   attempt `json:"mountTmpfs"`
	Unprivileged bool    `json:"unprivileged"`
	// Problems lists anything that went wrong besides the three attempts (e.g. cleanup of an
	// unexpected successful mount); non-empty Problems also makes the exit code 1.
	Problems []string `json:"problems,omitempty"`
}

func main() {
	r := report{
		UID:  os.Getuid(),
		EUID: os.Geteuid(),
		GID:  os.Getgid(),
		EGID: os.Getegid(),
	}
	st := procStatus()
	r.CapEff, r.CapPrm, r.CapBnd, r.NoNewPrivs = st["CapEff"], st["CapPrm"], st["CapBnd"], st["NoNewPrivs"]

	dir, err := os.MkdirTemp("", "privcheck-")
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("creating a temporary mountpoint: %v", err))
		emit(&r)
		os.Exit(1)
	}
	defer os.Remove(dir)

	// 1. open /dev/fuse. Keep the fd if it opens, so that the mount attempt below is a
	// genuine one rather than one that fails for a bad fd.
	fuseFD := -1
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	r.OpenDevFuse = result(err)
	if err == nil {
		fuseFD = fd
		defer unix.Close(fd)
	}

	// 2. mount("fuse"). The kernel checks CAP_SYS_ADMIN before it looks at the options, so
	// with no usable /dev/fuse fd stdin's fd number is as good as any.
	optFD := fuseFD
	if optFD < 0 {
		optFD = 0
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=%d", optFD, r.UID, r.GID)
	err = unix.Mount("fuse", dir, "fuse", unix.MS_NOSUID|unix.MS_NODEV, data)
	r.MountFuse = result(err)
	if err == nil {
		undo(&r, dir)
	}

	// 3. mount("tmpfs").
	err = unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m")
	r.MountTmpfs = result(err)
	if err == nil {
		undo(&r, dir)
	}

	r.Unprivileged = r.OpenDevFuse.Denied && r.MountFuse.Denied && r.MountTmpfs.Denied && len(r.Problems) == 0
	emit(&r)
	if !r.Unprivileged {
		os.Exit(1)
	}
}

func result(err error) attempt {
	if err == nil {
		return attempt{}
	}
	a := attempt{Err: err.Error()}
	var errno unix.Errno
	if errors.As(err, &errno) {
		a.Errno = unix.ErrnoName(errno)
		a.Denied = errno == unix.EACCES || errno == unix.EPERM
	}
	return a
}

// undo removes a mount that should not have been possible; the FUSE one has no server, so
// it is detached rather than unmounted normally.
func undo(r *report, dir string) {
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("unmounting the unexpected mount at %s: %v", dir, err))
	}
}

// procStatus returns the "Key:\tvalue" lines of /proc/self/status.
func procStatus() map[string]string {
	m := map[string]string{}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func emit(r *report) {
	b, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintf(os.Stderr, "privcheck: encoding the report: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(string(b))
}

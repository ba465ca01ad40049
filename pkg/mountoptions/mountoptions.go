// Package mountoptions parses FUSE mount options that come from pods
// (volumeAttributes.mountOptions, a volume capability's mount_flags) and
// turns the allowed ones into mount(2) flags and FUSE mount data.
//
// Only an allow-list passes. Options that would give the pod power over the
// node (dev, suid) or let it pick the kernel-side identity of the mount (fd,
// rootmode, user_id, group_id) are refused with a reason, as is anything the
// driver does not know.
package mountoptions

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	// MaxOptionsLen bounds the raw option string a pod may send.
	MaxOptionsLen = 4096
	// MaxOptions bounds the number of options.
	MaxOptions = 64
	// maxValueLen bounds fsname and subtype values.
	maxValueLen = 256
	// maxMaxRead is the largest max_read worth asking for (the kernel caps it anyway).
	maxMaxRead = 1 << 30
)

// Options is the validated result.
type Options struct {
	// Flags are mount(2) flags (MS_RDONLY, MS_NOEXEC, ...). The driver adds
	// MS_NOSUID|MS_NODEV itself.
	Flags uintptr
	// MaxRead is the max_read mount data option; 0 leaves the kernel default.
	MaxRead uint64
	// FsName becomes the mount source, Subtype the type "fuse.<subtype>".
	FsName  string
	Subtype string

	// cleared are the flags an option explicitly turned off ("rw",
	// "atime", ...), so that Merge can let later options win.
	cleared uintptr
}

// ReadOnly reports whether the options ask for a read-only mount.
func (o Options) ReadOnly() bool { return o.Flags&unix.MS_RDONLY != 0 }

type flagOpt struct {
	set, clear uintptr
}

// flagOptions are the mount flags a pod may choose. nosuid and nodev are
// accepted as no-ops because they are always applied.
var flagOptions = map[string]flagOpt{
	"ro":          {set: unix.MS_RDONLY},
	"rw":          {clear: unix.MS_RDONLY},
	"noexec":      {set: unix.MS_NOEXEC},
	"exec":        {clear: unix.MS_NOEXEC},
	"noatime":     {set: unix.MS_NOATIME, clear: unix.MS_RELATIME | unix.MS_STRICTATIME},
	"atime":       {clear: unix.MS_NOATIME},
	"nodiratime":  {set: unix.MS_NODIRATIME},
	"diratime":    {clear: unix.MS_NODIRATIME},
	"relatime":    {set: unix.MS_RELATIME, clear: unix.MS_NOATIME | unix.MS_STRICTATIME},
	"norelatime":  {clear: unix.MS_RELATIME},
	"strictatime": {set: unix.MS_STRICTATIME, clear: unix.MS_NOATIME | unix.MS_RELATIME},
	"lazytime":    {set: unix.MS_LAZYTIME},
	"nolazytime":  {clear: unix.MS_LAZYTIME},
	"sync":        {set: unix.MS_SYNCHRONOUS},
	"async":       {clear: unix.MS_SYNCHRONOUS},
	"dirsync":     {set: unix.MS_DIRSYNC},
	"nosuid":      {},
	"nodev":       {},
}

// alwaysOn are FUSE options the driver always sets; naming them is harmless.
var alwaysOn = map[string]bool{"allow_other": true, "default_permissions": true}

// refused explains why options that exist elsewhere are not allowed here.
var refused = map[string]string{
	"dev":          "device files would be usable in the mount; the driver always mounts nodev",
	"suid":         "set-user-ID programs would be honoured; the driver always mounts nosuid",
	"fd":           "the driver opens /dev/fuse itself and chooses the fd",
	"rootmode":     "the driver sets rootmode from the target directory",
	"user_id":      "the driver sets user_id from the connecting FUSE process",
	"group_id":     "the driver sets group_id from the connecting FUSE process",
	"blksize":      "it applies only to fuseblk mounts, which this driver does not make",
	"allow_root":   "allow_other is always set, so every user of the pod can use the mount",
	"auto_unmount": "unmounting is done by the driver at NodeUnpublishVolume",
	"remount":      "the driver makes new mounts only",
	"bind":         "the driver makes FUSE mounts only",
}

// Split splits a comma-separated option list. A backslash escapes the next
// character, so "fsname=a\,b" is one option (rclone sends such names).
func Split(s string) ([]string, error) {
	if len(s) > MaxOptionsLen {
		return nil, fmt.Errorf("mount options are %d bytes long; at most %d are allowed", len(s), MaxOptionsLen)
	}
	if s == "" {
		return nil, nil
	}
	var out []string
	var cur strings.Builder
	escaped := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			cur.WriteByte(c)
			escaped = false
		case c == '\\':
			escaped = true
		case c == ',':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	if escaped {
		return nil, fmt.Errorf("mount options %q end with a lone backslash", s)
	}
	out = append(out, cur.String())
	if len(out) > MaxOptions {
		return nil, fmt.Errorf("%d mount options given; at most %d are allowed", len(out), MaxOptions)
	}
	return out, nil
}

// Parse splits and validates a comma-separated option string.
func Parse(s string) (Options, error) {
	opts, err := Split(s)
	if err != nil {
		return Options{}, err
	}
	return Validate(opts)
}

// Validate checks already split options (for example a capability's
// mount_flags) against the allow-list. Later options win over earlier ones,
// as with mount(8).
func Validate(opts []string) (Options, error) {
	if len(opts) > MaxOptions {
		return Options{}, fmt.Errorf("%d mount options given; at most %d are allowed", len(opts), MaxOptions)
	}
	var o Options
	for _, opt := range opts {
		if err := o.apply(opt); err != nil {
			return Options{}, err
		}
	}
	return o, nil
}

// Merge returns o with the options of later applied on top: later wins, as
// if its options had been written after o's, except that a read-only o
// stays read-only (a FUSE program must not make a read-only volume writable).
func (o Options) Merge(later Options) Options {
	o.Flags = o.Flags&^(later.cleared&^unix.MS_RDONLY) | later.Flags
	o.cleared = o.cleared&^later.Flags | later.cleared
	if later.MaxRead != 0 {
		o.MaxRead = later.MaxRead
	}
	if later.FsName != "" {
		o.FsName = later.FsName
	}
	if later.Subtype != "" {
		o.Subtype = later.Subtype
	}
	return o
}

func (o *Options) apply(opt string) error {
	if opt == "" {
		return fmt.Errorf("empty mount option (two commas in a row, or a trailing comma)")
	}
	if len(opt) > maxValueLen+16 {
		return fmt.Errorf("mount option %.40q... is too long", opt)
	}
	name, value, hasValue := strings.Cut(opt, "=")
	if why, ok := refused[name]; ok {
		return fmt.Errorf("mount option %q is not allowed: %s", opt, why)
	}
	if f, ok := flagOptions[name]; ok {
		if hasValue {
			return fmt.Errorf("mount option %q takes no value", name)
		}
		o.Flags = o.Flags&^f.clear | f.set
		o.cleared = o.cleared&^f.set | f.clear
		return nil
	}
	if alwaysOn[name] {
		if hasValue {
			return fmt.Errorf("mount option %q takes no value", name)
		}
		return nil
	}
	switch name {
	case "max_read":
		n, err := strconv.ParseUint(value, 10, 64)
		if !hasValue || err != nil || n == 0 || n > maxMaxRead {
			return fmt.Errorf("mount option %q needs a number of bytes from 1 to %d", opt, maxMaxRead)
		}
		o.MaxRead = n
		return nil
	case "fsname":
		if err := checkValue(name, value, hasValue, false); err != nil {
			return err
		}
		o.FsName = value
		return nil
	case "subtype":
		if err := checkValue(name, value, hasValue, true); err != nil {
			return err
		}
		o.Subtype = value
		return nil
	}
	return fmt.Errorf("mount option %q is not supported; allowed are %s", opt, AllowedList())
}

// checkValue keeps fsname and subtype printable: they end up in the mount
// table that every process on the node reads.
func checkValue(name, value string, hasValue, strict bool) error {
	if !hasValue || value == "" || len(value) > maxValueLen {
		return fmt.Errorf("mount option %s= needs a value of 1 to %d characters", name, maxValueLen)
	}
	for _, c := range []byte(value) {
		// Spaces are fine in a mount source ("user@host:/a dir"): the
		// mount table escapes them. Control and non-ASCII bytes are not.
		if c < ' ' || c >= 0x7f || (c == ' ' && strict) {
			return fmt.Errorf("mount option %s=%q may contain only printable ASCII", name, value)
		}
		if strict && !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("mount option %s=%q may contain only letters, digits, '.', '_' and '-'", name, value)
		}
	}
	return nil
}

// AllowedList names the accepted options for error messages and docs.
func AllowedList() string {
	return "ro, rw, noexec, exec, noatime, atime, nodiratime, diratime, relatime, norelatime, strictatime, " +
		"lazytime, nolazytime, sync, async, dirsync, nosuid, nodev, allow_other, default_permissions, " +
		"max_read=N, fsname=NAME, subtype=NAME"
}

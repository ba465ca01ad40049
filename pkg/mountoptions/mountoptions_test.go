package mountoptions

import (
	"reflect"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// allowedFlags is every mount(2) flag a pod may obtain through this package.
const allowedFlags = unix.MS_RDONLY | unix.MS_NOEXEC | unix.MS_NOATIME | unix.MS_NODIRATIME |
	unix.MS_RELATIME | unix.MS_STRICTATIME | unix.MS_LAZYTIME | unix.MS_SYNCHRONOUS | unix.MS_DIRSYNC

func TestSplit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "one", in: "ro", want: []string{"ro"}},
		{name: "several", in: "ro,noexec,max_read=4096", want: []string{"ro", "noexec", "max_read=4096"}},
		{name: "escaped comma", in: `fsname=a\,b`, want: []string{"fsname=a,b"}},
		{name: "escaped comma then option", in: `fsname=a\,b,ro`, want: []string{"fsname=a,b", "ro"}},
		{name: "rclone fsname", in: `fsname=:s3{c7xjq}:test\,bucket,subtype=rclone`, want: []string{"fsname=:s3{c7xjq}:test,bucket", "subtype=rclone"}},
		{name: "escaped backslash", in: `a\\b`, want: []string{`a\b`}},
		{name: "escaped backslash before comma", in: `a\\,b`, want: []string{`a\`, "b"}},
		{name: "escaped ordinary char", in: `\r\o`, want: []string{"ro"}},
		{name: "trailing backslash", in: `ro\`, wantErr: "backslash"},
		{name: "only backslash", in: `\`, wantErr: "backslash"},
		{name: "odd backslashes", in: `a\\\`, wantErr: "backslash"},
		{name: "empty entries kept", in: "ro,,rw", want: []string{"ro", "", "rw"}},
		{name: "leading comma", in: ",ro", want: []string{"", "ro"}},
		{name: "trailing comma", in: "ro,", want: []string{"ro", ""}},
		{name: "only comma", in: ",", want: []string{"", ""}},
		{name: "exactly MaxOptionsLen", in: strings.Repeat("a", MaxOptionsLen), want: []string{strings.Repeat("a", MaxOptionsLen)}},
		{name: "MaxOptionsLen+1", in: strings.Repeat("a", MaxOptionsLen+1), wantErr: strconv.Itoa(MaxOptionsLen)},
		{name: "exactly MaxOptions", in: strings.Repeat("ro,", MaxOptions-1) + "ro", want: repeat("ro", MaxOptions)},
		{name: "MaxOptions+1", in: strings.Repeat("ro,", MaxOptions) + "ro", wantErr: strconv.Itoa(MaxOptions)},
		{name: "MaxOptions+1 empty", in: strings.Repeat(",", MaxOptions), wantErr: strconv.Itoa(MaxOptions)},
		{name: "escaped commas do not count", in: strings.Repeat(`\,`, MaxOptions+10), want: []string{strings.Repeat(",", MaxOptions+10)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Split(tc.in)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("Split(%.60q) = %q, want an error", tc.in, got)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Split(%.60q) error %q does not mention %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Split(%.60q) = %v", tc.in, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Split(%.60q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want uintptr
	}{
		{"", 0},
		{"ro", unix.MS_RDONLY},
		{"rw", 0},
		{"noexec", unix.MS_NOEXEC},
		{"exec", 0},
		{"noatime", unix.MS_NOATIME},
		{"atime", 0},
		{"nodiratime", unix.MS_NODIRATIME},
		{"diratime", 0},
		{"relatime", unix.MS_RELATIME},
		{"norelatime", 0},
		{"strictatime", unix.MS_STRICTATIME},
		{"lazytime", unix.MS_LAZYTIME},
		{"nolazytime", 0},
		{"sync", unix.MS_SYNCHRONOUS},
		{"async", 0},
		{"dirsync", unix.MS_DIRSYNC},
		{"nosuid", 0}, // always applied by the driver; accepted as a no-op
		{"nodev", 0},
		{"allow_other", 0},
		{"default_permissions", 0},
		// later wins
		{"ro,rw", 0},
		{"rw,ro", unix.MS_RDONLY},
		{"noexec,exec", 0},
		{"exec,noexec", unix.MS_NOEXEC},
		{"noatime,atime", 0},
		{"noatime,relatime", unix.MS_RELATIME},
		{"relatime,noatime", unix.MS_NOATIME},
		{"noatime,strictatime", unix.MS_STRICTATIME},
		{"strictatime,relatime", unix.MS_RELATIME},
		{"relatime,norelatime", 0},
		{"nodiratime,diratime", 0},
		{"lazytime,nolazytime", 0},
		{"sync,async", 0},
		{"async,sync", unix.MS_SYNCHRONOUS},
		{"ro,noexec,nosuid,nodev,noatime,dirsync", unix.MS_RDONLY | unix.MS_NOEXEC | unix.MS_NOATIME | unix.MS_DIRSYNC},
		{"ro,ro,ro", unix.MS_RDONLY},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tc.in, err)
			}
			if got.Flags != tc.want {
				t.Errorf("Parse(%q).Flags = %#x, want %#x", tc.in, got.Flags, tc.want)
			}
			if got.ReadOnly() != (tc.want&unix.MS_RDONLY != 0) {
				t.Errorf("Parse(%q).ReadOnly() = %v", tc.in, got.ReadOnly())
			}
			if got.MaxRead != 0 || got.FsName != "" || got.Subtype != "" {
				t.Errorf("Parse(%q) = %+v: flag options set other fields", tc.in, got)
			}
		})
	}
}

func TestParseValues(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", maxValueLen)
	tests := []struct {
		in      string
		want    Options
		wantErr string // a substring the error must contain
	}{
		{in: "max_read=1", want: Options{MaxRead: 1}},
		{in: "max_read=131072", want: Options{MaxRead: 131072}},
		{in: "max_read=1073741824", want: Options{MaxRead: 1 << 30}},
		{in: "max_read=4096,max_read=8192", want: Options{MaxRead: 8192}},
		{in: "max_read=0", wantErr: "max_read"},
		{in: "max_read=1073741825", wantErr: "max_read"},
		{in: "max_read=18446744073709551616", wantErr: "max_read"},
		{in: "max_read=abc", wantErr: "max_read"},
		{in: "max_read=-1", wantErr: "max_read"},
		{in: "max_read=+1", wantErr: "max_read"},
		{in: "max_read=0x10", wantErr: "max_read"},
		{in: "max_read= 1", wantErr: "max_read"},
		{in: "max_read=", wantErr: "max_read"},
		{in: "max_read", wantErr: "max_read"},
		{in: "max_read==1", wantErr: "max_read"},

		{in: "fsname=s3fs", want: Options{FsName: "s3fs"}},
		{in: `fsname=:s3{c7xjq}:test\,bucket`, want: Options{FsName: ":s3{c7xjq}:test,bucket"}},
		{in: "fsname=user@host:/path", want: Options{FsName: "user@host:/path"}},
		{in: `fsname=a\\b`, want: Options{FsName: `a\b`}},
		{in: "fsname=" + long, want: Options{FsName: long}},
		{in: "fsname=a,fsname=b", want: Options{FsName: "b"}},
		{in: "fsname=" + long + "x", wantErr: "fsname"},
		{in: "fsname=", wantErr: "fsname"},
		{in: "fsname", wantErr: "fsname"},
		{in: `fsname=a\ b`, want: Options{FsName: "a b"}}, // the mount table escapes spaces
		{in: "fsname=a\tb", wantErr: "fsname"},
		{in: "fsname=a\nb", wantErr: "fsname"},
		{in: "fsname=a\x00b", wantErr: "fsname"},
		{in: "fsname=a\x7fb", wantErr: "fsname"},
		{in: "fsname=a\x1bb", wantErr: "fsname"},
		{in: "fsname=bücket", wantErr: "fsname"},
		{in: "fsname=\xff", wantErr: "fsname"},

		{in: "subtype=rclone", want: Options{Subtype: "rclone"}},
		{in: "subtype=s3fs.v2_x-Y", want: Options{Subtype: "s3fs.v2_x-Y"}},
		{in: "subtype=" + long, want: Options{Subtype: long}},
		{in: "subtype=" + long + "x", wantErr: "subtype"},
		{in: "subtype=", wantErr: "subtype"},
		{in: "subtype", wantErr: "subtype"},
		{in: "subtype=a/b", wantErr: "subtype"},
		{in: "subtype=a:b", wantErr: "subtype"},
		{in: `subtype=a\,b`, wantErr: "subtype"},
		{in: "subtype=a=b", wantErr: "subtype"},
		{in: "subtype=a b", wantErr: "subtype"},
		{in: "subtype=é", wantErr: "subtype"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse(%.60q) = %+v, want an error", tc.in, got)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Parse(%.60q) error %q does not mention %q", tc.in, err, tc.wantErr)
				}
				if got != (Options{}) {
					t.Errorf("Parse(%.60q) returned %+v with its error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%.60q) = %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("Parse(%.60q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		mention string // the error must name the option
	}{
		{"dev", "dev"},
		{"suid", "suid"},
		{"ro,dev", "dev"},
		{"dev,nodev", "dev"},
		{"fd=3", "fd=3"},
		{"fd", "fd"},
		{"rootmode=40000", "rootmode=40000"},
		{"user_id=0", "user_id=0"},
		{"group_id=0", "group_id=0"},
		{"blksize=4096", "blksize=4096"},
		{"allow_root", "allow_root"},
		{"auto_unmount", "auto_unmount"},
		{"remount", "remount"},
		{"bind", "bind"},
		{"dev=1", "dev=1"},
		{"context=system_u:object_r:tmp_t:s0", "context="},
		{"x-foo", "x-foo"},
		{"uid=0", "uid=0"},
		{"gid=0", "gid=0"},
		{"RO", "RO"},
		{" ro", " ro"},
		{"ro ", "ro "},
		{"rbind", "rbind"},
		{"move", "move"},
		{"shared", "shared"},
		{"rshared", "rshared"},
		{"nonempty", "nonempty"},
		{"=ro", "=ro"},
		{"ro=", "ro"},
		{"ro=1", "ro"},
		{"rw=0", "rw"},
		{"allow_other=1", "allow_other"},
		{"default_permissions=0", "default_permissions"},
		{"nosuid=0", "nosuid"},
		{"=", "="},
		{"max_read==1", "max_read"},
		{"ro,,rw", "empty"},
		{",ro", "empty"},
		{"ro,", "empty"},
		{",", "empty"},
		{"ro\x00", "ro"},
		{"r\u200bo", "r"},                      // zero-width space
		{"\uff52\uff4f", "\uff52\uff4f"},       // fullwidth "ro"
		{strings.Repeat("x", 300), "too long"}, // an overlong single option
		{"fsname=" + strings.Repeat("a", 300), "too long"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tc.in, got)
			}
			if !strings.Contains(err.Error(), tc.mention) && !strings.Contains(err.Error(), strconv.Quote(tc.mention)[1:len(strconv.Quote(tc.mention))-1]) {
				t.Errorf("Parse(%q) error %q does not mention %q", tc.in, err, tc.mention)
			}
			if got != (Options{}) {
				t.Errorf("Parse(%q) returned %+v with its error", tc.in, got)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	if o, err := Validate(nil); err != nil || o != (Options{}) {
		t.Errorf("Validate(nil) = %+v, %v", o, err)
	}
	// mount_flags come already split: a comma in one is part of a value, not a separator.
	o, err := Validate([]string{"ro", "fsname=a,b"})
	if err != nil || o.FsName != "a,b" || !o.ReadOnly() {
		t.Errorf("Validate(ro, fsname=a,b) = %+v, %v", o, err)
	}
	if _, err := Validate([]string{"ro,dev"}); err == nil {
		t.Errorf("Validate([\"ro,dev\"]) accepted an unsplit list")
	}
	if _, err := Validate(repeat("ro", MaxOptions)); err != nil {
		t.Errorf("Validate(%d options) = %v", MaxOptions, err)
	}
	if _, err := Validate(repeat("ro", MaxOptions+1)); err == nil || !strings.Contains(err.Error(), strconv.Itoa(MaxOptions)) {
		t.Errorf("Validate(%d options) = %v, want an error naming the limit", MaxOptions+1, err)
	}
	if _, err := Validate([]string{""}); err == nil {
		t.Errorf("Validate([\"\"]) accepted an empty option")
	}
}

func TestMerge(t *testing.T) {
	t.Parallel()
	mustParse := func(s string) Options {
		o, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q) = %v", s, err)
		}
		return o
	}
	tests := []struct {
		base, later string
		want        Options
	}{
		{"", "", Options{}},
		{"ro", "", Options{Flags: unix.MS_RDONLY}},
		{"", "ro", Options{Flags: unix.MS_RDONLY}},
		// ro of the volume stays even when the FUSE program asks for rw: a
		// read-only volume must not become writable.
		{"ro", "rw", Options{Flags: unix.MS_RDONLY}},
		{"noexec", "ro", Options{Flags: unix.MS_NOEXEC | unix.MS_RDONLY}},
		{"max_read=4096", "", Options{MaxRead: 4096}},
		{"max_read=4096", "max_read=8192", Options{MaxRead: 8192}},
		{"", "max_read=8192", Options{MaxRead: 8192}},
		{"fsname=a,subtype=x", "", Options{FsName: "a", Subtype: "x"}},
		{"fsname=a,subtype=x", "fsname=b", Options{FsName: "b", Subtype: "x"}},
		{"fsname=a,subtype=x", "subtype=y", Options{FsName: "a", Subtype: "y"}},
	}
	for _, tc := range tests {
		got := mustParse(tc.base).Merge(mustParse(tc.later))
		got.cleared = 0 // bookkeeping, not a result
		if got != tc.want {
			t.Errorf("Parse(%q).Merge(Parse(%q)) = %+v, want %+v", tc.base, tc.later, got, tc.want)
		}
	}
	// Merge must not modify its receiver's source value.
	base := mustParse("ro")
	_ = base.Merge(mustParse("noexec"))
	if base.Flags != unix.MS_RDONLY {
		t.Errorf("Merge modified the receiver: %+v", base)
	}
}

// TestMergeAtimeLaterWins: Merge says the later options are "applied on
// top", and Validate lets later options win; Merge only ORs the flag bits, so
// a later atime choice cannot replace an earlier one and contradictory bits
// reach mount(2), where the kernel (not the later option) decides.
func TestMergeAtimeLaterWins(t *testing.T) {
	t.Parallel()
	tests := []struct {
		base, later string
		want        uintptr
	}{
		{"noatime", "strictatime", unix.MS_STRICTATIME},
		{"noatime", "relatime", unix.MS_RELATIME},
		{"strictatime", "noatime", unix.MS_NOATIME},
		{"relatime", "noatime", unix.MS_NOATIME},
	}
	for _, tc := range tests {
		b, _ := Parse(tc.base)
		l, _ := Parse(tc.later)
		want, _ := Parse(tc.base + "," + tc.later)
		if want.Flags != tc.want {
			t.Fatalf("Parse(%q).Flags = %#x, want %#x", tc.base+","+tc.later, want.Flags, tc.want)
		}
		if got := b.Merge(l); got.Flags != tc.want {
			t.Errorf("Parse(%q).Merge(Parse(%q)).Flags = %#x, want %#x (as Parse(%q))", tc.base, tc.later, got.Flags, tc.want, tc.base+","+tc.later)
		}
	}
}

func TestAllowedListMatchesTables(t *testing.T) {
	t.Parallel()
	list := AllowedList()
	for name := range flagOptions {
		if !strings.Contains(list, name) {
			t.Errorf("AllowedList() lacks flag option %q", name)
		}
	}
	for name := range alwaysOn {
		if !strings.Contains(list, name) {
			t.Errorf("AllowedList() lacks %q", name)
		}
	}
	for _, name := range strings.Split(list, ", ") {
		name, _, _ = strings.Cut(name, "=")
		if _, ok := refused[name]; ok {
			t.Errorf("AllowedList() names refused option %q", name)
		}
		if _, err := Parse(name); err != nil && !strings.Contains(err.Error(), "needs") {
			t.Errorf("AllowedList() names %q, but Parse refuses it: %v", name, err)
		}
	}
	for name, f := range flagOptions {
		if (f.set|f.clear)&^allowedFlags != 0 {
			t.Errorf("flag option %q touches bits %#x outside the allowed set", name, (f.set|f.clear)&^allowedFlags)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "ro", "rw,ro", "ro,rw", `fsname=a\,b`, `fsname=:s3{c7xjq}:test\,bucket,subtype=rclone`,
		"max_read=131072", "dev", "suid", "fd=3", "user_id=0", "=ro", "ro=1", "max_read==1", `a\`,
		"ro,,rw", "allow_other,default_permissions,nosuid,nodev", "noatime,relatime,strictatime",
		"subtype=a.b_c-D", `fsname=\\\,`, "remount,bind",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := Parse(s)
		if err != nil {
			if o != (Options{}) {
				t.Fatalf("Parse(%q) returned %+v with error %v", s, o, err)
			}
			return
		}
		if o.Flags&^allowedFlags != 0 {
			t.Fatalf("Parse(%q).Flags = %#x has bits outside the allowed set: %#x", s, o.Flags, o.Flags&^allowedFlags)
		}
		const never = unix.MS_BIND | unix.MS_REMOUNT | unix.MS_MOVE | unix.MS_SHARED | unix.MS_PRIVATE |
			unix.MS_SLAVE | unix.MS_UNBINDABLE | unix.MS_REC | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_MANDLOCK
		if o.Flags&never != 0 {
			t.Fatalf("Parse(%q).Flags = %#x includes a forbidden flag", s, o.Flags)
		}
		if o.MaxRead > 1<<30 {
			t.Fatalf("Parse(%q).MaxRead = %d", s, o.MaxRead)
		}
		// FsName is only ever used as the mount source (fusemount.SourceAndType),
		// never in the mount data, so an escaped comma is fine there; it must
		// still be printable ASCII (spaces allowed), bounded.
		if err := printable(strings.ReplaceAll(o.FsName, " ", "_")); err != "" {
			t.Fatalf("Parse(%q).FsName = %q: %s", s, o.FsName, err)
		}
		// Subtype goes into the filesystem type "fuse.<subtype>": no
		// separators of any kind.
		if err := printable(o.Subtype); err != "" {
			t.Fatalf("Parse(%q).Subtype = %q: %s", s, o.Subtype, err)
		}
		if strings.ContainsAny(o.Subtype, ",=/\\:") {
			t.Fatalf("Parse(%q).Subtype = %q contains a separator", s, o.Subtype)
		}
		// The options that set the kernel-side identity of the mount never pass.
		parts, _ := Split(s)
		for _, p := range parts {
			name, _, _ := strings.Cut(p, "=")
			switch name {
			case "dev", "suid", "fd", "rootmode", "user_id", "group_id", "blksize", "allow_root", "auto_unmount", "remount", "bind":
				t.Fatalf("Parse(%q) accepted %q", s, p)
			}
		}
		// Parsing is deterministic and Validate agrees with Parse.
		if o2, err := Validate(parts); err != nil || o2 != o {
			t.Fatalf("Validate(Split(%q)) = %+v, %v; Parse gave %+v", s, o2, err, o)
		}
	})
}

func printable(s string) string {
	if len(s) > maxValueLen {
		return "too long"
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f {
			return "not printable ASCII without spaces"
		}
	}
	return ""
}

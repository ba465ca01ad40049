package fusermountproxy

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/mountoptions"
)

// parseCase is one command line. For a success, want is the expected
// Invocation and driver the expected DriverOptions(); for a failure, err is
// a substring of the error.
type parseCase struct {
	name   string
	args   []string
	want   *Invocation
	driver string
	err    string
}

// parseCases holds every argv form the FUSE libraries were seen to pass (see
// /work/shared/fuse-experiments.md section 3, "Exact argv and env observed";
// argv[0] is not part of args), the other forms fusermount3's getopt_long
// accepts, and the command lines that must be refused.
var parseCases = []parseCase{
	// The callers, verbatim ("<experiment dir>" replaced by /exp).
	{
		name: "sshfs/libfuse3 mount",
		args: []string{"-o", "rw,nosuid,nodev,fsname=sshtest:/exp/sshdata,subtype=sshfs", "--", "/exp/mnt2"},
		want: &Invocation{
			Mountpoint: "/exp/mnt2",
			Options:    []string{"rw", "nosuid", "nodev", "fsname=sshtest:/exp/sshdata", "subtype=sshfs"},
		},
		driver: "rw,nosuid,nodev,fsname=sshtest:/exp/sshdata,subtype=sshfs",
	},
	{
		name: "sshfs/libfuse3 mount with -o auto_unmount",
		args: []string{"-o", "rw,nosuid,nodev,fsname=sshtest:/exp/sshdata,auto_unmount,subtype=sshfs", "--", "/exp/mnt2"},
		want: &Invocation{
			Mountpoint:  "/exp/mnt2",
			Options:     []string{"rw", "nosuid", "nodev", "fsname=sshtest:/exp/sshdata", "subtype=sshfs"},
			AutoUnmount: true,
		},
		driver: "rw,nosuid,nodev,fsname=sshtest:/exp/sshdata,subtype=sshfs",
	},
	{
		name: "sshfs/libfuse3 unmount",
		args: []string{"-u", "-q", "-z", "--", "/exp/mnt2"},
		want: &Invocation{Mountpoint: "/exp/mnt2", Unmount: true, Quiet: true, Lazy: true},
	},
	{
		name: "s3fs/libfuse2 mount",
		args: []string{"-o", "rw,nosuid,nodev,subtype=s3fs", "--", "/exp/mnt3"},
		want: &Invocation{
			Mountpoint: "/exp/mnt3",
			Options:    []string{"rw", "nosuid", "nodev", "subtype=s3fs"},
		},
		driver: "rw,nosuid,nodev,subtype=s3fs",
	},
	{
		name: "s3fs/libfuse2 unmount",
		args: []string{"-u", "-q", "-z", "--", "/exp/mnt3"},
		want: &Invocation{Mountpoint: "/exp/mnt3", Unmount: true, Quiet: true, Lazy: true},
	},
	{
		name: "rclone mount",
		args: []string{"-o", "subtype=rclone,fsname=:s3{c7xjq}:testbucket", "--", "/exp/mnt3"},
		want: &Invocation{
			Mountpoint: "/exp/mnt3",
			Options:    []string{"subtype=rclone", "fsname=:s3{c7xjq}:testbucket"},
		},
		driver: "subtype=rclone,fsname=:s3{c7xjq}:testbucket",
	},
	{
		name: "go-fuse mount: mountpoint first, no --",
		args: []string{"/exp/mnt3", "-o", "fsname=gofusefs,subtype=gofusefs,max_read=131072"},
		want: &Invocation{
			Mountpoint: "/exp/mnt3",
			Options:    []string{"fsname=gofusefs", "subtype=gofusefs", "max_read=131072"},
		},
		driver: "fsname=gofusefs,subtype=gofusefs,max_read=131072",
	},
	{
		name: "go-fuse unmount",
		args: []string{"-u", "/exp/mnt3"},
		want: &Invocation{Mountpoint: "/exp/mnt3", Unmount: true},
	},

	// Other forms getopt_long("hVo:uzqU") accepts.
	{
		name:   "-oOPTS",
		args:   []string{"-orw,subtype=x", "/m"},
		want:   &Invocation{Mountpoint: "/m", Options: []string{"rw", "subtype=x"}},
		driver: "rw,subtype=x",
	},
	{
		name: "grouped -uqz",
		args: []string{"-uqz", "/m"},
		want: &Invocation{Mountpoint: "/m", Unmount: true, Quiet: true, Lazy: true},
	},
	{
		name: "grouped -zqu after the mountpoint",
		args: []string{"/m", "-zqu"},
		want: &Invocation{Mountpoint: "/m", Unmount: true, Quiet: true, Lazy: true},
	},
	{
		name:   "grouped flags ending in o, value attached",
		args:   []string{"-qorw", "/m"},
		want:   &Invocation{Mountpoint: "/m", Quiet: true, Options: []string{"rw"}},
		driver: "rw",
	},
	{
		name:   "grouped flags ending in o, value in the next argument",
		args:   []string{"-qo", "ro,noatime", "/m"},
		want:   &Invocation{Mountpoint: "/m", Quiet: true, Options: []string{"ro", "noatime"}},
		driver: "ro,noatime",
	},
	{
		name:   "-o value starting with a dash is still the value",
		args:   []string{"-o", "-x", "/m"},
		want:   &Invocation{Mountpoint: "/m", Options: []string{"-x"}},
		driver: "-x",
	},
	{
		name: "long --unmount --lazy --quiet",
		args: []string{"--unmount", "--lazy", "--quiet", "/m"},
		want: &Invocation{Mountpoint: "/m", Unmount: true, Quiet: true, Lazy: true},
	},
	{
		name:   "--options=X",
		args:   []string{"--options=ro,subtype=x", "/m"},
		want:   &Invocation{Mountpoint: "/m", Options: []string{"ro", "subtype=x"}},
		driver: "ro,subtype=x",
	},
	{
		name:   "--options X",
		args:   []string{"--options", "ro,subtype=x", "/m"},
		want:   &Invocation{Mountpoint: "/m", Options: []string{"ro", "subtype=x"}},
		driver: "ro,subtype=x",
	},
	{
		name: "--options= empty",
		args: []string{"--options=", "/m"},
		want: &Invocation{Mountpoint: "/m"},
	},
	{
		name: "-o empty",
		args: []string{"-o", "", "/m"},
		want: &Invocation{Mountpoint: "/m"},
	},
	{
		name:   "-U",
		args:   []string{"-U", "-o", "rw", "--", "/m"},
		want:   &Invocation{Mountpoint: "/m", AutoUnmount: true, Options: []string{"rw"}},
		driver: "rw",
	},
	{
		name: "--auto-unmount",
		args: []string{"--auto-unmount", "/m"},
		want: &Invocation{Mountpoint: "/m", AutoUnmount: true},
	},
	{
		name: "auto_unmount alone in -o",
		args: []string{"-o", "auto_unmount", "/m"},
		want: &Invocation{Mountpoint: "/m", AutoUnmount: true},
	},
	{name: "-V", args: []string{"-V"}, want: &Invocation{Version: true}},
	{name: "--version", args: []string{"--version"}, want: &Invocation{Version: true}},
	{name: "-h", args: []string{"-h"}, want: &Invocation{Help: true}},
	{name: "--help", args: []string{"--help"}, want: &Invocation{Help: true}},
	{
		name: "-h ignores the positional arguments",
		args: []string{"-h", "/a", "/b"},
		want: &Invocation{Help: true},
	},
	{
		name:   "repeated -o are joined in order",
		args:   []string{"-o", "ro", "-ofsname=a,subtype=b", "/m", "--options=noatime"},
		want:   &Invocation{Mountpoint: "/m", Options: []string{"ro", "fsname=a", "subtype=b", "noatime"}},
		driver: "ro,fsname=a,subtype=b,noatime",
	},
	{
		name:   `escaped comma fsname=a\,b is one option`,
		args:   []string{"-o", `fsname=a\,b,ro`, "/m"},
		want:   &Invocation{Mountpoint: "/m", Options: []string{"fsname=a,b", "ro"}},
		driver: `fsname=a\,b,ro`,
	},
	{
		name:   "escaped backslash",
		args:   []string{"-o", `fsname=a\\b,subtype=c\\\,d`, "/m"},
		want:   &Invocation{Mountpoint: "/m", Options: []string{`fsname=a\b`, `subtype=c\,d`}},
		driver: `fsname=a\\b,subtype=c\\\,d`,
	},
	{
		name:   "backslash before an ordinary character is dropped",
		args:   []string{"-o", `fsname=\a`, "/m"},
		want:   &Invocation{Mountpoint: "/m", Options: []string{"fsname=a"}},
		driver: "fsname=a",
	},
	{
		name: "-- then a name starting with -",
		args: []string{"-o", "rw", "--", "-weird"},
		want: &Invocation{Mountpoint: "-weird", Options: []string{"rw"}}, driver: "rw",
	},
	{
		name: "-- then --",
		args: []string{"--", "--"},
		want: &Invocation{Mountpoint: "--"},
	},
	{
		name: "-- then -u is a mountpoint, not a flag",
		args: []string{"--", "-u"},
		want: &Invocation{Mountpoint: "-u"},
	},
	{
		name: "lone - is a mountpoint",
		args: []string{"-"},
		want: &Invocation{Mountpoint: "-"},
	},
	{
		name: "helper-only options are parsed but not sent",
		args: []string{"-o", "nonempty,user=bob,ro,user,username=x,allow_other,auto_unmount", "/m"},
		want: &Invocation{
			Mountpoint:  "/m",
			Options:     []string{"nonempty", "user=bob", "ro", "user", "username=x", "allow_other"},
			AutoUnmount: true,
		},
		driver: "ro,username=x,allow_other",
	},
	{
		name:   "nothing left for the driver",
		args:   []string{"-o", "nonempty,user=root", "/m"},
		want:   &Invocation{Mountpoint: "/m", Options: []string{"nonempty", "user=root"}},
		driver: "",
	},
	{
		name:   "64 options is the limit",
		args:   []string{"-o", strings.Repeat("ro,", 63) + "rw", "/m"},
		want:   &Invocation{Mountpoint: "/m", Options: append(slices.Repeat([]string{"ro"}, 63), "rw")},
		driver: strings.Repeat("ro,", 63) + "rw",
	},
	{
		name:   "64 arguments is the limit",
		args:   append(slices.Repeat([]string{"-q"}, 63), "/m"),
		want:   &Invocation{Mountpoint: "/m", Quiet: true},
		driver: "",
	},

	// Refused.
	{name: "no arguments", args: nil, err: "missing mountpoint"},
	{name: "options only", args: []string{"-o", "rw"}, err: "missing mountpoint"},
	{name: "unmount without mountpoint", args: []string{"-u", "-q", "-z", "--"}, err: "missing mountpoint"},
	{name: "two mountpoints", args: []string{"/a", "/b"}, err: "extra arguments"},
	{name: "two mountpoints after --", args: []string{"--", "/a", "/b"}, err: "extra arguments"},
	{name: "unknown -x", args: []string{"-x", "/m"}, err: "unknown option -x"},
	{name: "unknown letter in a group", args: []string{"-uxq", "/m"}, err: "unknown option -x"},
	{name: "--comm-fd is not supported", args: []string{"--comm-fd", "3", "/m"}, err: "unknown option"},
	{name: "--bogus", args: []string{"--bogus", "/m"}, err: `unknown option "--bogus"`},
	{name: "--=x", args: []string{"--=x", "/m"}, err: "unknown option"},
	{name: "-o at the end", args: []string{"/m", "-o"}, err: "-o needs an argument"},
	{name: "grouped o at the end", args: []string{"/m", "-qo"}, err: "-o needs an argument"},
	{name: "--options at the end", args: []string{"/m", "--options"}, err: "--options needs an argument"},
	{name: "--unmount=1", args: []string{"--unmount=1", "/m"}, err: "--unmount takes no argument"},
	{name: "--version=1", args: []string{"--version=1"}, err: "--version takes no argument"},
	{name: "NUL in mountpoint", args: []string{"--", "/m\x00/etc"}, err: "invalid mountpoint"},
	{name: "empty mountpoint", args: []string{"--", ""}, err: "invalid mountpoint"},
	{name: "too many args", args: append(slices.Repeat([]string{"-q"}, 64), "/m"), err: "too many arguments"},
	{name: "-o ending in a lone backslash", args: []string{"-o", `fsname=a\`, "/m"}, err: "lone backslash"},
	{name: "-o too long", args: []string{"-o", "fsname=" + strings.Repeat("a", mountoptions.MaxOptionsLen), "/m"}, err: "bytes long"},
	{name: "65 options in one -o", args: []string{"-o", strings.Repeat("ro,", 64) + "rw", "/m"}, err: "at most 64"},
	{
		name: "65 options over two -o",
		args: []string{"-o", strings.Repeat("ro,", 39) + "rw", "-o", strings.Repeat("ro,", 24) + "rw", "/m"},
		err:  "too many mount options",
	},
}

func TestParseArgs(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := ParseArgs(tc.args)
			if tc.err != "" {
				if err == nil {
					t.Fatalf("ParseArgs(%q) = %+v, want an error containing %q", tc.args, inv, tc.err)
				}
				if !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseArgs(%q) error = %q, want it to contain %q", tc.args, err, tc.err)
				}
				if inv != nil {
					t.Errorf("ParseArgs(%q) returned %+v with its error", tc.args, inv)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseArgs(%q): %v", tc.args, err)
			}
			if !reflect.DeepEqual(inv, tc.want) {
				t.Errorf("ParseArgs(%q)\n got %+v\nwant %+v", tc.args, inv, tc.want)
			}
			if got := inv.DriverOptions(); got != tc.driver {
				t.Errorf("DriverOptions() = %q, want %q", got, tc.driver)
			}
		})
	}
}

// keptOptions is what DriverOptions must send: Options without the ones
// that mean something to fusermount3 only.
func keptOptions(opts []string) []string {
	var out []string
	for _, o := range opts {
		name, _, _ := strings.Cut(o, "=")
		if name == "auto_unmount" || name == "nonempty" || name == "user" {
			continue
		}
		out = append(out, o)
	}
	return out
}

// checkRoundTrip checks that the driver, splitting DriverOptions() the way
// it does, gets exactly the kept options back.
func checkRoundTrip(t *testing.T, inv *Invocation) {
	t.Helper()
	want := keptOptions(inv.Options)
	s := inv.DriverOptions()
	got, err := mountoptions.Split(s)
	if err != nil {
		t.Fatalf("mountoptions.Split(DriverOptions() = %.200q): %v (Options %q)", s, err, inv.Options)
	}
	if len(got) != len(want) || (len(want) > 0 && !slices.Equal(got, want)) {
		t.Fatalf("mountoptions.Split(DriverOptions() = %.200q) = %q, want the kept options %q", s, got, want)
	}
}

func TestDriverOptionsRoundTrip(t *testing.T) {
	for _, tc := range parseCases {
		if tc.err != "" {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			inv, err := ParseArgs(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			checkRoundTrip(t, inv)
		})
	}
}

// DriverOptions must work on an Invocation built by hand too, whatever the
// options hold.
func TestDriverOptionsEscaping(t *testing.T) {
	for _, opts := range [][]string{
		nil,
		{"fsname=a,b"},
		{`fsname=a\b`},
		{`fsname=\`},
		{`fsname=,\,\\,`},
		{"fsname=:s3{c7xjq}:testbucket", "subtype=rclone"},
		{"", "ro"},
		{"ro", ""},
		{"", ""},
		{"user=a,b", "nonempty", "auto_unmount", "ro"},
	} {
		inv := &Invocation{Options: opts}
		checkRoundTrip(t, inv)
	}
}

// An empty option (e.g. `-o ,nonempty`) is refused, rather than lost when
// the helper-only options around it are dropped.
func TestEmptyOptionRefused(t *testing.T) {
	for _, args := range [][]string{
		{"-o", ",auto_unmount", "/m"},
		{"-o", ",nonempty", "/m"},
		{"-o", "", "-o", ",user=x", "/m"},
		{"-o", "ro,,rw", "/m"},
	} {
		if inv, err := ParseArgs(args); err == nil || !strings.Contains(err.Error(), "empty mount option") {
			t.Errorf("ParseArgs(%q) = %+v, %v; want an empty-option error", args, inv, err)
		}
	}
}

// Two long -o together may not exceed what the driver accepts.
func TestDriverOptionsJoinedTooLong(t *testing.T) {
	long := []string{"-o", "fsname=" + strings.Repeat("a", 3000), "-o", "subtype=" + strings.Repeat("b", 3000), "/m"}
	inv, err := ParseArgs(long)
	if err != nil {
		return // refusing it is fine too
	}
	checkRoundTrip(t, inv)
}

// fuzzArgv turns the fuzzer's string into an argv: NUL separates arguments
// (so the fuzzer cannot put a NUL into one, as execve cannot).
func fuzzArgv(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}

func FuzzParseArgs(f *testing.F) {
	for _, tc := range parseCases {
		if len(tc.args) <= 16 && !slices.ContainsFunc(tc.args, func(a string) bool { return strings.Contains(a, "\x00") || len(a) > 256 }) {
			f.Add(strings.Join(tc.args, "\x00"))
		}
	}
	f.Add("-o\x00,\x00/m")
	f.Add("-o\x00a\\\x00/m")
	f.Add("-ouser=a\\,b,nonempty\x00--\x00-")
	f.Add("-o,user\x000") // once lost an empty option
	f.Fuzz(func(t *testing.T, s string) {
		args := fuzzArgv(s)
		inv, err := ParseArgs(args)
		if err != nil {
			if inv != nil {
				t.Fatalf("ParseArgs(%q) returned %+v with error %v", args, inv, err)
			}
			return
		}
		if inv == nil {
			t.Fatalf("ParseArgs(%q) returned nil without an error", args)
		}
		if inv.Help || inv.Version {
			if inv.Mountpoint != "" {
				t.Fatalf("ParseArgs(%q): help/version with mountpoint %q", args, inv.Mountpoint)
			}
		} else {
			if inv.Mountpoint == "" || strings.Contains(inv.Mountpoint, "\x00") {
				t.Fatalf("ParseArgs(%q): mountpoint %q", args, inv.Mountpoint)
			}
			if !slices.Contains(args, inv.Mountpoint) {
				t.Fatalf("ParseArgs(%q): mountpoint %q is not one of the arguments", args, inv.Mountpoint)
			}
		}
		if slices.Contains(inv.Options, "auto_unmount") {
			t.Fatalf("ParseArgs(%q): auto_unmount left in Options %q", args, inv.Options)
		}
		if len(inv.Options) > mountoptions.MaxOptions {
			t.Fatalf("ParseArgs(%q): %d options", args, len(inv.Options))
		}
		if n := len(inv.DriverOptions()); n > mountoptions.MaxOptionsLen {
			t.Fatalf("ParseArgs(%q): accepted %d bytes of options", args, n)
		}
		checkRoundTrip(t, inv)
	})
}

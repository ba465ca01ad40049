package kubeletpath

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const kd = "/var/lib/kubelet"

const (
	uuidUID   = "8a5b2c3d-1e2f-4a5b-8c9d-0e1f2a3b4c5d"
	staticUID = "d41d8cd98f00b204e9800998ecf8427e" // kubelet's hash for static pods
)

func target(uid, vol string) string {
	return kd + "/pods/" + uid + "/volumes/kubernetes.io~csi/" + vol + "/mount"
}

func TestParseTargetValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		kubeletDir string
		target     string
		want       Target
	}{
		{"uuid uid", kd, target(uuidUID, "vol"), Target{uuidUID, "vol"}},
		{"static pod hash uid", kd, target(staticUID, "data"), Target{staticUID, "data"}},
		{"pv name with dots", kd, target(uuidUID, "pvc-1.example.com"), Target{uuidUID, "pvc-1.example.com"}},
		{"pv name max length", kd, target(uuidUID, strings.Repeat("a", 253)), Target{uuidUID, strings.Repeat("a", 253)}},
		{"uid max length", kd, target(strings.Repeat("a", 64), "v"), Target{strings.Repeat("a", 64), "v"}},
		{"other kubelet dir", "/data/kubelet", "/data/kubelet/pods/" + uuidUID + "/volumes/kubernetes.io~csi/v/mount", Target{uuidUID, "v"}},
		{"kubelet dir is root", "/", "/pods/" + uuidUID + "/volumes/kubernetes.io~csi/v/mount", Target{uuidUID, "v"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseTarget(tc.kubeletDir, tc.target)
			if err != nil {
				t.Fatalf("ParseTarget(%q, %q) = %v", tc.kubeletDir, tc.target, err)
			}
			if got != tc.want {
				t.Fatalf("ParseTarget(%q) = %+v, want %+v", tc.target, got, tc.want)
			}
			if j := filepath.Join(tc.kubeletDir, got.RelPath()); j != tc.target {
				t.Errorf("Join(kubeletDir, RelPath()) = %q, want %q", j, tc.target)
			}
			if j := filepath.Join(tc.kubeletDir, got.VolumeDirRel()); j != filepath.Dir(tc.target) {
				t.Errorf("Join(kubeletDir, VolumeDirRel()) = %q, want %q", j, filepath.Dir(tc.target))
			}
		})
	}
}

func TestParseTargetRefused(t *testing.T) {
	t.Parallel()
	good := target(uuidUID, "vol")
	tests := []struct {
		name   string
		target string
	}{
		{"empty", ""},
		{"relative", strings.TrimPrefix(good, "/")},
		{"dot relative", "./" + strings.TrimPrefix(good, "/")},
		{"double slash", strings.Replace(good, "/pods/", "//pods/", 1)},
		{"double slash inside", strings.Replace(good, "/volumes/", "/volumes//", 1)},
		{"trailing slash", good + "/"},
		{"dot component", strings.Replace(good, "/volumes/", "/volumes/./", 1)},
		{"dotdot component", strings.Replace(good, "/volumes/", "/x/../volumes/", 1)},
		{"dotdot to escape", kd + "/pods/../../../../etc/kubernetes.io~csi/v/mount"},
		{"outside kubelet dir", "/tmp/pods/" + uuidUID + "/volumes/kubernetes.io~csi/vol/mount"},
		{"kubelet dir itself", kd},
		{"pods dir", kd + "/pods"},
		{"prefix-sharing sibling", "/var/lib/kubelet2/pods/" + uuidUID + "/volumes/kubernetes.io~csi/vol/mount"},
		{"prefix-sharing sibling no slash", "/var/lib/kubeletpods/" + uuidUID + "/volumes/kubernetes.io~csi/vol/mount"},
		{"parent of kubelet dir", "/var/lib/pods/" + uuidUID + "/volumes/kubernetes.io~csi/vol/mount"},
		{"wrong plugin dir empty-dir", strings.Replace(good, "kubernetes.io~csi", "kubernetes.io~empty-dir", 1)},
		{"wrong plugin dir secret", strings.Replace(good, "kubernetes.io~csi", "kubernetes.io~secret", 1)},
		{"plugin dir uppercase", strings.Replace(good, "kubernetes.io~csi", "kubernetes.io~CSI", 1)},
		{"wrong volumes dir", strings.Replace(good, "/volumes/", "/volume-subpaths/", 1)},
		{"not plugins", kd + "/plugins/" + uuidUID + "/volumes/kubernetes.io~csi/vol/mount"},
		{"last component not mount", strings.TrimSuffix(good, "/mount") + "/mnt"},
		{"missing mount", strings.TrimSuffix(good, "/mount")},
		{"extra component", good + "/x"},
		{"extra component in middle", kd + "/pods/" + uuidUID + "/volumes/kubernetes.io~csi/a/b/mount"},
		{"missing uid", kd + "/pods/volumes/kubernetes.io~csi/vol/mount"},
		{"dotdot as uid", target("..", "vol")},
		{"dot as uid", target(".", "vol")},
		{"dotdot as volume", target(uuidUID, "..")},
		{"dot as volume", target(uuidUID, ".")},
		{"NUL in volume", target(uuidUID, "vo\x00l")},
		{"NUL at end", good + "\x00"},
		{"uppercase uid", target(strings.ToUpper(uuidUID), "vol")},
		{"uppercase volume", target(uuidUID, "Vol")},
		{"underscore volume", target(uuidUID, "my_vol")},
		{"space in volume", target(uuidUID, "my vol")},
		{"division slash in volume", target(uuidUID, "a\u2215b")},
		{"division slash in uid", target("a\u2215b", "vol")},
		{"fullwidth letters volume", target(uuidUID, "\uff56\uff4f\uff4c")},
		{"fullwidth letters in plugin dir", strings.Replace(good, "csi", "\uff43\uff53\uff49", 1)},
		{"cyrillic a in volume", target(uuidUID, "d\u0430ta")},
		{"fullwidth slash", strings.Replace(good, "/mount", "\uff0fmount", 1)},
		{"invalid utf8", target(uuidUID, "v\xffl")},
		{"uid too long", target(strings.Repeat("a", 65), "vol")},
		{"volume too long", target(uuidUID, strings.Repeat("a", 254))},
		{"very long", target(uuidUID, strings.Repeat("a/", 5000)+"a")},
		{"very long component", target(uuidUID, strings.Repeat("a", 1<<20))},
		{"empty volume", target(uuidUID, "")},
		{"empty uid", target("", "vol")},
		{"backslash", target(uuidUID, `a\b`)},
		{"tilde home", "~/pods/" + uuidUID + "/volumes/kubernetes.io~csi/vol/mount"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseTarget(kd, tc.target)
			if err == nil {
				t.Fatalf("ParseTarget(%q) = %+v, want an error", tc.target, got)
			}
			if got != (Target{}) {
				t.Errorf("ParseTarget(%q) returned %+v with its error, want a zero Target", tc.target, got)
			}
			if tc.target != "" && len(tc.target) < 1000 && !strings.Contains(err.Error(), strconv.Quote(tc.target)) {
				t.Errorf("error %q does not name the path %q", err, tc.target)
			}
		})
	}
}

func TestValidatePodUID(t *testing.T) {
	t.Parallel()
	for _, uid := range []string{uuidUID, staticUID, "a", strings.Repeat("0", 64)} {
		if err := ValidatePodUID(uid); err != nil {
			t.Errorf("ValidatePodUID(%q) = %v, want nil", uid, err)
		}
	}
	for _, uid := range []string{"", ".", "..", "a/b", "A", "a_b", "a.b", "a\x00", strings.Repeat("0", 65), "\uff41"} {
		if err := ValidatePodUID(uid); err == nil {
			t.Errorf("ValidatePodUID(%q) = nil, want an error", uid)
		}
	}
}

func TestValidateEmptyDirName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"fuse-fd-passing", true},
		{"a", true},
		{"0", true},
		{"a-b-1", true},
		{"a--b", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{".", false},
		{"..", false},
		{"/", false},
		{"a/b", false},
		{"../x", false},
		{"a\x00", false},
		{"\x00", false},
		{"-a", false}, // DNS-1123 label: must start with a letter or digit
		{"a-", false}, // ... and end with one
		{"-", false},
		{"A", false},
		{"Data", false},
		{"a.b", false}, // a label has no dots
		{"a_b", false},
		{"a b", false},
		{" a", false},
		{"a\n", false},
		{"\u2215", false},
		{"a\u2215b", false},
		{"\uff41", false}, // fullwidth a
		{"d\u0430ta", false},
		{"é", false},
		{"\xff", false},
	}
	for _, tc := range tests {
		err := ValidateEmptyDirName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateEmptyDirName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestValidateSocketName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"fuse-csi-ephemeral.sock", true},
		{"s", true},
		{"Socket_1.sock", true},
		{"...", true},
		{".sock", true},
		{"-sock", true}, // the documented rule is only the character set, not a leading letter
		{"sock-", true},
		{"_", true},
		{strings.Repeat("a", 80), true},
		{strings.Repeat("a", 81), false},
		{strings.Repeat("a", 4096), false},
		{"", false},
		{".", false},
		{"..", false},
		{"/", false},
		{"a/b", false},
		{"../x", false},
		{"/sock", false},
		{"sock/", false},
		{"a\x00", false},
		{"\x00", false},
		{"a b", false},
		{" ", false},
		{"a\tb", false},
		{"a\nb", false},
		{"a:b", false},
		{"a\\b", false},
		{"a*", false},
		{"é.sock", false},
		{"\u2215", false},
		{"a\u2215b", false},
		{"\uff53ock", false},
		{"\xff", false},
	}
	for _, tc := range tests {
		err := ValidateSocketName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateSocketName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	// The documented purpose of the bound: "/proc/self/fd/<n>/<name>" fits
	// sun_path (108 bytes, NUL included) for any realistic fd number.
	if l := len("/proc/self/fd/2147483647/") + MaxSocketNameLen; l >= 108 {
		t.Errorf("a %d-byte socket name makes a %d-byte /proc path, too long for sun_path", MaxSocketNameLen, l)
	}
}

func TestRelHelpers(t *testing.T) {
	t.Parallel()
	if got, want := PodVolumesRel(uuidUID), "pods/"+uuidUID+"/volumes"; got != want {
		t.Errorf("PodVolumesRel = %q, want %q", got, want)
	}
	if got, want := EmptyDirRel(uuidUID, "fd"), "pods/"+uuidUID+"/volumes/kubernetes.io~empty-dir/fd"; got != want {
		t.Errorf("EmptyDirRel = %q, want %q", got, want)
	}
	tg := Target{PodUID: uuidUID, VolumeName: "v"}
	if got, want := tg.RelPath(), "pods/"+uuidUID+"/volumes/kubernetes.io~csi/v/mount"; got != want {
		t.Errorf("RelPath = %q, want %q", got, want)
	}
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		target(uuidUID, "vol"),
		target(staticUID, "pvc.example.com"),
		target("..", "vol"),
		target(uuidUID, ".."),
		target(uuidUID, "vol") + "/",
		"/var/lib/kubelet2/pods/u/volumes/kubernetes.io~csi/v/mount",
		kd + "/pods//volumes/kubernetes.io~csi/v/mount",
		kd + "/pods/u/volumes/kubernetes.io~csi/v/../v/mount",
		target(uuidUID, "a\u2215b"),
		"",
		"/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTarget(kd, s)
		if err != nil {
			if got != (Target{}) {
				t.Fatalf("ParseTarget(%q) returned %+v with error %v", s, got, err)
			}
			return
		}
		if j := filepath.Join(kd, got.RelPath()); j != s {
			t.Fatalf("ParseTarget(%q) accepted, but Join(kubeletDir, RelPath()) = %q", s, j)
		}
		if j := kd + "/" + got.RelPath(); j != s {
			t.Fatalf("ParseTarget(%q) accepted, but kubeletDir + \"/\" + RelPath() = %q", s, j)
		}
		if err := ValidatePodUID(got.PodUID); err != nil {
			t.Fatalf("ParseTarget(%q) accepted uid %q: %v", s, got.PodUID, err)
		}
		if err := validateVolumeName(got.VolumeName); err != nil {
			t.Fatalf("ParseTarget(%q) accepted volume %q: %v", s, got.VolumeName, err)
		}
		for _, c := range []string{got.PodUID, got.VolumeName} {
			if c == "." || c == ".." || strings.ContainsAny(c, "/\x00") {
				t.Fatalf("ParseTarget(%q) accepted component %q", s, c)
			}
		}
		if !strings.HasPrefix(s, kd+"/pods/") {
			t.Fatalf("ParseTarget(%q) accepted a path outside %s/pods/", s, kd)
		}
	})
}

package integration

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// snapshot records every entry under the dirs (lstat, nothing followed), so a
// test can prove that a refused request created, changed or removed nothing.
func snapshot(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st syscall.Stat_t
			if err := syscall.Lstat(p, &st); err != nil {
				return err
			}
			link, _ := os.Readlink(p)
			out[p] = fmt.Sprintf("mode=%o uid=%d gid=%d size=%d mtime=%d.%d link=%q", st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Sec, st.Mtim.Nsec, link)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func diff(a, b map[string]string) string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, fmt.Sprintf("%s: %s -> %q", k, v, b[k]))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			d = append(d, fmt.Sprintf("%s: new %s", k, v))
		}
	}
	return strings.Join(d, "\n")
}

// Every class of bad input is refused with InvalidArgument and a message that
// names what to fix, and nothing on the host is created, changed or followed.
func TestBadInputChangesNothing(t *testing.T) {
	e := setup(t)
	outside := harness.NewDir(t, 0o755)
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("do not touch"), 0o600); err != nil {
		t.Fatal(err)
	}

	type tc struct {
		name string
		// prepare may change the node (as a hostile pod would) and the request.
		prepare func(pod *harness.Pod, req *csi.NodePublishVolumeRequest)
		want    string // in the error message
	}
	setAttr := func(k, v string) func(*harness.Pod, *csi.NodePublishVolumeRequest) {
		return func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) { r.VolumeContext[k] = v }
	}
	long := strings.Repeat("a", 300)
	many := strings.TrimSuffix(strings.Repeat("noatime,", 65), ",")
	cases := []tc{
		{"emptyDir ..", setAttr("fdPassingEmptyDirName", ".."), "fdPassingEmptyDirName"},
		{"emptyDir ../x", setAttr("fdPassingEmptyDirName", "../x"), "fdPassingEmptyDirName"},
		{"emptyDir a/b", setAttr("fdPassingEmptyDirName", "a/b"), "fdPassingEmptyDirName"},
		{"emptyDir absolute", setAttr("fdPassingEmptyDirName", "/etc"), "fdPassingEmptyDirName"},
		{"emptyDir NUL", setAttr("fdPassingEmptyDirName", "fuse\x00x"), "fdPassingEmptyDirName"},
		{"emptyDir too long", setAttr("fdPassingEmptyDirName", strings.Repeat("a", 64)), "fdPassingEmptyDirName"},
		{"emptyDir unicode slash", setAttr("fdPassingEmptyDirName", "fuse\u2215x"), "fdPassingEmptyDirName"},
		{"emptyDir uppercase", setAttr("fdPassingEmptyDirName", "Fuse"), "fdPassingEmptyDirName"},
		{"emptyDir missing", setAttr("fdPassingEmptyDirName", ""), "fdPassingEmptyDirName is missing"},
		{"socket ..", setAttr("fdPassingSocketName", ".."), "fdPassingSocketName"},
		{"socket .", setAttr("fdPassingSocketName", "."), "fdPassingSocketName"},
		{"socket ../x", setAttr("fdPassingSocketName", "../x"), "fdPassingSocketName"},
		{"socket a/b", setAttr("fdPassingSocketName", "a/b"), "fdPassingSocketName"},
		{"socket absolute", setAttr("fdPassingSocketName", "/tmp/x.sock"), "fdPassingSocketName"},
		{"socket NUL", setAttr("fdPassingSocketName", "s\x00ock"), "fdPassingSocketName"},
		{"socket too long", setAttr("fdPassingSocketName", strings.Repeat("s", 81)), "fdPassingSocketName"},
		{"socket fullwidth", setAttr("fdPassingSocketName", "ｓｏｃｋ"), "fdPassingSocketName"},
		{"socket space", setAttr("fdPassingSocketName", "a sock"), "fdPassingSocketName"},
		{"socket missing", setAttr("fdPassingSocketName", ""), "fdPassingSocketName is missing"},
		{"option dev", setAttr("mountOptions", "dev"), `"dev" is not allowed`},
		{"option suid", setAttr("mountOptions", "noatime,suid"), `"suid" is not allowed`},
		{"option fd", setAttr("mountOptions", "fd=0"), `"fd=0" is not allowed`},
		{"option user_id", setAttr("mountOptions", "user_id=0"), "user_id"},
		{"option group_id", setAttr("mountOptions", "group_id=0"), "group_id"},
		{"option rootmode", setAttr("mountOptions", "rootmode=100000"), "rootmode"},
		{"option comma injection", setAttr("mountOptions", "max_read=1,user_id=0"), "user_id"},
		{"option escaped comma", setAttr("mountOptions", `subtype=x\,user_id=0`), "subtype"},
		{"option = trick", setAttr("mountOptions", "allow_other=1"), "takes no value"},
		{"option unknown", setAttr("mountOptions", "context=system_u:object_r:foo"), "not supported"},
		{"option empty entry", setAttr("mountOptions", "ro,,rw"), "empty mount option"},
		{"option oversized list", setAttr("mountOptions", many), "at most 64"},
		{"option oversized string", setAttr("mountOptions", "fsname="+strings.Repeat("x", 5000)), "at most 4096"},
		{"capability mount flag suid", func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.GetMount().MountFlags = []string{"suid"}
		}, "suid"},
		{"unknown attribute", setAttr("fdPassingSocketname", "typo.sock"), `"fdPassingSocketname" is not known`},
		{"oversized volume_context", func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) {
			for i := range 40 {
				r.VolumeContext[fmt.Sprintf("csi.storage.k8s.io/x%d", i)] = "y"
			}
		}, "at most 32"},
		{"huge volume_context value", setAttr("csi.storage.k8s.io/huge", strings.Repeat("v", 70<<10)), "bytes"},
		{"missing pod info", func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) {
			delete(r.VolumeContext, harness.CtxPodUID)
		}, "podInfoOnMount"},
		{"pod uid mismatch", setAttr(harness.CtxPodUID, "00000000-0000-0000-0000-000000000000"), "does not match"},
		{"block access", func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}, "block"},
		{"no capability", func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }, "volume_capability"},
		{"fsType ext4", func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().FsType = "ext4" }, "fsType"},
		{"no volume id", func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }, "volume_id"},
		{"target outside kubelet dir", func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) {
			r.TargetPath = filepath.Join(outside, "mount")
		}, "not under the kubelet directory"},
		{"target with ..", func(p *harness.Pod, r *csi.NodePublishVolumeRequest) {
			r.TargetPath = p.Dir + "/volumes/kubernetes.io~csi/../../../../../" + filepath.Base(outside) + "/mount"
		}, "clean path"},
		{"target relative", func(_ *harness.Pod, r *csi.NodePublishVolumeRequest) { r.TargetPath = "pods/x/mount" }, "absolute"},
		{"target in emptyDir plugin dir", func(p *harness.Pod, r *csi.NodePublishVolumeRequest) {
			r.TargetPath = p.Dir + "/volumes/kubernetes.io~empty-dir/" + emptyDirName + "/mount"
		}, "does not have the form"},
		{"target long volume name", func(p *harness.Pod, r *csi.NodePublishVolumeRequest) {
			r.TargetPath = p.Dir + "/volumes/kubernetes.io~csi/" + long + "/mount"
		}, "volume name"},
		{"emptyDir is a symlink", func(p *harness.Pod, _ *csi.NodePublishVolumeRequest) {
			ed := p.EmptyDirPath(emptyDirName)
			must(t, os.Remove(ed))
			must(t, os.Symlink(outside, ed))
		}, "symlink"},
		{"emptyDir is a file", func(p *harness.Pod, _ *csi.NodePublishVolumeRequest) {
			ed := p.EmptyDirPath(emptyDirName)
			must(t, os.Remove(ed))
			must(t, os.WriteFile(ed, nil, 0o644))
		}, "not a directory"},
		{"symlink at the socket name", func(p *harness.Pod, _ *csi.NodePublishVolumeRequest) {
			must(t, os.Symlink(victim, filepath.Join(p.EmptyDirPath(emptyDirName), socketName)))
		}, "symlink"},
		{"dangling symlink at the socket name", func(p *harness.Pod, _ *csi.NodePublishVolumeRequest) {
			must(t, os.Symlink(filepath.Join(outside, "new"), filepath.Join(p.EmptyDirPath(emptyDirName), socketName)))
		}, "symlink"},
		{"file at the socket name", func(p *harness.Pod, _ *csi.NodePublishVolumeRequest) {
			must(t, os.WriteFile(filepath.Join(p.EmptyDirPath(emptyDirName), socketName), []byte("mine"), 0o644))
		}, "file"},
		{"directory at the socket name", func(p *harness.Pod, _ *csi.NodePublishVolumeRequest) {
			must(t, os.Mkdir(filepath.Join(p.EmptyDirPath(emptyDirName), socketName), 0o755))
		}, "directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pod := e.k.NewPod(t, "hostile")
			pod.AddEmptyDir(emptyDirName)
			req := pod.PublishRequest("vol", attrs(), false)
			c.prepare(pod, req)
			before := snapshot(t, e.k.Dir, outside)
			_, err := e.d.Node.NodePublishVolume(ctx(t), req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			if !strings.Contains(status.Convert(err).Message(), c.want) {
				t.Errorf("message %q does not mention %q", status.Convert(err).Message(), c.want)
			}
			if d := diff(before, snapshot(t, e.k.Dir, outside)); d != "" {
				t.Fatalf("the refused request changed the host:\n%s", d)
			}
			requireNothingMounted(t, e.k)
		})
	}

	t.Run("unpublish with bad input", func(t *testing.T) {
		pod := e.k.NewPod(t, "hostile")
		before := snapshot(t, e.k.Dir, outside)
		for _, r := range []*csi.NodeUnpublishVolumeRequest{
			{VolumeId: "v", TargetPath: outside},
			{VolumeId: "v", TargetPath: filepath.Join(outside, "mount")},
			{VolumeId: "v", TargetPath: pod.Dir + "/volumes/kubernetes.io~empty-dir/" + emptyDirName},
			{VolumeId: "v", TargetPath: pod.Dir + "/volumes/kubernetes.io~csi/../../../x/mount"},
			{VolumeId: "", TargetPath: pod.TargetPath("vol")},
			{VolumeId: "v", TargetPath: ""},
		} {
			if _, err := e.d.Node.NodeUnpublishVolume(ctx(t), r); status.Code(err) != codes.InvalidArgument {
				t.Errorf("unpublish %q: %v, want InvalidArgument", r.TargetPath, err)
			}
		}
		if d := diff(before, snapshot(t, e.k.Dir, outside)); d != "" {
			t.Fatalf("changed the host:\n%s", d)
		}
	})
	if !reflect.DeepEqual(mustRead(t, victim), []byte("do not touch")) {
		t.Fatalf("victim file changed")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return b
}

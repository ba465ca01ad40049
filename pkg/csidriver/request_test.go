package csidriver

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/kubeletpath"
)

const (
	testKubeletDir = "/var/lib/kubelet"
	testPodUID     = "6e9a2b6c-3f0c-4a8e-9d2e-2a1f0b7c4d11"
	testVolName    = "fuse-csi-ephemeral"
)

var testTarget = testKubeletDir + "/pods/" + testPodUID + "/volumes/kubernetes.io~csi/" + testVolName + "/mount"

// validRequest is what kubelet sends for an inline ephemeral volume of the
// examples (podInfoOnMount: true).
func validRequest() *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId:   "csi-5c6a0e3e7bd5e8d1b0e0f6b2a2d6f1c9e1f0a3b4c5d6e7f8a9b0c1d2e3f4a5b6",
		TargetPath: testTarget,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		VolumeContext: map[string]string{
			"csi.storage.k8s.io/pod.name":            "mfcp-example-starter-s3fs",
			"csi.storage.k8s.io/pod.namespace":       "default",
			"csi.storage.k8s.io/pod.uid":             testPodUID,
			"csi.storage.k8s.io/serviceAccount.name": "default",
			"csi.storage.k8s.io/ephemeral":           "true",
			"fdPassingEmptyDirName":                  "fuse-fd-passing",
			"fdPassingSocketName":                    "fuse-csi-ephemeral.sock",
		},
	}
}

func withContext(kv ...string) func(*csi.NodePublishVolumeRequest) {
	return func(r *csi.NodePublishVolumeRequest) {
		for i := 0; i < len(kv); i += 2 {
			r.VolumeContext[kv[i]] = kv[i+1]
		}
	}
}

func withoutContext(keys ...string) func(*csi.NodePublishVolumeRequest) {
	return func(r *csi.NodePublishVolumeRequest) {
		for _, k := range keys {
			delete(r.VolumeContext, k)
		}
	}
}

func withMode(m csi.VolumeCapability_AccessMode_Mode) func(*csi.NodePublishVolumeRequest) {
	return func(r *csi.NodePublishVolumeRequest) {
		r.VolumeCapability.AccessMode = &csi.VolumeCapability_AccessMode{Mode: m}
	}
}

func withMount(m *csi.VolumeCapability_MountVolume) func(*csi.NodePublishVolumeRequest) {
	return func(r *csi.NodePublishVolumeRequest) {
		r.VolumeCapability.AccessType = &csi.VolumeCapability_Mount{Mount: m}
	}
}

func TestParsePublishValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		mutate    []func(*csi.NodePublishVolumeRequest)
		readOnly  bool
		ephemeral bool
		flags     uintptr
		check     func(*testing.T, *publishSpec)
	}{
		{name: "ephemeral", ephemeral: true},
		{name: "not ephemeral", mutate: []func(*csi.NodePublishVolumeRequest){withContext("csi.storage.k8s.io/ephemeral", "false")}},
		{name: "no ephemeral key", mutate: []func(*csi.NodePublishVolumeRequest){withoutContext("csi.storage.k8s.io/ephemeral")}},
		{name: "readOnly flag", readOnly: true, ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){func(r *csi.NodePublishVolumeRequest) { r.Readonly = true }}},
		{name: "SINGLE_NODE_READER_ONLY", readOnly: true, ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){withMode(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)}},
		{name: "MULTI_NODE_READER_ONLY", readOnly: true, ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){withMode(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)}},
		{name: "MULTI_NODE_MULTI_WRITER", ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){withMode(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}},
		{name: "mountOptions ro", readOnly: true, ephemeral: true, flags: unix.MS_RDONLY,
			mutate: []func(*csi.NodePublishVolumeRequest){withContext("mountOptions", "ro")}},
		{name: "mountOptions rw with readOnly flag stays ro", readOnly: true, ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){withContext("mountOptions", "rw"), func(r *csi.NodePublishVolumeRequest) { r.Readonly = true }}},
		{name: "mount_flags ro", readOnly: true, ephemeral: true, flags: unix.MS_RDONLY,
			mutate: []func(*csi.NodePublishVolumeRequest){withMount(&csi.VolumeCapability_MountVolume{MountFlags: []string{"ro"}})}},
		{name: "mountOptions rclone fsname", ephemeral: true, flags: unix.MS_NOATIME,
			mutate: []func(*csi.NodePublishVolumeRequest){withContext("mountOptions", `noatime,fsname=:s3{c7xjq}:test\,bucket,subtype=rclone,max_read=131072`)},
			check: func(t *testing.T, s *publishSpec) {
				if s.options.FsName != ":s3{c7xjq}:test,bucket" || s.options.Subtype != "rclone" || s.options.MaxRead != 131072 {
					t.Errorf("options = %+v", s.options)
				}
			}},
		{name: "fsType fuse", ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){withMount(&csi.VolumeCapability_MountVolume{FsType: "fuse"})}},
		{name: "fsType fuse.s3fs", ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){withMount(&csi.VolumeCapability_MountVolume{FsType: "fuse.s3fs"})}},
		{name: "other csi.storage.k8s.io keys", ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){withContext("csi.storage.k8s.io/serviceAccount.tokens", `{"aud":{"token":"secret"}}`)}},
		{name: "max length names", ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){withContext("fdPassingEmptyDirName", strings.Repeat("e", 63), "fdPassingSocketName", strings.Repeat("S", 80))}},
		{name: "PV name with dots", ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){func(r *csi.NodePublishVolumeRequest) {
				r.TargetPath = testKubeletDir + "/pods/" + testPodUID + "/volumes/kubernetes.io~csi/pvc-1.example/mount"
			}}},
		{name: "exactly max context entries", ephemeral: true,
			mutate: []func(*csi.NodePublishVolumeRequest){func(r *csi.NodePublishVolumeRequest) {
				for i := len(r.VolumeContext); i < maxContextEntries; i++ {
					r.VolumeContext[fmt.Sprintf("csi.storage.k8s.io/x%d", i)] = "v"
				}
			}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := validRequest()
			for _, m := range tc.mutate {
				m(req)
			}
			spec, err := parsePublish(testKubeletDir, req)
			if err != nil {
				t.Fatalf("parsePublish = %v", err)
			}
			if spec.ReadOnly != tc.readOnly {
				t.Errorf("ReadOnly = %v, want %v", spec.ReadOnly, tc.readOnly)
			}
			if spec.Ephemeral != tc.ephemeral {
				t.Errorf("Ephemeral = %v, want %v", spec.Ephemeral, tc.ephemeral)
			}
			if spec.options.Flags != tc.flags {
				t.Errorf("options.Flags = %#x, want %#x", spec.options.Flags, tc.flags)
			}
			if spec.PodUID != testPodUID || spec.target.PodUID != testPodUID || spec.TargetPath != req.TargetPath {
				t.Errorf("spec = %+v", spec)
			}
			if spec.EmptyDirName != req.VolumeContext[AttrEmptyDirName] || spec.SocketName != req.VolumeContext[AttrSocketName] {
				t.Errorf("names = %q, %q", spec.EmptyDirName, spec.SocketName)
			}
			if spec.PodName != "mfcp-example-starter-s3fs" || spec.PodNamespace != "default" || spec.VolumeID != req.VolumeId {
				t.Errorf("spec = %+v", spec)
			}
			if tc.check != nil {
				tc.check(t, spec)
			}
			// What Recover rebuilds from the saved state parses to the same spec.
			again, err := parsePublish(testKubeletDir, spec.request())
			if err != nil {
				t.Fatalf("parsePublish(spec.request()) = %v", err)
			}
			if !again.sameVolume(spec) || again.options != spec.options || again.Ephemeral != spec.Ephemeral || again.TargetPath != spec.TargetPath || again.target != spec.target {
				t.Errorf("spec.request() round trip: %+v, want %+v", again, spec)
			}
		})
	}
}

func TestParsePublishRefused(t *testing.T) {
	t.Parallel()
	type mut = func(*csi.NodePublishVolumeRequest)
	otherUID := "0e9a2b6c-3f0c-4a8e-9d2e-2a1f0b7c4d11"
	tests := []struct {
		name    string
		mutate  mut
		mention []string // substrings the message must contain
	}{
		{"no volume id", func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }, []string{"volume_id"}},
		{"volume id too long", func(r *csi.NodePublishVolumeRequest) { r.VolumeId = strings.Repeat("v", 513) }, []string{"volume_id"}},
		{"staging path", func(r *csi.NodePublishVolumeRequest) { r.StagingTargetPath = "/var/lib/kubelet/plugins/x" }, []string{"staging_target_path"}},
		{"no target", func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "" }, []string{"target path"}},
		{"target outside kubelet", func(r *csi.NodePublishVolumeRequest) {
			r.TargetPath = "/var/lib/kubelet2/pods/" + testPodUID + "/volumes/kubernetes.io~csi/v/mount"
		}, []string{"target path"}},
		{"target unclean", func(r *csi.NodePublishVolumeRequest) { r.TargetPath = testTarget + "/" }, []string{"target path"}},
		{"target with dotdot", func(r *csi.NodePublishVolumeRequest) {
			r.TargetPath = testKubeletDir + "/pods/" + testPodUID + "/volumes/kubernetes.io~csi/../../../../etc/mount"
		}, []string{"target path"}},
		{"missing capability", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }, []string{"volume_capability"}},
		{"block access", func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}, []string{"block"}},
		{"no access type", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.AccessType = nil }, []string{"volume_capability", "mount"}},
		{"fsType ext4", withMount(&csi.VolumeCapability_MountVolume{FsType: "ext4"}), []string{"fsType", "ext4"}},
		{"fsType fuseblk", withMount(&csi.VolumeCapability_MountVolume{FsType: "fuseblk"}), []string{"fsType"}},
		{"volume mount group", withMount(&csi.VolumeCapability_MountVolume{VolumeMountGroup: "1000"}), []string{"volume_mount_group"}},
		{"no access mode", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.AccessMode = nil }, []string{"access_mode"}},
		{"unknown access mode", withMode(csi.VolumeCapability_AccessMode_UNKNOWN), []string{"access_mode"}},
		{"mount_flags dev", withMount(&csi.VolumeCapability_MountVolume{MountFlags: []string{"dev"}}), []string{"mountOptions", "dev"}},
		{"mount_flags bind", withMount(&csi.VolumeCapability_MountVolume{MountFlags: []string{"bind"}}), []string{"mountOptions", "bind"}},

		{"missing emptyDir name", withoutContext(AttrEmptyDirName), []string{AttrEmptyDirName}},
		{"empty emptyDir name", withContext(AttrEmptyDirName, ""), []string{AttrEmptyDirName}},
		{"emptyDir ../x", withContext(AttrEmptyDirName, "../x"), []string{AttrEmptyDirName}},
		{"emptyDir a/b", withContext(AttrEmptyDirName, "a/b"), []string{AttrEmptyDirName}},
		{"emptyDir ..", withContext(AttrEmptyDirName, ".."), []string{AttrEmptyDirName}},
		{"emptyDir NUL", withContext(AttrEmptyDirName, "fd\x00"), []string{AttrEmptyDirName}},
		{"emptyDir too long", withContext(AttrEmptyDirName, strings.Repeat("e", 64)), []string{AttrEmptyDirName}},
		{"emptyDir uppercase", withContext(AttrEmptyDirName, "Fuse"), []string{AttrEmptyDirName}},
		{"emptyDir unicode slash", withContext(AttrEmptyDirName, "a\u2215b"), []string{AttrEmptyDirName}},
		{"missing socket name", withoutContext(AttrSocketName), []string{AttrSocketName}},
		{"socket ../x", withContext(AttrSocketName, "../x"), []string{AttrSocketName}},
		{"socket a/b", withContext(AttrSocketName, "a/b"), []string{AttrSocketName}},
		{"socket .", withContext(AttrSocketName, "."), []string{AttrSocketName}},
		{"socket NUL", withContext(AttrSocketName, "s\x00"), []string{AttrSocketName}},
		{"socket too long", withContext(AttrSocketName, strings.Repeat("s", 81)), []string{AttrSocketName}},
		{"socket space", withContext(AttrSocketName, "a b"), []string{AttrSocketName}},
		{"socket fullwidth", withContext(AttrSocketName, "\uff53"), []string{AttrSocketName}},
		{"unknown attribute typo", withContext("fdPassingSocketname", "x.sock"), []string{"fdPassingSocketname"}},
		{"unknown attribute", withContext("bucket", "test-bucket"), []string{"bucket"}},
		{"too many entries", func(r *csi.NodePublishVolumeRequest) {
			for i := len(r.VolumeContext); i <= maxContextEntries; i++ {
				r.VolumeContext[fmt.Sprintf("csi.storage.k8s.io/x%d", i)] = "v"
			}
		}, []string{"volume_context", "entries"}},
		{"too big context", withContext("csi.storage.k8s.io/serviceAccount.tokens", strings.Repeat("t", maxContextBytes)), []string{"volume_context", "bytes"}},
		{"pod uid mismatch", withContext("csi.storage.k8s.io/pod.uid", otherUID), []string{"csi.storage.k8s.io/pod.uid", otherUID, testPodUID}},
		{"pod uid traversal", withContext("csi.storage.k8s.io/pod.uid", "../"+testPodUID), []string{"csi.storage.k8s.io/pod.uid"}},
		{"missing pod uid", withoutContext("csi.storage.k8s.io/pod.uid"), []string{"volume_context", "podInfoOnMount"}},
		{"missing pod name", withoutContext("csi.storage.k8s.io/pod.name"), []string{"volume_context", "podInfoOnMount"}},
		{"missing pod namespace", withoutContext("csi.storage.k8s.io/pod.namespace"), []string{"volume_context", "podInfoOnMount"}},
		{"no volume context", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext = nil }, []string{AttrEmptyDirName}},
		{"bad ephemeral", withContext("csi.storage.k8s.io/ephemeral", "yes"), []string{"csi.storage.k8s.io/ephemeral", "yes"}},
		{"ephemeral True", withContext("csi.storage.k8s.io/ephemeral", "True"), []string{"csi.storage.k8s.io/ephemeral"}},
		{"mountOptions dev", withContext(AttrMountOptions, "dev"), []string{AttrMountOptions, "dev"}},
		{"mountOptions suid", withContext(AttrMountOptions, "ro,suid"), []string{AttrMountOptions, "suid"}},
		{"mountOptions fd", withContext(AttrMountOptions, "fd=3"), []string{AttrMountOptions, "fd=3"}},
		{"mountOptions user_id", withContext(AttrMountOptions, "user_id=0"), []string{AttrMountOptions, "user_id"}},
		{"mountOptions group_id", withContext(AttrMountOptions, "group_id=0"), []string{AttrMountOptions, "group_id"}},
		{"mountOptions rootmode", withContext(AttrMountOptions, "rootmode=40000"), []string{AttrMountOptions, "rootmode"}},
		{"mountOptions comma injection", withContext(AttrMountOptions, "fsname=x,fd=3"), []string{AttrMountOptions, "fd=3"}},
		{"mountOptions equals trick", withContext(AttrMountOptions, "ro=1"), []string{AttrMountOptions, "ro"}},
		{"mountOptions unknown", withContext(AttrMountOptions, "context=foo"), []string{AttrMountOptions, "context"}},
		{"mountOptions empty entry", withContext(AttrMountOptions, "ro,,rw"), []string{AttrMountOptions}},
		{"mountOptions trailing backslash", withContext(AttrMountOptions, `ro\`), []string{AttrMountOptions}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := validRequest()
			tc.mutate(req)
			spec, err := parsePublish(testKubeletDir, req)
			if err == nil {
				t.Fatalf("parsePublish = %+v, want an error", spec)
			}
			if spec != nil {
				t.Errorf("parsePublish returned a spec with its error")
			}
			if c := status.Code(err); c != codes.InvalidArgument {
				t.Errorf("code = %v, want InvalidArgument (%v)", c, err)
			}
			msg := status.Convert(err).Message()
			for _, m := range tc.mention {
				if !strings.Contains(msg, m) {
					t.Errorf("message %q does not mention %q", msg, m)
				}
			}
		})
	}
}

func TestParseUnpublish(t *testing.T) {
	t.Parallel()
	tg, err := parseUnpublish(testKubeletDir, &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: testTarget})
	if err != nil || tg.PodUID != testPodUID || tg.VolumeName != testVolName {
		t.Errorf("parseUnpublish(valid) = %+v, %v", tg, err)
	}
	for _, req := range []*csi.NodeUnpublishVolumeRequest{
		{TargetPath: testTarget},
		{VolumeId: "v"},
		{VolumeId: "v", TargetPath: "/etc"},
		{VolumeId: "v", TargetPath: testTarget + "/.."},
	} {
		if _, err := parseUnpublish(testKubeletDir, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("parseUnpublish(%v) = %v, want InvalidArgument", req, err)
		}
	}
}

func TestSameVolume(t *testing.T) {
	t.Parallel()
	base, err := parsePublish(testKubeletDir, validRequest())
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]func(*csi.NodePublishVolumeRequest){
		"socket":       withContext(AttrSocketName, "other.sock"),
		"emptyDir":     withContext(AttrEmptyDirName, "other"),
		"mountOptions": withContext(AttrMountOptions, "ro"),
		"readOnly":     func(r *csi.NodePublishVolumeRequest) { r.Readonly = true },
		"volume id":    func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "other" },
		"mount flags":  withMount(&csi.VolumeCapability_MountVolume{MountFlags: []string{"noexec"}}),
	} {
		req := validRequest()
		m(req)
		other, err := parsePublish(testKubeletDir, req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if base.sameVolume(other) {
			t.Errorf("a different %s is reported as the same volume", name)
		}
	}
	same, _ := parsePublish(testKubeletDir, validRequest())
	if !base.sameVolume(same) {
		t.Errorf("an identical request is reported as a different volume")
	}
}

func TestDescribeContextHidesSecrets(t *testing.T) {
	t.Parallel()
	req := validRequest()
	req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"] = "SECRET-TOKEN"
	req.VolumeContext[AttrMountOptions] = "ro"
	d := describeContext(req.VolumeContext)
	if strings.Contains(d, "SECRET-TOKEN") {
		t.Errorf("describeContext leaks the token: %s", d)
	}
	for _, want := range []string{AttrEmptyDirName, AttrSocketName, AttrMountOptions} {
		if !strings.Contains(d, want) {
			t.Errorf("describeContext(%v) = %q lacks %s", req.VolumeContext, d, want)
		}
	}
}

func FuzzParsePublish(f *testing.F) {
	f.Add(testTarget, "fuse-fd-passing", "fuse-csi-ephemeral.sock", "")
	f.Add(testTarget, "fd", "s", `ro,fsname=a\,b,subtype=x`)
	f.Add(testTarget, "../x", "a/b", "dev")
	f.Add(testKubeletDir+"/pods/abc/volumes/kubernetes.io~csi/pvc.x/mount", "a-b", "..", "fd=3")
	f.Add("/var/lib/kubelet2/pods/abc/volumes/kubernetes.io~csi/v/mount", "a", "b", "user_id=0")
	f.Add(testTarget+"/", "a", "b", "max_read=1")
	f.Fuzz(func(t *testing.T, target, emptyDir, socket, opts string) {
		req := validRequest()
		req.TargetPath = target
		// Use the uid the path claims so that most inputs reach the name checks.
		if rest, ok := strings.CutPrefix(target, testKubeletDir+"/pods/"); ok {
			uid, _, _ := strings.Cut(rest, "/")
			req.VolumeContext["csi.storage.k8s.io/pod.uid"] = uid
		}
		req.VolumeContext[AttrEmptyDirName] = emptyDir
		req.VolumeContext[AttrSocketName] = socket
		req.VolumeContext[AttrMountOptions] = opts
		spec, err := parsePublish(testKubeletDir, req)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refusal with code %v, want InvalidArgument: %v", status.Code(err), err)
			}
			if spec != nil {
				t.Fatalf("spec returned with error")
			}
			return
		}
		if err := kubeletpath.ValidateEmptyDirName(spec.EmptyDirName); err != nil {
			t.Fatalf("accepted emptyDir name %q: %v", spec.EmptyDirName, err)
		}
		if err := kubeletpath.ValidateSocketName(spec.SocketName); err != nil {
			t.Fatalf("accepted socket name %q: %v", spec.SocketName, err)
		}
		if spec.TargetPath != testKubeletDir+"/"+spec.target.RelPath() || spec.TargetPath != filepath.Join(testKubeletDir, spec.target.RelPath()) {
			t.Fatalf("TargetPath %q != kubelet dir + RelPath %q", spec.TargetPath, spec.target.RelPath())
		}
		if spec.PodUID != spec.target.PodUID {
			t.Fatalf("pod uid %q != target's %q", spec.PodUID, spec.target.PodUID)
		}
		// The emptyDir and socket resolve to single components beneath the pod's volumes.
		rel := kubeletpath.EmptyDirRel(spec.PodUID, spec.EmptyDirName) + "/" + spec.SocketName
		if filepath.Clean(rel) != rel || !strings.HasPrefix(rel, "pods/"+spec.PodUID+"/volumes/kubernetes.io~empty-dir/") ||
			strings.Count(rel, "/") != 5 {
			t.Fatalf("socket path %q is not a plain path beneath the pod's emptyDir", rel)
		}
		if spec.options.ReadOnly() && !spec.ReadOnly {
			t.Fatalf("options say ro but ReadOnly is false")
		}
		if spec.options.Flags&(unix.MS_BIND|unix.MS_REMOUNT|unix.MS_MOVE|unix.MS_SHARED|unix.MS_REC) != 0 {
			t.Fatalf("options.Flags = %#x", spec.options.Flags)
		}
	})
}

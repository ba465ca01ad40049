package harness

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// DriverName is the CSI driver name of meta-fuse-csi-plugin (the contract in DESIGN.md); the
// harness writes it into vol_data.json as kubelet does.
const DriverName = "meta-fuse-csi-plugin.csi.storage.pfn.io"

// Kubelet is a temporary kubelet root directory (the stand-in for /var/lib/kubelet).
//
// Like a real node's kubelet directory, it is a shared mount: a self bind mount made
// rshared. Pod namespaces created by Pod.Run are slaves of it, so a FUSE mount the driver
// makes later at a volume target propagates into them (mountPropagation: HostToContainer).
type Kubelet struct {
	// Dir is the kubelet root, /tmp/mfcp-kubelet-*, mode 0750 like /var/lib/kubelet.
	Dir string
}

// NewKubelet creates the kubelet directory (with pods/ inside), bind-mounts it onto itself
// and makes it rshared. Its cleanup, registered before any mount is made so that it also runs
// after a half-completed setup, aborts the FUSE connections of and detaches every mount
// below the directory (deepest first, from /proc/self/mountinfo, never stat'ing them), then
// the self bind, then removes the directory; it fails the test if anything stays mounted.
func NewKubelet(t T) *Kubelet {
	t.Helper()
	dir, err := makeDir("kubelet", 0o750)
	if err != nil {
		t.Fatalf("NewKubelet: %v", err)
	}
	k := &Kubelet{Dir: dir}
	t.Cleanup(func() {
		if err := removeDirSafely(dir); err != nil {
			t.Fatalf("kubelet cleanup: %v", err)
		}
	})
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("NewKubelet: bind-mounting %s onto itself: %v", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		t.Fatalf("NewKubelet: making %s rshared: %v", dir, err)
	}
	for _, sub := range []string{"pods", "plugins"} {
		if err := mkdirMode(filepath.Join(dir, sub), 0o750); err != nil {
			t.Fatalf("NewKubelet: %v", err)
		}
	}
	return k
}

// PodsDir is <Dir>/pods.
func (k *Kubelet) PodsDir() string { return filepath.Join(k.Dir, "pods") }

// DriverStateDir is the driver's default --state-dir for this kubelet dir.
func (k *Kubelet) DriverStateDir() string {
	return filepath.Join(k.Dir, "plugins", DriverName, "state")
}

// MountsUnder returns the mountpoints below the kubelet directory, excluding its own self
// bind, from /proc/self/mountinfo (no stat), so tests can assert that nothing is left
// mounted after an unpublish.
func (k *Kubelet) MountsUnder() ([]string, error) {
	return MountsUnder(k.Dir)
}

// Pod is a pod as kubelet sees it: a directory <kubelet>/pods/<uid> with volumes, plus a
// short host-side view directory /tmp/mfcp-pv-*/ where Run bind-mounts its volumes inside the
// pod's mount namespace.
type Pod struct {
	Name           string
	Namespace      string
	UID            string
	ServiceAccount string
	// Dir is the pod directory on the node, <kubelet>/pods/<uid>.
	Dir string
	// ViewDir is the pod's short view directory /tmp/mfcp-pv-*; see ViewPath.
	ViewDir string

	k *Kubelet
	t T

	mu    sync.Mutex
	homes map[[2]int]string
}

// NewPod creates pods/<uid>/volumes as kubelet would (0750, root), with a random UUID v4 pod
// uid, namespace "default" and service account "default", and the pod's view directory.
func (k *Kubelet) NewPod(t T, name string) *Pod {
	t.Helper()
	uid, err := newUUID()
	if err != nil {
		t.Fatalf("NewPod: %v", err)
	}
	p := &Pod{
		Name:           name,
		Namespace:      "default",
		UID:            uid,
		ServiceAccount: "default",
		Dir:            filepath.Join(k.PodsDir(), uid),
		k:              k,
		t:              t,
		homes:          map[[2]int]string{},
	}
	for _, d := range []string{p.Dir, filepath.Join(p.Dir, "volumes"), filepath.Join(p.Dir, "plugins")} {
		if err := mkdirMode(d, 0o750); err != nil {
			t.Fatalf("NewPod: %v", err)
		}
	}
	view, err := makeDir("pv", 0o755)
	if err != nil {
		t.Fatalf("NewPod: %v", err)
	}
	p.ViewDir = view
	t.Cleanup(func() {
		// Runs after the pod's processes were killed (their cleanups were registered
		// later), so the pod's mount namespaces are gone and nothing can be mounted here.
		if err := removeDirSafely(view); err != nil {
			t.Fatalf("pod %s cleanup: %v", name, err)
		}
	})
	return p
}

// newUUID returns a random RFC 4122 version 4 UUID, like a pod's metadata.uid.
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32], nil
}

// EmptyDirPath is the node path of the pod's emptyDir volume name:
// <kubelet>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>.
func (p *Pod) EmptyDirPath(name string) string {
	return filepath.Join(p.Dir, "volumes", "kubernetes.io~empty-dir", name)
}

// AddEmptyDir creates the emptyDir volume name with mode 0777 (kubelet's mode for an
// emptyDir on the node's disk; chmod'ed explicitly because of the umask) and returns its node
// path.
func (p *Pod) AddEmptyDir(name string) string {
	p.t.Helper()
	if err := validName("emptyDir", name); err != nil {
		p.t.Fatalf("AddEmptyDir: %v", err)
	}
	parent := filepath.Join(p.Dir, "volumes", "kubernetes.io~empty-dir")
	if err := os.MkdirAll(parent, 0o750); err != nil {
		p.t.Fatalf("AddEmptyDir: %v", err)
	}
	dir := p.EmptyDirPath(name)
	if err := mkdirMode(dir, 0o777); err != nil {
		p.t.Fatalf("AddEmptyDir: %v", err)
	}
	return dir
}

// VolumeID is the volume handle kubelet gives an inline ephemeral CSI volume:
// "csi-" + hex(sha256(podUID + volName)) (makeVolumeHandle in kubelet's csi plugin).
func (p *Pod) VolumeID(volName string) string {
	sum := sha256.Sum256([]byte(p.UID + volName))
	return "csi-" + hex.EncodeToString(sum[:])
}

// TargetPath is where kubelet asks the driver to publish the pod's CSI volume volName:
// <kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<volName>/mount.
func (p *Pod) TargetPath(volName string) string {
	return filepath.Join(p.Dir, "volumes", "kubernetes.io~csi", volName, "mount")
}

// Volume-context keys kubelet adds when the CSIDriver has podInfoOnMount: true.
const (
	CtxPodName        = "csi.storage.k8s.io/pod.name"
	CtxPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	CtxPodUID         = "csi.storage.k8s.io/pod.uid"
	CtxServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	CtxEphemeral      = "csi.storage.k8s.io/ephemeral"
)

// PublishRequest builds exactly the NodePublishVolumeRequest kubelet (v1.3x) sends for an
// inline ephemeral CSI volume volName of this pod, with the given volumeAttributes, and
// prepares the node as kubelet does before the call: it creates the target's parent
// kubernetes.io~csi/<volName> (0750) and writes vol_data.json there, but not the target
// ("mount") itself, which is the driver's job. attrs is not modified.
func (p *Pod) PublishRequest(volName string, attrs map[string]string, readOnly bool) *csi.NodePublishVolumeRequest {
	p.t.Helper()
	if err := validName("volume", volName); err != nil {
		p.t.Fatalf("PublishRequest: %v", err)
	}
	target := p.TargetPath(volName)
	parent := filepath.Dir(target)
	if err := os.MkdirAll(parent, 0o750); err != nil {
		p.t.Fatalf("PublishRequest: creating %s: %v", parent, err)
	}
	volData := map[string]string{
		"specVolID":           volName,
		"volumeHandle":        p.VolumeID(volName),
		"driverName":          DriverName,
		"nodeName":            "test-node",
		"volumeLifecycleMode": "Ephemeral",
	}
	b, _ := json.Marshal(volData)
	if err := os.WriteFile(filepath.Join(parent, "vol_data.json"), b, 0o644); err != nil {
		p.t.Fatalf("PublishRequest: writing vol_data.json: %v", err)
	}
	ctx := make(map[string]string, len(attrs)+5)
	for k, v := range attrs {
		ctx[k] = v
	}
	ctx[CtxPodName] = p.Name
	ctx[CtxPodNamespace] = p.Namespace
	ctx[CtxPodUID] = p.UID
	ctx[CtxServiceAccount] = p.ServiceAccount
	ctx[CtxEphemeral] = "true"
	return &csi.NodePublishVolumeRequest{
		VolumeId:   p.VolumeID(volName),
		TargetPath: target,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		Readonly:      readOnly,
		VolumeContext: ctx,
	}
}

// UnpublishRequest builds the NodeUnpublishVolumeRequest kubelet sends when the pod's
// volume volName is torn down.
func (p *Pod) UnpublishRequest(volName string) *csi.NodeUnpublishVolumeRequest {
	return &csi.NodeUnpublishVolumeRequest{
		VolumeId:   p.VolumeID(volName),
		TargetPath: p.TargetPath(volName),
	}
}

// RemoveTarget does what kubelet does after a successful NodeUnpublishVolume
// (removeMountDir): if the target is not a mount point any more (judged from mountinfo), it
// removes the target directory, vol_data.json and the volume directory. It returns an error
// if the target is still mounted, which is how tests can catch an unpublish that left a mount.
func (p *Pod) RemoveTarget(volName string) error {
	target := p.TargetPath(volName)
	ms, err := mountsUnder(target, true)
	if err != nil {
		return err
	}
	if len(ms) > 0 {
		return fmt.Errorf("target %s is still mounted (%d mount(s), first %s)", target, len(ms), ms[0].FSType)
	}
	parent := filepath.Dir(target)
	for _, f := range []string{target, filepath.Join(parent, "vol_data.json"), parent} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("removing %s: %w", f, err)
		}
	}
	return nil
}

// ViewPath is the path at which Run makes the mount named mountName visible to the pod's
// processes: <ViewDir>/<mountName>. On the host it is an empty 0755 directory; the bind mount
// exists only inside the pod's mount namespaces. It is short, and reachable by uid 65534,
// unlike the node path under the 0750 kubelet directory.
func (p *Pod) ViewPath(mountName string) string {
	return filepath.Join(p.ViewDir, mountName)
}

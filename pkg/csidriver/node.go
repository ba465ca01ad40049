package csidriver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/faultinject"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fusemount"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/kubeletpath"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/metrics"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/safefs"
)

// NodeGetInfo names the node.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.cfg.NodeID}, nil
}

// NodeGetCapabilities reports none: no staging, no stats, no expansion.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

// NodePublishVolume validates the request, creates the target directory and
// a socket in the pod's emptyDir, and returns; the mount is made when the
// pod's FUSE process connects.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (resp *csi.NodePublishVolumeResponse, err error) {
	defer func(start time.Time) { d.m.Publish(status.Code(err).String(), time.Since(start)) }(time.Now())
	spec, err := parsePublish(d.cfg.KubeletDir, req)
	if err != nil {
		return nil, err
	}
	log := volumeLogger(spec)
	unlock := d.locks.Lock(spec.TargetPath)
	defer unlock()
	if err := d.publish(spec, log); err != nil {
		log.Error(err, "publishing volume failed", "target", spec.TargetPath, "attributes", describeContext(req.GetVolumeContext()))
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// publish does the work of NodePublishVolume; the caller holds the target lock.
func (d *Driver) publish(spec *publishSpec, log klog.Logger) error {
	d.mu.Lock()
	v := d.volumes[spec.TargetPath]
	d.mu.Unlock()
	var pendingFailure error
	if v != nil {
		if !v.spec.sameVolume(spec) {
			return status.Errorf(codes.AlreadyExists, "target %s is already published with different attributes (emptyDir, socket name, mount options or readOnly); unpublish it first", spec.TargetPath)
		}
		v.mu.Lock()
		pendingFailure = v.failure
		stopped := v.closing
		v.mu.Unlock()
		if !stopped {
			log.V(4).Info("volume already published", "target", spec.TargetPath)
			return nil
		}
		// Its socket was closed: by the pending timeout (report why: this
		// is how the reason reaches the pod's events), or by an unpublish
		// that failed later. Make the socket again.
		v.stop()
		v.emptyDir.Close()
		d.mu.Lock()
		delete(d.volumes, spec.TargetPath)
		d.mu.Unlock()
	}
	if err := d.listen(spec, log); err != nil {
		return err
	}
	if pendingFailure != nil {
		// Not a final code: kubelet must keep the target (the app containers
		// already bind it) and retry.
		return status.Errorf(codes.DeadlineExceeded, "%v; the socket has been made again", pendingFailure)
	}
	return nil
}

// listen checks the pod's emptyDir, creates the target and the socket,
// records the volume and starts serving it.
func (d *Driver) listen(spec *publishSpec, log klog.Logger) error {

	// Everything a pod controls is checked before anything on the host changes.
	emptyDir, err := d.kubelet.OpenDir(kubeletpath.EmptyDirRel(spec.PodUID, spec.EmptyDirName))
	if err != nil {
		return emptyDirError(spec, err)
	}
	keep := false
	defer func() {
		if !keep {
			emptyDir.Close()
		}
	}()
	dirStat, err := emptyDir.Stat()
	if err != nil {
		return status.Errorf(codes.Internal, "stat of emptyDir: %v", err)
	}
	if st, err := emptyDir.Lstat(spec.SocketName); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return invalid("volumeAttributes.%s %q: the emptyDir %q already holds a %s of that name; the driver creates the socket itself, so remove it or choose another name",
				AttrSocketName, spec.SocketName, spec.EmptyDirName, fileKind(st.Mode))
		}
	} else if !errors.Is(err, unix.ENOENT) {
		return status.Errorf(codes.Internal, "checking the socket name in the emptyDir: %v", err)
	}

	if err := d.makeTarget(spec.target); err != nil {
		return err
	}
	faultinject.Point("after-target")
	// A socket left at the name is a stale one of ours (a restart) or one the
	// pod made; either way it is replaced.
	if err := emptyDir.RemoveSocket(spec.SocketName); err != nil {
		if errors.Is(err, safefs.ErrNotSocket) {
			return invalid("volumeAttributes.%s %q: something other than a socket appeared at that name in emptyDir %q; the driver creates the socket itself, so remove it or choose another name",
				AttrSocketName, spec.SocketName, spec.EmptyDirName)
		}
		return status.Errorf(codes.Internal, "removing the stale socket: %v", err)
	}
	ln, err := emptyDir.ListenUnix(spec.SocketName, int(dirStat.Uid), int(dirStat.Gid), socketMode(dirStat.Mode))
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, safefs.ErrReplaced) {
			return status.Errorf(codes.Unavailable, "something appeared at the socket name %q in emptyDir %q while the driver was creating the socket; retrying", spec.SocketName, spec.EmptyDirName)
		}
		return status.Errorf(codes.Internal, "creating the fd-passing socket: %v", err)
	}
	faultinject.Point("after-listen")
	if err := d.state.Save(spec); err != nil {
		ln.Close()
		emptyDir.RemoveSocket(spec.SocketName)
		return status.Errorf(codes.Internal, "%v", err)
	}
	v := &volume{d: d, spec: spec, log: log, emptyDir: emptyDir, ln: ln, done: make(chan struct{}), quit: make(chan struct{})}
	keep = true
	d.mu.Lock()
	d.volumes[spec.TargetPath] = v
	d.mu.Unlock()
	go v.serve()
	// A volume served before a driver restart is watched again (and has
	// had its FUSE process); others wait for theirs, for a bounded time.
	if top, err := fusemount.TopMount(d.realTarget(spec.target.RelPath()), d.targetOpener(spec.target)); err == nil && top != nil && top.IsFUSE() {
		v.mu.Lock()
		v.connected, v.mounted = true, true
		v.mu.Unlock()
		v.mountMu.Lock()
		v.startWatchLocked()
		v.mountMu.Unlock()
	} else {
		v.startPendingTimer()
	}
	log.Info("published volume; waiting for the FUSE process to connect", "target", spec.TargetPath,
		"emptyDir", spec.EmptyDirName, "socket", spec.SocketName, "readOnly", spec.ReadOnly,
		"socketOwner", fmt.Sprintf("%d:%d", dirStat.Uid, dirStat.Gid), "socketMode", fmt.Sprintf("%o", socketMode(dirStat.Mode)))
	return nil
}

func emptyDirError(spec *publishSpec, err error) error {
	what := fmt.Sprintf("emptyDir %q (volumeAttributes.%s) of pod %s/%s", spec.EmptyDirName, AttrEmptyDirName, spec.PodNamespace, spec.PodName)
	switch {
	case errors.Is(err, unix.ENOENT):
		// kubelet sets up a pod's volumes in parallel: the emptyDir may
		// simply not exist yet, so this is worth a retry.
		return status.Errorf(codes.Unavailable, "%s does not exist (yet): make sure the pod has an emptyDir volume of that name", what)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return invalid("%s is a symlink or leads out of the pod's volumes; refusing to follow it", what)
	case errors.Is(err, unix.ENOTDIR):
		return invalid("%s is not a directory", what)
	default:
		return status.Errorf(codes.Internal, "opening %s: %v", what, err)
	}
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFREG:
		return "file"
	case unix.S_IFIFO:
		return "named pipe"
	default:
		return "special file"
	}
}

// makeTarget creates <uid>/volumes/kubernetes.io~csi/<vol>/mount beneath the
// kubelet directory without following symlinks. The pod's volumes directory
// must exist: kubelet creates it before publishing.
func (d *Driver) makeTarget(t kubeletpath.Target) error {
	vols, err := d.kubelet.OpenDir(kubeletpath.PodVolumesRel(t.PodUID))
	if errors.Is(err, unix.ENOENT) {
		return status.Errorf(codes.NotFound, "the pod's volume directory %s/%s does not exist", d.cfg.KubeletDir, kubeletpath.PodVolumesRel(t.PodUID))
	}
	if err != nil {
		return status.Errorf(codes.Internal, "opening the pod's volume directory: %v", err)
	}
	defer func() { vols.Close() }() // the last handle opened in the loop
	for _, name := range []string{kubeletpath.CSIPluginDir, t.VolumeName} {
		if err := vols.Mkdir(name, 0o750); err != nil {
			return status.Errorf(codes.Internal, "creating the target's parent directory: %v", err)
		}
		next, err := vols.OpenDir(name)
		if err != nil {
			return status.Errorf(codes.Internal, "opening the target's parent directory: %v", err)
		}
		vols.Close()
		vols = next
	}
	// 0755: libfuse 2 programs open their mountpoint, which may be this directory seen through the pod's volume mount.
	if err := vols.Mkdir("mount", 0o755); err != nil {
		return status.Errorf(codes.Internal, "creating the target directory: %v", err)
	}
	return nil
}

// NodeUnpublishVolume closes the volume's socket, detaches every mount at the
// target and aborts its FUSE connection (so a dead or stopped FUSE server
// cannot hold it up), and removes the then empty target directory. It never
// deletes files.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (resp *csi.NodeUnpublishVolumeResponse, err error) {
	defer func(start time.Time) { d.m.Unpublish(status.Code(err).String(), time.Since(start)) }(time.Now())
	t, err := parseUnpublish(d.cfg.KubeletDir, req)
	if err != nil {
		return nil, err
	}
	unlock := d.locks.Lock(req.GetTargetPath())
	defer unlock()
	start := time.Now()

	d.mu.Lock()
	v := d.volumes[req.GetTargetPath()]
	d.mu.Unlock()
	log := klog.LoggerWithValues(klog.Background(), "podUID", t.PodUID, "volume", t.VolumeName, "volumeID", req.GetVolumeId())
	if v != nil {
		log = v.log
		v.stop()
		if v.emptyDir != nil {
			if err := v.emptyDir.RemoveSocket(v.spec.SocketName); err != nil {
				log.Error(err, "removing the fd-passing socket")
			}
			v.emptyDir.Close()
		}
	}

	n, nfuse, err := d.unmounter.UnmountAll(d.realTarget(t.RelPath()), d.targetOpener(t))
	d.m.Aborted(metrics.CauseUnpublish, nfuse)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "unmounting %s: %v", req.GetTargetPath(), err)
	}
	if err := d.removeTarget(t); err != nil {
		return nil, err
	}
	if err := d.state.Delete(req.GetTargetPath()); err != nil {
		return nil, status.Errorf(codes.Internal, "forgetting the volume: %v", err)
	}
	d.mu.Lock()
	delete(d.volumes, req.GetTargetPath())
	d.mu.Unlock()
	log.Info("unpublished volume", "target", req.GetTargetPath(), "unmounted", n, "duration", time.Since(start))
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// targetOpener opens the target beneath the kubelet dir without following
// symlinks, for unmounting through the handle.
func (d *Driver) targetOpener(t kubeletpath.Target) fusemount.Opener {
	return func() (*os.File, error) { return d.kubelet.OpenPathBeneath(t.RelPath()) }
}

// removeTarget removes the empty target directory; a missing one is fine.
func (d *Driver) removeTarget(t kubeletpath.Target) error {
	parent, err := d.kubelet.OpenDir(t.VolumeDirRel())
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return status.Errorf(codes.Internal, "opening the target's parent directory: %v", err)
	}
	defer parent.Close()
	err = parent.Rmdir("mount")
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
		return status.Errorf(codes.FailedPrecondition, "target %s/%s is not mounted but holds files; the driver never deletes them: inspect and remove them by hand", d.cfg.KubeletDir, t.RelPath())
	case errors.Is(err, unix.ENOTDIR):
		return status.Errorf(codes.FailedPrecondition, "target %s/%s is not a directory; remove it by hand", d.cfg.KubeletDir, t.RelPath())
	default:
		return status.Errorf(codes.Internal, "removing the target directory: %v", err)
	}
}

// Recover serves again the volumes a previous run of the driver published:
// mounts that are served keep working without the driver, and volumes whose
// FUSE process has not connected yet get their socket back. Volumes whose pod
// is gone are forgotten.
func (d *Driver) Recover() {
	entries, err := d.state.List()
	if err != nil {
		klog.ErrorS(err, "reading the driver's state; no volume recovered")
		return
	}
	for _, e := range entries {
		if e.Err != nil {
			klog.ErrorS(e.Err, "dropping unreadable volume state", "file", e.Path)
			removeFile(e.Path)
			continue
		}
		spec, err := parsePublish(d.cfg.KubeletDir, e.Spec.request())
		if err != nil {
			klog.ErrorS(err, "dropping invalid volume state", "file", e.Path)
			removeFile(e.Path)
			continue
		}
		log := volumeLogger(spec)
		realTarget := d.realTarget(spec.target.RelPath())
		mounted, err := fusemount.IsFUSEMounted(realTarget)
		if err != nil {
			log.Error(err, "reading the mount table")
			continue
		}
		podDir, err := d.kubelet.OpenPathBeneath(kubeletpath.PodVolumesRel(spec.PodUID))
		if err == nil {
			podDir.Close()
		}
		if errors.Is(err, unix.ENOENT) && !mounted {
			log.Info("forgetting a volume whose pod is gone", "target", spec.TargetPath)
			d.state.Delete(spec.TargetPath)
			continue
		}
		unlock := d.locks.Lock(spec.TargetPath)
		err = d.publish(spec, log)
		unlock()
		if err != nil {
			log.Error(err, "could not recover volume; it is served again when kubelet publishes it", "target", spec.TargetPath)
			continue
		}
		log.Info("recovered volume", "target", spec.TargetPath, "mounted", mounted)
	}
}

// request rebuilds the NodePublishVolume request a state entry came from, so
// that recovery validates it exactly as a new request.
func (s *publishSpec) request() *csi.NodePublishVolumeRequest {
	vc := map[string]string{
		AttrEmptyDirName: s.EmptyDirName, AttrSocketName: s.SocketName,
		ctxPodUID: s.PodUID, ctxPodName: s.PodName, ctxPodNamespace: s.PodNamespace,
		ctxEphemeral: fmt.Sprint(s.Ephemeral),
	}
	if s.MountOptions != "" {
		vc[AttrMountOptions] = s.MountOptions
	}
	return &csi.NodePublishVolumeRequest{
		VolumeId: s.VolumeID, TargetPath: s.TargetPath, Readonly: s.ReadOnly, VolumeContext: vc,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: s.MountFlags}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
	}
}

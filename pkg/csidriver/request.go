package csidriver

import (
	"fmt"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/kubeletpath"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/mountoptions"
)

// volumeAttributes a pod author sets.
const (
	AttrEmptyDirName = "fdPassingEmptyDirName"
	AttrSocketName   = "fdPassingSocketName"
	AttrMountOptions = "mountOptions"
)

// Keys kubelet adds to the volume context (podInfoOnMount, inline volumes).
const (
	ctxPrefix         = "csi.storage.k8s.io/"
	ctxPodName        = ctxPrefix + "pod.name"
	ctxPodNamespace   = ctxPrefix + "pod.namespace"
	ctxPodUID         = ctxPrefix + "pod.uid"
	ctxServiceAccount = ctxPrefix + "serviceAccount.name"
	ctxEphemeral      = ctxPrefix + "ephemeral"
	// ctxTokens holds service account tokens when the CSIDriver asks for
	// them: a secret, never logged.
	ctxTokens = ctxPrefix + "serviceAccount.tokens"
)

// Bounds on what a pod can make the driver hold.
const (
	maxContextEntries = 32
	maxContextBytes   = 64 << 10
	maxVolumeIDLen    = 512
)

// publishSpec is a validated NodePublishVolume request; it is also what the
// driver persists to serve the volume again after a restart.
type publishSpec struct {
	VolumeID     string   `json:"volumeID"`
	TargetPath   string   `json:"targetPath"`
	PodUID       string   `json:"podUID"`
	PodName      string   `json:"podName"`
	PodNamespace string   `json:"podNamespace"`
	Ephemeral    bool     `json:"ephemeral"`
	EmptyDirName string   `json:"emptyDirName"`
	SocketName   string   `json:"socketName"`
	MountOptions string   `json:"mountOptions,omitempty"`
	MountFlags   []string `json:"mountFlags,omitempty"`
	ReadOnly     bool     `json:"readOnly,omitempty"`

	target  kubeletpath.Target
	options mountoptions.Options
}

// sameVolume reports whether a republish asks for the same thing.
func (s *publishSpec) sameVolume(o *publishSpec) bool {
	return s.VolumeID == o.VolumeID && s.PodUID == o.PodUID && s.EmptyDirName == o.EmptyDirName &&
		s.SocketName == o.SocketName && s.MountOptions == o.MountOptions &&
		strings.Join(s.MountFlags, ",") == strings.Join(o.MountFlags, ",") && s.ReadOnly == o.ReadOnly
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// parsePublish validates everything in a NodePublishVolume request before the
// driver touches anything, and answers InvalidArgument with what to fix.
func parsePublish(kubeletDir string, req *csi.NodePublishVolumeRequest) (*publishSpec, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is missing")
	}
	if len(req.GetVolumeId()) > maxVolumeIDLen {
		return nil, invalid("volume_id is %d bytes long; at most %d are allowed", len(req.GetVolumeId()), maxVolumeIDLen)
	}
	if req.GetStagingTargetPath() != "" {
		return nil, invalid("staging_target_path is set, but this driver has no NodeStageVolume")
	}
	target, err := kubeletpath.ParseTarget(kubeletDir, req.GetTargetPath())
	if err != nil {
		return nil, invalid("%v", err)
	}
	spec := &publishSpec{VolumeID: req.GetVolumeId(), TargetPath: req.GetTargetPath(), target: target, ReadOnly: req.GetReadonly()}

	capability := req.GetVolumeCapability()
	if capability == nil {
		return nil, invalid("volume_capability is missing")
	}
	if capability.GetBlock() != nil {
		return nil, invalid("raw block access is not supported: use volumeMode: Filesystem")
	}
	mnt := capability.GetMount()
	if mnt == nil {
		return nil, invalid("volume_capability must have the mount access type")
	}
	if fs := mnt.GetFsType(); fs != "" && fs != "fuse" && !strings.HasPrefix(fs, "fuse.") {
		return nil, invalid("fsType %q is not supported: leave it empty (the FUSE program decides the filesystem)", fs)
	}
	if mnt.GetVolumeMountGroup() != "" {
		return nil, invalid("volume_mount_group is not supported (the CSIDriver's fsGroupPolicy must not be File)")
	}
	switch mode := capability.GetAccessMode().GetMode(); mode {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		spec.ReadOnly = true
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return nil, invalid("volume_capability.access_mode is missing")
	}

	if err := parseContext(req.GetVolumeContext(), spec); err != nil {
		return nil, err
	}
	if spec.PodUID != target.PodUID {
		return nil, invalid("volume_context %s %q does not match the pod uid %q in target_path", ctxPodUID, spec.PodUID, target.PodUID)
	}

	opts, err := mountoptions.Parse(spec.MountOptions)
	if err != nil {
		return nil, invalid("volumeAttributes.%s: %v", AttrMountOptions, err)
	}
	spec.MountFlags = mnt.GetMountFlags()
	flags, err := mountoptions.Validate(spec.MountFlags)
	if err != nil {
		return nil, invalid("mountOptions of the PersistentVolume or StorageClass: %v", err)
	}
	spec.options = flags.Merge(opts)
	if spec.options.ReadOnly() {
		spec.ReadOnly = true
	}
	return spec, nil
}

func parseContext(vc map[string]string, spec *publishSpec) error {
	if len(vc) > maxContextEntries {
		return invalid("volume_context has %d entries; at most %d are allowed", len(vc), maxContextEntries)
	}
	size := 0
	for k, v := range vc {
		size += len(k) + len(v)
	}
	if size > maxContextBytes {
		return invalid("volume_context is %d bytes; at most %d are allowed", size, maxContextBytes)
	}
	for k := range vc {
		switch k {
		case AttrEmptyDirName, AttrSocketName, AttrMountOptions:
		default:
			if !strings.HasPrefix(k, ctxPrefix) {
				return invalid("volumeAttributes.%q is not known to this driver; the supported attributes are %s, %s and %s",
					k, AttrEmptyDirName, AttrSocketName, AttrMountOptions)
			}
		}
	}
	spec.EmptyDirName = vc[AttrEmptyDirName]
	if spec.EmptyDirName == "" {
		return invalid("volumeAttributes.%s is missing: set it to the name of an emptyDir volume of this pod that the FUSE container mounts", AttrEmptyDirName)
	}
	if err := kubeletpath.ValidateEmptyDirName(spec.EmptyDirName); err != nil {
		return invalid("volumeAttributes.%s %v", AttrEmptyDirName, err)
	}
	spec.SocketName = vc[AttrSocketName]
	if spec.SocketName == "" {
		return invalid("volumeAttributes.%s is missing: set it to the file name of the socket the FUSE container connects to inside that emptyDir", AttrSocketName)
	}
	if err := kubeletpath.ValidateSocketName(spec.SocketName); err != nil {
		return invalid("volumeAttributes.%s %v", AttrSocketName, err)
	}
	spec.MountOptions = vc[AttrMountOptions]

	spec.PodUID, spec.PodName, spec.PodNamespace = vc[ctxPodUID], vc[ctxPodName], vc[ctxPodNamespace]
	if spec.PodUID == "" || spec.PodName == "" || spec.PodNamespace == "" {
		return invalid("volume_context lacks the pod's name, namespace or uid: the CSIDriver object must set podInfoOnMount: true")
	}
	switch vc[ctxEphemeral] {
	case "true":
		spec.Ephemeral = true
	case "", "false":
	default:
		return invalid("volume_context %s is %q, want true or false", ctxEphemeral, vc[ctxEphemeral])
	}
	return nil
}

// parseUnpublish validates a NodeUnpublishVolume request.
func parseUnpublish(kubeletDir string, req *csi.NodeUnpublishVolumeRequest) (kubeletpath.Target, error) {
	if req.GetVolumeId() == "" {
		return kubeletpath.Target{}, invalid("volume_id is missing")
	}
	t, err := kubeletpath.ParseTarget(kubeletDir, req.GetTargetPath())
	if err != nil {
		return kubeletpath.Target{}, invalid("%v", err)
	}
	return t, nil
}

// describeContext lists the volume context for logs without secrets.
func describeContext(vc map[string]string) string {
	var b strings.Builder
	for _, k := range []string{AttrEmptyDirName, AttrSocketName, AttrMountOptions, ctxEphemeral} {
		if v, ok := vc[k]; ok {
			fmt.Fprintf(&b, "%s=%q ", k, v)
		}
	}
	return strings.TrimSpace(b.String())
}

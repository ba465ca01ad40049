// Package kubeletpath parses and builds the paths kubelet uses for a pod's
// volumes, and validates the names a pod author may put into them.
//
// Everything here is pure string handling: nothing touches the filesystem, so
// the checks can run before the driver changes anything on the host.
package kubeletpath

import (
	"fmt"
	"path/filepath"
	"strings"
)

const (
	// CSIPluginDir is the directory kubelet keeps CSI volumes of a pod in.
	CSIPluginDir = "kubernetes.io~csi"
	// EmptyDirPluginDir is the directory kubelet keeps emptyDir volumes of a pod in.
	EmptyDirPluginDir = "kubernetes.io~empty-dir"

	// MaxSocketNameLen keeps "/proc/self/fd/<n>/<name>" inside the 108 bytes
	// of sun_path, which is how the driver binds without chdir.
	MaxSocketNameLen = 80
	maxPodUIDLen     = 64
	maxVolumeNameLen = 253
	maxEmptyDirLen   = 63
)

// Target is a parsed NodePublishVolume target path.
type Target struct {
	// PodUID and VolumeName are the two variable components of the path.
	PodUID     string
	VolumeName string
}

// RelPath returns the target path relative to the kubelet directory.
func (t Target) RelPath() string {
	return filepath.Join(t.VolumeDirRel(), "mount")
}

// VolumeDirRel returns the parent of the target (kubelet creates it and keeps
// vol_data.json there), relative to the kubelet directory.
func (t Target) VolumeDirRel() string {
	return filepath.Join("pods", t.PodUID, "volumes", CSIPluginDir, t.VolumeName)
}

// PodVolumesRel returns "pods/<uid>/volumes" relative to the kubelet directory.
func PodVolumesRel(podUID string) string {
	return filepath.Join("pods", podUID, "volumes")
}

// EmptyDirRel returns the node path of a pod's emptyDir volume relative to the
// kubelet directory.
func EmptyDirRel(podUID, name string) string {
	return filepath.Join(PodVolumesRel(podUID), EmptyDirPluginDir, name)
}

// ParseTarget checks that target is exactly
// <kubeletDir>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount and returns
// its parts. kubeletDir must be absolute and clean.
func ParseTarget(kubeletDir, target string) (Target, error) {
	want := fmt.Sprintf("%s/pods/<pod-uid>/volumes/%s/<volume>/mount", kubeletDir, CSIPluginDir)
	if target == "" {
		return Target{}, fmt.Errorf("target path is empty")
	}
	if strings.IndexByte(target, 0) >= 0 {
		return Target{}, fmt.Errorf("target path %q contains a NUL byte", target)
	}
	if !filepath.IsAbs(target) || filepath.Clean(target) != target {
		return Target{}, fmt.Errorf("target path %q must be an absolute, clean path of the form %s", target, want)
	}
	prefix := kubeletDir + "/pods/"
	if kubeletDir == "/" {
		prefix = "/pods/"
	}
	rest, ok := strings.CutPrefix(target, prefix)
	if !ok {
		return Target{}, fmt.Errorf("target path %q is not under the kubelet directory; want %s", target, want)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "volumes" || parts[2] != CSIPluginDir || parts[4] != "mount" {
		return Target{}, fmt.Errorf("target path %q does not have the form %s", target, want)
	}
	if err := ValidatePodUID(parts[0]); err != nil {
		return Target{}, fmt.Errorf("target path %q: %w", target, err)
	}
	if err := validateVolumeName(parts[3]); err != nil {
		return Target{}, fmt.Errorf("target path %q: %w", target, err)
	}
	return Target{PodUID: parts[0], VolumeName: parts[3]}, nil
}

// ValidatePodUID accepts UUIDs and the hex hashes kubelet uses for static pods.
func ValidatePodUID(uid string) error {
	if uid == "" || len(uid) > maxPodUIDLen {
		return fmt.Errorf("pod uid %q must be 1 to %d characters", uid, maxPodUIDLen)
	}
	for _, c := range []byte(uid) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c == '-') {
			return fmt.Errorf("pod uid %q may contain only lowercase letters, digits and '-'", uid)
		}
	}
	return nil
}

// validateVolumeName accepts inline volume names (DNS-1123 labels) and PV
// names (DNS-1123 subdomains), which is what kubelet puts in the path.
func validateVolumeName(name string) error {
	if name == "" || len(name) > maxVolumeNameLen || name == "." || name == ".." {
		return fmt.Errorf("volume name %q must be a DNS-1123 subdomain of 1 to %d characters", name, maxVolumeNameLen)
	}
	for _, c := range []byte(name) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c == '-' || c == '.') {
			return fmt.Errorf("volume name %q may contain only lowercase letters, digits, '-' and '.'", name)
		}
	}
	return nil
}

// ValidateEmptyDirName checks a pod volume name: a DNS-1123 label, as the API
// server enforces for every volume of a pod. Anything else cannot name an
// emptyDir and could only be an attempt to escape it.
func ValidateEmptyDirName(name string) error {
	const rule = "must be the name of an emptyDir volume of this pod (a DNS-1123 label: 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
	if name == "" || len(name) > maxEmptyDirLen {
		return fmt.Errorf("%q %s", name, rule)
	}
	for i, c := range []byte(name) {
		alnum := c >= '0' && c <= '9' || c >= 'a' && c <= 'z'
		if !alnum && (c != '-' || i == 0 || i == len(name)-1) {
			return fmt.Errorf("%q %s", name, rule)
		}
	}
	return nil
}

// ValidateSocketName checks a socket file name: one plain path component made
// of [A-Za-z0-9._-], short enough to bind through /proc/self/fd.
func ValidateSocketName(name string) error {
	const rule = "must be a plain file name (1 to 80 characters from A-Z a-z 0-9 '.' '_' '-', not '.' or '..')"
	if name == "" || len(name) > MaxSocketNameLen || name == "." || name == ".." {
		return fmt.Errorf("%q %s", name, rule)
	}
	for _, c := range []byte(name) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%q %s", name, rule)
		}
	}
	return nil
}

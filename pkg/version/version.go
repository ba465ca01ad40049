// Package version reports the build's version.
package version

import "runtime/debug"

// Version is set at build time with
// -ldflags "-X github.com/pfnet-research/meta-fuse-csi-plugin/pkg/version.Version=v1.2.3".
var Version = ""

// Get returns Version, or what the Go toolchain recorded about the build.
func Get() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}

// Package integration runs the real driver and fuse-starter binaries the way
// kubelet and a pod would, with real FUSE programs (go-fuse's loopback
// example, sshfs) served by an unprivileged process. It needs root and
// /dev/fuse; elsewhere every test skips with the reason.
package integration

import (
	"testing"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

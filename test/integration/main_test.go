// Package integration runs the real driver and fuse-starter binaries the way
// kubelet and a pod would, with real FUSE programs (go-fuse's loopback
// example, sshfs) served by an unprivileged process. It needs root and
// /dev/fuse; elsewhere every test skips with the reason.
package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

func TestMain(m *testing.M) {
	if err := harness.SweepStale(); err != nil {
		fmt.Fprintln(os.Stderr, "sweeping leftovers of earlier runs:", err)
	}
	code := m.Run()
	if err := harness.CleanupBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, "removing test binaries:", err)
	}
	os.Exit(code)
}

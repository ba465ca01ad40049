// Package sanity runs csi-sanity (github.com/kubernetes-csi/csi-test/v5/pkg/sanity) against the
// real driver binary, on a kubelet directory of the test harness. It needs root and /dev/fuse
// like the integration tests; elsewhere it skips with the reason.
//
//	go test -count=1 -v ./test/sanity
package sanity

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

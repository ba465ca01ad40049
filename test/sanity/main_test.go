// Package sanity runs csi-sanity (github.com/kubernetes-csi/csi-test/v5/pkg/sanity) against the
// real driver binary, on a kubelet directory of the test harness. It needs root and /dev/fuse
// like the integration tests; elsewhere it skips with the reason.
//
//	go test -count=1 -v ./test/sanity
package sanity

import (
	"testing"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

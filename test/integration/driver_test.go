package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// --register-with-kubelet answers kubelet's plugin watcher; --probe is the
// liveness check of the DaemonSet.
func TestRegistrationAndProbe(t *testing.T) {
	e := setup(t, "--register-with-kubelet")
	sock := filepath.Join(e.k.Dir, "plugins_registry", harness.DriverName+"-reg.sock")
	for start := time.Now(); !exists(sock); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > waitLimit {
			t.Fatalf("no registration socket at %s", sock)
		}
	}
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	info, err := registerapi.NewRegistrationClient(conn).GetInfo(ctx(t), &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(e.k.Dir, "plugins", harness.DriverName, "csi.sock")
	if info.Name != harness.DriverName || info.Endpoint != want || info.Type != registerapi.CSIPlugin {
		t.Fatalf("GetInfo = %+v, want endpoint %s", info, want)
	}

	if out, err := exec.Command(e.bins.Driver, "--probe", "--endpoint", e.d.Endpoint).CombinedOutput(); err != nil {
		t.Fatalf("--probe against the running driver: %v\n%s", err, out)
	}
	if out, err := exec.Command(e.bins.Driver, "--probe", "--endpoint", "unix:"+filepath.Join(t.TempDir(), "none.sock")).CombinedOutput(); err == nil {
		t.Fatalf("--probe without a driver succeeded:\n%s", out)
	}

	e.d.Stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("registration socket left after the driver stopped: %v", err)
	}
}

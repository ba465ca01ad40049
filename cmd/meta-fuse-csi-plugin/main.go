// Command meta-fuse-csi-plugin is the privileged CSI node driver: it opens
// /dev/fuse and mounts FUSE on behalf of unprivileged pods.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/csidriver"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/logging"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/registration"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/version"
)

func main() {
	logFormat := logging.AddFlags(flag.CommandLine)
	endpoint := flag.String("endpoint", "unix:/csi/csi.sock", "CSI endpoint: unix:///path or unix:/path")
	nodeID := flag.String("nodeid", "", "the node's name (required)")
	kubeletDir := flag.String("kubelet-dir", "/var/lib/kubelet", "kubelet's root directory, as kubelet names it in target paths")
	stateDir := flag.String("state-dir", "", "where the driver records published volumes to serve them after a restart (default <kubelet-dir>/plugins/"+csidriver.DriverName+"/state)")
	handshake := flag.Duration("handshake-timeout", 0, "how long a connected FUSE process may take to send its request (default 10s)")
	pending := flag.Duration("pending-timeout", 10*time.Minute, "how long a published volume's socket waits for its FUSE process to connect for the first time; then the socket is closed, and kubelet's next NodePublishVolume reports why in the pod's events and makes it again (0: wait forever)")
	metricsAddr := flag.String("metrics-address", "", "serve Prometheus metrics on this host:port at /metrics (off when empty)")
	register := flag.Bool("register-with-kubelet", false, "register with kubelet's plugin watcher directly (instead of the node-driver-registrar sidecar)")
	regPath := flag.String("kubelet-registration-path", "", "with --register-with-kubelet: the CSI socket's path as kubelet sees it (default <kubelet-dir>/plugins/"+csidriver.DriverName+"/csi.sock)")
	probe := flag.Bool("probe", false, "check that the driver at --endpoint answers a CSI Probe, and exit 0 if so (for a liveness probe)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if err := logging.Apply(flag.CommandLine, *logFormat); err != nil {
		klog.ErrorS(err, "bad flag")
		klog.FlushAndExit(klog.ExitFlushTimeout, 2)
	}
	if *pending < 0 {
		klog.ErrorS(nil, "--pending-timeout must not be negative", "value", *pending)
		klog.FlushAndExit(klog.ExitFlushTimeout, 2)
	}
	if *showVersion {
		os.Stdout.WriteString(version.Get() + "\n")
		return
	}
	if *probe {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := csidriver.ProbeEndpoint(ctx, *endpoint); err != nil {
			klog.ErrorS(err, "probe failed", "endpoint", *endpoint)
			klog.FlushAndExit(klog.ExitFlushTimeout, 1)
		}
		return
	}
	if *nodeID == "" {
		klog.ErrorS(nil, "--nodeid is required")
		klog.FlushAndExit(klog.ExitFlushTimeout, 2)
	}

	d, err := csidriver.New(csidriver.Config{
		NodeID: *nodeID, Version: version.Get(), KubeletDir: *kubeletDir,
		StateDir: *stateDir, HandshakeTimeout: *handshake, PendingTimeout: *pending,
		EnableMetrics: *metricsAddr != "",
	})
	if err != nil {
		klog.ErrorS(err, "starting the driver")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	d.Recover()

	errs := make(chan error, 3)
	go func() { errs <- d.Serve(ctx, *endpoint) }()
	if *metricsAddr != "" {
		go func() { errs <- d.Metrics().Serve(ctx, *metricsAddr) }()
	}
	if *register {
		path := *regPath
		if path == "" {
			path = filepath.Join(*kubeletDir, "plugins", csidriver.DriverName, "csi.sock")
		}
		reg := &registration.Server{DriverName: csidriver.DriverName, Endpoint: path}
		go func() { errs <- reg.Serve(ctx, registration.SocketPath(*kubeletDir, csidriver.DriverName)) }()
	}
	err = <-errs
	cancel()
	d.Close()
	if err != nil {
		klog.ErrorS(err, "driver stopped")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.InfoS("driver stopped; mounts stay for their pods")
	klog.Flush()
}

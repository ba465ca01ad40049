// Command meta-fuse-csi-plugin is the privileged CSI node driver: it opens
// /dev/fuse and mounts FUSE on behalf of unprivileged pods.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/csidriver"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/version"
)

func main() {
	klog.InitFlags(nil)
	endpoint := flag.String("endpoint", "unix:/csi/csi.sock", "CSI endpoint: unix:///path or unix:/path")
	nodeID := flag.String("nodeid", "", "the node's name (required)")
	kubeletDir := flag.String("kubelet-dir", "/var/lib/kubelet", "kubelet's root directory, as kubelet names it in target paths")
	stateDir := flag.String("state-dir", "", "where the driver records published volumes to serve them after a restart (default <kubelet-dir>/plugins/"+csidriver.DriverName+"/state)")
	handshake := flag.Duration("handshake-timeout", 0, "how long a connected FUSE process may take to send its request (default 10s)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		os.Stdout.WriteString(version.Get() + "\n")
		return
	}
	if *nodeID == "" {
		klog.ErrorS(nil, "--nodeid is required")
		klog.FlushAndExit(klog.ExitFlushTimeout, 2)
	}

	d, err := csidriver.New(csidriver.Config{
		NodeID: *nodeID, Version: version.Get(), KubeletDir: *kubeletDir,
		StateDir: *stateDir, HandshakeTimeout: *handshake,
	})
	if err != nil {
		klog.ErrorS(err, "starting the driver")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	d.Recover()
	err = d.Serve(ctx, *endpoint)
	d.Close()
	if err != nil {
		klog.ErrorS(err, "driver stopped")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.InfoS("driver stopped; mounts stay for their pods")
	klog.Flush()
}

// Command csistub is a minimal CSI node plugin (Identity plus NodeGetInfo/NodeGetCapabilities)
// taking the same command-line flags as meta-fuse-csi-plugin. The harness's own tests use it
// to exercise StartDriver, Kill, Stop and Restart without depending on the real driver.
//
// It removes a stale socket file at start (as a driver restarted on a node must) and exits 0
// on SIGTERM after stopping the gRPC server.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

type identity struct {
	csi.UnimplementedIdentityServer
}

func (identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: "csistub.test", VendorVersion: "0"}, nil
}

func (identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

func (identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

type node struct {
	csi.UnimplementedNodeServer
	nodeID string
}

func (n node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: n.nodeID}, nil
}

func (node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func main() {
	endpoint := flag.String("endpoint", "", "unix:PATH")
	nodeID := flag.String("nodeid", "", "node id")
	flag.String("kubelet-dir", "/var/lib/kubelet", "kubelet root (unused)")
	flag.Int("v", 0, "verbosity (unused)")
	flag.Parse()
	path, ok := strings.CutPrefix(*endpoint, "unix:")
	if !ok || path == "" {
		fmt.Fprintf(os.Stderr, "csistub: --endpoint must be unix:PATH, got %q\n", *endpoint)
		os.Exit(2)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		fmt.Fprintf(os.Stderr, "csistub: removing stale socket: %v\n", err)
		os.Exit(1)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "csistub: %v\n", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, identity{})
	csi.RegisterNodeServer(srv, node{nodeID: *nodeID})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "csistub: got %v, stopping\n", s)
		srv.GracefulStop()
	}()
	fmt.Fprintf(os.Stderr, "csistub: serving on %s (node %s)\n", path, *nodeID)
	if err := srv.Serve(l); err != nil {
		fmt.Fprintf(os.Stderr, "csistub: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "csistub: stopped")
}

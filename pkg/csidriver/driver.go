// Package csidriver is the CSI node service of meta-fuse-csi-plugin: it
// validates what kubelet sends, prepares the target and a socket in the pod's
// emptyDir, and mounts FUSE for the pod's FUSE process when it connects.
package csidriver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/klog/v2"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fusemount"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/metrics"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/safefs"
)

// DriverName is the CSI driver name users put in their pods.
const DriverName = "meta-fuse-csi-plugin.csi.storage.pfn.io"

// Config configures a Driver.
type Config struct {
	NodeID  string
	Version string
	// KubeletDir is kubelet's root directory as kubelet names it in target paths.
	KubeletDir string
	// StateDir holds the driver's record of published volumes.
	StateDir string
	// HandshakeTimeout bounds how long a pod-side client may take to send
	// its request once connected.
	HandshakeTimeout time.Duration
	// PendingTimeout bounds how long a published volume waits for its FUSE
	// process to connect for the first time; 0 waits forever.
	PendingTimeout time.Duration
	// EnableMetrics makes the driver record Prometheus metrics (Metrics).
	EnableMetrics bool
}

// DefaultStateDir is the state directory for a kubelet directory.
func DefaultStateDir(kubeletDir string) string {
	return filepath.Join(kubeletDir, "plugins", DriverName, "state")
}

// Driver implements the CSI Identity and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedNodeServer

	cfg Config
	m   *metrics.Metrics
	// kubeletReal is KubeletDir with symlinks resolved: the mount table
	// shows real paths.
	kubeletReal string
	kubelet     *safefs.Dir
	unmounter   fusemount.Unmounter
	state       *stateStore
	locks       keyedLocks

	mu      sync.Mutex
	volumes map[string]*volume // by target path
}

// New checks the configuration and opens what the driver works in.
func New(cfg Config) (*Driver, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("node ID is required")
	}
	if !filepath.IsAbs(cfg.KubeletDir) || filepath.Clean(cfg.KubeletDir) != cfg.KubeletDir {
		return nil, fmt.Errorf("kubelet directory %q must be an absolute, clean path", cfg.KubeletDir)
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir(cfg.KubeletDir)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	real, err := filepath.EvalSymlinks(cfg.KubeletDir)
	if err != nil {
		return nil, fmt.Errorf("kubelet directory: %w", err)
	}
	kd, err := safefs.OpenRoot(real)
	if err != nil {
		return nil, fmt.Errorf("kubelet directory: %w", err)
	}
	st, err := newStateStore(cfg.StateDir)
	if err != nil {
		kd.Close()
		return nil, err
	}
	d := &Driver{cfg: cfg, kubeletReal: real, kubelet: kd, state: st, volumes: map[string]*volume{}}
	if cfg.EnableMetrics {
		d.m = metrics.New(d.VolumeCounts)
	}
	if dir, err := fusemount.EnsureFusectl(); err != nil {
		klog.ErrorS(err, "fusectl is not available: unpublishing a volume whose FUSE server is stopped will detach the mount, but processes blocked on it stay blocked until the server resumes or dies")
	} else {
		d.unmounter.FusectlDir = dir
	}
	return d, nil
}

// Metrics is the driver's metrics, nil unless Config.EnableMetrics.
func (d *Driver) Metrics() *metrics.Metrics { return d.m }

// VolumeCounts counts the published, pending and mounted volumes (for the
// metrics' gauges).
func (d *Driver) VolumeCounts() metrics.VolumeCounts {
	d.mu.Lock()
	vols := make([]*volume, 0, len(d.volumes))
	for _, v := range d.volumes {
		vols = append(vols, v)
	}
	d.mu.Unlock()
	c := metrics.VolumeCounts{Published: len(vols)}
	for _, v := range vols {
		v.mu.Lock()
		if v.mounted {
			c.Mounted++
		}
		if !v.connected && !v.closing { // listening, never connected
			c.Pending++
		}
		v.mu.Unlock()
	}
	return c
}

// realTarget is the target path as the mount table shows it.
func (d *Driver) realTarget(rel string) string {
	return filepath.Join(d.kubeletReal, rel)
}

// Serve serves CSI on the Unix socket endpoint until ctx ends.
func (d *Driver) Serve(ctx context.Context, endpoint string) error {
	path, err := ParseEndpoint(endpoint)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("creating the endpoint's directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("endpoint %s exists and is not a socket", path)
		}
		os.Remove(path) // a stale socket of a previous run
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", path, err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	klog.InfoS("serving CSI", "endpoint", path, "driver", DriverName, "version", d.cfg.Version, "node", d.cfg.NodeID, "kubeletDir", d.cfg.KubeletDir)
	if err := srv.Serve(l); err != nil {
		return fmt.Errorf("serving CSI: %w", err)
	}
	return nil
}

// Close stops accepting pod connections. Mounts stay: the pods keep using
// them while the driver restarts.
func (d *Driver) Close() {
	d.mu.Lock()
	vols := make([]*volume, 0, len(d.volumes))
	for _, v := range d.volumes {
		vols = append(vols, v)
	}
	d.mu.Unlock()
	for _, v := range vols {
		v.stop()
	}
	d.kubelet.Close()
}

// ParseEndpoint accepts unix:///path and unix:/path.
func ParseEndpoint(ep string) (string, error) {
	rest, ok := strings.CutPrefix(ep, "unix:")
	if !ok {
		return "", fmt.Errorf("endpoint %q must be unix:///path or unix:/path", ep)
	}
	if strings.HasPrefix(rest, "//") {
		rest = rest[2:]
	}
	if !filepath.IsAbs(rest) {
		return "", fmt.Errorf("endpoint %q must name an absolute socket path", ep)
	}
	return filepath.Clean(rest), nil
}

// logCalls logs every CSI call and its outcome, with secrets removed.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	if klog.V(5).Enabled() {
		klog.V(5).InfoS("CSI request", "method", info.FullMethod, "request", protosanitizer.StripSecrets(sanitize(req)))
	}
	resp, err := handler(ctx, req)
	if err != nil {
		klog.V(2).InfoS("CSI call failed", "method", info.FullMethod, "code", status.Code(err).String(), "err", err, "duration", time.Since(start))
	} else {
		klog.V(4).InfoS("CSI call done", "method", info.FullMethod, "duration", time.Since(start))
	}
	return resp, err
}

// sanitize drops the service account tokens kubelet may put in the volume
// context; protosanitizer only knows fields marked as secrets.
func sanitize(req any) any {
	p, ok := req.(*csi.NodePublishVolumeRequest)
	if !ok || p.GetVolumeContext()[ctxTokens] == "" {
		return req
	}
	c := proto.Clone(p).(*csi.NodePublishVolumeRequest)
	c.VolumeContext[ctxTokens] = "***stripped***"
	return c
}

// ProbeEndpoint calls Probe on the driver at endpoint: what a liveness probe
// runs (the driver image has no shell and needs no open port).
func ProbeEndpoint(ctx context.Context, endpoint string) error {
	path, err := ParseEndpoint(endpoint)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix:"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return err
	}
	if r := resp.GetReady(); r != nil && !r.GetValue() {
		return errors.New("driver reports not ready")
	}
	return nil
}

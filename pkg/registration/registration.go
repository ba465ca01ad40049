// Package registration registers the driver with kubelet through kubelet's
// plugin-registration API, as the node-driver-registrar sidecar does: kubelet
// watches <kubelet-dir>/plugins_registry for sockets, asks the plugin for its
// name and CSI endpoint, and reports back whether it accepted it.
//
// Clusters normally run the standard node-driver-registrar sidecar; this is
// for clusters where that image is not available (the project's local
// cluster), enabled by a flag.
package registration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Server answers kubelet's plugin watcher.
type Server struct {
	registerapi.UnimplementedRegistrationServer

	// DriverName and Endpoint (the CSI socket's path as kubelet sees it) are
	// what kubelet gets.
	DriverName string
	Endpoint   string

	mu         sync.Mutex
	registered bool
	lastErr    string
}

// GetInfo tells kubelet who we are.
func (s *Server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.DriverName,
		Endpoint:          s.Endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

// NotifyRegistrationStatus records kubelet's verdict.
func (s *Server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.registered = st.PluginRegistered
	s.lastErr = st.Error
	if st.PluginRegistered {
		klog.InfoS("kubelet registered the driver", "driver", s.DriverName, "endpoint", s.Endpoint)
	} else {
		klog.ErrorS(errors.New(st.Error), "kubelet refused to register the driver", "driver", s.DriverName, "endpoint", s.Endpoint)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Registered reports kubelet's last verdict.
func (s *Server) Registered() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.registered, s.lastErr
}

// SocketPath is where kubelet's plugin watcher looks for the driver.
func SocketPath(kubeletDir, driverName string) string {
	return filepath.Join(kubeletDir, "plugins_registry", driverName+"-reg.sock")
}

// Serve listens on socketPath until ctx ends, then removes the socket so
// kubelet deregisters the driver.
func (s *Server) Serve(ctx context.Context, socketPath string) error {
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o750); err != nil {
		return fmt.Errorf("creating the plugin registration directory: %w", err)
	}
	if fi, err := os.Lstat(socketPath); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("%s exists and is not a socket", socketPath)
		}
		os.Remove(socketPath)
	}
	l, err := net.Listen("unix", socketPath)
	if err != nil {
		return fmt.Errorf("listening for kubelet's plugin watcher: %w", err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, s)
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	klog.InfoS("waiting for kubelet to register the driver", "registrationSocket", socketPath, "endpoint", s.Endpoint)
	err = srv.Serve(l)
	os.Remove(socketPath)
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("serving kubelet's plugin watcher: %w", err)
	}
	return nil
}

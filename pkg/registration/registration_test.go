package registration

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Plays kubelet's plugin watcher: GetInfo, then NotifyRegistrationStatus.
func TestKubeletHandshake(t *testing.T) {
	dir := t.TempDir()
	sock := SocketPath(dir, "example.csi.io")
	s := &Server{DriverName: "example.csi.io", Endpoint: "/var/lib/kubelet/plugins/example.csi.io/csi.sock"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, sock) }()

	var conn *grpc.ClientConn
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("registration socket did not appear")
		}
	}
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := registerapi.NewRegistrationClient(conn)
	info, err := c.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "example.csi.io" || info.Endpoint != s.Endpoint || len(info.SupportedVersions) == 0 {
		t.Fatalf("GetInfo = %+v", info)
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "nope"}); err != nil {
		t.Fatal(err)
	}
	if ok, msg := s.Registered(); ok || msg != "nope" {
		t.Fatalf("Registered() = %v, %q", ok, msg)
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Registered(); !ok {
		t.Fatal("not registered")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
	if filepath.Base(filepath.Dir(sock)) != "plugins_registry" {
		t.Fatalf("socket %s not in plugins_registry", sock)
	}
}

package metrics

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.Publish("OK", time.Millisecond)
	m.Unpublish("OK", time.Millisecond)
	m.Handover(true)
	m.Refused(ReasonBadRequest)
	m.Aborted(CauseUnpublish, 1)
	m.Recovered()
	m.Covered()
	m.PendingTimeout()
}

func TestRecordAndServe(t *testing.T) {
	m := New(func() VolumeCounts { return VolumeCounts{Published: 3, Pending: 1, Mounted: 2} })
	m.Publish("OK", 3*time.Millisecond)
	m.Publish("InvalidArgument", time.Millisecond)
	m.Unpublish("OK", time.Millisecond)
	m.Handover(true)
	m.Handover(false)
	m.Refused(ReasonAlreadyServed)
	m.Aborted(CauseUnpublish, 2)
	m.Aborted(CauseFusermount, 0)
	m.Recovered()

	if got := testutil.ToFloat64(m.handovers.WithLabelValues("ok")); got != 1 {
		t.Errorf("handovers ok = %v", got)
	}
	if got := testutil.ToFloat64(m.aborted.WithLabelValues(CauseUnpublish)); got != 2 {
		t.Errorf("aborted unpublish = %v", got)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, addr) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	var body string
	for i := 0; i < 100; i++ {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{
		`mfcp_node_publish_duration_seconds_count{code="OK"} 1`,
		`mfcp_node_publish_duration_seconds_count{code="InvalidArgument"} 1`,
		`mfcp_node_unpublish_duration_seconds_count{code="OK"} 1`,
		`mfcp_fd_handovers_total{result="failed"} 1`,
		`mfcp_connections_refused_total{reason="already_served"} 1`,
		`mfcp_connections_refused_total{reason="bad_request"} 0`,
		`mfcp_aborted_connections_total{cause="fusermount_unmount"} 0`,
		`mfcp_recoveries_total 1`,
		`mfcp_volumes_published 3`,
		`mfcp_pending_listeners 1`,
		`mfcp_active_mounts 2`,
		`go_goroutines `,
		`process_open_fds `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestServeBadAddress(t *testing.T) {
	m := New(func() VolumeCounts { return VolumeCounts{} })
	if err := m.Serve(context.Background(), "not-an-address"); err == nil || !strings.Contains(err.Error(), "not-an-address") {
		t.Fatalf("got %v", err)
	}
}

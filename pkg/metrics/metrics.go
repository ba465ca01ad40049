// Package metrics holds the driver's Prometheus metrics and serves them. A nil
// *Metrics records nothing, so the driver needs no checks when metrics are off.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// Namespace prefixes every metric of the driver.
const Namespace = "mfcp"

// VolumeCounts are the gauges read from the driver at scrape time.
type VolumeCounts struct {
	// Published volumes: NodePublishVolume done, NodeUnpublishVolume not yet.
	Published int
	// Pending volumes listen for a FUSE process that has not connected yet.
	Pending int
	// Mounted volumes have a FUSE mount handed over to a live server.
	Mounted int
}

// Metrics are the driver's collectors on their own registry (with the Go
// runtime and process collectors), so nothing global leaks in.
type Metrics struct {
	Registry *prometheus.Registry

	publish    *prometheus.HistogramVec
	unpublish  *prometheus.HistogramVec
	handovers  *prometheus.CounterVec
	refused    *prometheus.CounterVec
	aborted    *prometheus.CounterVec
	recoveries prometheus.Counter
	covered    prometheus.Counter
	timeouts   prometheus.Counter
}

// New registers the metrics; counts is called at each scrape.
func New(counts func() VolumeCounts) *Metrics {
	// Publish is a few ms; anything past a second is a stuck filesystem.
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		publish: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "node_publish_duration_seconds",
			Help:    "NodePublishVolume calls by gRPC result code, and how long they took.",
			Buckets: buckets,
		}, []string{"code"}),
		unpublish: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "node_unpublish_duration_seconds",
			Help:    "NodeUnpublishVolume calls by gRPC result code, and how long they took.",
			Buckets: buckets,
		}, []string{"code"}),
		handovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "fd_handovers_total",
			Help: "FUSE mounts made for a connected FUSE process, by result: ok (fd handed over) or failed (mount or send failed).",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "connections_refused_total",
			Help: "Connections on fd-passing sockets refused before mounting, by reason: bad_request (garbage, oversized, too slow), bad_options, already_served.",
		}, []string{"reason"}),
		aborted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "aborted_connections_total",
			Help: "FUSE connections the driver ended, by cause: unpublish, fusermount_unmount (the FUSE program asked), handover_failed.",
		}, []string{"cause"}),
		recoveries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "recoveries_total",
			Help: "Fresh FUSE mounts stacked over a dead one for a reconnected (restarted) FUSE process.",
		}),
		covered: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "dead_mounts_covered_total",
			Help: "Dead FUSE mounts covered with a placeholder until the FUSE container reconnects.",
		}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "pending_timeouts_total",
			Help: "Published volumes whose FUSE process did not connect within --connect-timeout.",
		}),
	}
	gauge := func(name, help string, f func(VolumeCounts) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help},
			func() float64 { return float64(f(counts())) })
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.publish, m.unpublish, m.handovers, m.refused, m.aborted, m.recoveries, m.covered, m.timeouts,
		gauge("volumes_published", "Volumes published on this node.", func(c VolumeCounts) int { return c.Published }),
		gauge("pending_listeners", "Published volumes whose FUSE process has not connected yet.", func(c VolumeCounts) int { return c.Pending }),
		gauge("active_mounts", "Volumes with a FUSE mount handed over to a live FUSE server.", func(c VolumeCounts) int { return c.Mounted }),
	)
	// Zero series exist from the start, so rate() and alerts see them.
	for _, r := range []string{"ok", "failed"} {
		m.handovers.WithLabelValues(r)
	}
	for _, r := range []string{ReasonBadRequest, ReasonBadOptions, ReasonAlreadyServed} {
		m.refused.WithLabelValues(r)
	}
	for _, c := range []string{CauseUnpublish, CauseFusermount, CauseHandoverFailed} {
		m.aborted.WithLabelValues(c)
	}
	return m
}

// Reasons for a refused connection and causes of an aborted one.
const (
	ReasonBadRequest    = "bad_request"
	ReasonBadOptions    = "bad_options"
	ReasonAlreadyServed = "already_served"

	CauseUnpublish      = "unpublish"
	CauseFusermount     = "fusermount_unmount"
	CauseHandoverFailed = "handover_failed"
)

// Publish records a NodePublishVolume call.
func (m *Metrics) Publish(code string, d time.Duration) {
	if m != nil {
		m.publish.WithLabelValues(code).Observe(d.Seconds())
	}
}

// Unpublish records a NodeUnpublishVolume call.
func (m *Metrics) Unpublish(code string, d time.Duration) {
	if m != nil {
		m.unpublish.WithLabelValues(code).Observe(d.Seconds())
	}
}

// Handover records a mount made for a FUSE process.
func (m *Metrics) Handover(ok bool) {
	if m != nil {
		r := "failed"
		if ok {
			r = "ok"
		}
		m.handovers.WithLabelValues(r).Inc()
	}
}

// Refused records a connection refused before mounting.
func (m *Metrics) Refused(reason string) {
	if m != nil {
		m.refused.WithLabelValues(reason).Inc()
	}
}

// Aborted records n FUSE connections ended by the driver.
func (m *Metrics) Aborted(cause string, n int) {
	if m != nil && n > 0 {
		m.aborted.WithLabelValues(cause).Add(float64(n))
	}
}

// Recovered records a mount stacked over a dead one.
func (m *Metrics) Recovered() {
	if m != nil {
		m.recoveries.Inc()
	}
}

// Covered records a dead mount covered with a placeholder.
func (m *Metrics) Covered() {
	if m != nil {
		m.covered.Inc()
	}
}

// PendingTimeout records a volume whose FUSE process never connected.
func (m *Metrics) PendingTimeout() {
	if m != nil {
		m.timeouts.Inc()
	}
}

// Serve serves /metrics on addr (host:port) until ctx ends. It returns once
// listening fails or the server stops.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listening on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	klog.InfoS("serving metrics", "address", l.Addr().String(), "path", "/metrics")
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

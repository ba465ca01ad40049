package harness

import (
	"os"
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader(`# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 15
mfcp_fd_handovers_total{result="ok"} 3
mfcp_node_publish_duration_seconds_bucket{code="OK",le="+Inf"} 2
not a sample line
`))
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]float64{
		"go_goroutines": 15, `mfcp_fd_handovers_total{result="ok"}`: 3,
		`mfcp_node_publish_duration_seconds_bucket{code="OK",le="+Inf"}`: 2,
	} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
	if len(m) != 3 {
		t.Errorf("got %d series: %v", len(m), m)
	}
}

func TestStatusFieldAndProcStatus(t *testing.T) {
	status := []byte("Name:\tx\nThreads:\t7\nVmRSS:\t  18672 kB\n")
	for _, tc := range []struct {
		field string
		want  int64
		ok    bool
	}{{"Threads", 7, true}, {"VmRSS", 18672, true}, {"VmHWM", 0, false}, {"Name", 0, false}} {
		if n, ok := StatusField(status, tc.field); n != tc.want || ok != tc.ok {
			t.Errorf("%s: %d, %v; want %d, %v", tc.field, n, ok, tc.want, tc.ok)
		}
	}
	if n, err := ProcStatus(os.Getpid(), "Threads"); err != nil || n < 1 {
		t.Errorf("ProcStatus(self, Threads) = %d, %v", n, err)
	}
	if n, err := FDCount(os.Getpid()); err != nil || n < 3 {
		t.Errorf("FDCount(self) = %d, %v", n, err)
	}
}

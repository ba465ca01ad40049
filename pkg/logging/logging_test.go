package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"

	"github.com/go-logr/logr"
)

func TestJSONHandler(t *testing.T) {
	var buf bytes.Buffer
	log := logr.FromSlogHandler(NewJSONHandler(&buf, 2))
	log.Info("published volume", "pod", "ns/p", "volume", "v")
	log.V(2).Info("detail", "k", 1)
	log.V(3).Info("dropped above -v")
	log.Error(errors.New("boom"), "failed", "target", "/t")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(lines), buf.String())
	}
	tests := []struct {
		want   map[string]any
		absent []string
	}{
		{map[string]any{"msg": "published volume", "v": 0.0, "pod": "ns/p", "volume": "v"}, []string{"level", "time"}},
		{map[string]any{"msg": "detail", "v": 2.0, "k": 1.0}, nil},
		{map[string]any{"msg": "failed", "err": "boom", "target": "/t"}, []string{"v", "level"}},
	}
	for i, tc := range tests {
		var got map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &got); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i, err, lines[i])
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("line %d: %s = %v, want %v (%s)", i, k, got[k], v, lines[i])
			}
		}
		for _, k := range tc.absent {
			if _, ok := got[k]; ok {
				t.Errorf("line %d has %q: %s", i, k, lines[i])
			}
		}
		if ts, ok := got["ts"].(float64); !ok || ts < 1e9 {
			t.Errorf("line %d: ts %v", i, got["ts"])
		}
		if c, _ := got["caller"].(string); !strings.Contains(c, "logging/logging_test.go:") {
			t.Errorf("line %d: caller %q", i, got["caller"])
		}
	}
	_ = slog.LevelInfo
}

func TestApplyRejectsUnknownFormat(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	if err := Apply(fs, "yaml"); err == nil || !strings.Contains(err.Error(), "yaml") {
		t.Fatalf("got %v", err)
	}
	if err := Apply(fs, "text"); err != nil {
		t.Fatal(err)
	}
}

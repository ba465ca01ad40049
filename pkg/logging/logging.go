// Package logging sets up the binaries' klog output: klog's text format, or
// JSON lines shaped like Kubernetes components' (--logging-format=json) for
// log pipelines that index fields.
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"k8s.io/klog/v2"
)

// Formats are the values --logging-format takes.
var Formats = []string{"text", "json"}

// AddFlags registers klog's flags and --logging-format on fs.
func AddFlags(fs *flag.FlagSet) *string {
	klog.InitFlags(fs)
	return fs.String("logging-format", "text", "log format: text (klog) or json (one JSON object per line, with ts, caller, msg, v and the line's key/value pairs)")
}

// Apply switches klog to format, keeping klog's -v verbosity. Call it after
// flags are parsed.
func Apply(fs *flag.FlagSet, format string) error {
	switch format {
	case "text", "":
		return nil
	case "json":
		v := 0
		if f := fs.Lookup("v"); f != nil {
			v, _ = strconv.Atoi(f.Value.String())
		}
		klog.SetSlogLogger(slog.New(NewJSONHandler(os.Stderr, v)))
		return nil
	default:
		return fmt.Errorf("--logging-format %q is not one of %v", format, Formats)
	}
}

// NewJSONHandler writes one JSON object per line: "ts" (Unix seconds with
// fractions), "caller", "msg", "v" (the verbosity of info lines) or "err"
// for error lines, and the line's key/value pairs. Lines above verbosity v
// are dropped.
func NewJSONHandler(w io.Writer, v int) slog.Handler {
	return slog.NewJSONHandler(w, &slog.HandlerOptions{
		AddSource: true,
		// logr maps V(n) to slog level -n; errors are slog's ERROR.
		Level: slog.Level(-v),
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				t := a.Value.Time()
				return slog.Float64("ts", float64(t.UnixNano())/float64(time.Second))
			case slog.SourceKey:
				if src, ok := a.Value.Any().(*slog.Source); ok {
					return slog.String("caller", fmt.Sprintf("%s:%d", shortFile(src.File), src.Line))
				}
			case slog.LevelKey:
				lvl := a.Value.Any().(slog.Level)
				if lvl >= slog.LevelError {
					return slog.Attr{} // error lines carry "err" instead
				}
				if lvl > 0 {
					lvl = 0
				}
				return slog.Int("v", int(-lvl))
			}
			return a
		},
	})
}

// shortFile keeps the package directory and file name, as klog's text does.
func shortFile(f string) string {
	n := 0
	for i := len(f) - 1; i >= 0; i-- {
		if f[i] == '/' {
			n++
			if n == 2 {
				return f[i+1:]
			}
		}
	}
	return f
}

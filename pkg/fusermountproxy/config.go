package fusermountproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
)

// Settings, read from the environment (see Lookup).
const (
	EnvSocketPath     = "FUSERMOUNT3PROXY_FDPASSING_SOCKPATH"
	EnvLogPath        = "FUSERMOUNT3PROXY_LOG"
	EnvConnectTimeout = "FUSERMOUNT3PROXY_CONNECT_TIMEOUT"
	// DefaultConfigFile is read last; an image can bake the settings in.
	DefaultConfigFile = "/etc/fusermount3-proxy.conf"
	maxEnvironSize    = 1 << 20
)

// Lookup finds a setting. Some callers clear the helper's environment
// (go-fuse keeps only _FUSE_COMMFD), so after the proxy's own environment it
// looks in its parent's, the FUSE program's, which still holds what the
// container was started with, and finally in the configuration file.
type Lookup struct {
	Getenv     func(string) string
	ParentEnv  func() ([]byte, error)
	ConfigFile string
}

// DefaultLookup reads the real environment, /proc/<ppid>/environ and
// DefaultConfigFile.
func DefaultLookup() *Lookup {
	return &Lookup{
		Getenv: os.Getenv,
		ParentEnv: func() ([]byte, error) {
			return readBounded(fmt.Sprintf("/proc/%d/environ", os.Getppid()))
		},
		ConfigFile: DefaultConfigFile,
	}
}

// Get returns the value of key and where it was found.
func (l *Lookup) Get(key string) (value, source string) {
	if v := l.Getenv(key); v != "" {
		return v, "environment"
	}
	if l.ParentEnv != nil {
		if b, err := l.ParentEnv(); err == nil {
			if v := environValue(b, key); v != "" {
				return v, "parent's environment"
			}
		}
	}
	if l.ConfigFile != "" {
		if b, err := readBounded(l.ConfigFile); err == nil {
			if v := configValue(b, key); v != "" {
				return v, l.ConfigFile
			}
		}
	}
	return "", ""
}

func readBounded(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxEnvironSize))
}

// environValue reads key from a NUL-separated environ block.
func environValue(b []byte, key string) string {
	prefix := []byte(key + "=")
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, prefix); ok {
			return string(v)
		}
	}
	return ""
}

// configValue reads key from KEY=VALUE lines; # starts a comment line.
func configValue(b []byte, key string) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

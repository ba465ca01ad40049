package fusermountproxy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// envFunc is a Getenv over a fixed map.
func envFunc(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func noEnv(string) string { return "" }

const parentEnviron = "A=1\x00FUSERMOUNT3PROXY_FDPASSING_SOCKPATH=/x/y.sock\x00"

func parentEnv(b string) func() ([]byte, error) {
	return func() ([]byte, error) { return []byte(b), nil }
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fusermount3-proxy.conf")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const configWithComments = "# fusermount3-proxy settings baked into the image\n" +
	"   # an indented comment: FUSERMOUNT3PROXY_FDPASSING_SOCKPATH=/commented/out.sock\n" +
	"\n" +
	"FUSERMOUNT3PROXY_FDPASSING_SOCKPATH_OTHER=/not/this.sock\n" +
	"\t FUSERMOUNT3PROXY_FDPASSING_SOCKPATH  =   /conf/fuse.sock \t \n" +
	"FUSERMOUNT3PROXY_LOG=/var/log/fusermount3-proxy.log\n" +
	"FUSERMOUNT3PROXY_FDPASSING_SOCKPATH=/second/one.sock\n"

func TestLookup(t *testing.T) {
	conf := writeConfig(t, configWithComments)
	for _, tc := range []struct {
		name       string
		lookup     *Lookup
		key        string
		want, from string
	}{
		{
			name: "own environment wins over parent and config",
			lookup: &Lookup{
				Getenv:     envFunc(map[string]string{EnvSocketPath: "/own/env.sock"}),
				ParentEnv:  parentEnv(parentEnviron),
				ConfigFile: conf,
			},
			key: EnvSocketPath, want: "/own/env.sock", from: "environment",
		},
		{
			name: "parent's environ block when the own environment is empty (go-fuse)",
			lookup: &Lookup{
				Getenv:     noEnv,
				ParentEnv:  parentEnv(parentEnviron),
				ConfigFile: conf,
			},
			key: EnvSocketPath, want: "/x/y.sock", from: "parent's environment",
		},
		{
			name: "parent's environ block without the trailing NUL",
			lookup: &Lookup{
				Getenv:    noEnv,
				ParentEnv: parentEnv("FUSERMOUNT3PROXY_FDPASSING_SOCKPATH=/x/z.sock"),
			},
			key: EnvSocketPath, want: "/x/z.sock", from: "parent's environment",
		},
		{
			name: "a longer name in the parent's environ does not match",
			lookup: &Lookup{
				Getenv:    noEnv,
				ParentEnv: parentEnv("FUSERMOUNT3PROXY_FDPASSING_SOCKPATHX=/no\x00XFUSERMOUNT3PROXY_FDPASSING_SOCKPATH=/no\x00"),
			},
			key: EnvSocketPath,
		},
		{
			name: "config file with comments and spaces",
			lookup: &Lookup{
				Getenv:     noEnv,
				ParentEnv:  parentEnv("A=1\x00"),
				ConfigFile: conf,
			},
			key: EnvSocketPath, want: "/conf/fuse.sock", from: conf,
		},
		{
			name:   "config file, other key",
			lookup: &Lookup{Getenv: noEnv, ConfigFile: conf},
			key:    EnvLogPath, want: "/var/log/fusermount3-proxy.log", from: conf,
		},
		{
			name: "parent environ unreadable: config file",
			lookup: &Lookup{
				Getenv:     noEnv,
				ParentEnv:  func() ([]byte, error) { return nil, errors.New("permission denied") },
				ConfigFile: conf,
			},
			key: EnvSocketPath, want: "/conf/fuse.sock", from: conf,
		},
		{
			name: "empty values count as unset",
			lookup: &Lookup{
				Getenv:     envFunc(map[string]string{EnvSocketPath: ""}),
				ParentEnv:  parentEnv("FUSERMOUNT3PROXY_FDPASSING_SOCKPATH=\x00"),
				ConfigFile: conf,
			},
			key: EnvSocketPath, want: "/conf/fuse.sock", from: conf,
		},
		{
			name: "nothing found",
			lookup: &Lookup{
				Getenv:     noEnv,
				ParentEnv:  parentEnv("A=1\x00B=2\x00"),
				ConfigFile: conf,
			},
			key: EnvConnectTimeout,
		},
		{
			name: "missing config file",
			lookup: &Lookup{
				Getenv:     noEnv,
				ParentEnv:  parentEnv(""),
				ConfigFile: filepath.Join(t.TempDir(), "does-not-exist.conf"),
			},
			key: EnvSocketPath,
		},
		{
			name:   "no parent, no config file",
			lookup: &Lookup{Getenv: noEnv},
			key:    EnvSocketPath,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, from := tc.lookup.Get(tc.key)
			if v != tc.want || from != tc.from {
				t.Errorf("Get(%s) = %q, %q; want %q, %q", tc.key, v, from, tc.want, tc.from)
			}
		})
	}
}

func TestConfigValue(t *testing.T) {
	for _, tc := range []struct{ content, key, want string }{
		{"K=v\n", "K", "v"},
		{"K=v", "K", "v"},                // no final newline
		{"K=v\r\n", "K", "v"},            // CRLF
		{"K=a=b\n", "K", "a=b"},          // first = separates
		{"#K=v\nK=w\n", "K", "w"},        // comment
		{"K\nK=w\n", "K", "w"},           // a line without =
		{"KEY=v\nK=w\n", "K", "w"},       // a longer key
		{"  K  =  v  \nK=w\n", "K", "v"}, // the first wins
		{"\n\n   \n# only comments\n", "K", ""},
	} {
		if got := configValue([]byte(tc.content), tc.key); got != tc.want {
			t.Errorf("configValue(%q, %q) = %q, want %q", tc.content, tc.key, got, tc.want)
		}
	}
}

func TestDefaultLookup(t *testing.T) {
	l := DefaultLookup()
	if l.Getenv == nil || l.ParentEnv == nil || l.ConfigFile != DefaultConfigFile {
		t.Fatalf("DefaultLookup() = %+v", l)
	}
	// The test binary's parent is the go command; its environment has PATH.
	b, err := l.ParentEnv()
	if err != nil {
		t.Skipf("cannot read the parent's environ: %v", err)
	}
	if !strings.Contains(string(b), "\x00") || environValue(b, "PATH") == "" {
		t.Skipf("the parent's environ has no PATH (%d bytes)", len(b))
	}
}

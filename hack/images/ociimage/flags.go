package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// defaultCreated is the timestamp of every entry and of the config when
// neither -created nor SOURCE_DATE_EPOCH is given.
var defaultCreated = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// defaultPath is added to the environment unless -env sets PATH.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func parseFlags(args []string, stderr io.Writer) (Options, error) {
	var (
		opts                                 Options
		entrypoint, cmd, created, ids, owner string
		env, labels, chowns                  multiFlag
	)
	fs := flag.NewFlagSet("ociimage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ociimage -rootfs DIR -ref REF -out FILE.tar [flags]")
		fmt.Fprintln(stderr, "Writes a single-layer OCI image layout tarball (for `ctr images import`).")
		fs.PrintDefaults()
	}
	fs.StringVar(&opts.Rootfs, "rootfs", "", "root filesystem directory (required)")
	fs.StringVar(&opts.Ref, "ref", "", "image reference, e.g. ghcr.io/org/img:tag (required; no tag means :latest, a bare name means docker.io/library/NAME)")
	fs.StringVar(&opts.Out, "out", "", "output tarball (required)")
	fs.StringVar(&entrypoint, "entrypoint", "", `Entrypoint as a JSON array of strings, e.g. '["/bin/app"]' (empty or null: none)`)
	fs.StringVar(&cmd, "cmd", "", `Cmd as a JSON array of strings (empty or null: none)`)
	fs.Var(&env, "env", "K=V environment variable (repeatable; PATH defaults to the usual Debian PATH)")
	fs.StringVar(&owner, "user", "", "User of the config, UID[:GID] or a name (empty: root)")
	fs.StringVar(&opts.WorkingDir, "workdir", "", "WorkingDir, an absolute path (empty: /)")
	fs.Var(&labels, "label", "K=V label (repeatable)")
	fs.StringVar(&ids, "ids", "root", "owners in the layer: root (every entry 0:0) or keep (numeric uid/gid on disk)")
	fs.Var(&chowns, "chown", "PATH=UID:GID: owner of PATH (absolute, in the image) and everything below it, after -ids (repeatable; the longest matching PATH wins)")
	fs.BoolVar(&opts.StripSetid, "strip-setid", false, "clear setuid and setgid bits")
	fs.StringVar(&opts.Arch, "arch", runtime.GOARCH, "platform architecture")
	fs.StringVar(&opts.OS, "os", "linux", "platform OS")
	fs.StringVar(&opts.Variant, "variant", "", "platform variant (e.g. v7 for arm)")
	fs.StringVar(&created, "created", "", "timestamp (RFC 3339) of the entries and the config (default: SOURCE_DATE_EPOCH, else 2024-01-01T00:00:00Z)")
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if opts.Rootfs == "" || opts.Ref == "" || opts.Out == "" {
		fs.Usage()
		return opts, errors.New("-rootfs, -ref and -out are required")
	}
	var err error
	if opts.Entrypoint, err = parseArgv("-entrypoint", entrypoint); err != nil {
		return opts, err
	}
	if opts.Cmd, err = parseArgv("-cmd", cmd); err != nil {
		return opts, err
	}
	if opts.Env, err = parseEnv(env); err != nil {
		return opts, err
	}
	if opts.Labels, err = parseLabels(labels); err != nil {
		return opts, err
	}
	opts.User = owner
	if opts.WorkingDir != "" && !path.IsAbs(opts.WorkingDir) {
		return opts, fmt.Errorf("-workdir %q: must be an absolute path", opts.WorkingDir)
	}
	switch ids {
	case "root":
	case "keep":
		opts.KeepIDs = true
	default:
		return opts, fmt.Errorf("-ids %q: want root or keep", ids)
	}
	for _, c := range chowns {
		r, err := parseChown(c)
		if err != nil {
			return opts, err
		}
		opts.Chown = append(opts.Chown, r)
	}
	if opts.Created, err = parseCreated(created, os.Getenv("SOURCE_DATE_EPOCH")); err != nil {
		return opts, err
	}
	return opts, nil
}

// parseArgv parses a JSON array of strings; "" and "null" mean unset.
func parseArgv(name, s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "null" {
		return nil, nil
	}
	var v []string
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf("%s %s: want a JSON array of strings: %v", name, s, err)
	}
	if v == nil {
		v = []string{}
	}
	return v, nil
}

func parseEnv(env []string) ([]string, error) {
	out := make([]string, 0, len(env)+1)
	hasPath := false
	seen := map[string]bool{}
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("-env %q: want NAME=VALUE", kv)
		}
		if seen[k] {
			return nil, fmt.Errorf("-env %s given twice", k)
		}
		seen[k] = true
		if k == "PATH" {
			hasPath = true
		}
		out = append(out, kv)
	}
	if !hasPath {
		out = append([]string{defaultPath}, out...)
	}
	return out, nil
}

func parseLabels(labels []string) (map[string]string, error) {
	if len(labels) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(labels))
	for _, kv := range labels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("-label %q: want KEY=VALUE", kv)
		}
		m[k] = v
	}
	return m, nil
}

func parseChown(s string) (ChownRule, error) {
	p, ids, ok := strings.Cut(s, "=")
	if !ok || !path.IsAbs(p) {
		return ChownRule{}, fmt.Errorf("-chown %q: want /PATH=UID:GID", s)
	}
	u, g, ok := strings.Cut(ids, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil || uid < 0 || gid < 0 {
		return ChownRule{}, fmt.Errorf("-chown %q: want /PATH=UID:GID with numeric ids", s)
	}
	return ChownRule{Path: path.Clean(p), UID: uid, GID: gid}, nil
}

func parseCreated(flagValue, sourceDateEpoch string) (time.Time, error) {
	if flagValue != "" {
		t, err := time.Parse(time.RFC3339, flagValue)
		if err != nil {
			return time.Time{}, fmt.Errorf("-created %q: %v", flagValue, err)
		}
		return t.UTC().Truncate(time.Second), nil
	}
	if sourceDateEpoch != "" {
		n, err := strconv.ParseInt(sourceDateEpoch, 10, 64)
		if err != nil || n < 0 {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970", sourceDateEpoch)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	return defaultCreated, nil
}

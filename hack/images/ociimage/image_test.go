package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// makeRootfs writes a small root filesystem: directories, an executable, a
// setuid file, a symlink, a hard link and a FIFO.
func makeRootfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	mustMkdir := func(p string, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, p), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(root, p), mode); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite := func(p, content string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(root, p), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(root, p), mode); err != nil {
			t.Fatal(err)
		}
	}
	mustMkdir("usr/bin", 0o755)
	mustMkdir("etc", 0o755)
	mustMkdir("tmp", os.ModeSticky|0o777)
	mustMkdir("home", 0o755)
	mustMkdir("home/user", 0o700)
	mustWrite("usr/bin/app", "#!/bin/sh\necho app\n", 0o755)
	mustWrite("usr/bin/suid", "suid", os.ModeSetuid|0o755)
	mustWrite("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
	mustWrite("home/user/notes", "hello", 0o600)
	if err := os.Symlink("usr/bin", filepath.Join(root, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "usr/bin/app"), filepath.Join(root, "usr/bin/app2")); err != nil {
		t.Fatal(err)
	}
	return root
}

func buildImage(t *testing.T, root string, extra ...string) ([]byte, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "img.tar")
	args := append([]string{"-rootfs", root, "-ref", "example.com/team/app:v1", "-out", out}, extra...)
	var stdout, stderr bytes.Buffer
	if err := run(args, &stdout, &stderr); err != nil {
		t.Fatalf("run %q: %v\n%s", args, err, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b, stdout.String()
}

// readTar returns the regular files of a tar stream by name, and the names
// of all entries in order.
func readTar(t *testing.T, r io.Reader) (map[string][]byte, []*tar.Header) {
	t.Helper()
	files := map[string][]byte{}
	var hdrs []*tar.Header
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, hdrs
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs = append(hdrs, h)
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

type parsedImage struct {
	files    map[string][]byte
	index    imageIndex
	manifest imageManifest
	config   imageConfig
	layer    []byte // uncompressed
}

// parseImage checks every digest and size on the way from index.json to the
// layer and returns the documents.
func parseImage(t *testing.T, img []byte) parsedImage {
	t.Helper()
	var p parsedImage
	p.files, _ = readTar(t, bytes.NewReader(img))
	if got := string(p.files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Fatalf("oci-layout = %q", got)
	}
	for name, b := range p.files {
		if d, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && sha(b) != "sha256:"+d {
			t.Errorf("blob %s has digest %s", name, sha(b))
		}
	}
	blob := func(d descriptor) []byte {
		t.Helper()
		b, ok := p.files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing", d.Digest)
		}
		if int64(len(b)) != d.Size {
			t.Fatalf("blob %s: size %d, descriptor says %d", d.Digest, len(b), d.Size)
		}
		if sha(b) != d.Digest {
			t.Fatalf("blob %s: digest %s", d.Digest, sha(b))
		}
		return b
	}
	if err := json.Unmarshal(p.files["index.json"], &p.index); err != nil {
		t.Fatal(err)
	}
	if p.index.SchemaVersion != 2 || p.index.MediaType != mediaTypeIndex || len(p.index.Manifests) != 1 {
		t.Fatalf("index.json = %s", p.files["index.json"])
	}
	if err := json.Unmarshal(blob(p.index.Manifests[0]), &p.manifest); err != nil {
		t.Fatal(err)
	}
	if p.manifest.MediaType != mediaTypeManifest || p.manifest.Config.MediaType != mediaTypeConfig || len(p.manifest.Layers) != 1 || p.manifest.Layers[0].MediaType != mediaTypeLayerGz {
		t.Fatalf("manifest = %+v", p.manifest)
	}
	if err := json.Unmarshal(blob(p.manifest.Config), &p.config); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(p.manifest.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	if p.layer, err = io.ReadAll(zr); err != nil {
		t.Fatal(err)
	}
	if len(p.config.RootFS.DiffIDs) != 1 || p.config.RootFS.DiffIDs[0] != sha(p.layer) {
		t.Fatalf("diff_ids %v, uncompressed layer has %s", p.config.RootFS.DiffIDs, sha(p.layer))
	}
	return p
}

func TestDigestsVerify(t *testing.T) {
	img, stdout := buildImage(t, makeRootfs(t))
	p := parseImage(t, img)
	m := p.index.Manifests[0]
	if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != runtime.GOARCH {
		t.Errorf("platform = %+v, want linux/%s", m.Platform, runtime.GOARCH)
	}
	if p.config.OS != "linux" || p.config.Architecture != runtime.GOARCH {
		t.Errorf("config platform = %s/%s", p.config.OS, p.config.Architecture)
	}
	want := map[string]string{annotationContainerdName: "example.com/team/app:v1", annotationRefName: "v1"}
	if !reflect.DeepEqual(m.Annotations, want) {
		t.Errorf("annotations = %v, want %v", m.Annotations, want)
	}
	if !strings.Contains(stdout, m.Digest) {
		t.Errorf("stdout %q does not name the manifest %s", stdout, m.Digest)
	}
	// Exactly the layout files, nothing else.
	var names []string
	for n := range p.files {
		if !strings.HasPrefix(n, "blobs/sha256/") {
			names = append(names, n)
		}
	}
	if len(names) != 2 || len(p.files) != 5 {
		t.Errorf("files in the tarball: %v", p.files)
	}
}

func TestLayerListsFiles(t *testing.T) {
	img, _ := buildImage(t, makeRootfs(t), "-chown", "/home/user=1000:1001", "-strip-setid")
	p := parseImage(t, img)
	files, hdrs := readTar(t, bytes.NewReader(p.layer))
	type entry struct {
		typ      byte
		mode     int64
		uid, gid int
		link     string
	}
	got := map[string]entry{}
	var order []string
	for _, h := range hdrs {
		got[h.Name] = entry{h.Typeflag, h.Mode, h.Uid, h.Gid, h.Linkname}
		order = append(order, h.Name)
		if !h.ModTime.Equal(defaultCreated) {
			t.Errorf("%s: mtime %v", h.Name, h.ModTime)
		}
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: names %q/%q, want numeric ids only", h.Name, h.Uname, h.Gname)
		}
	}
	want := map[string]entry{
		"bin":             {tar.TypeSymlink, 0o777, 0, 0, "usr/bin"},
		"etc/":            {tar.TypeDir, 0o755, 0, 0, ""},
		"etc/passwd":      {tar.TypeReg, 0o644, 0, 0, ""},
		"home/":           {tar.TypeDir, 0o755, 0, 0, ""},
		"home/user/":      {tar.TypeDir, 0o700, 1000, 1001, ""},
		"home/user/notes": {tar.TypeReg, 0o600, 1000, 1001, ""},
		"tmp/":            {tar.TypeDir, 0o1777, 0, 0, ""},
		"usr/":            {tar.TypeDir, 0o755, 0, 0, ""},
		"usr/bin/":        {tar.TypeDir, 0o755, 0, 0, ""},
		"usr/bin/app":     {tar.TypeReg, 0o755, 0, 0, ""},
		"usr/bin/app2":    {tar.TypeLink, 0o755, 0, 0, "usr/bin/app"},
		"usr/bin/suid":    {tar.TypeReg, 0o755, 0, 0, ""}, // -strip-setid
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("layer entries:\n got %v\nwant %v", got, want)
	}
	for i := 1; i < len(order); i++ {
		if strings.HasPrefix(order[i-1], order[i]) && strings.HasSuffix(order[i], "/") {
			t.Errorf("%s comes after its child %s", order[i], order[i-1])
		}
	}
	if string(files["usr/bin/app"]) != "#!/bin/sh\necho app\n" {
		t.Errorf("usr/bin/app = %q", files["usr/bin/app"])
	}
}

func TestSetidKeptAndIDsKept(t *testing.T) {
	img, _ := buildImage(t, makeRootfs(t), "-ids", "keep")
	p := parseImage(t, img)
	_, hdrs := readTar(t, bytes.NewReader(p.layer))
	for _, h := range hdrs {
		if h.Uid != os.Getuid() || h.Gid != os.Getgid() {
			t.Errorf("%s: %d:%d, want the ids on disk %d:%d", h.Name, h.Uid, h.Gid, os.Getuid(), os.Getgid())
		}
		if h.Name == "usr/bin/suid" && h.Mode != 0o4755 {
			t.Errorf("usr/bin/suid mode %o, want 4755", h.Mode)
		}
	}
}

func TestDeterministic(t *testing.T) {
	root := makeRootfs(t)
	args := []string{"-entrypoint", `["/usr/bin/app"]`, "-cmd", `["--flag"]`, "-env", "A=1", "-label", "x=y", "-user", "65534:65534"}
	first, _ := buildImage(t, root, args...)
	// Other timestamps on disk: the same image.
	old := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
	for _, p := range []string{"usr/bin/app", "etc", "tmp", "etc/passwd"} {
		if err := os.Chtimes(filepath.Join(root, p), old, old); err != nil {
			t.Fatal(err)
		}
	}
	second, _ := buildImage(t, root, args...)
	if !bytes.Equal(first, second) {
		t.Fatal("two builds of the same rootfs differ")
	}
	// A second copy (other inodes, other creation order): the same image.
	third, _ := buildImage(t, makeRootfs(t), args...)
	if !bytes.Equal(first, third) {
		t.Fatal("builds of two identical rootfs differ")
	}
	// A changed file changes the image.
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fourth, _ := buildImage(t, root, args...)
	if bytes.Equal(first, fourth) {
		t.Fatal("a changed file did not change the image")
	}
}

func TestConfig(t *testing.T) {
	img, _ := buildImage(t, makeRootfs(t),
		"-entrypoint", `["/usr/bin/app","a b"]`, "-cmd", `["--x"]`,
		"-env", "HOME=/tmp", "-env", "B=c=d", "-user", "65534:65534", "-workdir", "/tmp",
		"-label", "org.opencontainers.image.source=https://example.com", "-created", "2025-06-01T12:00:00Z")
	c := parseImage(t, img).config
	want := containerConfig{
		User:       "65534:65534",
		Env:        []string{defaultPath, "HOME=/tmp", "B=c=d"},
		Entrypoint: []string{"/usr/bin/app", "a b"},
		Cmd:        []string{"--x"},
		WorkingDir: "/tmp",
		Labels:     map[string]string{"org.opencontainers.image.source": "https://example.com"},
	}
	if !reflect.DeepEqual(c.Config, want) {
		t.Errorf("config = %+v\nwant %+v", c.Config, want)
	}
	if c.Created != "2025-06-01T12:00:00Z" || len(c.History) != 1 {
		t.Errorf("created %q, history %v", c.Created, c.History)
	}
	// PATH given: no default added; no entrypoint: none in the config.
	img, _ = buildImage(t, makeRootfs(t), "-env", "PATH=/bin", "-entrypoint", "null")
	c = parseImage(t, img).config
	if !reflect.DeepEqual(c.Config.Env, []string{"PATH=/bin"}) || c.Config.Entrypoint != nil || c.Config.Cmd != nil || c.Config.User != "" {
		t.Errorf("config = %+v", c.Config)
	}
}

func TestNormalizeRef(t *testing.T) {
	for _, tc := range []struct{ in, full, tag string }{
		{"busybox", "docker.io/library/busybox:latest", "latest"},
		{"busybox:1.36", "docker.io/library/busybox:1.36", "1.36"},
		{"library/busybox", "docker.io/library/busybox:latest", "latest"},
		{"user/app:v1", "docker.io/user/app:v1", "v1"},
		{"registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10", "3.10"},
		{"localhost:5000/a/b", "localhost:5000/a/b:latest", "latest"},
		{"localhost/app:x", "localhost/app:x", "x"},
		{"ghcr.io/pfnet-research/meta-fuse-csi-plugin/csi-driver:v0.1.0", "ghcr.io/pfnet-research/meta-fuse-csi-plugin/csi-driver:v0.1.0", "v0.1.0"},
	} {
		full, tag, err := NormalizeRef(tc.in)
		if err != nil || full != tc.full || tag != tc.tag {
			t.Errorf("NormalizeRef(%q) = %q, %q, %v; want %q, %q", tc.in, full, tag, err, tc.full, tc.tag)
		}
	}
	for _, bad := range []string{"", "Busybox", "a/b@sha256:00", "a:b:c", "a:", "ghcr.io/x/y:bad/tag", "a//b"} {
		if full, _, err := NormalizeRef(bad); err == nil {
			t.Errorf("NormalizeRef(%q) = %q, want an error", bad, full)
		}
	}
}

func TestFlagErrors(t *testing.T) {
	root := makeRootfs(t)
	out := filepath.Join(t.TempDir(), "x.tar")
	base := []string{"-rootfs", root, "-ref", "x/y", "-out", out}
	for _, extra := range [][]string{
		{"-entrypoint", `"/bin/sh"`},
		{"-cmd", `[1]`},
		{"-env", "NOEQUALS"},
		{"-env", "A=1", "-env", "A=2"},
		{"-label", "=v"},
		{"-ids", "mine"},
		{"-chown", "rel=1:1"},
		{"-chown", "/x=a:b"},
		{"-workdir", "tmp"},
		{"-created", "yesterday"},
		{"stray"},
	} {
		var stdout, stderr bytes.Buffer
		if err := run(append(append([]string{}, base...), extra...), &stdout, &stderr); err == nil {
			t.Errorf("%q: no error", extra)
		}
	}
	var stdout, stderr bytes.Buffer
	if err := run([]string{"-ref", "x"}, &stdout, &stderr); err == nil {
		t.Error("missing -rootfs and -out: no error")
	}
	if err := run([]string{"-rootfs", filepath.Join(root, "etc/passwd"), "-ref", "x", "-out", out}, &stdout, &stderr); err == nil {
		t.Error("a file as rootfs: no error")
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("failed runs left %s", out)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".ociimage-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestWhiteoutNameRefused(t *testing.T) {
	root := makeRootfs(t)
	if err := os.WriteFile(filepath.Join(root, "etc/.wh.passwd"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := run([]string{"-rootfs", root, "-ref", "x", "-out", filepath.Join(t.TempDir(), "x.tar")}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "whiteout") {
		t.Errorf("err = %v, want a whiteout error", err)
	}
}

func TestSourceDateEpoch(t *testing.T) {
	got, err := parseCreated("", "1700000000")
	if err != nil || !got.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("parseCreated = %v, %v", got, err)
	}
	if _, err := parseCreated("", "-1"); err == nil {
		t.Error("negative SOURCE_DATE_EPOCH accepted")
	}
	if got, _ := parseCreated("", ""); !got.Equal(defaultCreated) {
		t.Errorf("default = %v", got)
	}
}

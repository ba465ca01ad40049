package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Media types of the OCI image spec.
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayerGz  = "application/vnd.oci.image.layer.v1.tar+gzip"

	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// Options say what Build writes.
type Options struct {
	Rootfs string // root filesystem directory
	Ref    string // image reference; normalized by NormalizeRef
	Out    string // output tarball

	Entrypoint, Cmd []string // nil: unset
	Env             []string // K=V
	User            string
	WorkingDir      string
	Labels          map[string]string

	KeepIDs    bool        // numeric uid/gid from disk; otherwise 0:0
	Chown      []ChownRule // applied after KeepIDs; the longest matching Path wins
	StripSetid bool        // clear setuid/setgid bits

	Arch, OS, Variant string
	Created           time.Time // mtime of every entry, and the config's created

	// Warn, when set, is told about entries that are left out (sockets).
	Warn func(format string, a ...any)
}

// ChownRule gives Path (absolute, in the image) and everything below it the
// owner UID:GID.
type ChownRule struct {
	Path     string
	UID, GID int
}

// Result describes what Build wrote.
type Result struct {
	Ref            string // normalized reference (io.containerd.image.name)
	Tag            string // org.opencontainers.image.ref.name
	ManifestDigest string
	ConfigDigest   string
	LayerDigest    string
	LayerSize      int64
	DiffID         string // digest of the uncompressed layer
	Entries        int    // entries in the layer
}

// OCI JSON documents. Field order is fixed by the structs and maps are
// marshaled with sorted keys, so the bytes depend only on the values.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

type imageIndex struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type imageManifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type imageConfig struct {
	Created      string          `json:"created"`
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Variant      string          `json:"variant,omitempty"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
	History      []history       `json:"history"`
}

type containerConfig struct {
	User       string            `json:"User,omitempty"`
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type history struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

var (
	// Repository path components as in the distribution spec (lower case).
	pathComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	domainRE        = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?$`)
	tagRE           = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// NormalizeRef returns the full reference the way container runtimes spell
// it (kubelet asks containerd for "docker.io/library/busybox:latest" when a
// pod says "busybox") and its tag: a missing tag is "latest", a name without
// a registry is on docker.io, and a one-component name there is under
// library/. Digests are refused: the digest is what this tool computes.
func NormalizeRef(ref string) (full, tag string, err error) {
	if strings.Contains(ref, "@") {
		return "", "", fmt.Errorf("reference %q: a digest cannot be given, only a tag", ref)
	}
	name := ref
	tag = "latest"
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		name, tag = ref[:i], ref[i+1:]
	}
	if !tagRE.MatchString(tag) {
		return "", "", fmt.Errorf("reference %q: invalid tag %q", ref, tag)
	}
	parts := strings.Split(name, "/")
	if len(parts) == 1 || !(strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
		if len(parts) == 1 {
			parts = append([]string{"library"}, parts...)
		}
		parts = append([]string{"docker.io"}, parts...)
	}
	if !domainRE.MatchString(parts[0]) {
		return "", "", fmt.Errorf("reference %q: invalid registry %q", ref, parts[0])
	}
	for _, p := range parts[1:] {
		if !pathComponentRE.MatchString(p) {
			return "", "", fmt.Errorf("reference %q: invalid repository path component %q (lower case letters, digits and separators)", ref, p)
		}
	}
	return strings.Join(parts, "/") + ":" + tag, tag, nil
}

// Build writes the image tarball opts.Out (through a temporary file beside it).
func Build(opts Options) (Result, error) {
	var res Result
	var err error
	if res.Ref, res.Tag, err = NormalizeRef(opts.Ref); err != nil {
		return res, err
	}
	if opts.Arch == "" || opts.OS == "" {
		return res, fmt.Errorf("the platform needs an architecture and an OS")
	}
	if opts.Created.IsZero() {
		opts.Created = defaultCreated
	}
	opts.Created = opts.Created.UTC().Truncate(time.Second)
	fi, err := os.Stat(opts.Rootfs)
	if err != nil {
		return res, err
	}
	if !fi.IsDir() {
		return res, fmt.Errorf("-rootfs %s: not a directory", opts.Rootfs)
	}

	outDir := filepath.Dir(opts.Out)
	layerFile, err := os.CreateTemp(outDir, ".ociimage-layer-*")
	if err != nil {
		return res, err
	}
	defer os.Remove(layerFile.Name())
	defer layerFile.Close()

	// tar -> diffID hash + gzip -> layer digest hash + file
	layerHash := sha256.New()
	gz, err := gzip.NewWriterLevel(io.MultiWriter(layerFile, layerHash), gzip.DefaultCompression)
	if err != nil {
		return res, err
	}
	diffHash := sha256.New()
	entries, err := writeLayer(io.MultiWriter(gz, diffHash), opts)
	if err != nil {
		return res, fmt.Errorf("writing the layer from %s: %w", opts.Rootfs, err)
	}
	if err := gz.Close(); err != nil {
		return res, err
	}
	res.Entries = entries
	res.DiffID = digestOf(diffHash)
	res.LayerDigest = digestOf(layerHash)
	if res.LayerSize, err = layerFile.Seek(0, io.SeekCurrent); err != nil {
		return res, err
	}

	created := opts.Created.Format(time.RFC3339)
	cfg := imageConfig{
		Created:      created,
		Architecture: opts.Arch,
		OS:           opts.OS,
		Variant:      opts.Variant,
		Config: containerConfig{
			User:       opts.User,
			Env:        opts.Env,
			Entrypoint: opts.Entrypoint,
			Cmd:        opts.Cmd,
			WorkingDir: opts.WorkingDir,
			Labels:     opts.Labels,
		},
		RootFS:  rootFS{Type: "layers", DiffIDs: []string{res.DiffID}},
		History: []history{{Created: created, CreatedBy: "hack/images/ociimage"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return res, err
	}
	res.ConfigDigest = digestBytes(cfgJSON)
	man := imageManifest{
		SchemaVersion: 2,
		MediaType:     mediaTypeManifest,
		Config:        descriptor{MediaType: mediaTypeConfig, Digest: res.ConfigDigest, Size: int64(len(cfgJSON))},
		Layers:        []descriptor{{MediaType: mediaTypeLayerGz, Digest: res.LayerDigest, Size: res.LayerSize}},
	}
	manJSON, err := json.Marshal(man)
	if err != nil {
		return res, err
	}
	res.ManifestDigest = digestBytes(manJSON)
	idx := imageIndex{
		SchemaVersion: 2,
		MediaType:     mediaTypeIndex,
		Manifests: []descriptor{{
			MediaType:   mediaTypeManifest,
			Digest:      res.ManifestDigest,
			Size:        int64(len(manJSON)),
			Platform:    &platform{Architecture: opts.Arch, OS: opts.OS, Variant: opts.Variant},
			Annotations: map[string]string{annotationContainerdName: res.Ref, annotationRefName: res.Tag},
		}},
	}
	idxJSON, err := json.Marshal(idx)
	if err != nil {
		return res, err
	}

	tmpOut, err := os.CreateTemp(outDir, ".ociimage-out-*")
	if err != nil {
		return res, err
	}
	defer os.Remove(tmpOut.Name())
	defer tmpOut.Close()
	if err := writeLayout(tmpOut, opts.Created, idxJSON, []blob{
		{res.ConfigDigest, bytes.NewReader(cfgJSON), int64(len(cfgJSON))},
		{res.ManifestDigest, bytes.NewReader(manJSON), int64(len(manJSON))},
		{res.LayerDigest, io.NewSectionReader(layerFile, 0, res.LayerSize), res.LayerSize},
	}); err != nil {
		return res, err
	}
	if err := tmpOut.Chmod(0o644); err != nil {
		return res, err
	}
	if err := tmpOut.Close(); err != nil {
		return res, err
	}
	return res, os.Rename(tmpOut.Name(), opts.Out)
}

type blob struct {
	digest string
	r      io.Reader
	size   int64
}

// writeLayout writes the OCI image layout as a tar stream: oci-layout,
// index.json, then the blobs in digest order.
func writeLayout(w io.Writer, mtime time.Time, indexJSON []byte, blobs []blob) error {
	tw := tar.NewWriter(w)
	file := func(name string, r io.Reader, size int64) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: mtime}); err != nil {
			return err
		}
		n, err := io.Copy(tw, r)
		if err == nil && n != size {
			err = fmt.Errorf("%s: wrote %d bytes, want %d", name, n, size)
		}
		return err
	}
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: mtime})
	}
	layout := []byte(`{"imageLayoutVersion":"1.0.0"}`)
	if err := file("oci-layout", bytes.NewReader(layout), int64(len(layout))); err != nil {
		return err
	}
	if err := file("index.json", bytes.NewReader(indexJSON), int64(len(indexJSON))); err != nil {
		return err
	}
	if err := dir("blobs/"); err != nil {
		return err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return err
	}
	sort.Slice(blobs, func(i, j int) bool { return blobs[i].digest < blobs[j].digest })
	for i, b := range blobs {
		if i > 0 && blobs[i-1].digest == b.digest {
			continue // identical content (cannot happen for config vs manifest, but harmless)
		}
		if err := file("blobs/sha256/"+strings.TrimPrefix(b.digest, "sha256:"), b.r, b.size); err != nil {
			return err
		}
	}
	return tw.Close()
}

// writeLayer writes the rootfs as a tar stream in lexical order (parents
// before children) and returns the number of entries.
func writeLayer(w io.Writer, opts Options) (int, error) {
	tw := tar.NewWriter(w)
	root := filepath.Clean(opts.Rootfs)
	links := map[[2]uint64]string{} // (dev, ino) of files with several links -> first name
	entries := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, walkErr error) error {
		if walkErr != nil {
			return walkErr
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if strings.HasPrefix(path.Base(name), ".wh.") {
			return fmt.Errorf("%s: names starting with .wh. are whiteouts in an image layer", name)
		}
		info, err := d.Info() // lstat
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat data", p)
		}
		hdr := &tar.Header{
			Name:    name,
			Mode:    modeBits(info.Mode(), opts.StripSetid),
			ModTime: opts.Created,
			Format:  tar.FormatPAX,
		}
		if opts.KeepIDs {
			hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
		}
		if r, ok := matchChown(opts.Chown, "/"+name); ok {
			hdr.Uid, hdr.Gid = r.UID, r.GID
		}
		var content *os.File
		switch m := info.Mode(); {
		case m.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case m.IsRegular():
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := links[key]; ok && st.Nlink > 1 {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				break
			}
			if st.Nlink > 1 {
				links[key] = name
			}
			hdr.Typeflag = tar.TypeReg
			hdr.Size = info.Size()
			if content, err = os.Open(p); err != nil {
				return err
			}
			defer content.Close()
		case m&fs.ModeSymlink != 0:
			hdr.Typeflag = tar.TypeSymlink
			if hdr.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
		case m&fs.ModeDevice != 0:
			hdr.Typeflag = tar.TypeBlock
			if m&fs.ModeCharDevice != 0 {
				hdr.Typeflag = tar.TypeChar
			}
			rdev := uint64(st.Rdev)
			hdr.Devmajor = int64((rdev>>8)&0xfff | (rdev>>32)&^0xfff)
			hdr.Devminor = int64(rdev&0xff | (rdev>>12)&^0xff)
		case m&fs.ModeNamedPipe != 0:
			hdr.Typeflag = tar.TypeFifo
		default:
			if opts.Warn != nil {
				opts.Warn("%s: left out (%v cannot be stored in a layer)", name, m.Type())
			}
			return nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		entries++
		if content != nil {
			n, err := io.CopyN(tw, content, hdr.Size)
			if err != nil {
				return fmt.Errorf("%s: read %d of %d bytes (changed while building?): %w", name, n, hdr.Size, err)
			}
		}
		return nil
	})
	if err != nil {
		return entries, err
	}
	return entries, tw.Close()
}

// modeBits converts a Go file mode to the tar mode field.
func modeBits(m fs.FileMode, stripSetid bool) int64 {
	bits := int64(m.Perm())
	if m&fs.ModeSetuid != 0 && !stripSetid {
		bits |= 0o4000
	}
	if m&fs.ModeSetgid != 0 && !stripSetid {
		bits |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		bits |= 0o1000
	}
	return bits
}

// matchChown returns the rule with the longest Path that is p or a parent of p.
func matchChown(rules []ChownRule, p string) (ChownRule, bool) {
	var best ChownRule
	found := false
	for _, r := range rules {
		if r.Path == p || r.Path == "/" || strings.HasPrefix(p, r.Path+"/") {
			if !found || len(r.Path) >= len(best.Path) {
				best, found = r, true
			}
		}
	}
	return best, found
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

func digestBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

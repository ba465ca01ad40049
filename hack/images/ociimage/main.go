// Command ociimage writes a single-layer OCI image layout tarball from a root
// filesystem directory, without Docker, a registry or any other tool.
//
//	ociimage -rootfs DIR -ref REF -out FILE.tar [-entrypoint JSON] [-cmd JSON]
//	         [-env K=V]... [-user UID:GID] [-workdir DIR] [-label K=V]...
//	         [-ids root|keep] [-chown PATH=UID:GID]... [-strip-setid]
//	         [-arch ARCH] [-os OS] [-variant V] [-created RFC3339]
//
// The tarball holds oci-layout, index.json and blobs/sha256/ (the layer, the
// config and the manifest). index.json names the image with the annotations
// io.containerd.image.name (the full reference) and
// org.opencontainers.image.ref.name (the tag), so that
// `ctr -n k8s.io images import FILE.tar` imports it under REF.
//
// The output depends only on the contents of the rootfs and the flags:
// entries are written in lexical order, every mtime is -created (default
// 2024-01-01T00:00:00Z, or SOURCE_DATE_EPOCH), owners are 0:0 (-ids root, the
// default) or the numeric ids on disk (-ids keep), then -chown overrides, and
// the layer is gzip'd without a name or timestamp.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

// run parses args, builds the image and prints one line about it to stdout.
func run(args []string, stdout, stderr io.Writer) error {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	opts.Warn = func(format string, a ...any) {
		fmt.Fprintf(stderr, "ociimage: warning: "+format+"\n", a...)
	}
	res, err := Build(opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s manifest %s, layer %s (%d bytes, %d entries)\n",
		opts.Out, res.Ref, res.ManifestDigest, res.LayerDigest, res.LayerSize, res.Entries)
	return nil
}

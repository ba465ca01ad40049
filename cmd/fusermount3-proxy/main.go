// Command fusermount3-proxy stands in for fusermount3 (and fusermount) in an
// unprivileged FUSE container: install it as /usr/bin/fusermount3 and
// /usr/bin/fusermount, and set FUSERMOUNT3PROXY_FDPASSING_SOCKPATH to the
// driver's socket in the pod's fd-passing emptyDir.
package main

import (
	"os"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fusermountproxy"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/version"
)

func main() {
	p := &fusermountproxy.Proxy{
		Lookup:  fusermountproxy.DefaultLookup(),
		Getenv:  os.Getenv,
		Stdout:  os.Stdout,
		Stderr:  os.Stderr,
		Version: version.Get(),
	}
	os.Exit(p.Run(os.Args[1:]))
}

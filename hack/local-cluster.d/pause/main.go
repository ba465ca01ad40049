// Command pause is the pod sandbox ("infra") process of the local cluster's
// registry.k8s.io/pause image: it holds the pod's namespaces, reaps the
// zombies it inherits as the namespace's init and exits on SIGINT or SIGTERM,
// as the upstream pause.c does. Built statically (CGO_ENABLED=0) by
// hack/local-cluster, which packs it into an OCI image by hand.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

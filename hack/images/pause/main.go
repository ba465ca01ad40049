// Command pause is the pod sandbox's process for the registry.k8s.io/pause
// image that hack/images/build.sh makes for clusters without a registry. Like
// Kubernetes' pause.c it does nothing until SIGINT or SIGTERM ends it (exit
// status 0), and as PID 1 of a pod that shares its PID namespace it reaps
// the orphans re-parented to it.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "mfcp-pause 1 (stand-in for registry.k8s.io/pause:3.10)"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println(version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", sig)
		os.Exit(0)
	}
}

// reap collects every exited child; signals coalesce, so one SIGCHLD may
// stand for several children.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}

// Command fuse-starter runs a FUSE program in an unprivileged container with
// the /dev/fuse fd that meta-fuse-csi-plugin mounted for it, as fd 3.
//
//	fuse-starter --fd-passing-socket-path SOCK [--connect-timeout 1m] -- PROGRAM ARGS...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/starter"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/version"
)

func main() {
	fs := flag.NewFlagSet("fuse-starter", flag.ContinueOnError)
	sock := fs.String("fd-passing-socket-path", "", "path of the driver's socket in the shared emptyDir (required)")
	timeout := fs.Duration("connect-timeout", time.Minute, "how long to wait for the driver's socket")
	quiet := fs.Bool("quiet", false, "do not log progress to stderr")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: fuse-starter --fd-passing-socket-path SOCK [--connect-timeout DURATION] -- PROGRAM ARGS...\n\n"+
			"Receives the /dev/fuse fd of the mount meta-fuse-csi-plugin made for this pod and runs PROGRAM with it\n"+
			"as fd 3: give PROGRAM /dev/fd/3 as its mountpoint. Exits with PROGRAM's exit status.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(version.Get())
		return
	}
	if *sock == "" || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "fuse-starter: --fd-passing-socket-path and a PROGRAM after -- are required")
		fs.Usage()
		os.Exit(2)
	}
	if *timeout <= 0 {
		fmt.Fprintln(os.Stderr, "fuse-starter: --connect-timeout must be positive")
		os.Exit(2)
	}
	cfg := starter.Config{SocketPath: *sock, ConnectTimeout: *timeout, Program: fs.Args()}
	if !*quiet {
		cfg.Logf = func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "fuse-starter: "+format+"\n", args...)
		}
	}
	code, err := starter.Run(context.Background(), cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fuse-starter: %v\n", err)
		os.Exit(1)
	}
	os.Exit(code)
}

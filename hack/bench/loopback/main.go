// Command loopback is go-fuse's example loopback server
// (github.com/hanwen/go-fuse/v2/example/loopback) with the same mount and
// file system options, plus a switch for kernel FUSE passthrough, which
// go-fuse turns on by itself whenever it can (it needs CAP_SYS_ADMIN, so a
// root self-mount gets it and an unprivileged server never does). The
// throughput benchmark runs it with passthrough off on both sides, so that
// both move every byte through /dev/fuse.
//
//	loopback [-passthrough] [-directmountstrict] [-allow-other] [-q] MOUNTPOINT ORIGINAL
//
// MOUNTPOINT may be /dev/fd/N (an fd passed by meta-fuse-csi-plugin).
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func main() {
	log.SetFlags(log.Lmicroseconds)
	passthrough := flag.Bool("passthrough", false, "allow kernel FUSE passthrough (go-fuse's default; off here)")
	other := flag.Bool("allow-other", false, "mount with -o allow_other,default_permissions")
	directmountstrict := flag.Bool("directmountstrict", false, "mount with mount(2) (root), never through fusermount")
	quiet := flag.Bool("q", false, "quiet")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s [flags] MOUNTPOINT ORIGINAL\n", os.Args[0])
		flag.PrintDefaults()
		os.Exit(2)
	}
	orig := flag.Arg(1)
	root, err := fs.NewLoopbackRoot(orig)
	if err != nil {
		log.Fatalf("NewLoopbackRoot(%s): %v", orig, err)
	}
	sec := time.Second
	opts := &fs.Options{
		// As in go-fuse's example.
		AttrTimeout:     &sec,
		EntryTimeout:    &sec,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			AllowOther:        *other,
			DirectMountStrict: *directmountstrict,
			FsName:            orig,
			Name:              "loopback",
		},
	}
	if !*passthrough {
		opts.MountOptions.DisabledCapabilities = fuse.CAP_PASSTHROUGH
	}
	if *other {
		opts.MountOptions.Options = append(opts.MountOptions.Options, "default_permissions")
	}
	if !*quiet {
		opts.Logger = log.New(os.Stderr, "", 0)
	}
	server, err := fs.Mount(flag.Arg(0), root, opts)
	if err != nil {
		log.Fatalf("Mount fail: %v", err)
	}
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-c
		server.Unmount()
		os.Exit(0)
	}()
	server.Wait()
}

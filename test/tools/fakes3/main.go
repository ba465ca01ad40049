// Command fakes3 is a small in-memory S3 server for the integration tests
// (gofakes3): path-style requests, signatures not checked, buckets created
// at start. It listens on loopback only.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"strings"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	buckets := flag.String("buckets", "test-bucket", "comma-separated buckets to create")
	flag.Parse()

	backend := s3mem.New()
	for _, b := range strings.Split(*buckets, ",") {
		if b == "" {
			continue
		}
		if err := backend.CreateBucket(b); err != nil {
			log.Fatalf("creating bucket %s: %v", b, err)
		}
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("fakes3 on http://%s, buckets %s", l.Addr(), *buckets)
	log.Fatal(http.Serve(l, gofakes3.New(backend, gofakes3.WithAutoBucket(false)).Server()))
}

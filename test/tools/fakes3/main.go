// Command fakes3 is a small in-memory S3 server for the integration tests
// (gofakes3): path-style requests, signatures not checked, buckets created
// at start. The tests run it on loopback; the examples run it as a
// sidecar of the pod.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	buckets := flag.String("buckets", "test-bucket", "comma-separated buckets to create")
	var objects []string
	flag.Func("object", "BUCKET/KEY=CONTENT: an object to create at start (repeatable)", func(v string) error {
		objects = append(objects, v)
		return nil
	})
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
	for _, o := range objects {
		path, content, ok := strings.Cut(o, "=")
		bucket, key, ok2 := strings.Cut(path, "/")
		if !ok || !ok2 {
			log.Fatalf("-object %q: want BUCKET/KEY=CONTENT", o)
		}
		// What gofakes3's PUT handler records; without Last-Modified, s3fs
		// reads the object as zeros.
		meta := map[string]string{"Last-Modified": time.Now().UTC().Format(http.TimeFormat), "Content-Type": "text/plain"}
		if _, err := backend.PutObject(bucket, key, meta, strings.NewReader(content), int64(len(content)), nil); err != nil {
			log.Fatalf("creating object %s: %v", path, err)
		}
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("fakes3 on http://%s, buckets %s", l.Addr(), *buckets)
	log.Fatal(http.Serve(l, gofakes3.New(backend, gofakes3.WithAutoBucket(false)).Server()))
}

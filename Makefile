# meta-fuse-csi-plugin

GO       ?= go
BIN      ?= bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS  := -s -w -X github.com/pfnet-research/meta-fuse-csi-plugin/pkg/version.Version=$(VERSION)
FUZZTIME ?= 10s
# make bench: BENCHTIME overrides every benchmark's iteration count (CI: 1x); BENCH_OUT is the report.
BENCHTIME ?=
BENCH_OUT ?= docs/benchmarks.md

.PHONY: all build images test test-unit test-integration test-e2e vet fuzz bench demo clean soak

all: build

## build: the driver and the pod-side binaries into ./bin (static, no cgo)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## images: the driver and example images as OCI tarballs in _output/images, without Docker
images:
	hack/images/build.sh --out _output/images

## test: vet, unit tests and the privileged integration tests (root and /dev/fuse; skipped with a reason otherwise)
test: vet
	$(GO) test -count=1 ./...

## test-unit: only the unit tests (no root needed)
test-unit:
	$(GO) test -count=1 ./pkg/... ./cmd/...

## test-integration: only the kubelet-like integration tests
test-integration:
	$(GO) test -count=1 -v ./test/integration/...

## test-e2e: deploy/ and the examples on a real kubelet (hack/local-cluster, or kind where Docker is)
test-e2e:
	hack/test-e2e.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1; }

## fuzz: run every fuzz target for FUZZTIME each
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test $$pkg -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME); \
	  done; \
	done

## bench: the benchmarks (root) and docs/benchmarks.md from them; MFCP_BENCH_CLUSTER=1 adds the pod start-up on hack/local-cluster
bench:
	$(GO) run ./hack/bench -out $(BENCH_OUT) $(if $(BENCHTIME),-benchtime $(BENCHTIME))

## demo: the whole flow without Kubernetes: driver, a kubelet-style publish, an unprivileged FUSE server, then cleanup
demo:
	$(GO) run ./hack/demo

clean:
	rm -rf $(BIN) _output

## soak: 10,000 publish → serve → unpublish cycles against the driver binary, checking /proc for leaks (root; MFCP_SOAK_CYCLES=N to change)
soak:
	$(GO) test -count=1 -v -run TestSoak ./test/soak/

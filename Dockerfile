# syntax=docker/dockerfile:1
# The CSI driver image: the static meta-fuse-csi-plugin binary on
# distroless/static (no shell, no mount(8): the driver mounts with mount(2)).
# It runs as root (the DaemonSet makes it privileged).
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     -t ghcr.io/pfnet-research/meta-fuse-csi-plugin/csi-driver:TAG --push .
#
# Without Docker: hack/images/build.sh csi-driver (see hack/images/README.md).

ARG GO_VERSION=1.26

# Cross-compiled on the build machine's platform: no emulation for arm64.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=devel
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY cmd/ cmd/
COPY pkg/ pkg/
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X github.com/pfnet-research/meta-fuse-csi-plugin/pkg/version.Version=${VERSION}" \
      -o /out/meta-fuse-csi-plugin ./cmd/meta-fuse-csi-plugin

FROM gcr.io/distroless/static-debian12
ARG VERSION=devel
LABEL org.opencontainers.image.source="https://github.com/pfnet-research/meta-fuse-csi-plugin" \
      org.opencontainers.image.title="meta-fuse-csi-plugin" \
      org.opencontainers.image.description="meta-fuse-csi-plugin CSI node driver" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/meta-fuse-csi-plugin /meta-fuse-csi-plugin
ENTRYPOINT ["/meta-fuse-csi-plugin"]

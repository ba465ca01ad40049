#!/usr/bin/env bash
# Installs what the integration tests run: FUSE programs from Debian, and
# the ones only the Go module proxy has (gcsfuse, goofys, fake-gcs-server,
# and helm for the chart),
# built once into a cache outside the repository keyed by version.
#
# Usage: hack/install-test-deps.sh            (as root, on Debian 12)
# Prints the directory to put on PATH as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="/usr/local/go/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

# Not the "fuse" package: it would replace fuse3 (fuse3 provides "fuse").
apt_pkgs=(fuse3 sshfs openssh-server openssh-client s3fs bindfs rclone util-linux)
need=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Outside /root: the programs run as uid 65534 in the tests.
cache="${MFCP_TEST_TOOLS:-/var/cache/mfcp-test-tools}"
bin="$cache/bin"
mkdir -p "$bin"
chmod 0755 "$cache" "$bin"

# go_tool NAME VERSION PACKAGE: go install PACKAGE@VERSION once.
go_tool() {
  local name=$1 version=$2 pkg=$3 dir="$cache/$1-$2"
  if [ ! -x "$dir/$name" ]; then
    echo "building $name $version (once; cached in $dir)" >&2
    local start=$SECONDS
    GOBIN="$dir" GOFLAGS=-trimpath go install "$pkg@$version" >&2
    echo "built $name in $((SECONDS - start)) s" >&2
  fi
  ln -sf "$dir/$name" "$bin/$name"
}

# gcsfuse 3.12+ needs Go 1.27; 3.11.4 is the newest that builds with Go 1.26.
go_tool gcsfuse v3.11.4 github.com/googlecloudplatform/gcsfuse/v3
go_tool fake-gcs-server v1.56.1 github.com/fsouza/fake-gcs-server
# helm renders the chart in the manifest tests.
go_tool helm v3.22.0 helm.sh/helm/v3/cmd/helm

# goofys v0.24.0 has no go.mod: hack/test-programs/goofys pins its dependencies.
goofys_dir="$cache/goofys-v0.24.0"
if [ ! -x "$goofys_dir/goofys" ]; then
  echo "building goofys v0.24.0 (once; cached in $goofys_dir)" >&2
  start=$SECONDS
  mkdir -p "$goofys_dir"
  (cd hack/test-programs/goofys && GOFLAGS=-trimpath go build -mod=mod -o "$goofys_dir/goofys" github.com/kahing/goofys) >&2
  echo "built goofys in $((SECONDS - start)) s" >&2
fi
ln -sf "$goofys_dir/goofys" "$bin/goofys"

echo "$bin"

#!/usr/bin/env bash
# Builds the project's container images as OCI image layout tarballs WITHOUT
# Docker or a registry: each root filesystem is assembled from the project's
# static binaries and Debian packages (apt-get download + dpkg-deb), then
# hack/images/ociimage writes a single-layer image. Import them with
#   ctr -n k8s.io images import _output/images/<name>.oci.tar
#
# Usage: hack/images/build.sh [--out DIR] [--list] [IMAGE...]
#   IMAGE   a name from --list, also without the mfcp-example- prefix
#           (default: all)
#   --out   output directory (default _output/images)
# Environment:
#   TAG                tag of the project's images (default latest)
#   IMAGE_PREFIX       default ghcr.io/pfnet-research/meta-fuse-csi-plugin
#   VERSION            version baked into the binaries (default git describe)
#   SOURCE_DATE_EPOCH  timestamp of every file (default: the last commit's)
#   MFCP_DEB_CACHE     .deb cache (default /var/cache/mfcp-images/debs)
#   MFCP_TEST_TOOLS    where hack/install-test-deps.sh keeps gcsfuse, goofys
#                      and fake-gcs-server (default /var/cache/mfcp-test-tools)
#
# Needs: go, make, apt-get/apt-cache (Debian 12), dpkg-deb, GNU tar. Run as
# root: the first run may need `apt-get update`, ldconfig -r needs it, and the
# goofys/gcsfuse/fake-gcs-server images run hack/install-test-deps.sh when
# their binary is missing. The output is the same for the same inputs
# (commit, .deb versions).
set -euo pipefail

cd "$(dirname "$0")/../.."
export PATH="/usr/local/go/bin:$PATH"
export LC_ALL=C

ALL_IMAGES=(
  csi-driver
  mfcp-example-sshfs
  mfcp-example-sshd
  mfcp-example-s3fs
  mfcp-example-rclone
  mfcp-example-goofys
  mfcp-example-gcsfuse
  mfcp-example-fakes3
  mfcp-example-fake-gcs-server
  busybox
  pause
)

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  echo "Images: ${ALL_IMAGES[*]}"
}

OUT=_output/images
images=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    --list) printf '%s\n' "${ALL_IMAGES[@]}"; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "build.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
      found=
      for n in "$1" "mfcp-example-$1"; do
        for a in "${ALL_IMAGES[@]}"; do [ "$n" = "$a" ] && found=$a; done
        [ -n "$found" ] && break
      done
      [ -n "$found" ] || { echo "build.sh: unknown image $1 (see --list)" >&2; exit 2; }
      images+=("$found"); shift ;;
  esac
done
[ ${#images[@]} -gt 0 ] || images=("${ALL_IMAGES[@]}")

TAG=${TAG:-latest}
PREFIX=${IMAGE_PREFIX:-ghcr.io/pfnet-research/meta-fuse-csi-plugin}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo devel)}
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1704067200)}
DEBS=${MFCP_DEB_CACHE:-/var/cache/mfcp-images/debs}
TOOLS_BIN=${MFCP_TEST_TOOLS:-/var/cache/mfcp-test-tools}/bin
SOURCE_URL=https://github.com/pfnet-research/meta-fuse-csi-plugin

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mfcp-images.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/bin" "$WORK/tools"

log() { echo "build.sh: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- binaries

# once NAME CMD...: runs CMD the first time only.
declare -A BUILT=()
once() {
  local name=$1; shift
  [ -n "${BUILT[$name]:-}" ] && return 0
  "$@"
  BUILT[$name]=1
}

build_ociimage() { go build -trimpath -o "$WORK/tools/ociimage" ./hack/images/ociimage; }

# The driver, fuse-starter and fusermount3-proxy, static, as `make build`.
build_project() { make --no-print-directory build BIN="$WORK/bin" VERSION="$VERSION" >&2; }

# go_static NAME PACKAGE: a static, stripped binary into $WORK/bin.
go_static() {
  CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$WORK/bin/$1" "$2"
}

# test_tool NAME: path of a binary built by hack/install-test-deps.sh.
test_tool() {
  if [ ! -x "$TOOLS_BIN/$1" ]; then
    log "$TOOLS_BIN/$1 missing: running hack/install-test-deps.sh"
    MFCP_TEST_TOOLS=$(dirname "$TOOLS_BIN") hack/install-test-deps.sh >&2
  fi
  readlink -f "$TOOLS_BIN/$1"
}

# ---------------------------------------------------------------- Debian packages

# Packages a closure does not follow: they serve package management and
# maintainer/init scripts, which never run in these images (the images have
# no dpkg database, and users and config files are written here), or they
# are replaced: fuse's and fuse3's fusermount by fusermount3-proxy, mount by
# the driver. Programs in the images do not run them.
EXCLUDE=" adduser passwd login debconf cdebconf debconf-2.0 dpkg install-info \
init-system-helpers lsb-base sysvinit-utils runit-helper ucf usrmerge \
usr-is-merged perl perl-base perl-modules-5.36 sensible-utils procps mount \
sed tar debianutils libpam-runtime fuse "

apt_ready() {
  if ! apt-cache show --no-all-versions busybox-static >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { log "apt lists are empty: run apt-get update as root"; exit 1; }
    log "apt-get update"
    apt-get update -qq >&2
  fi
}

# deb_closure PKG...: PKG and what it Depends/Pre-Depends on, recursively
# (apt-cache depends --no-recommends --no-suggests), one name a line. Of
# alternatives (a | b) and of virtual packages' providers the first real one
# is taken; a dependency on an EXCLUDE'd package is not followed.
deb_closure() {
  local -A seen=()
  local queue=("$@") next p
  for p in "$@"; do seen[$p]=1; done
  while [ ${#queue[@]} -gt 0 ]; do
    mapfile -t next < <(apt-cache depends --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "${queue[@]}" |
      awk -v exclude="$EXCLUDE" '
        function excluded(n) { return index(exclude, " " n " ") > 0 }
        # One dependency: alternatives alt[1..ng], each with its first provider.
        function flush(   i, c) {
          if (ng == 0) return
          for (i = 1; i <= ng; i++)
            if (excluded(alt[i]) || (alt[i] ~ /^</ && excluded(prov[i]))) { ng = 0; return }
          c = ""
          for (i = 1; i <= ng && c == ""; i++) if (alt[i] !~ /^</) c = alt[i]
          for (i = 1; i <= ng && c == ""; i++) if (prov[i] != "") c = prov[i]
          if (c != "") print c
          ng = 0
        }
        /^[^ ]/ { flush(); more = 0; next }                      # a package
        /^ [ |](Pre)?Depends: / {                                # "|": or the next one
          if (!more) flush()
          more = ($0 ~ /^ \|/)
          n = $2; sub(/:any$/, "", n)
          alt[++ng] = n; prov[ng] = ""; next
        }
        /^    / { if (ng > 0 && prov[ng] == "") { n = $1; sub(/:any$/, "", n); prov[ng] = n }; next }
        { if (!more) flush() }
        END { flush() }' | sort -u)
    queue=()
    for p in "${next[@]}"; do
      [ -n "${seen[$p]:-}" ] && continue
      seen[$p]=1
      queue+=("$p")
    done
  done
  printf '%s\n' "${!seen[@]}" | sort
}

# deb_fetch PKG...: the candidate .deb of each PKG in $DEBS (downloaded once),
# one path a line; appends "PKG VERSION" to $PKGLIST.
deb_fetch() {
  mkdir -p "$DEBS"
  local lines line pkg ver arch f missing=() files=()
  mapfile -t lines < <(apt-cache show --no-all-versions "$@" |
    awk '/^Package: /{p=$2} /^Version: /{v=$2} /^Architecture: /{a=$2} /^$/{if (p) print p, v, a; p=""} END{if (p) print p, v, a}')
  [ ${#lines[@]} -eq $# ] || { log "apt-cache show $*: got ${#lines[@]} packages for $#"; exit 1; }
  for line in "${lines[@]}"; do
    read -r pkg ver arch <<<"$line"
    f="$DEBS/${pkg}_${ver//:/%3a}_${arch}.deb"
    [ -s "$f" ] || missing+=("$pkg=$ver")
    files+=("$f")
    echo "$pkg $ver" >>"$PKGLIST"
  done
  if [ ${#missing[@]} -gt 0 ]; then
    local sandbox=()
    [ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
    (cd "$DEBS" && apt-get -q "${sandbox[@]}" download "${missing[@]}" >&2)
  fi
  for f in "${files[@]}"; do
    [ -s "$f" ] || { log "$f: not downloaded"; exit 1; }
    echo "$f"
  done
}

# deb_install ROOTFS PKG...: PKG and its closure unpacked into ROOTFS.
# dpkg-deb -x would replace the /bin, /lib, ... symlinks of the merged-/usr
# layout with directories; tar --keep-directory-symlink keeps them.
deb_install() {
  local rootfs=$1; shift
  local pkgs files f
  apt_ready
  pkgs=$(deb_closure "$@")
  # shellcheck disable=SC2086 # one package a word
  files=$(deb_fetch $pkgs)
  for f in $files; do
    dpkg-deb --fsys-tarfile "$f" | tar -x -p --no-same-owner --keep-directory-symlink -C "$rootfs"
  done
}

# ---------------------------------------------------------------- rootfs pieces

# base ROOTFS: Debian's merged-/usr layout and the usual directories.
base() {
  local r=$1
  mkdir -p "$r"/usr/{bin,sbin,lib,lib64,local/bin} "$r"/{etc,root,home,run,proc,sys,dev,var/tmp,tmp}
  ln -s usr/bin "$r/bin"
  ln -s usr/sbin "$r/sbin"
  ln -s usr/lib "$r/lib"
  ln -s usr/lib64 "$r/lib64"
  chmod 1777 "$r/tmp" "$r/var/tmp"
  chmod 0700 "$r/root"
}

# accounts ROOTFS [PASSWD_LINE...]: /etc/passwd and /etc/group with root and
# nobody/nogroup (65534), plus the given passwd lines.
accounts() {
  local r=$1; shift
  mkdir -p "$r/etc"
  {
    echo "root:x:0:0:root:/root:/bin/sh"
    for l in "$@"; do echo "$l"; done
    echo "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"
  } >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  {
    echo "root:*:19723:0:99999:7:::"
    for l in "$@"; do echo "${l%%:*}:*:19723:0:99999:7:::"; done
    echo "nobody:*:19723:0:99999:7:::"
  } >"$r/etc/shadow"
  chmod 0644 "$r/etc/passwd" "$r/etc/group"
  chmod 0600 "$r/etc/shadow"
}

# debian_finish ROOTFS: drop documentation (keeping copyright files), add
# /etc/nsswitch.conf, /usr/sbin/nologin and the ld.so cache.
debian_finish() {
  local r=$1
  if [ -d "$r/usr/share/doc" ]; then
    find "$r/usr/share/doc" ! -type d ! -name copyright -delete
    find "$r/usr/share/doc" -depth -type d -empty -delete
  fi
  rm -rf "$r"/usr/share/{man,info,locale,lintian,bug,bash-completion,zsh,menu,gtk-doc}
  install -m 0644 hack/images/files/nsswitch.conf "$r/etc/nsswitch.conf"
  [ -e "$r/usr/sbin/nologin" ] || install -m 0755 hack/images/files/nologin "$r/usr/sbin/nologin"
  if compgen -G "$r/usr/lib/*-linux-gnu/libc.so.6" >/dev/null; then
    [ -e "$r/etc/ld.so.conf" ] || echo 'include /etc/ld.so.conf.d/*.conf' >"$r/etc/ld.so.conf"
    if [ "$(id -u)" = 0 ]; then
      ldconfig -r "$r"
      rm -rf "$r/var/cache/ldconfig"
    else
      log "not root: no ld.so cache (the libraries are in ld.so's default paths)"
    fi
  fi
}

# busybox_applets ROOTFS: a symlink to /bin/busybox for each applet whose
# path is free (Debian's binaries win).
busybox_applets() {
  local r=$1 p applets
  applets=$("$r/bin/busybox" --list-full)
  while read -r p; do
    [ "$p" = linuxrc ] && continue # an init's name, not a command
    [ -e "$r/$p" ] || [ -L "$r/$p" ] || ln -s /bin/busybox "$r/$p"
  done <<<"$applets"
}

# fuse_bits ROOTFS: fuse-starter, and fusermount3-proxy as /usr/bin/fusermount3
# with /usr/bin/fusermount -> fusermount3 (replacing fuse3's setuid helper).
fuse_bits() {
  local r=$1
  once project build_project
  install -m 0755 "$WORK/bin/fuse-starter" "$r/usr/bin/fuse-starter"
  rm -f "$r/usr/bin/fusermount3" "$r/usr/bin/fusermount"
  install -m 0755 "$WORK/bin/fusermount3-proxy" "$r/usr/bin/fusermount3"
  ln -s fusermount3 "$r/usr/bin/fusermount"
}

# ca_bundle ROOTFS: /etc/ssl/certs/ca-certificates.crt from Debian's
# ca-certificates (what update-ca-certificates, a maintainer script, makes:
# the Mozilla certificates concatenated). Its dependencies (openssl,
# debconf) are only for that script.
ca_bundle() {
  local r=$1 d="$WORK/ca" f
  rm -rf "$d"
  mkdir -p "$d" "$r/etc/ssl/certs"
  apt_ready
  f=$(deb_fetch ca-certificates)
  dpkg-deb --fsys-tarfile "$f" | tar -x --no-same-owner -C "$d"
  for f in "$d"/usr/share/ca-certificates/mozilla/*.crt; do
    cat "$f"
    [ -z "$(tail -c1 "$f")" ] || echo
  done >"$r/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "$r/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$r/usr/share/doc/ca-certificates"
  install -m 0644 "$d/usr/share/doc/ca-certificates/copyright" "$r/usr/share/doc/ca-certificates/copyright"
  rm -rf "$d"
}

# go_tool ROOTFS NAME: a binary from hack/install-test-deps.sh as
# /usr/bin/NAME, without its debug information; with Debian's libc6 when it
# is dynamically linked (cgo).
go_tool() {
  local r=$1 name=$2 src
  src=$(test_tool "$name")
  if command -v strip >/dev/null; then
    strip --strip-all -o "$r/usr/bin/$name" "$src"
  else
    cp "$src" "$r/usr/bin/$name"
  fi
  chmod 0755 "$r/usr/bin/$name"
  if ldd "$src" >/dev/null 2>&1; then
    log "$name is dynamically linked: adding libc6"
    deb_install "$r" libc6
  fi
}

# ---------------------------------------------------------------- images
# Each image_NAME ROOTFS fills ROOTFS and sets REF, ENTRYPOINT, CMD (JSON),
# IMG_USER, IMG_ENV, IMG_CHOWN, DESCRIPTION.

# Settings of the example FUSE images: non-root, HOME writable.
fuse_example() {
  IMG_USER=65534:65534
  IMG_ENV=(HOME=/tmp)
}

image_csi-driver() {
  local r=$1
  once project build_project
  mkdir -p "$r/etc" "$r/tmp"
  chmod 1777 "$r/tmp"
  install -m 0755 "$WORK/bin/meta-fuse-csi-plugin" "$r/meta-fuse-csi-plugin"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  REF=$PREFIX/csi-driver:$TAG
  ENTRYPOINT='["/meta-fuse-csi-plugin"]'
  DESCRIPTION="meta-fuse-csi-plugin CSI node driver (static, no shell)"
}

image_mfcp-example-sshfs() {
  local r=$1
  base "$r"
  deb_install "$r" sshfs openssh-client busybox-static
  accounts "$r"
  debian_finish "$r"
  busybox_applets "$r"
  fuse_bits "$r"
  fuse_example
  REF=$PREFIX/mfcp-example-sshfs:$TAG
  CMD='["sshfs","--version"]'
  DESCRIPTION="sshfs (Debian) with fuse-starter and fusermount3-proxy"
}

image_mfcp-example-sshd() {
  local r=$1
  base "$r"
  deb_install "$r" openssh-server busybox-static
  accounts "$r" "sshd:x:100:65534::/run/sshd:/usr/sbin/nologin"
  debian_finish "$r"
  busybox_applets "$r"
  install -m 0644 hack/images/files/sshd/sshd_config "$r/etc/ssh/sshd_config"
  install -m 0755 hack/images/files/sshd/mfcp-sshd "$r/usr/local/bin/mfcp-sshd"
  mkdir -p "$r/run/sshd" "$r/data"
  IMG_CHOWN=(/data=65534:65534)
  REF=$PREFIX/mfcp-example-sshd:$TAG
  ENTRYPOINT='["/usr/local/bin/mfcp-sshd"]'
  DESCRIPTION="SFTP-only OpenSSH server (Debian), the sshfs example's backend; runs as root"
}

image_mfcp-example-s3fs() {
  local r=$1
  base "$r"
  deb_install "$r" s3fs busybox-static
  accounts "$r"
  debian_finish "$r"
  busybox_applets "$r"
  ca_bundle "$r"
  fuse_bits "$r"
  fuse_example
  REF=$PREFIX/mfcp-example-s3fs:$TAG
  CMD='["s3fs","--version"]'
  DESCRIPTION="s3fs (Debian) with fuse-starter and fusermount3-proxy"
}

image_mfcp-example-rclone() {
  local r=$1
  base "$r"
  deb_install "$r" rclone busybox-static
  accounts "$r"
  debian_finish "$r"
  busybox_applets "$r"
  ca_bundle "$r"
  fuse_bits "$r"
  fuse_example
  REF=$PREFIX/mfcp-example-rclone:$TAG
  CMD='["rclone","version"]'
  DESCRIPTION="rclone (Debian) with fuse-starter and fusermount3-proxy"
}

# go_example ROOTFS NAME: a Go FUSE program from hack/install-test-deps.sh.
go_example() {
  local r=$1 name=$2
  base "$r"
  deb_install "$r" busybox-static
  go_tool "$r" "$name"
  accounts "$r"
  debian_finish "$r"
  busybox_applets "$r"
  ca_bundle "$r"
  fuse_bits "$r"
  fuse_example
  REF=$PREFIX/mfcp-example-$name:$TAG
  CMD="[\"$name\",\"--version\"]"
}

image_mfcp-example-goofys() {
  go_example "$1" goofys
  DESCRIPTION="goofys v0.24.0 with fuse-starter and fusermount3-proxy"
}

image_mfcp-example-gcsfuse() {
  go_example "$1" gcsfuse
  DESCRIPTION="gcsfuse v3.11.4 with fuse-starter and fusermount3-proxy"
}

image_mfcp-example-fakes3() {
  local r=$1
  base "$r"
  deb_install "$r" busybox-static
  accounts "$r"
  debian_finish "$r"
  busybox_applets "$r"
  go_static fakes3 ./test/tools/fakes3
  install -m 0755 "$WORK/bin/fakes3" "$r/usr/bin/fakes3"
  IMG_USER=65534:65534
  REF=$PREFIX/mfcp-example-fakes3:$TAG
  ENTRYPOINT='["/usr/bin/fakes3"]'
  CMD='["-addr","0.0.0.0:9000","-buckets","test-bucket"]'
  DESCRIPTION="in-memory S3 server (gofakes3, test/tools/fakes3), the S3 examples' backend"
}

image_mfcp-example-fake-gcs-server() {
  local r=$1
  base "$r"
  deb_install "$r" busybox-static
  go_tool "$r" fake-gcs-server
  accounts "$r"
  debian_finish "$r"
  busybox_applets "$r"
  mkdir -p "$r/data/test-bucket"
  IMG_USER=65534:65534
  REF=$PREFIX/mfcp-example-fake-gcs-server:$TAG
  ENTRYPOINT='["/usr/bin/fake-gcs-server","-data","/data"]'
  CMD='["-scheme","http","-port","4443","-backend","memory"]'
  DESCRIPTION="fake-gcs-server v1.56.1 (GCS emulator), the gcsfuse example's backend"
}

# docker.io/library/busybox:latest for the app containers: busybox-static's
# /bin/busybox and a symlink per applet (no merged /usr, as upstream).
image_busybox() {
  local r=$1
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,tmp,var/tmp}
  chmod 1777 "$r/tmp" "$r/var/tmp"
  chmod 0700 "$r/root"
  apt_ready
  local deb
  deb=$(deb_fetch busybox-static)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -p --no-same-owner -C "$r"
  rm -rf "$r/usr/share/man"
  find "$r/usr/share/doc" ! -type d ! -name copyright -delete
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  busybox_applets "$r"
  REF=docker.io/library/busybox:latest
  CMD='["sh"]'
  DESCRIPTION="busybox from Debian's busybox-static"
  LABELS=()
}

# registry.k8s.io/pause:3.10, the sandbox image containerd is configured with.
image_pause() {
  local r=$1
  go_static pause ./hack/images/pause
  install -m 0755 "$WORK/bin/pause" "$r/pause"
  REF=registry.k8s.io/pause:3.10
  ENTRYPOINT='["/pause"]'
  IMG_USER=65535:65535
  DESCRIPTION="pause stand-in (hack/images/pause)"
  LABELS=()
}

# ---------------------------------------------------------------- main

start_all=$(now)
t=$(now)
build_ociimage
for i in "${images[@]}"; do
  case $i in busybox|pause) ;; *) once project build_project ;; esac
done
TOOLS_TIME=$(elapsed "$t")
log "ociimage and the project's binaries built in ${TOOLS_TIME}s"

summary="$OUT/images.txt"
results=()
for name in "${images[@]}"; do
  t=$(now)
  rootfs="$WORK/rootfs-$name"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  chmod 0755 "$rootfs"
  PKGLIST="$WORK/$name.packages"
  : >"$PKGLIST"
  REF='' ENTRYPOINT='' CMD='' IMG_USER='' DESCRIPTION=''
  IMG_ENV=() IMG_CHOWN=()
  LABELS=(
    "org.opencontainers.image.source=$SOURCE_URL"
    "org.opencontainers.image.version=$VERSION"
    "org.opencontainers.image.revision=$REVISION"
    "org.opencontainers.image.licenses=Apache-2.0"
  )
  log "== $name"
  "image_$name" "$rootfs"
  args=(-rootfs "$rootfs" -ref "$REF" -out "$OUT/$name.oci.tar" -strip-setid)
  [ -n "$ENTRYPOINT" ] && args+=(-entrypoint "$ENTRYPOINT")
  [ -n "$CMD" ] && args+=(-cmd "$CMD")
  [ -n "$IMG_USER" ] && args+=(-user "$IMG_USER")
  for e in "${IMG_ENV[@]}"; do args+=(-env "$e"); done
  for c in "${IMG_CHOWN[@]}"; do args+=(-chown "$c"); done
  for l in "${LABELS[@]}"; do args+=(-label "$l"); done
  [ -n "$DESCRIPTION" ] && [ ${#LABELS[@]} -gt 0 ] && args+=(-label "org.opencontainers.image.description=$DESCRIPTION")
  "$WORK/tools/ociimage" "${args[@]}" >&2
  sort -u "$PKGLIST" >"$OUT/$name.packages"
  [ -s "$OUT/$name.packages" ] || rm -f "$OUT/$name.packages"
  unpacked=$(du -sb "$rootfs" | cut -f1)
  rm -rf "$rootfs"
  size=$(stat -c %s "$OUT/$name.oci.tar")
  secs=$(elapsed "$t")
  results+=("$(printf '%-30s %8.1f %9.1f %6ss  %s' "$name" "$(awk -v s="$size" 'BEGIN{print s/1048576}')" \
    "$(awk -v s="$unpacked" 'BEGIN{print s/1048576}')" "$secs" "$REF")")
done

{
  printf '%-30s %8s %9s %7s  %s\n' image "tar MiB" "rootfs MiB" time reference
  printf '%s\n' "${results[@]}"
} | tee "$summary.new" >&2
# Keep lines of images not rebuilt this time.
if [ -f "$summary" ]; then
  for name in "${ALL_IMAGES[@]}"; do
    grep -q "^$name " "$summary.new" || grep "^$name " "$summary" >>"$summary.new" || true
  done
fi
mv "$summary.new" "$summary"
log "tools ${TOOLS_TIME}s, total $(elapsed "$start_all")s; tarballs in $OUT (summary: $summary)"

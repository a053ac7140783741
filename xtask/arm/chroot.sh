#!/usr/bin/env bash
# Cross toolchain for `cargo xtask arm-test`: an amd64 Debian chroot holding Debian's Rust
# (rustc-web/cargo-web), the aarch64 standard library (libstd-rust-web-dev:arm64, multiarch),
# the aarch64 GNU linker and qemu-aarch64 (user-mode emulation, used as the cargo test runner).
#
# Nothing on the host changes except that mmdebstrap (and its dependencies) is installed with
# apt-get when it is missing: no foreign dpkg architecture, no binfmt_misc entry. Every command
# runs in a private mount namespace (unshare -m) in which the project directory (same absolute
# path), the host cargo registry cache, resolv.conf and the CA bundle are bind-mounted into the
# chroot; the mounts disappear with the namespace.
#
# Usage (root):  chroot.sh setup            create or refresh the chroot (no-op when up to date)
#                chroot.sh run CMD [ARG...]  run CMD inside it (cwd = project dir)
# Environment:   QP_PROJECT     project root (required)
#                QP_ARM_CHROOT  chroot directory (default $QP_PROJECT/target/arm-chroot)
#                QP_SUITE / QP_MIRROR  Debian suite and mirror (default stable, deb.debian.org)
#                QP_PASSENV     names of variables copied into the chroot environment
set -euo pipefail

: "${QP_PROJECT:?QP_PROJECT must name the project root}"
PROJECT=$(realpath "$QP_PROJECT")
ROOT=${QP_ARM_CHROOT:-$PROJECT/target/arm-chroot}
SUITE=${QP_SUITE:-stable}
MIRROR=${QP_MIRROR:-http://deb.debian.org/debian}
PKGS="rustc-web cargo-web rust-web-clippy libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu qemu-user ca-certificates"
# Bump LAYOUT when the way the chroot is built changes; the stamp forces a rebuild.
LAYOUT=1
WANT="layout=$LAYOUT suite=$SUITE mirror=$MIRROR pkgs=$PKGS"
STAMP=$ROOT/.qparity-arm-chroot

say() { printf 'arm-chroot: %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (mmdebstrap, chroot and mount namespaces)"

# True when anything is mounted at or below $1 (never delete such a tree).
has_mounts() {
  local d; d=$(realpath -m "$1")
  awk -v d="$d" '$5 == d || index($5, d "/") == 1 { hit = 1 } END { exit !hit }' /proc/self/mountinfo
}

setup() {
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    return 0
  fi
  if ! command -v mmdebstrap >/dev/null; then
    say "installing mmdebstrap with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends mmdebstrap >/dev/null 2>&1 || {
      apt-get update >/dev/null
      apt-get install -y --no-install-recommends mmdebstrap >/dev/null
    }
  fi
  local tmp=$ROOT.partial
  if [ -e "$tmp" ]; then
    has_mounts "$tmp" && fail "$tmp has mounts below it"
    rm -rf "$tmp"
  fi
  mkdir -p "$(dirname "$ROOT")"
  say "building $ROOT (Debian $SUITE, amd64 + arm64 multiarch); this takes a minute or two"
  # Path filters keep the tree small: only qemu-aarch64 of the qemu-user binaries, no arm64
  # copies of the compiler's own shared libraries (arm64 is only a target here), no docs.
  mmdebstrap --variant=minbase --architectures=amd64,arm64 \
    --include="$(echo $PKGS | tr ' ' ,)" \
    --dpkgopt='path-exclude=/usr/bin/qemu-*' \
    --dpkgopt='path-include=/usr/bin/qemu-aarch64' \
    --dpkgopt='path-exclude=/usr/lib/aarch64-linux-gnu/librustc_driver-*' \
    --dpkgopt='path-exclude=/usr/lib/aarch64-linux-gnu/libLLVM*' \
    --dpkgopt='path-exclude=/usr/lib/aarch64-linux-gnu/libz3*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$SUITE" "$tmp" "$MIRROR" >&2
  [ -d "$tmp/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib" ] || fail "chroot lacks the aarch64 std"
  [ -x "$tmp/usr/bin/qemu-aarch64" ] || fail "chroot lacks qemu-aarch64"
  echo "$WANT" > "$tmp/.qparity-arm-chroot"
  if [ -e "$ROOT" ]; then
    has_mounts "$ROOT" && fail "$ROOT has mounts below it"
    rm -rf "$ROOT"
  fi
  mv "$tmp" "$ROOT"
  say "chroot ready ($(du -sh "$ROOT" | cut -f1))"
}

run() {
  [ -f "$STAMP" ] || fail "no chroot at $ROOT (run setup first)"
  local reg=${CARGO_HOME:-$HOME/.cargo}/registry
  mkdir -p "$reg"
  local envs=(HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8)
  local v
  for v in ${QP_PASSENV:-}; do
    if [ -n "${!v+x}" ]; then envs+=("$v=${!v}"); fi
  done
  unshare --mount --propagation private -- bash -euc '
    root=$1; project=$2; reg=$3; shift 3
    mount -t proc proc "$root/proc"
    mkdir -p "$root$project" "$root/root/.cargo/registry"
    mount --bind "$project" "$root$project"
    mount --bind "$reg" "$root/root/.cargo/registry"
    for f in /etc/resolv.conf /etc/ssl/certs/ca-certificates.crt; do
      if [ -f "$f" ]; then touch "$root$f"; mount --bind "$f" "$root$f"; fi
    done
    exec chroot "$root" /usr/bin/env -i "$@"
  ' _ "$ROOT" "$PROJECT" "$reg" "${envs[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$PROJECT" "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  run) [ $# -gt 0 ] || fail "run needs a command"; run "$@" ;;
  *) fail "usage: chroot.sh setup | run CMD [ARG...]" ;;
esac

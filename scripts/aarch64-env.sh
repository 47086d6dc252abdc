# shellcheck shell=bash
# shellcheck disable=SC2034 # variables are used by the scripts that source this file
# Sourced by scripts/build-aarch64, test-aarch64, dist and check-dist:
# the Docker-free aarch64 (Jetson) toolchain settings, in one place.
#
# Route: `cargo zigbuild --target aarch64-unknown-linux-gnu.2.31`. Zig links
# against its own glibc 2.31 symbol stubs, so the binaries load on JetPack 5
# (Ubuntu 20.04, glibc 2.31) and JetPack 6 (Ubuntu 22.04, glibc 2.35), and
# tract's assembly kernels are compiled by zig's C compiler.
#
# Native libraries (ALSA for cpal, later more): pkg-config looks only into a
# private arm64 sysroot, $AARCH64_SYSROOT, holding the files of Debian's arm64
# -dev packages (unpacked with dpkg-deb, never installed into the system). The
# binary records `NEEDED libasound.so.2` and ALSA_0.9 symbol versions; on the
# board the board's own libasound is loaded. Debian 12's libasound itself
# needs glibc 2.34, which zig's 2.31 stubs do not define, so the link uses
# --allow-shlib-undefined: only the shared library's own references are
# let through, our binary's glibc references are still pinned to 2.31 (and
# scripts/check-glibc verifies that).
#
# Needs (scripts/setup-aarch64 installs them): rustup target
# aarch64-unknown-linux-gnu, cargo-zigbuild, zig (PyPI `ziglang`), and the
# arm64 dpkg architecture for `apt-get download`. Tests also need qemu-user
# and libc6-arm64-cross.

EMOGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AARCH64_TARGET=aarch64-unknown-linux-gnu
AARCH64_GLIBC="${AARCH64_GLIBC:-2.31}"
AARCH64_ZIG_TARGET="$AARCH64_TARGET.$AARCH64_GLIBC"
# The arm64 -dev packages unpacked into the private sysroot.
AARCH64_SYSROOT_DEBS="${AARCH64_SYSROOT_DEBS:-libasound2 libasound2-dev}"
AARCH64_SYSROOT="${AARCH64_SYSROOT:-$EMOGATE_ROOT/target/aarch64-sysroot}"
AARCH64_LIBDIR="$AARCH64_SYSROOT/usr/lib/aarch64-linux-gnu"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$EMOGATE_ROOT/target}"
# Cargo profile of the aarch64 builds (Cargo.toml explains it).
AARCH64_PROFILE="${AARCH64_PROFILE:-jetson}"
AARCH64_OUT="$CARGO_TARGET_DIR/$AARCH64_TARGET/$AARCH64_PROFILE"
export CARGO_TARGET_DIR

# pkg-config for the target only (host build scripts keep the host's).
export PKG_CONFIG_ALLOW_CROSS_aarch64_unknown_linux_gnu=1
export PKG_CONFIG_SYSROOT_DIR_aarch64_unknown_linux_gnu="$AARCH64_SYSROOT"
export PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu="$AARCH64_LIBDIR/pkgconfig:$AARCH64_SYSROOT/usr/share/pkgconfig"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS:-} -C link-arg=-Wl,--allow-shlib-undefined"
# bindgen (v4l2-sys for V4L2 cameras) parses the arm64 kernel and libc headers
# of libc6-dev-arm64-cross.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="${BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu:---sysroot=/usr/aarch64-linux-gnu}"
# Emulated runs: the loader and libc of Debian's libc6-arm64-cross, then the
# sysroot's libraries. LD_LIBRARY_PATH must name the cross libc's folder first:
# the loader also searches /lib/aarch64-linux-gnu, and on a host that has the
# multiarch libc6:arm64 installed it would pair the cross ld.so with that
# libc.so.6, a different build, and every pthread_create then spins forever.
# `-E` sets the variable for the emulated program only.
# `-cpu cortex-a76`: an ARMv8.2-A core with FP16 and dot product and no SVE,
# like the Jetson Orin's Cortex-A78AE, so tract picks the NEON kernels a
# board runs; qemu's default CPU (`max`) has SVE, and tract then prefers its
# SVE kernels, which no Jetson runs.
AARCH64_QEMU="qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib:$AARCH64_LIBDIR"

aarch64_die() {
  echo "error: $*" >&2
  exit 1
}

# Checks the tools are there, naming the one that is not.
aarch64_require_tools() {
  rustup target list --installed 2>/dev/null | grep -qx "$AARCH64_TARGET" ||
    aarch64_die "rust target $AARCH64_TARGET missing: run scripts/setup-aarch64 (or rustup target add $AARCH64_TARGET)"
  command -v cargo-zigbuild >/dev/null ||
    aarch64_die "cargo-zigbuild missing: run scripts/setup-aarch64 (or cargo install --locked cargo-zigbuild)"
  command -v zig >/dev/null || python3 -m ziglang version >/dev/null 2>&1 ||
    aarch64_die "zig missing: run scripts/setup-aarch64 (or python3 -m pip install ziglang)"
}

# Unpacks the arm64 -dev packages into $AARCH64_SYSROOT once.
aarch64_sysroot() {
  local stamp="$AARCH64_SYSROOT/.debs"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$AARCH64_SYSROOT_DEBS" ]; then
    return
  fi
  dpkg --print-foreign-architectures | grep -qx arm64 ||
    aarch64_die "the arm64 dpkg architecture is not enabled: run scripts/setup-aarch64 (dpkg --add-architecture arm64 && apt-get update)"
  local dl
  dl="$(mktemp -d)"
  local pkgs=()
  for p in $AARCH64_SYSROOT_DEBS; do pkgs+=("$p:arm64"); done
  (cd "$dl" && apt-get download "${pkgs[@]}" 2>/dev/null) ||
    (cd "$dl" && apt-get download "${pkgs[@]}") ||
    aarch64_die "apt-get download ${pkgs[*]} failed (apt-get update?)"
  rm -rf "$AARCH64_SYSROOT"
  mkdir -p "$AARCH64_SYSROOT"
  for d in "$dl"/*.deb; do dpkg-deb -x "$d" "$AARCH64_SYSROOT"; done
  rm -rf "$dl"
  echo "$AARCH64_SYSROOT_DEBS" >"$stamp"
}

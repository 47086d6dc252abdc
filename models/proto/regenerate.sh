#!/usr/bin/env bash
# Regenerates models/src/onnx/proto.rs from onnx.proto (ONNX 1.23.2,
# Apache-2.0, copied from the `onnx` wheel). Needs `protoc`
# (Debian: protobuf-compiler). The generated file is committed so that
# builds need neither protoc nor a build script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/out"
cat > "$work/Cargo.toml" <<'TOML'
[package]
name = "onnx-protogen"
version = "0.0.0"
edition = "2021"
[dependencies]
prost-build = "=0.14.6"
TOML
cat > "$work/src/main.rs" <<'RS'
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (out, proto) = (&args[1], std::path::Path::new(&args[2]));
    let mut cfg = prost_build::Config::new();
    cfg.out_dir(out);
    cfg.bytes(["."]);
    cfg.compile_protos(&[proto], &[proto.parent().unwrap()]).unwrap();
}
RS
(cd "$work" && cargo run -q -- "$work/out" "$here/onnx.proto")
cp "$work/out/onnx.rs" "$here/../src/onnx/proto.rs"
(cd "$here/.." && cargo fmt -- src/onnx/proto.rs)
echo "regenerated models/src/onnx/proto.rs"

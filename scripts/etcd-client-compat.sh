#!/usr/bin/env bash
# quorumkv driven by a second etcd client library: the third-party `etcd-client` crate
# (tonic/prost), against a real 3-node cluster (compat/etcd-client/tests/).
#
# etcd-client's build script runs prost-build, which needs a `protoc` executable. The build
# needs nothing but the Rust toolchain: compat/protoc-shim is a protoc stand-in in pure Rust
# (the protox compiler), built first and handed to prost-build through PROTOC. Both compat
# packages are outside the workspace and pin their dependencies in their own Cargo.lock.
#
# Honours CARGO_TARGET_DIR (default: ./target) and QUORUMKV_BIN (a quorumkv binary to test
# instead of building one). The test run is bounded by
# ETCD_CLIENT_COMPAT_TIMEOUT seconds (default 600); each test also has its own deadlines.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in
  /*) ;;
  *) target_dir="$PWD/$target_dir" ;;
esac
export CARGO_TARGET_DIR="$target_dir"

echo "== building the protoc shim (compat/protoc-shim, pure Rust)"
cargo build --locked --manifest-path compat/protoc-shim/Cargo.toml
protoc="$target_dir/debug/protoc"
"$protoc" --version

if [ -n "${QUORUMKV_BIN:-}" ]; then
  # Given by scripts/test.sh: the binary its workspace test build just made. Building it again
  # with `cargo build -p quorumkv` would recompile much of the tree (features unify
  # differently for one package than for the whole workspace).
  quorumkv="$QUORUMKV_BIN"
  if [ ! -x "$quorumkv" ]; then
    echo "QUORUMKV_BIN=$quorumkv is not an executable; unset it to build quorumkv here" >&2
    exit 1
  fi
  echo "== using $quorumkv"
else
  echo "== building quorumkv"
  cargo build --locked -p quorumkv
  quorumkv="$target_dir/debug/quorumkv"
fi

echo "== building the etcd-client tests (PROTOC=$protoc)"
export PROTOC="$protoc"
cargo test --locked --manifest-path compat/etcd-client/Cargo.toml --no-run

echo "== running the etcd-client tests against a 3-node cluster"
QUORUMKV_BIN="$quorumkv" timeout --kill-after=10 "${ETCD_CLIENT_COMPAT_TIMEOUT:-600}" \
  cargo test --locked --manifest-path compat/etcd-client/Cargo.toml
echo "== etcd-client compatibility tests passed"

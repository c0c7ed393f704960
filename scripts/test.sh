#!/usr/bin/env bash
# The whole test suite: unit and integration tests of every crate (the simulation sweep of
# 200 seeds among them), then one sweep per planted bug, which must FAIL to count as a pass:
# that shows the simulator and the checkers can catch a broken build. In between, the
# third-party etcd-client crate drives a real cluster (scripts/etcd-client-compat.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== workspace tests (the simulation sweep of 200 seeds among them)"
cargo test --workspace

echo "== the etcd v3 API from a second client library (the etcd-client crate)"
# The workspace test build above made the quorumkv binary (the cli crate's tests run it).
target_dir="${CARGO_TARGET_DIR:-target}"
QUORUMKV_BIN="$(cd "$target_dir" && pwd)/debug/quorumkv" ./scripts/etcd-client-compat.sh

for bug in bug-double-vote bug-stale-read bug-commit-old-term; do
  echo "== planted bug: $bug (the sweep must report violations)"
  cargo test -p quorumkv-sim --features "$bug" --test planted_bugs
done
echo "== all tests passed"

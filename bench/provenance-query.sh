#!/usr/bin/env bash
# The provenance store at scale: a store of N records (default 10,000,000) written through the
# real writer with events shaped like flows/sensors.yaml's, then the time of one record's
# lineage and of a search for one node in one minute, each on a freshly opened store; and
# the same events written to redb, for comparison (events/s, bytes).
#   bash bench/provenance-query.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000000}"
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-core --example provenance_bench
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${CARGO_TARGET_DIR:-target}/release/examples/provenance_bench" "$n" "$work"

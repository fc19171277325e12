#!/usr/bin/env bash
# flows/sensors.yaml side by side with the hand-written single-thread Rust reference, in one run.
#   bash bench/ratio.sh [N] [ROUNDS]
# Makes N sensor events (default 1,000,000) with the workload's own generator, checks flow's
# output against the exact oracle, then prints:
#   - the median ratio of wall times over ROUNDS rounds (default 5; reference time / flow time:
#     1.0 is as fast as hand-written Rust), from the workload's compare.sh;
#   - instructions per event of both, counted by callgrind on 200,000 events: stable on a
#     shared machine, where wall times move with the neighbours' load;
#   - flow's peak RSS.
# Needs the reference workload beside the repo (../shared/workloads/sensors, or
# $SENSORS_WORKLOAD); the project never needs it to build, test or run.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
rounds="${2:-5}"
workload=${SENSORS_WORKLOAD:-../shared/workloads/sensors}
[ -f "$workload/compare.sh" ] || { echo "bench/ratio.sh needs $workload (the reference workload)" >&2; exit 2; }
[ -x /usr/bin/time ] || { apt-get install -y -qq time >/dev/null 2>&1 || { echo "needs /usr/bin/time (Debian package time)" >&2; exit 2; }; }
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-cli
bin=$PWD/target/release/flow
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 "$workload/gen.py" "$n" 7 > "$work/events.jsonl"
python3 "$workload/oracle.py" "$work/events.jsonl" "$work/oracle" >/dev/null 2>&1
mkdir -p "$work/out"
INPUT="$work/events.jsonl" OUT_DIR="$work/out" /usr/bin/time -f '%e %M' -o "$work/time" \
  "$bin" run --quiet flows/sensors.yaml
read -r secs kb < "$work/time"
python3 "$workload/check.py" "$work/out" "$work/oracle" --quiet >/dev/null \
  || { echo "flow's output DIFFERS from the oracle's" >&2; exit 1; }
echo "input: $n events; output equals the oracle's; one run: ${secs} s, peak RSS $((kb / 1024)) MB"

bash "$workload/compare.sh" "$work/events.jsonl" "$rounds" -- "$bin" run --quiet flows/sensors.yaml

if command -v valgrind >/dev/null; then
  head -200000 "$work/events.jsonl" > "$work/200k.jsonl"
  ref=${REF_TARGET_DIR:-/tmp/sensors-ref-target}/release/sensors-ref
  count() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 \
    | awk '/Collected/ {print $4}'; }
  mkdir -p "$work/ci-ref" "$work/ci-flow"
  r=$(count "$ref" "$work/200k.jsonl" "$work/ci-ref")
  f=$(INPUT="$work/200k.jsonl" OUT_DIR="$work/ci-flow" count "$bin" run --quiet flows/sensors.yaml)
  python3 -c "r, f = $r / 2e5, $f / 2e5; print(f'instructions per event: reference {r:,.0f}, flow {f:,.0f} ({f / r:.1f}x)')"
fi

#!/usr/bin/env bash
# Benchmark of flows/sensors.yaml: events/s and peak RSS.
#   bash bench/sensors.sh [N] [RUNS]
# Makes N sensor events (default 1,000,000) with flow's own `generate` processor, then runs the
# flow RUNS times (default 3) in a release build and prints each run and the median.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
runs="${2:-3}"
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-cli
bin=target/release/flow
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

COUNT="$n" OUT="$work/events.jsonl" "$bin" run --quiet bench/gen-sensors.yaml
echo "input: $n events, $(du -h "$work/events.jsonl" | cut -f1)"

rates=()
for i in $(seq "$runs"); do
  out="$work/out$i"; mkdir -p "$out"
  stats="$work/time$i"
  INPUT="$work/events.jsonl" OUT_DIR="$out" /usr/bin/time -f '%e %M' -o "$stats" \
    "$bin" run --quiet flows/sensors.yaml
  read -r secs kb < "$stats"
  rate=$(python3 -c "print(int($n / max($secs, 1e-9)))")
  rates+=("$rate")
  printf 'run %d: %6.2f s  %10d events/s  peak RSS %d MB  alerts %d\n' \
    "$i" "$secs" "$rate" $((kb / 1024)) "$(wc -l < "$out/alerts.jsonl")"
done
median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median: $median events/s"

# While developing, cross-check against the reference oracle when it is beside the repo.
oracle=../shared/workloads/sensors/oracle.py
if [ -f "$oracle" ]; then
  python3 "$oracle" "$work/events.jsonl" "$work/oracle" >/dev/null
  if cmp -s "$work/oracle/alerts.jsonl" "$work/out1/alerts.jsonl"; then
    echo "alerts equal the oracle's ($(wc -l < "$work/oracle/alerts.jsonl") lines)"
  else
    echo "alerts DIFFER from the oracle's" >&2; exit 1
  fi
fi

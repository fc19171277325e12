#!/usr/bin/env bash
# Benchmark of flows/sensors.yaml: events/s and peak RSS.
#   bash bench/sensors.sh [N] [RUNS]
# Makes N sensor events (default 1,000,000) with flow's own `generate` processor, then runs the
# flow RUNS times (default 3) in a release build and prints each run and the median.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
runs="${2:-3}"
[ -x /usr/bin/time ] || { apt-get install -y -qq time >/dev/null 2>&1 || { echo "bench needs /usr/bin/time (Debian package time)" >&2; exit 2; }; }
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
  printf 'run %d: %6.2f s  %10d events/s  peak RSS %d MB  alerts %d  windows %d  late %d\n' \
    "$i" "$secs" "$rate" $((kb / 1024)) "$(wc -l < "$out/alerts.jsonl")" \
    "$(wc -l < "$out/windows.jsonl")" "$(wc -l < "$out/late.jsonl")"
done
median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median: $median events/s"

# While developing, cross-check against the reference oracle when it is beside the repo.
workloads=../shared/workloads/sensors
if [ -f "$workloads/oracle.py" ]; then
  python3 "$workloads/oracle.py" "$work/events.jsonl" "$work/oracle" 2>/dev/null
  python3 "$workloads/check.py" "$work/out1" "$work/oracle" --quiet \
    && echo "alerts and windows equal the oracle's" \
    || { echo "output DIFFERS from the oracle's" >&2; exit 1; }
  late=$(wc -l < "$work/out1/late.jsonl")
  want=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['late_dropped'])" "$work/oracle/stats.json")
  [ "$late" = "$want" ] && echo "late records: $late (oracle: $want)" || { echo "late records $late, oracle $want" >&2; exit 1; }
fi

#!/usr/bin/env bash
# The cost of provenance on flows/sensors.yaml: the same input run with --no-provenance and
# with provenance on, alternately, RUNS times each; events/s, peak RSS, and the store's bytes
# per source record.
#   bash bench/provenance.sh [N] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
runs="${2:-3}"
[ -x /usr/bin/time ] || { apt-get install -y -qq time >/dev/null 2>&1 || { echo "bench needs /usr/bin/time (Debian package time)" >&2; exit 2; }; }
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-cli
bin="${CARGO_TARGET_DIR:-target}/release/flow"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

COUNT="$n" OUT="$work/events.jsonl" "$bin" run --quiet --no-provenance bench/gen-sensors.yaml
echo "input: $n events, $(du -h "$work/events.jsonl" | cut -f1)"

one() { # mode run
  local out="$work/$1$2" stats="$work/time-$1$2" flag=()
  mkdir -p "$out"
  [ "$1" = off ] && flag=(--no-provenance)
  INPUT="$work/events.jsonl" OUT_DIR="$out" XDG_STATE_HOME="$work/state-$1$2" \
    /usr/bin/time -f '%e %M' -o "$stats" "$bin" run --quiet "${flag[@]}" flows/sensors.yaml
  read -r secs kb < "$stats"
  local rate extra=""
  rate=$(python3 -c "print(int($n / max($secs, 1e-9)))")
  if [ "$1" = on ]; then
    local store="$work/state-$1$2/flow/provenance/sensors"
    extra=$("$bin" provenance --store "$store" stats --format json | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(f\"store {s['bytes']} B, {s['bytes'] / max(s['records_created'], 1):.1f} B/record, {s['events']} events ({s['events'] / max($secs, 1e-9):.0f}/s)\")")
  fi
  printf '%-3s run %d: %6.2f s  %9d events/s  peak RSS %4d MB  %s\n' "$1" "$2" "$secs" "$rate" $((kb / 1024)) "$extra"
}
for i in $(seq "$runs"); do
  one off "$i"
  one on "$i"
done

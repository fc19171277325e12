#!/usr/bin/env bash
# Benchmark of WebAssembly plugins against native processors, on the sensors alerts filter
# (`.status != "error" && .temperature > 95`):
#   bash bench/plugins.sh [N] [RUNS]
# 1. N sensor events (default 1,000,000) made by flow's `generate`, filtered by the native VRL
#    `filter` (bench/alerts-native.yaml), by the Rust plugin (flows/plugin-alerts.yaml) and by
#    the Python plugin (flows/plugin-alerts-py.yaml), RUNS times each (default 3), release
#    build: events/s (median) and peak RSS, and a check that the three wrote the same alerts.
# 2. The cost of one call into each plugin for batches of 1, 64 and 512 records (criterion,
#    plugins/host/benches/calls.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
runs="${2:-3}"
[ -x /usr/bin/time ] || { apt-get install -y -qq time >/dev/null 2>&1 || { echo "bench needs /usr/bin/time (Debian package time)" >&2; exit 2; }; }
bash plugins/build.sh
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-cli
bin=target/release/flow
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PLUGINS="$PWD/plugins/examples/target/plugins"

COUNT="$n" OUT="$work/events.jsonl" "$bin" run --quiet bench/gen-sensors.yaml
echo "input: $n events, $(du -h "$work/events.jsonl" | cut -f1)"
# Compile the plugins once, outside the timed runs (the disk cache serves the runs).
for f in flows/plugin-alerts.yaml flows/plugin-alerts-py.yaml; do "$bin" validate "$f" 2>/dev/null || true; done

declare -A rate rss
for kind in native rust python; do
  case $kind in
    native) flowfile=bench/alerts-native.yaml ;;
    rust) flowfile=flows/plugin-alerts.yaml ;;
    python) flowfile=flows/plugin-alerts-py.yaml ;;
  esac
  rates=(); peak=0
  for i in $(seq "$runs"); do
    out="$work/$kind$i"; mkdir -p "$out"
    INPUT="$work/events.jsonl" OUT_DIR="$out" /usr/bin/time -f '%e %M' -o "$work/time" \
      "$bin" run --quiet "$flowfile"
    read -r secs kb < "$work/time"
    r=$(python3 -c "print(int($n / max($secs, 1e-9)))")
    rates+=("$r")
    [ "$kb" -gt "$peak" ] && peak=$kb
    printf '%-7s run %d: %6.2f s  %9d events/s  peak RSS %4d MB  alerts %d\n' \
      "$kind" "$i" "$secs" "$r" $((kb / 1024)) "$(wc -l < "$out/alerts.jsonl")"
  done
  rate[$kind]=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  rss[$kind]=$((peak / 1024))
done
cmp -s "$work/native1/alerts.jsonl" "$work/rust1/alerts.jsonl" || { echo "the Rust plugin's alerts differ from the native filter's" >&2; exit 1; }
cmp -s "$work/native1/alerts.jsonl" "$work/python1/alerts.jsonl" || { echo "the Python plugin's alerts differ from the native filter's" >&2; exit 1; }
echo "the three wrote the same alerts"
echo
printf '| %-22s | %10s | %8s | %13s |\n' "filter" "events/s" "vs native" "peak RSS (MB)"
printf '|%s|%s|%s|%s|\n' "------------------------" "------------" "----------" "---------------"
for kind in native rust python; do
  label=$kind; [ "$kind" = native ] && label="native (VRL filter)"; [ "$kind" = rust ] && label="Rust plugin"; [ "$kind" = python ] && label="Python plugin"
  ratio=$(python3 -c "print(f'{${rate[$kind]} / ${rate[native]}:.2f}')")
  printf '| %-22s | %10d | %8s | %13d |\n' "$label" "${rate[$kind]}" "$ratio" "${rss[$kind]}"
done

echo
echo "cost of one call (criterion, median):"
cargo bench -q -p flow-wasm --bench calls -- --output-format bencher 2>/dev/null \
  | awk '/^test /{name=$2; ns=$5; gsub(",","",ns); split(name,p,"/"); size=p[3];
         printf "  %-10s batch %4d: %10.1f us/call  %8.0f ns/record\n", p[2], size, ns/1000, ns/size}'

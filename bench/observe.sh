#!/usr/bin/env bash
# What watching a flow costs: flows/sensors.yaml on N events (default 1,000,000) run three
# ways in one release build, RUNS times each (default 3), interleaved, median events/s:
#   plain   no API;
#   scrape  --api, /metrics scraped once a second (curl);
#   tap     --api, a `flow tap` reading the alerts port (hot.matched) the whole run.
#   bash bench/observe.sh [N] [RUNS]
# Targets (issue 15): scraping costs <= 3%, an open tap <= 10%. Wall time moves with whatever
# else the machine runs; the flow process's own CPU seconds (events per CPU second) move less:
# both are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
runs="${2:-3}"
[ -x /usr/bin/time ] || { apt-get install -y -qq time >/dev/null 2>&1 || { echo "bench needs /usr/bin/time (Debian package time)" >&2; exit 2; }; }
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-cli
bin=$PWD/target/release/flow
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

COUNT="$n" OUT="$work/events.jsonl" "$bin" run --quiet bench/gen-sensors.yaml
echo "input: $n events, $(du -h "$work/events.jsonl" | cut -f1)"

# run MODE I: prints the elapsed seconds of one run.
run() {
  local mode=$1 i=$2 out="$work/$1-$2" args=() start end url=""
  mkdir -p "$out"
  [ "$mode" = plain ] || args=(--api 127.0.0.1:0)
  start=$(date +%s.%N)
  INPUT="$work/events.jsonl" OUT_DIR="$out" /usr/bin/time -f '%U %S' -o "$out/cpu" \
    "$bin" run --quiet "${args[@]}" flows/sensors.yaml 2>"$out/stderr" &
  local flow=$!
  pids+=("$flow")
  if [ "$mode" != plain ]; then
    for _ in $(seq 500); do
      url=$(sed -n 's/^flow: api listening on //p' "$out/stderr")
      [ -n "$url" ] && break
      sleep 0.01
    done
    if [ "$mode" = scrape ]; then
      (while kill -0 "$flow" 2>/dev/null; do curl -sf "$url/metrics" >/dev/null || true; sleep 1; done) &
    else
      "$bin" tap "$url" hot.matched >"$out/tapped.jsonl" 2>/dev/null &
    fi
    pids+=($!)
  fi
  wait "$flow"
  end=$(date +%s.%N)
  read -r user sys < "$out/cpu"
  python3 -c "print(f'{$end - $start:.3f} {$user + $sys:.3f}')"
}

declare -A rates cpu_rates
for i in $(seq "$runs"); do
  for mode in plain scrape tap; do
    read -r secs cpu < <(run "$mode" "$i")
    rate=$(python3 -c "print(int($n / max($secs, 1e-9)))")
    per_cpu=$(python3 -c "print(int($n / max($cpu, 1e-9)))")
    rates[$mode]+="$rate "
    cpu_rates[$mode]+="$per_cpu "
    printf '%-6s run %d: %7.2f s %10d events/s  %6.2f CPU s %10d events/CPU s  alerts %d\n' \
      "$mode" "$i" "$secs" "$rate" "$cpu" "$per_cpu" "$(wc -l < "$work/$mode-$i/alerts.jsonl")"
  done
done
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(median "${rates[plain]}")
cpu_base=$(median "${cpu_rates[plain]}")
for mode in plain scrape tap; do
  m=$(median "${rates[$mode]}")
  c=$(median "${cpu_rates[$mode]}")
  python3 -c "print(f'median {\"$mode\":6} {$m:>10} events/s  {100 * (1 - $m / $base):+.1f}% cost   {$c:>10} events/CPU s  {100 * (1 - $c / $cpu_base):+.1f}% cost')"
done

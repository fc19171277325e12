#!/usr/bin/env bash
# Benchmark of HTTP ingest (flows/http-ingest.yaml) against its ceiling, in the same run:
#   bash bench/http.sh [REQUESTS] [CLIENTS] [EVENTS]
# CLIENTS concurrent clients (default 8) POST REQUESTS NDJSON bodies (default 2,000) of EVENTS
# events each (default 1,000) over keep-alive connections, first to the ceiling (a minimal axum
# handler that reads the body and discards it), then to `flow run flows/http-ingest.yaml`
# (http_server -> filter -> file_sink, release build). Prints, for both, accepted events/s and
# the p50/p99 latency of a request (from its first attempt to its final 2xx, 429 answers and
# retry waits included); for the flow also the end-to-end rate (until the last line is in the
# output file), the 429s it answered, and its peak RSS; then the ratio to the ceiling.
# The load generator runs on the same machine and takes its share of the CPU in both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-2000}"
clients="${2:-8}"
events="${3:-1000}"
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-cli
cargo build -q --release -p flow-processors --example http_bench
bin="$PWD/target/release/flow"
bench="$PWD/target/release/examples/http_bench"
. scripts/services.sh
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
now() { date +%s.%N; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

echo "== $clients clients, $requests requests of $events NDJSON events"
port=$(any_free_port)
"$bench" ceiling "127.0.0.1:$port" &
pids+=($!)
wait_port "$port"
ceiling=$("$bench" load "http://127.0.0.1:$port/ingest" "$clients" "$requests" "$events")
echo "ceiling: $(field "$ceiling" events_per_s) events/s  p50 $(field "$ceiling" p50_ms) ms  p99 $(field "$ceiling" p99_ms) ms"

port=$(any_free_port)
out="$work/out"; mkdir -p "$out"
LISTEN="127.0.0.1:$port" OUT_DIR="$out" "$bin" run --quiet flows/http-ingest.yaml 2>"$work/flow.log" &
fpid=$!
pids+=($fpid)
wait_port "$port"
t0=$(now)
flow=$("$bench" load "http://127.0.0.1:$port/ingest" "$clients" "$requests" "$events")
want=$((requests * (events - events / 100)))
while [ "$(wc -l <"$out/ingest.jsonl" 2>/dev/null || echo 0)" -lt "$want" ]; do
  kill -0 $fpid 2>/dev/null || { cat "$work/flow.log" >&2; exit 1; }
  sleep 0.01
done
t1=$(now)
rss=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$fpid/status")
kill -TERM $fpid; wait $fpid || true
e2e=$(python3 -c "print(int($requests * $events / ($t1 - $t0)))")
echo "flow:    $(field "$flow" events_per_s) events/s  p50 $(field "$flow" p50_ms) ms  p99 $(field "$flow" p99_ms) ms  ($(field "$flow" rejected) answered 429)"
echo "flow end to end: $e2e events/s ($(wc -l <"$out/ingest.jsonl") lines written)  peak RSS $rss MB"
python3 -c "print('ratio: %.0f%% of the ceiling (end to end: %.0f%%)' % (100.0 * $(field "$flow" events_per_s) / $(field "$ceiling" events_per_s), 100.0 * $e2e / $(field "$ceiling" events_per_s)))"

#!/usr/bin/env bash
# Benchmark of kafka_sink and kafka_source against a plain librdkafka client, in the same run:
#   bash bench/kafka.sh [N] [RUNS]
# Makes N sensor events (default 2,000,000) with flow's own `generate` processor, starts its own
# tansu broker (scripts/services.sh, in-memory storage), then in a release build, RUNS rounds
# (default 5; each on new topics with 4 partitions, deleted at the end of the round) of:
# - produce: the file into `base` by the baseline (processors/examples/kafka_baseline.rs: what
#   `kcat -P` does, on the same bundled librdkafka and with kafka_sink's default settings), and
#   into `flow` and `raw` by a flow (`file` -> `kafka_sink`, with `format: json`, the
#   default, and `format: lines`, no parsing, as kcat); each ends once every delivery report
#   is in;
# - consume: `base` to a file by the baseline (`kcat -C -e`: a new group, from the beginning,
#   until N messages), `flow` and `raw` to files by a flow (`kafka_source` with `format:
#   json` / `raw` -> `file_sink`, stopped with SIGTERM once its file has N lines).
# Prints events/s (process start to the end, so both sides include connecting and, for
# consumers, joining the group; medians of the rounds), the ratios flow / baseline and the
# flow's peak RSS, and checks that every output has the N events. KEEP=1 keeps the work
# directory (logs, measurements).
# Why 2,000,000 events and 5 rounds: an idempotent producer starts sending only once it has its
# producer id, which librdkafka asks for on a 500 ms timer: 0 to 0.5 s of every produce run, on
# either side, at random. With 1,000,000 events (about a second) that alone moved single ratios
# between 0.6 and 1.4.
# Debian's kcat cannot be the baseline: its librdkafka 2.0.2 cannot talk to tansu.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000000}"
runs="${2:-5}"
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-cli
cargo build -q --release -p flow-processors --example kafka_baseline
bin=$PWD/target/release/flow
base=$PWD/target/release/examples/kafka_baseline
work="$(mktemp -d)"
. scripts/services.sh
cleanup() { [ -n "${KEEP:-}" ] && echo "work dir kept: $work" || rm -rf "$work"; }
services_on_exit cleanup
start_tansu >/dev/null
brokers=$FLOW_TEST_KAFKA_BROKERS

now() { date +%s.%N; }
rate() { python3 -c "print(int($1 / max($2 - $3, 1e-9)))"; }
# wait_lines FILE N PID: wait until FILE has N lines (reading only what was added, so the
# polling costs the flow little CPU); prints the time it did. Fails when PID ends first or
# after 600 s.
wait_lines() {
  python3 - "$@" <<'PY'
import os, sys, time
path, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen, start, f = 0, time.time(), None
while seen < n:
    if f is None and os.path.exists(path):
        f = open(path, "rb")
    chunk = f.read(1 << 20) if f else b""
    if chunk:
        seen += chunk.count(b"\n")
        continue
    if time.time() - start > 600:
        sys.exit("timeout: %d of %d lines after 600 s" % (seen, n))
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the flow ended with %d of %d lines" % (seen, n))
    time.sleep(0.005)
print(time.time())
PY
}
# Peak RSS in MB of a running process (VmHWM), sampled every 0.1 s by `watch_rss PID &` into
# $work/rss.PID.
watch_rss() {
  local pid=$1 hwm
  while hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null) && [ -n "$hwm" ]; do
    echo "$hwm" >"$work/rss.$pid"
    sleep 0.1
  done
}
rss_mb() { echo $(($(cat "$work/rss.$1" 2>/dev/null || echo 0) / 1024)); }

COUNT="$n" OUT="$work/events.jsonl" "$bin" run --quiet bench/gen-sensors.yaml
echo "input: $n events, $(du -h "$work/events.jsonl" | cut -f1); $runs rounds"

# The flows, each in two variants: `json` (the default: every line or message parsed, and one
# that is not JSON goes to `failure`) and raw lines / values (no parsing, what kcat does).
cat >"$work/produce.yaml" <<'YAML'
name: bench-kafka-produce
processors:
  events: { type: file, path: "${INPUT}", format: "${FORMAT}" }
  kafka: { type: kafka_sink, brokers: "${KAFKA_BROKERS}", topic: "${TOPIC}" }
connections:
  - events -> kafka
YAML
cat >"$work/consume.yaml" <<'YAML'
name: bench-kafka-consume
processors:
  kafka: { type: kafka_source, brokers: "${KAFKA_BROKERS}", group: "bench-${TOPIC}", topics: ["${TOPIC}"], format: "${FORMAT}" }
  file: { type: file_sink, path: "${OUT}", append: false }
connections:
  - kafka -> file
YAML
export KAFKA_BROKERS="$brokers" INPUT="$work/events.jsonl"

# Each measurement appends "rate rss_mb" to $work/NAME.txt.
# base_produce TOPIC / base_consume TOPIC: the baseline.
base_produce() {
  local t0 t1
  t0=$(now)
  "$base" produce "$brokers" "$1" "$work/events.jsonl" 2>"$work/base-produce.log" \
    || { cat "$work/base-produce.log" >&2; exit 1; }
  t1=$(now)
  echo "$(rate "$n" "$t1" "$t0") 0" >>"$work/produce-base.txt"
}
base_consume() {
  local t0 t1
  t0=$(now)
  "$base" consume "$brokers" "$1" "$n" "$work/out.jsonl" 2>"$work/base-consume.log" \
    || { cat "$work/base-consume.log" >&2; exit 1; }
  t1=$(now)
  echo "$(rate "$n" "$t1" "$t0") 0" >>"$work/consume-base.txt"
}
# flow_produce FORMAT TOPIC: the file into TOPIC.
flow_produce() {
  local t0 t1 fpid
  t0=$(now)
  FORMAT=$1 TOPIC=$2 "$bin" run --quiet "$work/produce.yaml" 2>"$work/flow-produce.log" &
  fpid=$!
  watch_rss $fpid &
  wait $fpid || { cat "$work/flow-produce.log" >&2; exit 1; }
  t1=$(now)
  echo "$(rate "$n" "$t1" "$t0") $(rss_mb $fpid)" >>"$work/produce-$1.txt"
}
# flow_consume FORMAT TOPIC: TOPIC into a file, stopped once it has N lines.
flow_consume() {
  local t0 t1 fpid rss
  t0=$(now)
  FORMAT=$1 TOPIC=$2 OUT="$work/out.jsonl" "$bin" run --quiet "$work/consume.yaml" \
    2>"$work/flow-consume.log" &
  fpid=$!
  watch_rss $fpid &
  t1=$(wait_lines "$work/out.jsonl" "$n" $fpid) || { cat "$work/flow-consume.log" >&2; kill -TERM $fpid; exit 1; }
  rss=$(rss_mb $fpid)
  kill -TERM $fpid
  wait $fpid || true
  echo "$(rate "$n" "$t1" "$t0") $rss" >>"$work/consume-$1.txt"
}
# check NAME: $work/out.jsonl holds every event, once (order differs across partitions).
check() {
  python3 - "$work/events.jsonl" "$work/out.jsonl" "$1" <<'PY'
import sys
src, out, name = sys.argv[1:]
a = sorted(open(src, "rb")); b = sorted(open(out, "rb"))
if a != b:
    sys.exit("%s: %d lines out of %d, not the same events" % (name, len(b), len(a)))
PY
  rm -f "$work/out.jsonl"
}

# Each round: new topics (4 partitions), produced by each side, then read back by each side
# (the flows in new groups, the baseline in a new group of its own).
for r in $(seq "$runs"); do
  for t in base flow raw; do
    "$FLOW_TEST_TANSU" topic create --broker "tcp://$brokers" --partitions 4 "$t-$r" >/dev/null
  done
  base_produce "base-$r"
  flow_produce json "flow-$r"
  flow_produce lines "raw-$r"
  base_consume "base-$r"; check "baseline consume"
  flow_consume json "flow-$r"; check "flow consume (json)"
  flow_consume raw "raw-$r"; check "flow consume (raw)"
  echo "round $r: produce ev/s baseline $(tail -1 "$work/produce-base.txt" | cut -d' ' -f1)," \
    "json $(tail -1 "$work/produce-json.txt" | cut -d' ' -f1), raw $(tail -1 "$work/produce-lines.txt" | cut -d' ' -f1);" \
    "consume ev/s baseline $(tail -1 "$work/consume-base.txt" | cut -d' ' -f1)," \
    "json $(tail -1 "$work/consume-json.txt" | cut -d' ' -f1), raw $(tail -1 "$work/consume-raw.txt" | cut -d' ' -f1)"
  # The broker keeps topics in memory: free them for the next round.
  for t in base flow raw; do
    "$FLOW_TEST_TANSU" topic delete --broker "tcp://$brokers" "$t-$r" >/dev/null
  done
done
echo "every output had the $n events, once"

# Medians of the rounds; the flow's peak RSS is the highest seen.
median() { cut -d' ' -f1 "$work/$1.txt" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
peak() { cut -d' ' -f2 "$work/$1.txt" | sort -n | tail -1; }
row() { # row LABEL FLOW-FILE BASE-FILE NOTE
  local f b
  f=$(median "$2"); b=$(median "$3")
  printf '%-16s %12d %14d %7.2f %9d MB   %s\n' "$1" "$f" "$b" "$(python3 -c "print($f / $b)")" "$(peak "$2")" "$4"
}
printf '\n%-16s %12s %14s %7s %12s   (medians of %d rounds)\n' "" "flow ev/s" "baseline ev/s" ratio "flow peak RSS" "$runs"
row "produce (json)" produce-json produce-base "file (format: json) -> kafka_sink"
row "produce (raw)" produce-lines produce-base "file (format: lines) -> kafka_sink"
row "consume (json)" consume-json consume-base "kafka_source (format: json) -> file_sink"
row "consume (raw)" consume-raw consume-base "kafka_source (format: raw) -> file_sink"
echo "baseline: processors/examples/kafka_baseline.rs (kcat -P / kcat -C on the same librdkafka);"
echo "produce: acks=all, idempotent, lz4, linger 5 ms; consume: 4 partitions, a new group."

#!/usr/bin/env bash
# Benchmark of influxdb_sink and s3_sink against local servers, each next to a plain client
# doing the same job in the same run.
#   bash bench/sinks.sh [N]
#   SINKS=influx bash bench/sinks.sh [N]   (only some sinks: influx, s3; default both)
#   ROUNDS=5 bash bench/sinks.sh           (influx rounds, default 5)
# Makes N sensor events (default 200,000) with flow's own `generate` processor, starts its own
# VictoriaMetrics and s3s-fs (scripts/services.sh), then in a release build:
# - influx: every event as one point (measurement `bench`, tag `device`, fields `temperature`
#   and `rpm`, time `ts`) through `influxdb_sink`, against the same line protocol, in the
#   same batches of 5000 gzip bodies, posted by one `curl` process (keep-alive); ROUNDS
#   rounds, the two in turn (which goes first alternates), medians: single runs moved by a
#   fifth on this shared two-core machine, and the first writer met a cold server;
# - s3: flows/sensors-to-s3.yaml (errors dropped, gzip JSON lines by device and hour), against
#   the very objects it wrote uploaded again by `aws s3 cp --recursive`.
# Prints events/s for both and the ratio (flow / baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-200000}"
rounds="${ROUNDS:-5}"
sinks=" ${SINKS:-influx s3} "
on() { [[ "$sinks" == *" $1 "* ]]; }
# The S3 baseline needs the AWS CLI (Debian: package awscli, /usr/bin/aws). Check before the
# long build, and say what is missing rather than dying silently under `set -e`.
aws=$(command -v aws || true)
if on s3 && [ -z "$aws" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "==> the aws CLI is missing: installing the Debian package awscli"
  { apt-get install -y -qq awscli >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq awscli >/dev/null 2>&1; }; } || true
  aws=$(command -v aws || true)
fi
if on s3 && [ -z "$aws" ]; then
  echo "bench/sinks.sh: the aws CLI is needed for the S3 baseline (aws s3 cp) and was not found;" >&2
  echo "  install it (Debian/Ubuntu: sudo apt-get install awscli) and run again" >&2
  exit 1
fi
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-cli
bin=$PWD/target/release/flow
work="$(mktemp -d)"
. scripts/services.sh
cleanup() { rm -rf "$work"; }
services_on_exit cleanup
on influx && start_victoria_metrics >/dev/null
on s3 && start_s3 >/dev/null

now() { date +%s.%N; }
rate() { python3 -c "import sys; print(int($1 / max($2, 1e-9)))"; }

COUNT="$n" OUT="$work/events.jsonl" "$bin" run --quiet bench/gen-sensors.yaml
echo "input: $n events, $(du -h "$work/events.jsonl" | cut -f1)"

if on influx; then
# --- InfluxDB line protocol into VictoriaMetrics ---------------------------------------------
cat >"$work/influx.yaml" <<'YAML'
name: bench-influx
processors:
  events: { type: file, path: "${INPUT}", format: json }
  points:
    type: influxdb_sink
    url: ${INFLUX_URL}
    org: flow
    bucket: bench
    measurement: ${MEASUREMENT}
    tags: [device]
    fields: [temperature, rpm]
    timestamp: ts
    batch_max_records: 5000
connections:
  - events -> points
YAML
# The same points as line protocol, in the same batches, gzip-compressed, for curl.
mkdir -p "$work/lp"
python3 - "$work/events.jsonl" "$work/lp" "$FLOW_TEST_INFLUX_URL" <<'PY'
import gzip, json, sys
src, out, url = sys.argv[1:]
batch, files = [], []
def flush():
    if batch:
        f = f"{out}/{len(files):05d}.lp.gz"
        with open(f, "wb") as fh:
            fh.write(gzip.compress("".join(batch).encode(), compresslevel=1))
        files.append(f)
        batch.clear()
for line in open(src):
    e = json.loads(line)
    batch.append(f"bench_curl,device={e['device']} temperature={e['temperature']},rpm={e['rpm']}i {e['ts']}\n")
    if len(batch) == 5000:
        flush()
flush()
with open(f"{out}/curl.cfg", "w") as cfg:
    for i, f in enumerate(files):
        if i:
            cfg.write("next\n")
        cfg.write(f'url = "{url}/api/v2/write?org=flow&bucket=bench&precision=ms"\n')
        cfg.write(f'data-binary = "@{f}"\n')
        cfg.write('header = "Content-Encoding: gzip"\nsilent\nfail\noutput = "/dev/null"\n')
PY
# One round: flow's run and curl's, each timed (seconds appended to flow.s / curl.s).
timed() { local t0 t1; t0=$(now); "${@:2}"; t1=$(now); python3 -c "print($t1 - $t0)" >>"$work/$1.s"; }
influx_flow() {
  INPUT="$work/events.jsonl" INFLUX_URL="$FLOW_TEST_INFLUX_URL" MEASUREMENT=bench_flow \
    "$bin" run --quiet "$work/influx.yaml"
}
influx_curl() { curl -K "$work/lp/curl.cfg"; }
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then timed flow influx_flow; timed curl influx_curl
  else timed curl influx_curl; timed flow influx_flow; fi
done
median_s() { sort -n "$work/$1.s" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "influx: flow $(tr '\n' ' ' <"$work/flow.s")s; curl $(tr '\n' ' ' <"$work/curl.s")s"
flow_influx=$(rate "$n" "$(median_s flow)")
curl_influx=$(rate "$n" "$(median_s curl)")
curl -s "$FLOW_TEST_INFLUX_URL/internal/force_flush" >/dev/null
sleep 2
count() {
  curl -s "$FLOW_TEST_INFLUX_URL/api/v1/query" --data-urlencode "query=sum(count_over_time($1[10y]))" \
    --data-urlencode "time=2030-01-01T00:00:00Z" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)'
}
echo "influx: stored points: flow $(count bench_flow_rpm), curl $(count bench_curl_rpm) (of $n a round, $rounds rounds)"

fi

if on s3; then
# --- S3: flows/sensors-to-s3.yaml into s3s-fs --------------------------------------------------
export AWS_ACCESS_KEY_ID="$FLOW_TEST_S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$FLOW_TEST_S3_SECRET_KEY" AWS_DEFAULT_REGION=us-east-1
t0=$(now)
INPUT="$work/events.jsonl" S3_URL="s3://$FLOW_TEST_S3_BUCKET/flow" S3_ENDPOINT="$FLOW_TEST_S3_ENDPOINT" \
  "$bin" run --quiet flows/sensors-to-s3.yaml
t1=$(now)
flow_s3=$(rate "$n" "$(python3 -c "print($t1 - $t0)")")
objects=$(find "$S3_DIR/data/$FLOW_TEST_S3_BUCKET/flow" -type f | wc -l)
bytes=$(du -sh "$S3_DIR/data/$FLOW_TEST_S3_BUCKET/flow" | cut -f1)
# The same objects (same bytes, same keys) uploaded by a plain client.
cp -r "$S3_DIR/data/$FLOW_TEST_S3_BUCKET/flow" "$work/objects"
t0=$(now)
"$aws" --endpoint-url "$FLOW_TEST_S3_ENDPOINT" s3 cp --recursive --only-show-errors \
  "$work/objects" "s3://$FLOW_TEST_S3_BUCKET/aws"
t1=$(now)
aws_s3=$(rate "$n" "$(python3 -c "print($t1 - $t0)")")

fi

printf '\n%-8s %14s %16s %8s\n' sink "flow events/s" "baseline ev/s" ratio
if on influx; then
printf '%-8s %14d %16d %8.2f   (baseline: curl, same line protocol and batches; medians of %d rounds)\n' influx \
  "$flow_influx" "$curl_influx" "$(python3 -c "print($flow_influx / $curl_influx)")" "$rounds"
fi
if on s3; then
printf '%-8s %14d %16d %8.2f   (baseline: aws s3 cp of the same %s objects, %s)\n' s3 \
  "$flow_s3" "$aws_s3" "$(python3 -c "print($flow_s3 / $aws_s3)")" "$objects" "$bytes"
fi

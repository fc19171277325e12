#!/usr/bin/env bash
# Benchmark of flows/mqtt-to-file.yaml against the broker's own ceiling, in the same run:
#   bash bench/mqtt.sh [N] [RATE]
# 1. Throughput: N QoS 1 messages (default 50,000) are queued in a persistent session while
#    the consumer is away, then drained by `mosquitto_sub` (the ceiling) and by the flow
#    (Mosquitto -> flow -> file). Messages/s from the consumer's start to the last message.
# 2. Latency: N/5 messages published live at RATE/s (default 10,000), each stamped with its send
#    time; p50/p99 of arrival time minus send time (`mosquitto_sub -F %U`; for the flow, the time
#    a line appears in its output file, polled every 1 ms).
# The broker is a local Mosquitto with `max_inflight_messages 1000` (its default of 20 caps any
# QoS 1 consumer); both consumers see the same broker.
# Every wait gives up after WAIT seconds (default 300) with what it saw; KEEP=1 keeps the work
# directory (flow logs, outputs).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-50000}"
rate="${2:-10000}"
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
cargo build -q --release -p flow-cli
bin="$PWD/target/release/flow"
. scripts/services.sh
work="$(mktemp -d)"
port=$(free_port)
cat >"$work/m.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
user root
max_queued_messages 0
max_inflight_messages 1000
CONF
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto_bin" -c "$work/m.conf" >/dev/null 2>&1 &
mpid=$!
trap 'kill $mpid 2>/dev/null; if [ -n "${KEEP:-}" ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi' EXIT
wait_port "$port"
url="mqtt://127.0.0.1:$port"
topic=sensors/bench-1/telemetry
now() { date +%s.%N; }

wait_s="${WAIT:-300}"
# Give up: say what was being waited for, show the flow's log, stop.
give_up() { echo "bench/mqtt.sh: gave up (waits last at most ${wait_s}s): $1" >&2; [ -n "${2:-}" ] && tail -20 "$2" >&2; exit 1; }
# publish: stdin lines, one QoS 1 message each, in runs of at most 50,000 per mosquitto_pub.
# mosquitto_pub -l (2.0.11) ends once the message whose id equals the last line's is
# acknowledged; ids wrap after 65,535, so with more lines it quits early (at exit 0) and the
# rest is never sent (100,000 lines: about 34,500 sent).
publish() { split -l 50000 --filter "mosquitto_pub -L '$url/$topic' -q 1 -l"; }
lines() { wc -l <"$1"; }

gen() { # gen COUNT: JSON lines
  python3 -c "import sys
w=sys.stdout.write
for i in range(int(sys.argv[1])): w('{\"n\":%d,\"status\":\"ok\",\"temperature\":71.5}\n' % i)" "$1"
}

echo "== throughput: $n QoS 1 messages queued, then drained"
mosquitto_sub -L "$url/sensors/+/telemetry" -q 1 -c -i bench-sub -E
gen "$n" | publish
t0=$(now)
mosquitto_sub -L "$url/sensors/+/telemetry" -q 1 -c -i bench-sub -C "$n" -W "$wait_s" >/dev/null \
  || give_up "mosquitto_sub did not get $n messages"
t1=$(now)
sub_rate=$(python3 -c "print(int($n / ($t1 - $t0)))")
echo "mosquitto_sub: $sub_rate msg/s"

out="$work/out"; mkdir -p "$out"
export MQTT_URL="$url" OUT_DIR="$out" CLIENT_ID=bench-flow
# Make the flow's persistent session: run it until it has subscribed, then stop it.
"$bin" -v run --quiet flows/mqtt-to-file.yaml 2>"$work/flow1.log" &
fpid=$!
until grep -q subscribed "$work/flow1.log" 2>/dev/null; do
  kill -0 $fpid 2>/dev/null || { cat "$work/flow1.log" >&2; exit 1; }
  sleep 0.05
done
kill -TERM $fpid; wait $fpid || true
: >"$out/telemetry.jsonl"
gen "$n" | publish
t0=$(now)
"$bin" run --quiet flows/mqtt-to-file.yaml 2>"$work/flow2.log" &
fpid=$!
deadline=$(($(date +%s) + wait_s))
while [ "$(lines "$out/telemetry.jsonl")" -lt "$n" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { kill -TERM $fpid; give_up "the flow wrote $(lines "$out/telemetry.jsonl") of $n lines" "$work/flow2.log"; }
  sleep 0.01
done
t1=$(now)
kill -TERM $fpid; wait $fpid || true
flow_rate=$(python3 -c "print(int($n / ($t1 - $t0)))")
echo "flow:          $flow_rate msg/s ($(wc -l <"$out/telemetry.jsonl") lines)"
python3 -c "print('ratio: %.0f%% of the broker ceiling' % (100.0 * $flow_rate / $sub_rate))"

m=$((n / 5))
echo "== latency: $m messages published live at $rate/s"
pace() { # timestamped lines at $rate/s
  python3 -c "import sys,time
n,rate=int(sys.argv[1]),float(sys.argv[2]); t0=time.time()
for i in range(n):
    d=t0+i/rate-time.time()
    if d>0: time.sleep(d)
    sys.stdout.write('{\"n\":%d,\"ts\":%.6f}\n' % (i,time.time())); sys.stdout.flush()" "$m" "$rate"
}
mosquitto_sub -L "$url/sensors/+/telemetry" -q 1 -C "$m" -W "$wait_s" -F '%U %p' >"$work/sub.txt" &
spid=$!
sleep 0.5
pace | publish
wait $spid || give_up "mosquitto_sub got $(lines "$work/sub.txt") of $m messages"
: >"$out/telemetry.jsonl"
# A new session: the one used above has the messages of mosquitto_sub's run queued.
CLIENT_ID=bench-flow-live "$bin" -v run --quiet flows/mqtt-to-file.yaml 2>"$work/flow3.log" &
fpid=$!
until grep -q subscribed "$work/flow3.log" 2>/dev/null; do
  kill -0 $fpid 2>/dev/null || give_up "the flow ended before it subscribed" "$work/flow3.log"
  sleep 0.05
done
python3 - "$out/telemetry.jsonl" "$m" "$wait_s" >"$work/flow.txt" <<'PY' &
import sys, time
path, m, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
seen, buf, idle = 0, b"", time.time()
with open(path, "rb") as f:
    while seen < m:
        chunk = f.read()
        if not chunk:
            if time.time() - idle > wait:
                sys.exit("%d of %d lines" % (seen, m))
            time.sleep(0.001); continue
        idle = time.time()
        t = time.time(); buf += chunk
        *lines, buf = buf.split(b"\n")
        for l in lines:
            sys.stdout.write("%.6f %s\n" % (t, l.decode())); seen += 1
PY
wpid=$!
pace | publish
wait $wpid || { kill -TERM $fpid; give_up "the flow's file (latency run)" "$work/flow3.log"; }
kill -TERM $fpid; wait $fpid || true
lat() {
  python3 - "$1" "$2" <<'PY'
import json, sys
ds = sorted(float(l.split(" ", 1)[0]) - json.loads(l.split(" ", 1)[1])["ts"] for l in open(sys.argv[1]) if l.strip())
p = lambda q: ds[min(len(ds) - 1, int(q * len(ds)))] * 1000
print("%-14s p50 %.2f ms  p99 %.2f ms  (%d messages)" % (sys.argv[2], p(0.5), p(0.99), len(ds)))
PY
}
lat "$work/sub.txt" "mosquitto_sub:"
lat "$work/flow.txt" "flow:"

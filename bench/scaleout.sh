#!/usr/bin/env bash
# Scale-out of flows/kafka-to-file.yaml over a consumer group (issue 20, part 6):
#   bash bench/scaleout.sh [N] [PROCS...]
# Starts its own tansu broker (scripts/services.sh, in-memory storage), makes an 8-partition
# topic and fills it with N sensor events (default 1,000,000; bench/gen-sensors.yaml, produced
# by a flow keyed by device, so each partition gets about N/8), then consumes the topic with
# flows/kafka-to-file.yaml, once per entry of PROCS (default: 1 2): that many `flow run`
# processes started together in a new consumer group, each with its own OUT_DIR, until their
# outputs together hold every event and have not grown for 2 s (then SIGTERM). Prints, per
# case, each process's records and records/s (from its first line written to its last) and the
# total (all records / first line to last line, and from the processes' start, which includes
# joining the group), the ratio of each case's total to the first case's, and checks the
# outputs: every event at least once, duplicates counted (at-least-once: a rebalance may hand a
# partition over with records written but not committed). The binary is $FLOW when set, else a
# release build of flow-cli. KEEP=1 keeps the work directory (logs, outputs, run reports).
# STALL=S (default 60): a case whose outputs stop growing for S seconds short of N ends there,
# and its missing events are reported (the script then exits 1).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
shift || true
procs=("$@")
[ ${#procs[@]} -gt 0 ] || procs=(1 2)
. bench/common.sh
bin=$(flow_bin)
work="$(mktemp -d)"
. scripts/services.sh
cleanup() {
  for p in $(jobs -p); do kill -TERM "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "work dir kept: $work" || rm -rf "$work"
}
services_on_exit cleanup
# Provenance stays on (the default, as users run flows), its store in the work directory:
# nothing is left in ~/.local/state, and every run starts with an empty store.
export XDG_STATE_HOME="$work/state"
fill_topic "$bin" "$work" scaleout "$n"
echo "topic $TOPIC: 8 partitions, $n events ($(du -h "$work/events.jsonl" | cut -f1)), produced in" \
  "$FILL_SECONDS s"

# consume CASE P: P processes in group CASE; appends "P total_rate total_from_start" to
# $work/totals and prints the case.
consume() {
  local case=$1 p=$2 pids=() i
  local t0
  t0=$(date +%s.%N)
  for i in $(seq "$p"); do
    mkdir -p "$work/$case/$i"
    GROUP="$case" OUT_DIR="$work/$case/$i" "$bin" run --quiet --report "$work/$case/$i.json" \
      flows/kafka-to-file.yaml \
      2>"$work/$case/$i.log" &
    pids+=($!)
  done
  # Waits until the outputs hold N lines together and grow no more for 2 s (fails when they
  # stop growing for STALL seconds, default 60, short of N); writes each output's lines and
  # first and last growth times, then samples "time lines..." every 50 ms.
  python3 - "$n" "$t0" "$work/$case" "$p" "${STALL:-60}" "${pids[@]}" >"$work/$case.times" <<'PY'
import os, sys, time
n, t0, d, p, stall = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
pids = [int(x) for x in sys.argv[6:]]
paths = [f"{d}/{i}/telemetry.jsonl" for i in range(1, p + 1)]
files, lines = [None] * p, [0] * p
first, last = [None] * p, [None] * p
samples, grew = [], t0
while True:
    now = time.time()
    for i, path in enumerate(paths):
        if files[i] is None and os.path.exists(path):
            files[i] = open(path, "rb")
        while files[i]:
            chunk = files[i].read(1 << 20)
            if not chunk:
                break
            lines[i] += chunk.count(b"\n")
            first[i] = first[i] or now
            last[i] = grew = now
    samples.append((now, list(lines)))
    if sum(lines) >= n and now - grew > 2:
        break
    if now - grew > stall:
        print(f"STALLED: the outputs hold {lines} = {sum(lines)} of {n} lines and have not "
              f"grown for {stall:.0f} s (logs: {d}/*.log)", file=sys.stderr)
        break
    for pid in pids:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(f"a flow ended with {sum(lines)} of {n} lines")
    time.sleep(0.05)
for i in range(p):
    print(lines[i], first[i] or 0, last[i] or 0)
for t, ls in samples:
    print(t, *ls)
PY
  for i in "${pids[@]}"; do kill -TERM "$i"; done
  for i in "${pids[@]}"; do wait "$i" || { echo "a flow exited with $?:" >&2; cat "$work/$case"/*.log >&2; exit 1; }; done
  python3 - "$work/events.jsonl" "$work/$case" "$p" "$t0" "$case" "$work/totals" <<'PY'
import sys
from collections import Counter
src, d, p, t0, case, totals = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
rows = [tuple(map(float, l.split())) for l in open(f"{d}.times")]
times, samples = rows[:p], rows[p:]
want = Counter(open(src, "rb"))
got = Counter()
for i in range(1, p + 1):
    got.update(open(f"{d}/{i}/telemetry.jsonl", "rb"))
missing = sum((want - got).values())
dups = sum((got - want).values())
n = sum(want.values())
first = min(t[1] for t in times if t[0])
last = max(t[2] for t in times)
rate = n / (last - first)
print(f"{p} process{'es' if p > 1 else ''} ({case}):")
for i, (lines, f, l) in enumerate(times, 1):
    r = lines / (l - f) if lines and l > f else 0
    print(f"  process {i}: {int(lines):>10,} records  {r:>10,.0f} records/s")
print(f"  total:     {sum(t[0] for t in times):>10,.0f} records  {rate:>10,.0f} records/s "
      f"(first line to last); {n / (last - t0):,.0f} from start; missing {missing}, "
      f"duplicates {dups}")
steady = rate
if p > 1:
    # While every process was writing: from the last one's first line to the first one's last.
    a, b = max(t[1] for t in times), min(t[2] for t in times)
    inside = [s for s in samples if a <= s[0] <= b]
    if b - a >= 1 and len(inside) > 1:
        span = inside[-1][0] - inside[0][0]
        each = [(y - x) / span for x, y in zip(inside[0][1:], inside[-1][1:])]
        steady = sum(each)
        print(f"  all {p} writing ({span:.1f} s):" + "".join(
            f"  process {i}: {r:,.0f}" for i, r in enumerate(each, 1))
            + f"  total: {steady:,.0f} records/s")
    else:
        print(f"  the processes wrote at the same time for {max(b - a, 0):.1f} s only: too short "
              "to measure (the first to join the group read most of the topic before the "
              "rebalance gave the others their partitions; use a larger N)")
        steady = 0
if missing:
    # Where they were in the input (in produce order): a contiguous stretch points at the produce
    # side or the broker, scattered ones at the consumers.
    gone = want - got
    pos = [i for i, line in enumerate(open(src, "rb")) if gone[line]]
    print(f"  MISSING {missing} events, at input lines {pos[0]}..{pos[-1]}; run reports: "
          f"{d}/*.json")
    open(f"{d}.missing", "w").close()
with open(totals, "a") as f:
    f.write(f"{p} {rate} {n / (last - t0)} {steady}\n")
PY
}

for p in "${procs[@]}"; do
  consume "group-$p-$RANDOM" "$p"
done
python3 - "$work/totals" <<'PY'
import sys
rows = [[float(x) for x in l.split()] for l in open(sys.argv[1])]
p0, r0, s0, _ = rows[0]
for p, r, s, steady in rows[1:]:
    both = f"{steady / r0:.2f} (all writing, against one process first line to last); " if steady else ""
    print(f"ratio {p:.0f} processes / {p0:.0f}: {both}{r / r0:.2f} (first line to last), "
          f"{s / s0:.2f} (from start)")
PY
echo "$(nproc) cores; tansu shares them with the flows."
if ls "$work"/*.missing >/dev/null 2>&1; then echo "events were missing (see above)" >&2; exit 1; fi

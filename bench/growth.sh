#!/usr/bin/env bash
# How flow's cost grows (issue 20, part 3): with the input's length, the number of keys and the
# number of branches.
#   bash bench/growth.sh            full sizes (about 10 minutes on two cores)
#   QUICK=1 bash bench/growth.sh    every size 10x smaller (a trial: about a minute)
# The binary is $FLOW when set, else a release build of flow-cli. Every input is made here
# (bench/gen-sensors.yaml, or a few lines of Python for the keyed events); nothing outside the
# repo is needed. Each run is measured by /usr/bin/time (wall, user + system CPU, peak RSS).
# Cases:
#   events   flows/sensors.yaml on 1M, 2M, 5M and 10M sensor events, the median of RUNS runs
#            (default 3) each; prints the time ratio 10M / 1M (the issue asks <= 10.5).
#   keys     bench/keys.yaml (tumbling windows keyed by device) on 2M events spread
#            over 1k, 10k, 100k and 1M devices. The window is 2*K ms long and there is one event
#            per ms, so every device has about two events per window whatever K is: each record
#            does the same work, only the state is larger. Then 1M devices with max_keys 100k
#            and on_limit: evict_oldest: peak RSS stays near the 100k case's.
#   session  bench/sessions.yaml on 200k events over 1k, 10k and 100k devices, gap 10*K ms (a
#            device comes back every K ms on average, so every session stays open): if a record
#            cost the same whatever the number of open sessions, events/s would stay flat.
#   fan-out  1M sensor events, file -> 1, 2, 3, 4 file_sinks (each gets every record).
#   route    1M sensor events, file -> route with 1..10 ports (disjoint .rpm ranges: each record
#            matches one) -> one file_sink per port.
#            For both, the cost per extra branch is the slope of a least-squares line through
#            CPU ns per record against the number of branches (CPU: the branches run on both
#            cores, so wall time hides part of it).
# Prints every run, then writes bench/out/growth.md (tables) and bench/out/growth.svg (plot).
# KEEP=1 keeps the work directory. Inputs and outputs go to $TMPDIR (up to about 2 GB at full
# size; /dev/shm is a good place when the disk is small).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { apt-get install -y -qq time >/dev/null 2>&1 || { echo "bench needs /usr/bin/time (Debian package time)" >&2; exit 2; }; }
. bench/common.sh
bin=$(flow_bin)
runs=${RUNS:-3}
if [ -n "${QUICK:-}" ]; then div=10; else div=1; fi
work="$(mktemp -d)"
cleanup() { [ -n "${KEEP:-}" ] && echo "work dir kept: $work" || rm -rf "$work"; }
trap cleanup EXIT
# Provenance stays on (the default, as users run flows), its store in the work directory:
# nothing is left in ~/.local/state, and every run starts with an empty store.
export XDG_STATE_HOME="$work/state"
mkdir -p bench/out
results=$work/results.tsv # case  x  events  wall_s  cpu_s  rss_kb
: >"$results"

# run CASE X EVENTS FLOW [VAR=VALUE...]: one run of FLOW with those variables, measured; its
# outputs go to a fresh $work/out, deleted after.
run() {
  local case=$1 x=$2 n=$3 flow=$4 wall user sys kb
  shift 4
  rm -rf "$work/out"; mkdir -p "$work/out"
  env "$@" OUT_DIR="$work/out" /usr/bin/time -f '%e %U %S %M' -o "$work/time" \
    "$bin" run --quiet "$flow" 2>"$work/log" || { cat "$work/log" >&2; exit 1; }
  read -r wall user sys kb <"$work/time"
  if [ -s "$work/out/failed.jsonl" ]; then
    echo "$case $x: $(wc -l <"$work/out/failed.jsonl") records late or failed" >&2; exit 1
  fi
  python3 - "$case" "$x" "$n" "$wall" "$user" "$sys" "$kb" "$results" <<'PY'
import sys
case, x, n, wall, user, sys_, kb, path = sys.argv[1:]
n, wall, cpu, kb = int(n), float(wall), float(user) + float(sys_), int(kb)
print(f"{case:8} {x:>9}  {n:>10,} events  {wall:7.2f} s  {n / max(wall, 1e-9):>11,.0f} ev/s  "
      f"CPU {cpu:7.2f} s  peak RSS {kb // 1024:>5} MB")
with open(path, "a") as f:
    f.write(f"{case}\t{x}\t{n}\t{wall}\t{cpu}\t{kb}\n")
PY
  rm -rf "$work/out"
}

# keyed_events N K FILE: N events over K devices (uniform), one per ms from a 2*K ms-aligned
# start, like the sensors preset's but with K devices: {"device":"d-0000042","ts":...,"temperature":71.3}.
keyed_events() {
  python3 - "$@" <<'PY'
import random, sys
n, k, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rnd = random.Random(7)
names = [f"d-{i:07d}" for i in range(k)]
t0 = 1_732_300_000_000  # a multiple of 2 * K ms for every K used here
with open(path, "w") as f:
    for lo in range(0, n, 1 << 16):
        f.write("".join(
            f'{{"device":"{names[int(rnd.random() * k)]}","ts":{t0 + i},'
            f'"temperature":{rnd.gauss(70, 12):.1f}}}\n'
            for i in range(lo, min(n, lo + (1 << 16)))))
PY
}

echo "flow: $bin; sizes$([ "$div" = 1 ] || echo " / $div (QUICK)"); $(nproc) cores"

# 1. Events: flows/sensors.yaml on growing inputs (each made, used and deleted in turn).
for m in 1 2 5 10; do
  n=$((m * 1000000 / div))
  COUNT=$n OUT="$work/events.jsonl" "$bin" run --quiet bench/gen-sensors.yaml
  for _ in $(seq "$runs"); do
    run events "$n" "$n" flows/sensors.yaml INPUT="$work/events.jsonl"
  done
  rm -f "$work/events.jsonl"
done

# 2. Keys: tumbling windows, 2M events over K devices.
n=$((2000000 / div))
for k in 1000 10000 100000 1000000; do
  k=$((k / div))
  keyed_events "$n" "$k" "$work/keyed.jsonl"
  run keys "$k" "$n" bench/keys.yaml INPUT="$work/keyed.jsonl" WINDOW="$((2 * k))ms" MAX_KEYS="$k"
done
limit=$((k / 10))
run keys-cap "$k" "$n" bench/keys.yaml INPUT="$work/keyed.jsonl" WINDOW="$((2 * k))ms" \
  MAX_KEYS="$limit" ON_LIMIT=evict_oldest
rm -f "$work/keyed.jsonl"

# 3. Sessions: 200k events over K devices, every session open until the end.
n=$((200000 / div))
for k in 1000 10000 100000; do
  k=$((k / div))
  keyed_events "$n" "$k" "$work/keyed.jsonl"
  run session "$k" "$n" bench/sessions.yaml INPUT="$work/keyed.jsonl" GAP="$((10 * k))ms" \
    MAX_KEYS="$k"
done
rm -f "$work/keyed.jsonl"

# 4. Fan-out and route: flows made here, B branches each.
n=$((1000000 / div))
COUNT=$n OUT="$work/events.jsonl" "$bin" run --quiet bench/gen-sensors.yaml
# flow KIND B: writes $work/KIND-B.yaml.
flow() {
  python3 - "$1" "$2" "$work/$1-$2.yaml" <<'PY'
import sys
kind, b, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = [f"name: bench-{kind}-{b}", "processors:",
         '  events: { type: file, path: "${INPUT}", format: json }']
edges = []
if kind == "route":
    # rpm is uniform in [800, 6000]: b disjoint ranges, each record in exactly one.
    bounds = [800 + (5201 * i) // b for i in range(b + 1)]
    lines.append("  split:\n    type: route\n    routes:")
    for i in range(b):
        lines.append(f'      p{i}: ".rpm >= {bounds[i]} && .rpm < {bounds[i + 1]}"')
    edges.append("events -> split")
for i in range(b):
    lines.append(f'  s{i}: {{ type: file_sink, path: "${{OUT_DIR}}/s{i}.jsonl", append: false }}')
    edges.append(f"split.p{i} -> s{i}" if kind == "route" else f"events -> s{i}")
lines.append("connections:")
lines += [f"  - {e}" for e in edges]
with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
PY
}
for b in 1 2 3 4; do
  flow fanout "$b"
  run fanout "$b" "$n" "$work/fanout-$b.yaml" INPUT="$work/events.jsonl"
done
for b in 1 2 3 4 5 6 7 8 9 10; do
  flow route "$b"
  run route "$b" "$n" "$work/route-$b.yaml" INPUT="$work/events.jsonl"
done
rm -f "$work/events.jsonl"

# Tables, figures and the plot.
python3 - "$results" bench/out/growth.md "$work/plot.json" "$runs" "$div" "$(nproc)" <<'PY'
import json, statistics, sys
from collections import defaultdict
path, md, plot, runs, div = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
rows = defaultdict(list)
for line in open(path):
    case, x, n, wall, cpu, kb = line.split("\t")
    rows[case, int(x)].append((int(n), float(wall), float(cpu), int(kb)))
def med(case, x):  # the run of median wall time
    rs = sorted(rows[case, x], key=lambda r: r[1])
    return rs[(len(rs) - 1) // 2]
def xs(case):
    return sorted(x for c, x in rows if c == case)
def h(v):
    for d, s in ((1e6, "M"), (1e3, "k")):
        if v >= d:
            return f"{v / d:g}{s}"
    return f"{v:g}"
out = []
def table(title, head, body):
    out.extend([f"**{title}**", "", "| " + " | ".join(head) + " |",
                "|" + "|".join("---:" for _ in head) + "|"])
    out.extend("| " + " | ".join(r) + " |" for r in body)
    out.append("")
def slope(pts):  # least squares
    mx = statistics.fmean(x for x, _ in pts); my = statistics.fmean(y for _, y in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
summary = []
panels = []

ev = xs("events")
base = med("events", ev[0])
table(f"Events: flows/sensors.yaml (the run of median wall time of {runs})",
      ["events", "wall s", "events/s", "wall / smallest's", "CPU s", "CPU / smallest's",
       "peak RSS MB"],
      [[h(x), f"{med('events', x)[1]:.2f}", f"{x / med('events', x)[1]:,.0f}",
        f"{med('events', x)[1] / base[1]:.2f} (x{x / ev[0]:g} events)",
        f"{med('events', x)[2]:.2f}", f"{med('events', x)[2] / base[2]:.2f}",
        f"{med('events', x)[3] // 1024}"] for x in ev])
ratio = med("events", ev[-1])[1] / base[1]
summary.append(f"time ratio {h(ev[-1])} / {h(ev[0])} events: {ratio:.2f} wall, "
               f"{med('events', ev[-1])[2] / base[2]:.2f} CPU (issue: <= 10.5)")
panels.append({"title": "flows/sensors.yaml: time against events", "xlabel": "events",
               "ylabel": "wall time (s)", "series": [
                   {"name": "measured", "points": [[x, med("events", x)[1]] for x in ev]},
                   {"name": "linear from the smallest", "dashed": True,
                    "points": [[x, base[1] * x / ev[0]] for x in ev]}]})

ks = xs("keys")
table("Keys: tumbling windows keyed by device (bench/keys.yaml, max_keys = keys)",
      ["keys", "events", "wall s", "events/s", "CPU ns / event", "peak RSS MB"],
      [[label, h(r[0]), f"{r[1]:.2f}", f"{r[0] / r[1]:,.0f}", f"{r[2] / r[0] * 1e9:,.0f}",
        f"{r[3] // 1024}"]
       for label, r in [(h(k), med("keys", k)) for k in ks]
       + [(f"{h(k)}, max_keys {h(k // 10)} (evict_oldest)", med("keys-cap", k))
          for k in xs("keys-cap")]])
lo, hi = med("keys", ks[0]), med("keys", ks[-1])
summary.append(f"throughput falls {h(ks[0])} -> {h(ks[-1])} keys by {hi[1] / lo[1]:.2f}x wall, "
               f"{hi[2] / lo[2]:.2f}x CPU (issue: <= 2x)")
for k in xs("keys-cap"):
    summary.append(f"peak RSS with {h(k)} keys and max_keys {h(k // 10)}: "
                   f"{med('keys-cap', k)[3] // 1024} MB (max_keys {h(k // 10)} without a cap: "
                   f"{med('keys', k // 10)[3] // 1024 if ('keys', k // 10) in rows else '?'} MB, "
                   f"{h(k)} uncapped: {med('keys', k)[3] // 1024} MB)")
panels.append({"title": "Tumbling windows: keys", "xlabel": "keys (devices)", "xlog": True,
               "ylabel": "events/s", "series": [
                   {"name": "events/s", "points": [[k, med("keys", k)[0] / med("keys", k)[1]]
                                                   for k in ks]}]})

ss = xs("session")
table("Session windows: every session open (bench/sessions.yaml)",
      ["open sessions", "events", "wall s", "events/s", "CPU ns / event", "peak RSS MB"],
      [[h(k), h(med("session", k)[0]), f"{med('session', k)[1]:.2f}",
        f"{med('session', k)[0] / med('session', k)[1]:,.0f}",
        f"{med('session', k)[2] / med('session', k)[0] * 1e9:,.0f}",
        f"{med('session', k)[3] // 1024}"] for k in ss])
if len(ss) > 1:
    pts = [(k, med("session", k)[2] / med("session", k)[0] * 1e9) for k in ss]
    summary.append(f"session windows: {slope(pts):.2f} CPU ns per event per open session "
                   f"(0 if no per-record scan; {pts[-1][1]:,.0f} ns per event at {h(ss[-1])})")

def branches(case, what):
    bs = xs(case)
    pts = [(b, med(case, b)[2] / med(case, b)[0] * 1e9) for b in bs]
    wpts = [(b, med(case, b)[1] / med(case, b)[0] * 1e9) for b in bs]
    table(what, ["branches", "events", "wall s", "events/s", "CPU ns / event",
                 "wall ns / event", "peak RSS MB"],
          [[str(b), h(med(case, b)[0]), f"{med(case, b)[1]:.2f}",
            f"{med(case, b)[0] / med(case, b)[1]:,.0f}", f"{p:,.0f}", f"{w:,.0f}",
            f"{med(case, b)[3] // 1024}"] for (b, p), (_, w) in zip(pts, wpts)])
    summary.append(f"{case}: {slope(pts):,.0f} CPU ns ({slope(wpts):,.0f} wall ns) per event "
                   f"per extra branch, from {pts[0][1]:,.0f} CPU ns per event with one")
    return {"name": case, "points": [[b, p] for b, p in pts]}
fan = branches("fanout", "Fan-out: file -> B file_sinks, every record to each")
route = branches("route", "Route: file -> route with B ports (one match per record) -> B file_sinks")
panels.append({"title": "Branches: CPU per event", "xlabel": "branches (sinks / ports)",
               "ylabel": "CPU ns per event", "series": [fan, route]})

head = [f"Measured by bench/growth.sh{' with QUICK=1 (every size / 10)' if div > 1 else ''} "
        f"on {sys.argv[6]} cores.", ""]
with open(md, "w") as f:
    f.write("\n".join(head + out + ["**Summary**", ""] + [f"- {s}" for s in summary]) + "\n")
with open(plot, "w") as f:
    json.dump({"title": "bench/growth.sh" + (" (QUICK sizes)" if div > 1 else ""),
               "panels": panels}, f)
print()
print("\n".join(summary))
PY
python3 bench/plot.py "$work/plot.json" bench/out/growth.svg
echo "wrote bench/out/growth.md and bench/out/growth.svg"

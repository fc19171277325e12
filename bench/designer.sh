#!/usr/bin/env bash
# What watching a flow costs the designer: its CPU share while it runs a flow (`--run`) in a
# real window on a virtual X display (Xvfb, Mesa's software OpenGL), stats at 1 Hz, nothing
# moving but the figures. The designer process alone (utime + stime of /proc/PID/stat), over
# SECS seconds (default 30) once it has settled (10 s).
#   bash bench/designer.sh sensors [SECS]   flows/sensors.yaml, 1,000,000 readings, its alerts
#                                            sink slowed down (a pipe read at ~5 kB/s), as in
#                                            scripts/screenshot.sh --live
#   bash bench/designer.sh 500 [SECS]       a 500-node flow: 84 chains of generate (1 record/s)
#                                            -> filter -> route -> remap -> two file sinks
# PROFILE=release measures release builds of both (built in one command, with the
# environment's RUSTFLAGS, none by default); DESIGNER=path picks another designer binary (to
# compare builds; nothing is built). The frames drawn and their times come from
# FLOW_DESIGNER_TRACE_FRAMES: how many over the window, and the p50 / p99 / max of eframe's
# frame time (the egui pass, tessellation and the GL calls; not the wait in swap_buffers);
# FRAMES=1 also prints the last frames' trace lines (why each was drawn); SHOT=file.png takes
# a screenshot of the window at the end (needs imagemagick).
# Target (issue 17): under 5 % of one core while idle between updates. Needs xvfb, x11-utils.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-sensors}
secs=${2:-30}
profile=${PROFILE:-debug}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
release=()
if [ "$profile" = release ]; then
  release=(--release)
elif command -v mold >/dev/null && [ -z "${RUSTFLAGS:-}" ]; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi
. scripts/xvfb.sh
target=${CARGO_TARGET_DIR:-target}
# Both in one build: one set of features for the dependencies (built one by one, each would
# rebuild those of the other). DESIGNER=path: nothing is built.
if [ -z "${DESIGNER:-}" ]; then
  cargo build -q "${release[@]}" -p flow-designer --bin flow-designer -p flow-cli --bin flow
fi
bin=${DESIGNER:-$target/$profile/flow-designer}
flow_bin=$(cd "$target/$profile" && pwd)/flow

reader=""
cleanup() {
  [ -n "$reader" ] && kill "$reader" 2>/dev/null || true
  xvfb_stop
}
trap cleanup EXIT
xvfb_start
tmp=$XVFB_TMP

mkdir -p "$tmp/out"
export XDG_STATE_HOME="$tmp/state" FLOW_BIN="$flow_bin"
case "$what" in
  sensors)
    flow=flows/sensors.yaml
    printf 'processors:\n  gen: { type: generate, preset: sensors, count: 1000000 }\n  out: { type: file_sink, path: %s/events.jsonl }\nconnections:\n  - gen -> out\n' "$tmp" >"$tmp/make-input.yaml"
    "$flow_bin" run --quiet --no-provenance "$tmp/make-input.yaml"
    mkfifo "$tmp/out/alerts.jsonl"
    python3 -c 'import sys, time
f = open(sys.argv[1], "rb")
while f.read(512):
    time.sleep(0.1)' "$tmp/out/alerts.jsonl" &
    reader=$!
    export INPUT="$tmp/events.jsonl" OUT_DIR="$tmp/out"
    ;;
  500)
    flow=$tmp/500.yaml
    python3 - "$tmp/out" >"$flow" <<'EOF'
import sys
out = sys.argv[1]
procs, conns, layout = [], [], []
n = c = 0
while n < 500:
    y = c * 260
    nodes = [
        ("src", "{ type: generate, preset: sensors, rate: 1, batch_size: 1 }", 0, 0),
        ("valid", '{ type: filter, condition: ".status != \\"error\\"" }', 260, 0),
        ("triage", '{ type: route, routes: { hot: ".temperature > 95", cold: ".temperature < 40" } }', 520, 0),
        ("label", '{ type: remap, source: ".alert = \\"hot\\"" }', 780, 0),
        ("alerts", "{ type: file_sink, path: %s/alerts-%d.jsonl }" % (out, c), 1040, 0),
        ("archive", "{ type: file_sink, path: %s/archive-%d.jsonl }" % (out, c), 780, 150),
    ]
    names = []
    for name, body, x, dy in nodes:
        if n == 500:
            break
        procs.append("  %s%d: %s" % (name, c, body))
        layout.append("  %s%d: [%d, %d]" % (name, c, x, y + dy))
        names.append(name)
        n += 1
    for a, b in [("src", "valid"), ("valid.matched", "triage"), ("triage.hot", "label"), ("label", "alerts"), ("valid.matched", "archive")]:
        if a.split(".")[0] in names and b in names:
            f = a.split(".")
            conns.append("  - %s%d%s -> %s%d" % (f[0], c, "." + f[1] if len(f) > 1 else "", b, c))
    c += 1
print("name: designer-500\nprocessors:\n" + "\n".join(procs) + "\nconnections:\n" + "\n".join(conns) + "\nlayout:\n" + "\n".join(layout))
EOF
    "$flow_bin" validate "$flow" >/dev/null
    ;;
  *) echo "designer.sh: sensors or 500, not $what" >&2; exit 2 ;;
esac
xvfb_designer env FLOW_DESIGNER_TRACE_FRAMES=1 "$bin" "$flow" --run
app=$XVFB_APP
sleep 10
ticks() { awk '{ print $14 + $15 }' "/proc/$app/stat"; }
frames() { grep -c '^frame ' "$tmp/designer.log" || true; }
hz=$(getconf CLK_TCK)
a=$(ticks)
fa=$(frames)
sleep "$secs"
b=$(ticks)
fb=$(frames)
awk -v a="$a" -v b="$b" -v hz="$hz" -v s="$secs" -v w="$what" -v p="$profile" 'BEGIN { printf "designer CPU (%s, %s): %.1f%% of one core over %d s\n", w, p, (b - a) / hz / s * 100, s }'
n=$((fb - fa))
echo "frames drawn: $n in $secs s"
# Each frame's line gives the time of the one before it: those of the window's frames.
grep '^frame ' "$tmp/designer.log" | sed -n "$((fa + 2)),$((fb + 1))p" | sed -n 's/.*(previous took \([0-9.]*\) ms).*/\1/p' | sort -n |
  awk '{ t[NR] = $1 } END { if (NR) printf "frame time: p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d frames)\n", t[int((NR - 1) * 0.5) + 1], t[int((NR - 1) * 0.99) + 1], t[NR], NR }'
awk -v a="$a" -v b="$b" -v hz="$hz" -v n="$n" 'BEGIN { if (n) printf "CPU per frame drawn: %.1f ms\n", (b - a) / hz / n * 1000 }'
if [ -n "${SHOT:-}" ]; then
  DISPLAY=":$XVFB_DISPLAY" import -window "$XVFB_WINDOW" "$SHOT"
  echo "screenshot: $SHOT"
fi
if [ -n "${FRAMES:-}" ]; then
  grep '^frame ' "$tmp/designer.log" | tail -n 6
fi
pgrep -P "$app" >/dev/null || { echo "designer.sh: the flow is not running any more:" >&2; tail -n 20 "$tmp/designer.log" >&2; }

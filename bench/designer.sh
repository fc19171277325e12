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
# DESIGNER=path picks another designer binary (to compare builds); FRAMES=1 also counts the
# frames it drew (FLOW_DESIGNER_TRACE_FRAMES). Target (issue 17): under 5 % of one core.
# Debug builds (what a developer runs); needs xvfb, x11-utils.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-sensors}
secs=${2:-30}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if command -v mold >/dev/null && [ -z "${RUSTFLAGS:-}" ]; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi
for tool in Xvfb xwininfo; do
  command -v "$tool" >/dev/null || { echo "designer.sh: $tool is missing (apt-get install xvfb x11-utils)" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-target}
# Both in one build: one set of features for the dependencies (built one by one, each would
# rebuild those of the other). DESIGNER=path: nothing is built.
if [ -z "${DESIGNER:-}" ]; then
  cargo build -q -p flow-designer --bin flow-designer -p flow-cli --bin flow
fi
bin=${DESIGNER:-$target/debug/flow-designer}
flow_bin=$(cd "$target/debug" && pwd)/flow

display=99
while [ -e "/tmp/.X11-unix/X$display" ] || [ -e "/tmp/.X$display-lock" ]; do display=$((display + 1)); done
tmp=$(mktemp -d)
Xvfb ":$display" -screen 0 2880x1760x24 -nolisten tcp >"$tmp/xvfb.log" 2>&1 &
xvfb=$!
app=""
reader=""
cleanup() {
  [ -n "$reader" ] && kill "$reader" 2>/dev/null || true
  children=""
  [ -n "$app" ] && children=$(pgrep -P "$app" 2>/dev/null || true)
  for child in $children; do kill "$child" 2>/dev/null || true; done
  sleep 1
  for child in $children; do kill -9 "$child" 2>/dev/null || true; done
  [ -n "$app" ] && kill "$app" 2>/dev/null || true
  kill "$xvfb" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 50); do xwininfo -display ":$display" -root >/dev/null 2>&1 && break; sleep 0.1; done

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
trace=()
[ -n "${FRAMES:-}" ] && trace=(env FLOW_DESIGNER_TRACE_FRAMES=1)
DISPLAY=":$display" XDG_CONFIG_HOME="$tmp" XDG_DATA_HOME="$tmp" LIBGL_ALWAYS_SOFTWARE=1 \
  "${trace[@]}" "$bin" "$flow" --run >"$tmp/designer.log" 2>&1 &
app=$!
for _ in $(seq 300); do
  xwininfo -display ":$display" -root -tree 2>/dev/null | grep -q -- '- flow designer"' && break
  kill -0 "$app" 2>/dev/null || { cat "$tmp/designer.log" >&2; exit 1; }
  sleep 0.1
done
sleep 10
ticks() { awk '{ print $14 + $15 }' "/proc/$app/stat"; }
frames() { grep -c '^frame ' "$tmp/designer.log" || true; }
hz=$(getconf CLK_TCK)
a=$(ticks)
fa=$(frames)
sleep "$secs"
b=$(ticks)
fb=$(frames)
awk -v a="$a" -v b="$b" -v hz="$hz" -v s="$secs" -v w="$what" 'BEGIN { printf "designer CPU (%s): %.1f%% of one core over %d s\n", w, (b - a) / hz / s * 100, s }'
if [ -n "${FRAMES:-}" ]; then
  echo "frames drawn: $((fb - fa)) in $secs s"
  grep '^frame ' "$tmp/designer.log" | tail -n 6
fi
pgrep -P "$app" >/dev/null || { echo "designer.sh: the flow is not running any more:" >&2; tail -n 20 "$tmp/designer.log" >&2; }

#!/usr/bin/env bash
# Starts the designer in a real window on a virtual X display (Xvfb) and takes a screenshot:
#   bash scripts/screenshot.sh [OUT.png] [FLOW.yaml]
#   bash scripts/screenshot.sh --live [OUT.png]
# (defaults: docs/designer.png, flows/sensors.yaml). With --live (default docs/designer-live.png)
# the designer runs flows/sensors.yaml itself (`--run`) on 1,000,000 generated readings, with
# its alerts sink slowed down (a named pipe read at about 5 kB/s), and the picture shows the
# running flow: rates on every node, a fill bar on every edge. It also prints the designer's
# CPU share over 20 s of watching. Needs xvfb, x11-utils and imagemagick;
# OpenGL comes from Mesa's software renderer (libgl1-mesa-dri). scripts/test.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
live=""
if [ "${1:-}" = "--live" ]; then
  live=1
  shift
fi
if [ -n "$live" ]; then
  out=${1:-docs/designer-live.png}
  flow=flows/sensors.yaml
else
  out=${1:-docs/designer.png}
  flow=${2:-flows/sensors.yaml}
fi
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if command -v mold >/dev/null && [ -z "${RUSTFLAGS:-}" ]; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi
command -v import >/dev/null || { echo "screenshot.sh: import is missing (apt-get install imagemagick)" >&2; exit 1; }
. scripts/xvfb.sh
target=${CARGO_TARGET_DIR:-target}
# One build for both (built one by one, each would resolve the dependencies' features anew
# and rebuild those of the other).
if [ -n "$live" ]; then
  cargo build -q -p flow-designer --bin flow-designer -p flow-cli --bin flow
else
  cargo build -q -p flow-designer --bin flow-designer
fi
bin=$target/debug/flow-designer

reader=""
cleanup() {
  # --live: the pipe's reader first (the alerts sink then fails instead of waiting), then the
  # designer's `flow run` child, the designer and the display.
  [ -n "$reader" ] && kill "$reader" 2>/dev/null || true
  xvfb_stop
}
trap cleanup EXIT
xvfb_start
tmp=$XVFB_TMP

args=("$flow")
if [ -n "$live" ]; then
  flow_bin=$(cd "$target/debug" && pwd)/flow
  # The input: 1,000,000 sensor readings (read at about 20,000 a second: still running when the picture is taken).
  printf 'processors:\n  gen: { type: generate, preset: sensors, count: 1000000 }\n  out: { type: file_sink, path: %s/events.jsonl }\nconnections:\n  - gen -> out\n' "$tmp" >"$tmp/make-input.yaml"
  XDG_STATE_HOME="$tmp/state" "$flow_bin" run --quiet --no-provenance "$tmp/make-input.yaml"
  # The slow sink: alerts go into a named pipe read at about 5 kB/s.
  mkdir -p "$tmp/out"
  mkfifo "$tmp/out/alerts.jsonl"
  python3 -c 'import sys, time
f = open(sys.argv[1], "rb")
while f.read(512):
    time.sleep(0.1)' "$tmp/out/alerts.jsonl" &
  reader=$!
  export FLOW_BIN="$flow_bin" INPUT="$tmp/events.jsonl" OUT_DIR="$tmp/out" XDG_STATE_HOME="$tmp/state"
  args=("$flow" --run)
fi
xvfb_designer "$bin" "${args[@]}"
window=$XVFB_WINDOW
app=$XVFB_APP
# Let it lay out and fit the flow (a few frames); a running flow a few seconds more, so that
# the queues have filled and the rates settled.
sleep 3
if [ -n "$live" ]; then
  sleep 5
fi
mkdir -p "$(dirname "$out")"
DISPLAY=":$XVFB_DISPLAY" import -window "$window" "$out"
echo "screenshot: $out ($(stat -c %s "$out") bytes)"
if [ -n "${CPU:-}" ] || [ -n "$live" ]; then
  # The designer's CPU share while it watches (utime + stime of /proc/PID/stat, in ticks).
  ticks() { awk '{ print $14 + $15 }' "/proc/$app/stat"; }
  hz=$(getconf CLK_TCK)
  a=$(ticks)
  sleep 20
  b=$(ticks)
  awk -v a="$a" -v b="$b" -v hz="$hz" 'BEGIN { printf "designer CPU: %.1f%% of one core over 20 s\n", (b - a) / hz / 20 * 100 }'
fi

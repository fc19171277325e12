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
for tool in Xvfb xwininfo import; do
  command -v "$tool" >/dev/null || { echo "screenshot.sh: $tool is missing (apt-get install xvfb x11-utils imagemagick)" >&2; exit 1; }
done
cargo build -q -p flow-designer --bin flow-designer
bin=${CARGO_TARGET_DIR:-target}/debug/flow-designer
if [ -n "$live" ]; then
  cargo build -q -p flow-cli --bin flow
fi

# A free display number.
display=99
while [ -e "/tmp/.X11-unix/X$display" ] || [ -e "/tmp/.X$display-lock" ]; do display=$((display + 1)); done
tmp=$(mktemp -d)
# The screen is twice the window's size: X puts the pointer at the screen's centre, which is
# then just outside the window (at its bottom-right corner), so nothing in the picture is
# hovered (no tooltip, no highlighted node); the picture is the window alone.
Xvfb ":$display" -screen 0 2880x1760x24 -nolisten tcp >"$tmp/xvfb.log" 2>&1 &
xvfb=$!
app=""
cleanup() {
  # --live: the pipe's reader first (the alerts sink then fails instead of waiting), the
  # designer's `flow run` child, then the designer.
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

reader=""
args=("$flow")
if [ -n "$live" ]; then
  flow_bin=$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)/flow
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
# No window manager: the window opens at the top-left corner with the size it asks for.
# An empty config directory: no recent files or panel sizes from an earlier run.
DISPLAY=":$display" XDG_CONFIG_HOME="$tmp" XDG_DATA_HOME="$tmp" LIBGL_ALWAYS_SOFTWARE=1 \
  "$bin" "${args[@]}" >"$tmp/designer.log" 2>&1 &
app=$!
window=""
for _ in $(seq 300); do
  window=$(xwininfo -display ":$display" -root -tree 2>/dev/null | awk '/- flow designer"/ { print $1; exit }')
  if [ -n "$window" ]; then
    break
  fi
  kill -0 "$app" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$window" ]; then
  echo "screenshot.sh: the designer window did not appear" >&2
  cat "$tmp/designer.log" >&2
  exit 1
fi
# Let it lay out and fit the flow (a few frames); a running flow a few seconds more, so that
# the queues have filled and the rates settled.
sleep 3
if [ -n "$live" ]; then
  sleep 5
fi
mkdir -p "$(dirname "$out")"
DISPLAY=":$display" import -window "$window" "$out"
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

#!/usr/bin/env bash
# Starts the designer in a real window on a virtual X display (Xvfb) and takes a screenshot:
#   bash scripts/screenshot.sh [OUT.png] [FLOW.yaml]
# (defaults: docs/designer.png, flows/sensors.yaml). Needs xvfb, x11-utils and imagemagick;
# OpenGL comes from Mesa's software renderer (libgl1-mesa-dri). scripts/test.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/designer.png}
flow=${2:-flows/sensors.yaml}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if command -v mold >/dev/null && [ -z "${RUSTFLAGS:-}" ]; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi
for tool in Xvfb xwininfo import; do
  command -v "$tool" >/dev/null || { echo "screenshot.sh: $tool is missing (apt-get install xvfb x11-utils imagemagick)" >&2; exit 1; }
done
cargo build -q -p flow-designer --bin flow-designer
bin=${CARGO_TARGET_DIR:-target}/debug/flow-designer

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
  [ -n "$app" ] && kill "$app" 2>/dev/null || true
  kill "$xvfb" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 50); do xwininfo -display ":$display" -root >/dev/null 2>&1 && break; sleep 0.1; done

# No window manager: the window opens at the top-left corner with the size it asks for.
# An empty config directory: no recent files or panel sizes from an earlier run.
DISPLAY=":$display" XDG_CONFIG_HOME="$tmp" XDG_DATA_HOME="$tmp" LIBGL_ALWAYS_SOFTWARE=1 \
  "$bin" "$flow" >"$tmp/designer.log" 2>&1 &
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
# Let it lay out and fit the flow (a few frames).
sleep 3
mkdir -p "$(dirname "$out")"
DISPLAY=":$display" import -window "$window" "$out"
echo "screenshot: $out ($(stat -c %s "$out") bytes)"

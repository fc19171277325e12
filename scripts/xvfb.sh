#!/usr/bin/env bash
# The designer in a real window on a virtual X display, for scripts/screenshot.sh and
# bench/designer.sh. Source it, then:
#   xvfb_start                 a free display (Xvfb's choice), its log in $XVFB_TMP (a new temporary
#                              directory, removed by xvfb_stop); sets XVFB_DISPLAY, XVFB_PID
#   xvfb_designer BIN ARGS...  starts BIN (the designer) on it in the background, its output in
#                              $XVFB_TMP/designer.log; sets XVFB_APP; waits for its window and
#                              sets XVFB_WINDOW (its X id); fails if it exits first
#   xvfb_stop                  ends the designer's `flow run` children (SIGTERM, SIGKILL a
#                              second later), the designer, the display, and removes $XVFB_TMP
# The screen is twice the window's size: X puts the pointer at the screen's centre, which is
# then just outside the window (at its bottom-right corner), so nothing is hovered (no
# tooltip, no highlighted node, nothing redrawn). No window manager: the window opens at the
# top-left corner with the size it asks for. An empty config directory: no recent files or
# panel sizes from an earlier run. OpenGL is Mesa's software renderer (llvmpipe).
# Needs xvfb and x11-utils (xwininfo).

xvfb_start() {
  local tool
  for tool in Xvfb xwininfo; do
    command -v "$tool" >/dev/null || { echo "xvfb.sh: $tool is missing (apt-get install xvfb x11-utils)" >&2; return 1; }
  done
  XVFB_TMP=$(mktemp -d)
  XVFB_APP=""
  XVFB_WINDOW=""
  # Xvfb picks a free display itself and writes its number to fd 3 once it accepts
  # connections (-displayfd). Picked here by looking for lock files, a display whose
  # earlier server was still exiting looked free: the new server could not listen, the
  # check below reached the old one, and the designer then found no X server at all.
  # Made first: the loop below may read it before the background job has opened it.
  : >"$XVFB_TMP/display"
  # -noreset: by default the server resets when its last client disconnects, and a client
  # connecting during the reset is dropped. The checks here and in xvfb_designer connect and
  # disconnect (xwininfo) while the designer connects: CI's second screenshot failed twice
  # with the designer's "Failed to open connection to X server".
  Xvfb -displayfd 3 -noreset -screen 0 2880x1760x24 -nolisten tcp 3>"$XVFB_TMP/display" >"$XVFB_TMP/xvfb.log" 2>&1 &
  XVFB_PID=$!
  local _
  for _ in $(seq 100); do
    XVFB_DISPLAY=$(tr -dc 0-9 <"$XVFB_TMP/display")
    if [ -n "$XVFB_DISPLAY" ] && grep -q $'\n' "$XVFB_TMP/display"; then
      kill -0 "$XVFB_PID" 2>/dev/null && xwininfo -display ":$XVFB_DISPLAY" -root >/dev/null 2>&1 && return 0
    fi
    kill -0 "$XVFB_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "xvfb.sh: the virtual display did not come up" >&2
  cat "$XVFB_TMP/xvfb.log" >&2
  return 1
}

xvfb_designer() {
  DISPLAY=":$XVFB_DISPLAY" XDG_CONFIG_HOME="$XVFB_TMP" XDG_DATA_HOME="$XVFB_TMP" LIBGL_ALWAYS_SOFTWARE=1 \
    "$@" >"$XVFB_TMP/designer.log" 2>&1 &
  XVFB_APP=$!
  local _
  for _ in $(seq 300); do
    XVFB_WINDOW=$(xwininfo -display ":$XVFB_DISPLAY" -root -tree 2>/dev/null | awk '/- flow designer"/ { print $1; exit }')
    [ -n "$XVFB_WINDOW" ] && return 0
    kill -0 "$XVFB_APP" 2>/dev/null || break
    sleep 0.1
  done
  echo "xvfb.sh: the designer window did not appear" >&2
  cat "$XVFB_TMP/designer.log" >&2
  return 1
}

xvfb_stop() {
  local children="" child
  [ -n "${XVFB_APP:-}" ] && children=$(pgrep -P "$XVFB_APP" 2>/dev/null || true)
  for child in $children; do kill "$child" 2>/dev/null || true; done
  [ -n "$children" ] && sleep 1
  for child in $children; do kill -9 "$child" 2>/dev/null || true; done
  [ -n "${XVFB_APP:-}" ] && kill "$XVFB_APP" 2>/dev/null || true
  [ -n "${XVFB_PID:-}" ] && kill "$XVFB_PID" 2>/dev/null || true
  # Until the server has exited (and given up its display), then the rest.
  [ -n "${XVFB_PID:-}" ] && wait "$XVFB_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${XVFB_TMP:-}" ] && rm -rf "$XVFB_TMP"
  return 0
}

#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Rust installed:
#   bash scripts/test.sh
# It installs what is missing, builds in the dev profile, checks formatting and lints, and runs
# every test. Servers that tests need are installed, started and stopped here as well.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s (%d:%02d)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_updated=""
apt_install() {
  # apt_install PACKAGE...: install the Debian packages that are missing.
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || return 1
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq || return 1; apt_updated=1; fi
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# A C compiler for the crates that build C (VRL's oniguruma), and mold to link faster.
apt_install gcc libc6-dev || true
apt_install mold || true
# openssl makes the certificates of the MQTT TLS test.
apt_install openssl || true
# promtool (Debian's prometheus) checks the API's /metrics; tmux drives the interactive `flow top`.
apt_install prometheus tmux || true
# The designer: Mesa's software GL and Vulkan (headless egui_kittest tests), and Xvfb with
# x11-utils and imagemagick for scripts/screenshot.sh's real window (installed only if missing).
apt_install libgl1-mesa-dri libegl1 mesa-vulkan-drivers || true
command -v Xvfb >/dev/null || apt_install xvfb || true
command -v xwininfo >/dev/null || apt_install x11-utils || true
command -v import >/dev/null || apt_install imagemagick || true
if command -v mold >/dev/null; then
  export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# On a fresh clone (CI) incremental compilation only writes caches no later build reads, several
# GB of them beside the dev target: CI ran out of disk once (stop 26). Kept for local runs,
# where they speed up the next build.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

# --- Fuzzing, part 1: cargo-fuzz and the fuzz targets (their own workspace and target dir,
# fuzz/target) build in the background from the start, at idle priority (SCHED_IDLE): they use
# the cycles the rest leaves (downloads, servers starting, tests waiting on them), and cost
# the rest nothing. Part 2, after the tests, runs each target. FUZZ=0 skips both.
fuzz_build=""
if [ "${FUZZ:-1}" != 0 ]; then
  fuzz_log=$(mktemp)
  idle=()
  if command -v chrt >/dev/null && chrt -i 0 true 2>/dev/null; then idle=(chrt -i 0); fi
  # In a session of its own, so that an early exit ends the build with all its children.
  FUZZ_BUILD_ONLY=1 setsid "${idle[@]}" nice -n 19 bash scripts/fuzz.sh >"$fuzz_log" 2>&1 &
  fuzz_build=$!
fi
stop_fuzz_build() { if [ -n "$fuzz_build" ]; then kill -- -"$fuzz_build" 2>/dev/null || true; fi; }
trap stop_fuzz_build EXIT

log "format"
cargo fmt --all -- --check

log "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The binary on the system allocator (for heap profilers, docs/performance.md step 17).
cargo clippy -p flow-cli --locked --no-default-features -q -- -D warnings

log "generated docs are current"
cargo run -q -p flow-cli --locked -- docs --check docs/reference

# --- WebAssembly plugins (plugins/): begin -------------------------------------------------
# The example plugins are WebAssembly components the tests run: built when missing or stale
# (adds the wasm32-wasip2 rustup target and installs componentize-py from PyPI when missing).
log "plugins: build"
bash plugins/build.sh
log "plugins: format and lint the plugin workspace (plugins/examples, plugins/sdk)"
(cd plugins/examples && cargo fmt --all -- --check \
  && env -u RUSTFLAGS cargo clippy --release --locked --target wasm32-wasip2 -q -- -D warnings)
# --- WebAssembly plugins: end -------------------------------------------------------------

# --- flow test: the unit tests of every example flow (flows/*.test.yaml, docs/testing.md).
# No server needed: sources and sinks are replaced. Exit 1 on any failing test.
log "flow tests of the example flows"
cargo run -q -p flow-cli --locked -- test flows/
# ---

(cd fuzz && cargo fmt --all -- --check)

log "servers"
. scripts/services.sh
# services.sh owns the EXIT trap from here on.
services_on_exit stop_fuzz_build
if ! start_mosquitto; then
  # Without CI the MQTT tests skip (and say so); in CI they fail on the missing variable.
  echo "warning: mosquitto could not start; the MQTT tests will skip (or fail with CI set)" >&2
fi
if ! start_victoria_metrics; then
  echo "warning: victoria-metrics could not start; the InfluxDB tests will skip (or fail with CI set)" >&2
fi
if ! start_s3; then
  echo "warning: s3s-fs could not start; the S3 tests will skip (or fail with CI set)" >&2
fi
if ! start_tansu; then
  echo "warning: tansu could not start; the Kafka tests run on librdkafka's mock cluster or skip (or fail with CI set)" >&2
fi

log "designer in a real window (Xvfb)"
if command -v Xvfb >/dev/null && command -v xwininfo >/dev/null && command -v import >/dev/null; then
  bash scripts/screenshot.sh "$(mktemp -d)/designer.png" flows/sensors.yaml
  # The designer running flows/sensors.yaml itself, live; prints its CPU share while watching.
  bash scripts/screenshot.sh --live "$(mktemp -d)/designer-live.png"
else
  echo "warning: Xvfb, xwininfo or import is missing: no real-window screenshot" >&2
fi

log "tests"
# Server tests without their server skip (outside CI) with a line "skipped: <why>", which
# the runners hide for passing tests: they are collected and listed at the end (nothing is
# printed when none skipped, so with CI set nextest's summary stays the closing line).
status=0
if cargo nextest --version >/dev/null 2>&1; then
  # Doc tests first: nextest's summary is the closing line CI reads.
  cargo test --workspace --locked --doc -q
  junit=target/nextest/test-sh/junit.xml
  rm -f "$junit"
  cargo nextest run --workspace --locked --no-fail-fast --profile test-sh || status=$?
  if [ -f "$junit" ]; then python3 scripts/skipped.py junit "$junit" || true; fi
else
  # --show-output prints passing tests' output, kept in the log for the list and filtered
  # out of the terminal (the runner's own lines are left as they were).
  test_log=$(mktemp)
  cargo test --workspace --locked --no-fail-fast -- --show-output 2>&1 | tee "$test_log" |
    awk '/^successes:$/ { hide = 1 } /^failures:$/ || /^test result:/ { hide = 0 } !hide' ||
    status=$?
  python3 scripts/skipped.py libtest "$test_log" || true
  rm -f "$test_log"
fi

# --- Fuzzing, part 2 (fuzz/, docs/reliability.md): once the background build is done, every
# target for FUZZ_SECONDS (10 here) seconds; any crash fails the run.
if [ -n "$fuzz_build" ]; then
  log "fuzzing (waiting for the fuzz build)"
  fuzz_status=0
  wait "$fuzz_build" || fuzz_status=$?
  fuzz_build=""
  if [ "$fuzz_status" != 0 ]; then
    cat "$fuzz_log" >&2
    echo "fuzz: the build failed" >&2
    status=1
  elif ! FUZZ_SECONDS="${FUZZ_SECONDS:-10}" bash scripts/fuzz.sh; then
    status=1
  fi
  rm -f "$fuzz_log"
  log "done: tests and fuzzing exit $status"
fi
exit "$status"

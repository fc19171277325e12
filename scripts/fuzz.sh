#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of flow's parsers and checks: the targets are
# in fuzz/fuzz_targets, their seed corpus (checked in) in fuzz/seeds/<target>.
#   bash scripts/fuzz.sh                    # every target for FUZZ_SECONDS (default 20) seconds
#   FUZZ_RUNS=100000 bash scripts/fuzz.sh   # every target for that many inputs instead
#   bash scripts/fuzz.sh json_record        # some targets only
#   FUZZ_BUILD_ONLY=1 bash scripts/fuzz.sh  # install cargo-fuzz and build every target, no run
# Exits 1 on the first crash (a panic, an input slower than FUZZ_TIMEOUT seconds, or more than
# FUZZ_RSS_MB of memory); the input is kept in fuzz/artifacts/<target>/ and
# `cargo fuzz run -s none <target> <file>` replays it. Inputs found are kept in fuzz/corpus/
# (not checked in).
#
# Stable Rust: RUSTC_BOOTSTRAP=1 lets cargo fuzz pass its -Z flags. No sanitizer (`-s none`):
# flow forbids `unsafe`, so AddressSanitizer would mostly watch C dependencies, at twice the
# build and run time. Builds are optimized with debug assertions and overflow checks on.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
runs="${FUZZ_RUNS:-}"
timeout="${FUZZ_TIMEOUT:-10}"
rss_mb="${FUZZ_RSS_MB:-1536}"

if ! command -v cargo-fuzz >/dev/null; then
  echo "==> installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The largest input each target is given (bytes): large enough for the seeds, small enough
# to keep the inputs fast.
max_len() {
  case "$1" in
    spec_load) echo 4096 ;;
    vrl_condition | template) echo 1024 ;;
    *) echo 2048 ;;
  esac
}

if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

# One build of every target first (`cargo fuzz run` then finds them built).
cargo fuzz build -s none
if [ -n "${FUZZ_BUILD_ONLY:-}" ]; then exit 0; fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  if [ -n "$runs" ]; then limit=(-runs="$runs"); else limit=(-max_total_time="$seconds"); fi
  echo "==> fuzz $t (${runs:+$runs inputs}${runs:-$seconds s})" >&2
  if ! cargo fuzz run -s none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    "${limit[@]}" -max_len="$(max_len "$t")" -timeout="$timeout" -rss_limit_mb="$rss_mb" \
    -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $t crashed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
done

#!/usr/bin/env bash
# Does kafka_source lose or repeat records when it pauses its partitions (back-pressure)?
#   bash bench/kafka-pause.sh [N]        (needs tansu, started here: scripts/services.sh)
# Fills an 8-partition topic with N sensor events (default 300,000), then reads it with
# flows/kafka-to-file.yaml in four fresh consumer groups: two as shipped (the source pauses when
# max_inflight records are in the flow, or after a send blocked 500 ms) and two that never pause
# (max_inflight: 100000000). Each group has 45 s. Prints lines and distinct lines per group; all
# four should hold N distinct lines. On 2026-12-03 with tansu 0.6: pausing groups 267,193 and
# 254,087 distinct of 300,000 (with repeats), never-pausing groups 300,000 each.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-300000}"
. bench/common.sh
bin=$(flow_bin)
work="$(mktemp -d)"
. scripts/services.sh
cleanup() { rm -rf "$work"; }
services_on_exit cleanup
export XDG_STATE_HOME="$work/state"
fill_topic "$bin" "$work" pause "$n"
sed 's/    start: earliest/    start: earliest\n    max_inflight: ${MAXIN}/' flows/kafka-to-file.yaml >"$work/k2f.yaml"
for c in "paused-1 10000" "never-1 100000000" "paused-2 10000" "never-2 100000000"; do
  read -r name maxin <<<"$c"
  mkdir -p "$work/$name"
  GROUP="$name-$$" MAXIN=$maxin OUT_DIR="$work/$name" timeout 45 "$bin" run --quiet "$work/k2f.yaml" 2>/dev/null || true
  out="$work/$name/telemetry.jsonl"
  touch "$out"
  printf '%-9s max_inflight %-10s %8d lines %8d distinct (of %d)\n' "$name" "$maxin" \
    "$(wc -l <"$out")" "$(sort -u "$out" | wc -l)" "$n"
done

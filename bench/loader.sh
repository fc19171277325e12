#!/usr/bin/env bash
# Loader scaling: how long `flow validate` takes on large flows.
#
#   bench/loader.sh [path/to/flow]     (default: target/release/flow; LIMIT=120 s per flow)
#
# Writes flows into a temporary directory: chains of N filters (N = 1000, 2000, 10000) and a
# remap program of L lines (L = 2000, 4000), and times `flow validate` on each. A linear loader
# takes about 2x and 10x the time of the 1,000-filter chain on 2,000 and 10,000.
set -euo pipefail
flow=${1:-target/release/flow}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# A generator, then N filters in a chain, then a sink.
chain() {
    local n=$1 f=$2
    {
        echo "name: chain-$n"
        echo "processors:"
        echo "  gen: { type: generate, count: 10 }"
        for ((i = 0; i < n; i++)); do
            echo "  f$i: { type: filter, condition: '.temperature > $i' }"
        done
        echo "  out: { type: stdout }"
        echo "connections:"
        echo "  - gen -> f0"
        for ((i = 1; i < n; i++)); do
            echo "  - f$((i - 1)).matched -> f$i"
        done
        echo "  - f$((n - 1)).matched -> out"
    } >"$f"
}

# One remap whose program has L lines.
remap() {
    local n=$1 f=$2
    {
        echo "name: remap-$n"
        echo "processors:"
        echo "  gen: { type: generate, count: 10 }"
        echo "  fix:"
        echo "    type: remap"
        echo "    source: |"
        for ((i = 0; i < n; i++)); do
            echo "      .f$i = $i"
        done
        echo "  out: { type: stdout }"
        echo "connections:"
        echo "  - gen -> fix"
        echo "  - fix -> out"
    } >"$f"
}

# Wall time and CPU time (user + system: less sensitive to a busy machine).
measure() {
    local f=$1 rc=0
    local t="$dir/time"
    timeout "${LIMIT:-120}" /usr/bin/time -f '%e %U %S' -o "$t" \
        "$flow" validate --format short "$f" >/dev/null 2>&1 || rc=$?
    if [ "$rc" = 124 ]; then
        printf '%-14s > %s s (timed out)\n' "$(basename "$f" .yaml)" "${LIMIT:-120}"
        return
    fi
    if [ "$rc" != 0 ]; then echo "$f: invalid" >&2; "$flow" validate "$f" 2>&1 | head -20; exit 1; fi
    read -r wall user sys <"$t"
    printf '%-14s %8.2f s wall %8.2f s CPU\n' "$(basename "$f" .yaml)" "$wall" "$(echo "$user + $sys" | bc)"
}

for n in 1000 2000 10000; do chain "$n" "$dir/chain-$n.yaml"; done
for n in 2000 4000; do remap "$n" "$dir/remap-$n.yaml"; done
for n in 1000 2000 10000; do measure "$dir/chain-$n.yaml"; done
for n in 2000 4000; do measure "$dir/remap-$n.yaml"; done

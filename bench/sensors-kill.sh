#!/usr/bin/env bash
# Repeats after crashes: flows/sensors.yaml killed (-9) KILLS times at random moments, then run to
# the end, against an uninterrupted run of the same input.
#   bash bench/sensors-kill.sh [N] [KILLS] [SEED] [BIN]
# N events (default 600,000), KILLS kills (default 10), SEED for the input and the kill moments
# (default 1; printed), BIN the flow binary (default target/debug/flow, built if missing).
# Prints, per output file: the reference's lines, lines lost (in the reference, missing after
# the crashes) and lines repeated (written more often than in the reference). Exit 1 if any
# line was lost or is foreign.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-600000}"
kills="${2:-10}"
seed="${3:-1}"
bin="${4:-target/debug/flow}"
if [ ! -x "$bin" ]; then
  [ "$bin" = target/debug/flow ] || { echo "no flow binary at $bin" >&2; exit 2; }
  if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
  cargo build -q -p flow-cli --bin flow
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export XDG_STATE_HOME="$work/state"

COUNT="$n" SEED="$seed" OUT="$work/events.jsonl" "$bin" run --quiet bench/gen-sensors.yaml
start=$(date +%s.%N)
INPUT="$work/events.jsonl" OUT_DIR="$work/reference" "$bin" run --quiet flows/sensors.yaml
took=$(python3 -c "import time; print(time.time() - $start)")
echo "input: $n events, seed $seed; an uninterrupted run takes ${took%.*} s"

# Kill moments: uniform in (0.2 s, 15 % of an uninterrupted run) after each start, seeded, so
# that the runs before the last one, which resume where the previous one stopped, cover about
# three quarters of the input between them.
mapfile -t delays < <(python3 -c "
import random
r = random.Random($seed)
for _ in range($kills): print(round(r.uniform(0.2, max(0.4, 0.15 * $took)), 2))")
done_kills=0
for d in "${delays[@]}"; do
  INPUT="$work/events.jsonl" OUT_DIR="$work/crashed" "$bin" run --quiet flows/sensors.yaml \
    >/dev/null 2>&1 &
  pid=$!
  sleep "$d"
  if kill -9 "$pid" 2>/dev/null; then
    done_kills=$((done_kills + 1))
  fi
  wait "$pid" 2>/dev/null || true
done
INPUT="$work/events.jsonl" OUT_DIR="$work/crashed" "$bin" run --quiet flows/sensors.yaml
echo "kills: $done_kills at ${delays[*]} s"

python3 - "$work/reference" "$work/crashed" <<'EOF'
import collections, sys
ref, got = sys.argv[1], sys.argv[2]
bad = False
for name in ["windows.jsonl", "alerts.jsonl", "late.jsonl"]:
    want = collections.Counter(open(f"{ref}/{name}").read().splitlines())
    have = collections.Counter(open(f"{got}/{name}").read().splitlines())
    lost = sum((want - have).values())
    repeated = sum((have - want).values())
    foreign = sum(1 for k in have if k not in want)
    bad |= lost > 0 or foreign > 0
    print(f"{name:14} {sum(want.values()):8} lines  lost {lost:6}  repeated {repeated:8}  foreign {foreign}")
sys.exit(1 if bad else 0)
EOF

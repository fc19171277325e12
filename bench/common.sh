# Sourced by the bench scripts (from the repo's root).
# flow_bin: the binary to measure: $FLOW when set, else a release build of flow-cli (linked
# with mold when present). Prints its path; the build's output goes to stderr.
flow_bin() {
  if [ -n "${FLOW:-}" ]; then
    echo "$FLOW"
    return
  fi
  if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
  cargo build -q --release -p flow-cli >&2
  echo "$PWD/target/release/flow"
}

# fill_topic BIN WORK TOPIC N: start tansu (scripts/services.sh must be sourced), create TOPIC
# with 8 partitions, make N sensor events in WORK/events.jsonl and produce them keyed by
# device with BIN (file -> kafka_sink). Exports KAFKA_BROKERS and TOPIC, and FILL_SECONDS (how
# long producing took); fails when the producing run reports a record it did not deliver.
fill_topic() {
  local bin=$1 work=$2 topic=$3 n=$4
  # Called again (another topic), it uses the tansu and the events it has.
  [ -n "${TANSU_PID:-}" ] || start_tansu >/dev/null
  export KAFKA_BROKERS=$FLOW_TEST_KAFKA_BROKERS TOPIC=$topic
  "$FLOW_TEST_TANSU" topic create --broker "tcp://$KAFKA_BROKERS" --partitions 8 "$TOPIC" >/dev/null
  if [ ! -f "$work/events.jsonl" ] || [ "$(wc -l <"$work/events.jsonl")" != "$n" ]; then
    COUNT="$n" OUT="$work/events.jsonl" "$bin" run --quiet bench/gen-sensors.yaml
  fi
  cat >"$work/produce.yaml" <<'YAML'
name: bench-produce
processors:
  events: { type: file, path: "${INPUT}", format: lines }
  kafka: { type: kafka_sink, brokers: "${KAFKA_BROKERS}", topic: "${TOPIC}", key: .device, properties: { batch.num.messages: "${FILL_BATCH:-10000}" } }
connections:
  - events -> kafka
YAML
  local t0
  t0=$(date +%s.%N)
  INPUT="$work/events.jsonl" "$bin" run --quiet --report "$work/produce.json" "$work/produce.yaml"
  FILL_SECONDS=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  export FILL_SECONDS
  python3 - "$work/produce.json" "$n" <<'PY'
import json, sys
nodes = {n["name"]: n for n in json.load(open(sys.argv[1]))["nodes"]}
acks = nodes["events"].get("acks") or {}
if nodes["kafka"]["failed"] or acks.get("failed") or acks.get("delivered", 0) == 0:
    sys.exit(f"producing failed: kafka_sink {nodes['kafka']}, acks {acks}")
PY
}

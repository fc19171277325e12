#!/usr/bin/env bash
# Servers the tests use, installed when missing and started on 127.0.0.1. Source it:
#   . scripts/services.sh; start_mosquitto; ...; stop_mosquitto
# start_mosquitto exports FLOW_TEST_MQTT_URL, start_victoria_metrics FLOW_TEST_INFLUX_URL (and
# FLOW_TEST_VM_SCRAPE_CONFIG, the scrape config it reads every second) and
# start_s3 FLOW_TEST_S3_ENDPOINT (with _BUCKET, _ACCESS_KEY, _SECRET_KEY); each server is
# stopped when the shell exits. Each also exports the path of its binary (FLOW_TEST_MOSQUITTO,
# FLOW_TEST_VICTORIA_METRICS, FLOW_TEST_S3S_FS, FLOW_TEST_TANSU), for the tests that start,
# stop and restart servers of their own on other ports.

services_as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# A free TCP port on 127.0.0.1 (1883 when it is free).
free_port() {
  python3 - "$@" <<'PY' 2>/dev/null || echo 1883
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", 1883))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# Any free TCP port on 127.0.0.1.
any_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Every start_* registers its stop function here; one EXIT trap runs them all.
SERVICES_STOPS=""
services_on_exit() {
  SERVICES_STOPS="$SERVICES_STOPS $1"
  # shellcheck disable=SC2064
  trap "for s in $SERVICES_STOPS; do \$s; done" EXIT
}

# Wait until 127.0.0.1:$1 accepts connections (up to $2 tenths of a second, default 50).
wait_port() {
  local port=$1 tries=${2:-50}
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

MOSQUITTO_PID=""
MOSQUITTO_DIR=""

start_mosquitto() {
  local mosquitto
  mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  if [ ! -x "$mosquitto" ] || ! command -v mosquitto_pub >/dev/null; then
    echo "==> installing mosquitto mosquitto-clients"
    services_as_root apt-get update -qq || return 1
    services_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      mosquitto mosquitto-clients >/dev/null || return 1
    mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  fi
  # The tests start brokers of their own too (restarts, passwords): they find it here.
  export FLOW_TEST_MOSQUITTO="$mosquitto"
  local port
  port=$(free_port)
  MOSQUITTO_DIR=$(mktemp -d)
  cat >"$MOSQUITTO_DIR/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
# Running as root, stay root (the default drops to user mosquitto, who cannot write here).
user root
# Tests queue thousands of messages for offline persistent sessions: no cap (default 1000).
max_queued_messages 0
# ...and QoS 0 ones too, so tests can make a subscriber session first and read it after.
queue_qos0_messages true
log_dest file $MOSQUITTO_DIR/mosquitto.log
CONF
  "$mosquitto" -c "$MOSQUITTO_DIR/mosquitto.conf" >/dev/null 2>&1 &
  MOSQUITTO_PID=$!
  services_on_exit stop_mosquitto
  if ! wait_port "$port"; then
    echo "mosquitto did not start on 127.0.0.1:$port" >&2
    cat "$MOSQUITTO_DIR/mosquitto.log" >&2 || true
    stop_mosquitto
    return 1
  fi
  export FLOW_TEST_MQTT_URL="mqtt://127.0.0.1:$port"
  echo "==> mosquitto on $FLOW_TEST_MQTT_URL (pid $MOSQUITTO_PID)"
}

stop_mosquitto() {
  if [ -n "$MOSQUITTO_PID" ]; then
    kill "$MOSQUITTO_PID" 2>/dev/null || true
    wait "$MOSQUITTO_PID" 2>/dev/null || true
    MOSQUITTO_PID=""
  fi
  if [ -n "$MOSQUITTO_DIR" ]; then
    rm -rf "$MOSQUITTO_DIR"
    MOSQUITTO_DIR=""
  fi
}

VM_PID=""
VM_DIR=""

# VictoriaMetrics, for its InfluxDB v2 write API (influxdb_sink tests).
start_victoria_metrics() {
  local vm
  vm=$(command -v victoria-metrics || echo /usr/bin/victoria-metrics)
  if [ ! -x "$vm" ]; then
    echo "==> installing victoria-metrics"
    services_as_root apt-get update -qq || return 1
    services_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      victoria-metrics >/dev/null || return 1
    vm=$(command -v victoria-metrics || echo /usr/bin/victoria-metrics)
  fi
  # Tests that stop and restart a server of their own (cli/tests/outages.rs) find it here.
  export FLOW_TEST_VICTORIA_METRICS="$vm"
  local port
  port=$(any_free_port) || return 1
  VM_DIR=$(mktemp -d)
  # 100 years of retention: test data has old timestamps. No latency offset: data written is
  # queryable at once. It also scrapes like Prometheus: tests write their targets into the
  # scrape config (FLOW_TEST_VM_SCRAPE_CONFIG), read again every second.
  printf 'scrape_configs: []\n' >"$VM_DIR/scrape.yml"
  "$vm" -httpListenAddr="127.0.0.1:$port" -storageDataPath="$VM_DIR/data" -retentionPeriod=100y \
    -search.latencyOffset=0s -promscrape.config="$VM_DIR/scrape.yml" \
    -promscrape.configCheckInterval=1s >"$VM_DIR/victoria-metrics.log" 2>&1 &
  VM_PID=$!
  services_on_exit stop_victoria_metrics
  local ok=""
  for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  if [ -z "$ok" ]; then
    echo "victoria-metrics did not start on 127.0.0.1:$port" >&2
    tail -20 "$VM_DIR/victoria-metrics.log" >&2 || true
    stop_victoria_metrics
    return 1
  fi
  export FLOW_TEST_INFLUX_URL="http://127.0.0.1:$port"
  export FLOW_TEST_VM_SCRAPE_CONFIG="$VM_DIR/scrape.yml"
  echo "==> victoria-metrics on $FLOW_TEST_INFLUX_URL (pid $VM_PID)"
}

stop_victoria_metrics() {
  if [ -n "$VM_PID" ]; then
    kill "$VM_PID" 2>/dev/null || true
    wait "$VM_PID" 2>/dev/null || true
    VM_PID=""
  fi
  if [ -n "$VM_DIR" ]; then
    rm -rf "$VM_DIR"
    VM_DIR=""
  fi
}

S3_PID=""
S3_DIR=""

# s3s-fs, an S3-compatible server over a directory (s3_sink tests). Built from crates.io once,
# into ~/.cargo/bin (about 10 minutes cold on two cores); later runs reuse it.
start_s3() {
  local bin
  bin=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
  if [ ! -x "$bin" ]; then
    echo "==> installing s3s-fs (cargo install, once)"
    # 0.14.1: newer versions need a newer rustc.
    cargo install s3s-fs@0.14.1 --features binary --locked --quiet || return 1
    bin="$HOME/.cargo/bin/s3s-fs"
  fi
  export FLOW_TEST_S3S_FS="$bin"
  local port
  port=$(any_free_port) || return 1
  S3_DIR=$(mktemp -d)
  # A bucket is a directory.
  mkdir -p "$S3_DIR/data/flow-test"
  "$bin" --host 127.0.0.1 --port "$port" --access-key flowtest --secret-key flowtestsecret \
    "$S3_DIR/data" >"$S3_DIR/s3s-fs.log" 2>&1 &
  S3_PID=$!
  services_on_exit stop_s3
  if ! wait_port "$port" 100; then
    echo "s3s-fs did not start on 127.0.0.1:$port" >&2
    tail -20 "$S3_DIR/s3s-fs.log" >&2 || true
    stop_s3
    return 1
  fi
  export FLOW_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  export FLOW_TEST_S3_BUCKET=flow-test
  export FLOW_TEST_S3_ACCESS_KEY=flowtest
  export FLOW_TEST_S3_SECRET_KEY=flowtestsecret
  echo "==> s3s-fs on $FLOW_TEST_S3_ENDPOINT, bucket $FLOW_TEST_S3_BUCKET (pid $S3_PID)"
}

stop_s3() {
  if [ -n "$S3_PID" ]; then
    kill "$S3_PID" 2>/dev/null || true
    wait "$S3_PID" 2>/dev/null || true
    S3_PID=""
  fi
  if [ -n "$S3_DIR" ]; then
    rm -rf "$S3_DIR"
    S3_DIR=""
  fi
}

TANSU_PID=""

# A Kafka-protocol broker: tansu (https://github.com/tansu-io/tansu), in-memory storage. Built
# from crates.io when missing (~35-45 min cold on two cores, once per machine: it lands in
# ~/.cargo/bin and later runs reuse it). Exports FLOW_TEST_KAFKA_BROKERS.
start_tansu() {
  local tansu
  tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
  if [ ! -x "$tansu" ]; then
    echo "==> installing the tansu Kafka broker (cargo install, once per machine)"
    # A debug build without debug info: about half the time of a release build, and fast
    # enough for the tests' few thousand messages.
    CARGO_PROFILE_DEV_DEBUG=0 cargo install tansu --version 0.6.0 --locked --features dynostore \
      --debug --quiet || return 1
    tansu="$HOME/.cargo/bin/tansu"
  fi
  export FLOW_TEST_TANSU="$tansu"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  TANSU_LOG=$(mktemp)
  RUST_LOG="${TANSU_LOG_LEVEL:-warn}" "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$TANSU_LOG" 2>&1 &
  TANSU_PID=$!
  services_on_exit stop_tansu
  if ! wait_port "$port"; then
    echo "tansu did not start on 127.0.0.1:$port" >&2
    cat "$TANSU_LOG" >&2 || true
    stop_tansu
    return 1
  fi
  export FLOW_TEST_KAFKA_BROKERS="127.0.0.1:$port"
  echo "==> tansu on $FLOW_TEST_KAFKA_BROKERS (pid $TANSU_PID)"
}

stop_tansu() {
  if [ -n "$TANSU_PID" ]; then
    kill "$TANSU_PID" 2>/dev/null || true
    wait "$TANSU_PID" 2>/dev/null || true
    TANSU_PID=""
  fi
}

#!/usr/bin/env bash
# Servers the tests use, installed when missing and started on 127.0.0.1. Source it:
#   . scripts/services.sh; start_mosquitto; ...; stop_mosquitto
# start_mosquitto exports FLOW_TEST_MQTT_URL and stops the broker when the shell exits.

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

# Wait until 127.0.0.1:$1 accepts connections (up to $2 tenths of a second, default 50).
wait_port() {
  local port=$1 tries=${2:-50}
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# Stop every server started here (the EXIT trap).
services_stop_all() {
  local f
  for f in stop_mosquitto stop_tansu stop_victoria_metrics stop_s3; do
    if declare -F "$f" >/dev/null; then "$f"; fi
  done
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
  trap services_stop_all EXIT
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

TANSU_PID=""

# A Kafka-protocol broker: tansu (https://github.com/tansu-io/tansu), in-memory storage. Built
# from crates.io when missing (~35-45 min cold on two cores, once per machine: it lands in
# ~/.cargo/bin and later runs reuse it). Exports FLOW_TEST_KAFKA_BROKERS.
start_tansu() {
  local tansu
  tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
  if [ ! -x "$tansu" ]; then
    echo "==> installing the tansu Kafka broker (cargo install, once per machine)"
    cargo install tansu --version 0.6.0 --locked --features dynostore --quiet || return 1
    tansu="$HOME/.cargo/bin/tansu"
  fi
  export FLOW_TEST_TANSU="$tansu"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  TANSU_LOG=$(mktemp)
  RUST_LOG="${TANSU_LOG_LEVEL:-warn}" "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$TANSU_LOG" 2>&1 &
  TANSU_PID=$!
  trap services_stop_all EXIT
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

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

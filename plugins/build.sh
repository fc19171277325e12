#!/usr/bin/env bash
# Build the example plugins (WebAssembly components) that are missing or stale, into
# plugins/examples/target/plugins/:
#   bash plugins/build.sh
# - Rust plugins: `cargo build --release --target wasm32-wasip2` in plugins/examples (cargo
#   rebuilds what changed); adds the rustup target when it is missing.
# - The Python plugin: componentize-py (PyPI, installed when missing), rebuilt when the WIT
#   or the Python sources are newer than the component.
# Tests call this when a plugin they need is missing; scripts/test.sh calls it before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=plugins/examples
out="$examples/target/plugins"
mkdir -p "$out"
# One build at a time (tests in parallel processes may all ask).
exec 9>"$examples/target/.build.lock"
flock 9

componentize_py_version=0.25.1

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "==> rustup target add wasm32-wasip2" >&2
  rustup target add wasm32-wasip2 >&2
fi
# The host's linker flags (mold) are not for wasm.
(cd "$examples" && env -u RUSTFLAGS CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}" \
  cargo build --release --locked --target wasm32-wasip2 -q)
for wasm in "$examples"/target/wasm32-wasip2/release/*.wasm; do
  dest="$out/$(basename "$wasm")"
  cmp -s "$wasm" "$dest" 2>/dev/null || cp -p "$wasm" "$dest"
done

py="$out/alerts_py.wasm"
stale=yes
if [ -f "$py" ] && [ -z "$(find plugins/wit "$examples/python" -newer "$py" -type f \( -name '*.wit' -o -name '*.py' \) 2>/dev/null)" ]; then
  stale=""
fi
if [ -n "$stale" ]; then
  if ! command -v componentize-py >/dev/null \
     || [ "$(componentize-py --version 2>/dev/null | awk '{print $2}')" != "$componentize_py_version" ]; then
    echo "==> pip install componentize-py==$componentize_py_version" >&2
    python3 -m pip install -q --disable-pip-version-check "componentize-py==$componentize_py_version" >&2
  fi
  echo "==> componentize-py: $py" >&2
  tmp="$py.tmp.$$"
  componentize-py -d plugins/wit -w plugin componentize -p "$examples/python" alerts -o "$tmp" >/dev/null
  mv "$tmp" "$py"
fi

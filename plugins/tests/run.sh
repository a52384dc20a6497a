#!/usr/bin/env bash
# Runs the plugins' own tests: native unit tests (Rust, Python, JS logic), then builds
# plugins/dist (build.sh: quick when up to date) and runs the smoke tests that load every
# component into wasmtime.
#   plugins/tests/run.sh            everything
#   plugins/tests/run.sh --smoke    only build + component smoke tests
set -euo pipefail
PLUGINS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT_DIR="$(cd "$PLUGINS_DIR/.." && pwd)"
VENV_DIR="${WASMQ_PLUGIN_VENV:-$ROOT_DIR/.tools/venv}"
say() { echo "==> $*" >&2; }

if [[ "${1:-}" != "--smoke" ]]; then
    say "Rust unit tests (native)"
    (cd "$PLUGINS_DIR" && cargo test --release --workspace --all-features --quiet)
    say "Python unit tests (CPython)"
    (cd "$PLUGINS_DIR/python/tag_filter_py" && python3 -B -m unittest -q test_tag_filter)
    say "JavaScript unit tests (Node)"
    node --test "$PLUGINS_DIR/js/tag-filter-js/test.mjs"
fi

say "building components"
"$PLUGINS_DIR/build.sh"

[[ -x "$VENV_DIR/bin/python" ]] || python3 -m venv "$VENV_DIR"
if ! "$VENV_DIR/bin/python" -c 'import wasmtime' 2>/dev/null; then
    say "installing $(cat "$PLUGINS_DIR/tests/requirements.txt") into $VENV_DIR"
    "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check -r "$PLUGINS_DIR/tests/requirements.txt"
fi
say "component smoke tests (wasmtime) over $PLUGINS_DIR/dist"
"$VENV_DIR/bin/python" -B "$PLUGINS_DIR/tests/smoke.py"

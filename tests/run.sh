#!/usr/bin/env bash
# The test command (see README): installs what the tests need, builds, runs every test.
#   bash tests/run.sh            # everything (CI runs this)
#   WASMQ_SKIP_PLUGINS_PY_JS=1   # only Rust plugins (quicker local runs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)
step() { printf '\n=== [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

step "example plugins (installs the wasm toolchains it needs)"
if [ "${WASMQ_SKIP_PLUGINS_PY_JS:-0}" = 1 ]; then
    bash plugins/build.sh --rust-only
else
    bash plugins/build.sh
fi

step "release build of the workspace"
cargo build --release --workspace --bins --tests --benches 2>&1 | tail -n 5

step "cargo tests: unit, property, simulation, plugin runtime, cluster (real binaries)"
cargo test --release --workspace 2>&1 | tee target/cargo-test.log | grep -E '^(test result|running|error|failures:|---- )|FAILED|panicked' || true
if grep -qE '^test result: FAILED|error(\[E[0-9]+\])?:' target/cargo-test.log || ! grep -q '^test result:' target/cargo-test.log; then
    echo "cargo tests failed"; exit 1
fi
passed=$(grep -E '^test result:' target/cargo-test.log | sed -E 's/.* ([0-9]+) passed.*/\1/' | paste -sd+ | bc)

step "plugin guest logic tests (native)"
(cd plugins && cargo test --release --workspace --exclude-wasm-only 2>/dev/null || bash build.sh --test)

step "official RocketMQ Python client against a 3-node cluster"
bash tests/python/run.sh

step "done in $(( $(date +%s) - START ))s"

#!/usr/bin/env bash
# The test command (README, and CI through .ci/run). Installs what the tests need, builds
# in release, and runs every suite; exits non-zero if any fails.
#
#   bash tests/run.sh
#
# Suites, in order:
#   1. example plugins: build (installs the wasm toolchains) + their own tests
#      (native logic tests, components loaded into wasmtime)
#   2. cargo test --release --workspace: storage, Raft simulation, plugin runtime, broker,
#      admin/name server CLIs, upgrade, cluster tests that run the real binaries
#   3. the official RocketMQ Python client against a 3-node group
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)
step() { printf '\n=== [%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
# The brokers refuse sends past diskSpaceWarningLevelRatio of a disk other jobs share: say
# how full it is, so a refusal in a log can be told from a bug.
disk() { echo "disk: $(df -P "$ROOT" /tmp 2>/dev/null | awk 'NR > 1 { printf "%s %s%% used, %d GiB free; ", $6, $5 + 0, $4 / 1048576 }')" || true; }

if ! command -v python3 >/dev/null || ! python3 -c 'import venv' 2>/dev/null; then
    step "installing python3-venv"
    apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip
fi

# CI machines share a disk with other jobs, and one run failed with ENOSPC in the middle of
# the storage tests. Keep the build's footprint small: no incremental caches (about 1.9 GiB,
# useless on a fresh clone) and no line tables (they double every one of the ~20 test and
# binary executables, each of which links wasmtime). Panic messages still name file:line.
# Local builds keep both through the profile in Cargo.toml; these override it only here.
export CARGO_INCREMENTAL=0 CARGO_PROFILE_RELEASE_DEBUG=false

disk
step "example plugins: build + tests"
bash plugins/tests/run.sh

step "release build"
cargo build --release --workspace --bins --tests

disk
step "cargo test --release --workspace"
cargo test --release --workspace --no-fail-fast

step "official RocketMQ Python client against a 3-node group"
disk
bash tests/python/run.sh

step "all suites passed in $(($(date +%s) - START))s"

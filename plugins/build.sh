#!/usr/bin/env bash
# Builds every wasmq policy plugin into plugins/dist/ as NAME.wasm + NAME.toml, ready to copy
# into a broker's pluginDir. Idempotent: installs missing tools, skips outputs newer than
# their sources, and checks that each component exports the interface its world requires.
#
#   plugins/build.sh              Rust, Python and JS plugins
#   plugins/build.sh --rust-only  Rust plugins only (quick)
#   plugins/build.sh --force      rebuild even when outputs look up to date
#
# Rust toolchain: the user's rustup wasm32-unknown-unknown target when installed; otherwise
# Debian's rustc-web + rust-web-src compile std for wasm from source (-Zbuild-std), linked
# with the rustup toolchain's rust-lld (see shared wasm-toolchains notes in ARCHITECTURE.md).
set -euo pipefail

PLUGINS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$PLUGINS_DIR/.." && pwd)"
WIT_DIR="$ROOT_DIR/wit"
DIST_DIR="$PLUGINS_DIR/dist"
VENV_DIR="${WASMQ_PLUGIN_VENV:-$ROOT_DIR/.tools/venv}"
REQUIREMENTS="$PLUGINS_DIR/requirements.txt"

RUST_ONLY=0
FORCE=0
for arg in "$@"; do
    case "$arg" in
        --rust-only) RUST_ONLY=1 ;;
        --force) FORCE=1 ;;
        -h | --help)
            sed -n '2,13p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *)
            echo "build.sh: unknown argument $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

say() { echo "==> $*" >&2; }
die() {
    echo "build.sh: error: $*" >&2
    exit 1
}

# Rust plugins: every crate under plugins/ except the SDK, found by its Cargo.toml. Each has
# its manifest NAME.toml beside Cargo.toml (NAME = the crate name = the directory name), and
# the SDK feature it enables names the interface its component must export. (That is why
# test/wrong-world-router checks as a router although its manifest claims a filter.)
RUST_PLUGINS=()
while IFS= read -r cargo_toml; do
    dir="${cargo_toml%/Cargo.toml}"
    dir="${dir#"$PLUGINS_DIR"/}"
    [[ "$dir" == sdk ]] && continue
    interface="$(grep -o 'features = \["\(filter\|router\|upgrade-validator\)"\]' "$cargo_toml" | sed 's/.*\["\(.*\)"\]/\1/' || true)"
    [[ -n "$interface" ]] || die "$cargo_toml: wasmq-plugin-sdk dependency must enable exactly one of the features filter, router, upgrade-validator"
    RUST_PLUGINS+=("$dir $interface")
done < <(find "$PLUGINS_DIR" -mindepth 2 -name Cargo.toml -not -path '*/target/*' -not -path '*/node_modules/*' | sort)

mkdir -p "$DIST_DIR"

# True when $1 is missing or older than any file under the remaining paths (or --force).
needs_build() {
    local out="$1"
    shift
    [[ $FORCE -eq 1 || ! -f "$out" ]] && return 0
    [[ -n "$(find "$@" -type f -newer "$out" -not -path '*/node_modules/*' -not -path '*/__pycache__/*' -print -quit 2>/dev/null)" ]]
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# --- wasm-tools and componentize-py (pinned in requirements.txt) -----------------------------
ensure_venv() {
    local stamp="$VENV_DIR/.wasmq-requirements"
    if [[ -x "$VENV_DIR/bin/wasm-tools" && -x "$VENV_DIR/bin/componentize-py" ]] && cmp -s "$REQUIREMENTS" "$stamp"; then
        return
    fi
    command -v python3 >/dev/null || die "python3 is required (for wasm-tools and componentize-py)"
    if [[ ! -x "$VENV_DIR/bin/pip" ]]; then
        say "creating Python venv $VENV_DIR"
        python3 -m venv "$VENV_DIR"
    fi
    say "installing $(tr '\n' ' ' <"$REQUIREMENTS")into $VENV_DIR"
    "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$stamp"
}
ensure_venv
WASM_TOOLS="$VENV_DIR/bin/wasm-tools"

# Fails unless $1 is a valid component exporting wasmq:policy/$2@0.1.0.
verify_component() {
    local wasm="$1" interface="$2" wit
    "$WASM_TOOLS" validate "$wasm" || die "$wasm is not a valid component"
    wit="$("$WASM_TOOLS" component wit "$wasm")" || die "$wasm: cannot print its WIT"
    grep -q "export wasmq:policy/$interface@0.1.0;" <<<"$wit" ||
        die "$wasm does not export wasmq:policy/$interface@0.1.0; its world is:
$wit"
    say "verified $(basename "${wasm%.tmp}"): exports wasmq:policy/$interface@0.1.0 ($(stat -c %s "$wasm") bytes)"
}

# --- Rust --------------------------------------------------------------------------------------
HOST_TRIPLE="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p' || true)"
RUST_TARGET=wasm32-unknown-unknown
CARGO_CMD=()
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$RUST_TARGET"; then
    say "Rust: using the installed rustup target $RUST_TARGET"
    CARGO_CMD=(cargo build --release --target "$RUST_TARGET")
    export CARGO_TARGET_DIR="$PLUGINS_DIR/target/wasm-rustup"
else
    say "Rust: no rustup $RUST_TARGET target; using Debian rustc-web with -Zbuild-std"
    if [[ ! -x /usr/bin/rustc || ! -x /usr/bin/cargo || ! -d /usr/lib/rustlib/src/rust/library/std ]]; then
        say "installing rustc-web cargo-web rust-web-src (apt)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web rust-web-src >/dev/null
    fi
    [[ -d /usr/lib/rustlib/src/rust/library/std ]] || die "rust-web-src did not install the std sources"
    LLD=""
    if [[ -n "$HOST_TRIPLE" ]]; then
        LLD="$(rustc --print sysroot)/lib/rustlib/$HOST_TRIPLE/bin/rust-lld"
    fi
    if [[ ! -x "$LLD" ]]; then
        LLD="$(ls "${RUSTUP_HOME:-$HOME/.rustup}"/toolchains/*/lib/rustlib/*/bin/rust-lld 2>/dev/null | head -1 || true)"
    fi
    if [[ ! -x "$LLD" ]]; then
        LLD="$(command -v wasm-ld || true)"
    fi
    [[ -x "$LLD" ]] || die "no wasm linker: install a rustup toolchain (ships rust-lld) or lld (wasm-ld)"
    say "Rust: linker $LLD, compiler $(/usr/bin/rustc --version)"
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$LLD"
    export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
    # Its own target dir: artifacts of two compilers must not share one.
    export CARGO_TARGET_DIR="$PLUGINS_DIR/target/wasm-debian"
    CARGO_CMD=(/usr/bin/cargo build --release --target "$RUST_TARGET" -Zbuild-std=std,panic_abort)
fi

for entry in "${RUST_PLUGINS[@]}"; do
    read -r dir interface <<<"$entry"
    name="$(basename "$dir")"
    out="$DIST_DIR/$name.wasm"
    manifest="$PLUGINS_DIR/$dir/$name.toml"
    [[ -f "$manifest" ]] || die "missing manifest $manifest"
    if needs_build "$out" "$PLUGINS_DIR/$dir" "$PLUGINS_DIR/sdk" "$WIT_DIR" "$PLUGINS_DIR/Cargo.toml" "$PLUGINS_DIR/Cargo.lock"; then
        say "building $name (Rust)"
        # One package per cargo run: features of different plugins (one world each) must not
        # unify into one SDK build.
        (cd "$PLUGINS_DIR" && "${CARGO_CMD[@]}" -p "$name")
        core="$CARGO_TARGET_DIR/$RUST_TARGET/release/${name//-/_}.wasm"
        [[ -f "$core" ]] || die "cargo did not produce $core"
        "$WASM_TOOLS" component new "$core" -o "$out.tmp"
        verify_component "$out.tmp" "$interface"
        mv "$out.tmp" "$out"
    else
        say "$name.wasm is up to date"
    fi
    cp "$manifest" "$DIST_DIR/$name.toml"
done

if [[ $RUST_ONLY -eq 1 ]]; then
    say "done (--rust-only): $DIST_DIR"
    exit 0
fi

# --- Python ------------------------------------------------------------------------------------
PY_DIR="$PLUGINS_DIR/python/tag_filter_py"
PY_NAME=tag-filter-py
if needs_build "$DIST_DIR/$PY_NAME.wasm" "$PY_DIR" "$WIT_DIR" "$REQUIREMENTS"; then
    say "building $PY_NAME (componentize-py $("$VENV_DIR/bin/componentize-py" --version 2>/dev/null | awk '{print $2}'))"
    (cd "$PY_DIR" && "$VENV_DIR/bin/componentize-py" -d "$WIT_DIR" -w filter-plugin componentize app -o "$DIST_DIR/$PY_NAME.wasm.tmp")
    verify_component "$DIST_DIR/$PY_NAME.wasm.tmp" filter
    mv "$DIST_DIR/$PY_NAME.wasm.tmp" "$DIST_DIR/$PY_NAME.wasm"
else
    say "$PY_NAME.wasm is up to date"
fi
cp "$PY_DIR/$PY_NAME.toml" "$DIST_DIR/$PY_NAME.toml"

# --- JavaScript --------------------------------------------------------------------------------
JS_DIR="$PLUGINS_DIR/js"
JS_NAME=tag-filter-js
command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are required for the JS plugin (or use --rust-only)"
if [[ ! -d "$JS_DIR/node_modules/@bytecodealliance/componentize-js" ]] || [[ "$JS_DIR/package-lock.json" -nt "$JS_DIR/node_modules/.package-lock.json" ]]; then
    say "installing pinned JS packages (npm ci)"
    (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
if needs_build "$DIST_DIR/$JS_NAME.wasm" "$JS_DIR/$JS_NAME" "$JS_DIR/build.mjs" "$WIT_DIR" "$JS_DIR/package-lock.json"; then
    say "building $JS_NAME (componentize-js)"
    node "$JS_DIR/build.mjs" "$JS_DIR/$JS_NAME/filter.js" "$WIT_DIR" filter-plugin "$DIST_DIR/$JS_NAME.wasm.tmp"
    verify_component "$DIST_DIR/$JS_NAME.wasm.tmp" filter
    mv "$DIST_DIR/$JS_NAME.wasm.tmp" "$DIST_DIR/$JS_NAME.wasm"
else
    say "$JS_NAME.wasm is up to date"
fi
cp "$JS_DIR/$JS_NAME/$JS_NAME.toml" "$DIST_DIR/$JS_NAME.toml"

say "done: $DIST_DIR"
ls -l "$DIST_DIR" >&2

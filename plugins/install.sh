#!/usr/bin/env bash
# Copies built plugins into a broker's pluginDir the way the broker expects: each file is
# written under a hidden temporary name and renamed into place (atomic), NAME.wasm before
# NAME.toml, so the hot-reload watcher never sees a half-written file.
#
#   plugins/install.sh PLUGIN_DIR NAME...     e.g. plugins/install.sh /tmp/wasmq/plugins tag-filter
#   plugins/install.sh --remove PLUGIN_DIR NAME...
set -euo pipefail
DIST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/dist"

remove=0
if [[ "${1:-}" == "--remove" ]]; then
    remove=1
    shift
fi
if [[ $# -lt 2 ]]; then
    sed -n '2,8p' "${BASH_SOURCE[0]}" >&2
    exit 2
fi
plugin_dir="$1"
shift
[[ -d "$plugin_dir" ]] || { echo "install.sh: $plugin_dir is not a directory" >&2; exit 1; }

for name in "$@"; do
    if [[ $remove -eq 1 ]]; then
        rm -f "$plugin_dir/$name.toml" "$plugin_dir/$name.wasm"
        echo "==> removed $name from $plugin_dir" >&2
        continue
    fi
    for ext in wasm toml; do
        src="$DIST_DIR/$name.$ext"
        [[ -f "$src" ]] || { echo "install.sh: $src missing (run plugins/build.sh)" >&2; exit 1; }
        tmp="$plugin_dir/.$name.$ext.tmp"
        cp "$src" "$tmp"
        mv -f "$tmp" "$plugin_dir/$name.$ext"
    done
    echo "==> installed $name into $plugin_dir" >&2
done

#!/usr/bin/env bash
# wasmq fast try: a name server and a 3-node DLedger group on 127.0.0.1, like RocketMQ's
# quick start.
#
#   examples/fast-try.sh start    build if needed, start mqnamesrv + 3 mqbroker, wait for a leader
#   examples/fast-try.sh status   which of our processes run, and the cluster table
#   examples/fast-try.sh stop     stop exactly the processes `start` started (pid files)
#   examples/fast-try.sh clean    stop, then delete the data directory
#
# Configs come from conf/dledger/broker-n{0,1,2}.toml; the copies used here point
# storePathRootDir and pluginDir into the data directory, and move the disk guard up
# (diskMaxUsedSpaceRatio 95, diskSpaceWarningLevelRatio 99): a trial lives on a developer's
# or CI machine's shared disk, whose fill level is not ours to manage, and at RocketMQ's
# 90 % a 250 GB disk with 20 GB free would refuse every send.
# Environment:
#   WASMQ_FAST_TRY_DIR  data directory (default: ${TMPDIR:-/tmp}/wasmq-fast-try-$USER)
#   WASMQ_BIN_DIR       where the binaries are (default: target/release)
#   WASMQ_REBUILD=1     run cargo build even when the binaries exist
#   WASMQ_WAIT_S        how long start waits for a leader (default: 60)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${WASMQ_BIN_DIR:-$ROOT/target/release}"
RUN_DIR="${WASMQ_FAST_TRY_DIR:-${TMPDIR:-/tmp}/wasmq-fast-try-${USER:-$(id -u)}}"
PID_DIR="$RUN_DIR/pids"
LOG_DIR="$RUN_DIR/logs"
NAMESRV_PORT=9876
NAMESRV="127.0.0.1:$NAMESRV_PORT"
NODES=(n0 n1 n2)
EXAMPLE_PLUGINS=(tag-filter key-hash-router replication-upgrade-validator)
WAIT_S="${WASMQ_WAIT_S:-60}"
STOP_WAIT_S=20

say() { echo "==> $*" >&2; }
die() {
    echo "fast-try.sh: error: $*" >&2
    exit 1
}

# pid recorded in $PID_DIR/NAME.pid if that process is alive and is the expected binary
# (a stale pid file whose pid was reused by another program must never be signalled).
running_pid() {
    local name="$1" binary="$2" pid comm
    [[ -f "$PID_DIR/$name.pid" ]] || return 1
    pid="$(cat "$PID_DIR/$name.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ "$comm" == "$binary" ]] || return 1
    # Exited but not yet reaped counts as stopped.
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)" != Z ]] || return 1
    echo "$pid"
}

stop_one() {
    local name="$1" binary="$2" pid waited=0
    if ! pid="$(running_pid "$name" "$binary")"; then
        rm -f "$PID_DIR/$name.pid"
        return 0
    fi
    kill -TERM "$pid"
    while running_pid "$name" "$binary" >/dev/null; do
        if ((waited >= STOP_WAIT_S * 10)); then
            echo "fast-try.sh: $name (pid $pid) ignored SIGTERM for ${STOP_WAIT_S}s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$PID_DIR/$name.pid"
    say "stopped $name (pid $pid)"
}

cmd_stop() {
    # Brokers first (they unregister from the name server on the way out).
    for n in "${NODES[@]}"; do
        stop_one "broker-$n" mqbroker
    done
    stop_one namesrv mqnamesrv
}

cmd_status() {
    local any=0 pid
    for entry in namesrv:mqnamesrv "${NODES[@]/#/broker-}"; do
        local name="${entry%%:*}" binary=mqbroker
        [[ "$entry" == namesrv:* ]] && binary=mqnamesrv
        if pid="$(running_pid "$name" "$binary")"; then
            echo "$name: running (pid $pid)"
            any=1
        else
            echo "$name: stopped"
        fi
    done
    if ((any)) && running_pid namesrv mqnamesrv >/dev/null; then
        echo
        "$BIN/mqadmin" clusterList -n "$NAMESRV" || true
    fi
    echo "data: $RUN_DIR"
}

port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Value of `key = value` in a TOML file (quotes stripped), empty when absent.
toml_value() {
    sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*\"\{0,1\}\([^\"#]*\)\"\{0,1\}.*/\1/p" "$1" | head -n 1 | tr -d '[:space:]'
}

# Copy of a config with storePathRootDir, pluginDir and the disk guard replaced (added
# when missing).
write_config() {
    local src="$1" dst="$2" store="$3" plugins="$4"
    grep -v -E '^[[:space:]]*(storePathRootDir|storePathCommitLog|pluginDir|diskMaxUsedSpaceRatio|diskSpaceWarningLevelRatio)[[:space:]]*=' "$src" \
        | awk -v store="$store" -v plugins="$plugins" '
            function overrides() {
                print "storePathRootDir = \"" store "\""
                print "pluginDir = \"" plugins "\""
                print "diskMaxUsedSpaceRatio = 95"
                print "diskSpaceWarningLevelRatio = 99"
            }
            # Top-level keys must come before the first [table].
            !done && /^[[:space:]]*\[/ { overrides(); done = 1 }
            { print }
            END { if (!done) overrides() }' >"$dst"
}

build_if_needed() {
    local missing=0
    for b in mqnamesrv mqbroker mqadmin; do
        [[ -x "$BIN/$b" ]] || missing=1
    done
    if ((missing)) || [[ "${WASMQ_REBUILD:-0}" == 1 ]]; then
        say "building release binaries (cargo build --release -p wasmq-broker)"
        (cd "$ROOT" && cargo build --release -p wasmq-broker --bin mqnamesrv --bin mqbroker --bin mqadmin) \
            || die "cargo build failed"
    fi
    if [[ ! -d "$ROOT/plugins/dist" ]]; then
        say "building example plugins (plugins/build.sh --rust-only)"
        "$ROOT/plugins/build.sh" --rust-only || say "plugin build failed: starting without plugins"
    fi
}

# Waits until PORT accepts connections while PID lives; on failure shows the log.
wait_listening() {
    local name="$1" pid="$2" port="$3" log="$4" tries=0
    until port_busy "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "fast-try.sh: $name exited during startup; last lines of $log:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        ((tries++ < WAIT_S * 10)) || { echo "fast-try.sh: $name not listening on $port after ${WAIT_S}s" >&2; return 1; }
        sleep 0.1
    done
}

start_process() {
    local name="$1" log="$LOG_DIR/$1.log"
    shift
    nohup "$@" >"$log" 2>&1 </dev/null &
    echo $! >"$PID_DIR/$name.pid"
    echo $!
}

fail_start() {
    echo "fast-try.sh: start failed; stopping what was started" >&2
    cmd_stop
    exit 1
}

cmd_start() {
    mkdir -p "$PID_DIR" "$LOG_DIR"
    if running_pid namesrv mqnamesrv >/dev/null || running_pid broker-n0 mqbroker >/dev/null; then
        say "already running (stop it with: $0 stop)"
        cmd_status
        return 0
    fi
    build_if_needed

    local configs=() ports=() n port
    for n in "${NODES[@]}"; do
        local src="$ROOT/conf/dledger/broker-$n.toml" node_dir="$RUN_DIR/$n"
        [[ -f "$src" ]] || die "$src is missing"
        mkdir -p "$node_dir/store" "$node_dir/plugins"
        write_config "$src" "$node_dir/broker.toml" "$node_dir/store" "$node_dir/plugins"
        configs+=("$node_dir/broker.toml")
        port="$(toml_value "$src" listenPort)"
        [[ "$port" =~ ^[0-9]+$ ]] || die "$src: no listenPort"
        ports+=("$port")
        if [[ -d "$ROOT/plugins/dist" ]]; then
            for p in "${EXAMPLE_PLUGINS[@]}"; do
                if [[ -f "$ROOT/plugins/dist/$p.wasm" && -f "$ROOT/plugins/dist/$p.toml" ]]; then
                    "$ROOT/plugins/install.sh" "$node_dir/plugins" "$p" 2>/dev/null
                fi
            done
        fi
    done
    for port in "$NAMESRV_PORT" "${ports[@]}"; do
        port_busy "$port" && die "port $port is in use by another process (not started by this script)"
    done

    local pid
    pid="$(start_process namesrv "$BIN/mqnamesrv" -p "$NAMESRV_PORT" --bind 127.0.0.1)"
    wait_listening namesrv "$pid" "$NAMESRV_PORT" "$LOG_DIR/namesrv.log" || fail_start
    say "name server on $NAMESRV (pid $pid)"
    local i
    for i in "${!NODES[@]}"; do
        n="${NODES[$i]}"
        pid="$(start_process "broker-$n" "$BIN/mqbroker" -c "${configs[$i]}")"
        say "broker $n starting (pid $pid, log $LOG_DIR/broker-$n.log)"
    done
    for i in "${!NODES[@]}"; do
        n="${NODES[$i]}"
        wait_listening "broker-$n" "$(cat "$PID_DIR/broker-$n.pid")" "${ports[$i]}" "$LOG_DIR/broker-$n.log" || fail_start
    done

    say "waiting for the group to elect a leader (up to ${WAIT_S}s)"
    local deadline=$((SECONDS + WAIT_S)) json="" leader=""
    while ((SECONDS < deadline)); do
        json="$("$BIN/mqadmin" clusterList -n "$NAMESRV" --json 2>/dev/null || true)"
        # The leader's client address: the "addr" of the row whose role is LEADER.
        leader="$(tr -d '\n ' <<<"$json" | grep -o '{[^}]*"role":"LEADER"[^}]*}' | grep -o '"addr":"[^"]*"' | head -n 1 | cut -d'"' -f4 || true)"
        [[ -n "$leader" && "$(grep -c '"nodeId"' <<<"$json")" -eq ${#NODES[@]} ]] && break
        leader=""
        sleep 0.5
    done
    [[ -n "$leader" ]] || { echo "fast-try.sh: no leader after ${WAIT_S}s; logs in $LOG_DIR" >&2; fail_start; }

    echo
    "$BIN/mqadmin" clusterList -n "$NAMESRV"
    echo
    echo "Look at it:     $BIN/mqadmin clusterList -n $NAMESRV"
    echo "Create a topic: $BIN/mqadmin updateTopic -n $NAMESRV -c $(toml_value "$ROOT/conf/dledger/broker-n0.toml" brokerClusterName) -t TopicTest"
    echo "Stop it:        $0 stop"
    echo "client endpoints: $leader"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    clean)
        cmd_stop
        # Only a directory this script created (it has our pids/ subdirectory).
        [[ -d "$RUN_DIR/pids" ]] || die "$RUN_DIR does not look like a fast-try data directory; not deleting it"
        rm -rf "$RUN_DIR"
        say "removed $RUN_DIR"
        ;;
    *)
        sed -n '2,15p' "${BASH_SOURCE[0]}" >&2
        exit 2
        ;;
esac

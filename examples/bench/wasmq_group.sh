# Shared by compare.sh and ab.sh (sourced): a wasmq 3-member group on loopback and the CPU
# counters both scripts read. Expects BIN, WORK, NS_PORT, WQ_CLIENT, WQ_RAFT, the arrays
# PIDS and WQ_PIDS, and a `log` function; SERVER_THREADS sets serverWorkerThreads,
# WQ_METRICS (an array of 3 ports, optional) the brokers' metricsPort, and WQ_CONF_EXTRA
# (optional) more config lines for every member, e.g. "raftIdlePollUs = 0" for an A/B.

# Waits for a server's port; with its pid, fails as soon as that server has exited (a port
# that opens then is somebody else's).
wait_port() { # host port seconds [pid log]
    local deadline=$((SECONDS + $3))
    while true; do
        if [[ -n "${4:-}" ]] && ! kill -0 "$4" 2>/dev/null; then
            log "the server for $1:$2 exited at startup; end of its log ${5:-}: $(tail -n 3 "${5:-/dev/null}" 2>/dev/null | tr '\n' ' ')"
            return 1
        fi
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        ((SECONDS < deadline)) || { log "port $1:$2 did not open"; return 1; }
        sleep 0.2
    done
}

# Fails when any of the ports already answers: a cluster left over from another run would
# otherwise take this run's load while the servers started here die on their bind, and
# every figure would be that cluster's.
ports_free() { # host port...
    local host=$1 port
    shift
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            log "port $host:$port is already in use (a server left from an earlier run?); stop it first"
            return 1
        fi
    done
}

# ---- wasmq: name server + 3 brokers -------------------------------------------------------
start_wasmq() {
    mkdir -p "$WORK/wasmq"
    # `|| return 1` throughout: ab.sh calls this inside $(...), where `set -e` does not reach.
    ports_free 127.0.0.1 "$NS_PORT" "${WQ_CLIENT[@]}" "${WQ_RAFT[@]}" ${WQ_METRICS[@]+"${WQ_METRICS[@]}"} || return 1
    printf 'listenPort = %d\n' "$NS_PORT" >"$WORK/wasmq/namesrv.toml"
    "$BIN/mqnamesrv" -c "$WORK/wasmq/namesrv.toml" >"$WORK/wasmq/namesrv.log" 2>&1 &
    PIDS+=($!)
    wait_port 127.0.0.1 "$NS_PORT" 20 "$!" "$WORK/wasmq/namesrv.log" || return 1
    local peers="" endpoints=""
    for i in 0 1 2; do
        peers+="n$i-127.0.0.1:${WQ_RAFT[$i]};"
        endpoints+="n$i-127.0.0.1:${WQ_CLIENT[$i]};"
    done
    peers="${peers%;}"; endpoints="${endpoints%;}"
    for i in 0 1 2; do
        cat >"$WORK/wasmq/broker-n$i.toml" <<EOF
brokerClusterName = "BenchCluster"
brokerName = "bench-a"
brokerIP1 = "127.0.0.1"
listenPort = ${WQ_CLIENT[$i]}
namesrvAddr = "127.0.0.1:$NS_PORT"
storePathRootDir = "$WORK/wasmq/store-n$i"
flushDiskType = "ASYNC_FLUSH"
enableDLegerCommitLog = true
dLegerGroup = "bench-a"
dLegerPeers = "$peers"
dLegerSelfId = "n$i"
dLegerClientEndpoints = "$endpoints"
logLevel = "warn"
# A bench on a shared disk: its fill level is not this run's subject (see fast-try.sh).
diskMaxUsedSpaceRatio = 95
diskSpaceWarningLevelRatio = 99
serverWorkerThreads = ${SERVER_THREADS:-0}
metricsPort = ${WQ_METRICS[$i]:-0}
${WQ_CONF_EXTRA:-}
EOF
        "$BIN/mqbroker" -c "$WORK/wasmq/broker-n$i.toml" >"$WORK/wasmq/broker-n$i.log" 2>&1 &
        PIDS+=($!)
        WQ_PIDS+=($!)
    done
    for i in 0 1 2; do wait_port 127.0.0.1 "${WQ_CLIENT[$i]}" 30 "${WQ_PIDS[$i]}" "$WORK/wasmq/broker-n$i.log" || return 1; done
    # The topic goes through the replicated log: retry until a leader exists.
    local deadline=$((SECONDS + 60))
    until "$BIN/mqadmin" updateTopic -b "127.0.0.1:${WQ_CLIENT[0]}" -t BenchTopic -r 8 -w 8 >/dev/null 2>"$WORK/wasmq/topic.err"; do
        ((SECONDS < deadline)) || { log "topic creation failed: $(cat "$WORK/wasmq/topic.err")"; return 1; }
        sleep 0.5
    done
}

# CPU time (user + system, microseconds) the given processes have used so far. On a machine
# where servers and load generator share the cores, throughput is bounded by the CPU all of
# them spend per message; the table shows that split for both systems.
cpu_us() {
    local total=0 ticks
    for pid in "$@"; do
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        total=$((total + ticks))
    done
    echo $((total * 1000000 / $(getconf CLK_TCK)))
}
# Time (microseconds) the given processes' threads have spent runnable but waiting for a
# core so far (second field of /proc/PID/task/*/schedstat, in ns). On a shared machine a
# message's path crosses three servers and the load generator: each hop that finds the cores
# taken waits here, so a run can be latency-bound while the cores idle part of the time (in
# session 15 with serverWorkerThreads = 1: each follower waited longer for a core than it
# ran, on a machine losing 17-33 % to steal). Threads that have exited are not counted.
runqueue_us() {
    local pid
    for pid in "$@"; do cat "/proc/$pid/task/"*/schedstat 2>/dev/null; done |
        awk '{ ns += $2 } END { printf "%d\n", ns / 1000 }'
}
# Idle, total and stolen jiffies of the whole machine so far (first line of /proc/stat:
# idle and iowait, all, steal). A system whose threads hand work to each other leaves cores
# idle even under load; that share bounds what its CPU per message can buy. Steal is time
# the hypervisor gave this machine's cores to others: the cells of a run with much of it
# are not comparable with another run's.
machine_jiffies() {
    awk '/^cpu /{ print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9 }' /proc/stat
}

# The send-stage histograms of the brokers' /metrics (WQ_METRICS), summed over the three:
# one line per histogram, "name sum_seconds count". Only the leader times the Raft stages;
# with --route leader it also takes every client call. Plain bash HTTP: no curl needed.
stage_sums() {
    local port
    for port in ${WQ_METRICS[@]+"${WQ_METRICS[@]}"}; do
        (
            exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 0
            printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
            timeout 2 cat <&3
        ) 2>/dev/null
    done | awk '/^wasmq_(send_latency|raft_propose_(queued|replicated|resumed))_seconds_(sum|count) / {
            split($1, a, "_seconds_"); sum[a[1]] += (a[2] == "sum") ? $2 : 0; n[a[1]] += (a[2] == "count") ? $2 : 0 }
        END { for (k in n) print k, sum[k], n[k] }'
}
# The mean of each stage between two `stage_sums` outputs, in microseconds, as a JSON
# object ({} when the brokers serve no metrics): core (the client service's send latency,
# `wasmq_send_latency_seconds`), queued, replicated, resumed (the Raft proposal's stages).
stage_means_json() { # before after
    awk 'NR == FNR { s[$1] = $2; n[$1] = $3; next }
         { d = $3 - n[$1]; if (d > 0) out[$1] = ($2 - s[$1]) / d * 1e6 }
         END { sep = ""; printf "{"
               for (k in out) { name = k; sub(/^wasmq_(raft_propose_)?/, "", name); sub(/^send_latency$/, "core", name)
                                printf "%s\"%s\":%.0f", sep, name, out[k]; sep = "," }
               print "}" }' <(printf '%s\n' "$1") <(printf '%s\n' "$2")
}

#!/usr/bin/env bash
# Side-by-side: wasmq 3-node DLedger group vs NATS JetStream 3-node cluster (R3 file stream),
# same workload through mqbench: 1 KiB messages, synchronous acks (one send in flight per
# producer), 1 and 64 producers, 10 s each. Everything on 127.0.0.1; every process this
# script starts is stopped by pid on exit.
#
#   examples/bench/compare.sh            # defaults
#   DURATION=30 SIZE=4096 PRODUCERS="1 16 64" ROUTES=leader examples/bench/compare.sh
#   BATCH=16 PRODUCERS=8 examples/bench/compare.sh   # batched producers
#   SERVER_THREADS=1 examples/bench/compare.sh       # both tuned for 3 servers on one box
#   ROUNDS=3 examples/bench/compare.sh               # every cell 3 times, interleaved; medians
#
# Needs: the release binaries (built here if missing), nats-server (apt-get if missing), jq.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${WASMQ_BIN_DIR:-$ROOT/target/release}"
DURATION="${DURATION:-10}"
SIZE="${SIZE:-1024}"
PRODUCERS="${PRODUCERS:-1 64}"
# wasmq producers either spread over the 3 members (followers forward to the leader, coalescing
# the sends that arrive while earlier ones are in flight, as NATS servers forward to the stream
# leader) or all send to the leader (as a RocketMQ client does
# with a route that names the master).
ROUTES="${ROUTES:-spread leader}"
# Connections per endpoint the producers share, the same for both systems (0: one per
# producer). A client library shares one per server (RocketMQ's gRPC channel, a NATS
# connection); each producer still has one synchronous send in flight.
CONNECTIONS="${CONNECTIONS:-1}"
# Messages per send (1: the synchronous single sends of the default table). wasmq: one
# SendMessage request carrying them; NATS: that many publishes in flight, then their acks.
BATCH="${BATCH:-1}"
# mqbench's producer threads, the same for both systems: each thread runs its share of the
# producers with CONNECTIONS per endpoint of its own. mqbench shares the cores with the
# servers; one thread costs it the least CPU per message (see the CPU table).
THREADS="${THREADS:-1}"
# Server threads, the same for both systems: empty = each system's default (one per CPU:
# wasmq's runtime workers, Go's GOMAXPROCS); N = N per server process (wasmq's
# serverWorkerThreads, NATS's GOMAXPROCS). Three servers share this machine's cores, and
# both systems spend less CPU per message with 1 (NATS gains even more than wasmq).
SERVER_THREADS="${SERVER_THREADS:-}"
# Rounds of the whole table. A cell moves by ±15 % from one run to the next on a shared
# machine, so with ROUNDS > 1 the cells of both systems alternate round by round and the
# tables show medians, with the range of the per-round ratios (wasmq's cell against NATS's
# cell of the same round) beside the ratio of the medians.
ROUNDS="${ROUNDS:-1}"
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || { echo "ROUNDS must be 1..99" >&2; exit 2; }
# Ports: away from the defaults so a developer's own cluster keeps running.
NS_PORT=29876
WQ_CLIENT=(28081 28082 28083)
WQ_RAFT=(48911 48912 48913)
# The brokers' /metrics, read before and after each wasmq cell for the leader's send stages.
WQ_METRICS=(29190 29191 29192)
NATS_CLIENT=(24222 24223 24224)
NATS_ROUTE=(26222 26223 26224)

log() { printf '[compare] %s\n' "$*" >&2; }

if [[ ! -x "$BIN/mqbroker" || ! -x "$BIN/mqnamesrv" || ! -x "$BIN/mqadmin" || ! -x "$BIN/mqbench" ]]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p wasmq-broker -p wasmq-bench)
fi
if ! command -v nats-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/nats-server ]]; then
    log "installing nats-server (Debian package)"
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq nats-server >/dev/null; fi
fi
NATS_SERVER="$(command -v nats-server || echo /usr/sbin/nats-server)"
command -v jq >/dev/null || { log "jq is required"; exit 1; }

WORK="$(mktemp -d /tmp/wasmq-compare.XXXXXX)"
PIDS=()
WQ_PIDS=()
NATS_PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -z "${KEEP:-}" ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT
log "work dir $WORK"

# wait_port, start_wasmq (name server + 3-member group + BenchTopic), cpu_us, runqueue_us,
# machine_jiffies.
# shellcheck source=examples/bench/wasmq_group.sh
source "$ROOT/examples/bench/wasmq_group.sh"

# ---- NATS: 3 servers, JetStream, clustered -------------------------------------------------
start_nats() {
    mkdir -p "$WORK/nats"
    ports_free 127.0.0.1 "${NATS_CLIENT[@]}" "${NATS_ROUTE[@]}" || return 1
    for i in 0 1 2; do
        local routes=""
        for j in 0 1 2; do
            [[ $j == "$i" ]] || routes+="nats-route://127.0.0.1:${NATS_ROUTE[$j]}, "
        done
        cat >"$WORK/nats/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${NATS_CLIENT[$i]}
jetstream { store_dir: "$WORK/nats/store-n$i" }
cluster {
  name: bench
  listen: 127.0.0.1:${NATS_ROUTE[$i]}
  routes: [ ${routes%, } ]
}
EOF
        env ${SERVER_THREADS:+GOMAXPROCS=$SERVER_THREADS} "$NATS_SERVER" -c "$WORK/nats/n$i.conf" >"$WORK/nats/n$i.log" 2>&1 &
        PIDS+=($!)
        NATS_PIDS+=($!)
    done
    for i in 0 1 2; do wait_port 127.0.0.1 "${NATS_CLIENT[$i]}" 20 "${NATS_PIDS[$i]}" "$WORK/nats/n$i.log" || return 1; done
}

# ---- runs ------------------------------------------------------------------------------
# Runs "$@" (an mqbench --json run) and adds to its JSON line: the servers' CPU per
# acknowledged message (server_cpu_us_per_msg), the time their threads waited for a core
# per message (server_runqueue_us_per_msg), and the machine's idle and stolen shares over
# the run (machine_idle_pct, machine_steal_pct). The servers are the pids in SERVER_PIDS.
with_server_cpu() {
    local before after wait_before wait_after out idle_before total_before steal_before idle_after total_after steal_after
    before=$(cpu_us "${SERVER_PIDS[@]}")
    wait_before=$(runqueue_us "${SERVER_PIDS[@]}")
    read -r idle_before total_before steal_before < <(machine_jiffies)
    out=$("$@")
    read -r idle_after total_after steal_after < <(machine_jiffies)
    wait_after=$(runqueue_us "${SERVER_PIDS[@]}")
    after=$(cpu_us "${SERVER_PIDS[@]}")
    jq -c --argjson cpu $((after - before)) --argjson wait $((wait_after - wait_before)) \
        --argjson idle $((idle_after - idle_before)) --argjson steal $((steal_after - steal_before)) \
        --argjson total $((total_after - total_before)) \
        'def per_msg(x): if .sent > 0 then (x / .sent * 10 | round / 10) else null end;
         def share(x): if $total > 0 then (x / $total * 100 | round) else null end;
         . + {server_cpu_us_per_msg: per_msg($cpu), server_runqueue_us_per_msg: per_msg($wait),
              machine_idle_pct: share($idle), machine_steal_pct: share($steal)}' <<<"$out"
}

WQ_EPS="http://127.0.0.1:${WQ_CLIENT[0]},http://127.0.0.1:${WQ_CLIENT[1]},http://127.0.0.1:${WQ_CLIENT[2]}"
NATS_EPS="127.0.0.1:${NATS_CLIENT[0]},127.0.0.1:${NATS_CLIENT[1]},127.0.0.1:${NATS_CLIENT[2]}"

run_wasmq() { # producers route; adds the mean of each send stage (stage_means_json) as stage_us
    local stages_before out
    SERVER_PIDS=("${WQ_PIDS[@]}")
    stages_before=$(stage_sums)
    out=$(with_server_cpu "$BIN/mqbench" --target wasmq -e "$WQ_EPS" -t BenchTopic --size "$SIZE" -p "$1" --route "$2" --connections "$CONNECTIONS" \
        --batch "$BATCH" --threads "$THREADS" --duration "$DURATION" -n 100000000 --json --quiet --label "p$1-$2")
    jq -c --argjson stages "$(stage_means_json "$stages_before" "$(stage_sums)")" '. + {stage_us: $stages}' <<<"$out"
}
run_nats() { # producers; (re)creates the R3 file stream first, retrying while the
    # JetStream meta group elects its leader.
    local deadline=$((SECONDS + 60))
    until "$BIN/mqbench" --target nats -e "$NATS_EPS" -t BenchTopic --nats-stream BENCH --nats-replicas 3 \
        --size "$SIZE" -p 1 -n 1 --duration 5 --json --quiet >/dev/null 2>"$WORK/nats/setup.err"; do
        ((SECONDS < deadline)) || { log "JetStream setup failed: $(cat "$WORK/nats/setup.err")"; return 1; }
        sleep 1
    done
    SERVER_PIDS=("${NATS_PIDS[@]}")
    with_server_cpu "$BIN/mqbench" --target nats -e "$NATS_EPS" -t BenchTopic --nats-stream BENCH --nats-replicas 3 \
        --size "$SIZE" -p "$1" --connections "$CONNECTIONS" --batch "$BATCH" --threads "$THREADS" --duration "$DURATION" -n 100000000 --json --quiet --label "p$1"
}

start_wasmq
start_nats
log "both clusters up; ${DURATION}s per run, ${SIZE} B messages, producers: $PRODUCERS, server threads: ${SERVER_THREADS:-default}"

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for p in $PRODUCERS; do
        for route in $ROUTES; do
            log "round $round/$ROUNDS: wasmq, $p producer(s), route $route"
            run_wasmq "$p" "$route" | jq -c --argjson r "$round" '. + {round: $r}' >>"$RESULTS"
        done
        log "round $round/$ROUNDS: nats, $p producer(s)"
        run_nats "$p" | jq -c --argjson r "$round" '. + {round: $r}' >>"$RESULTS"
    done
done

# jq definitions for the tables: $w and $n are the cell's results of every round, wasmq's
# and NATS's; m(f) is the median over the rounds, rr(f) the range of per-round ratios.
JQ_DEFS='
  def median: map(select(. != null)) | sort | if length == 0 then null
    elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r(a; b): if (a != null and b != null and b > 0) then (a / b * 100 | round / 100) else null end;
  def m($xs; f): [$xs[] | f] | median;
  def rr($w; $n; f): [$w[] as $x | $n[] | select(.round == $x.round) | r($x | f; f)] | map(select(. != null))
    | if length > 1 then " (\(min)-\(max))" else "" end;
  def ratio($w; $n; f): (r(m($w; f); m($n; f)) // "n/a" | tostring) + rr($w; $n; f);
  def num(x): if x == null then "n/a" else (x * 10 | round / 10 | tostring) end;
  def cell($p; $route): [.[] | select(.target == "wasmq" and .label == "p\($p)-\($route)")] as $w
    | [.[] | select(.target == "nats" and .label == "p\($p)")] as $n | {w: $w, n: $n};
'
MEDIANS=""
ROUNDS_NOTE=""
if ((ROUNDS > 1)); then
    MEDIANS=" Each figure is the median of $ROUNDS rounds; a ratio is wasmq's median over NATS's, with the range of the per-round ratios in brackets."
    ROUNDS_NOTE=" Each figure is the median of $ROUNDS rounds."
fi

echo
printf 'Same run, same machine: %s B messages, sync acks, %s message(s) per send, %s s per cell, %s shared connections per endpoint (0: one per producer), mqbench with %s thread(s). Ratio = wasmq / NATS (msgs/s: higher is better; latency: lower is better).%s\n' "$SIZE" "$BATCH" "$DURATION" "$CONNECTIONS" "$THREADS" "$MEDIANS"
printf '%-14s | %12s %12s %17s | %10s %10s %17s | %10s %10s %17s | %s\n' \
    producers "wasmq msg/s" "nats msg/s" ratio "wasmq p50" "nats p50" ratio "wasmq p99" "nats p99" ratio "errors w/n"
for p in $PRODUCERS; do
  for route in $ROUTES; do
    jq -rs --arg p "$p" --arg route "$route" "$JQ_DEFS"'
      cell($p; $route) as $c | $c.w as $w | $c.n as $n |
      ["\($p) \($route)",
       (m($w; .send_msgs_per_s) | round), (m($n; .send_msgs_per_s) | round), ratio($w; $n; .send_msgs_per_s),
       m($w; .send_latency_us.p50), m($n; .send_latency_us.p50), ratio($w; $n; .send_latency_us.p50),
       m($w; .send_latency_us.p99), m($n; .send_latency_us.p99), ratio($w; $n; .send_latency_us.p99),
       "\([$w[].send_errors] | add)/\([$n[].send_errors] | add)"] | @tsv' "$RESULTS" |
    awk -F'\t' '{ printf "%-14s | %12s %12s %17s | %8sus %8sus %17s | %8sus %8sus %17s | %s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11 }'
  done
done
echo
printf 'CPU per acknowledged message, microseconds (user + system): the 3 servers together, and mqbench. Both share the same cores, so msgs/s is bounded by their sum. Wait: the microseconds per message the servers'"'"' threads spent runnable but without a core (a message crosses three servers and mqbench; each hop that finds the cores taken adds to its latency). Idle and steal: the shares of the machine'"'"'s CPU time left idle and taken by the hypervisor during the cell (includes the start and end of the run).%s\n' "$MEDIANS"
printf '%-14s | %10s %10s %17s | %12s %12s | %10s %10s | %10s %10s | %11s %11s\n' producers "wasmq srv" "nats srv" ratio "wasmq client" "nats client" "wasmq wait" "nats wait" "wasmq idle" "nats idle" "wasmq steal" "nats steal"
for p in $PRODUCERS; do
  for route in $ROUTES; do
    jq -rs --arg p "$p" --arg route "$route" "$JQ_DEFS"'
      def pct(x): if x == null then "n/a" else "\(x)%" end;
      cell($p; $route) as $c | $c.w as $w | $c.n as $n |
      ["\($p) \($route)",
       num(m($w; .server_cpu_us_per_msg)), num(m($n; .server_cpu_us_per_msg)), ratio($w; $n; .server_cpu_us_per_msg),
       num(m($w; .client_cpu_us_per_msg)), num(m($n; .client_cpu_us_per_msg)),
       num(m($w; .server_runqueue_us_per_msg)), num(m($n; .server_runqueue_us_per_msg)),
       pct(m($w; .machine_idle_pct)), pct(m($n; .machine_idle_pct)),
       pct(m($w; .machine_steal_pct)), pct(m($n; .machine_steal_pct))] | @tsv' "$RESULTS" |
    awk -F'\t' '{ printf "%-14s | %10s %10s %17s | %12s %12s | %10s %10s | %10s %10s | %11s %11s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12 }'
  done
done
echo
printf 'Where a wasmq send'"'"'s time goes, mean microseconds per request: as mqbench waits for it (client), in the core behind the client service (core: routing, the Raft proposal, apply), and the proposal'"'"'s stages on the leader (queued: to the Raft driver appending it; replicated: to its commit and answer, the followers'"'"' round trip included; resumed: to the proposing task running again). Client minus core (outside) is the gRPC path both ways, queueing for the leader'"'"'s workers included, and the client itself.%s\n' "$ROUNDS_NOTE"
printf '%-14s | %10s %10s %10s | %10s %10s %10s\n' producers client core outside queued replicated resumed
for p in $PRODUCERS; do
  for route in $ROUTES; do
    jq -rs --arg p "$p" --arg route "$route" "$JQ_DEFS"'
      cell($p; $route) as $c | $c.w as $w |
      ["\($p) \($route)", num(m($w; .send_latency_us.mean)), num(m($w; .stage_us.core)),
       num(m($w; if .stage_us.core == null then null else .send_latency_us.mean - .stage_us.core end)),
       num(m($w; .stage_us.queued)), num(m($w; .stage_us.replicated)), num(m($w; .stage_us.resumed))] | @tsv' "$RESULTS" |
    awk -F'\t' '{ printf "%-14s | %10s %10s %10s | %10s %10s %10s\n", $1,$2,$3,$4,$5,$6,$7 }'
  done
done
echo
echo "raw JSON lines: $RESULTS (kept with KEEP=1)"
if [[ -n "${KEEP:-}" ]]; then cat "$RESULTS"; fi

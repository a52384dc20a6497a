#!/usr/bin/env bash
# A/B of two wasmq builds on this machine, interleaved: BASE, NEW, NEW, BASE, BASE, ... Each
# measurement starts a fresh 3-member group from that build, runs one mqbench workload
# (default: 64 producers, sync sends of 1 KiB to the leader) and reads, over a steady
# window in the middle of the run, the CPU each broker and mqbench spent per acknowledged
# message (/proc/<pid>/stat) and the machine's idle and steal shares (/proc/stat): a round
# with much more steal than its neighbours is the machine, not the build. Both builds are
# driven by the same mqbench (NEW's unless BENCH says otherwise), so only the servers differ;
# for an A/B of the client instead, give BASE's runs their own with BASE_BENCH (BASE=NEW).
#
#   BASE=/tmp/old/release NEW=target/release examples/bench/ab.sh
#   ROUNDS=5 ARGS="-p 8 --route leader --batch 16" examples/bench/ab.sh
#   BASE=target/release NEW_ENV="WQ_CONF_EXTRA=raftIdlePollUs=0" examples/bench/ab.sh
#
# BASE_ENV and NEW_ENV (space-separated NAME=VALUE words) are exported to that side's
# brokers, and to wasmq_group.sh: WQ_CONF_EXTRA there adds a config line. With BASE=NEW they
# make an A/B of one build under two configurations.
#
# Why this and not compare.sh for a change of a few percent: compare.sh's cells move by
# ±15 % from run to run with NATS in between; steady-window CPU per message over several
# interleaved rounds is the steadier figure. Ratios are NEW / BASE of the medians.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BASE="${BASE:?set BASE to the binary directory of the base build}"
NEW="${NEW:-$ROOT/target/release}"
BENCH="${BENCH:-$NEW/mqbench}"
BASE_BENCH="${BASE_BENCH:-$BENCH}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
ARGS="${ARGS:--p 64 --route leader --connections 1 --size 1024}"
# The window: from WARMUP s after mqbench starts, WINDOW s long (inside DURATION).
WARMUP=3
WINDOW=$((DURATION - WARMUP - 2))
((WINDOW >= 2)) || { echo "DURATION must be at least 7 s" >&2; exit 2; }
NS_PORT=29876
WQ_CLIENT=(28081 28082 28083)
WQ_RAFT=(48911 48912 48913)

log() { printf '[ab] %s\n' "$*" >&2; }
for dir in "$BASE" "$NEW"; do
    for b in mqbroker mqnamesrv mqadmin; do
        [[ -x "$dir/$b" ]] || { log "$dir/$b is missing"; exit 2; }
    done
done
for b in "$BENCH" "$BASE_BENCH"; do [[ -x "$b" ]] || { log "$b is missing"; exit 2; }; done
command -v jq >/dev/null || { log "jq is required"; exit 1; }

WORK=""
RESULTS=""
PIDS=()
WQ_PIDS=()
stop_group() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
    WQ_PIDS=()
    if [[ -n "$WORK" ]]; then rm -rf "$WORK"; fi
    WORK=""
}
trap 'stop_group; rm -f "$RESULTS"' EXIT
# shellcheck source=examples/bench/wasmq_group.sh
source "$ROOT/examples/bench/wasmq_group.sh"

ticks() { for pid in "$@"; do awk '{ printf "%d ", $14 + $15 }' "/proc/$pid/stat"; done; }

# One measurement of build $1 (label $2) driven by mqbench $3: a JSON line.
measure() {
    BIN="$1"
    local bench_bin="$3"
    # $(...) runs this in a subshell: what it exports ends with it.
    local assignment
    for assignment in $4; do export "${assignment?}"; done
    WORK="$(mktemp -d /tmp/wasmq-ab.XXXXXX)"
    # In $(...): no EXIT trap here, so stop what did start before leaving.
    start_wasmq || { stop_group; exit 1; }
    local eps="http://127.0.0.1:${WQ_CLIENT[0]},http://127.0.0.1:${WQ_CLIENT[1]},http://127.0.0.1:${WQ_CLIENT[2]}"
    # shellcheck disable=SC2086 # ARGS is a list of mqbench options.
    "$bench_bin" --target wasmq -e "$eps" -t BenchTopic --duration "$DURATION" -n 100000000 --quiet --json $ARGS >"$WORK/bench.json" &
    local bench=$!
    sleep "$WARMUP"
    local t0 t1 idle0 total0 steal0 idle1 total1 steal1 hz
    hz=$(getconf CLK_TCK)
    read -r -a t0 < <(ticks "${WQ_PIDS[@]}" "$bench")
    read -r idle0 total0 steal0 < <(machine_jiffies)
    sleep "$WINDOW"
    read -r -a t1 < <(ticks "${WQ_PIDS[@]}" "$bench")
    read -r idle1 total1 steal1 < <(machine_jiffies)
    wait "$bench"
    local rate us=()
    rate=$(jq '.send_msgs_per_s' "$WORK/bench.json")
    for i in 0 1 2 3; do
        us+=("$(jq -n --argjson d $((t1[i] - t0[i])) --argjson r "$rate" --argjson w "$WINDOW" --argjson hz "$hz" \
            'if $r > 0 then ($d / $hz * 1e6 / ($r * $w) * 10 | round / 10) else null end')")
    done
    jq -c --arg side "$2" --argjson b0 "${us[0]}" --argjson b1 "${us[1]}" --argjson b2 "${us[2]}" --argjson bench "${us[3]}" \
        --argjson idle $((idle1 - idle0)) --argjson steal $((steal1 - steal0)) --argjson total $((total1 - total0)) \
        'def share(x): if $total > 0 then (x / $total * 100 | round) else null end;
         {label: $side, msgs_per_s: (.send_msgs_per_s | round), p99_us: .send_latency_us.p99, errors: .send_errors,
          brokers_us: ([$b0, $b1, $b2] | sort | reverse), servers_us: (($b0 + $b1 + $b2) * 10 | round / 10),
          bench_us: $bench, idle_pct: share($idle), steal_pct: share($steal)}' "$WORK/bench.json"
    stop_group
}

RESULTS="$(mktemp /tmp/wasmq-ab-results.XXXXXX)"
log "base $BASE ${BASE_ENV:-} (mqbench $BASE_BENCH), new $NEW ${NEW_ENV:-} (mqbench $BENCH); $ROUNDS rounds of $DURATION s: $ARGS"
for r in $(seq 1 "$ROUNDS"); do
    # ABBA: the side that goes first alternates, so a machine that speeds up or slows down
    # during the run does not favour one side (with base always first, two runs of one
    # mqbench against itself came out 1.07 and 0.99).
    order="base new"
    ((r % 2 == 1)) || order="new base"
    for side in $order; do
        if [[ $side == base ]]; then
            dir="$BASE" bench_bin="$BASE_BENCH" side_env="${BASE_ENV:-}"
        else
            dir="$NEW" bench_bin="$BENCH" side_env="${NEW_ENV:-}"
        fi
        line=$(measure "$dir" "$side" "$bench_bin" "$side_env")
        log "round $r $line"
        echo "$line" >>"$RESULTS"
    done
done

echo
printf 'Interleaved A/B, %s rounds; CPU in microseconds per acknowledged message over a %s s steady window (brokers: busiest first, i.e. the leader).\n' "$ROUNDS" "$WINDOW"
printf '%-5s | %9s %9s | %-20s %9s %9s | %6s %6s\n' build "msg/s" "p99 us" "brokers us/msg" "servers" "mqbench" idle steal
jq -r '[.label, .msgs_per_s, .p99_us, (.brokers_us | map(tostring) | join(" / ")), .servers_us, .bench_us, "\(.idle_pct)%", "\(.steal_pct)%"] | @tsv' "$RESULTS" |
    awk -F'\t' '{ printf "%-5s | %9s %9s | %-20s %9s %9s | %6s %6s\n", $1,$2,$3,$4,$5,$6,$7,$8 }'
echo
jq -rs '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def med(side; f): [.[] | select(.label == side) | f] | median;
  def ratio(f): (med("new"; f) / med("base"; f) * 100 | round / 100);
  def rounds(f): [range(0; length / 2 | floor) as $i | [.[2 * $i], .[2 * $i + 1]] | map({(.label): f}) | add]
    | map(select(.new < .base)) | length;
  "median NEW / BASE: msg/s \(ratio(.msgs_per_s)), p99 \(ratio(.p99_us)), leader CPU/msg \(ratio(.brokers_us[0])), servers CPU/msg \(ratio(.servers_us)), mqbench CPU/msg \(ratio(.bench_us))",
  "NEW spent less CPU per message in \(rounds(.servers_us)) of \(length / 2 | floor) rounds (servers), \(rounds(.bench_us)) (mqbench)"' "$RESULTS"

#!/usr/bin/env bash
# The official RocketMQ 5 Python client (PyPI rocketmq-python-client) against a real 3-node
# wasmq group started by examples/fast-try.sh (name server + 3 brokers on 127.0.0.1).
# Installs the pinned client into a venv, creates the test topic with mqadmin, points the
# pytest suite at a follower's client endpoint, and gives it commands to kill -9 the current
# leader and to restart it, then stops exactly what it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${WASMQ_BIN_DIR:-$ROOT/target/release}"
VENV="${WASMQ_TEST_VENV:-$ROOT/.tools/venv-client}"
OWN_DIR=0
if [[ -z "${WASMQ_FAST_TRY_DIR:-}" ]]; then
    WASMQ_FAST_TRY_DIR="$(mktemp -d /tmp/wasmq-pytest.XXXXXX)"
    OWN_DIR=1
fi
export WASMQ_FAST_TRY_DIR
NAMESRV=127.0.0.1:9876
say() { echo "==> $*" >&2; }

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c 'import rocketmq, pytest' 2>/dev/null; then
    say "installing $ROOT/tests/python/requirements.txt into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tests/python/requirements.txt"
fi

# Stops the cluster; a data directory this script made is deleted too (each run's
# commitlogs take a few GB of a shared disk; failures print the log tails first), unless
# WASMQ_KEEP=1.
cleanup() {
    "$ROOT/examples/fast-try.sh" stop >/dev/null 2>&1 || true
    if ((OWN_DIR)) && [[ "${WASMQ_KEEP:-0}" != 1 ]]; then
        rm -rf "$WASMQ_FAST_TRY_DIR"
    fi
}
trap cleanup EXIT
"$ROOT/examples/fast-try.sh" start

topic=wasmq-py
ok=0
for _ in $(seq 1 30); do
    if "$BIN/mqadmin" updateTopic -n "$NAMESRV" -c RaftCluster -t "$topic" -r 4 -w 4 >/dev/null 2>&1; then ok=1; break; fi
    sleep 1
done
((ok)) || { "$BIN/mqadmin" updateTopic -n "$NAMESRV" -c RaftCluster -t "$topic" -r 4 -w 4; exit 1; }

# One member's client endpoint, a FOLLOWER's: the failover test kills the leader, and the
# member the client reached forwards leader-only RPCs to whoever leads. (One address only:
# the official client sends several as one HTTP/2 :authority "a,b,c", which h2 rejects.)
# Chosen once leadership has settled on the preferred leader (conf/dledger: n0): the first
# election may go to another member, which then hands over, and a follower picked before
# that could be the leader the failover test kills.
endpoints=""
for _ in $(seq 1 60); do
    endpoints="$("$BIN/mqadmin" clusterList -n "$NAMESRV" --json | "$VENV/bin/python" -c '
import json, sys
rows = json.load(sys.stdin)
leaders = [r["nodeId"] for r in rows if r["role"] == "LEADER"]
followers = sorted(r["addr"] for r in rows if r["role"] == "FOLLOWER")
print(followers[0] if leaders == ["n0"] and len(followers) == 2 else "")')" || true
    [[ -n "$endpoints" ]] && break
    sleep 0.5
done
[[ -n "$endpoints" ]] || { say "leadership did not settle on n0 within 30 s"; "$BIN/mqadmin" clusterList -n "$NAMESRV"; exit 1; }
say "client endpoints: $endpoints"

# Failover: kill -9 whichever node is LEADER now; recover: start it again on its config.
cat >"$WASMQ_FAST_TRY_DIR/leader.py" <<'PY'
import json, os, subprocess, sys, time
run_dir, bin_dir, action = sys.argv[1], sys.argv[2], sys.argv[3]
rows = json.loads(subprocess.check_output([f"{bin_dir}/mqadmin", "clusterList", "-n", "127.0.0.1:9876", "--json"]))
if action == "kill":
    leader = [r["nodeId"] for r in rows if r["role"] == "LEADER"][0]
    pid = int(open(f"{run_dir}/pids/broker-{leader}.pid").read())
    os.kill(pid, 9)
    open(f"{run_dir}/killed", "w").write(leader)
    print(f"killed leader {leader} (pid {pid})")
else:
    node = open(f"{run_dir}/killed").read().strip()
    log = open(f"{run_dir}/logs/broker-{node}.restart.log", "ab")
    p = subprocess.Popen([f"{bin_dir}/mqbroker", "-c", f"{run_dir}/{node}/broker.toml"],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    open(f"{run_dir}/pids/broker-{node}.pid", "w").write(str(p.pid))
    print(f"restarted {node} (pid {p.pid})")
PY
export WASMQ_ENDPOINT="$endpoints" WASMQ_TOPIC="$topic"
export WASMQ_FAILOVER_CMD="$VENV/bin/python $WASMQ_FAST_TRY_DIR/leader.py $WASMQ_FAST_TRY_DIR $BIN kill"
export WASMQ_RECOVER_CMD="$VENV/bin/python $WASMQ_FAST_TRY_DIR/leader.py $WASMQ_FAST_TRY_DIR $BIN restart"

cd "$ROOT"
# Skips are failures here: every test must have run against the real cluster.
"$VENV/bin/python" -m pytest -q -rs tests/python "$@" 2>&1 | tee "$WASMQ_FAST_TRY_DIR/pytest.log"
status=${PIPESTATUS[0]}
if grep -qE '[0-9]+ skipped' "$WASMQ_FAST_TRY_DIR/pytest.log"; then
    echo "tests/python: some tests were skipped against a real cluster; that is a failure here" >&2
    status=1
fi
if ((status != 0)); then
    for f in "$WASMQ_FAST_TRY_DIR"/logs/*.log; do echo "--- tail $f"; tail -n 30 "$f"; done >&2
fi
exit "$status"

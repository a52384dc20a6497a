//! Failover: 3 brokers + name server; 10,000 messages from 8 concurrent producers; the
//! leader is killed with SIGKILL mid-stream, or its disk fills up (it must then fail-stop:
//! exit with the fail-stop code once its log needs new space); producers retry until a new
//! leader answers; the old leader restarts and catches up; every acknowledged message is on
//! every replica exactly once, at its acknowledged offset, in send order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use wasmq_cluster_tests::cluster::{Cluster, ClusterSpec};
use wasmq_cluster_tests::load::{LoadState, ProducerSpec, spawn_producers, wait_acked};
use wasmq_cluster_tests::scenario::{self, LEADER_TIMEOUT, endpoints, others};

const TOPIC: &str = "FailoverTopic";
const PRODUCERS: u32 = 8;
const MESSAGES_TOTAL: u64 = 10_000;
const QUEUES: u32 = 4;
/// How long a leader whose disk is full may keep running while producers fill its log
/// (10,000 messages cross several 1 MiB segments; the broker notices a fail-stop within
/// 250 ms and then stops gracefully).
const FAIL_STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum LeaderFault {
    Kill9,
    DiskFull,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_kill9_leader_mid_stream() {
    let mut cluster = scenario::start(ClusterSpec::replicated(3)).await;
    let result = run(&mut cluster, LeaderFault::Kill9).await;
    cluster.finish(result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_disk_full_leader_mid_stream() {
    // Small segments: the leader needs new space soon after its disk fills.
    let mut cluster = scenario::start(ClusterSpec::replicated(3).segment_bytes(1 << 20)).await;
    let result = run(&mut cluster, LeaderFault::DiskFull).await;
    cluster.finish(result);
}

async fn run(cluster: &mut Cluster, fault: LeaderFault) -> Result<()> {
    let (leader, term) = scenario::leader_with_topic(cluster, TOPIC, QUEUES).await?;

    let state = Arc::new(LoadState::default());
    let spec = ProducerSpec {
        topic: TOPIC.into(),
        endpoints: endpoints(cluster),
        messages: MESSAGES_TOTAL / PRODUCERS as u64,
        size_bytes: 200,
        deadline: Instant::now() + Duration::from_secs(240),
        rpc_timeout: Duration::from_secs(3),
        pace: Duration::ZERO,
    };
    let producers = spawn_producers(PRODUCERS, &spec, &state);

    let before_kill = wait_acked(&state, MESSAGES_TOTAL / 3, Duration::from_secs(90)).await;
    ensure!(before_kill >= MESSAGES_TOTAL / 3, "only {before_kill} acks before the kill");
    match fault {
        LeaderFault::Kill9 => cluster.kill9(leader)?,
        LeaderFault::DiskFull => {
            cluster.disk_full(leader)?;
            let deadline = Instant::now() + FAIL_STOP_TIMEOUT;
            // Any other exit is an error from `reap_fail_stop`.
            while !cluster.reap_fail_stop(leader)? {
                ensure!(
                    Instant::now() < deadline,
                    "leader n{leader} still running {FAIL_STOP_TIMEOUT:?} after its disk filled"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let killed_at = Instant::now();
    eprintln!("leader n{leader} gone ({fault:?}) after {before_kill} acks");

    let (new_leader, new_term) = cluster.wait_for_leader_among(LEADER_TIMEOUT, &others(3, leader)).await?;
    ensure!(new_term > term, "new leader n{new_leader} has term {new_term}, not above {term}");
    let after = wait_acked(&state, before_kill + MESSAGES_TOTAL / 3, Duration::from_secs(90)).await;
    eprintln!(
        "new leader n{new_leader} term {new_term} elected; {after} acks {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    ensure!(after > before_kill, "no send acknowledged after the kill");
    // The operator's view agrees: the real mqadmin, through the name server.
    cluster.wait_cli_leader(&cluster.nodes[new_leader].id, new_term, LEADER_TIMEOUT).await?;

    cluster.restart(leader).await?;
    for p in producers {
        p.await?;
    }
    cluster.check_alive()?;
    {
        let log = state.log.lock().await;
        eprintln!(
            "producers done: acked {} failed attempts {} abandoned {}",
            log.acked.len(),
            log.failed_attempts,
            log.abandoned
        );
        ensure!(log.abandoned == 0, "{} messages never acknowledged before the deadline", log.abandoned);
        ensure!(log.acked.len() as u64 == MESSAGES_TOTAL, "acked {} of {MESSAGES_TOTAL}", log.acked.len());
    }
    // Every replica, including the restarted old leader, must hold the same queues.
    let report = scenario::check_replicas(cluster, &state, TOPIC, true).await?;
    ensure!(report.replicas == 3, "the restarted node was not read");
    Ok(())
}

//! Crash consistency: brokers are killed with SIGKILL during writes at random points, several
//! times; every restart must recover, and every message acknowledged before a crash must be
//! readable afterwards at its offset, exactly once, on every replica.
//!
//! Two variants, run one after the other (a 2-core box runs one cluster at a time):
//! a standalone broker, and a 3-node group losing all members at once ("power loss").
//! `WASMQ_FAULT_SEED` picks the kill points (printed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng, rngs::StdRng};
use wasmq_cluster_tests::cluster::{Cluster, ClusterSpec};
use wasmq_cluster_tests::load::{LoadState, ProducerSpec, spawn_producers, wait_acked};
use wasmq_cluster_tests::readback::create_topic;
use wasmq_cluster_tests::scenario::{self, LEADER_TIMEOUT, endpoints};

const TOPIC: &str = "CrashTopic";
const PRODUCERS: u32 = 4;
const CRASHES: u32 = 4;
const QUEUES: u32 = 4;

/// One cluster at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seed() -> u64 {
    match std::env::var("WASMQ_FAULT_SEED") {
        Ok(s) => s.parse().expect("WASMQ_FAULT_SEED must be an integer"),
        Err(_) => rand::rng().random(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_broker_survives_kill9_during_writes() {
    let _serial = SERIAL.lock().await;
    let mut cluster = scenario::start(ClusterSpec::replicated(1)).await;
    let result = run(&mut cluster, seed()).await;
    cluster.finish(result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_group_survives_kill9_of_every_member_during_writes() {
    let _serial = SERIAL.lock().await;
    let mut cluster = scenario::start(ClusterSpec::replicated(3)).await;
    let result = run(&mut cluster, seed()).await;
    cluster.finish(result);
}

async fn run(cluster: &mut Cluster, seed: u64) -> Result<()> {
    let nodes = cluster.nodes.len();
    eprintln!("crash consistency: {nodes} node(s), seed {seed} (replay with WASMQ_FAULT_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let (leader, _) = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    create_topic(cluster, leader, TOPIC, QUEUES).await?;

    let state = Arc::new(LoadState::default());
    let spec = ProducerSpec {
        topic: TOPIC.into(),
        endpoints: endpoints(cluster),
        messages: 50_000,
        // Mixed sizes over the 4 MiB segments: crashes land inside and across segments.
        size_bytes: 2_000,
        deadline: Instant::now() + Duration::from_secs(300),
        rpc_timeout: Duration::from_secs(3),
        pace: Duration::ZERO,
    };
    let producers = spawn_producers(PRODUCERS, &spec, &state);

    for round in 0..CRASHES {
        // Let writes flow for a random while, then pull the plug on every node at once.
        let target = state.acked_count.load(std::sync::atomic::Ordering::Relaxed) + rng.random_range(200..2_000);
        let reached = wait_acked(&state, target, Duration::from_secs(60)).await;
        ensure!(reached >= target, "round {round}: writes stalled at {reached} acks");
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        for i in 0..nodes {
            cluster.kill9(i)?;
        }
        let acked_at_crash = state.acked_count.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("round {round}: killed all {nodes} node(s) at {acked_at_crash} acks");
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
        for i in 0..nodes {
            cluster.restart(i).await?;
        }
        // Recovery: the acknowledged prefix is intact on every replica. Producers are still
        // running, so each replica is checked against the acks logged before the read.
        scenario::check_replicas(cluster, &state, TOPIC, false).await?;
    }
    state.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in producers {
        p.await?;
    }
    cluster.check_alive()?;
    let report = scenario::check_replicas(cluster, &state, TOPIC, true).await?;
    ensure!(report.acked > 0, "nothing was acknowledged");
    Ok(())
}

//! Steps shared by the cluster tests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::checker::{CheckReport, check};
use crate::cluster::{Cluster, ClusterSpec};
use crate::load::LoadState;
use crate::readback::read_all_replicas;

/// Generous bound on elections and catch-up in a 2-core CI box with parallel builds.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(45);

/// Starts a cluster, or panics with the reason (missing binaries say how to build them).
pub async fn start(spec: ClusterSpec) -> Cluster {
    crate::init_tracing();
    match Cluster::start(spec).await {
        Ok(c) => c,
        Err(e) => panic!("cluster did not start: {e:#}"),
    }
}

/// Waits for a leader and creates `topic` through it; returns the leader's index and term.
pub async fn leader_with_topic(cluster: &Cluster, topic: &str, queues: u32) -> Result<(usize, u64)> {
    let (leader, term) = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    eprintln!("leader n{leader} term {term}");
    crate::readback::create_topic(cluster, leader, topic, queues).await?;
    Ok((leader, term))
}

pub fn endpoints(cluster: &Cluster) -> Vec<String> {
    (0..cluster.nodes.len()).map(|i| cluster.client_endpoint(i)).collect()
}

/// Reads every running replica and checks them against the producers' log.
///
/// `quiescent`: no producer is sending, so the replicas must also be identical. While
/// producers run, each replica is checked on its own against the acks logged *before* the
/// read (later acks may or may not be in it), and attempts logged up to *after* the read
/// (so nothing read counts as never sent).
pub async fn check_replicas(
    cluster: &Cluster,
    state: &Arc<LoadState>,
    topic: &str,
    quiescent: bool,
) -> Result<CheckReport> {
    check_replicas_report(cluster, state, topic, quiescent).await?.into_result()
}

/// `check_replicas` without turning violations into an error (for summaries).
pub async fn check_replicas_report(
    cluster: &Cluster,
    state: &Arc<LoadState>,
    topic: &str,
    quiescent: bool,
) -> Result<CheckReport> {
    let acked = state.log.lock().await.acked.clone();
    let replicas = read_all_replicas(cluster, topic, LEADER_TIMEOUT).await.context("read back replicas")?;
    let running = (0..cluster.nodes.len()).filter(|&i| cluster.is_running(i)).count();
    ensure!(replicas.len() == running, "read {} replicas of {running} running nodes", replicas.len());
    let log = state.log.lock().await;
    let report = if quiescent {
        ensure!(acked.len() == log.acked.len(), "check_replicas(quiescent) while producers still acknowledge");
        check(&log.attempted, &acked, &replicas)
    } else {
        let mut merged = CheckReport::default();
        for r in replicas {
            let one = check(&log.attempted, &acked, std::slice::from_ref(&r));
            merged.acked = one.acked;
            merged.attempted = one.attempted;
            merged.replicas += 1;
            merged.messages_per_replica.extend(one.messages_per_replica);
            merged.unacked_stored_max = merged.unacked_stored_max.max(one.unacked_stored_max);
            merged.violation_count += one.violation_count;
            merged.violations.extend(one.violations);
        }
        merged
    };
    eprintln!("{} failed_attempts={} abandoned={}", report.summary(), log.failed_attempts, log.abandoned);
    Ok(report)
}

/// A node's index in `0..n` other than `x`.
pub fn others(n: usize, x: usize) -> Vec<usize> {
    (0..n).filter(|&i| i != x).collect()
}

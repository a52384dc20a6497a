//! Invariants observed while faults run:
//! - at most one leader per term (from every node's own status and the name server's table);
//! - consumer offsets never go backwards (per node between restarts, and at the end every
//!   node holds at least the highest offset any node ever reported).
//!
//! Plus a consumer that receives and acks continuously, and checks it only gets bodies that
//! were sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmq_bench::client::{ClientError, MqClient};
use wasmq_proto::apache::rocketmq::v2::Code;
use wasmq_proto::wasmq::{admin, namesrv};

use crate::checker::parse_body;
use crate::cluster::Cluster;
use crate::load::LoadState;

/// Violations listed in full; past this only the count grows.
const VIOLATIONS_LISTED_MAX: usize = 50;

type OffsetKey = (String, String, u32);

#[derive(Debug, Default)]
pub struct Observations {
    pub samples: u64,
    /// term → node ids that claimed leadership in it.
    pub leaders_by_term: BTreeMap<u64, BTreeSet<String>>,
    /// (node id, restarts) → last consumer offset per (group, topic, queue).
    last_offsets: HashMap<(String, u32), HashMap<OffsetKey, u64>>,
    /// Highest consumer offset any node reported per (group, topic, queue).
    pub max_offsets: HashMap<OffsetKey, u64>,
    pub violations: Vec<String>,
    pub violation_count: u64,
}

impl Observations {
    fn violation(&mut self, v: String) {
        self.violation_count += 1;
        if self.violations.len() < VIOLATIONS_LISTED_MAX {
            tracing::error!("{v}");
            self.violations.push(v);
        }
    }

    fn saw_leader(&mut self, term: u64, node_id: &str, source: &str) {
        let set = self.leaders_by_term.entry(term).or_default();
        set.insert(node_id.to_string());
        if set.len() > 1 {
            let v = format!("two leaders in term {term}: {set:?} (seen via {source})");
            self.violation(v);
        }
    }

    /// One round of observation: every reachable node's status and consumer progress, and the
    /// name server's table.
    pub async fn observe(&mut self, cluster: &Cluster, group: &str, topic: &str) {
        self.samples += 1;
        for s in cluster.statuses().await {
            if s.role == admin::Role::Leader {
                self.saw_leader(s.term, &s.node_id, "brokerStatus");
            }
        }
        if let Ok(info) = cluster.cluster_info().await {
            for b in &info.brokers {
                for n in &b.nodes {
                    if n.role == namesrv::Role::Leader as i32 {
                        self.saw_leader(n.term, &n.node_id, "name server");
                    }
                }
            }
        }
        for i in 0..cluster.nodes.len() {
            if !cluster.is_running(i) || cluster.is_stopped(i) {
                continue;
            }
            let Ok(progress) = consumer_progress(cluster, i, group, topic).await else { continue };
            let node_key = (cluster.nodes[i].id.clone(), cluster.nodes[i].restarts);
            for q in progress {
                let key = (q.group.clone(), q.topic.clone(), q.queue_id);
                let last =
                    self.last_offsets.entry(node_key.clone()).or_default().insert(key.clone(), q.consumer_offset);
                if let Some(last) = last
                    && q.consumer_offset < last
                {
                    let v = format!(
                        "consumer offset went backwards on {} (restart {}): {key:?} {last} -> {}",
                        node_key.0, node_key.1, q.consumer_offset
                    );
                    self.violation(v);
                }
                let max = self.max_offsets.entry(key).or_insert(0);
                *max = (*max).max(q.consumer_offset);
            }
        }
    }

    /// After healing and catch-up: every node must hold at least the highest consumer offset
    /// ever reported (a committed offset is never lost).
    pub async fn check_final_offsets(&mut self, cluster: &Cluster, group: &str, topic: &str) {
        for i in 0..cluster.nodes.len() {
            if !cluster.is_running(i) {
                continue;
            }
            let progress = match consumer_progress(cluster, i, group, topic).await {
                Ok(p) => p,
                Err(e) => {
                    self.violation(format!("final consumer progress of {} failed: {e:#}", cluster.nodes[i].id));
                    continue;
                }
            };
            let now: HashMap<OffsetKey, u64> =
                progress.into_iter().map(|q| ((q.group, q.topic, q.queue_id), q.consumer_offset)).collect();
            let max_offsets = self.max_offsets.clone();
            for (key, max) in max_offsets {
                let have = now.get(&key).copied().unwrap_or(0);
                if have < max {
                    self.violation(format!(
                        "{} ends with consumer offset {have} for {key:?}, below {max} reported earlier",
                        cluster.nodes[i].id
                    ));
                }
            }
        }
    }

    pub fn summary(&self) -> String {
        let terms_with_leader = self.leaders_by_term.len();
        format!(
            "monitor: samples={} terms_with_leader={terms_with_leader} offset_keys={} violations={}",
            self.samples,
            self.max_offsets.len(),
            self.violation_count
        )
    }
}

/// Consumer offsets of `group` on `topic` as node `i` stores them (v2 `GetOffset`, a local
/// read on any member), per queue that has one.
async fn consumer_progress(cluster: &Cluster, i: usize, group: &str, topic: &str) -> anyhow::Result<Vec<QueueOffset>> {
    let mut c = MqClient::connect_lazy(&cluster.client_endpoint(i), Duration::from_secs(2))?;
    let mut out = Vec::new();
    for queue_id in crate::readback::queue_ids(&mut c, topic).await? {
        match c.get_offset(group, topic, queue_id).await {
            Ok(offset) => out.push(QueueOffset {
                group: group.to_string(),
                topic: topic.to_string(),
                queue_id,
                consumer_offset: u64::try_from(offset)?,
            }),
            Err(ClientError::Status { code: Some(Code::OffsetNotFound), .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

struct QueueOffset {
    group: String,
    topic: String,
    queue_id: u32,
    consumer_offset: u64,
}

/// What a continuously receiving consumer saw.
#[derive(Debug, Default)]
pub struct ConsumeStats {
    pub received: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    /// Bodies that no producer ever attempted (must stay 0).
    pub strays: AtomicU64,
}

/// Receives and acks until `deadline` (or the load stops), rotating endpoints on errors.
pub async fn run_consumer(
    endpoints: Vec<String>,
    topic: String,
    group: String,
    load: Arc<LoadState>,
    stats: Arc<ConsumeStats>,
    deadline: Instant,
) {
    let mut clients: Vec<MqClient> =
        endpoints.iter().map(|e| MqClient::connect_lazy(e, Duration::from_secs(3)).expect("valid endpoint")).collect();
    let mut current = 0;
    while Instant::now() < deadline && !load.stop.load(Ordering::Relaxed) {
        let got =
            clients[current].receive(&group, &topic, 32, Duration::from_secs(15), Duration::from_millis(500)).await;
        match got {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => {
                stats.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                {
                    let log = load.log.lock().await;
                    for m in &batch {
                        // Bodies are recorded as attempted before they are sent.
                        if parse_body(&m.body).is_none() || !log.attempted.contains(&m.body) {
                            stats.strays.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(queue = m.queue_id, offset = m.offset, "consumer got a body nobody sent");
                        }
                    }
                }
                match clients[current].ack(&group, &topic, &batch).await {
                    Ok(()) => {
                        stats.acked.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "ack failed");
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "receive failed");
                stats.errors.fetch_add(1, Ordering::Relaxed);
                current = (current + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

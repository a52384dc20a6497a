//! Reads every queue of a topic from one node, straight from that node's store (admin
//! `TopicStatus` + `ConsumeMessage`, served locally by followers too), for the checker.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use wasmq_proto::wasmq::admin;

use crate::checker::{ReadMessage, ReplicaRead};
use crate::cluster::Cluster;

/// Messages per ConsumeMessage call (the admin service's own maximum).
const READ_BATCH: u32 = 256;
/// Messages one queue may hold in a test; a bigger one means a runaway loop somewhere.
const QUEUE_MESSAGES_MAX: u64 = 10_000_000;

/// Per-queue (queue id, min offset, max offset) of `topic` on node `i`.
pub async fn queue_offsets(cluster: &Cluster, i: usize, topic: &str) -> Result<Vec<admin::QueueStatus>> {
    let mut c = cluster.admin(i).await?;
    let r = c
        .topic_status(admin::TopicStatusRequest { topic: topic.to_string() })
        .await
        .with_context(|| format!("topicStatus {topic} on {}", cluster.nodes[i].id))?
        .into_inner();
    Ok(r.queues)
}

/// Everything node `i` stores for `topic`, queue by queue in offset order.
pub async fn read_replica(cluster: &Cluster, i: usize, topic: &str) -> Result<ReplicaRead> {
    let node = cluster.nodes[i].id.clone();
    let queues = queue_offsets(cluster, i, topic).await?;
    let mut c = cluster.admin(i).await?;
    let mut messages = Vec::new();
    for q in queues {
        ensure!(q.max_offset - q.min_offset <= QUEUE_MESSAGES_MAX, "queue {} of {node} is huge: {q:?}", q.queue_id);
        let mut offset = q.min_offset;
        while offset < q.max_offset {
            let r = c
                .consume_message(admin::ConsumeMessageRequest {
                    topic: topic.to_string(),
                    queue_id: q.queue_id,
                    offset,
                    max_count: READ_BATCH,
                })
                .await
                .with_context(|| format!("consumeMessage {topic}/{} @{offset} on {node}", q.queue_id))?
                .into_inner();
            ensure!(
                !r.messages.is_empty() && r.next_offset > offset,
                "{node} queue {} stalls at offset {offset} below max {} (next {})",
                q.queue_id,
                q.max_offset,
                r.next_offset
            );
            for m in r.messages {
                ensure!(m.queue_id == q.queue_id, "{node} returned queue {} for queue {}", m.queue_id, q.queue_id);
                messages.push(ReadMessage { queue_id: m.queue_id, offset: m.queue_offset, body: m.body });
            }
            offset = r.next_offset;
        }
    }
    Ok(ReplicaRead { replica: node, messages })
}

/// Reads every running node; waits first until all of them have applied the leader's
/// committed index, so the replicas can be compared.
pub async fn read_all_replicas(cluster: &Cluster, topic: &str, catch_up: Duration) -> Result<Vec<ReplicaRead>> {
    let (leader, _) = cluster.wait_for_leader(catch_up).await?;
    let committed = cluster.status(leader).await?.committed_index;
    cluster.wait_applied(committed, catch_up).await?;
    let mut out = Vec::new();
    for i in 0..cluster.nodes.len() {
        if cluster.is_running(i) {
            out.push(read_replica(cluster, i, topic).await?);
        }
    }
    Ok(out)
}

/// Creates `topic` with `queues` read/write queues through the real `mqadmin updateTopic`,
/// sent to node `via` (a follower forwards it to the leader).
pub async fn create_topic(cluster: &Cluster, via: usize, topic: &str, queues: u32) -> Result<()> {
    let addr = cluster.nodes[via].client_addr.to_string();
    let q = queues.to_string();
    cluster
        .mqadmin(&["updateTopic", "-b", &addr, "-t", topic, "-r", &q, "-w", &q])
        .await
        .with_context(|| format!("create topic {topic}"))?;
    Ok(())
}

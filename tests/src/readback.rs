//! Reads every queue of a topic from one node's own store, over the client protocol
//! (v2 `QueryRoute` + `QueryOffset` + `PullMessage`: reads of committed entries, which every
//! member answers locally), for the checker.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wasmq_bench::client::{BATCH_MAX, MqClient};
use wasmq_proto::apache::rocketmq::v2::QueryOffsetPolicy;

use crate::checker::{ReadMessage, ReplicaRead};
use crate::cluster::Cluster;

/// Consumer group named in pulls (pull does not move any stored offset).
const READBACK_GROUP: &str = "wasmq-readback";
/// Messages one queue may hold in a test; a bigger one means a runaway loop somewhere.
const QUEUE_MESSAGES_MAX: u64 = 10_000_000;

/// Readable queue ids of `topic` as node `i` routes it.
pub async fn queue_ids(client: &mut MqClient, topic: &str) -> Result<Vec<u32>> {
    let queues = client.query_route(topic).await.with_context(|| format!("queryRoute {topic}"))?;
    let mut ids: Vec<u32> = queues.iter().filter_map(|q| u32::try_from(q.id).ok()).collect();
    ids.sort_unstable();
    ids.dedup();
    ensure!(!ids.is_empty(), "topic {topic} has no queues");
    Ok(ids)
}

/// Everything node `i` stores for `topic`, queue by queue in offset order.
pub async fn read_replica(cluster: &Cluster, i: usize, topic: &str) -> Result<ReplicaRead> {
    let node = cluster.nodes[i].id.clone();
    let mut c = MqClient::connect_lazy(&cluster.client_endpoint(i), Duration::from_secs(5))?;
    let mut messages = Vec::new();
    for queue_id in queue_ids(&mut c, topic).await.with_context(|| format!("on {node}"))? {
        let min = c.query_offset(topic, queue_id, QueryOffsetPolicy::Beginning).await?;
        let max = c.query_offset(topic, queue_id, QueryOffsetPolicy::End).await?;
        ensure!(max >= min && max - min <= QUEUE_MESSAGES_MAX, "queue {queue_id} of {node}: offsets {min}..{max}");
        let mut offset = min;
        while offset < max {
            let (batch, next) = c
                .pull(READBACK_GROUP, topic, queue_id, offset, BATCH_MAX)
                .await
                .with_context(|| format!("pull {topic}/{queue_id} @{offset} on {node}"))?;
            ensure!(
                !batch.is_empty() && next > offset,
                "{node} queue {queue_id} stalls at offset {offset} below max {max} (next {next})"
            );
            for m in batch {
                ensure!(m.queue_id == queue_id, "{node} returned queue {} for queue {queue_id}", m.queue_id);
                messages.push(ReadMessage { queue_id, offset: m.offset, body: m.body });
            }
            offset = next;
        }
    }
    Ok(ReplicaRead { replica: node, messages })
}

/// Reads every running node, once all of them have applied everything the leader held when
/// it was asked.
///
/// Not just the leader's commit index: right after an election (all nodes restarted, say)
/// a new leader's commit index is still what it learned before, possibly 0, until its
/// no-op entry commits; waiting for that would let a restarted follower that has applied
/// nothing yet (not even the topic) be read. The leader's last index includes every entry
/// committed in earlier terms, so once it is committed and applied everywhere, every
/// acknowledged send so far is in every replica's derived state.
pub async fn read_all_replicas(cluster: &Cluster, topic: &str, catch_up: Duration) -> Result<Vec<ReplicaRead>> {
    let deadline = tokio::time::Instant::now() + catch_up;
    let (leader, _) = cluster.wait_for_leader(catch_up).await?;
    let target = cluster.status(leader).await?.last_index;
    loop {
        let committed = cluster.status(leader).await?.committed_index;
        if committed >= target {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "leader {} committed {committed}, not its last index {target}, within {catch_up:?}",
            cluster.nodes[leader].id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.wait_applied(target, catch_up).await?;
    let mut out = Vec::new();
    for i in 0..cluster.nodes.len() {
        if cluster.is_running(i) {
            out.push(read_replica(cluster, i, topic).await?);
        }
    }
    Ok(out)
}

/// Creates `topic` with `queues` read/write queues through the real `mqadmin updateTopic`,
/// sent to node `via` (a follower forwards it to the leader). Retries while the group has
/// no leader yet.
pub async fn create_topic(cluster: &Cluster, via: usize, topic: &str, queues: u32) -> Result<()> {
    let addr = cluster.nodes[via].client_addr.to_string();
    let q = queues.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.mqadmin(&["updateTopic", "-b", &addr, "-t", topic, "-r", &q, "-w", &q]).await {
            Ok(_) => return Ok(()),
            // A broker build without the admin service: test configs enable auto-creation
            // with the same queue count (`cluster::DEFAULT_TOPIC_QUEUES`), the first send creates it.
            Err(e) if format!("{e:#}").contains("Unimplemented") => {
                ensure!(
                    queues == crate::cluster::DEFAULT_TOPIC_QUEUES,
                    "auto-created topics have {} queues",
                    crate::cluster::DEFAULT_TOPIC_QUEUES
                );
                eprintln!("note: mqadmin updateTopic is unimplemented by this broker; {topic} will be auto-created");
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %format!("{e:#}"), "updateTopic failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("create topic {topic}: {e:#}"),
        }
    }
}

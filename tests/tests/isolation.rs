//! Isolation: like failover, but the leader is cut off from both followers by the Raft link
//! proxies instead of being killed. While in the minority it must not acknowledge anything
//! that is later lost (every ack a probe gets from it is checked like any other), and its
//! commit index must stand still; the majority elects a new leader and keeps acknowledging;
//! after healing, every replica holds every acknowledged message exactly once, in order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use wasmq_cluster_tests::checker::{AckedSend, make_body};
use wasmq_cluster_tests::client::{MqClient, Outgoing};
use wasmq_cluster_tests::cluster::{Cluster, ClusterSpec};
use wasmq_cluster_tests::load::{LoadState, ProducerSpec, spawn_producers, wait_acked};
use wasmq_cluster_tests::scenario::{self, LEADER_TIMEOUT, endpoints, others};

const TOPIC: &str = "IsolationTopic";
const PRODUCERS: u32 = 6;
const MESSAGES_TOTAL: u64 = 6_000;
const QUEUES: u32 = 4;
/// Producer id of the probe that talks only to the isolated node.
const PROBE_PRODUCER: u32 = 1_000;
/// Time the old leader stays isolated after the majority elected a new one.
const ISOLATED_AFTER_ELECTION: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_never_acknowledges_in_minority() {
    let mut cluster = scenario::start(ClusterSpec::replicated(3).proxied()).await;
    let result = run(&mut cluster).await;
    cluster.finish(result);
}

async fn run(cluster: &mut Cluster) -> Result<()> {
    let (leader, term) = scenario::leader_with_topic(cluster, TOPIC, QUEUES).await?;

    let state = Arc::new(LoadState::default());
    let spec = ProducerSpec {
        topic: TOPIC.into(),
        endpoints: endpoints(cluster),
        messages: MESSAGES_TOTAL / PRODUCERS as u64,
        size_bytes: 200,
        deadline: Instant::now() + Duration::from_secs(240),
        rpc_timeout: Duration::from_secs(3),
        pace: Duration::from_millis(2),
    };
    let producers = spawn_producers(PRODUCERS, &spec, &state);
    let before = wait_acked(&state, MESSAGES_TOTAL / 4, Duration::from_secs(90)).await;
    ensure!(before >= MESSAGES_TOTAL / 4, "only {before} acks before isolation");

    let mesh = cluster.mesh.as_ref().expect("proxied cluster");
    let forwarded_before = mesh.bytes_forwarded_total();
    ensure!(forwarded_before > 0, "no Raft traffic went through the proxies: peers bypass them");
    mesh.isolate(leader);
    let isolated_at = Instant::now();
    eprintln!("isolated leader n{leader} after {before} acks");

    // A probe keeps sending to the isolated node only. Whatever it acknowledges goes into the
    // log and must survive like every other ack.
    let probe = {
        let state = state.clone();
        let endpoint = cluster.client_endpoint(leader);
        tokio::spawn(async move {
            let mut client = MqClient::connect_lazy(&endpoint, Duration::from_secs(2)).expect("endpoint");
            let (mut acks, mut errors) = (0u64, 0u64);
            for seq in 0..10_000u64 {
                if state.stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = make_body(PROBE_PRODUCER, seq, 0, 64);
                state.log.lock().await.attempted.insert(body.clone());
                let sent =
                    client.send(&Outgoing { topic: TOPIC, body: &body, tag: None, keys: &[], queue_id: None }).await;
                match sent {
                    Ok(r) => {
                        acks += 1;
                        state.log.lock().await.acked.push(AckedSend {
                            producer: PROBE_PRODUCER,
                            seq,
                            queue_id: None,
                            offset: r.offset,
                            body,
                        });
                    }
                    Err(_) => errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (acks, errors)
        })
    };

    let (new_leader, new_term) = cluster.wait_for_leader_among(LEADER_TIMEOUT, &others(3, leader)).await?;
    ensure!(new_term > term, "new leader n{new_leader} has term {new_term}, not above {term}");
    eprintln!("new leader n{new_leader} term {new_term} after {:.1}s", isolated_at.elapsed().as_secs_f64());

    // The isolated node's commit index must not move once in-flight commits settled.
    let committed_early = cluster.status(leader).await?.committed_index;
    let acked_at_election = state.acked_count.load(Ordering::Relaxed);
    tokio::time::sleep(ISOLATED_AFTER_ELECTION).await;
    let isolated_status = cluster.status(leader).await?;
    ensure!(
        isolated_status.committed_index == committed_early,
        "isolated n{leader} advanced its commit index {committed_early} -> {}",
        isolated_status.committed_index
    );
    let acked_majority = state.acked_count.load(Ordering::Relaxed);
    eprintln!(
        "while isolated: n{leader} role {:?} term {} commit {}; majority acked {} more",
        isolated_status.role,
        isolated_status.term,
        isolated_status.committed_index,
        acked_majority - acked_at_election
    );
    ensure!(acked_majority > acked_at_election, "the majority acknowledged nothing while n{leader} was isolated");

    mesh.heal_all();
    eprintln!("healed");
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    for p in producers {
        p.await?;
    }
    state.stop.store(true, Ordering::Relaxed);
    let (probe_acks, probe_errors) = probe.await?;
    eprintln!("probe to the isolated node: {probe_acks} acks (each checked below), {probe_errors} errors");
    cluster.check_alive()?;
    {
        let log = state.log.lock().await;
        ensure!(log.abandoned == 0, "{} messages never acknowledged", log.abandoned);
    }
    scenario::check_replicas(cluster, &state, TOPIC, true).await?;
    Ok(())
}

//! Rolling config change of a 3-node group under a paced send load, one node at a time, as
//! an operator does it: stop the node gracefully (SIGTERM), edit its config, `mqbroker
//! --check`, start it, wait until it has caught up, next node; the leader last.
//!
//! Every node has the example `replication-upgrade-validator` plugin in its `pluginDir`, and
//! a broker asks it about the change before opening its store:
//! - an allowed change (`maxMessageSize`, `fileReservedTime`) goes ahead on every node while
//!   the other two keep acknowledging sends;
//! - a refused change (`brokerName`, an identity key) stops the start with the validator's
//!   finding, and the node's store is left byte for byte as it was; reverted, the node starts
//!   and catches up;
//! - a `dLegerPeers` change is refused by the host itself (no membership changes);
//! - at the end, every acknowledged message is on every replica exactly once, in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use wasmq_cluster_tests::cluster::{Cluster, ClusterSpec};
use wasmq_cluster_tests::load::{LoadState, ProducerSpec, spawn_producers, wait_acked};
use wasmq_cluster_tests::scenario::{self, LEADER_TIMEOUT, endpoints};

const TOPIC: &str = "RollingTopic";
const QUEUES: u32 = 4;
const PRODUCERS: u32 = 4;
/// Upper bound only: the producers are stopped once the roll is done.
const MESSAGES_PER_PRODUCER_MAX: u64 = 200_000;
const PACE: Duration = Duration::from_millis(5);
/// Sends that must be acknowledged while a node is down: the group keeps serving.
const ACKS_WHILE_DOWN_MIN: u64 = 100;
const VALIDATOR: &str = "replication-upgrade-validator";
const CATCH_UP: Duration = Duration::from_secs(60);

fn dist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_config_change_keeps_serving_and_validators_refuse_identity_changes() {
    wasmq_cluster_tests::init_tracing();
    let mut cluster = match Cluster::prepare(ClusterSpec::replicated(3)).await {
        Ok(c) => c,
        Err(e) => panic!("cluster not prepared: {e:#}"),
    };
    let result = run(&mut cluster).await;
    cluster.finish(result);
}

/// Every node gets its own plugin directory with the validator from `plugins/dist`.
fn install_validator(cluster: &Cluster) -> Result<()> {
    let dist = dist_dir();
    for ext in ["wasm", "toml"] {
        let file = dist.join(format!("{VALIDATOR}.{ext}"));
        ensure!(file.exists(), "{} missing: build the example plugins first (plugins/build.sh)", file.display());
    }
    for i in 0..cluster.nodes.len() {
        let dir = cluster.root.join(format!("plugins-{}", cluster.nodes[i].id));
        std::fs::create_dir_all(&dir)?;
        for ext in ["wasm", "toml"] {
            let name = format!("{VALIDATOR}.{ext}");
            std::fs::copy(dist.join(&name), dir.join(&name)).with_context(|| format!("copy {name}"))?;
        }
        cluster.set_config(i, "pluginDir", &format!("{:?}", dir.display().to_string()))?;
    }
    Ok(())
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> Result<BTreeMap<PathBuf, (u64, SystemTime)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path(), (meta.len(), meta.modified()?));
            }
        }
    }
    Ok(out)
}

/// Waits for a leader, then until every running node has applied what it has committed.
async fn wait_caught_up(cluster: &Cluster) -> Result<()> {
    let (leader, _) = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let committed = cluster.status(leader).await?.committed_index;
    cluster.wait_applied(committed, CATCH_UP).await
}

async fn run(cluster: &mut Cluster) -> Result<()> {
    install_validator(cluster)?;
    cluster.start_namesrv().await?;
    for i in 0..cluster.nodes.len() {
        cluster.start_node(i).await?;
    }
    let (leader, _) = scenario::leader_with_topic(cluster, TOPIC, QUEUES).await?;

    let state = Arc::new(LoadState::default());
    let spec = ProducerSpec {
        topic: TOPIC.into(),
        endpoints: endpoints(cluster),
        messages: MESSAGES_PER_PRODUCER_MAX,
        size_bytes: 256,
        deadline: Instant::now() + Duration::from_secs(300),
        rpc_timeout: Duration::from_secs(3),
        pace: PACE,
    };
    let producers = spawn_producers(PRODUCERS, &spec, &state);
    ensure!(wait_acked(&state, 200, Duration::from_secs(60)).await >= 200, "load did not start");

    // 1. Allowed change, one node at a time, the leader last.
    let mut order: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != leader).collect();
    order.push(leader);
    for &i in &order {
        let id = cluster.nodes[i].id.clone();
        cluster.stop(i).await.with_context(|| format!("stop {id}"))?;
        let acked_at_stop = state.acked_count.load(Ordering::Relaxed);
        let stopped_at = Instant::now();
        cluster.set_config(i, "maxMessageSize", "2097152")?;
        cluster.set_config(i, "fileReservedTime", "96")?;
        let (ok, text) = cluster.check_config(i)?;
        ensure!(ok, "mqbroker --check refused an allowed change on {id}:\n{text}");
        ensure!(text.contains("changed maxMessageSize"), "--check does not show the change on {id}:\n{text}");
        let reached = wait_acked(&state, acked_at_stop + ACKS_WHILE_DOWN_MIN, Duration::from_secs(30)).await;
        ensure!(
            reached >= acked_at_stop + ACKS_WHILE_DOWN_MIN,
            "the group stopped serving while {id} was down: {} acks in {:?}",
            reached - acked_at_stop,
            stopped_at.elapsed()
        );
        cluster.start_node(i).await.with_context(|| format!("start {id} with the changed config"))?;
        wait_caught_up(cluster).await.with_context(|| format!("{id} after its config change"))?;
        eprintln!("{id}: config changed, {} acks while it was down", reached - acked_at_stop);
    }

    // 2. A refused change: the start stops before the store is touched.
    let (leader, _) = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let i = (leader + 1) % cluster.nodes.len();
    let id = cluster.nodes[i].id.clone();
    cluster.stop(i).await?;
    let before = snapshot(&cluster.nodes[i].store_dir)?;
    cluster.set_config(i, "brokerName", "\"renamed-broker\"")?;
    let (ok, text) = cluster.check_config(i)?;
    ensure!(!ok, "mqbroker --check accepted a brokerName change on {id}:\n{text}");
    ensure!(text.contains("identity-config-change") && text.contains(VALIDATOR), "--check output:\n{text}");
    let refused = cluster.start_node(i).await;
    let why = format!("{:#}", refused.err().context("the broker started with a refused config change")?);
    ensure!(why.contains("config change refused"), "the start failed, but not as a refusal:\n{why}");
    ensure!(why.contains("identity-config-change") && why.contains("brokerName"), "refusal does not name it:\n{why}");
    ensure!(snapshot(&cluster.nodes[i].store_dir)? == before, "a refused start touched the store of {id}");

    // 3. Membership keys are refused by the host, whatever the plugins say.
    cluster.set_config(i, "brokerName", &format!("{:?}", cluster.spec.group_name))?;
    let peers = cluster.peers_for(i);
    // The last member "moves" to another port (nothing listens on port 1): the same ids, so
    // the config itself is valid, but the group's membership would change.
    let moved = peers.rsplit_once(':').map(|(head, _)| format!("{head}:1")).context("peer list")?;
    cluster.set_config(i, "dLegerPeers", &format!("{moved:?}"))?;
    let (ok, text) = cluster.check_config(i)?;
    ensure!(!ok && text.contains("membership-change"), "a dLegerPeers change was not refused:\n{text}");
    cluster.set_config(i, "dLegerPeers", &format!("{peers:?}"))?;

    // Reverted: the node starts and catches up.
    cluster.start_node(i).await.with_context(|| format!("start {id} with the reverted config"))?;
    wait_caught_up(cluster).await?;

    state.stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await?;
    }
    cluster.check_alive()?;
    let acked = state.log.lock().await.acked.len();
    eprintln!("producers stopped after {acked} acks");
    wait_caught_up(cluster).await?;
    let report = scenario::check_replicas(cluster, &state, TOPIC, true).await?;
    ensure!(report.replicas == 3, "read {} replicas", report.replicas);

    // What each store now runs with is the changed config.
    for n in &cluster.nodes {
        let applied = std::fs::read_to_string(n.store_dir.join("config.applied.json"))?;
        ensure!(applied.contains("2097152"), "{}: config.applied.json does not hold the new maxMessageSize", n.id);
    }
    Ok(())
}

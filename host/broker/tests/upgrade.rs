//! Upgrade of a non-replicated 2-node cluster (master + slave whose logs diverged) to a
//! 3-node Raft group: `mqadmin upgradeCheck` refuses naming the divergence and changes
//! nothing, `mqadmin upgrade --source` copies the master's log, the new group (real store,
//! Raft replicator and broker core, in process on 127.0.0.1) elects a leader and serves every
//! old message, and `mqadmin upgradeFinish` removes the backups only after that.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmq_broker::config::{self, BrokerConfig};
use wasmq_broker::core::{self, BrokerCore, CoreOptions, TopicSpec};
use wasmq_broker::messaging::backend::{MessagingBackend, OutgoingMessage};
use wasmq_broker::replication::raft_group::{RaftGroupConfig, RaftReplicator};
use wasmq_broker::replication::standalone::StandaloneReplicator;
use wasmq_broker::replication::{Replicator, Role};

mod common;
use common::free_ports;

const TOPIC: &str = "orders";
const QUEUES: u32 = 3;
const COMMON: usize = 40;
const A_EXTRA: usize = 10;
const B_EXTRA: usize = 5;

struct Node {
    core: Arc<BrokerCore>,
    replicator: Arc<dyn Replicator>,
}

fn write_config(path: &Path, text: &str) -> BrokerConfig {
    std::fs::write(path, text).unwrap();
    config::load(path).unwrap().config
}

fn old_config(dir: &Path, name: &str, broker_id: u64, port: u16) -> (PathBuf, BrokerConfig) {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "brokerClusterName = \"c\"\nbrokerName = \"broker-a\"\nbrokerId = {broker_id}\nbrokerIP1 = \"127.0.0.1\"\nlistenPort = {port}\n\
         storePathRootDir = \"{}\"\nmappedFileSizeCommitLog = 4194304\nmaxMessageSize = 65536\ndiskMaxUsedSpaceRatio = 95\nflushDiskType = \"SYNC_FLUSH\"\n",
        dir.join(name).display()
    );
    let c = write_config(&path, &text);
    (path, c)
}

/// Member `id` of the new group `g`; `extra` is appended to the TOML.
fn new_config(dir: &Path, id: &str, root: &Path, listen: &[u16], raft: &[u16], extra: &str) -> (PathBuf, BrokerConfig) {
    let ids = ["n0", "n1", "n2"];
    let peers: Vec<String> = ids.iter().zip(raft).map(|(i, p)| format!("{i}-127.0.0.1:{p}")).collect();
    let clients: Vec<String> = ids.iter().zip(listen).map(|(i, p)| format!("{i}-127.0.0.1:{p}")).collect();
    let me = ids.iter().position(|i| *i == id).unwrap();
    let path = dir.join(format!("{id}.toml"));
    let text = format!(
        "brokerClusterName = \"c\"\nbrokerName = \"broker-a\"\nbrokerIP1 = \"127.0.0.1\"\nlistenPort = {}\n\
         storePathRootDir = \"{}\"\nmappedFileSizeCommitLog = 4194304\nmaxMessageSize = 65536\ndiskMaxUsedSpaceRatio = 95\nflushDiskType = \"SYNC_FLUSH\"\n\
         enableDLegerCommitLog = true\ndLegerGroup = \"g\"\ndLegerPeers = \"{}\"\ndLegerSelfId = \"{id}\"\ndLegerClientEndpoints = \"{}\"\n\
         dLegerHeartbeatIntervalMs = 50\ndLegerElectionTimeoutMinMs = 300\ndLegerElectionTimeoutMaxMs = 600\n{extra}",
        listen[me],
        root.display(),
        peers.join(";"),
        clients.join(";")
    );
    let c = write_config(&path, &text);
    (path, c)
}

async fn start_standalone(config: &BrokerConfig) -> Node {
    let c = config.clone();
    let opened = tokio::task::spawn_blocking(move || core::open_store(&c)).await.unwrap().unwrap();
    let replicator: Arc<dyn Replicator> =
        Arc::new(StandaloneReplicator::start(opened.log.clone(), config.node_id(), config.flush_disk_type).unwrap());
    let core = BrokerCore::start(CoreOptions::from_config(config), opened, replicator.clone(), None).await.unwrap();
    Node { core, replicator }
}

async fn start_raft(config: &BrokerConfig) -> Node {
    let c = config.clone();
    let opened = tokio::task::spawn_blocking(move || core::open_store(&c)).await.unwrap().unwrap();
    let group = RaftGroupConfig::from_broker(config).unwrap();
    let replicator: Arc<dyn Replicator> = Arc::new(RaftReplicator::start(group, opened.log.clone()).await.unwrap());
    let core = BrokerCore::start(CoreOptions::from_config(config), opened, replicator.clone(), None).await.unwrap();
    Node { core, replicator }
}

async fn stop(node: Node) {
    node.replicator.shutdown().await.unwrap();
    node.core.stop().await.unwrap();
}

fn message(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: TOPIC.to_string(),
        message_id: id.to_string(),
        tag: Some("TagA".into()),
        keys: vec![id.to_string()],
        properties: BTreeMap::new(),
        message_group: None,
        queue_id: None,
        born_timestamp_ms: 1_700_000_000_000,
        born_host: "127.0.0.1:5000".into(),
        delivery_timestamp_ms: None,
        reconsume_times: 0,
        body: format!("body of {id}").into_bytes(),
    }
}

/// (queue, offset) -> message id, for every message sent.
async fn send(node: &Node, prefix: &str, count: usize, into: &mut HashMap<(u32, u64), String>) {
    let backend: Arc<dyn MessagingBackend> = node.core.clone();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let out = backend.send(message(&id)).await.unwrap();
        assert!(into.insert((out.queue_id, out.queue_offset), id).is_none());
    }
}

async fn read_all(backend: &dyn MessagingBackend) -> HashMap<(u32, u64), (String, Vec<u8>)> {
    let mut out = HashMap::new();
    for q in 0..QUEUES {
        let max = backend.max_offset(TOPIC, q).await.unwrap();
        let mut offset = backend.min_offset(TOPIC, q).await.unwrap();
        // Bounded: one round per message at most.
        for _ in 0..=max {
            if offset >= max {
                break;
            }
            let batch = backend.read(TOPIC, q, offset, 64, 1 << 20).await.unwrap();
            assert!(!batch.is_empty());
            for m in batch {
                out.insert((q, m.queue_offset), (m.message_id, m.body));
                offset = m.queue_offset + 1;
            }
        }
    }
    out
}

/// Every file under `dir` with its bytes, for byte-for-byte comparisons.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn mqadmin(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mqadmin")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The example validator from `plugins/dist` (built by `plugins/build.sh --rust-only`).
fn validator_dir(dir: &Path) -> PathBuf {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist");
    let plugin_dir = dir.join("validators");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for ext in ["wasm", "toml"] {
        let from = dist.join(format!("replication-upgrade-validator.{ext}"));
        assert!(from.exists(), "{} missing: run plugins/build.sh --rust-only", from.display());
        std::fs::copy(&from, plugin_dir.join(format!("replication-upgrade-validator.{ext}"))).unwrap();
    }
    plugin_dir
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".pre-upgrade-"))
        .collect();
    v.sort();
    v
}

struct OldCluster {
    a_path: PathBuf,
    b_path: PathBuf,
    /// (queue, offset) -> message id of every message on the master `a`.
    on_a: HashMap<(u32, u64), String>,
    /// Last entry the two nodes share.
    common_last: u64,
    a_last: u64,
}

/// Master `a` (broker-a/0) and slave `b` (broker-a/1), standalone, stores under `dir/a` and
/// `dir/b`: topic + COMMON messages on a; b is a byte copy of it (as RocketMQ HA makes);
/// then each takes writes the other never sees.
async fn old_cluster(dir: &Path, ports: &[u16]) -> OldCluster {
    let (a_path, a_cfg) = old_config(dir, "a", 0, ports[0]);
    let (b_path, b_cfg) = old_config(dir, "b", 1, ports[1]);
    let mut on_a = HashMap::new();
    let node = start_standalone(&a_cfg).await;
    node.core.update_topic(TopicSpec::new(TOPIC, QUEUES)).await.unwrap();
    send(&node, "common", COMMON, &mut on_a).await;
    let common_last = node.core.commit_log().last_index();
    stop(node).await;
    copy_dir(&dir.join("a"), &dir.join("b"));
    let mut on_b = on_a.clone();
    let node = start_standalone(&a_cfg).await;
    send(&node, "a-only", A_EXTRA, &mut on_a).await;
    let a_last = node.core.commit_log().last_index();
    stop(node).await;
    let node = start_standalone(&b_cfg).await;
    send(&node, "b-only", B_EXTRA, &mut on_b).await;
    stop(node).await;
    assert!(a_last > common_last);
    OldCluster { a_path, b_path, on_a, common_last, a_last }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_master_slave_upgrades_to_raft_group_with_every_old_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = free_ports(8);
    let OldCluster { a_path, b_path, on_a, common_last, a_last } = old_cluster(dir, &ports).await;

    // New group: n0 in place of a's store, n1 in place of b's, n2 fresh.
    let listen = &ports[2..5];
    let raft = &ports[5..8];
    let (n0_path, n0_cfg) = new_config(dir, "n0", &dir.join("a"), listen, raft, "");
    let (n1_path, n1_cfg) = new_config(dir, "n1", &dir.join("b"), listen, raft, "");
    let (n2_path, n2_cfg) = new_config(dir, "n2", &dir.join("n2"), listen, raft, "");
    let plugins = validator_dir(dir);
    let s = |p: &Path| p.display().to_string();
    let (a_s, b_s, n0_s, n1_s, n2_s, pl_s) =
        (s(&a_path), s(&b_path), s(&n0_path), s(&n1_path), s(&n2_path), s(&plugins));
    let plan_args =
        ["--old", &a_s, "--old", &b_s, "--new", &n0_s, "--new", &n1_s, "--new", &n2_s, "--plugin-dir", &pl_s];

    let before_a = snapshot(&dir.join("a"));
    let before_b = snapshot(&dir.join("b"));

    // Check: refused, the divergence named by the host and by the plugin.
    let (ok, out) = mqadmin(&[&["upgradeCheck"], &plan_args[..]].concat());
    eprintln!("upgradeCheck output:\n{out}");
    assert!(!ok, "{out}");
    let diverge_at = common_last + 1;
    assert!(out.contains(&format!("diverge at entry {diverge_at}")), "{out}");
    assert!(out.contains("commitlog-divergence (wasmq)"), "{out}");
    assert!(
        out.contains("(plugins): [replication-upgrade-validator] nodes broker-a/0 and broker-a/1 diverge"),
        "{out}"
    );
    assert!(out.contains("REFUSED"), "{out}");

    // Upgrade without --source: refused, nothing changed.
    let (ok, out) = mqadmin(&[&["upgrade"], &plan_args[..]].concat());
    assert!(!ok, "{out}");
    assert_eq!(snapshot(&dir.join("a")), before_a);
    assert_eq!(snapshot(&dir.join("b")), before_b);
    assert!(backups(dir).is_empty());
    assert!(!dir.join("n2").exists());

    // JSON check with the master as source: accepted, b's extra entries named.
    let (ok, out) = mqadmin(&[&["upgradeCheck", "--json", "--source", "broker-a/0"], &plan_args[..]].concat());
    assert!(ok, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["accepted"], true);
    assert_eq!(j["source"], "broker-a/0");
    assert_eq!(j["divergences"][0]["node"], "broker-a/1");
    assert_eq!(j["divergences"][0]["index"], diverge_at);
    assert_eq!(j["divergences"][0]["node_entries_dropped"], B_EXTRA as u64);
    assert_eq!(j["old"][0]["last_index"], a_last);
    assert_eq!(snapshot(&dir.join("a")), before_a);

    let (ok, out) = mqadmin(&[&["upgrade", "--source", "broker-a/0"], &plan_args[..]].concat());
    eprintln!("upgrade output:\n{out}");
    assert!(ok, "{out}");
    assert!(out.contains("DONE"), "{out}");
    let kept = backups(dir);
    assert_eq!(kept.len(), 2, "{kept:?}");
    // The backups are the old stores, byte for byte.
    let a_backup = kept.iter().find(|p| p.to_string_lossy().contains("/a.pre-upgrade-")).unwrap();
    let rebased: BTreeMap<PathBuf, Vec<u8>> = snapshot(a_backup)
        .into_iter()
        .map(|(p, b)| (dir.join("a").join(p.strip_prefix(a_backup).unwrap()), b))
        .collect();
    assert_eq!(rebased, before_a);

    // Upgrading again before finishing is refused (it would back up the new copies).
    let (ok, out) = mqadmin(&[&["upgradeCheck", "--source", "broker-a/0"], &plan_args[..]].concat());
    assert!(!ok, "{out}");
    assert!(out.contains("upgrade-in-progress (wasmq)"), "{out}");

    // Too early to finish: the new group has not run.
    let (ok, out) = mqadmin(&["upgradeFinish", "--new", &n0_s, "--new", &n1_s, "--new", &n2_s]);
    assert!(!ok, "{out}");
    assert!(out.contains("not finished"), "{out}");
    assert_eq!(backups(dir).len(), 2);

    // Start the group; every member applies the old log once the first leader commits.
    let nodes = vec![start_raft(&n0_cfg).await, start_raft(&n1_cfg).await, start_raft(&n2_cfg).await];
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        assert!(Instant::now() < deadline, "no leader applied the old log in time");
        let ready = nodes.iter().all(|n| n.core.applied_index() > a_last);
        if let Some(l) = nodes.iter().position(|n| n.replicator.status().role == Role::Leader)
            && ready
        {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(nodes[leader].replicator.status().term >= 1);
    for node in &nodes {
        let got = read_all(node.core.as_ref()).await;
        assert_eq!(got.len(), on_a.len(), "every old message of the source, nothing else");
        for (at, id) in &on_a {
            let (got_id, body) = &got[at];
            assert_eq!(got_id, id, "same queue offset as on the old master");
            assert_eq!(body, &format!("body of {id}").into_bytes());
        }
        assert!(got.values().all(|(id, _)| !id.starts_with("b-only")));
    }
    // The group takes new writes after the old ones.
    let mut after = HashMap::new();
    send(&nodes[leader], "after", 3, &mut after).await;
    for (q, off) in after.keys() {
        let old_max = on_a.keys().filter(|(oq, _)| oq == q).map(|(_, o)| o + 1).max().unwrap_or(0);
        assert!(*off >= old_max);
    }

    // Committed past the old end: finish removes the backups and manifests.
    let (ok, out) = mqadmin(&["upgradeFinish", "--new", &n0_s, "--new", &n1_s, "--new", &n2_s]);
    assert!(ok, "{out}");
    assert!(backups(dir).is_empty());
    assert!(!dir.join("a").join("upgrade.json").exists());
    for node in nodes {
        stop(node).await;
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.toml").display().to_string();
    let (ok, out) = mqadmin(&["upgradeCheck", "--old", &missing, "--new", &missing]);
    assert!(!ok);
    assert!(out.contains("nope.toml"), "{out}");
    let (ok, out) = mqadmin(&["upgradeCheck", "--old", &missing]);
    assert!(!ok);
    assert!(out.contains("--new"), "{out}");
}

/// Broker processes this test started; killed (by their own pid) if the test fails early.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

mod v2 {
    pub use wasmq_proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
    pub use wasmq_proto::apache::rocketmq::v2::*;
}

/// Every message of `TOPIC` a member serves, through the RocketMQ v2 PullMessage RPC:
/// (queue, offset) -> (message id, body). Bounded: at most 64 pulls per queue.
async fn pull_all(endpoint: u16) -> Result<HashMap<(u32, u64), (String, Vec<u8>)>, String> {
    let mut client =
        v2::MessagingServiceClient::connect(format!("http://127.0.0.1:{endpoint}")).await.map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for q in 0..QUEUES {
        let mut offset = 0i64;
        for _ in 0..64 {
            let mut req = tonic::Request::new(v2::PullMessageRequest {
                group: Some(v2::Resource { resource_namespace: String::new(), name: "upgrade-check".into() }),
                message_queue: Some(v2::MessageQueue {
                    topic: Some(v2::Resource { resource_namespace: String::new(), name: TOPIC.into() }),
                    id: q as i32,
                    permission: v2::Permission::ReadWrite as i32,
                    broker: None,
                    accept_message_types: vec![],
                }),
                offset,
                batch_size: 32,
                filter_expression: None,
                long_polling_timeout: Some(prost_types::Duration { seconds: 0, nanos: 100_000_000 }),
            });
            req.metadata_mut().insert("x-mq-client-id", "upgrade-test".parse().unwrap());
            let mut stream = client.pull_message(req).await.map_err(|e| e.to_string())?.into_inner();
            let mut got = 0;
            let mut next = offset;
            while let Some(resp) = stream.message().await.map_err(|e| e.to_string())? {
                match resp.content {
                    Some(v2::pull_message_response::Content::Message(m)) => {
                        let sp = m.system_properties.unwrap();
                        out.insert((q, sp.queue_offset.unwrap() as u64), (sp.message_id, m.body));
                        got += 1;
                    }
                    Some(v2::pull_message_response::Content::NextOffset(n)) => next = n,
                    _ => {}
                }
            }
            if got == 0 {
                break;
            }
            offset = next;
        }
    }
    Ok(out)
}

fn scrape_role(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.starts_with("wasmq_raft_role{") && l.ends_with(" 1"))
        .and_then(|l| l.split('"').nth(1).map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_group_runs_as_real_mqbroker_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = free_ports(11);
    let OldCluster { a_path, b_path, on_a, a_last, .. } = old_cluster(dir, &ports).await;
    let (listen, raft, metrics) = (&ports[2..5], &ports[5..8], &ports[8..11]);
    let extra = |i: usize| format!("metricsPort = {}\n", metrics[i]);
    let (n0, _) = new_config(dir, "n0", &dir.join("a"), listen, raft, &extra(0));
    let (n1, _) = new_config(dir, "n1", &dir.join("b"), listen, raft, &extra(1));
    let (n2, _) = new_config(dir, "n2", &dir.join("n2"), listen, raft, &extra(2));
    let s = |p: &Path| p.display().to_string();
    let (a_s, b_s, n0_s, n1_s, n2_s) = (s(&a_path), s(&b_path), s(&n0), s(&n1), s(&n2));
    let (ok, out) = mqadmin(&[
        "upgrade",
        "--source",
        "broker-a/0",
        "--old",
        &a_s,
        "--old",
        &b_s,
        "--new",
        &n0_s,
        "--new",
        &n1_s,
        "--new",
        &n2_s,
    ]);
    assert!(ok, "{out}");

    let mut procs = Processes(Vec::new());
    for (i, cfg) in [&n0, &n1, &n2].iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("n{i}.log"))).unwrap();
        procs.0.push(
            Command::new(env!("CARGO_BIN_EXE_mqbroker"))
                .args(["-c", &s(cfg)])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    let logs = || {
        (0..3)
            .map(|i| std::fs::read_to_string(dir.join(format!("n{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };

    // Every member serves every old message of the source at its old queue offset.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, port) in listen.iter().enumerate() {
        loop {
            assert!(Instant::now() < deadline, "member n{i} did not serve the old messages in time:\n{}", logs());
            if let Ok(got) = pull_all(*port).await
                && got.len() == on_a.len()
            {
                for (at, id) in &on_a {
                    assert_eq!(&got[at].0, id);
                    assert_eq!(got[at].1, format!("body of {id}").into_bytes());
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The metrics endpoints agree: exactly one leader.
    let roles: Vec<Option<String>> = metrics.iter().map(|p| scrape_role(*p)).collect();
    assert_eq!(roles.iter().filter(|r| r.as_deref() == Some("LEADER")).count(), 1, "{roles:?}");
    assert_eq!(roles.iter().filter(|r| r.as_deref() == Some("FOLLOWER")).count(), 2, "{roles:?}");

    let (ok, out) = mqadmin(&["upgradeFinish", "--new", &n0_s, "--new", &n1_s, "--new", &n2_s]);
    assert!(ok, "{out}\n{}", logs());
    assert!(out.contains("past the old end"), "{out}");
    assert!(backups(dir).is_empty());
    assert!(a_last > 0);

    // Graceful stop.
    for c in &procs.0 {
        // SAFETY: plain kill(2) on a child this test spawned and has not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for c in &mut procs.0 {
        let status = c.wait().unwrap();
        assert!(status.success(), "mqbroker exit {status}:\n{}", logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_plans_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = free_ports(8);
    let OldCluster { a_path, b_path, .. } = old_cluster(dir, &ports).await;
    let (listen, raft) = (&ports[2..5], &ports[5..8]);
    let (n0, _) = new_config(dir, "n0", &dir.join("a"), listen, raft, "");
    let (n1, _) = new_config(dir, "n1", &dir.join("b"), listen, raft, "");
    let (n2, _) = new_config(dir, "n2", &dir.join("n2"), listen, raft, "");
    // Someone else's data where n2's store would go.
    std::fs::create_dir_all(dir.join("n2")).unwrap();
    std::fs::write(dir.join("n2").join("precious"), b"keep me").unwrap();
    // And the old master still running (something listens on its port).
    let _running = std::net::TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
    let before = snapshot(dir);
    let s = |p: &Path| p.display().to_string();
    let (a_s, b_s, n0_s, n1_s, n2_s) = (s(&a_path), s(&b_path), s(&n0), s(&n1), s(&n2));
    let (ok, out) = mqadmin(&[
        "upgrade",
        "--source",
        "broker-a/0",
        "--old",
        &a_s,
        "--old",
        &b_s,
        "--new",
        &n0_s,
        "--new",
        &n1_s,
        "--new",
        &n2_s,
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("new-store-not-empty (wasmq)"), "{out}");
    assert!(out.contains("broker-running (wasmq)"), "{out}");
    assert!(out.contains("REFUSED"), "{out}");
    assert_eq!(snapshot(dir), before, "a refused upgrade changes nothing");
    // An unknown --source is a usage error, not a guess.
    let (ok, out) = mqadmin(&["upgradeCheck", "--source", "broker-z/9", "--old", &a_s, "--new", &n0_s]);
    assert!(!ok);
    assert!(out.contains("broker-z/9") && out.contains("broker-a/0"), "{out}");
}

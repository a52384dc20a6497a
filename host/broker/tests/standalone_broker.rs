//! A standalone broker end to end, in process: the real store, the standalone replicator,
//! the broker core, driven through the `MessagingBackend` trait the v2 front end uses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmq_broker::config::{BrokerConfig, FlushDiskType, StoreCheck};
use wasmq_broker::core::{self, BrokerCore, CoreOptions, TopicSpec};
use wasmq_broker::messaging::backend::{BackendError, MessagingBackend, OutgoingMessage};
use wasmq_broker::metrics::BrokerMetrics;
use wasmq_broker::replication::standalone::StandaloneReplicator;
use wasmq_broker::replication::{CommittedRange, EntryIndex, ReplicationError, ReplicationStatus, Replicator, Role};

struct Node {
    core: Arc<BrokerCore>,
    replicator: Arc<dyn Replicator>,
}

fn config(dir: &std::path::Path, flush: FlushDiskType) -> BrokerConfig {
    let mut c = BrokerConfig::default();
    c.store_path_root_dir = dir.display().to_string();
    c.mapped_file_size_commit_log = 4 << 20;
    c.max_message_size = 64 * 1024;
    // The shared CI disk's fill level is not this test's subject (disk guard at 99 %).
    c.disk_max_used_space_ratio = 95;
    c.flush_disk_type = flush;
    c.listen_port = 18081;
    c.validate(std::path::Path::new("test"), StoreCheck::Create).unwrap();
    c
}

/// Counts `propose` calls (commit rounds) on their way to the real replicator; once
/// `stalled`, never answers them (a leader that lost its followers).
struct CountingReplicator {
    inner: StandaloneReplicator,
    proposals: AtomicU64,
    stalled: AtomicBool,
}

#[async_trait::async_trait]
impl Replicator for CountingReplicator {
    async fn propose(&self, payloads: Vec<bytes::Bytes>) -> Result<CommittedRange, ReplicationError> {
        self.proposals.fetch_add(1, Ordering::Relaxed);
        if self.stalled.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        self.inner.propose(payloads).await
    }
    fn status(&self) -> ReplicationStatus {
        self.inner.status()
    }
    fn role(&self) -> Role {
        self.inner.role()
    }
    fn committed(&self) -> tokio::sync::watch::Receiver<EntryIndex> {
        self.inner.committed()
    }
    async fn transfer_leadership(&self, target_id: &str) -> Result<(), ReplicationError> {
        self.inner.transfer_leadership(target_id).await
    }
    async fn shutdown(&self) -> Result<(), ReplicationError> {
        self.inner.shutdown().await
    }
}

async fn start(config: &BrokerConfig) -> Node {
    start_counting(config, core::COMMIT_TIMEOUT_MS_DEFAULT).await.0
}

/// A node whose replicator counts proposals.
async fn start_counting(config: &BrokerConfig, commit_timeout_ms: u64) -> (Node, Arc<CountingReplicator>) {
    let c = config.clone();
    let opened = tokio::task::spawn_blocking(move || core::open_store(&c)).await.unwrap().unwrap();
    let counting = Arc::new(CountingReplicator {
        inner: StandaloneReplicator::start(opened.log.clone(), config.node_id(), config.flush_disk_type).unwrap(),
        proposals: AtomicU64::new(0),
        stalled: AtomicBool::new(false),
    });
    let replicator: Arc<dyn Replicator> = counting.clone();
    let options = CoreOptions { commit_timeout_ms, ..CoreOptions::from_config(config) };
    let core = BrokerCore::start(options, opened, replicator.clone(), None).await.unwrap();
    (Node { core, replicator }, counting)
}

async fn stop(node: Node) {
    node.replicator.shutdown().await.unwrap();
    node.core.stop().await.unwrap();
}

fn message(topic: &str, id: String, body: Vec<u8>) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.to_string(),
        message_id: id,
        tag: Some("TagA".into()),
        keys: vec!["k1".into()],
        properties: BTreeMap::from([("p".to_string(), "v".to_string())]),
        message_group: None,
        queue_id: None,
        born_timestamp_ms: 1_700_000_000_000,
        born_host: "127.0.0.1:5000".into(),
        delivery_timestamp_ms: None,
        reconsume_times: 0,
        body,
    }
}

/// Reads a whole queue and returns (offset, message id, body) in order.
async fn read_all(backend: &dyn MessagingBackend, topic: &str, queue_id: u32) -> Vec<(u64, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = backend.min_offset(topic, queue_id).await.unwrap();
    let max = backend.max_offset(topic, queue_id).await.unwrap();
    // Bounded: at most one round per message plus one.
    for _ in 0..=max {
        if offset >= max {
            break;
        }
        let batch = backend.read(topic, queue_id, offset, 100, 1 << 20).await.unwrap();
        assert!(!batch.is_empty(), "no messages at {offset} < max {max}");
        for m in batch {
            assert_eq!(m.queue_offset, offset, "offsets must be contiguous");
            assert_eq!(m.topic, topic);
            assert_eq!(m.tag.as_deref(), Some("TagA"));
            assert_eq!(m.properties.get("p").map(String::as_str), Some("v"));
            out.push((m.queue_offset, m.message_id, m.body));
            offset += 1;
        }
    }
    assert_eq!(offset, max);
    out
}

async fn send_concurrently_read_back_restart(flush: FlushDiskType) {
    const PRODUCERS: usize = 8;
    const PER_PRODUCER: usize = 150;
    const QUEUES: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), flush);
    let node = start(&cfg).await;
    node.core.update_topic(TopicSpec::new("orders", QUEUES)).await.unwrap();
    let backend: Arc<dyn MessagingBackend> = node.core.clone();

    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..PER_PRODUCER {
                let id = format!("m-{p}-{i}");
                let body = format!("body of {id}").into_bytes();
                let outcome = backend.send(message("orders", id.clone(), body.clone())).await.unwrap();
                assert_eq!(outcome.message_id, id);
                assert_eq!(outcome.topic, "orders");
                sent.push((outcome.queue_id, outcome.queue_offset, id, body));
            }
            sent
        }));
    }
    let mut expected: HashMap<(u32, u64), (String, Vec<u8>)> = HashMap::new();
    for t in tasks {
        for (q, off, id, body) in t.await.unwrap() {
            assert!(expected.insert((q, off), (id, body)).is_none(), "two sends got {q}/{off}");
        }
    }
    assert_eq!(expected.len(), PRODUCERS * PER_PRODUCER);

    let check = |backend: Arc<dyn MessagingBackend>, expected: HashMap<(u32, u64), (String, Vec<u8>)>| async move {
        let mut total = 0;
        for q in 0..QUEUES {
            let msgs = read_all(backend.as_ref(), "orders", q).await;
            total += msgs.len();
            for (off, id, body) in msgs {
                let (want_id, want_body) = &expected[&(q, off)];
                assert_eq!(&id, want_id);
                assert_eq!(&body, want_body);
            }
        }
        assert_eq!(total, expected.len());
    };
    check(backend.clone(), expected.clone()).await;
    // Per-producer order is kept within each queue (one producer sends sequentially).
    let status = node.core.status();
    assert_eq!(status.topics.len(), 1);
    assert_eq!(status.topics[0].queues.iter().map(|q| q.max_offset).sum::<u64>(), expected.len() as u64);
    assert_eq!(status.applied_index, status.replication.commit_index);

    backend.commit_offset("group-a", "orders", 1, 7).await.unwrap();
    drop(backend);
    stop(node).await;

    // Restart from the same directory: same topics, messages, offsets.
    let node = start(&cfg).await;
    let backend: Arc<dyn MessagingBackend> = node.core.clone();
    check(backend.clone(), expected.clone()).await;
    assert_eq!(backend.consumer_offset("group-a", "orders", 1).await.unwrap(), Some(7));
    assert_eq!(backend.consumer_offset("group-b", "orders", 1).await.unwrap(), None);
    // New sends continue after the old offsets.
    let before = backend.max_offset("orders", 2).await.unwrap();
    let mut m = message("orders", "after-restart".into(), b"x".to_vec());
    m.queue_id = Some(2);
    let outcome = backend.send(m).await.unwrap();
    assert_eq!((outcome.queue_id, outcome.queue_offset), (2, before));
    drop(backend);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_read_back_in_order_and_survive_restart_async_flush() {
    send_concurrently_read_back_restart(FlushDiskType::AsyncFlush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_read_back_in_order_and_survive_restart_sync_flush() {
    send_concurrently_read_back_restart(FlushDiskType::SyncFlush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), FlushDiskType::AsyncFlush);
    let node = start(&cfg).await;
    let backend: Arc<dyn MessagingBackend> = node.core.clone();
    node.core.update_topic(TopicSpec::new("t", 2)).await.unwrap();
    let last_index = node.core.commit_log().last_index();

    let too_big = message("t", "big".into(), vec![7u8; 64 * 1024 + 1]);
    match backend.send(too_big).await {
        Err(BackendError::MessageTooLarge { size_bytes, max_bytes }) => {
            assert_eq!((size_bytes, max_bytes), (64 * 1024 + 1, 64 * 1024))
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // Exactly the limit is fine.
    backend.send(message("t", "max".into(), vec![7u8; 64 * 1024])).await.unwrap();

    match backend.send(message("nope", "x".into(), b"x".to_vec())).await {
        Err(BackendError::TopicNotFound(t)) => assert_eq!(t, "nope"),
        other => panic!("expected TopicNotFound, got {other:?}"),
    }
    assert!(backend.topic("nope").await.unwrap().is_none());
    assert!(matches!(backend.read("nope", 0, 0, 10, 1 << 20).await, Err(BackendError::TopicNotFound(_))));
    assert!(matches!(backend.read("t", 9, 0, 10, 1 << 20).await, Err(BackendError::BadRequest(_))));
    // Only the one good message was written.
    assert_eq!(node.core.commit_log().last_index(), last_index + 1);

    // Reserved topics are created on demand, with one queue.
    let retry = backend.send(message("%RETRY%group-a", "r".into(), b"r".to_vec())).await.unwrap();
    assert_eq!((retry.queue_id, retry.queue_offset), (0, 0));
    let info = backend.topic("%RETRY%group-a").await.unwrap().unwrap();
    assert_eq!(info.write_queue_count, 1);

    // SQL92 without a filter plugin is refused; tag filtering passes everything through.
    let read = backend.read("t", 0, 0, 10, 1 << 20).await.unwrap();
    let all = read.len();
    let verdicts =
        backend.filter("g", "t", wasmq_broker::messaging::backend::FilterKind::Tag, "*", &read).await.unwrap();
    assert_eq!(verdicts, vec![true; all]);
    assert!(matches!(
        backend.filter("g", "t", wasmq_broker::messaging::backend::FilterKind::Sql92, "a > 1", &read).await,
        Err(BackendError::BadRequest(_))
    ));
    drop(backend);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gets_one_result_per_message_and_stores_the_good_ones_in_order() {
    const BATCH: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), FlushDiskType::AsyncFlush);
    let (node, counting) = start_counting(&cfg, core::COMMIT_TIMEOUT_MS_DEFAULT).await;
    let core = node.core.clone();
    // As the server wires it: the metered wrapper in front of the core.
    let backend: Arc<dyn MessagingBackend> = BrokerMetrics::new().wrap(core.clone());
    core.update_topic(TopicSpec::new("b", 1)).await.unwrap();
    let last_index = core.commit_log().last_index();
    let proposals_before = counting.proposals.load(Ordering::Relaxed);

    let batch: Vec<OutgoingMessage> = (0..BATCH)
        .map(|i| match i {
            10 => message("b", format!("m{i}"), vec![7u8; 64 * 1024 + 1]),
            20 => message("b", String::new(), b"no id".to_vec()),
            30 => message("nope", format!("m{i}"), b"x".to_vec()),
            _ => message("b", format!("m{i}"), format!("body {i}").into_bytes()),
        })
        .collect();
    let results = backend.send_batch(batch).await;
    assert_eq!(results.len(), BATCH, "one result per message");
    assert_eq!(
        counting.proposals.load(Ordering::Relaxed) - proposals_before,
        1,
        "the accepted messages of a batch are one proposal (one commit round)"
    );
    let mut next_offset = 0;
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (10, Err(BackendError::MessageTooLarge { .. }))
            | (20, Err(BackendError::BadRequest(_)))
            | (30, Err(BackendError::TopicNotFound(_))) => {}
            (10 | 20 | 30, other) => panic!("message {i}: expected its own error, got {other:?}"),
            (_, Ok(sent)) => {
                assert_eq!((sent.message_id.as_str(), sent.queue_offset), (format!("m{i}").as_str(), next_offset));
                next_offset += 1;
            }
            (_, Err(e)) => panic!("message {i} failed: {e}"),
        }
    }
    // The good ones, once each, in request order, and nothing else in the log.
    let stored = read_all(backend.as_ref(), "b", 0).await;
    let expected: Vec<String> = (0..BATCH).filter(|i| ![10, 20, 30].contains(i)).map(|i| format!("m{i}")).collect();
    assert_eq!(stored.iter().map(|(_, id, _)| id.clone()).collect::<Vec<_>>(), expected);
    assert_eq!(core.commit_log().last_index(), last_index + expected.len() as u64);
    drop((backend, core));
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_send_and_times_out_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), FlushDiskType::AsyncFlush);
    let node = start(&cfg).await;
    let backend: Arc<dyn MessagingBackend> = node.core.clone();
    node.core.update_topic(TopicSpec::new("lp", 1)).await.unwrap();

    let started = std::time::Instant::now();
    let max = backend.wait_for_new("lp", 0, 0, Duration::from_millis(200)).await.unwrap();
    assert_eq!(max, 0);
    assert!(started.elapsed() >= Duration::from_millis(190));

    let waiter = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.wait_for_new("lp", 0, 0, Duration::from_secs(30)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    backend.send(message("lp", "wake".into(), b"w".to_vec())).await.unwrap();
    let max = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("long poll did not wake").unwrap();
    assert_eq!(max, 1);
    drop(backend);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_group_keeps_one_queue() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), FlushDiskType::AsyncFlush);
    let node = start(&cfg).await;
    let backend: Arc<dyn MessagingBackend> = node.core.clone();
    node.core.update_topic(TopicSpec::new("fifo", 8)).await.unwrap();
    let mut queue = None;
    for i in 0..20 {
        let mut m = message("fifo", format!("g{i}"), vec![i as u8]);
        m.message_group = Some("order-1".into());
        let o = backend.send(m).await.unwrap();
        assert_eq!(*queue.get_or_insert(o.queue_id), o.queue_id);
        assert_eq!(o.queue_offset, i as u64);
    }
    let msgs = read_all(backend.as_ref(), "fifo", queue.unwrap()).await;
    let bodies: Vec<u8> = msgs.iter().map(|(_, _, b)| b[0]).collect();
    assert_eq!(bodies, (0..20).collect::<Vec<u8>>());
    drop(backend);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_topic_on_first_lookup_or_send_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), FlushDiskType::AsyncFlush);
    cfg.auto_create_topic_enable = true;
    cfg.default_topic_queue_nums = 3;
    let node = start(&cfg).await;
    let backend: Arc<dyn MessagingBackend> = node.core.clone();
    let info = backend.topic("looked-up").await.unwrap().unwrap();
    assert_eq!((info.read_queue_count, info.write_queue_count), (3, 3));
    let o = backend.send(message("sent-first", "a".into(), b"a".to_vec())).await.unwrap();
    assert!(o.queue_id < 3);
    // Invalid names are never created.
    assert!(backend.topic("bad name").await.unwrap().is_none());
    assert_eq!(node.core.topics().len(), 2);
    drop(backend);
    stop(node).await;
}

/// The replicator keeps no timer: the core answers a send it never commits within one
/// commit timeout, as a timeout that says so, and the broker goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_never_commits_times_out_within_the_commit_timeout() {
    const COMMIT_TIMEOUT_MS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), FlushDiskType::AsyncFlush);
    let (node, counting) = start_counting(&cfg, COMMIT_TIMEOUT_MS).await;
    let backend: Arc<dyn MessagingBackend> = BrokerMetrics::new().wrap(node.core.clone());
    node.core.update_topic(TopicSpec::new("t", 1)).await.unwrap();

    counting.stalled.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        backend.send_batch(vec![message("t", "m0".into(), b"x".to_vec())]),
    )
    .await
    .expect("the core bounds a send the replicator never answers");
    match &results[..] {
        [Err(BackendError::Timeout(why))] => {
            assert_eq!(why, &format!("not committed within {COMMIT_TIMEOUT_MS} ms"))
        }
        other => panic!("expected one timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(COMMIT_TIMEOUT_MS), "answered before its deadline");

    counting.stalled.store(false, Ordering::Relaxed);
    let results = backend.send_batch(vec![message("t", "m1".into(), b"y".to_vec())]).await;
    assert!(matches!(&results[..], [Ok(sent)] if sent.message_id == "m1"), "{results:?}");
    drop(backend);
    stop(node).await;
}

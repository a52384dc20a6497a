//! MessageStore: applying committed entries, restart, crash repair, retention.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::commitlog::FlushMode;
use crate::record::{MessageRecord, MessageType, Record, TopicConfigRecord};
use crate::retention::RetentionPolicy;
use crate::store::{Applied, MessageStore, MessageStoreConfig};

fn cfg(dir: &Path) -> MessageStoreConfig {
    let mut c = MessageStoreConfig::new(dir);
    c.commitlog.segment_size_bytes = 8192;
    c.commitlog.flush_mode = FlushMode::Sync;
    c.commitlog.entry_size_max_bytes = 2048;
    c.commitlog.index_entries_per_file = 64;
    c.cq_entries_per_file = 16;
    c.checkpoint_interval_entries = 1_000_000;
    c
}

fn open(dir: &Path) -> MessageStore {
    MessageStore::open(cfg(dir)).unwrap().0
}

fn message(topic: &str, queue_id: u32, n: u64) -> Record {
    Record::Message(MessageRecord {
        topic: topic.into(),
        queue_id,
        tag: Some(format!("tag{}", n % 3)),
        keys: vec![format!("k{n}")],
        properties: vec![("p".into(), n.to_string())],
        born_timestamp_ms: n as i64,
        store_timestamp_ms: n as i64 + 1,
        born_host: "127.0.0.1:1".into(),
        message_id: format!("id-{n}"),
        body: vec![n as u8; (n % 200) as usize + 10],
        ..Default::default()
    })
}

/// A deterministic mixed workload: entry `n` of the log.
fn workload(n: u64) -> Record {
    match n % 10 {
        0 => Record::ConsumerOffset { group: "G".into(), topic: "A".into(), queue_id: (n % 3) as u32, offset: n / 4 },
        5 if n % 20 == 5 => Record::TopicConfig(TopicConfigRecord {
            topic: if n % 40 == 5 { "A".into() } else { "B".into() },
            read_queue_nums: 4,
            write_queue_nums: 4,
            perm: 6,
            message_type: MessageType::Normal,
        }),
        9 if n % 30 == 9 => Record::Noop,
        _ => message(if n.is_multiple_of(4) { "B" } else { "A" }, (n % 3) as u32, n),
    }
}

fn append_records(store: &MessageStore, records: impl IntoIterator<Item = Record>) {
    for r in records {
        let bytes = r.encode().unwrap();
        store.log().append(1, &[&bytes]).unwrap();
    }
    store.log().flush().unwrap();
}

/// A store with entries `1..=entries` of the workload, all applied: what a crashed store
/// must recover to.
fn workload_applied(dir: &Path, entries: u64) -> MessageStore {
    let store = open(dir);
    append_records(&store, (1..=entries).map(workload));
    apply_all(&store);
    store
}

fn apply_all(store: &MessageStore) -> Vec<Applied> {
    let mut out = Vec::new();
    while store.applied_index() < store.log().last_index() {
        out.extend(store.apply_committed(store.log().last_index()).unwrap());
    }
    out
}

/// Everything observable through the read API, for comparing stores.
fn observe(store: &MessageStore) -> String {
    let mut s = format!(
        "applied={} topics={:?} offsets={:?}\n",
        store.applied_index(),
        store.topics(),
        store.consumer_offsets()
    );
    for topic in ["A", "B", "C"] {
        for q in 0..3 {
            let msgs = store.read_queue(topic, q, 0, 4096, usize::MAX).unwrap();
            s += &format!(
                "{topic}/{q} [{}, {}) {:?}\n",
                store.queue_min_offset(topic, q),
                store.queue_max_offset(topic, q),
                msgs.iter().map(|m| (m.queue_offset, m.index, m.message.message_id.clone())).collect::<Vec<_>>()
            );
        }
    }
    s
}

#[test]
fn apply_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append_records(
        &store,
        [
            Record::TopicConfig(TopicConfigRecord {
                topic: "A".into(),
                read_queue_nums: 2,
                write_queue_nums: 2,
                perm: 6,
                message_type: MessageType::Normal,
            }),
            message("A", 1, 1),
            message("A", 0, 2),
            message("A", 1, 3),
            Record::ConsumerOffset { group: "G".into(), topic: "A".into(), queue_id: 1, offset: 1 },
            Record::Noop,
        ],
    );
    store.log().append(1, &[b"\x63garbage"]).unwrap();
    let applied = store.apply_committed(store.log().last_index()).unwrap();
    assert_eq!(applied.len(), 7);
    assert_eq!(applied[0], Applied::TopicConfig { index: 1, topic: "A".into() });
    assert!(matches!(&applied[1], Applied::Message { index: 2, queue_id: 1, queue_offset: 0, .. }));
    assert!(matches!(&applied[2], Applied::Message { index: 3, queue_id: 0, queue_offset: 0, .. }));
    assert!(
        matches!(&applied[3], Applied::Message { index: 4, queue_id: 1, queue_offset: 1, message_id, .. } if message_id == "id-3")
    );
    assert!(matches!(&applied[6], Applied::Skipped { index: 7, .. }));
    assert_eq!(store.applied_index(), 7);
    assert_eq!(store.topic("A").unwrap().write_queue_nums, 2);
    assert_eq!(store.consumer_offset("G", "A", 1), Some(1));
    assert_eq!(store.consumer_offset("G", "A", 0), None);
    assert_eq!((store.queue_min_offset("A", 1), store.queue_max_offset("A", 1)), (0, 2));
    let msgs = store.read_queue("A", 1, 0, 10, usize::MAX).unwrap();
    assert_eq!(msgs.len(), 2);
    let Record::Message(expected) = message("A", 1, 3) else { unreachable!() };
    assert_eq!(msgs[1].message, expected);
    assert_eq!((msgs[1].queue_offset, msgs[1].index), (1, 4));
    // Limits: count, bytes (at least one), offset past the end.
    assert_eq!(store.read_queue("A", 1, 0, 1, usize::MAX).unwrap().len(), 1);
    assert_eq!(store.read_queue("A", 1, 0, 10, 1).unwrap().len(), 1);
    assert!(store.read_queue("A", 1, 2, 10, usize::MAX).unwrap().is_empty());
    assert!(store.read_queue("nope", 0, 0, 10, usize::MAX).unwrap().is_empty());
    // Zero-copy view.
    let entries = store.read_queue_entries("A", 0, 0, 10, usize::MAX).unwrap();
    assert_eq!(entries[0].message().unwrap().message_id, "id-2");
    assert_eq!(entries[0].tag_hash, crate::record::tag_hash(Some("tag2")));
    // Applying again is a no-op; beyond the log end is an error.
    assert!(store.apply_committed(7).unwrap().is_empty());
    assert!(store.apply_committed(8).is_err());
}

#[test]
fn replicas_derive_identical_state_and_restart_keeps_it() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, follower) = (open(d1.path()), open(d2.path()));
    append_records(&leader, (1..=300).map(workload));
    let bodies: Vec<Vec<u8>> = (1..=300).map(|n| workload(n).encode().unwrap()).collect();
    for (i, chunk) in bodies.chunks(37).enumerate() {
        let batch: Vec<(u64, u64, &[u8])> =
            chunk.iter().enumerate().map(|(j, b)| ((i * 37 + j) as u64 + 1, 1, &b[..])).collect();
        follower.log().append_replicated(&batch).unwrap();
        // The follower applies in different steps than the leader.
        follower.apply_committed(follower.log().last_index() / 2 + 1).unwrap();
    }
    apply_all(&leader);
    apply_all(&follower);
    assert_eq!(observe(&leader), observe(&follower));
    assert_eq!(leader.state_digest(), follower.state_digest());
    assert!(leader.queue_max_offset("A", 1) > 10);
    let before = observe(&leader);
    leader.close().unwrap();
    let (leader, report) = MessageStore::open(cfg(d1.path())).unwrap();
    assert!(report.checkpoint_found);
    assert_eq!((report.queues_truncated, report.queues_rebuilt), (0, 0));
    assert_eq!(observe(&leader), before);
}

#[test]
fn crash_between_commitlog_write_and_cq_write_is_repaired() {
    let (crashed, reference) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let reference = workload_applied(reference.path(), 400);

    let store = open(crashed.path());
    append_records(&store, (1..=150).map(workload));
    apply_all(&store);
    assert_eq!(store.checkpoint().unwrap(), 150);
    // Applied after the checkpoint (its CQ entries reach the files), then more log entries
    // that never reach the consume queues, then a crash (no checkpoint, no close).
    append_records(&store, (151..=250).map(workload));
    store.apply_committed(250).unwrap();
    append_records(&store, (251..=400).map(workload));
    drop(store);

    let (store, report) = MessageStore::open(cfg(crashed.path())).unwrap();
    assert_eq!(report.applied_index, 150);
    assert!(report.queues_truncated > 0, "{report:?}");
    assert_eq!(store.log().last_index(), 400);
    apply_all(&store);
    assert_eq!(observe(&store), observe(&reference));
    assert_eq!(store.state_digest(), reference.state_digest());
}

#[test]
fn lost_consume_queue_files_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append_records(&store, (1..=300).map(workload));
    apply_all(&store);
    let expected = observe(&store);
    store.close().unwrap();
    // One queue loses everything, another loses its newest file.
    let cq = dir.path().join("consumequeue");
    std::fs::remove_dir_all(cq.join("A").join("1")).unwrap();
    let q2 = cq.join("A").join("2");
    let newest = crate::mapped_file::list_numbered_files(&q2).unwrap().pop().unwrap().1;
    std::fs::remove_file(newest).unwrap();
    let (store, report) = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(report.queues_rebuilt, 2, "{report:?}");
    assert!(report.cq_entries_rebuilt > 0);
    assert_eq!(observe(&store), expected);
}

#[test]
fn delete_topic_drops_queues_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append_records(&store, (1..=60).map(workload));
    append_records(&store, [Record::DeleteTopic { topic: "A".into() }, message("A", 0, 7)]);
    let applied = apply_all(&store);
    assert!(
        matches!(&applied[applied.len() - 1], Applied::Message { queue_offset: 0, .. }),
        "re-created queue starts at 0"
    );
    assert!(store.topic("A").is_none());
    assert!(store.consumer_offsets().iter().all(|(_, t, _, _)| t != "A"));
    assert_eq!(store.queue_max_offset("A", 1), 0);
    assert_eq!(store.queue_ids("A"), vec![0]);
    let before = observe(&store);
    store.close().unwrap();
    assert_eq!(observe(&open(dir.path())), before);
}

#[test]
fn retention_by_age_spares_unconsumed_unless_budget_forces() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append_records(&store, (1..=300).map(|n| message("C", 0, n)));
    append_records(&store, [Record::ConsumerOffset { group: "G".into(), topic: "C".into(), queue_id: 0, offset: 120 }]);
    append_records(&store, (301..=360).map(|n| message("C", 0, n)));
    apply_all(&store);
    let segments_before = store.log().segment_infos().len();
    assert!(segments_before > 6, "{segments_before} segments");

    // Nothing is old yet.
    let now = SystemTime::now();
    let report = store.enforce_retention(&RetentionPolicy::default(), now).unwrap();
    assert!(report.deleted_segments.is_empty());

    // Everything is old: deletes up to the consumer's position, not beyond.
    let later = now + Duration::from_secs(100 * 3600);
    let report = store.enforce_retention(&RetentionPolicy::default(), later).unwrap();
    assert!(!report.deleted_segments.is_empty());
    assert!(report.forced_segments.is_empty());
    let min = store.queue_min_offset("C", 0);
    assert!(min > 0 && min <= 120, "min offset {min}");
    let first = store.read_queue("C", 0, 0, 1, usize::MAX).unwrap();
    assert_eq!(first[0].queue_offset, min, "reads start at the new minimum");
    assert!(store.log().read(store.log().first_index() - 1).is_err());
    assert!(store.log().term_at(store.log().first_index() - 1).is_some());

    // A budget of two segments forces past the consumer, with a warning.
    let budget = RetentionPolicy { disk_budget_bytes: Some(2 * 8192), ..RetentionPolicy::default() };
    let report = store.enforce_retention(&budget, later).unwrap();
    assert!(!report.forced_segments.is_empty());
    assert!(store.log().segment_infos().len() <= 2);
    assert!(store.queue_min_offset("C", 0) > 120);
    let before = observe(&store);
    store.close().unwrap();
    assert_eq!(observe(&open(dir.path())), before);
}

#[test]
fn retention_never_deletes_unapplied_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append_records(&store, (1..=200).map(|n| message("C", 0, n)));
    store.apply_committed(10).unwrap();
    let later = SystemTime::now() + Duration::from_secs(100 * 3600);
    let budget = RetentionPolicy { disk_budget_bytes: Some(0), ..RetentionPolicy::default() };
    store.enforce_retention(&budget, later).unwrap();
    assert!(store.log().first_index() <= 11);
    apply_all(&store);
    assert_eq!(store.queue_max_offset("C", 0), 200);
    let raft_floor = RetentionPolicy { keep_from_index_min: Some(50), ..budget };
    store.enforce_retention(&raft_floor, later).unwrap();
    assert!(store.log().first_index() <= 50);
}

#[test]
fn a_checkpoint_is_due_after_the_interval_and_a_crash_recovers_from_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.commitlog.flush_mode = FlushMode::Async;
    c.commitlog.flush_interval_ms = 5;
    c.checkpoint_interval_entries = 50;
    let (store, _) = MessageStore::open(c.clone()).unwrap();
    let mut taken = Vec::new();
    for n in 1..=180 {
        let bytes = workload(n).encode().unwrap();
        let r = store.log().append(1, &[&bytes]).unwrap();
        store.apply_committed(r.end - 1).unwrap();
        // Applying never checkpoints by itself (the broker applies on the Raft thread); the
        // owner asks and takes it.
        assert_eq!(store.checkpoint_due(), n - store.checkpointed_index() >= 50, "at {n}");
        if store.checkpoint_due() {
            taken.push(store.checkpoint().unwrap());
            assert!(!store.checkpoint_due());
        }
    }
    assert_eq!(taken, [50, 100, 150]);
    let expected = observe(&store);
    drop(store); // crash: the last checkpoint holds 150
    let (store, report) = MessageStore::open(c).unwrap();
    assert_eq!(report.applied_index, 150, "{report:?}");
    apply_all(&store);
    assert_eq!(observe(&store), expected);
}

#[test]
fn checkpoints_taken_while_entries_are_applied_recover_to_the_same_state() {
    let (crashed, reference) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let reference = workload_applied(reference.path(), 600);

    let store = open(crashed.path());
    append_records(&store, (1..=600).map(workload));
    let applying = std::sync::atomic::AtomicBool::new(true);
    let taken = std::thread::scope(|scope| {
        let checkpoints = scope.spawn(|| {
            let mut taken = vec![store.checkpoint().unwrap()];
            while applying.load(std::sync::atomic::Ordering::Acquire) {
                taken.push(store.checkpoint().unwrap());
            }
            taken
        });
        // One entry per apply: many applies land between a checkpoint's copy and its write.
        for index in 1..=600 {
            store.apply_committed(index).unwrap();
        }
        applying.store(false, std::sync::atomic::Ordering::Release);
        checkpoints.join().unwrap()
    });
    assert!(taken.windows(2).all(|w| w[0] <= w[1]), "checkpoints went back: {taken:?}");
    let last = *taken.last().unwrap();
    assert_eq!(store.checkpointed_index(), last);
    drop(store); // crash after the last checkpoint

    let (store, report) = MessageStore::open(cfg(crashed.path())).unwrap();
    assert_eq!(report.applied_index, last, "{report:?}");
    apply_all(&store);
    assert_eq!(observe(&store), observe(&reference));
}

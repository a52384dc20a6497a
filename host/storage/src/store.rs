//! `MessageStore`: the commitlog plus the state derived from its committed entries —
//! consume queues, the topic table and the consumer-offset table.
//!
//! Derived state changes only in `apply_committed`, strictly in index order, and depends on
//! nothing but the entries, so every replica derives the same queue offsets. A checkpoint
//! (applied index + tables + queue extents) is written atomically by `checkpoint` (and
//! `close`); its owner calls it once `checkpoint_due` says `checkpoint_interval_entries`
//! entries were applied since the last one. The log is flushed through the applied index
//! first, so the checkpoint never claims more than the log holds.
//!
//! Why the apply does not checkpoint itself: the broker applies on the Raft thread (its
//! commit hook), and a checkpoint's msyncs and fsyncs took up to 16 ms there, a stall of
//! every send in flight once per 100,000 entries. A checkpoint holds the apply lock only
//! to copy what it writes; its disk writes run beside the apply.
//!
//! On open, consume queues are cut back to the checkpoint (entries applied after it are
//! re-applied by the next `apply_committed`) or rebuilt from the log where they fall short
//! of it (lost or deleted files).
//!
//! Layout under `dir`: `log/` (the commitlog), `consumequeue/<topic>/<queue id>/`,
//! `store_checkpoint`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::commitlog::{CommitLog, CommitLogConfig, EntryRef};
use crate::consume_queue::{CQ_ENTRIES_PER_FILE_DEFAULT, ConsumeQueue, CqEntry};
use crate::error::{IoContext, Result, StorageError, corrupt};
use crate::mapped_file;
use crate::record::{self, MessageRecord, MessageView, Reader, Record, RecordView, TopicConfigRecord, Writer};
use crate::recovery::RecoveryReport;

/// One `apply_committed` call applies at most this many entries (bounded latency and
/// result size); call again while `applied_index()` is below the commit index.
pub const APPLY_BATCH_ENTRIES_MAX: u64 = 1 << 16;
/// One read returns at most this many messages.
pub const READ_COUNT_MAX: usize = 4096;
pub const CHECKPOINT_INTERVAL_ENTRIES_DEFAULT: u64 = 100_000;
/// Sanity bound on the checkpoint file (tables of topics, offsets and queues).
const CHECKPOINT_BYTES_MAX: u64 = 256 << 20;
const CHECKPOINT_MAGIC: u32 = 0x5743_5153; // "SQCW"
const CHECKPOINT_VERSION: u8 = 1;

#[derive(Debug, Clone)]
pub struct MessageStoreConfig {
    pub dir: PathBuf,
    /// Its `dir` is replaced by `<dir>/log`.
    pub commitlog: CommitLogConfig,
    pub cq_entries_per_file: u64,
    pub checkpoint_interval_entries: u64,
}

impl MessageStoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> MessageStoreConfig {
        let dir = dir.into();
        MessageStoreConfig {
            commitlog: CommitLogConfig::new(dir.join("log")),
            dir,
            cq_entries_per_file: CQ_ENTRIES_PER_FILE_DEFAULT,
            checkpoint_interval_entries: CHECKPOINT_INTERVAL_ENTRIES_DEFAULT,
        }
    }
}

/// What applying one committed entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Message {
        index: u64,
        topic: String,
        queue_id: u32,
        queue_offset: u64,
        pos: u64,
        message_id: String,
    },
    TopicConfig {
        index: u64,
        topic: String,
    },
    ConsumerOffset {
        index: u64,
        group: String,
        topic: String,
        queue_id: u32,
        offset: u64,
    },
    DeleteTopic {
        index: u64,
        topic: String,
    },
    Noop {
        index: u64,
    },
    /// The body did not decode. Every replica holds the same (CRC-checked) bytes, so every
    /// replica skips it the same way.
    Skipped {
        index: u64,
        reason: String,
    },
}

impl Applied {
    pub fn index(&self) -> u64 {
        match self {
            Applied::Message { index, .. }
            | Applied::TopicConfig { index, .. }
            | Applied::ConsumerOffset { index, .. }
            | Applied::DeleteTopic { index, .. }
            | Applied::Noop { index }
            | Applied::Skipped { index, .. } => *index,
        }
    }
}

/// A message read from a consume queue, zero-copy: decode with `message()`.
#[derive(Debug)]
pub struct QueuedEntry {
    pub queue_offset: u64,
    pub tag_hash: u64,
    pub entry: EntryRef,
}

impl QueuedEntry {
    pub fn message(&self) -> Result<MessageView<'_>> {
        Ok(MessageView::decode(self.entry.body())?)
    }
}

/// A message read from a consume queue, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub queue_offset: u64,
    /// Commitlog (Raft) index of the entry.
    pub index: u64,
    pub pos: u64,
    pub message: MessageRecord,
}

#[derive(Debug, Clone, Default)]
pub struct StoreRecoveryReport {
    pub log: RecoveryReport,
    pub applied_index: u64,
    pub checkpoint_found: bool,
    /// Queues cut back to the checkpoint (they held entries applied after it).
    pub queues_truncated: usize,
    /// Queues rebuilt from the log (they held fewer entries than the checkpoint says).
    pub queues_rebuilt: usize,
    pub cq_entries_rebuilt: u64,
}

type QueueKey = (String, u32);
type OffsetKey = (String, String, u32);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Tables {
    topics: BTreeMap<String, TopicConfigRecord>,
    offsets: BTreeMap<OffsetKey, u64>,
}

/// The persisted checkpoint.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Snapshot {
    applied_index: u64,
    tables: Tables,
    /// queue -> (min offset, max offset)
    queues: BTreeMap<QueueKey, (u64, u64)>,
}

impl Snapshot {
    fn encode(&self) -> std::result::Result<Vec<u8>, record::CodecError> {
        let mut w = Writer::new();
        w.out.extend_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        w.u8(CHECKPOINT_VERSION);
        w.varint(self.applied_index);
        w.varint(self.tables.topics.len() as u64);
        for config in self.tables.topics.values() {
            w.bytes(&Record::TopicConfig(config.clone()).encode()?);
        }
        w.varint(self.tables.offsets.len() as u64);
        for ((group, topic, queue_id), offset) in &self.tables.offsets {
            let rec = Record::ConsumerOffset {
                group: group.clone(),
                topic: topic.clone(),
                queue_id: *queue_id,
                offset: *offset,
            };
            w.bytes(&rec.encode()?);
        }
        w.varint(self.queues.len() as u64);
        for ((topic, queue_id), (min, max)) in &self.queues {
            w.str(topic);
            w.varint(*queue_id as u64);
            w.varint(*min);
            w.varint(*max);
        }
        let crc = crc32c::crc32c(&w.out);
        w.out.extend_from_slice(&crc.to_le_bytes());
        Ok(w.out)
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Snapshot, String> {
        if bytes.len() < 9 {
            return Err("too short".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4")) {
            return Err("checksum mismatch".into());
        }
        if u32::from_le_bytes(body[0..4].try_into().expect("4")) != CHECKPOINT_MAGIC || body[4] != CHECKPOINT_VERSION {
            return Err("unknown magic or version".into());
        }
        let inner = || -> std::result::Result<Snapshot, record::CodecError> {
            let mut r = Reader::new(&body[5..]);
            let mut snap = Snapshot { applied_index: r.varint("applied_index")?, ..Snapshot::default() };
            let n = r.count("topics", usize::MAX)?;
            for _ in 0..n {
                match Record::decode(r.bytes("topic config", usize::MAX)?)? {
                    Record::TopicConfig(c) => {
                        snap.tables.topics.insert(c.topic.clone(), c);
                    }
                    other => return Err(unexpected(&other)),
                }
            }
            let n = r.count("offsets", usize::MAX)?;
            for _ in 0..n {
                match Record::decode(r.bytes("consumer offset", usize::MAX)?)? {
                    Record::ConsumerOffset { group, topic, queue_id, offset } => {
                        snap.tables.offsets.insert((group, topic, queue_id), offset);
                    }
                    other => return Err(unexpected(&other)),
                }
            }
            let n = r.count("queues", usize::MAX)?;
            for _ in 0..n {
                let topic = r.str("queue topic", record::TOPIC_LENGTH_MAX)?;
                record::validate_topic(topic)?;
                let queue_id = r.u32("queue id")?;
                let min = r.varint("queue min")?;
                let max = r.varint("queue max")?;
                snap.queues.insert((topic.to_owned(), queue_id), (min, max));
            }
            r.finish()?;
            Ok(snap)
        };
        inner().map_err(|e| e.to_string())
    }
}

fn unexpected(rec: &Record) -> record::CodecError {
    record::CodecError::InvalidValue { field: "checkpoint table", value: format!("{rec:?}"), why: "wrong record type" }
}

pub struct MessageStore {
    cfg: MessageStoreConfig,
    log: Arc<CommitLog>,
    /// Serialises apply, retention, and the copy a checkpoint takes of the derived state.
    apply_lock: Mutex<()>,
    /// Serialises checkpoints and retention (a checkpoint's extents must not meet files
    /// retention deleted after the copy). Order: `checkpoint_lock` before `apply_lock`.
    checkpoint_lock: Mutex<()>,
    /// The applied index the last checkpoint holds (written under `checkpoint_lock`).
    checkpointed: AtomicU64,
    applied: AtomicU64,
    tables: RwLock<Tables>,
    queues: RwLock<BTreeMap<QueueKey, Arc<ConsumeQueue>>>,
}

impl std::fmt::Debug for MessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStore").field("dir", &self.cfg.dir).field("applied", &self.applied_index()).finish()
    }
}

impl MessageStore {
    pub fn open(mut cfg: MessageStoreConfig) -> Result<(MessageStore, StoreRecoveryReport)> {
        if !(1..=1 << 30).contains(&cfg.cq_entries_per_file) || cfg.checkpoint_interval_entries == 0 {
            return Err(StorageError::Config(
                "cq_entries_per_file must be in 1..=2^30, checkpoint_interval_entries > 0".into(),
            ));
        }
        cfg.commitlog.dir = cfg.dir.join("log");
        std::fs::create_dir_all(&cfg.dir).at(&cfg.dir)?;
        let (log, log_report) = CommitLog::open(cfg.commitlog.clone())?;
        let mut report = StoreRecoveryReport { log: log_report, ..Default::default() };

        let checkpoint_path = cfg.dir.join("store_checkpoint");
        let snapshot = match std::fs::read(&checkpoint_path) {
            Ok(bytes) => {
                report.checkpoint_found = true;
                Snapshot::decode(&bytes).map_err(|why| corrupt(checkpoint_path.display().to_string(), why))?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if log.first_index() > 1 {
                    tracing::warn!(
                        first_index = log.first_index(),
                        "no store checkpoint and the log start was deleted: topics and offsets from deleted segments are lost"
                    );
                }
                Snapshot { applied_index: log.first_index() - 1, ..Snapshot::default() }
            }
            Err(err) => return Err(err).at(&checkpoint_path),
        };
        if snapshot.applied_index > log.last_index() {
            return Err(corrupt(
                checkpoint_path.display().to_string(),
                format!("applied index {} is beyond the log end {}", snapshot.applied_index, log.last_index()),
            ));
        }
        if snapshot.applied_index + 1 < log.first_index() {
            return Err(corrupt(
                checkpoint_path.display().to_string(),
                format!("applied index {} is below the log start {}", snapshot.applied_index, log.first_index()),
            ));
        }

        let store = MessageStore {
            log: Arc::new(log),
            apply_lock: Mutex::new(()),
            checkpoint_lock: Mutex::new(()),
            checkpointed: AtomicU64::new(snapshot.applied_index),
            applied: AtomicU64::new(snapshot.applied_index),
            tables: RwLock::new(snapshot.tables.clone()),
            queues: RwLock::new(BTreeMap::new()),
            cfg,
        };
        store.recover_queues(&snapshot, &mut report)?;
        report.applied_index = snapshot.applied_index;
        tracing::info!(
            dir = %store.cfg.dir.display(),
            applied_index = report.applied_index,
            queues_truncated = report.queues_truncated,
            queues_rebuilt = report.queues_rebuilt,
            "message store opened"
        );
        Ok((store, report))
    }

    fn cq_root(&self) -> PathBuf {
        self.cfg.dir.join("consumequeue")
    }

    fn queue_dir(&self, topic: &str, queue_id: u32) -> PathBuf {
        self.cq_root().join(topic).join(queue_id.to_string())
    }

    fn open_queue(&self, topic: &str, queue_id: u32) -> Result<Arc<ConsumeQueue>> {
        Ok(Arc::new(ConsumeQueue::open(
            &self.queue_dir(topic, queue_id),
            topic,
            queue_id,
            self.cfg.cq_entries_per_file,
        )?))
    }

    /// Queue directories present on disk.
    fn queues_on_disk(&self) -> Result<BTreeSet<QueueKey>> {
        let root = self.cq_root();
        let mut out = BTreeSet::new();
        if !root.exists() {
            return Ok(out);
        }
        for topic_dir in std::fs::read_dir(&root).at(&root)? {
            let topic_dir = topic_dir.at(&root)?;
            let topic = topic_dir.file_name().to_string_lossy().into_owned();
            for q in std::fs::read_dir(topic_dir.path()).at(&topic_dir.path())? {
                let q = q.at(&topic_dir.path())?;
                match q.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                    Some(id) => {
                        out.insert((topic.clone(), id));
                    }
                    None => tracing::debug!(path = %q.path().display(), "ignoring unexpected entry"),
                }
            }
        }
        Ok(out)
    }

    fn recover_queues(&self, snapshot: &Snapshot, report: &mut StoreRecoveryReport) -> Result<()> {
        let applied = snapshot.applied_index;
        // Queues created after the checkpoint: their entries are re-applied.
        for (topic, queue_id) in self.queues_on_disk()? {
            if !snapshot.queues.contains_key(&(topic.clone(), queue_id)) {
                let dir = self.queue_dir(&topic, queue_id);
                std::fs::remove_dir_all(&dir).at(&dir)?;
                report.queues_truncated += 1;
            }
        }
        // queue -> (resume after this log index, expected max offset)
        let mut short: HashMap<QueueKey, (Arc<ConsumeQueue>, u64, u64)> = HashMap::new();
        let mut recount: Vec<QueueKey> = Vec::new();
        let mut queues = BTreeMap::new();
        for ((topic, queue_id), &(_, max)) in &snapshot.queues {
            let key = (topic.clone(), *queue_id);
            let mut q = self.open_queue(topic, *queue_id)?;
            if q.max_offset() > max {
                q.truncate_to(max)?;
                report.queues_truncated += 1;
            }
            if q.max_offset() < max {
                let resume = match q.max_offset().checked_sub(1).and_then(|last| q.get(last)) {
                    Some(last) if q.max_offset() > q.min_offset() => {
                        self.log.read_at_pos(last.pos).ok().map(|e| e.index())
                    }
                    _ => None,
                };
                match resume {
                    Some(after) => {
                        short.insert(key.clone(), (q.clone(), after, max));
                    }
                    None => {
                        // Nothing usable: start over, at an offset found by counting.
                        q.destroy()?;
                        q = self.open_queue(topic, *queue_id)?;
                        recount.push(key.clone());
                        short.insert(key.clone(), (q.clone(), self.log.first_index() - 1, max));
                    }
                }
            }
            queues.insert(key, q);
        }
        if !short.is_empty() {
            if !recount.is_empty() {
                let mut counts: HashMap<QueueKey, u64> = recount.iter().map(|k| (k.clone(), 0)).collect();
                self.scan_messages(self.log.first_index(), applied, |_, view| {
                    if let Some(c) = counts.get_mut(&(view.topic.to_owned(), view.queue_id)) {
                        *c += 1;
                    }
                })?;
                for key in &recount {
                    let (q, _, max) = &short[key];
                    let found = counts[key];
                    if found > *max {
                        return Err(corrupt(
                            format!("consume queue {}/{}", key.0, key.1),
                            format!("log holds {found} messages, checkpoint says {max}"),
                        ));
                    }
                    q.reset_empty_at(max - found);
                }
            }
            let from = short.values().map(|(_, after, _)| after + 1).min().expect("non-empty");
            let mut rebuilt = 0u64;
            let mut failure = None;
            self.scan_messages(from, applied, |entry, view| {
                if let Some((q, after, _)) = short.get(&(view.topic.to_owned(), view.queue_id))
                    && entry.index() > *after
                    && failure.is_none()
                {
                    let cq =
                        CqEntry { pos: entry.pos(), size: entry.size_bytes(), tag_hash: record::tag_hash(view.tag) };
                    match q.append(cq) {
                        Ok(_) => rebuilt += 1,
                        Err(err) => failure = Some(err),
                    }
                }
            })?;
            if let Some(err) = failure {
                return Err(err);
            }
            for ((topic, queue_id), (q, _, max)) in &short {
                if q.max_offset() != *max {
                    return Err(corrupt(
                        format!("consume queue {topic}/{queue_id}"),
                        format!("rebuilt to offset {}, checkpoint says {max}", q.max_offset()),
                    ));
                }
                q.flush()?;
            }
            report.queues_rebuilt = short.len();
            report.cq_entries_rebuilt = rebuilt;
            tracing::warn!(queues = short.len(), entries = rebuilt, "consume queues rebuilt from the commitlog");
        }
        let min_pos = self.log.min_pos();
        for q in queues.values() {
            q.correct_min_offset(min_pos)?;
        }
        *self.queues.write() = queues;
        Ok(())
    }

    /// Visit the decodable message records of entries `from..=to`.
    fn scan_messages(&self, from: u64, to: u64, mut visit: impl FnMut(&EntryRef, &MessageView<'_>)) -> Result<()> {
        for index in from..=to {
            let entry = self.log.read(index)?;
            if let Ok(RecordView::Message(view)) = RecordView::decode(entry.body()) {
                visit(&entry, &view);
            }
        }
        Ok(())
    }

    /// The commitlog (the broker and the Raft runtime append and flush through it).
    pub fn log(&self) -> &Arc<CommitLog> {
        &self.log
    }

    pub fn config(&self) -> &MessageStoreConfig {
        &self.cfg
    }

    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Apply committed entries `applied_index()+1 ..= up_to_index` in order (at most
    /// `APPLY_BATCH_ENTRIES_MAX` per call). `up_to_index` must not exceed the log end.
    pub fn apply_committed(&self, up_to_index: u64) -> Result<Vec<Applied>> {
        let _apply = self.apply_lock.lock();
        let applied = self.applied.load(Ordering::Acquire);
        if up_to_index <= applied {
            return Ok(Vec::new());
        }
        let last = self.log.last_index();
        if up_to_index > last {
            return Err(StorageError::Invalid(format!("commit index {up_to_index} beyond the log end {last}")));
        }
        let to = up_to_index.min(applied + APPLY_BATCH_ENTRIES_MAX);
        let mut out = Vec::with_capacity((to - applied) as usize);
        for index in applied + 1..=to {
            let entry = self.log.read(index)?;
            out.push(self.apply_one(&entry)?);
            self.applied.store(index, Ordering::Release);
        }
        Ok(out)
    }

    fn apply_one(&self, entry: &EntryRef) -> Result<Applied> {
        let index = entry.index();
        let view = match RecordView::decode(entry.body()) {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(index, %err, "skipping undecodable committed entry");
                return Ok(Applied::Skipped { index, reason: err.to_string() });
            }
        };
        Ok(match view {
            RecordView::Message(m) => {
                let q = self.queue_or_create(m.topic, m.queue_id)?;
                let cq = CqEntry { pos: entry.pos(), size: entry.size_bytes(), tag_hash: record::tag_hash(m.tag) };
                let queue_offset = q.append(cq)?;
                Applied::Message {
                    index,
                    topic: m.topic.to_owned(),
                    queue_id: m.queue_id,
                    queue_offset,
                    pos: entry.pos(),
                    message_id: m.message_id.to_owned(),
                }
            }
            RecordView::TopicConfig(c) => {
                let topic = c.topic.clone();
                self.tables.write().topics.insert(topic.clone(), c);
                Applied::TopicConfig { index, topic }
            }
            RecordView::ConsumerOffset { group, topic, queue_id, offset } => {
                self.tables.write().offsets.insert((group.to_owned(), topic.to_owned(), queue_id), offset);
                Applied::ConsumerOffset { index, group: group.to_owned(), topic: topic.to_owned(), queue_id, offset }
            }
            RecordView::DeleteTopic { topic } => {
                {
                    let mut tables = self.tables.write();
                    tables.topics.remove(topic);
                    tables.offsets.retain(|(_, t, _), _| t != topic);
                }
                let doomed: Vec<Arc<ConsumeQueue>> = {
                    let mut queues = self.queues.write();
                    let keys: Vec<QueueKey> = queues.keys().filter(|(t, _)| t == topic).cloned().collect();
                    keys.iter().filter_map(|k| queues.remove(k)).collect()
                };
                for q in doomed {
                    q.destroy()?;
                }
                let dir = self.cq_root().join(topic);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).at(&dir)?;
                }
                Applied::DeleteTopic { index, topic: topic.to_owned() }
            }
            RecordView::Noop => Applied::Noop { index },
        })
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.queues.read().get(&(topic.to_owned(), queue_id)).cloned()
    }

    fn queue_or_create(&self, topic: &str, queue_id: u32) -> Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.queue(topic, queue_id) {
            return Ok(q);
        }
        let q = self.open_queue(topic, queue_id)?;
        self.queues.write().insert((topic.to_owned(), queue_id), q.clone());
        Ok(q)
    }

    /// Whether `checkpoint_interval_entries` entries were applied since the last checkpoint
    /// (two atomic loads: cheap enough for every commit).
    pub fn checkpoint_due(&self) -> bool {
        let applied = self.applied.load(Ordering::Acquire);
        applied.saturating_sub(self.checkpointed.load(Ordering::Acquire)) >= self.cfg.checkpoint_interval_entries
    }

    /// The applied index the last checkpoint holds.
    pub fn checkpointed_index(&self) -> u64 {
        self.checkpointed.load(Ordering::Acquire)
    }

    /// Persist the applied index and derived tables now. Returns the checkpointed index.
    /// Apply runs on meanwhile: the apply lock is held only while the state is copied.
    pub fn checkpoint(&self) -> Result<u64> {
        let _one = self.checkpoint_lock.lock();
        let (applied, tables, queues, extents) = {
            let _apply = self.apply_lock.lock();
            let queues: Vec<Arc<ConsumeQueue>> = self.queues.read().values().cloned().collect();
            let extents: BTreeMap<_, _> = queues
                .iter()
                .map(|q| ((q.topic().to_owned(), q.queue_id()), (q.min_offset(), q.max_offset())))
                .collect();
            (self.applied.load(Ordering::Acquire), self.tables.read().clone(), queues, extents)
        };
        assert!(applied >= self.checkpointed.load(Ordering::Acquire), "a checkpoint never goes back");
        // The log must hold everything the checkpoint claims, and each queue file at least
        // the extent copied (entries applied since are flushed too, and cut back on open).
        self.log.flush_to(applied)?;
        for q in &queues {
            q.flush()?;
        }
        let snapshot = Snapshot { applied_index: applied, tables, queues: extents };
        let bytes = snapshot.encode()?;
        if bytes.len() as u64 > CHECKPOINT_BYTES_MAX {
            return Err(StorageError::Invalid(format!(
                "store checkpoint of {} bytes exceeds {CHECKPOINT_BYTES_MAX}",
                bytes.len()
            )));
        }
        write_atomically(&self.cfg.dir, "store_checkpoint", &bytes)?;
        self.checkpointed.store(applied, Ordering::Release);
        Ok(applied)
    }

    /// Checkpoint and flush; the orderly shutdown.
    pub fn close(self) -> Result<()> {
        self.checkpoint()?;
        match Arc::try_unwrap(self.log) {
            Ok(log) => log.close(),
            Err(log) => log.flush().map(|_| ()),
        }
    }

    /// Messages of a queue from `offset` on: at most `max_count` (≤ `READ_COUNT_MAX`), and
    /// stopping before `max_bytes` of bodies are exceeded (at least one message is returned
    /// if one exists). An offset below the queue's minimum starts at the minimum.
    pub fn read_queue_entries(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueuedEntry>> {
        let Some(q) = self.queue(topic, queue_id) else { return Ok(Vec::new()) };
        let start = offset.max(q.min_offset());
        let end = q.max_offset().min(start.saturating_add(max_count.min(READ_COUNT_MAX) as u64));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for queue_offset in start..end {
            let Some(cq) = q.get(queue_offset) else {
                if queue_offset >= q.max_offset() || queue_offset < q.min_offset() {
                    break; // the topic was deleted or retention moved the start meanwhile
                }
                return Err(corrupt(format!("consume queue {topic}/{queue_id}"), format!("slot {queue_offset} empty")));
            };
            let entry = self.log.read_at_pos(cq.pos)?;
            if entry.size_bytes() != cq.size {
                return Err(corrupt(
                    format!("consume queue {topic}/{queue_id} offset {queue_offset}"),
                    format!("size {} but log entry is {}", cq.size, entry.size_bytes()),
                ));
            }
            bytes += entry.body().len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(QueuedEntry { queue_offset, tag_hash: cq.tag_hash, entry });
        }
        Ok(out)
    }

    /// Owned variant of `read_queue_entries`.
    pub fn read_queue(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueuedMessage>> {
        self.read_queue_entries(topic, queue_id, offset, max_count, max_bytes)?
            .into_iter()
            .map(|q| {
                let message = q.message()?.to_owned_record();
                Ok(QueuedMessage { queue_offset: q.queue_offset, index: q.entry.index(), pos: q.entry.pos(), message })
            })
            .collect()
    }

    pub fn queue_min_offset(&self, topic: &str, queue_id: u32) -> u64 {
        self.queue(topic, queue_id).map_or(0, |q| q.min_offset())
    }

    pub fn queue_max_offset(&self, topic: &str, queue_id: u32) -> u64 {
        self.queue(topic, queue_id).map_or(0, |q| q.max_offset())
    }

    /// Queue ids that have a consume queue for `topic`.
    pub fn queue_ids(&self, topic: &str) -> Vec<u32> {
        self.queues.read().keys().filter(|(t, _)| t == topic).map(|(_, id)| *id).collect()
    }

    pub fn topics(&self) -> Vec<TopicConfigRecord> {
        self.tables.read().topics.values().cloned().collect()
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfigRecord> {
        self.tables.read().topics.get(name).cloned()
    }

    pub fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        self.tables.read().offsets.get(&(group.to_owned(), topic.to_owned(), queue_id)).copied()
    }

    /// All committed consumer offsets as (group, topic, queue id, offset).
    pub fn consumer_offsets(&self) -> Vec<(String, String, u32, u64)> {
        self.tables.read().offsets.iter().map(|((g, t, q), o)| (g.clone(), t.clone(), *q, *o)).collect()
    }

    /// Fingerprint of the derived state, for comparing replicas in tests and tools.
    pub fn state_digest(&self) -> u32 {
        let mut crc = crc32c::crc32c(&self.applied_index().to_le_bytes());
        let tables = self.tables.read();
        for c in tables.topics.values() {
            crc = crc32c::crc32c_append(crc, format!("{c:?}").as_bytes());
        }
        for (k, v) in &tables.offsets {
            crc = crc32c::crc32c_append(crc, format!("{k:?}={v}").as_bytes());
        }
        for ((t, id), q) in self.queues.read().iter() {
            crc = crc32c::crc32c_append(crc, format!("{t}/{id}:{}", q.max_offset()).as_bytes());
            if let Some(last) = q.max_offset().checked_sub(1).and_then(|o| q.get(o)) {
                crc = crc32c::crc32c_append(crc, &last.pos.to_le_bytes());
            }
        }
        crc
    }

    pub(crate) fn queues_snapshot(&self) -> Vec<Arc<ConsumeQueue>> {
        self.queues.read().values().cloned().collect()
    }

    /// Retention's locks: no checkpoint runs and apply is paused while it deletes.
    pub(crate) fn retention_guard(&self) -> (parking_lot::MutexGuard<'_, ()>, parking_lot::MutexGuard<'_, ()>) {
        let checkpoint = self.checkpoint_lock.lock();
        (checkpoint, self.apply_lock.lock())
    }
}

/// Write `name` in `dir` via a temporary file, fsync, rename and directory fsync.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    {
        let mut f = std::fs::File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    std::fs::rename(&tmp, &dst).at(&dst)?;
    mapped_file::sync_dir(dir)
}

impl MessageStore {
    /// Commitlog position of a queue entry (for retention decisions).
    pub(crate) fn queue_entry_pos(&self, topic: &str, queue_id: u32, offset: u64) -> Option<u64> {
        self.queue(topic, queue_id)?.get(offset).map(|e| e.pos)
    }
}

//! In-memory [`MessagingBackend`] for tests of the v2 front end (unit tests and the
//! wire check against the official Python client). Not a broker: no persistence, no
//! replication, no plugins. Its SQL92 "filter" understands only `name = 'value'`
//! (enough to exercise the plumbing); anything else is a BadRequest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::now_ms;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::backend::{
    BackendError, BackendResult, FilterKind, GroupMember, MessagingBackend, OutgoingMessage, PERM_READ, PERM_WRITE,
    RouteInfo, SendOutcome, StoredMessage, TopicInfo, TopicMessageType,
};

/// Most messages one fake queue holds (tests are bounded too).
const QUEUE_MESSAGES_MAX: usize = 1_000_000;

struct Topic {
    info: TopicInfo,
    queues: Vec<Vec<StoredMessage>>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    offsets: HashMap<(String, String, u32), u64>,
    round_robin: u64,
}

pub struct FakeBackend {
    state: Mutex<State>,
    new_message: Notify,
    leader: AtomicBool,
    leader_endpoint: Mutex<Option<String>>,
    route: Mutex<RouteInfo>,
    max_message_size_bytes: AtomicU64,
    /// Every commit_offset call, for assertions.
    pub commits: Mutex<Vec<(String, String, u32, u64)>>,
    /// send_batch calls so far (counted before the gate).
    pub send_batches: AtomicU64,
    /// Every send_batch waits for a read guard: a test that holds the write guard holds
    /// the sends in flight.
    pub send_gate: tokio::sync::RwLock<()>,
}

impl FakeBackend {
    /// A leader that serves clients at `client_endpoint`.
    pub fn new(client_endpoint: &str) -> Arc<Self> {
        Arc::new(FakeBackend {
            state: Mutex::new(State::default()),
            new_message: Notify::new(),
            leader: AtomicBool::new(true),
            leader_endpoint: Mutex::new(Some(client_endpoint.to_string())),
            route: Mutex::new(RouteInfo {
                broker_name: "fake-broker".to_string(),
                members: vec![GroupMember { client_endpoint: client_endpoint.to_string(), is_leader: true }],
            }),
            max_message_size_bytes: AtomicU64::new(4 * 1024 * 1024),
            commits: Mutex::new(Vec::new()),
            send_batches: AtomicU64::new(0),
            send_gate: tokio::sync::RwLock::new(()),
        })
    }

    pub fn create_topic(&self, name: &str, queue_count: u32, message_type: TopicMessageType) {
        assert!(queue_count >= 1 && queue_count <= 64);
        let mut st = self.state.lock();
        st.topics.insert(
            name.to_string(),
            Topic {
                info: TopicInfo {
                    name: name.to_string(),
                    read_queue_count: queue_count,
                    write_queue_count: queue_count,
                    perm: PERM_READ | PERM_WRITE,
                    message_type,
                },
                queues: (0..queue_count).map(|_| Vec::new()).collect(),
            },
        );
    }

    pub fn set_leader(&self, leader: bool, leader_endpoint: Option<String>) {
        self.leader.store(leader, Ordering::SeqCst);
        *self.leader_endpoint.lock() = leader_endpoint;
    }

    pub fn set_route(&self, route: RouteInfo) {
        *self.route.lock() = route;
    }

    pub fn set_max_message_size_bytes(&self, bytes: u64) {
        self.max_message_size_bytes.store(bytes, Ordering::SeqCst);
    }

    /// All messages stored in `topic`, queue by queue.
    pub fn messages(&self, topic: &str) -> Vec<StoredMessage> {
        let st = self.state.lock();
        st.topics.get(topic).map(|t| t.queues.iter().flatten().cloned().collect()).unwrap_or_default()
    }

    fn with_queue<T>(&self, topic: &str, queue_id: u32, f: impl FnOnce(&Vec<StoredMessage>) -> T) -> BackendResult<T> {
        let st = self.state.lock();
        let t = st.topics.get(topic).ok_or_else(|| BackendError::TopicNotFound(topic.to_string()))?;
        let q = t
            .queues
            .get(queue_id as usize)
            .ok_or_else(|| BackendError::BadRequest(format!("queue {queue_id} out of range")))?;
        Ok(f(q))
    }

    /// One message stored as the broker would (the fake has no batching to do).
    fn store_one(&self, msg: OutgoingMessage) -> BackendResult<SendOutcome> {
        if !self.is_leader() {
            return Err(BackendError::NotLeader { leader: self.leader_client_endpoint() });
        }
        let max = self.max_message_size_bytes();
        if msg.body.len() as u64 > max {
            return Err(BackendError::MessageTooLarge { size_bytes: msg.body.len() as u64, max_bytes: max });
        }
        let outcome = {
            let mut st = self.state.lock();
            st.round_robin += 1;
            let rr = st.round_robin;
            if !st.topics.contains_key(&msg.topic)
                && (msg.topic.starts_with("%DLQ%") || msg.topic.starts_with("%RETRY%"))
            {
                drop(st);
                self.create_topic(&msg.topic, 1, TopicMessageType::Normal);
                st = self.state.lock();
            }
            let t = st.topics.get_mut(&msg.topic).ok_or_else(|| BackendError::TopicNotFound(msg.topic.clone()))?;
            let n = t.info.write_queue_count;
            let queue_id = msg.queue_id.map(|q| q % n).unwrap_or((rr % n as u64) as u32);
            let q = &mut t.queues[queue_id as usize];
            if q.len() >= QUEUE_MESSAGES_MAX {
                return Err(BackendError::Internal("fake queue full".into()));
            }
            let queue_offset = q.len() as u64;
            q.push(StoredMessage {
                topic: msg.topic.clone(),
                queue_id,
                queue_offset,
                message_id: msg.message_id.clone(),
                tag: msg.tag,
                keys: msg.keys,
                properties: msg.properties,
                message_group: msg.message_group,
                born_timestamp_ms: msg.born_timestamp_ms,
                born_host: msg.born_host,
                store_timestamp_ms: now_ms(),
                store_host: "127.0.0.1:0".to_string(),
                delivery_timestamp_ms: msg.delivery_timestamp_ms,
                reconsume_times: msg.reconsume_times,
                body: msg.body,
            });
            SendOutcome { message_id: msg.message_id, topic: msg.topic, queue_id, queue_offset }
        };
        self.new_message.notify_waiters();
        Ok(outcome)
    }
}

/// `name = 'value'` over user properties (and TAGS); the fake's whole SQL92.
fn fake_sql_matches(expression: &str, m: &StoredMessage) -> BackendResult<bool> {
    let (name, value) = expression
        .split_once('=')
        .ok_or_else(|| BackendError::BadRequest(format!("fake SQL92 only supports name = 'value': {expression}")))?;
    let name = name.trim();
    let value = value.trim();
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .ok_or_else(|| BackendError::BadRequest(format!("fake SQL92 wants a quoted value: {expression}")))?;
    let actual = if name == "TAGS" { m.tag.as_deref() } else { m.properties.get(name).map(String::as_str) };
    Ok(actual == Some(value))
}

#[async_trait]
impl MessagingBackend for FakeBackend {
    async fn topic(&self, topic: &str) -> BackendResult<Option<TopicInfo>> {
        Ok(self.state.lock().topics.get(topic).map(|t| t.info.clone()))
    }

    async fn route(&self) -> BackendResult<RouteInfo> {
        Ok(self.route.lock().clone())
    }

    async fn send_batch(&self, msgs: Vec<OutgoingMessage>) -> Vec<BackendResult<SendOutcome>> {
        self.send_batches.fetch_add(1, Ordering::SeqCst);
        let _open = self.send_gate.read().await;
        let mut results = Vec::with_capacity(msgs.len());
        for msg in msgs {
            results.push(self.store_one(msg));
        }
        results
    }

    async fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: u32,
        max_bytes: u64,
    ) -> BackendResult<Vec<StoredMessage>> {
        self.with_queue(topic, queue_id, |q| {
            let mut out = Vec::new();
            let mut bytes = 0u64;
            for m in q.iter().skip(offset.min(q.len() as u64) as usize).take(max_count as usize) {
                bytes += m.body.len() as u64;
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(m.clone());
            }
            out
        })
    }

    async fn min_offset(&self, topic: &str, queue_id: u32) -> BackendResult<u64> {
        self.with_queue(topic, queue_id, |_| 0)
    }

    async fn max_offset(&self, topic: &str, queue_id: u32) -> BackendResult<u64> {
        self.with_queue(topic, queue_id, |q| q.len() as u64)
    }

    async fn wait_for_new(
        &self,
        topic: &str,
        queue_id: u32,
        after_offset: u64,
        timeout: Duration,
    ) -> BackendResult<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so a send in between is not missed.
            let notified = self.new_message.notified();
            let max = self.max_offset(topic, queue_id).await?;
            if max > after_offset {
                return Ok(max);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.max_offset(topic, queue_id).await;
            }
        }
    }

    async fn commit_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> BackendResult<()> {
        if !self.is_leader() {
            return Err(BackendError::NotLeader { leader: self.leader_client_endpoint() });
        }
        self.state.lock().offsets.insert((group.to_string(), topic.to_string(), queue_id), offset);
        self.commits.lock().push((group.to_string(), topic.to_string(), queue_id, offset));
        Ok(())
    }

    async fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> BackendResult<Option<u64>> {
        Ok(self.state.lock().offsets.get(&(group.to_string(), topic.to_string(), queue_id)).copied())
    }

    async fn filter(
        &self,
        _group: &str,
        _topic: &str,
        kind: FilterKind,
        expression: &str,
        messages: &[StoredMessage],
    ) -> BackendResult<Vec<bool>> {
        match kind {
            FilterKind::Tag => Ok(vec![true; messages.len()]),
            FilterKind::Sql92 => messages.iter().map(|m| fake_sql_matches(expression, m)).collect(),
        }
    }

    fn leader_client_endpoint(&self) -> Option<String> {
        self.leader_endpoint.lock().clone()
    }

    fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    fn max_message_size_bytes(&self) -> u64 {
        self.max_message_size_bytes.load(Ordering::SeqCst)
    }
}

/// Properties map helper for tests.
pub fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

//! The seam between the RocketMQ v2 front end (`messaging`) and the broker core.
//!
//! The front end speaks the client protocol (routes, receipt handles, invisibility,
//! status codes); the core owns topics, the replicated commitlog, consume queues,
//! consumer offsets and plugins. Everything the front end needs from the core goes
//! through [`MessagingBackend`], so the service can be tested against an in-memory
//! fake (`messaging::fake`) and run unchanged on the real broker.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

/// Kind of messages a topic accepts (RocketMQ 5 topics are typed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicMessageType {
    Normal,
    Fifo,
    Delay,
    Transaction,
}

/// What the front end needs to know about a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub read_queue_count: u32,
    pub write_queue_count: u32,
    /// Permission bits as in RocketMQ's `perm`: 2 = writable, 4 = readable.
    pub perm: u32,
    pub message_type: TopicMessageType,
}

pub const PERM_WRITE: u32 = 2;
pub const PERM_READ: u32 = 4;

/// One member of this broker's replication group, as clients should reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// `host:port` of the member's client (MessagingService) listener.
    pub client_endpoint: String,
    pub is_leader: bool,
}

/// Where clients find the group that serves a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// Broker name (the replication group's name, `brokerName` in the config).
    pub broker_name: String,
    /// Every member's client endpoint, the current leader first (if one is known).
    pub members: Vec<GroupMember>,
}

/// A message to store, as the producer sent it (validated by the front end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub topic: String,
    /// Producer-generated id (`SystemProperties.message_id`); non-empty.
    pub message_id: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    /// User properties.
    pub properties: BTreeMap<String, String>,
    /// FIFO message group.
    pub message_group: Option<String>,
    /// Queue the front end would like (e.g. hash of the message group); the core's
    /// router plugins may override it. `None`: the core picks.
    pub queue_id: Option<u32>,
    pub born_timestamp_ms: u64,
    pub born_host: String,
    /// For DELAY messages: when the message becomes visible (ms since the epoch).
    pub delivery_timestamp_ms: Option<u64>,
    /// How often it was consumed before (non-zero for retry / DLQ copies).
    pub reconsume_times: u32,
    pub body: Vec<u8>,
}

/// Where a send landed (after the entry is committed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendOutcome {
    pub message_id: String,
    /// The topic it was stored in (a router plugin may redirect).
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
}

/// A message read back from a consume queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub message_id: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub message_group: Option<String>,
    pub born_timestamp_ms: u64,
    pub born_host: String,
    pub store_timestamp_ms: u64,
    pub store_host: String,
    pub delivery_timestamp_ms: Option<u64>,
    pub reconsume_times: u32,
    pub body: Vec<u8>,
}

/// Expression language of a subscription (mirrors `wit/policy.wit` `expression-kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterKind {
    Tag,
    Sql92,
}

/// Errors the core reports; the front end maps each kind to a RocketMQ status code
/// (`messaging::status`).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    #[error("topic not found: {0}")]
    TopicNotFound(String),
    #[error("message too large: {size_bytes} bytes > {max_bytes} bytes")]
    MessageTooLarge { size_bytes: u64, max_bytes: u64 },
    /// This node is not the leader; `leader` is the leader's client endpoint if known.
    #[error("not leader (leader: {leader:?})")]
    NotLeader { leader: Option<String> },
    /// A router/filter plugin refused; the text reaches the client.
    #[error("rejected by plugin: {0}")]
    PluginReject(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Commit did not happen in time (no quorum, slow disk).
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type BackendResult<T> = Result<T, BackendError>;

/// What the v2 messaging service needs from the broker core.
///
/// Offsets are consume-queue offsets: identical on every replica (derived from
/// committed entries only), so receipt handles stay valid across leader changes.
#[async_trait]
pub trait MessagingBackend: Send + Sync + 'static {
    /// `Ok(None)` if the topic does not exist.
    async fn topic(&self, topic: &str) -> BackendResult<Option<TopicInfo>>;

    /// Route of this broker group (it serves every topic it has).
    async fn route(&self) -> BackendResult<RouteInfo>;

    /// Stores the messages of one request; returns after their entries are committed: one
    /// result per message, in order. Applies router plugins and picks each queue
    /// (`queue_id` is a hint); the broker core replicates the accepted ones together (one
    /// commit round for the request). The one method a backend implements for sending, so
    /// a wrapper cannot turn a batch back into N commit rounds by forwarding `send`.
    async fn send_batch(&self, msgs: Vec<OutgoingMessage>) -> Vec<BackendResult<SendOutcome>>;

    /// Stores one message: a batch of one.
    async fn send(&self, msg: OutgoingMessage) -> BackendResult<SendOutcome> {
        let mut results = self.send_batch(vec![msg]).await;
        assert_eq!(results.len(), 1, "one result per message");
        results.pop().expect("one result")
    }

    /// Up to `max_count` messages from `offset` on, stopping before `max_bytes` of
    /// bodies is exceeded (at least one message if any exists). Ascending offsets;
    /// offsets below `min_offset` (retention) are skipped.
    async fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: u32,
        max_bytes: u64,
    ) -> BackendResult<Vec<StoredMessage>>;

    /// Lowest offset still readable in the queue.
    async fn min_offset(&self, topic: &str, queue_id: u32) -> BackendResult<u64>;

    /// One past the highest committed offset of the queue.
    async fn max_offset(&self, topic: &str, queue_id: u32) -> BackendResult<u64>;

    /// Waits until the queue's max offset exceeds `after_offset` or `timeout`
    /// passes; returns the max offset then. Used for long polling.
    async fn wait_for_new(
        &self,
        topic: &str,
        queue_id: u32,
        after_offset: u64,
        timeout: Duration,
    ) -> BackendResult<u64>;

    /// Records the group's consume progress (next offset to consume); replicated.
    async fn commit_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> BackendResult<()>;

    /// The group's committed progress, `None` if it never committed.
    async fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> BackendResult<Option<u64>>;

    /// Runs the filter plugins that apply to (group, topic). One bool per message,
    /// `true` = deliver. No plugin: all `true` for `Tag` (the front end already
    /// matched tags), and a `BadRequest` for `Sql92` (nothing can evaluate it).
    async fn filter(
        &self,
        group: &str,
        topic: &str,
        kind: FilterKind,
        expression: &str,
        messages: &[StoredMessage],
    ) -> BackendResult<Vec<bool>>;

    /// Client endpoint of the current leader, if known.
    fn leader_client_endpoint(&self) -> Option<String>;

    /// Whether this node is the leader (accepts sends and offset commits).
    fn is_leader(&self) -> bool;

    /// Largest accepted message body (`maxMessageSize`).
    fn max_message_size_bytes(&self) -> u64;
}

//! The seam between the admin service and the broker core.
//!
//! Requests and answers are the `wasmq.admin` protobuf messages themselves: the admin
//! service is a thin, checked pass-through, and the mapping from core types lives in one
//! place (the implementation of this trait on the core side).

use std::time::Duration;

use async_trait::async_trait;
use wasmq_proto::wasmq::admin::{
    BrokerStatusResponse, ConsumeMessageRequest, ConsumeMessageResponse, ConsumerProgressResponse, Message,
    PluginListResponse, PluginReloadResponse, SendMessageRequest, SendMessageResponse, TopicConfig,
    TopicStatusResponse, TransferLeaderResponse, UpdateTopicResponse,
};

/// What went wrong, in terms a remote operator can act on. Maps 1:1 to gRPC codes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AdminError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Writes go to the leader; `leader` is its client address when known.
    #[error("this broker is not the leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    /// No quorum, shutting down, timed out: retrying later may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type AdminResult<T> = Result<T, AdminError>;

/// Everything `wasmq.admin.Admin` needs from a broker. Arguments reaching these methods
/// have passed the service's checks (non-empty names, counts within limits).
#[async_trait]
pub trait AdminBackend: Send + Sync + 'static {
    /// Role, term, indexes, per-peer lag, disk usage, topics. Cheap: no I/O beyond statfs.
    async fn broker_status(&self) -> AdminResult<BrokerStatusResponse>;

    /// Creates or updates a topic (through the replicated log: leader only).
    async fn update_topic(&self, topic: TopicConfig) -> AdminResult<UpdateTopicResponse>;

    /// Per-queue min / max offsets of `topic`.
    async fn topic_status(&self, topic: &str) -> AdminResult<TopicStatusResponse>;

    /// Stores one message; returns after it is committed (leader only).
    async fn send_message(&self, request: SendMessageRequest) -> AdminResult<SendMessageResponse>;

    /// Reads up to `max_count` committed messages of one queue from `offset`.
    async fn consume_message(&self, request: ConsumeMessageRequest) -> AdminResult<ConsumeMessageResponse>;

    /// `Ok(None)` when this broker has no message with that id.
    async fn query_message_by_id(&self, message_id: &str) -> AdminResult<Option<Message>>;

    /// Per (group, topic, queue) offsets; `group` empty = every group.
    async fn consumer_progress(&self, group: &str) -> AdminResult<ConsumerProgressResponse>;

    async fn plugin_list(&self) -> AdminResult<PluginListResponse>;

    /// Rescans the plugin directory now (instead of waiting for the file watcher).
    async fn plugin_reload(&self) -> AdminResult<PluginReloadResponse>;

    /// Hands leadership to `to_node_id`; returns once it has moved or the attempt failed.
    async fn transfer_leader(&self, to_node_id: &str, timeout: Duration) -> AdminResult<TransferLeaderResponse>;
}

//! gRPC transport between Raft group members (`wasmq.raft.Raft`).
//!
//! Every member serves `Deliver` on its `dLegerPeers` address and keeps one sender task per
//! peer. A sender drains its bounded queue into one `MessageBatch` per call; answers come
//! back as messages in the peer's own calls. Loss is fine (Raft retransmits from its own
//! state), so every queue is bounded and drops when full, and a failing peer's queue is
//! discarded while the sender backs off and the lazy channel reconnects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};
use wasmq_proto::wasmq::raft as pb;
use wasmq_raft::{Entry, Message, NodeId};

/// Largest gRPC message either side accepts: a batch of appends of up to 4 MiB entries.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// One outgoing batch: at most this many messages …
const BATCH_MESSAGES_MAX: usize = 256;
/// … and about this many payload bytes (a single larger message still travels alone).
const BATCH_BYTES_MAX: usize = 16 << 20;
const CONNECT_TIMEOUT_MS: u64 = 500;
/// A call that takes longer fails; the sender backs off and the peer gets fresh messages.
const CALL_TIMEOUT_MS: u64 = 3_000;
const BACKOFF_MS_MIN: u64 = 20;
const BACKOFF_MS_MAX: u64 = 500;

/// Member ids (`dLegerSelfId` strings) ↔ Raft node ids (position in the sorted id list,
/// from 1). Every member derives the same mapping from the same `dLegerPeers`.
#[derive(Clone, Debug)]
pub struct Members {
    pub group: String,
    /// Sorted by id: `(id, address)`.
    pub list: Vec<(String, String)>,
}

impl Members {
    pub fn new(group: String, mut list: Vec<(String, String)>) -> Result<Members, String> {
        list.sort();
        if list.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("duplicate member id".into());
        }
        if list.is_empty() {
            return Err("no members".into());
        }
        Ok(Members { group, list })
    }

    pub fn node_id(&self, id: &str) -> Option<NodeId> {
        self.list.iter().position(|(m, _)| m == id).map(|i| i as NodeId + 1)
    }

    pub fn name(&self, node: NodeId) -> &str {
        &self.list[node as usize - 1].0
    }

    pub fn address(&self, node: NodeId) -> &str {
        &self.list[node as usize - 1].1
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        (1..=self.list.len() as NodeId).collect()
    }
}

pub fn to_proto(msg: Message) -> pb::RaftMessage {
    use pb::raft_message::Kind;
    let kind = match msg {
        Message::PreVote { term, last_index, last_term } => Kind::PreVote(pb::PreVote { term, last_index, last_term }),
        Message::PreVoteResponse { term, granted } => Kind::PreVoteResponse(pb::PreVoteResponse { term, granted }),
        Message::Vote { term, last_index, last_term, transfer } => {
            Kind::Vote(pb::Vote { term, last_index, last_term, transfer })
        }
        Message::VoteResponse { term, granted } => Kind::VoteResponse(pb::VoteResponse { term, granted }),
        Message::Append { term, prev_index, prev_term, entries, commit } => Kind::Append(pb::Append {
            term,
            prev_index,
            prev_term,
            // `Vec::from(Bytes)` reuses the buffer when it is not shared (entries read for
            // one peer are not), so bodies are not copied again.
            entries: entries
                .into_iter()
                .map(|e| pb::Entry { index: e.index, term: e.term, data: Vec::from(e.data) })
                .collect(),
            commit,
        }),
        Message::AppendResponse {
            term,
            success,
            match_index,
            durable_index,
            reject_prev_index,
            hint_index,
            hint_term,
        } => Kind::AppendResponse(pb::AppendResponse {
            term,
            success,
            match_index,
            durable_index,
            reject_prev_index,
            hint_index,
            hint_term,
        }),
        Message::Heartbeat { term, commit } => Kind::Heartbeat(pb::Heartbeat { term, commit }),
        Message::TimeoutNow { term } => Kind::TimeoutNow(pb::TimeoutNow { term }),
    };
    pb::RaftMessage { kind: Some(kind) }
}

/// `None` for a message without a kind (a newer peer's message type): dropped.
pub fn from_proto(msg: pb::RaftMessage) -> Option<Message> {
    use pb::raft_message::Kind;
    Some(match msg.kind? {
        Kind::PreVote(m) => Message::PreVote { term: m.term, last_index: m.last_index, last_term: m.last_term },
        Kind::PreVoteResponse(m) => Message::PreVoteResponse { term: m.term, granted: m.granted },
        Kind::Vote(m) => {
            Message::Vote { term: m.term, last_index: m.last_index, last_term: m.last_term, transfer: m.transfer }
        }
        Kind::VoteResponse(m) => Message::VoteResponse { term: m.term, granted: m.granted },
        Kind::Append(m) => Message::Append {
            term: m.term,
            prev_index: m.prev_index,
            prev_term: m.prev_term,
            entries: m
                .entries
                .into_iter()
                .map(|e| Entry { index: e.index, term: e.term, data: Bytes::from(e.data) })
                .collect(),
            commit: m.commit,
        },
        Kind::AppendResponse(m) => Message::AppendResponse {
            term: m.term,
            success: m.success,
            match_index: m.match_index,
            durable_index: m.durable_index,
            reject_prev_index: m.reject_prev_index,
            hint_index: m.hint_index,
            hint_term: m.hint_term,
        },
        Kind::Heartbeat(m) => Message::Heartbeat { term: m.term, commit: m.commit },
        Kind::TimeoutNow(m) => Message::TimeoutNow { term: m.term },
    })
}

/// Server side: validates a batch and hands its messages to the driver's bounded inbox.
pub struct RaftPeerService {
    members: Arc<Members>,
    self_node: NodeId,
    inbox: mpsc::Sender<(NodeId, Message)>,
    dropped: Arc<AtomicU64>,
}

impl RaftPeerService {
    pub fn new(
        members: Arc<Members>,
        self_node: NodeId,
        inbox: mpsc::Sender<(NodeId, Message)>,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        RaftPeerService { members, self_node, inbox, dropped }
    }

    pub fn into_server(self) -> pb::raft_server::RaftServer<RaftPeerService> {
        pb::raft_server::RaftServer::new(self)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftPeerService {
    async fn deliver(&self, request: Request<pb::MessageBatch>) -> Result<Response<pb::DeliverReply>, Status> {
        let batch = request.into_inner();
        if batch.group != self.members.group {
            return Err(Status::invalid_argument(format!(
                "batch for group `{}`, this member is in `{}`",
                batch.group, self.members.group
            )));
        }
        if self.members.node_id(&batch.to_id) != Some(self.self_node) {
            return Err(Status::invalid_argument(format!(
                "batch for `{}`, this member is `{}`",
                batch.to_id,
                self.members.name(self.self_node)
            )));
        }
        let Some(from) = self.members.node_id(&batch.from_id) else {
            return Err(Status::permission_denied(format!("`{}` is not a member of the group", batch.from_id)));
        };
        let mut accepted = 0u32;
        for m in batch.messages {
            let Some(msg) = from_proto(m) else { continue };
            match self.inbox.try_send((from, msg)) {
                Ok(()) => accepted += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(Status::unavailable("raft member is stopping"));
                }
            }
        }
        Ok(Response::new(pb::DeliverReply { accepted }))
    }
}

/// Address to listen on for a `dLegerPeers` address: the IP when it is one, else all
/// interfaces on its port (a host name may not be bindable).
pub fn listen_address(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (_, port) = address.rsplit_once(':').ok_or_else(|| format!("`{address}` has no port"))?;
    let port: u16 = port.parse().map_err(|e| format!("`{address}`: port: {e}"))?;
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

/// Client side: one task per peer, draining `rx` into `Deliver` calls.
pub fn spawn_peer_sender(
    members: Arc<Members>,
    self_node: NodeId,
    peer: NodeId,
    mut rx: mpsc::Receiver<Message>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let address = members.address(peer).to_string();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("peer address `{address}`: {e}"))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
        .tcp_nodelay(true);
    let channel = endpoint.connect_lazy();
    let mut client = pb::raft_client::RaftClient::new(channel)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let group = members.group.clone();
    let from_id = members.name(self_node).to_string();
    let to_id = members.name(peer).to_string();
    Ok(tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let first = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => break },
                _ = shutdown.changed() => break,
            };
            let mut bytes = first.payload_bytes();
            let mut messages = vec![to_proto(first)];
            while messages.len() < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
                match rx.try_recv() {
                    Ok(m) => {
                        bytes += m.payload_bytes();
                        messages.push(to_proto(m));
                    }
                    Err(_) => break,
                }
            }
            let batch =
                pb::MessageBatch { group: group.clone(), from_id: from_id.clone(), to_id: to_id.clone(), messages };
            match client.deliver(batch).await {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(peer = %to_id, %address, failures, "raft peer reachable again");
                    }
                    failures = 0;
                }
                Err(status) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(100) {
                        tracing::warn!(peer = %to_id, %address, failures, error = %status, "raft peer unreachable");
                    }
                    let backoff = (BACKOFF_MS_MIN << failures.min(8)).min(BACKOFF_MS_MAX);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                        _ = shutdown.changed() => break,
                    }
                    // What queued meanwhile is stale; the node resends from its own state.
                    while rx.try_recv().is_ok() {}
                }
            }
        }
    }))
}

//! gRPC transport between Raft group members (`wasmq.raft.Raft`).
//!
//! Every member serves `Pipe` (and the older one-call-per-batch `Deliver`) on its
//! `dLegerPeers` address and keeps one sender task per peer. A sender keeps one long-lived
//! `Pipe` stream open to its peer and drains its bounded queue into one `MessageBatch` per
//! stream message, sent whenever the stream has HTTP/2 send window (what queues while it is
//! shut goes out as one batch). Both ends run on `h2` directly: the sender writes the pipe
//! with `wasmq_proto::h2_duplex`, and the receiver reads it in its connection's task
//! ([`serve_peers`]). The peer answers only the batches that ask for it, now and then
//! (`PIPE_REPLY_INTERVAL_MS`): answers prove the link alive, and Raft's own answers come
//! back as messages in the peer's own batches. Loss is fine (Raft retransmits from its own
//! state), so every queue is bounded and drops when full, and a failing peer's queue is
//! discarded while the sender backs off and reconnects.
//!
//! Why a stream: a unary call per batch cost each side an HTTP/2 stream, header blocks and a
//! task; on a stream a batch is one DATA frame each way.

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
#[derive(Clone)]
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

    /// One batch, from `Deliver` or from a `Pipe`: refused whole when it is not for this
    /// member of this group from a member; else its messages go to the inbox (dropped, and
    /// counted, when the inbox is full: Raft retransmits).
    fn accept(&self, batch: pb::MessageBatch) -> Result<pb::DeliverReply, Status> {
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
        Ok(pb::DeliverReply { accepted, batches_through: 0 })
    }

    /// One batch of a `Pipe` (served by tonic's `pipe` or by [`PipeMethod`]): counted in
    /// `received`, accepted, and answered when it asks, the answer counting every batch of
    /// the pipe so far. A refused batch is an error, which ends the pipe.
    fn pipe_batch(&self, received: &mut u64, batch: pb::MessageBatch) -> Result<Option<pb::DeliverReply>, Status> {
        *received += 1;
        let wanted = !batch.no_reply;
        let reply = self.accept(batch)?;
        Ok(wanted.then_some(pb::DeliverReply { batches_through: *received, ..reply }))
    }
}

type ReplyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::DeliverReply, Status>> + Send>>;

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftPeerService {
    type PipeStream = ReplyStream;

    async fn pipe(
        &self,
        request: Request<tonic::Streaming<pb::MessageBatch>>,
    ) -> Result<Response<Self::PipeStream>, Status> {
        use futures::StreamExt;
        let service = self.clone();
        // A reply for each batch that wants one, in order, counting every batch received; the
        // first refused batch ends the stream with its status (the sender reconnects after a
        // back-off).
        let mut received = 0u64;
        let replies = request
            .into_inner()
            .map(move |batch| service.pipe_batch(&mut received, batch?))
            .scan(false, |failed, reply: Result<Option<pb::DeliverReply>, Status>| {
                let item = (!*failed).then_some(reply);
                *failed = item.as_ref().is_some_and(|r| r.is_err());
                std::future::ready(item)
            })
            .filter_map(|reply| std::future::ready(reply.transpose()));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn deliver(&self, request: Request<pb::MessageBatch>) -> Result<Response<pb::DeliverReply>, Status> {
        self.accept(request.into_inner()).map(Response::new)
    }
}

/// `Pipe` served in the connection's task (`H2Server::stream`): each batch is decoded and
/// handed to the inbox there, without tonic's per-call task, decoder and hyper's body
/// piping in between. The same answers as [`RaftPeerService::pipe`] gives through tonic.
struct PipeMethod(RaftPeerService);

impl wasmq_proto::h2_server::StreamMethod for PipeMethod {
    fn path(&self) -> &'static str {
        PIPE_PATH
    }

    fn call(
        &self,
        _: http::request::Parts,
        body: h2::RecvStream,
        mut respond: h2::server::SendResponse<Bytes>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let service = self.0.clone();
        Box::pin(async move {
            use wasmq_proto::h2_duplex::{DuplexReplies, MessageReader};
            let Ok(mut replies) = DuplexReplies::open(&mut respond, GRPC_MESSAGE_BYTES_MAX) else { return };
            let mut batches = MessageReader::<pb::MessageBatch>::requests(body, GRPC_MESSAGE_BYTES_MAX);
            let mut received = 0u64;
            // The first refused batch ends the pipe with its status.
            let end = loop {
                let batch = match batches.message().await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status),
                };
                match service.pipe_batch(&mut received, batch) {
                    Ok(Some(reply)) => {
                        if let Err(status) = replies.send(&reply) {
                            break Err(status);
                        }
                    }
                    Ok(None) => {}
                    Err(status) => break Err(status),
                }
            };
            if let Err(e) = replies.finish(end) {
                // The sender reset the pipe (it failed or stopped): nobody to tell.
                tracing::debug!(error = %e, "raft pipe ended");
            }
        })
    }
}

/// Serves the Raft peer service on `incoming` until `signal`: `Pipe` in each connection's
/// task ([`PipeMethod`]), `Deliver` through tonic's routes.
pub async fn serve_peers<I, IO, E>(service: RaftPeerService, incoming: I, signal: impl std::future::Future<Output = ()>)
where
    I: futures::Stream<Item = Result<IO, E>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    E: std::fmt::Display,
{
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(service.clone().into_server());
    wasmq_proto::h2_server::H2Server::new(routes.routes())
        .stream(Arc::new(PipeMethod(service)))
        .serve(incoming, signal)
        .await;
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

/// Client side: one task per peer, draining `rx` into batches on a `Pipe` stream (or
/// `Deliver` calls towards a member that does not serve `Pipe`).
pub fn spawn_peer_sender(
    members: Arc<Members>,
    self_node: NodeId,
    peer: NodeId,
    rx: mpsc::Receiver<Message>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let address = members.address(peer);
    let authority: http::uri::Authority = address.parse().map_err(|e| format!("peer address `{address}`: {e}"))?;
    if authority.port_u16().is_none() {
        return Err(format!("peer address `{address}` has no port"));
    }
    let sender = PeerSender {
        channel: peer_channel(&authority),
        authority,
        outbox: Outbox {
            group: members.group.clone(),
            from_id: members.name(self_node).to_string(),
            to_id: members.name(peer).to_string(),
            rx,
        },
        shutdown,
        failures: 0,
    };
    Ok(tokio::spawn(sender.run()))
}

/// A pipe asks the receiver for an answer on a batch when none is outstanding and this long
/// has passed since the last answer (the first batch always asks). Answers only prove the
/// link alive (`CALL_TIMEOUT_MS`); Raft's own responses travel in the peer's batches. One
/// answer per batch cost each side a frame and often a wake-up per batch.
const PIPE_REPLY_INTERVAL_MS: u64 = 100;

/// The `Pipe` method's path (the generated client's, which the pipe no longer uses).
const PIPE_PATH: &str = "/wasmq.raft.Raft/Pipe";

/// A connection to a peer, dialled on first use (bounded by `CONNECT_TIMEOUT_MS`, with
/// TCP_NODELAY). A pipe bounds its opening and its answers itself (`CALL_TIMEOUT_MS`), and
/// `Deliver` calls carry a `grpc-timeout`; the channel's own call timeout (the same) only
/// bounds a unary call without one. Without `CoalescingIo`: a pipe's batches are already
/// one message each, and the writer task would add a hand-off per flush (measured against
/// the tonic transport, the leader's CPU per message normalised by mqbench's: 1.01× with
/// it, 0.97× without, in two `ab.sh` runs).
fn peer_channel(authority: &http::uri::Authority) -> wasmq_proto::h2_channel::H2Channel {
    wasmq_proto::h2_channel::H2Channel::plain(
        authority.clone(),
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        Duration::from_millis(CALL_TIMEOUT_MS),
    )
}

struct PeerSender {
    /// The connection of the current pipe (or `Deliver` calls); replaced after a failure.
    channel: wasmq_proto::h2_channel::H2Channel,
    /// The peer's `dLegerPeers` address (`host:port`): what is dialled, and named in the logs.
    authority: http::uri::Authority,
    outbox: Outbox,
    shutdown: watch::Receiver<bool>,
    /// Consecutive failed calls or pipes (for the back-off and the log).
    failures: u32,
}

/// The driver's messages for one peer, and the header of every batch to it.
struct Outbox {
    group: String,
    from_id: String,
    to_id: String,
    rx: mpsc::Receiver<Message>,
}

impl Outbox {
    /// Waits for one message, then takes what else is queued, up to the batch limits.
    /// `None` when the driver is gone. Cancel-safe: nothing is taken before the first
    /// message arrived, and the rest is taken without awaiting.
    async fn next_batch(&mut self) -> Option<pb::MessageBatch> {
        let first = self.rx.recv().await?;
        let mut bytes = first.payload_bytes();
        let mut messages = vec![to_proto(first)];
        while messages.len() < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
            match self.rx.try_recv() {
                Ok(m) => {
                    bytes += m.payload_bytes();
                    messages.push(to_proto(m));
                }
                Err(_) => break,
            }
        }
        Some(pb::MessageBatch {
            group: self.group.clone(),
            from_id: self.from_id.clone(),
            to_id: self.to_id.clone(),
            messages,
            no_reply: false,
        })
    }

    /// Drops what queued: after a failure it is stale.
    fn discard(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// The answers a pipe's sender asked for and got.
#[derive(Debug)]
struct PipeAnswers {
    /// Batches sent on this pipe (the first one included).
    sent: u64,
    /// Batches the receiver confirmed.
    confirmed: u64,
    /// The batch whose answer is awaited, and when it was sent.
    awaited: Option<(u64, tokio::time::Instant)>,
    last_answer: tokio::time::Instant,
}

impl PipeAnswers {
    /// The first batch is sent (asking for an answer) when the pipe opens.
    fn new(now: tokio::time::Instant) -> PipeAnswers {
        PipeAnswers { sent: 1, confirmed: 0, awaited: Some((1, now)), last_answer: now }
    }

    /// One more batch goes out: whether it asks for an answer.
    fn sending(&mut self, now: tokio::time::Instant, interval: Duration) -> bool {
        self.sent += 1;
        let ask = self.awaited.is_none() && now.duration_since(self.last_answer) >= interval;
        if ask {
            self.awaited = Some((self.sent, now));
        }
        ask
    }

    /// An answer: it confirms every batch through `batches_through`, or (a member that answers
    /// every batch and does not count) the next one.
    fn answered(&mut self, reply: &pb::DeliverReply, now: tokio::time::Instant) -> Result<(), String> {
        let through = if reply.batches_through > 0 { reply.batches_through } else { self.confirmed + 1 };
        if through > self.sent || through < self.confirmed {
            return Err(format!("peer confirmed batch {through} of {} sent (after {})", self.sent, self.confirmed));
        }
        self.confirmed = through;
        self.last_answer = now;
        if self.awaited.is_some_and(|(batch, _)| batch <= through) {
            self.awaited = None;
        }
        Ok(())
    }

    /// When the awaited answer is overdue.
    fn deadline(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        self.awaited.map(|(_, sent_at)| sent_at + timeout)
    }
}

/// How a pipe or a run of unary calls ended.
enum SendEnd {
    Shutdown,
    /// The peer does not serve `Pipe` (an older member); the batch the pipe was opened for.
    PipeUnimplemented(pb::MessageBatch),
    Failed(Status),
}

impl PeerSender {
    async fn run(mut self) {
        let mut pipe = true;
        let mut unsent = None;
        loop {
            let end = if pipe { self.run_pipe().await } else { self.run_unary(unsent.take()).await };
            match end {
                SendEnd::Shutdown => return,
                SendEnd::PipeUnimplemented(batch) => {
                    unsent = Some(batch);
                    tracing::info!(peer = %self.outbox.to_id, address = %self.authority, "peer does not serve Raft/Pipe (an older member): one Deliver call per batch");
                    pipe = false;
                }
                SendEnd::Failed(status) => {
                    self.failures += 1;
                    if self.failures == 1 || self.failures.is_multiple_of(100) {
                        tracing::warn!(peer = %self.outbox.to_id, address = %self.authority, failures = self.failures, error = %status, "raft peer unreachable");
                    }
                    tracing::debug!(peer = %self.outbox.to_id, failures = self.failures, error = %status, "raft peer send failed");
                    // What queued behind the failed batch is stale (the node resends from its
                    // own state); what queues during the back-off is recent (a vote) and goes
                    // out after it.
                    self.outbox.discard();
                    let backoff = (BACKOFF_MS_MIN << self.failures.min(8)).min(BACKOFF_MS_MAX);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                        _ = self.shutdown.changed() => return,
                    }
                    // A fresh connection: the old one may be stalled (a cut link keeps it
                    // open) or lead to a member instance that is going away, and a channel
                    // keeps using a connection until it sees it fail.
                    self.channel = peer_channel(&self.authority);
                    // The peer may have been upgraded while it was away.
                    pipe = true;
                }
            }
        }
    }

    /// The next batch, or `None` at shutdown.
    async fn next_batch(&mut self) -> Option<pb::MessageBatch> {
        tokio::select! {
            b = self.outbox.next_batch() => b,
            _ = self.shutdown.changed() => None,
        }
    }

    fn delivered(&mut self) {
        if self.failures > 0 {
            tracing::info!(peer = %self.outbox.to_id, address = %self.authority, failures = self.failures, "raft peer reachable again");
        }
        self.failures = 0;
    }

    /// One `Pipe` stream until it fails: a batch goes out whenever the stream has send
    /// window (h2 holds back at most one batch beyond it; what queues meanwhile leaves as
    /// one batch); an answer asked for and not given within `CALL_TIMEOUT_MS` (a stalled
    /// connection, a paused peer) ends the pipe.
    ///
    /// Each batch is encoded here, straight into the pipe's h2 stream (`H2Channel::duplex`):
    /// with tonic's client it went through an mpsc and hyper's body task first.
    async fn run_pipe(&mut self) -> SendEnd {
        let call_timeout = Duration::from_millis(CALL_TIMEOUT_MS);
        let reply_interval = Duration::from_millis(PIPE_REPLY_INTERVAL_MS);
        // Opened when there is something to send, not before: dialing a member that is down
        // would only fail, raise the back-off and discard what queued meanwhile (a vote).
        let Some(first) = self.next_batch().await else { return SendEnd::Shutdown };
        let channel = self.channel.clone();
        // The batch goes out with the request's headers; it is kept until the peer accepted
        // the pipe: an older member gets it by `Deliver`.
        let open = async {
            let (mut sender, opening) = channel.duplex(PIPE_PATH, GRPC_MESSAGE_BYTES_MAX).await?;
            sender.send(&first)?;
            let answers = opening.answers::<pb::DeliverReply>().await?;
            Ok::<_, Status>((sender, answers))
        };
        let opened = tokio::select! {
            r = tokio::time::timeout(call_timeout, open) => r,
            _ = self.shutdown.changed() => return SendEnd::Shutdown,
        };
        let (mut sender, mut replies) = match opened {
            Err(_) => return SendEnd::Failed(Status::deadline_exceeded("opening the pipe timed out")),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => return SendEnd::PipeUnimplemented(first),
            Ok(Err(status)) => return SendEnd::Failed(status),
            Ok(Ok(pipe)) => pipe,
        };
        drop(first);
        let mut answers = PipeAnswers::new(tokio::time::Instant::now());
        // Send window for the next batch, awaited before taking it from the outbox: what
        // queues while the window is shut leaves as one batch when it opens.
        let mut room = false;
        loop {
            let deadline = answers.deadline(call_timeout);
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return SendEnd::Shutdown,
                reply = replies.message() => match reply {
                    Ok(Some(reply)) => match answers.answered(&reply, tokio::time::Instant::now()) {
                        Ok(()) => self.delivered(),
                        Err(why) => return SendEnd::Failed(Status::internal(why)),
                    },
                    Ok(None) => return SendEnd::Failed(Status::unavailable("peer closed the pipe")),
                    Err(status) => return SendEnd::Failed(status),
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    return SendEnd::Failed(Status::deadline_exceeded(format!("no answer on the pipe for {CALL_TIMEOUT_MS} ms")));
                }
                ready = sender.room(), if !room => match ready {
                    Ok(()) => room = true,
                    Err(status) => return SendEnd::Failed(status),
                },
                batch = self.outbox.next_batch(), if room => {
                    let Some(mut batch) = batch else { return SendEnd::Shutdown };
                    batch.no_reply = !answers.sending(tokio::time::Instant::now(), reply_interval);
                    room = false;
                    if let Err(status) = sender.send(&batch) {
                        return SendEnd::Failed(status);
                    }
                }
            }
        }
    }

    /// One `Deliver` call per batch (`unsent` first) until one fails.
    async fn run_unary(&mut self, mut unsent: Option<pb::MessageBatch>) -> SendEnd {
        let mut client = pb::raft_client::RaftClient::with_origin(self.channel.clone(), self.channel.origin())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        loop {
            let batch = match unsent.take() {
                Some(b) => b,
                None => match self.next_batch().await {
                    Some(b) => b,
                    None => return SendEnd::Shutdown,
                },
            };
            let mut request = Request::new(batch);
            request.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
            match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), client.deliver(request)).await {
                Ok(Ok(_)) => self.delivered(),
                Ok(Err(status)) => return SendEnd::Failed(status),
                Err(_) => return SendEnd::Failed(Status::deadline_exceeded("Deliver call timed out")),
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const HEARTBEATS: u64 = 2_000;

    /// Members `a` (the sender) and `b` (served on `listener`'s address).
    fn members(listener: &tokio::net::TcpListener) -> Arc<Members> {
        let b = listener.local_addr().unwrap().to_string();
        Arc::new(Members::new("g".into(), vec![("a".into(), "127.0.0.1:9".into()), ("b".into(), b)]).unwrap())
    }

    /// Serves `service` on `listener` as a member does (`serve_peers`).
    fn serve(listener: tokio::net::TcpListener, service: RaftPeerService) {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(serve_peers(service, incoming, std::future::pending()));
    }

    /// Serves `service` with tonic's server alone, as members before `serve_peers` did.
    fn serve_with_tonic<S: pb::raft_server::Raft>(listener: tokio::net::TcpListener, service: S) {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::raft_server::RaftServer::new(service))
                .serve_with_incoming(incoming),
        );
    }

    /// Sends `HEARTBEATS` numbered heartbeats from `a` to `b` and checks `b`'s inbox gets
    /// every one, once, in order.
    async fn assert_heartbeats_arrive(members: Arc<Members>, mut inbox: mpsc::Receiver<(NodeId, Message)>) {
        let (tx, rx) = mpsc::channel(PEER_TEST_QUEUE);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let sender = spawn_peer_sender(members.clone(), 1, 2, rx, stop_rx).unwrap();
        let feed = tokio::spawn(async move {
            for commit in 1..=HEARTBEATS {
                tx.send(Message::Heartbeat { term: 1, commit }).await.unwrap();
            }
            tx
        });
        for expected in 1..=HEARTBEATS {
            let (from, msg) = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.unwrap().unwrap();
            assert_eq!(from, 1);
            assert_eq!(msg, Message::Heartbeat { term: 1, commit: expected });
        }
        let _tx = feed.await.unwrap();
        assert!(inbox.try_recv().is_err(), "a heartbeat arrived twice");
        sender.abort();
    }

    /// 8 MiB of appends, more than h2's flow-control window, while no answer is awaited
    /// (only the first batch asks within the answer interval): every append arrives, once,
    /// in order. (The stall fixed in the same change, a sender not woken when its queue to
    /// the connection had room again, did not show here in 3 runs of the broken version; it
    /// showed end to end, a follower stuck in about 1 of 3 runs of a 3-node group.)
    #[tokio::test]
    async fn pipe_keeps_sending_while_the_connection_catches_up() {
        const APPENDS: u64 = 64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let members = members(&listener);
        let (inbox_tx, mut inbox) = mpsc::channel(APPENDS as usize);
        serve(listener, RaftPeerService::new(members.clone(), 2, inbox_tx, Arc::new(AtomicU64::new(0))));
        let (tx, rx) = mpsc::channel(APPENDS as usize);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let sender = spawn_peer_sender(members, 1, 2, rx, stop_rx).unwrap();
        let append = |index: u64| Message::Append {
            term: 1,
            prev_index: index - 1,
            prev_term: 1,
            entries: vec![Entry { index, term: 1, data: Bytes::from(vec![index as u8; 128 << 10]) }],
            commit: 0,
        };
        let feed = tokio::spawn(async move {
            for index in 1..=APPENDS {
                tx.send(append(index)).await.unwrap();
                tokio::task::yield_now().await;
            }
            tx
        });
        for index in 1..=APPENDS {
            let got = tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS / 2), inbox.recv()).await;
            let (_, msg) = got.unwrap_or_else(|_| panic!("append {index} did not arrive: the pipe stalled")).unwrap();
            assert_eq!(msg, append(index));
        }
        let _tx = feed.await.unwrap();
        sender.abort();
    }

    /// The peer queue of the test: larger than the inbox traffic so nothing is dropped.
    const PEER_TEST_QUEUE: usize = 64;

    /// Heartbeats through a pipe to a member served by `serve`.
    async fn pipe_delivers_every_message_once_in_order_when(serve: fn(tokio::net::TcpListener, RaftPeerService)) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let members = members(&listener);
        // Room for every heartbeat: the pipe has no window of unanswered batches any more
        // (Raft bounds its own appends in flight), so a fast sender may fill a small inbox,
        // and what a full inbox drops Raft would retransmit, but this test would miss.
        let (inbox_tx, inbox) = mpsc::channel(HEARTBEATS as usize);
        serve(listener, RaftPeerService::new(members.clone(), 2, inbox_tx, Arc::new(AtomicU64::new(0))));
        assert_heartbeats_arrive(members, inbox).await;
    }

    #[tokio::test]
    async fn pipe_delivers_every_message_once_in_order() {
        pipe_delivers_every_message_once_in_order_when(serve).await;
    }

    /// A member of a version whose peer service was tonic's server alone (a rolling upgrade).
    #[tokio::test]
    async fn pipe_delivers_every_message_once_in_order_to_a_tonic_server() {
        pipe_delivers_every_message_once_in_order_when(serve_with_tonic::<RaftPeerService>).await;
    }

    #[test]
    fn a_pipe_asks_for_an_answer_now_and_then_and_counts_what_it_confirms() {
        let t0 = tokio::time::Instant::now();
        let interval = Duration::from_millis(PIPE_REPLY_INTERVAL_MS);
        let timeout = Duration::from_millis(CALL_TIMEOUT_MS);
        let mut a = PipeAnswers::new(t0);
        // The first batch asks; nothing else asks while its answer is awaited.
        assert_eq!(a.deadline(timeout), Some(t0 + timeout));
        assert!(!a.sending(t0 + interval * 2, interval));
        let reply = |through| pb::DeliverReply { accepted: 1, batches_through: through };
        a.answered(&reply(1), t0 + interval).unwrap();
        assert_eq!(a.deadline(timeout), None, "nothing awaited after the answer");
        // Within the interval after an answer: no ask; after it: one ask, then none.
        assert!(!a.sending(t0 + interval + interval / 2, interval));
        let asked_at = t0 + interval * 2;
        assert!(a.sending(asked_at, interval));
        assert!(!a.sending(asked_at + interval * 5, interval));
        assert_eq!(a.deadline(timeout), Some(asked_at + timeout));
        // Batches 1..=5 are out; 4 was the asking one. An answer counting 3 leaves it awaited.
        a.answered(&reply(3), asked_at).unwrap();
        assert_eq!(a.deadline(timeout), Some(asked_at + timeout));
        a.answered(&reply(5), asked_at).unwrap();
        assert_eq!(a.deadline(timeout), None);
        // A member that answers every batch without counting: one answer, one batch.
        assert!(a.sending(asked_at + interval * 2, interval));
        a.answered(&reply(0), asked_at + interval * 2).unwrap();
        assert_eq!(a.deadline(timeout), None, "batch 6 confirmed by an uncounted answer");
        // Confirming more than was sent, or less than before, is a broken peer.
        assert!(a.answered(&reply(7), asked_at).is_err());
        assert!(a.answered(&reply(2), asked_at).is_err());
    }

    /// The per-batch step both `Pipe` servers share: every batch counts, only those that ask
    /// are answered, and a refused batch is an error whose messages reach nobody.
    #[test]
    fn a_pipe_batch_is_counted_and_answered_only_when_it_asks() {
        let members = Arc::new(
            Members::new("g".into(), vec![("a".into(), "127.0.0.1:9".into()), ("b".into(), "127.0.0.1:10".into())])
                .unwrap(),
        );
        let (inbox_tx, mut inbox) = mpsc::channel(16);
        let service = RaftPeerService::new(members, 2, inbox_tx, Arc::new(AtomicU64::new(0)));
        let batch = |group: &str, commits: std::ops::RangeInclusive<u64>, no_reply| pb::MessageBatch {
            group: group.into(),
            from_id: "a".into(),
            to_id: "b".into(),
            messages: commits.map(|commit| to_proto(Message::Heartbeat { term: 1, commit })).collect(),
            no_reply,
        };
        let mut received = 0;
        assert_eq!(service.pipe_batch(&mut received, batch("g", 1..=2, true)).unwrap(), None);
        assert_eq!(service.pipe_batch(&mut received, batch("g", 3..=3, true)).unwrap(), None);
        assert_eq!(
            service.pipe_batch(&mut received, batch("g", 4..=6, false)).unwrap(),
            Some(pb::DeliverReply { accepted: 3, batches_through: 3 }),
            "the answer counts the quiet batches before it"
        );
        let refused = service.pipe_batch(&mut received, batch("other", 7..=7, false)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        for commit in 1..=6 {
            assert_eq!(inbox.try_recv().unwrap(), (1, Message::Heartbeat { term: 1, commit }));
        }
        assert!(inbox.try_recv().is_err(), "the refused batch reached the inbox");
    }

    /// A peer's address is checked before its sender starts; the error names it.
    #[test]
    fn a_peer_address_without_a_port_or_unparsable_is_refused() {
        for (address, why) in [("127.0.0.1", "has no port"), ("127.0.0.1:x y", "peer address `127.0.0.1:x y`")] {
            let members = Arc::new(
                Members::new("g".into(), vec![("a".into(), "127.0.0.1:9".into()), ("b".into(), address.into())])
                    .unwrap(),
            );
            let (_tx, rx) = mpsc::channel(1);
            let (_stop_tx, stop_rx) = watch::channel(false);
            let e = spawn_peer_sender(members, 1, 2, rx, stop_rx).unwrap_err();
            assert!(e.contains(why) && e.contains(address), "{address}: {e}");
        }
    }

    /// A member of a version before `Pipe`: UNIMPLEMENTED for it, `Deliver` as before.
    struct OlderMember(RaftPeerService, Arc<AtomicU64>);

    #[tonic::async_trait]
    impl pb::raft_server::Raft for OlderMember {
        type PipeStream = ReplyStream;

        async fn pipe(&self, _: Request<tonic::Streaming<pb::MessageBatch>>) -> Result<Response<ReplyStream>, Status> {
            Err(Status::unimplemented("no Pipe before this version"))
        }

        async fn deliver(&self, request: Request<pb::MessageBatch>) -> Result<Response<pb::DeliverReply>, Status> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.deliver(request).await
        }
    }

    #[tokio::test]
    async fn falls_back_to_deliver_towards_an_older_member() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let members = members(&listener);
        let (inbox_tx, inbox) = mpsc::channel(4 * PEER_TEST_QUEUE);
        let calls = Arc::new(AtomicU64::new(0));
        let inner = RaftPeerService::new(members.clone(), 2, inbox_tx, Arc::new(AtomicU64::new(0)));
        serve_with_tonic(listener, OlderMember(inner, calls.clone()));
        assert_heartbeats_arrive(members, inbox).await;
        assert!(calls.load(Ordering::Relaxed) > 0, "nothing went through Deliver");
    }

    #[tokio::test]
    async fn pipe_ends_at_a_batch_for_another_group() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let members = members(&listener);
        let address = members.address(2).to_string();
        let (inbox_tx, mut inbox) = mpsc::channel(16);
        serve(listener, RaftPeerService::new(members, 2, inbox_tx, Arc::new(AtomicU64::new(0))));
        let mut client = pb::raft_client::RaftClient::connect(format!("http://{address}")).await.unwrap();
        let batch = |group: &str, commit| pb::MessageBatch {
            group: group.into(),
            from_id: "a".into(),
            to_id: "b".into(),
            messages: vec![to_proto(Message::Heartbeat { term: 1, commit })],
            no_reply: false,
        };
        let batches = vec![batch("g", 1), batch("other", 2), batch("g", 3)];
        let mut replies = client.pipe(tokio_stream::iter(batches)).await.unwrap().into_inner();
        assert_eq!(replies.message().await.unwrap(), Some(pb::DeliverReply { accepted: 1, batches_through: 1 }));
        let refused = replies.message().await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("group `other`"), "{refused:?}");
        assert_eq!(inbox.recv().await.unwrap().1, Message::Heartbeat { term: 1, commit: 1 });
        // Nothing after the refused batch was taken.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(inbox.try_recv().is_err());
    }
}

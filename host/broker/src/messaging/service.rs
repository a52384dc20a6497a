//! `apache.rocketmq.v2.MessagingService` over a [`MessagingBackend`].
//!
//! Every RPC answers with a RocketMQ status inside its response (what the official
//! clients read); bad input gets a BAD_REQUEST-family code, never a panic. On a
//! follower, calls that need the leader are forwarded to it (`forward`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response};
use v2::Code;
use v2::messaging_service_server::{MessagingService, MessagingServiceServer};
use wasmq_proto::apache::rocketmq::v2;
use wasmq_proto::unary_route::{UnaryHandler, UnaryRouteLayer};

use super::backend::{MessagingBackend, OutgoingMessage, PERM_READ, PERM_WRITE, RouteInfo, TopicInfo};
use super::forward::{self, Forwarder};
use super::message_codec::{self, Delivery, duration_ms, to_timestamp, validate_group, validate_topic};
use super::now_ms;
use super::pop::{PopError, PopLimits, PopService, QueueKey, ReceiveRequest, Subscription};
use super::receipt_handle::ReceiptHandle;
use super::send_coalescer::SendCoalescer;
use super::status::{combine, from_backend, ok, status};
use super::tag_expression::TagExpression;
use super::telemetry::{ClientRegistry, TelemetryLimits};

/// The service as a gRPC server mounts it: tonic's generated server for every method, and
/// in front of it (`Server::layer`) the route that serves SendMessage without tonic's
/// router and generic codec (`wasmq_proto::unary_route`: the leader's hottest call; same
/// handler, same answers).
pub struct MessagingServer {
    pub service: MessagingServiceServer<Messaging>,
    pub send_route: UnaryRouteLayer<v2::SendMessageRequest, v2::SendMessageResponse>,
}

/// Limits of the front end. Defaults follow RocketMQ's proxy where it has one.
#[derive(Clone, Debug)]
pub struct MessagingConfig {
    pub send_batch_max: usize,
    pub ack_batch_max: usize,
    pub receive_batch_max: u32,
    pub pull_batch_max: u32,
    pub long_polling_ms_max: u64,
    pub long_polling_ms_default: u64,
    pub invisible_ms_min: u64,
    pub invisible_ms_max: u64,
    /// Used when a receive names none (push consumers).
    pub invisible_ms_default: u64,
    /// Largest gRPC message decoded or encoded (a send batch, one received message).
    pub grpc_message_bytes_max: usize,
    /// Telemetry streams open at once.
    pub telemetry_streams_max: usize,
    /// ReceiveMessage/PullMessage calls (mostly long polls) in progress at once.
    pub receives_in_flight_max: usize,
    /// Queues one receive call visits (topics have at most a few hundred).
    pub receive_queues_max: u32,
    pub pop: PopLimits,
    pub telemetry: TelemetryLimits,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            send_batch_max: 1024,
            ack_batch_max: 1024,
            receive_batch_max: 32,
            pull_batch_max: 256,
            long_polling_ms_max: 20_000,
            long_polling_ms_default: 20_000,
            // The reference proxy requires 10 s; 1 s keeps redelivery tests fast.
            invisible_ms_min: 1_000,
            invisible_ms_max: 12 * 3600 * 1000,
            invisible_ms_default: 60_000,
            grpc_message_bytes_max: 64 * 1024 * 1024,
            telemetry_streams_max: 65_536,
            receives_in_flight_max: 16_384,
            receive_queues_max: 256,
            pop: PopLimits::default(),
            telemetry: TelemetryLimits::default(),
        }
    }
}

pub struct Messaging {
    backend: Arc<dyn MessagingBackend>,
    config: MessagingConfig,
    pop: Arc<PopService>,
    clients: Arc<ClientRegistry>,
    forwarder: Arc<Forwarder>,
    send_coalescer: SendCoalescer,
    was_leader: AtomicBool,
    telemetry_streams: Arc<AtomicUsize>,
    receive_rotation: AtomicU32,
    receives_in_flight: Arc<AtomicUsize>,
}

type RpcResult<T> = Result<Response<T>, tonic::Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Responses that carry a RocketMQ status.
trait WithStatus: Default {
    fn set_status(&mut self, s: v2::Status);
    fn with_status(s: v2::Status) -> Self {
        let mut r = Self::default();
        r.set_status(s);
        r
    }
}

macro_rules! with_status {
    ($($t:ty),* $(,)?) => {$(
        impl WithStatus for $t {
            fn set_status(&mut self, s: v2::Status) {
                self.status = Some(s);
            }
        }
    )*};
}

with_status!(
    v2::QueryRouteResponse,
    v2::HeartbeatResponse,
    v2::SendMessageResponse,
    v2::QueryAssignmentResponse,
    v2::AckMessageResponse,
    v2::ForwardMessageToDeadLetterQueueResponse,
    v2::UpdateOffsetResponse,
    v2::GetOffsetResponse,
    v2::QueryOffsetResponse,
    v2::EndTransactionResponse,
    v2::NotifyClientTerminationResponse,
    v2::ChangeInvisibleDurationResponse,
    v2::RecallMessageResponse,
    v2::SyncLiteSubscriptionResponse,
);

fn reply<T>(r: Result<T, v2::Status>) -> RpcResult<T>
where
    T: WithStatus,
{
    Ok(Response::new(r.unwrap_or_else(T::with_status)))
}

fn pop_status(e: &PopError) -> v2::Status {
    match e {
        PopError::Backend(b) => from_backend(b),
        PopError::TooManyQueues(_) | PopError::TooManyAckedAhead(_) => status(Code::TooManyRequests, e.to_string()),
        PopError::AlreadyAcked(_) => status(Code::InvalidReceiptHandle, e.to_string()),
    }
}

fn client_id<T>(request: &Request<T>) -> Result<String, v2::Status> {
    match request.metadata().get("x-mq-client-id").and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() && id.len() <= 256 => Ok(id.to_string()),
        _ => Err(status(Code::ClientIdRequired, "x-mq-client-id metadata is required")),
    }
}

/// `Endpoints` for a route: every member, leader first. The Python client sorts the
/// addresses anyway, which is why followers forward.
fn endpoints(route: &RouteInfo) -> Result<v2::Endpoints, v2::Status> {
    let mut addresses = Vec::with_capacity(route.members.len());
    let mut all_ipv4 = true;
    let mut all_ipv6 = true;
    for m in &route.members {
        let (host, port) = m.client_endpoint.rsplit_once(':').ok_or_else(|| {
            status(Code::InternalServerError, format!("member endpoint {:?} has no port", m.client_endpoint))
        })?;
        let port: u16 = port.parse().map_err(|_| {
            status(Code::InternalServerError, format!("member endpoint {:?} has a bad port", m.client_endpoint))
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        all_ipv4 &= host.parse::<std::net::Ipv4Addr>().is_ok();
        all_ipv6 &= host.parse::<std::net::Ipv6Addr>().is_ok();
        addresses.push((m.is_leader, v2::Address { host: host.to_string(), port: port as i32 }));
    }
    if addresses.is_empty() {
        return Err(status(Code::HaNotAvailable, "no broker endpoint is known"));
    }
    addresses.sort_by_key(|(leader, _)| !*leader);
    let mut addresses: Vec<v2::Address> = addresses.into_iter().map(|(_, a)| a).collect();
    let scheme = if all_ipv4 {
        v2::AddressScheme::IPv4
    } else if all_ipv6 {
        v2::AddressScheme::IPv6
    } else {
        // A domain-name endpoint may hold one address only.
        addresses.truncate(1);
        v2::AddressScheme::DomainName
    };
    Ok(v2::Endpoints { scheme: scheme as i32, addresses })
}

/// Answers to clients name ONE address per broker: the member the client reached (it
/// forwards leader-only RPCs to the leader), else the leader. Why not every member: the
/// official clients turn several addresses into one gRPC target `ipv4:a,b,c`, and send it
/// as the HTTP/2 `:authority`, which hyper/h2 (tonic's server) rejects with RST_STREAM
/// PROTOCOL_ERROR before any handler runs. Pinning to the reached member also keeps a
/// client that was pointed at a surviving member working when the leader dies.
fn pin_endpoints<'a>(queues: impl Iterator<Item = &'a mut v2::MessageQueue>, reached: Option<std::net::SocketAddr>) {
    for queue in queues {
        let Some(endpoints) = queue.broker.as_mut().and_then(|b| b.endpoints.as_mut()) else { continue };
        let reached_index = reached.and_then(|addr| {
            endpoints.addresses.iter().position(|a| {
                a.port == i32::from(addr.port()) && a.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip == addr.ip())
            })
        });
        // Leader first otherwise (see `endpoints`).
        let keep = reached_index.unwrap_or(0);
        if endpoints.addresses.len() > 1 {
            let chosen = endpoints.addresses.swap_remove(keep);
            endpoints.addresses = vec![chosen];
        }
    }
}

fn message_queues(topic: &TopicInfo, namespace: &str, route: &RouteInfo) -> Result<Vec<v2::MessageQueue>, v2::Status> {
    let broker = v2::Broker { name: route.broker_name.clone(), id: 0, endpoints: Some(endpoints(route)?) };
    let count = topic.read_queue_count.max(topic.write_queue_count);
    let accept = vec![message_codec::wire_message_type(topic.message_type) as i32];
    Ok((0..count)
        .map(|id| {
            let read = id < topic.read_queue_count && topic.perm & PERM_READ != 0;
            let write = id < topic.write_queue_count && topic.perm & PERM_WRITE != 0;
            let permission = match (read, write) {
                (true, true) => v2::Permission::ReadWrite,
                (true, false) => v2::Permission::Read,
                (false, true) => v2::Permission::Write,
                (false, false) => v2::Permission::None,
            };
            v2::MessageQueue {
                topic: Some(v2::Resource { resource_namespace: namespace.to_string(), name: topic.name.clone() }),
                id: id as i32,
                permission: permission as i32,
                broker: Some(broker.clone()),
                accept_message_types: accept.clone(),
            }
        })
        .collect())
}

impl Messaging {
    pub fn new(backend: Arc<dyn MessagingBackend>, config: MessagingConfig) -> Self {
        assert!(config.receive_batch_max >= 1 && config.invisible_ms_min <= config.invisible_ms_max);
        assert!((config.invisible_ms_min..=config.invisible_ms_max).contains(&config.invisible_ms_default));
        assert!(config.long_polling_ms_default <= config.long_polling_ms_max);
        assert!(config.receive_queues_max >= 1 && config.pull_batch_max >= 1);
        let pop = Arc::new(PopService::new(backend.clone(), config.pop.clone()));
        let forwarder = Arc::new(Forwarder::new(config.grpc_message_bytes_max));
        if config.pop.commit_interval_ms > 0 {
            spawn_offset_flusher(&pop, &backend, Duration::from_millis(config.pop.commit_interval_ms));
        }
        Messaging {
            pop,
            clients: Arc::new(ClientRegistry::new(config.telemetry.clone())),
            forwarder: forwarder.clone(),
            send_coalescer: SendCoalescer::new(forwarder, config.send_batch_max, config.grpc_message_bytes_max),
            was_leader: AtomicBool::new(backend.is_leader()),
            telemetry_streams: Arc::new(AtomicUsize::new(0)),
            receive_rotation: AtomicU32::new(0),
            receives_in_flight: Arc::new(AtomicUsize::new(0)),
            backend,
            config,
        }
    }

    /// Writes consumer progress not yet replicated (call before shutdown).
    pub async fn flush_offsets(&self) -> Result<(), PopError> {
        self.pop.flush().await
    }

    /// What a gRPC server mounts for this service, message size limits applied to both parts.
    pub fn into_server(self) -> MessagingServer {
        let bytes = self.config.grpc_message_bytes_max;
        let messaging = Arc::new(self);
        let for_route = messaging.clone();
        let handler: UnaryHandler<v2::SendMessageRequest, v2::SendMessageResponse> = Arc::new(move |request| {
            let messaging = for_route.clone();
            Box::pin(async move { messaging.send_message(request).await })
        });
        MessagingServer {
            service: MessagingServiceServer::from_arc(messaging)
                .max_decoding_message_size(bytes)
                .max_encoding_message_size(bytes),
            send_route: UnaryRouteLayer::new(v2::SEND_MESSAGE_PATH, bytes, handler),
        }
    }

    /// Pop state is only valid while this node stays leader: reset on any change.
    fn observe_leadership(&self) -> bool {
        let leader = self.backend.is_leader();
        if self.was_leader.swap(leader, Ordering::SeqCst) != leader {
            tracing::info!(leader, "leadership changed; pop state reset");
            self.pop.reset();
        }
        leader
    }

    /// Where a call that needs the leader runs. A follower never serves it itself:
    /// its pop state would diverge from the leader's.
    fn leader_route<T>(&self, request: &Request<T>) -> LeaderRoute {
        if self.observe_leadership() {
            return LeaderRoute::Local;
        }
        if forward::is_forwarded(request.metadata()) {
            return LeaderRoute::Unavailable(status(
                Code::HaNotAvailable,
                "forwarded to a node that is no longer the leader; retry",
            ));
        }
        match self.backend.leader_client_endpoint() {
            Some(leader) => LeaderRoute::Forward(leader),
            None => LeaderRoute::Unavailable(status(
                Code::HaNotAvailable,
                "no leader is known (election in progress); retry",
            )),
        }
    }

    async fn topic(&self, resource: Option<&v2::Resource>) -> Result<TopicInfo, v2::Status> {
        let name = validate_topic(resource)?;
        match self.backend.topic(&name).await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(status(Code::TopicNotFound, format!("topic {name} does not exist"))),
            Err(e) => Err(from_backend(&e)),
        }
    }

    async fn query_route_impl(&self, req: v2::QueryRouteRequest) -> Result<v2::QueryRouteResponse, v2::Status> {
        let topic = self.topic(req.topic.as_ref()).await?;
        let route = self.backend.route().await.map_err(|e| from_backend(&e))?;
        let namespace = req.topic.as_ref().map(|t| t.resource_namespace.as_str()).unwrap_or("");
        Ok(v2::QueryRouteResponse { status: Some(ok()), message_queues: message_queues(&topic, namespace, &route)? })
    }

    async fn query_assignment_impl(
        &self,
        req: v2::QueryAssignmentRequest,
    ) -> Result<v2::QueryAssignmentResponse, v2::Status> {
        validate_group(req.group.as_ref())?;
        let topic = self.topic(req.topic.as_ref()).await?;
        let route = self.backend.route().await.map_err(|e| from_backend(&e))?;
        let namespace = req.topic.as_ref().map(|t| t.resource_namespace.as_str()).unwrap_or("");
        // Pop semantics let every consumer of the group read every queue safely.
        let assignments = message_queues(&topic, namespace, &route)?
            .into_iter()
            .filter(|q| q.permission == v2::Permission::Read as i32 || q.permission == v2::Permission::ReadWrite as i32)
            .map(|q| v2::Assignment { message_queue: Some(q) })
            .collect();
        Ok(v2::QueryAssignmentResponse { status: Some(ok()), assignments })
    }

    /// One message of a send request, checked and converted for the backend.
    async fn outgoing(&self, msg: &v2::Message) -> Result<OutgoingMessage, v2::Status> {
        let topic = self.topic(msg.topic.as_ref()).await?;
        if topic.perm & PERM_WRITE == 0 || topic.write_queue_count == 0 {
            return Err(status(Code::Forbidden, format!("topic {} is not writable", topic.name)));
        }
        message_codec::to_outgoing(
            msg,
            topic.message_type,
            topic.write_queue_count,
            self.backend.max_message_size_bytes(),
            now_ms(),
        )
    }

    /// Every message of the request gets its own result entry, in order; the ones that pass
    /// the checks go to the backend together (one replication round for the request).
    async fn send_message_impl(&self, req: v2::SendMessageRequest) -> Result<v2::SendMessageResponse, v2::Status> {
        if req.messages.is_empty() {
            return Err(status(Code::BadRequest, "no messages"));
        }
        if req.messages.len() > self.config.send_batch_max {
            return Err(status(
                Code::BadRequest,
                format!("more than {} messages in one request", self.config.send_batch_max),
            ));
        }
        let failed = |msg: &v2::Message, s: v2::Status| v2::SendResultEntry {
            status: Some(s),
            message_id: msg.system_properties.as_ref().map(|p| p.message_id.clone()).unwrap_or_default(),
            ..Default::default()
        };
        // `None`: waiting for the backend's answer.
        let mut entries: Vec<Option<v2::SendResultEntry>> = Vec::with_capacity(req.messages.len());
        let mut outgoing = Vec::with_capacity(req.messages.len());
        for msg in &req.messages {
            match self.outgoing(msg).await {
                Ok(out) => {
                    outgoing.push(out);
                    entries.push(None);
                }
                Err(s) => entries.push(Some(failed(msg, s))),
            }
        }
        let sent_len = outgoing.len();
        let sent = if outgoing.is_empty() { Vec::new() } else { self.backend.send_batch(outgoing).await };
        assert_eq!(sent.len(), sent_len, "one backend result per message");
        let mut sent = sent.into_iter();
        let entries: Vec<v2::SendResultEntry> = entries
            .into_iter()
            .zip(&req.messages)
            .map(|(entry, msg)| {
                entry.unwrap_or_else(|| match sent.next().expect("one backend result per message") {
                    Ok(sent) => v2::SendResultEntry {
                        status: Some(ok()),
                        message_id: sent.message_id,
                        transaction_id: String::new(),
                        offset: sent.queue_offset as i64,
                        recall_handle: String::new(),
                    },
                    Err(e) => failed(msg, from_backend(&e)),
                })
            })
            .collect();
        let overall = combine(entries.iter().map(|e| e.status.clone().unwrap_or_else(ok)));
        Ok(v2::SendMessageResponse { status: Some(overall), entries })
    }

    fn decode_handle(&self, text: &str, group: &str, topic: &str) -> Result<ReceiptHandle, v2::Status> {
        let h = ReceiptHandle::decode(text).map_err(|e| status(Code::InvalidReceiptHandle, e.to_string()))?;
        if h.group != group || h.topic != topic {
            return Err(status(
                Code::InvalidReceiptHandle,
                format!("receipt handle is for group {} topic {}, not {group} {topic}", h.group, h.topic),
            ));
        }
        Ok(h)
    }

    async fn ack_impl(&self, req: v2::AckMessageRequest) -> Result<v2::AckMessageResponse, v2::Status> {
        let group = validate_group(req.group.as_ref())?;
        let topic = validate_topic(req.topic.as_ref())?;
        if req.entries.is_empty() || req.entries.len() > self.config.ack_batch_max {
            return Err(status(Code::BadRequest, format!("1..={} entries per ack", self.config.ack_batch_max)));
        }
        let mut entries = Vec::with_capacity(req.entries.len());
        for e in &req.entries {
            let result = match self.decode_handle(&e.receipt_handle, &group, &topic) {
                Ok(h) => self.pop.ack(&h).await.map(|_| ok()).unwrap_or_else(|err| pop_status(&err)),
                Err(s) => s,
            };
            entries.push(v2::AckMessageResultEntry {
                message_id: e.message_id.clone(),
                receipt_handle: e.receipt_handle.clone(),
                status: Some(result),
            });
        }
        let overall = combine(entries.iter().map(|e| e.status.clone().unwrap_or_else(ok)));
        Ok(v2::AckMessageResponse { status: Some(overall), entries })
    }

    fn invisible_ms(&self, d: Option<&prost_types::Duration>) -> Result<u64, v2::Status> {
        let ms = d
            .and_then(duration_ms)
            .ok_or_else(|| status(Code::IllegalInvisibleTime, "invisible_duration is required"))?;
        if ms < self.config.invisible_ms_min || ms > self.config.invisible_ms_max {
            return Err(status(
                Code::IllegalInvisibleTime,
                format!(
                    "invisible_duration must be {}..={} ms",
                    self.config.invisible_ms_min, self.config.invisible_ms_max
                ),
            ));
        }
        Ok(ms)
    }

    async fn change_invisible_impl(
        &self,
        req: v2::ChangeInvisibleDurationRequest,
    ) -> Result<v2::ChangeInvisibleDurationResponse, v2::Status> {
        let group = validate_group(req.group.as_ref())?;
        let topic = validate_topic(req.topic.as_ref())?;
        let h = self.decode_handle(&req.receipt_handle, &group, &topic)?;
        let invisible_ms = self.invisible_ms(req.invisible_duration.as_ref())?;
        let moved = self.pop.change_invisible(&h, invisible_ms, now_ms()).await.map_err(|e| pop_status(&e))?;
        Ok(v2::ChangeInvisibleDurationResponse { status: Some(ok()), receipt_handle: moved.encode() })
    }

    async fn dead_letter_impl(
        &self,
        req: v2::ForwardMessageToDeadLetterQueueRequest,
    ) -> Result<v2::ForwardMessageToDeadLetterQueueResponse, v2::Status> {
        let group = validate_group(req.group.as_ref())?;
        let topic = validate_topic(req.topic.as_ref())?;
        let h = self.decode_handle(&req.receipt_handle, &group, &topic)?;
        let message = self.pop.message_at(&h).await.map_err(|e| from_backend(&e))?;
        if let Some(m) = message {
            let attempts = req.delivery_attempt.max(h.attempt as i32).max(1) as u32;
            self.pop.to_dead_letter(&group, &m, attempts).await.map_err(|e| from_backend(&e))?;
        }
        // Gone by retention: nothing to move; either way it is done.
        self.pop.ack(&h).await.map_err(|e| pop_status(&e))?;
        Ok(v2::ForwardMessageToDeadLetterQueueResponse { status: Some(ok()) })
    }

    /// (topic, queue id) of a request's message queue, checked to exist.
    async fn queue_of(&self, mq: Option<&v2::MessageQueue>) -> Result<(TopicInfo, u32), v2::Status> {
        let mq = mq.ok_or_else(|| status(Code::BadRequest, "message_queue is required"))?;
        let topic = self.topic(mq.topic.as_ref()).await?;
        if mq.id < 0 || mq.id as u32 >= topic.read_queue_count.max(topic.write_queue_count) {
            return Err(status(Code::BadRequest, format!("topic {} has no queue {}", topic.name, mq.id)));
        }
        Ok((topic, mq.id as u32))
    }

    fn subscription_of(f: Option<&v2::FilterExpression>) -> Result<Subscription, v2::Status> {
        match f {
            None => Ok(Subscription::Tag(TagExpression::All)),
            Some(f) if f.r#type == v2::FilterType::Sql as i32 => {
                if f.expression.trim().is_empty() || f.expression.len() > super::tag_expression::EXPRESSION_BYTES_MAX {
                    return Err(status(Code::IllegalFilterExpression, "SQL92 expression is empty or too long"));
                }
                Ok(Subscription::Sql92(f.expression.clone()))
            }
            Some(f) => Ok(Subscription::Tag(
                TagExpression::parse(&f.expression).map_err(|e| status(Code::IllegalFilterExpression, e))?,
            )),
        }
    }

    /// How long a long poll may wait: the request's wish, our cap, and the client's
    /// deadline minus time to deliver the answer.
    fn poll_ms(
        &self,
        requested: Option<&prost_types::Duration>,
        client_deadline: Option<Duration>,
    ) -> Result<u64, v2::Status> {
        let requested_ms = match requested {
            Some(d) => {
                duration_ms(d).ok_or_else(|| status(Code::IllegalPollingTime, "long_polling_timeout is negative"))?
            }
            None => self.config.long_polling_ms_default,
        };
        let mut poll_ms = requested_ms.min(self.config.long_polling_ms_max);
        if let Some(d) = client_deadline {
            let d_ms = d.as_millis() as u64;
            poll_ms = poll_ms.min(d_ms.saturating_sub((d_ms / 10).max(200)));
        }
        Ok(poll_ms)
    }

    async fn pull_impl(
        &self,
        req: v2::PullMessageRequest,
        client_deadline: Option<Duration>,
    ) -> Vec<v2::PullMessageResponse> {
        use v2::pull_message_response::Content;
        let _slot = match self.receive_slot() {
            Ok(slot) => slot,
            Err(s) => return vec![v2::PullMessageResponse { content: Some(Content::Status(s)) }],
        };
        let plan = async {
            let group = validate_group(req.group.as_ref())?;
            let (topic, queue_id) = self.queue_of(req.message_queue.as_ref()).await?;
            if topic.perm & PERM_READ == 0 || queue_id >= topic.read_queue_count {
                return Err(status(
                    Code::Forbidden,
                    format!("queue {queue_id} of topic {} is not readable", topic.name),
                ));
            }
            if req.offset < 0 {
                return Err(status(Code::IllegalOffset, "offset is negative"));
            }
            if req.batch_size < 1 {
                return Err(status(Code::BadRequest, "batch_size must be >= 1"));
            }
            let subscription = Self::subscription_of(req.filter_expression.as_ref())?;
            let poll_ms = self.poll_ms(req.long_polling_timeout.as_ref(), client_deadline)?;
            Ok((group, topic, queue_id, subscription, poll_ms))
        };
        let (group, topic, queue_id, subscription, poll_ms) = match plan.await {
            Ok(p) => p,
            Err(s) => return vec![v2::PullMessageResponse { content: Some(Content::Status(s)) }],
        };
        let batch = (req.batch_size as u32).min(self.config.pull_batch_max);
        let pulled = super::pull::pull(
            self.backend.as_ref(),
            &group,
            &topic.name,
            queue_id,
            req.offset as u64,
            batch,
            &subscription,
            Duration::from_millis(poll_ms),
            self.config.pop.read_bytes_max,
        )
        .await;
        let (messages, next) = match pulled {
            Ok(p) => p,
            Err(s) => return vec![v2::PullMessageResponse { content: Some(Content::Status(s)) }],
        };
        let namespace = req.group.as_ref().map(|g| g.resource_namespace.clone()).unwrap_or_default();
        let mut out = Vec::with_capacity(messages.len() + 2);
        let code = if messages.is_empty() { status(Code::MessageNotFound, "no new message") } else { ok() };
        out.push(v2::PullMessageResponse { content: Some(Content::Status(code)) });
        for m in &messages {
            out.push(v2::PullMessageResponse {
                content: Some(Content::Message(message_codec::to_wire(m, topic.message_type, &namespace, None))),
            });
        }
        out.push(v2::PullMessageResponse { content: Some(Content::NextOffset(next as i64)) });
        out
    }

    async fn update_offset_impl(&self, req: v2::UpdateOffsetRequest) -> Result<v2::UpdateOffsetResponse, v2::Status> {
        let group = validate_group(req.group.as_ref())?;
        let (topic, queue_id) = self.queue_of(req.message_queue.as_ref()).await?;
        let min = self.backend.min_offset(&topic.name, queue_id).await.map_err(|e| from_backend(&e))?;
        let max = self.backend.max_offset(&topic.name, queue_id).await.map_err(|e| from_backend(&e))?;
        if req.offset < min as i64 || req.offset > max as i64 {
            return Err(status(Code::IllegalOffset, format!("offset {} outside {min}..={max}", req.offset)));
        }
        self.backend
            .commit_offset(&group, &topic.name, queue_id, req.offset as u64)
            .await
            .map_err(|e| from_backend(&e))?;
        // Receives of this group restart from the new offset.
        self.pop.forget(&QueueKey { group, topic: topic.name, queue_id });
        Ok(v2::UpdateOffsetResponse { status: Some(ok()) })
    }

    async fn get_offset_impl(&self, req: v2::GetOffsetRequest) -> Result<v2::GetOffsetResponse, v2::Status> {
        let group = validate_group(req.group.as_ref())?;
        let (topic, queue_id) = self.queue_of(req.message_queue.as_ref()).await?;
        match self.backend.consumer_offset(&group, &topic.name, queue_id).await.map_err(|e| from_backend(&e))? {
            Some(offset) => Ok(v2::GetOffsetResponse { status: Some(ok()), offset: offset as i64 }),
            None => Err(status(
                Code::OffsetNotFound,
                format!("group {group} has no offset for {} queue {queue_id}", topic.name),
            )),
        }
    }

    async fn query_offset_impl(&self, req: v2::QueryOffsetRequest) -> Result<v2::QueryOffsetResponse, v2::Status> {
        let (topic, queue_id) = self.queue_of(req.message_queue.as_ref()).await?;
        let policy = v2::QueryOffsetPolicy::try_from(req.query_offset_policy)
            .map_err(|_| status(Code::BadRequest, "unknown query_offset_policy"))?;
        let ts_ms = req.timestamp.as_ref().map(message_codec::timestamp_ms);
        let offset = super::pull::query_offset(self.backend.as_ref(), &topic.name, queue_id, policy, ts_ms).await?;
        Ok(v2::QueryOffsetResponse { status: Some(ok()), offset: offset as i64 })
    }

    /// Validated receive parameters, or the status to answer with.
    async fn receive_plan(
        &self,
        req: &v2::ReceiveMessageRequest,
    ) -> Result<(String, TopicInfo, u32, Subscription, u32, u64), v2::Status> {
        let group = validate_group(req.group.as_ref())?;
        let mq = req.message_queue.as_ref().ok_or_else(|| status(Code::BadRequest, "message_queue is required"))?;
        let topic = self.topic(mq.topic.as_ref()).await?;
        if mq.id < 0 || mq.id as u32 >= topic.read_queue_count || topic.perm & PERM_READ == 0 {
            return Err(status(Code::BadRequest, format!("queue {} of topic {} is not readable", mq.id, topic.name)));
        }
        let subscription = Self::subscription_of(req.filter_expression.as_ref())?;
        if req.batch_size < 1 {
            return Err(status(Code::BadRequest, "batch_size must be >= 1"));
        }
        let batch = (req.batch_size as u32).min(self.config.receive_batch_max);
        // Push consumers send no invisible duration (they renew or ack themselves);
        // the reference proxy then uses its default, as we do.
        let invisible_ms = match req.invisible_duration.as_ref() {
            None => self.config.invisible_ms_default,
            Some(d) => self.invisible_ms(Some(d))?,
        };
        Ok((group, topic, mq.id as u32, subscription, batch, invisible_ms))
    }

    /// A slot for one receive/pull call, or TOO_MANY_REQUESTS.
    fn receive_slot(&self) -> Result<StreamGuard, v2::Status> {
        let before = self.receives_in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = StreamGuard(self.receives_in_flight.clone());
        if before >= self.config.receives_in_flight_max {
            return Err(status(
                Code::TooManyRequests,
                format!("more than {} receives in progress; retry", self.config.receives_in_flight_max),
            ));
        }
        Ok(guard)
    }

    async fn receive_impl(
        &self,
        req: v2::ReceiveMessageRequest,
        client_deadline: Option<Duration>,
    ) -> Vec<v2::ReceiveMessageResponse> {
        let one = |s: v2::Status| {
            vec![v2::ReceiveMessageResponse { content: Some(v2::receive_message_response::Content::Status(s)) }]
        };
        let _slot = match self.receive_slot() {
            Ok(slot) => slot,
            Err(s) => return one(s),
        };
        let (group, topic, queue_id, subscription, batch, invisible_ms) = match self.receive_plan(&req).await {
            Ok(p) => p,
            Err(s) => return one(s),
        };
        let namespace = req.group.as_ref().map(|g| g.resource_namespace.clone()).unwrap_or_default();
        let poll_ms = match self.poll_ms(req.long_polling_timeout.as_ref(), client_deadline) {
            Ok(ms) => ms,
            Err(s) => return one(s),
        };
        let started = tokio::time::Instant::now();
        let poll_deadline = started + Duration::from_millis(poll_ms);
        let max_attempts = self.clients.max_attempts(&group);
        // Like RocketMQ's pop (queue id -1), a receive serves every readable queue of
        // the topic on this broker, starting at a rotating queue for fairness; the
        // requested queue only chose the broker. Otherwise a consumer would long-poll
        // queues whose messages its filter skips while other queues have work.
        let _ = queue_id;
        let queue_count = topic.read_queue_count.min(self.config.receive_queues_max);
        let start = self.receive_rotation.fetch_add(1, Ordering::Relaxed) % queue_count;
        let queues: Vec<u32> = (0..queue_count).map(|k| (start + k) % queue_count).collect();
        let delivery_started_ms = now_ms();
        let delivered = loop {
            let mut got = Vec::new();
            for &q in &queues {
                if got.len() >= batch as usize {
                    break;
                }
                let rr = ReceiveRequest {
                    group: &group,
                    topic: &topic,
                    queue_id: q,
                    subscription: &subscription,
                    batch_max: batch - got.len() as u32,
                    invisible_ms,
                    max_attempts,
                    now_ms: now_ms(),
                };
                match self.pop.receive(&rr).await {
                    Ok(more) => got.extend(more),
                    Err(e) => return one(pop_status(&e)),
                }
            }
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= poll_deadline {
                break got;
            }
            let mut wait = poll_deadline - now;
            // Registered before reading deadlines: a ChangeInvisibleDuration (e.g. a push
            // consumer's retry backoff) after this point ends the wait early.
            let deadlines_changed = self.pop.deadlines_changed();
            let mut blocked = false;
            let mut cursors = Vec::with_capacity(queues.len());
            for &q in &queues {
                let key = QueueKey { group: group.clone(), topic: topic.name.clone(), queue_id: q };
                if let Some(next_ms) = self.pop.next_deadline_ms(&key).await {
                    wait = wait.min(Duration::from_millis(next_ms.saturating_sub(now_ms()).max(1)));
                }
                let cursor = match self.pop.cursor(&key).await {
                    Ok(c) => c,
                    Err(e) => return one(pop_status(&e)),
                };
                match self.backend.max_offset(&topic.name, q).await {
                    Ok(max) => blocked |= max > cursor,
                    Err(e) => return one(from_backend(&e)),
                }
                cursors.push((q, cursor));
            }
            if blocked {
                // Messages exist but limits hold them back (in-flight cap, FIFO order):
                // check again shortly rather than spin.
                tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
            } else {
                let waits = cursors
                    .iter()
                    .map(|&(q, cursor)| Box::pin(self.backend.wait_for_new(&topic.name, q, cursor, wait)));
                tokio::select! {
                    (first, _, _) = futures::future::select_all(waits) => {
                        if let Err(e) = first {
                            return one(from_backend(&e));
                        }
                    }
                    _ = deadlines_changed => {}
                }
            }
        };
        if delivered.is_empty() {
            return one(status(Code::MessageNotFound, "no new message"));
        }
        let mut out = Vec::with_capacity(delivered.len() + 2);
        out.push(v2::ReceiveMessageResponse { content: Some(v2::receive_message_response::Content::Status(ok())) });
        for d in delivered {
            let delivery = Delivery { receipt_handle: d.handle.encode(), attempt: d.handle.attempt, invisible_ms };
            let wire = message_codec::to_wire(&d.message, topic.message_type, &namespace, Some(&delivery));
            out.push(v2::ReceiveMessageResponse {
                content: Some(v2::receive_message_response::Content::Message(wire)),
            });
        }
        out.push(v2::ReceiveMessageResponse {
            content: Some(v2::receive_message_response::Content::DeliveryTimestamp(to_timestamp(delivery_started_ms))),
        });
        out
    }
}

/// Replicates pending consumer offsets every `every` while this node leads; ends when
/// the service is dropped. Without a tokio runtime (plain unit use) there is none:
/// offsets are then written on the next ack/receive of their queue or by `flush_offsets`.
fn spawn_offset_flusher(pop: &Arc<PopService>, backend: &Arc<dyn MessagingBackend>, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let pop = Arc::downgrade(pop);
    let backend = backend.clone();
    let every = every.max(Duration::from_millis(10));
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(pop) = pop.upgrade() else { break };
            if !backend.is_leader() {
                // Whatever is pending cannot be written here; the new leader starts
                // from the replicated offsets (at-least-once).
                pop.reset();
                continue;
            }
            if let Err(e) = pop.flush().await {
                tracing::debug!(error = %e, "consumer offset flush failed; retrying");
            }
        }
    });
}

/// Decrements an in-progress count (telemetry streams, receives) when dropped.
struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The server's answer to one telemetry command: Settings get Settings back;
/// results of server commands (stack traces, verifications) need no answer.
async fn telemetry_answer(
    clients: &ClientRegistry,
    backend: &dyn MessagingBackend,
    client_id: &str,
    cmd: &v2::TelemetryCommand,
) -> Option<v2::TelemetryCommand> {
    let Some(v2::telemetry_command::Command::Settings(reported)) = &cmd.command else { return None };
    let mut topic_types = Vec::new();
    if let Some(v2::settings::PubSub::Subscription(s)) = &reported.pub_sub {
        for entry in s.subscriptions.iter().take(64) {
            let Some(t) = entry.topic.as_ref() else { continue };
            if let Ok(Some(info)) = backend.topic(&t.name).await {
                topic_types.push(info.message_type);
            }
        }
    }
    let answer = clients.answer(client_id, reported, &topic_types, backend.max_message_size_bytes(), now_ms());
    Some(v2::TelemetryCommand { status: Some(ok()), command: Some(v2::telemetry_command::Command::Settings(answer)) })
}

enum LeaderRoute {
    Local,
    Forward(String),
    Unavailable(v2::Status),
}

/// Runs the rest of the handler on the leader: returns early with the leader's answer
/// (forwarded) or an HA_NOT_AVAILABLE status.
macro_rules! on_leader {
    ($self:ident, $request:ident, $method:ident, $resp:ty) => {
        match $self.leader_route(&$request) {
            LeaderRoute::Local => {}
            LeaderRoute::Forward(leader) => {
                let mut client = $self.forwarder.client(&leader)?;
                return match client.$method(forward::forward_request($request)).await {
                    // The leader's HTTP headers stay behind: relaying them would duplicate
                    // ours (content-type...), which grpc-core rejects (RST_STREAM).
                    Ok(answer) => Ok(Response::new(answer.into_inner())),
                    Err(e) => Ok(Response::new(<$resp>::with_status(forward::leader_unreachable(&leader, &e)))),
                };
            }
            LeaderRoute::Unavailable(s) => return Ok(Response::new(<$resp>::with_status(s))),
        }
    };
}

macro_rules! require_client_id {
    ($request:ident, $resp:ty) => {
        if let Err(s) = client_id(&$request) {
            return Ok(Response::new(<$resp>::with_status(s)));
        }
    };
}

fn unsupported<T: WithStatus>(what: &str) -> RpcResult<T> {
    reply(Err(status(Code::Unsupported, format!("{what} is not supported by wasmq"))))
}

#[tonic::async_trait]
impl MessagingService for Messaging {
    async fn query_route(&self, request: Request<v2::QueryRouteRequest>) -> RpcResult<v2::QueryRouteResponse> {
        require_client_id!(request, v2::QueryRouteResponse);
        let reached = request.local_addr();
        let local = self.query_route_impl(request.get_ref().clone()).await.map(|mut answer| {
            pin_endpoints(answer.message_queues.iter_mut(), reached);
            answer
        });
        match local {
            Err(s) if s.code == Code::TopicNotFound as i32 => {
                // A follower may lag behind a topic just created, and only the leader
                // auto-creates topics (autoCreateTopicEnable): ask the leader.
                if let LeaderRoute::Forward(leader) = self.leader_route(&request) {
                    let mut client = self.forwarder.client(&leader)?;
                    if let Ok(answer) = client.query_route(forward::forward_request(request)).await {
                        return Ok(Response::new(answer.into_inner()));
                    }
                }
                reply(Err(s))
            }
            other => reply(other),
        }
    }

    async fn heartbeat(&self, request: Request<v2::HeartbeatRequest>) -> RpcResult<v2::HeartbeatResponse> {
        let id = match client_id(&request) {
            Ok(id) => id,
            Err(s) => return reply(Err(s)),
        };
        let req = request.into_inner();
        let consumer = req.client_type == v2::ClientType::PushConsumer as i32
            || req.client_type == v2::ClientType::SimpleConsumer as i32;
        let group = if consumer {
            match validate_group(req.group.as_ref()) {
                Ok(g) => Some(g),
                Err(s) => return reply(Err(s)),
            }
        } else {
            None
        };
        self.clients.touch(&id, req.client_type, group, now_ms());
        reply(Ok(v2::HeartbeatResponse { status: Some(ok()) }))
    }

    async fn send_message(&self, request: Request<v2::SendMessageRequest>) -> RpcResult<v2::SendMessageResponse> {
        require_client_id!(request, v2::SendMessageResponse);
        match self.leader_route(&request) {
            LeaderRoute::Local => reply(self.send_message_impl(request.into_inner()).await),
            // Not `on_leader!`: sends are coalesced on their way (`send_coalescer`).
            LeaderRoute::Forward(leader) => {
                let (metadata, _, request) = request.into_parts();
                self.send_coalescer.send(&leader, &metadata, request).await.map(Response::new)
            }
            LeaderRoute::Unavailable(s) => Ok(Response::new(v2::SendMessageResponse::with_status(s))),
        }
    }

    async fn query_assignment(
        &self,
        request: Request<v2::QueryAssignmentRequest>,
    ) -> RpcResult<v2::QueryAssignmentResponse> {
        require_client_id!(request, v2::QueryAssignmentResponse);
        let reached = request.local_addr();
        let local = self.query_assignment_impl(request.get_ref().clone()).await.map(|mut answer| {
            pin_endpoints(answer.assignments.iter_mut().filter_map(|a| a.message_queue.as_mut()), reached);
            answer
        });
        match local {
            Err(s) if s.code == Code::TopicNotFound as i32 => {
                // As for QueryRoute: the leader may know a topic this follower has not applied yet.
                if let LeaderRoute::Forward(leader) = self.leader_route(&request) {
                    let mut client = self.forwarder.client(&leader)?;
                    if let Ok(answer) = client.query_assignment(forward::forward_request(request)).await {
                        return Ok(Response::new(answer.into_inner()));
                    }
                }
                reply(Err(s))
            }
            other => reply(other),
        }
    }

    type ReceiveMessageStream = BoxStream<v2::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<v2::ReceiveMessageRequest>,
    ) -> RpcResult<Self::ReceiveMessageStream> {
        if let Err(s) = client_id(&request) {
            let only = v2::ReceiveMessageResponse { content: Some(v2::receive_message_response::Content::Status(s)) };
            return Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(only)]))));
        }
        match self.leader_route(&request) {
            LeaderRoute::Local => {}
            LeaderRoute::Forward(leader) => {
                let mut client = self.forwarder.client(&leader)?;
                return match client.receive_message(forward::forward_request(request)).await {
                    Ok(upstream) => Ok(Response::new(Box::pin(upstream.into_inner()))),
                    Err(e) => {
                        let s = status(
                            Code::HaNotAvailable,
                            format!("leader {leader} unreachable from this follower: {}", e.message()),
                        );
                        let only = v2::ReceiveMessageResponse {
                            content: Some(v2::receive_message_response::Content::Status(s)),
                        };
                        Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(only)]))))
                    }
                };
            }
            LeaderRoute::Unavailable(s) => {
                let only =
                    v2::ReceiveMessageResponse { content: Some(v2::receive_message_response::Content::Status(s)) };
                return Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(only)]))));
            }
        }
        let deadline = forward::grpc_timeout(request.metadata());
        let responses = self.receive_impl(request.into_inner(), deadline).await;
        Ok(Response::new(Box::pin(tokio_stream::iter(responses.into_iter().map(Ok)))))
    }

    async fn ack_message(&self, request: Request<v2::AckMessageRequest>) -> RpcResult<v2::AckMessageResponse> {
        require_client_id!(request, v2::AckMessageResponse);
        on_leader!(self, request, ack_message, v2::AckMessageResponse);
        reply(self.ack_impl(request.into_inner()).await)
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> RpcResult<v2::ForwardMessageToDeadLetterQueueResponse> {
        require_client_id!(request, v2::ForwardMessageToDeadLetterQueueResponse);
        on_leader!(self, request, forward_message_to_dead_letter_queue, v2::ForwardMessageToDeadLetterQueueResponse);
        reply(self.dead_letter_impl(request.into_inner()).await)
    }

    type PullMessageStream = BoxStream<v2::PullMessageResponse>;

    async fn pull_message(&self, request: Request<v2::PullMessageRequest>) -> RpcResult<Self::PullMessageStream> {
        let responses = match client_id(&request) {
            Err(s) => vec![v2::PullMessageResponse { content: Some(v2::pull_message_response::Content::Status(s)) }],
            Ok(_) => {
                let deadline = forward::grpc_timeout(request.metadata());
                self.pull_impl(request.into_inner(), deadline).await
            }
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(responses.into_iter().map(Ok)))))
    }

    async fn update_offset(&self, request: Request<v2::UpdateOffsetRequest>) -> RpcResult<v2::UpdateOffsetResponse> {
        require_client_id!(request, v2::UpdateOffsetResponse);
        on_leader!(self, request, update_offset, v2::UpdateOffsetResponse);
        reply(self.update_offset_impl(request.into_inner()).await)
    }

    async fn get_offset(&self, request: Request<v2::GetOffsetRequest>) -> RpcResult<v2::GetOffsetResponse> {
        require_client_id!(request, v2::GetOffsetResponse);
        reply(self.get_offset_impl(request.into_inner()).await)
    }

    async fn query_offset(&self, request: Request<v2::QueryOffsetRequest>) -> RpcResult<v2::QueryOffsetResponse> {
        require_client_id!(request, v2::QueryOffsetResponse);
        reply(self.query_offset_impl(request.into_inner()).await)
    }

    async fn end_transaction(
        &self,
        _request: Request<v2::EndTransactionRequest>,
    ) -> RpcResult<v2::EndTransactionResponse> {
        unsupported("EndTransaction (transactional messages)")
    }

    type TelemetryStream = BoxStream<v2::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<tonic::Streaming<v2::TelemetryCommand>>,
    ) -> RpcResult<Self::TelemetryStream> {
        let id = match client_id(&request) {
            Ok(id) => id,
            Err(s) => {
                let only = v2::TelemetryCommand { status: Some(s), command: None };
                return Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(only)]))));
            }
        };
        let open = self.telemetry_streams.fetch_add(1, Ordering::SeqCst);
        if open >= self.config.telemetry_streams_max {
            self.telemetry_streams.fetch_sub(1, Ordering::SeqCst);
            let only = v2::TelemetryCommand {
                status: Some(status(Code::TooManyRequests, "too many telemetry streams")),
                command: None,
            };
            return Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(only)]))));
        }
        let guard = StreamGuard(self.telemetry_streams.clone());
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<v2::TelemetryCommand, tonic::Status>>(16);
        let clients = self.clients.clone();
        let backend = self.backend.clone();
        // Ends when the client closes its side (or the answer channel closes).
        tokio::spawn(async move {
            let _guard = guard;
            while let Some(next) = inbound.next().await {
                let Ok(cmd) = next else { break };
                if let Some(answer) = telemetry_answer(&clients, backend.as_ref(), &id, &cmd).await {
                    if tx.send(Ok(answer)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn notify_client_termination(
        &self,
        request: Request<v2::NotifyClientTerminationRequest>,
    ) -> RpcResult<v2::NotifyClientTerminationResponse> {
        let id = match client_id(&request) {
            Ok(id) => id,
            Err(s) => return reply(Err(s)),
        };
        self.clients.remove(&id);
        reply(Ok(v2::NotifyClientTerminationResponse { status: Some(ok()) }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> RpcResult<v2::ChangeInvisibleDurationResponse> {
        require_client_id!(request, v2::ChangeInvisibleDurationResponse);
        on_leader!(self, request, change_invisible_duration, v2::ChangeInvisibleDurationResponse);
        reply(self.change_invisible_impl(request.into_inner()).await)
    }

    async fn recall_message(
        &self,
        _request: Request<v2::RecallMessageRequest>,
    ) -> RpcResult<v2::RecallMessageResponse> {
        unsupported("RecallMessage")
    }

    async fn sync_lite_subscription(
        &self,
        _request: Request<v2::SyncLiteSubscriptionRequest>,
    ) -> RpcResult<v2::SyncLiteSubscriptionResponse> {
        unsupported("SyncLiteSubscription (lite topics)")
    }
}

//! A small RocketMQ 5 (apache.rocketmq.v2) gRPC client: send, receive/ack, pull, route.
//! Used by `mqbench` and by the cluster tests (`wasmq-cluster-tests`).
//!
//! Application errors travel in each response's `Status`; they come back as
//! `ClientError::Status` so callers can tell "not leader, retry" from a transport failure.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmq_proto::apache::rocketmq::v2::{self as v2, Code, messaging_service_client::MessagingServiceClient};
use wasmq_proto::h2_channel::H2Channel;

/// Largest batch one receive/pull asks for (the broker has its own cap too).
pub const BATCH_MAX: i32 = 256;
/// Most messages one send request carries (the broker's default `send_batch_max` is 1024).
pub const SEND_BATCH_MAX: usize = 256;
/// Largest send request and answer: a broker's default `grpc_message_bytes_max`.
const SEND_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint {endpoint:?}: {why}")]
    Endpoint { endpoint: String, why: String },
    #[error("rpc: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("status {code:?} ({code_raw}): {message}")]
    Status { code: Option<Code>, code_raw: i32, message: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl ClientError {
    fn from_status(s: &v2::Status) -> Self {
        ClientError::Status { code: Code::try_from(s.code).ok(), code_raw: s.code, message: s.message.clone() }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

fn check(status: Option<&v2::Status>) -> ClientResult<()> {
    match status {
        Some(s) if s.code == Code::Ok as i32 => Ok(()),
        Some(s) => Err(ClientError::from_status(s)),
        None => Err(ClientError::Malformed("response without status".into())),
    }
}

/// What the broker said about one stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendReceipt {
    pub message_id: String,
    pub queue_id: u32,
    pub offset: u64,
}

/// A message as delivered.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub message_id: String,
    pub queue_id: u32,
    pub offset: u64,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub body: Vec<u8>,
    pub receipt_handle: Option<String>,
}

impl Delivered {
    fn from_message(m: v2::Message) -> ClientResult<Self> {
        let sp =
            m.system_properties.ok_or_else(|| ClientError::Malformed("message without system properties".into()))?;
        let offset = sp.queue_offset.ok_or_else(|| ClientError::Malformed("message without queue offset".into()))?;
        Ok(Delivered {
            message_id: sp.message_id,
            queue_id: u32::try_from(sp.queue_id).map_err(|_| ClientError::Malformed("negative queue id".into()))?,
            offset: u64::try_from(offset).map_err(|_| ClientError::Malformed("negative queue offset".into()))?,
            tag: sp.tag,
            keys: sp.keys,
            body: m.body,
            receipt_handle: sp.receipt_handle,
        })
    }
}

/// Outgoing message.
#[derive(Clone, Debug, Default)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub body: &'a [u8],
    pub tag: Option<&'a str>,
    pub keys: &'a [String],
    /// Queue to write to; the broker's router decides when `None`.
    pub queue_id: Option<u32>,
}

static CLIENT_SEQ: AtomicU32 = AtomicU32::new(0);

#[derive(Clone)]
pub struct MqClient {
    inner: MessagingServiceClient<H2Channel>,
    /// The same connection, for the sends (`H2Channel::unary`, around tonic's codec).
    channel: H2Channel,
    pub endpoint: String,
    /// The headers every call carries (client id, language, protocol, version, timeout),
    /// built and checked once: each call clones them.
    metadata: tonic::metadata::MetadataMap,
    /// Per-client message-id generator: 6 bytes of client identity + pid + time + counter.
    id_prefix: String,
    id_seq: std::sync::Arc<AtomicU32>,
    rpc_timeout: Duration,
}

impl MqClient {
    /// Connects lazily: the first call dials, so a dead endpoint fails that call, not this one.
    /// `endpoint` is `http://host:port`. One HTTP/2 connection ([`H2Channel`]: straight on
    /// h2, with coalesced writes) carries every call of this client and its clones, and is
    /// dialled again after it fails.
    pub fn connect_lazy(endpoint: &str, rpc_timeout: Duration) -> ClientResult<Self> {
        let channel = H2Channel::for_endpoint(endpoint, rpc_timeout, rpc_timeout)
            .map_err(|why| ClientError::Endpoint { endpoint: endpoint.to_string(), why })?;
        let origin = channel.origin();
        let n = CLIENT_SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let client_id = format!("wasmq-test@{pid}#{n}");
        let mut template = tonic::Request::new(());
        template.set_timeout(rpc_timeout);
        let md = template.metadata_mut();
        // Headers every official client sends; brokers may use the client id for sessions.
        md.insert("x-mq-client-id", client_id.parse().expect("ascii client id"));
        md.insert("x-mq-language", tonic::metadata::MetadataValue::from_static("RUST"));
        md.insert("x-mq-protocol", tonic::metadata::MetadataValue::from_static("v2"));
        md.insert("x-mq-client-version", tonic::metadata::MetadataValue::from_static(env!("CARGO_PKG_VERSION")));
        let (metadata, _, ()) = template.into_parts();
        Ok(MqClient {
            inner: MessagingServiceClient::with_origin(channel.clone(), origin),
            channel,
            endpoint: endpoint.to_string(),
            metadata,
            // RocketMQ 5 message id layout: version 01, 6-byte host id, 2-byte pid, 4-byte
            // seconds since 2021-01-01, 4-byte sequence; all hex, uppercase.
            id_prefix: format!("01{:08X}{:04X}{:04X}", nanos, n & 0xFFFF, pid & 0xFFFF),
            id_seq: std::sync::Arc::new(AtomicU32::new(0)),
            rpc_timeout,
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        tonic::Request::from_parts(self.metadata.clone(), Default::default(), msg)
    }

    /// The next message id: this client's prefix, the message's birth in seconds since 2021,
    /// this client's next sequence number.
    fn next_message_id(&self, born_unix_secs: u64) -> String {
        const EPOCH_2021_SECS: u64 = 1_609_459_200;
        let since = born_unix_secs.saturating_sub(EPOCH_2021_SECS) as u32;
        let seq = self.id_seq.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(self.id_prefix.len() + 16);
        id.push_str(&self.id_prefix);
        push_hex_u32(&mut id, since);
        push_hex_u32(&mut id, seq);
        id
    }

    /// Whether this endpoint's broker takes sends itself: the Raft leader of its group, or a
    /// standalone broker (wasmq's admin service, on this client's connection).
    pub async fn takes_sends(&self) -> ClientResult<bool> {
        use wasmq_proto::wasmq::admin::{BrokerStatusRequest, Role, admin_client::AdminClient};
        let mut admin = AdminClient::with_origin(self.channel.clone(), self.channel.origin());
        let role = admin.broker_status(self.request(BrokerStatusRequest::default())).await?.into_inner().role;
        Ok(role == Role::Leader as i32 || role == Role::Standalone as i32)
    }

    pub async fn query_route(&mut self, topic: &str) -> ClientResult<Vec<v2::MessageQueue>> {
        let req = v2::QueryRouteRequest { topic: Some(resource(topic)), endpoints: None };
        let r = self.inner.query_route(self.request(req)).await?.into_inner();
        check(r.status.as_ref())?;
        Ok(r.message_queues)
    }

    /// Sends one message; returns where it was stored once the broker acknowledged it.
    pub async fn send(&mut self, m: &Outgoing<'_>) -> ClientResult<SendReceipt> {
        let mut results = self.send_batch(std::slice::from_ref(m)).await?;
        results.pop().ok_or_else(|| ClientError::Malformed("no send result entry".into()))?
    }

    /// Sends `msgs` in one `SendMessage` request (at most [`SEND_BATCH_MAX`]). `Err` when
    /// the request as a whole failed (transport, or an answer without one entry per
    /// message); otherwise one result per message, in order.
    pub async fn send_batch(&mut self, msgs: &[Outgoing<'_>]) -> ClientResult<Vec<ClientResult<SendReceipt>>> {
        assert!((1..=SEND_BATCH_MAX).contains(&msgs.len()), "1..={SEND_BATCH_MAX} messages per request");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let messages = msgs
            .iter()
            .map(|m| v2::Message {
                topic: Some(resource(m.topic)),
                user_properties: Default::default(),
                system_properties: Some(v2::SystemProperties {
                    tag: m.tag.map(str::to_string),
                    keys: m.keys.to_vec(),
                    message_id: self.next_message_id(now.as_secs()),
                    body_encoding: v2::Encoding::Identity as i32,
                    message_type: v2::MessageType::Normal as i32,
                    born_timestamp: Some(prost_types::Timestamp {
                        seconds: now.as_secs() as i64,
                        nanos: now.subsec_nanos() as i32,
                    }),
                    born_host: "127.0.0.1".into(),
                    queue_id: m.queue_id.map_or(0, |q| q as i32),
                    ..Default::default()
                }),
                body: m.body.to_vec(),
            })
            .collect();
        let request = self.request(v2::SendMessageRequest { messages });
        let r =
            self.channel.unary::<_, v2::SendMessageResponse>(v2::SEND_MESSAGE_PATH, request, SEND_BYTES_MAX).await?;
        let r = r.into_inner();
        if r.entries.len() != msgs.len() {
            // A request refused as a whole (bad request, not leader) has no entries.
            check(r.status.as_ref())?;
            return Err(ClientError::Malformed(format!(
                "{} result entries for {} messages",
                r.entries.len(),
                msgs.len()
            )));
        }
        Ok(r.entries
            .into_iter()
            .zip(msgs)
            .map(|(entry, m)| {
                check(entry.status.as_ref())?;
                let offset =
                    u64::try_from(entry.offset).map_err(|_| ClientError::Malformed("negative offset".into()))?;
                Ok(SendReceipt { message_id: entry.message_id, queue_id: m.queue_id.unwrap_or(0), offset })
            })
            .collect())
    }

    /// One ReceiveMessage call (simple consumer): up to `batch` messages of `topic`,
    /// invisible for `invisible` until acked.
    pub async fn receive(
        &mut self,
        group: &str,
        topic: &str,
        batch: i32,
        invisible: Duration,
        long_poll: Duration,
    ) -> ClientResult<Vec<Delivered>> {
        assert!((1..=BATCH_MAX).contains(&batch));
        let req = v2::ReceiveMessageRequest {
            group: Some(resource(group)),
            // A simple consumer names one of the topic's queues (from its assignment); wasmq pops
            // every readable queue of the topic whichever it names, and queue 0 always exists.
            message_queue: Some(v2::MessageQueue { topic: Some(resource(topic)), id: 0, ..Default::default() }),
            filter_expression: Some(v2::FilterExpression {
                r#type: v2::FilterType::Tag as i32,
                expression: "*".into(),
            }),
            batch_size: batch,
            invisible_duration: Some(duration(invisible)),
            auto_renew: false,
            long_polling_timeout: Some(duration(long_poll)),
            attempt_id: None,
        };
        let mut request = self.request(req);
        request.set_timeout(self.rpc_timeout + long_poll);
        let mut stream = self.inner.receive_message(request).await?.into_inner();
        let mut out = Vec::new();
        let mut status: Option<v2::Status> = None;
        while let Some(item) = stream.message().await? {
            match item.content {
                Some(v2::receive_message_response::Content::Status(s)) => status = Some(s),
                Some(v2::receive_message_response::Content::Message(m)) => out.push(Delivered::from_message(m)?),
                Some(v2::receive_message_response::Content::DeliveryTimestamp(_)) | None => {}
            }
        }
        match status {
            // An empty receive is answered MESSAGE_NOT_FOUND by RocketMQ brokers.
            Some(s) if s.code == Code::MessageNotFound as i32 => Ok(out),
            other => check(other.as_ref()).map(|()| out),
        }
    }

    pub async fn ack(&mut self, group: &str, topic: &str, delivered: &[Delivered]) -> ClientResult<()> {
        let entries = delivered
            .iter()
            .map(|d| v2::AckMessageEntry {
                message_id: d.message_id.clone(),
                receipt_handle: d.receipt_handle.clone().unwrap_or_default(),
                lite_topic: None,
            })
            .collect();
        let req = v2::AckMessageRequest { group: Some(resource(group)), topic: Some(resource(topic)), entries };
        let r = self.inner.ack_message(self.request(req)).await?.into_inner();
        check(r.status.as_ref())?;
        for e in &r.entries {
            check(e.status.as_ref())?;
        }
        Ok(())
    }

    /// One PullMessage call: messages of one queue from `offset`; returns them and the next
    /// offset to ask for.
    pub async fn pull(
        &mut self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
        batch: i32,
    ) -> ClientResult<(Vec<Delivered>, u64)> {
        assert!((1..=BATCH_MAX).contains(&batch));
        let req = v2::PullMessageRequest {
            group: Some(resource(group)),
            message_queue: Some(v2::MessageQueue {
                topic: Some(resource(topic)),
                id: queue_id as i32,
                ..Default::default()
            }),
            offset: offset as i64,
            batch_size: batch,
            filter_expression: Some(v2::FilterExpression {
                r#type: v2::FilterType::Tag as i32,
                expression: "*".into(),
            }),
            long_polling_timeout: Some(duration(Duration::ZERO)),
        };
        let mut stream = self.inner.pull_message(self.request(req)).await?.into_inner();
        let mut out = Vec::new();
        let mut status: Option<v2::Status> = None;
        let mut next = offset;
        while let Some(item) = stream.message().await? {
            match item.content {
                Some(v2::pull_message_response::Content::Status(s)) => status = Some(s),
                Some(v2::pull_message_response::Content::Message(m)) => out.push(Delivered::from_message(m)?),
                Some(v2::pull_message_response::Content::NextOffset(n)) => next = n.max(0) as u64,
                None => {}
            }
        }
        match status {
            Some(s) if s.code == Code::MessageNotFound as i32 => Ok((out, next)),
            other => check(other.as_ref()).map(|()| (out, next)),
        }
    }

    /// QueryOffset: the first (`Beginning`) or one-past-last (`End`) offset of a queue, as
    /// the answering node's own store has it.
    pub async fn query_offset(
        &mut self,
        topic: &str,
        queue_id: u32,
        policy: v2::QueryOffsetPolicy,
    ) -> ClientResult<u64> {
        let req = v2::QueryOffsetRequest {
            message_queue: Some(v2::MessageQueue {
                topic: Some(resource(topic)),
                id: queue_id as i32,
                ..Default::default()
            }),
            query_offset_policy: policy as i32,
            timestamp: None,
        };
        let r = self.inner.query_offset(self.request(req)).await?.into_inner();
        check(r.status.as_ref())?;
        u64::try_from(r.offset).map_err(|_| ClientError::Malformed(format!("negative offset {}", r.offset)))
    }

    pub async fn get_offset(&mut self, group: &str, topic: &str, queue_id: u32) -> ClientResult<i64> {
        let req = v2::GetOffsetRequest {
            group: Some(resource(group)),
            message_queue: Some(v2::MessageQueue {
                topic: Some(resource(topic)),
                id: queue_id as i32,
                ..Default::default()
            }),
        };
        let r = self.inner.get_offset(self.request(req)).await?.into_inner();
        check(r.status.as_ref())?;
        Ok(r.offset)
    }
}

pub fn resource(name: &str) -> v2::Resource {
    v2::Resource { resource_namespace: String::new(), name: name.to_string() }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// `value` as 8 uppercase hex digits (`{value:08X}` without the formatter: one per message).
fn push_hex_u32(out: &mut String, value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for shift in (0..8).rev() {
        out.push(DIGITS[(value >> (shift * 4)) as usize & 0xF] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_match_the_formatter() {
        for value in [0, 1, 0xF, 0x10, 0xABCD_EF01, 0x8000_0000, u32::MAX, 0x0123_4567] {
            let mut s = String::from("01");
            push_hex_u32(&mut s, value);
            assert_eq!(s, format!("01{value:08X}"));
        }
    }

    #[tokio::test]
    async fn message_ids_are_34_hex_digits_in_sequence() {
        let c = MqClient::connect_lazy("http://127.0.0.1:1", Duration::from_secs(1)).unwrap();
        let a = c.next_message_id(1_700_000_000);
        let b = c.next_message_id(1_700_000_000);
        // 01, host id (8), client (4), pid (4), seconds since 2021 (8), sequence (8).
        assert_eq!(a.len(), 34, "{a}");
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()), "{a}");
        assert_ne!(a, b);
        assert_eq!(&a[..26], &b[..26], "same prefix and second");
        assert_eq!(&a[18..26], &format!("{:08X}", 1_700_000_000u64 - 1_609_459_200));
        let seq = |id: &str| u32::from_str_radix(&id[26..], 16).unwrap();
        assert_eq!(seq(&b), seq(&a) + 1);
    }

    #[test]
    fn every_call_carries_the_client_headers() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let c = MqClient::connect_lazy("http://127.0.0.1:1", Duration::from_millis(1500)).unwrap();
        let r = c.request(());
        let md = r.metadata();
        assert_eq!(md.get("x-mq-language").unwrap(), "RUST");
        assert_eq!(md.get("x-mq-protocol").unwrap(), "v2");
        assert_eq!(md.get("x-mq-client-version").unwrap(), env!("CARGO_PKG_VERSION"));
        assert!(md.get("x-mq-client-id").unwrap().to_str().unwrap().starts_with("wasmq-test@"));
        assert_eq!(md.get("grpc-timeout").unwrap(), "1500000u");
    }
}

//! Forwarding client RPCs from a follower to the leader.
//!
//! Official clients connect to one address of the route (Python sorts them) and keep
//! a route for ~30 s, so after a leader change they talk to a follower. The follower
//! replays the call on the leader's client endpoint with the client's metadata and
//! relays the answer; one hop only (a forwarded call is marked and never forwarded
//! again).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::metadata::{MetadataMap, MetadataValue};
use wasmq_proto::apache::rocketmq::v2::{self, Code, messaging_service_client::MessagingServiceClient};
use wasmq_proto::h2_channel::H2Channel;

use super::status::status;

/// Marks a call a broker forwarded (value: the forwarding hop count, always "1").
pub const FORWARDED_HEADER: &str = "x-wasmq-forwarded";
/// Most leader endpoints we keep channels for (leaders change rarely).
const CHANNELS_MAX: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default deadline of a forwarded call whose client sent none.
const FORWARD_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Forwarder {
    channels: Mutex<HashMap<String, H2Channel>>,
    /// Largest gRPC message relayed (decode side of the leader's answer).
    pub message_bytes_max: usize,
}

impl Forwarder {
    pub fn new(message_bytes_max: usize) -> Self {
        Forwarder { channels: Mutex::new(HashMap::new()), message_bytes_max }
    }

    pub fn client(&self, endpoint: &str) -> Result<MessagingServiceClient<H2Channel>, tonic::Status> {
        let channel = self.channel(endpoint)?;
        let origin = channel.origin();
        Ok(MessagingServiceClient::with_origin(channel, origin)
            .max_decoding_message_size(self.message_bytes_max)
            .max_encoding_message_size(self.message_bytes_max))
    }

    /// The channel to `endpoint`, for calls made without a generated client
    /// (`H2Channel::unary`: the forwarded sends).
    pub fn channel(&self, endpoint: &str) -> Result<H2Channel, tonic::Status> {
        let mut channels = self.channels.lock();
        let channel = match channels.get(endpoint) {
            Some(c) => c.clone(),
            None => {
                // One HTTP/2 connection with coalesced writes: the sends of many callers
                // leave in one write. A forwarded call carries its client's deadline.
                let channel = H2Channel::for_endpoint(endpoint, CONNECT_TIMEOUT, FORWARD_TIMEOUT_DEFAULT)
                    .map_err(|why| tonic::Status::internal(format!("bad leader endpoint {endpoint:?}: {why}")))?;
                if channels.len() >= CHANNELS_MAX {
                    channels.clear();
                }
                channels.insert(endpoint.to_string(), channel.clone());
                channel
            }
        };
        Ok(channel)
    }
}

pub fn is_forwarded(meta: &MetadataMap) -> bool {
    meta.contains_key(FORWARDED_HEADER)
}

/// The same request for the leader: client metadata (`x-mq-*`, `authorization`) kept,
/// the forwarded mark added, the client's deadline carried over.
pub fn forward_request<T>(request: tonic::Request<T>) -> tonic::Request<T> {
    let timeout = forward_timeout(request.metadata());
    let meta = relayed_metadata(request.metadata());
    let mut out = tonic::Request::new(request.into_inner());
    *out.metadata_mut() = meta;
    out.set_timeout(timeout);
    out
}

/// What a forwarded call carries of the client's metadata: `x-mq-*` and `authorization`,
/// plus the forwarded mark. Transport headers (content-type, user-agent, ...) stay behind.
pub fn relayed_metadata(meta: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for kv in meta.iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv
            && is_relayed(k.as_str())
        {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
    out
}

/// Whether a header of the client's goes with its forwarded call.
pub fn is_relayed(name: &str) -> bool {
    name.starts_with("x-mq-") || name == "authorization"
}

/// The deadline of a forwarded call: the client's, or a default when it sent none.
pub fn forward_timeout(meta: &MetadataMap) -> Duration {
    grpc_timeout(meta).unwrap_or(FORWARD_TIMEOUT_DEFAULT)
}

/// What the client hears when the leader cannot be reached (crashed, partitioned): a
/// status it retries on, naming the node, rather than a transport error.
pub fn leader_unreachable(leader: &str, err: &tonic::Status) -> v2::Status {
    status(Code::HaNotAvailable, format!("leader {leader} unreachable from this follower: {}", err.message()))
}

/// The client's deadline from the `grpc-timeout` header.
pub fn grpc_timeout(meta: &MetadataMap) -> Option<Duration> {
    wasmq_proto::grpc_timeout::parse(meta.get("grpc-timeout")?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_request_keeps_client_metadata_only() {
        let mut r = tonic::Request::new(());
        r.metadata_mut().insert("x-mq-client-id", MetadataValue::from_static("cid"));
        r.metadata_mut().insert("authorization", MetadataValue::from_static("MQv2-HMAC-SHA1 x"));
        r.metadata_mut().insert("user-agent", MetadataValue::from_static("grpc-python"));
        r.metadata_mut().insert("grpc-timeout", MetadataValue::from_static("5S"));
        let f = forward_request(r);
        assert_eq!(f.metadata().get("x-mq-client-id").unwrap(), "cid");
        assert!(f.metadata().get("authorization").is_some());
        assert!(f.metadata().get("user-agent").is_none());
        assert!(is_forwarded(f.metadata()));
        assert_eq!(grpc_timeout(f.metadata()), Some(Duration::from_secs(5)));
    }
}

//! Conversion between wire messages (`apache.rocketmq.v2.Message`) and the backend's
//! message types, with the validation RocketMQ clients expect (each failure is a
//! specific status code, never a panic).

use std::collections::BTreeMap;

use prost_types::{Duration as PbDuration, Timestamp};
use v2::Code;
use wasmq_proto::apache::rocketmq::v2;

use super::backend::{OutgoingMessage, StoredMessage, TopicMessageType};
use super::status::status;

/// Topic and group names (RocketMQ: letters, digits, `%`, `|`, `_`, `-`).
pub const NAME_CHARS_MAX: usize = 64;
/// Total bytes of user properties (keys + values) per message.
pub const PROPERTIES_BYTES_MAX: usize = 16 * 1024;
/// Most user properties per message.
pub const PROPERTIES_COUNT_MAX: usize = 128;
pub const TAG_BYTES_MAX: usize = 256;
pub const KEYS_COUNT_MAX: usize = 64;
pub const KEY_BYTES_MAX: usize = 256;
pub const MESSAGE_GROUP_BYTES_MAX: usize = 64;
pub const MESSAGE_ID_BYTES_MAX: usize = 128;
pub const BORN_HOST_BYTES_MAX: usize = 256;
/// DELAY messages may be scheduled at most this far ahead (RocketMQ: 3 days).
pub const DELAY_MS_MAX: u64 = 3 * 24 * 3600 * 1000;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_CHARS_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
}

pub fn validate_topic(resource: Option<&v2::Resource>) -> Result<String, v2::Status> {
    let name = resource.map(|r| r.name.as_str()).unwrap_or("");
    if !valid_name(name) {
        return Err(status(
            Code::IllegalTopic,
            format!("topic {name:?} must be 1..={NAME_CHARS_MAX} chars of [A-Za-z0-9%|_-]"),
        ));
    }
    Ok(name.to_string())
}

pub fn validate_group(resource: Option<&v2::Resource>) -> Result<String, v2::Status> {
    let name = resource.map(|r| r.name.as_str()).unwrap_or("");
    if !valid_name(name) {
        return Err(status(
            Code::IllegalConsumerGroup,
            format!("consumer group {name:?} must be 1..={NAME_CHARS_MAX} chars of [A-Za-z0-9%|_-]"),
        ));
    }
    Ok(name.to_string())
}

/// RocketMQ encodes properties as `name 0x01 value 0x02`: those bytes cannot appear.
fn has_separator(s: &str) -> bool {
    s.bytes().any(|b| b == 0x01 || b == 0x02)
}

pub fn timestamp_ms(ts: &Timestamp) -> u64 {
    if ts.seconds < 0 {
        return 0;
    }
    (ts.seconds as u64).saturating_mul(1000).saturating_add((ts.nanos.max(0) as u64) / 1_000_000)
}

pub fn to_timestamp(ms: u64) -> Timestamp {
    Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// Duration in ms; `None` if negative or out of range.
pub fn duration_ms(d: &PbDuration) -> Option<u64> {
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    (d.seconds as u64).checked_mul(1000)?.checked_add(d.nanos as u64 / 1_000_000)
}

pub fn to_duration(ms: u64) -> PbDuration {
    PbDuration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

pub fn wire_message_type(t: TopicMessageType) -> v2::MessageType {
    match t {
        TopicMessageType::Normal => v2::MessageType::Normal,
        TopicMessageType::Fifo => v2::MessageType::Fifo,
        TopicMessageType::Delay => v2::MessageType::Delay,
        TopicMessageType::Transaction => v2::MessageType::Transaction,
    }
}

/// Validates one message of a SendMessage request against the topic's type and
/// limits. `queue_count` is the topic's write-queue count (for the FIFO hint).
pub fn to_outgoing(
    msg: &v2::Message,
    topic_type: TopicMessageType,
    queue_count: u32,
    max_body_bytes: u64,
    now_ms: u64,
) -> Result<OutgoingMessage, v2::Status> {
    assert!(queue_count >= 1);
    let topic = validate_topic(msg.topic.as_ref())?;
    let sys =
        msg.system_properties.as_ref().ok_or_else(|| status(Code::BadRequest, "message has no system_properties"))?;
    if sys.message_id.is_empty() || sys.message_id.len() > MESSAGE_ID_BYTES_MAX {
        return Err(status(Code::IllegalMessageId, format!("message_id must be 1..={MESSAGE_ID_BYTES_MAX} bytes")));
    }
    if msg.body.is_empty() {
        return Err(status(Code::MessageBodyEmpty, "message body is empty"));
    }
    if msg.body.len() as u64 > max_body_bytes {
        return Err(status(
            Code::MessageBodyTooLarge,
            format!("message body is {} bytes, limit {max_body_bytes} bytes", msg.body.len()),
        ));
    }
    if sys.body_encoding == v2::Encoding::Gzip as i32 {
        // Storing it would need the encoding kept beside the body; clients only
        // compress above a threshold the server sets, and we never set one.
        return Err(status(Code::BadRequest, "gzip-encoded bodies are not supported"));
    }
    if let Some(tag) = &sys.tag {
        if tag.trim().is_empty() || tag.len() > TAG_BYTES_MAX || tag.contains('|') || has_separator(tag) {
            return Err(status(
                Code::IllegalMessageTag,
                format!("tag {tag:?} must be non-blank, <= {TAG_BYTES_MAX} bytes, no '|'"),
            ));
        }
    }
    if sys.keys.len() > KEYS_COUNT_MAX {
        return Err(status(Code::IllegalMessageKey, format!("more than {KEYS_COUNT_MAX} keys")));
    }
    for key in &sys.keys {
        if key.trim().is_empty() || key.len() > KEY_BYTES_MAX || has_separator(key) || key.contains(' ') {
            return Err(status(
                Code::IllegalMessageKey,
                format!("key {key:?} must be non-blank, <= {KEY_BYTES_MAX} bytes, no spaces"),
            ));
        }
    }
    if msg.user_properties.len() > PROPERTIES_COUNT_MAX {
        return Err(status(Code::MessagePropertiesTooLarge, format!("more than {PROPERTIES_COUNT_MAX} properties")));
    }
    let mut properties_bytes = 0usize;
    let mut properties = BTreeMap::new();
    for (k, v) in &msg.user_properties {
        if k.is_empty() || has_separator(k) {
            return Err(status(
                Code::IllegalMessagePropertyKey,
                format!("property key {k:?} is empty or has a 0x01/0x02 byte"),
            ));
        }
        if has_separator(v) {
            return Err(status(Code::IllegalMessagePropertyKey, format!("property {k:?} value has a 0x01/0x02 byte")));
        }
        properties_bytes += k.len() + v.len();
        properties.insert(k.clone(), v.clone());
    }
    if properties_bytes > PROPERTIES_BYTES_MAX {
        return Err(status(
            Code::MessagePropertiesTooLarge,
            format!("properties are {properties_bytes} bytes, limit {PROPERTIES_BYTES_MAX} bytes"),
        ));
    }
    if let Some(g) = &sys.message_group {
        if g.trim().is_empty() || g.len() > MESSAGE_GROUP_BYTES_MAX || has_separator(g) {
            return Err(status(
                Code::IllegalMessageGroup,
                format!("message group must be 1..={MESSAGE_GROUP_BYTES_MAX} bytes"),
            ));
        }
    }
    if sys.born_host.len() > BORN_HOST_BYTES_MAX {
        return Err(status(Code::BadRequest, "born_host too long"));
    }

    let declared = v2::MessageType::try_from(sys.message_type).unwrap_or(v2::MessageType::Unspecified);
    let delivery_timestamp_ms = sys.delivery_timestamp.as_ref().map(timestamp_ms);
    match declared {
        v2::MessageType::Fifo if sys.message_group.is_none() => {
            return Err(status(Code::MessagePropertyConflictWithType, "FIFO message without message_group"));
        }
        v2::MessageType::Delay if delivery_timestamp_ms.is_none() => {
            return Err(status(Code::MessagePropertyConflictWithType, "DELAY message without delivery_timestamp"));
        }
        v2::MessageType::Transaction => {
            return Err(status(Code::Unsupported, "transactional messages are not supported yet"));
        }
        v2::MessageType::Lite | v2::MessageType::Priority => {
            return Err(status(Code::Unsupported, "lite and priority messages are not supported"));
        }
        _ => {}
    }
    if declared != v2::MessageType::Unspecified && declared != wire_message_type(topic_type) {
        return Err(status(
            Code::MessagePropertyConflictWithType,
            format!("topic {topic} accepts {:?} messages, got {:?}", wire_message_type(topic_type), declared),
        ));
    }
    if sys.message_group.is_some() && declared != v2::MessageType::Fifo && topic_type != TopicMessageType::Fifo {
        return Err(status(Code::MessagePropertyConflictWithType, "message_group is only for FIFO messages"));
    }
    if let Some(at) = delivery_timestamp_ms {
        if at > now_ms.saturating_add(DELAY_MS_MAX) {
            return Err(status(Code::IllegalDeliveryTime, "delivery_timestamp more than 3 days ahead"));
        }
    }

    // FIFO: every message of a group goes to the same queue (routers may override).
    let queue_id = sys.message_group.as_ref().map(|g| (crc32c::crc32c(g.as_bytes()) % queue_count) as u32);
    Ok(OutgoingMessage {
        topic,
        message_id: sys.message_id.clone(),
        tag: sys.tag.clone(),
        keys: sys.keys.clone(),
        properties,
        message_group: sys.message_group.clone(),
        queue_id,
        born_timestamp_ms: sys.born_timestamp.as_ref().map(timestamp_ms).unwrap_or(now_ms),
        born_host: sys.born_host.clone(),
        delivery_timestamp_ms,
        reconsume_times: 0,
        body: msg.body.clone(),
    })
}

/// What a delivery through ReceiveMessage adds to a stored message.
pub struct Delivery {
    pub receipt_handle: String,
    pub attempt: u32,
    pub invisible_ms: u64,
}

/// Wire form of a stored message. The body digest is CRC32 (IEEE) as uppercase hex,
/// which the official clients verify.
pub fn to_wire(
    m: &StoredMessage,
    topic_type: TopicMessageType,
    namespace: &str,
    delivery: Option<&Delivery>,
) -> v2::Message {
    let sys = v2::SystemProperties {
        tag: m.tag.clone(),
        keys: m.keys.clone(),
        message_id: m.message_id.clone(),
        body_digest: Some(v2::Digest {
            r#type: v2::DigestType::Crc32 as i32,
            checksum: format!("{:08X}", crc32_ieee(&m.body)),
        }),
        body_encoding: v2::Encoding::Identity as i32,
        message_type: wire_message_type(topic_type) as i32,
        born_timestamp: Some(to_timestamp(m.born_timestamp_ms)),
        born_host: m.born_host.clone(),
        store_timestamp: Some(to_timestamp(m.store_timestamp_ms)),
        store_host: m.store_host.clone(),
        delivery_timestamp: m.delivery_timestamp_ms.map(to_timestamp),
        receipt_handle: delivery.map(|d| d.receipt_handle.clone()),
        queue_id: m.queue_id as i32,
        queue_offset: Some(m.queue_offset as i64),
        invisible_duration: delivery.map(|d| to_duration(d.invisible_ms)),
        delivery_attempt: delivery.map(|d| d.attempt as i32),
        message_group: m.message_group.clone(),
        trace_context: None,
        orphaned_transaction_recovery_duration: None,
        dead_letter_queue: None,
        lite_topic: None,
        priority: None,
    };
    v2::Message {
        topic: Some(v2::Resource { resource_namespace: namespace.to_string(), name: m.topic.clone() }),
        user_properties: m.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        system_properties: Some(sys),
        body: m.body.clone(),
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`), the digest the clients check.
pub fn crc32_ieee(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(topic: &str, body: &[u8]) -> v2::Message {
        v2::Message {
            topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.into() }),
            user_properties: [("color".to_string(), "red".to_string())].into_iter().collect(),
            system_properties: Some(v2::SystemProperties {
                tag: Some("TagA".into()),
                keys: vec!["k1".into(), "k2".into()],
                message_id: "01ABC".into(),
                message_type: v2::MessageType::Normal as i32,
                born_timestamp: Some(to_timestamp(1_700_000_000_000)),
                born_host: "client-host".into(),
                ..Default::default()
            }),
            body: body.to_vec(),
        }
    }

    fn code(r: Result<OutgoingMessage, v2::Status>) -> i32 {
        r.err().map(|s| s.code).unwrap_or(Code::Ok as i32)
    }

    #[test]
    fn crc32_matches_zlib_check_value() {
        assert_eq!(crc32_ieee(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_ieee(b""), 0);
    }

    #[test]
    fn valid_message_converts_and_round_trips_to_wire() {
        let out = to_outgoing(&wire("orders", b"hello"), TopicMessageType::Normal, 4, 1024, 5).unwrap();
        assert_eq!(out.topic, "orders");
        assert_eq!(out.tag.as_deref(), Some("TagA"));
        assert_eq!(out.keys, vec!["k1", "k2"]);
        assert_eq!(out.properties.get("color").map(String::as_str), Some("red"));
        assert_eq!(out.born_timestamp_ms, 1_700_000_000_000);
        assert_eq!(out.queue_id, None);
        let stored = StoredMessage {
            topic: out.topic.clone(),
            queue_id: 2,
            queue_offset: 9,
            message_id: out.message_id.clone(),
            tag: out.tag.clone(),
            keys: out.keys.clone(),
            properties: out.properties.clone(),
            message_group: None,
            born_timestamp_ms: out.born_timestamp_ms,
            born_host: out.born_host.clone(),
            store_timestamp_ms: 1_700_000_000_500,
            store_host: "b1".into(),
            delivery_timestamp_ms: None,
            reconsume_times: 0,
            body: out.body.clone(),
        };
        let d = Delivery { receipt_handle: "h".into(), attempt: 1, invisible_ms: 30_000 };
        let back = to_wire(&stored, TopicMessageType::Normal, "", Some(&d));
        let sys = back.system_properties.unwrap();
        assert_eq!(sys.receipt_handle.as_deref(), Some("h"));
        assert_eq!(sys.queue_offset, Some(9));
        assert_eq!(sys.delivery_attempt, Some(1));
        assert_eq!(sys.invisible_duration.unwrap().seconds, 30);
        assert_eq!(sys.body_digest.unwrap().checksum, format!("{:08X}", crc32_ieee(b"hello")));
        assert_eq!(back.body, b"hello");
        assert_eq!(back.user_properties.get("color").map(String::as_str), Some("red"));
    }

    #[test]
    fn each_bad_input_gets_its_code() {
        let ok = || wire("orders", b"x");
        assert_eq!(
            code(to_outgoing(&wire("bad topic", b"x"), TopicMessageType::Normal, 1, 10, 0)),
            Code::IllegalTopic as i32
        );
        assert_eq!(
            code(to_outgoing(&wire(&"t".repeat(65), b"x"), TopicMessageType::Normal, 1, 10, 0)),
            Code::IllegalTopic as i32
        );
        assert_eq!(
            code(to_outgoing(&wire("orders", b""), TopicMessageType::Normal, 1, 10, 0)),
            Code::MessageBodyEmpty as i32
        );
        assert_eq!(
            code(to_outgoing(&wire("orders", &[0; 11]), TopicMessageType::Normal, 1, 10, 0)),
            Code::MessageBodyTooLarge as i32
        );
        let mut m = ok();
        m.system_properties.as_mut().unwrap().message_id.clear();
        assert_eq!(code(to_outgoing(&m, TopicMessageType::Normal, 1, 10, 0)), Code::IllegalMessageId as i32);
        let mut m = ok();
        m.system_properties.as_mut().unwrap().tag = Some("A||B".into());
        assert_eq!(code(to_outgoing(&m, TopicMessageType::Normal, 1, 10, 0)), Code::IllegalMessageTag as i32);
        let mut m = ok();
        m.system_properties.as_mut().unwrap().keys = vec![" ".into()];
        assert_eq!(code(to_outgoing(&m, TopicMessageType::Normal, 1, 10, 0)), Code::IllegalMessageKey as i32);
        let mut m = ok();
        m.user_properties.insert("big".into(), "v".repeat(PROPERTIES_BYTES_MAX));
        assert_eq!(code(to_outgoing(&m, TopicMessageType::Normal, 1, 10, 0)), Code::MessagePropertiesTooLarge as i32);
        let mut m = ok();
        m.user_properties.insert("a\u{1}b".into(), "v".into());
        assert_eq!(code(to_outgoing(&m, TopicMessageType::Normal, 1, 10, 0)), Code::IllegalMessagePropertyKey as i32);
        let mut m = ok();
        m.system_properties.as_mut().unwrap().message_type = v2::MessageType::Fifo as i32;
        assert_eq!(
            code(to_outgoing(&m, TopicMessageType::Fifo, 1, 10, 0)),
            Code::MessagePropertyConflictWithType as i32
        );
        m.system_properties.as_mut().unwrap().message_group = Some("g1".into());
        assert_eq!(
            code(to_outgoing(&m, TopicMessageType::Normal, 1, 10, 0)),
            Code::MessagePropertyConflictWithType as i32
        );
        let fifo = to_outgoing(&m, TopicMessageType::Fifo, 8, 10, 0).unwrap();
        assert_eq!(fifo.queue_id, Some(crc32c::crc32c(b"g1") % 8));
        let mut m = ok();
        m.system_properties.as_mut().unwrap().message_type = v2::MessageType::Delay as i32;
        m.system_properties.as_mut().unwrap().delivery_timestamp = Some(to_timestamp(DELAY_MS_MAX + 10));
        assert_eq!(code(to_outgoing(&m, TopicMessageType::Delay, 1, 10, 0)), Code::IllegalDeliveryTime as i32);
        assert!(to_outgoing(&m, TopicMessageType::Delay, 1, 10, 20).is_ok());
        let mut m = ok();
        m.system_properties = None;
        assert_eq!(code(to_outgoing(&m, TopicMessageType::Normal, 1, 10, 0)), Code::BadRequest as i32);
        let mut m = ok();
        m.system_properties.as_mut().unwrap().message_type = v2::MessageType::Transaction as i32;
        assert_eq!(code(to_outgoing(&m, TopicMessageType::Transaction, 1, 10, 0)), Code::Unsupported as i32);
    }

    #[test]
    fn negative_durations_and_timestamps_are_safe() {
        assert_eq!(duration_ms(&PbDuration { seconds: -1, nanos: 0 }), None);
        assert_eq!(duration_ms(&PbDuration { seconds: i64::MAX, nanos: 0 }), None);
        assert_eq!(duration_ms(&PbDuration { seconds: 2, nanos: 5_000_000 }), Some(2005));
        assert_eq!(timestamp_ms(&Timestamp { seconds: -5, nanos: 0 }), 0);
        assert_eq!(timestamp_ms(&to_timestamp(1234)), 1234);
    }
}

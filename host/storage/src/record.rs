//! Commitlog entry bodies: what the replicated state machine applies.
//!
//! Encoding: `type u8 | version u8 | fields`. Integers are LEB128 varints (signed ones
//! zigzag), strings and byte strings are `varint length | bytes`, options are a `0`/`1` byte
//! then the value. Every length is checked against a limit before anything is allocated, and
//! a decode that does not consume the whole input is an error.
//!
//! The leader picks `queue_id` before appending, so applying a record is deterministic.

use std::fmt;

/// RocketMQ's `TopicValidator.TOPIC_MAX_LENGTH`; leaves room for `%RETRY%` / `%DLQ%` plus a
/// full-length group name.
pub const TOPIC_LENGTH_MAX: usize = 127;
pub const GROUP_LENGTH_MAX: usize = 64;
pub const TAG_LENGTH_MAX: usize = 255;
pub const KEY_LENGTH_MAX: usize = 255;
pub const KEYS_COUNT_MAX: usize = 64;
/// Keys plus property names and values, in bytes.
pub const PROPERTIES_BYTES_MAX: usize = 16 * 1024;
pub const PROPERTIES_COUNT_MAX: usize = 256;
pub const MESSAGE_GROUP_LENGTH_MAX: usize = 255;
pub const BORN_HOST_LENGTH_MAX: usize = 255;
pub const MESSAGE_ID_LENGTH_MAX: usize = 128;
/// Sanity bound; the commitlog's `entry_size_max_bytes` is the real limit.
pub const BODY_BYTES_MAX: usize = 64 << 20;
pub const QUEUE_NUMS_MAX: u32 = 1024;
/// RocketMQ permission bits: 4 read, 2 write, 1 inherit.
pub const PERM_MAX: u32 = 7;

const TYPE_MESSAGE: u8 = 1;
const TYPE_TOPIC_CONFIG: u8 = 2;
const TYPE_CONSUMER_OFFSET: u8 = 3;
const TYPE_DELETE_TOPIC: u8 = 4;
const TYPE_NOOP: u8 = 5;
const VERSION_1: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("input ends inside {field}")]
    Truncated { field: &'static str },
    #[error("empty record")]
    Empty,
    #[error("unknown record type {0}")]
    UnknownType(u8),
    #[error("record type {record_type} version {version} not supported")]
    UnsupportedVersion { record_type: u8, version: u8 },
    #[error("{field} is {len} long, limit {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{field} {value:?} is invalid: {why}")]
    InvalidValue { field: &'static str, value: String, why: &'static str },
    #[error("varint in {field} is malformed")]
    BadVarint { field: &'static str },
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
    #[error("expected a message record, got type {0}")]
    NotAMessage(u8),
}

type CResult<T> = std::result::Result<T, CodecError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageType {
    #[default]
    Unspecified,
    Normal,
    Fifo,
    Delay,
    Transaction,
    Mixed,
}

impl MessageType {
    fn code(self) -> u8 {
        match self {
            MessageType::Unspecified => 0,
            MessageType::Normal => 1,
            MessageType::Fifo => 2,
            MessageType::Delay => 3,
            MessageType::Transaction => 4,
            MessageType::Mixed => 5,
        }
    }

    fn from_code(code: u8) -> CResult<MessageType> {
        Ok(match code {
            0 => MessageType::Unspecified,
            1 => MessageType::Normal,
            2 => MessageType::Fifo,
            3 => MessageType::Delay,
            4 => MessageType::Transaction,
            5 => MessageType::Mixed,
            _ => {
                return Err(CodecError::InvalidValue {
                    field: "message_type",
                    value: code.to_string(),
                    why: "unknown message type",
                });
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageRecord {
    pub topic: String,
    pub queue_id: u32,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub message_group: Option<String>,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
    pub born_host: String,
    pub message_id: String,
    pub delivery_timestamp_ms: Option<i64>,
    pub reconsume_times: u32,
    pub body: Vec<u8>,
}

/// Zero-copy view of a message record (strings and body borrow the entry bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView<'a> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub tag: Option<&'a str>,
    pub keys: Vec<&'a str>,
    pub properties: Vec<(&'a str, &'a str)>,
    pub message_group: Option<&'a str>,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
    pub born_host: &'a str,
    pub message_id: &'a str,
    pub delivery_timestamp_ms: Option<i64>,
    pub reconsume_times: u32,
    pub body: &'a [u8],
}

impl MessageView<'_> {
    pub fn to_owned_record(&self) -> MessageRecord {
        MessageRecord {
            topic: self.topic.to_owned(),
            queue_id: self.queue_id,
            tag: self.tag.map(str::to_owned),
            keys: self.keys.iter().map(|k| (*k).to_owned()).collect(),
            properties: self.properties.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            message_group: self.message_group.map(str::to_owned),
            born_timestamp_ms: self.born_timestamp_ms,
            store_timestamp_ms: self.store_timestamp_ms,
            born_host: self.born_host.to_owned(),
            message_id: self.message_id.to_owned(),
            delivery_timestamp_ms: self.delivery_timestamp_ms,
            reconsume_times: self.reconsume_times,
            body: self.body.to_vec(),
        }
    }

    /// Decode a message record without copying strings or body.
    pub fn decode(bytes: &[u8]) -> CResult<MessageView<'_>> {
        match RecordView::decode(bytes)? {
            RecordView::Message(m) => Ok(m),
            _ => Err(CodecError::NotAMessage(bytes[0])),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfigRecord {
    pub topic: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    pub message_type: MessageType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Message(MessageRecord),
    TopicConfig(TopicConfigRecord),
    ConsumerOffset { group: String, topic: String, queue_id: u32, offset: u64 },
    DeleteTopic { topic: String },
    Noop,
}

/// Borrowed decode of any record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordView<'a> {
    Message(MessageView<'a>),
    TopicConfig(TopicConfigRecord),
    ConsumerOffset { group: &'a str, topic: &'a str, queue_id: u32, offset: u64 },
    DeleteTopic { topic: &'a str },
    Noop,
}

/// Topic names: 1..=127 of `[A-Za-z0-9_%|-]` (RocketMQ's charset).
pub fn validate_topic(topic: &str) -> CResult<()> {
    validate_name("topic", topic, TOPIC_LENGTH_MAX)
}

/// Consumer group names: 1..=64 of `[A-Za-z0-9_%|-]`.
pub fn validate_group(group: &str) -> CResult<()> {
    validate_name("group", group, GROUP_LENGTH_MAX)
}

fn validate_name(field: &'static str, name: &str, max: usize) -> CResult<()> {
    if name.is_empty() {
        return Err(CodecError::InvalidValue { field, value: String::new(), why: "must not be empty" });
    }
    if name.len() > max {
        return Err(CodecError::TooLong { field, len: name.len(), max });
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'%' | b'|')) {
        return Err(CodecError::InvalidValue {
            field,
            value: name.to_owned(),
            why: "allowed characters are A-Z a-z 0-9 _ - % |",
        });
    }
    Ok(())
}

fn check_len(field: &'static str, len: usize, max: usize) -> CResult<()> {
    if len > max { Err(CodecError::TooLong { field, len, max }) } else { Ok(()) }
}

fn check_queue_id(queue_id: u32) -> CResult<()> {
    if queue_id >= QUEUE_NUMS_MAX {
        return Err(CodecError::InvalidValue {
            field: "queue_id",
            value: queue_id.to_string(),
            why: "must be below 1024",
        });
    }
    Ok(())
}

/// Field limits shared by encode and decode, so nothing unencodable is ever decoded.
#[allow(clippy::too_many_arguments)]
fn check_message<'s>(
    topic: &str,
    queue_id: u32,
    tag: Option<&str>,
    keys: impl Iterator<Item = &'s str> + Clone,
    properties: impl Iterator<Item = (&'s str, &'s str)> + Clone,
    message_group: Option<&str>,
    born_host: &str,
    message_id: &str,
    body_len: usize,
) -> CResult<()> {
    validate_topic(topic)?;
    check_queue_id(queue_id)?;
    if let Some(tag) = tag {
        check_len("tag", tag.len(), TAG_LENGTH_MAX)?;
    }
    let mut total = 0usize;
    let mut count = 0usize;
    for key in keys {
        check_len("key", key.len(), KEY_LENGTH_MAX)?;
        total += key.len();
        count += 1;
    }
    check_len("keys count", count, KEYS_COUNT_MAX)?;
    let mut count = 0usize;
    for (k, v) in properties {
        if k.is_empty() {
            return Err(CodecError::InvalidValue {
                field: "property name",
                value: String::new(),
                why: "must not be empty",
            });
        }
        total += k.len() + v.len();
        count += 1;
    }
    check_len("properties count", count, PROPERTIES_COUNT_MAX)?;
    check_len("keys and properties bytes", total, PROPERTIES_BYTES_MAX)?;
    if let Some(g) = message_group {
        check_len("message_group", g.len(), MESSAGE_GROUP_LENGTH_MAX)?;
    }
    check_len("born_host", born_host.len(), BORN_HOST_LENGTH_MAX)?;
    check_len("message_id", message_id.len(), MESSAGE_ID_LENGTH_MAX)?;
    check_len("body", body_len, BODY_BYTES_MAX)?;
    Ok(())
}

fn check_topic_config(c: &TopicConfigRecord) -> CResult<()> {
    validate_topic(&c.topic)?;
    for (field, n) in [("read_queue_nums", c.read_queue_nums), ("write_queue_nums", c.write_queue_nums)] {
        if n == 0 || n > QUEUE_NUMS_MAX {
            return Err(CodecError::InvalidValue { field, value: n.to_string(), why: "must be in 1..=1024" });
        }
    }
    if c.perm > PERM_MAX {
        return Err(CodecError::InvalidValue { field: "perm", value: c.perm.to_string(), why: "must be in 0..=7" });
    }
    Ok(())
}

/// Compact binary writer shared by the record codec and the store checkpoint.
pub(crate) struct Writer {
    pub(crate) out: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Writer {
        Writer { out: Vec::new() }
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }
    pub(crate) fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.out.extend_from_slice(b);
    }
    pub(crate) fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    pub(crate) fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
}

/// Reader matching `Writer`; every length is checked before use.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input, at: 0 }
    }
    /// Error unless the whole input was consumed.
    pub(crate) fn finish(&self) -> CResult<()> {
        if self.at != self.input.len() { Err(CodecError::TrailingBytes(self.input.len() - self.at)) } else { Ok(()) }
    }
    pub(crate) fn u8(&mut self, field: &'static str) -> CResult<u8> {
        let b = *self.input.get(self.at).ok_or(CodecError::Truncated { field })?;
        self.at += 1;
        Ok(b)
    }
    pub(crate) fn varint(&mut self, field: &'static str) -> CResult<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(field)?;
            if shift == 63 && b > 1 {
                return Err(CodecError::BadVarint { field });
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::BadVarint { field })
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> CResult<u32> {
        u32::try_from(self.varint(field)?).map_err(|_| CodecError::BadVarint { field })
    }
    pub(crate) fn zigzag(&mut self, field: &'static str) -> CResult<i64> {
        let v = self.varint(field)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
    pub(crate) fn bytes(&mut self, field: &'static str, max: usize) -> CResult<&'a [u8]> {
        let len = self.varint(field)?;
        let len = usize::try_from(len).map_err(|_| CodecError::BadVarint { field })?;
        check_len(field, len, max)?;
        let end = self.at.checked_add(len).ok_or(CodecError::Truncated { field })?;
        let b = self.input.get(self.at..end).ok_or(CodecError::Truncated { field })?;
        self.at = end;
        Ok(b)
    }
    pub(crate) fn str(&mut self, field: &'static str, max: usize) -> CResult<&'a str> {
        std::str::from_utf8(self.bytes(field, max)?).map_err(|_| CodecError::InvalidUtf8 { field })
    }
    pub(crate) fn flag(&mut self, field: &'static str) -> CResult<bool> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => {
                Err(CodecError::InvalidValue { field, value: other.to_string(), why: "option flag must be 0 or 1" })
            }
        }
    }
    pub(crate) fn opt_str(&mut self, field: &'static str, max: usize) -> CResult<Option<&'a str>> {
        if self.flag(field)? { Ok(Some(self.str(field, max)?)) } else { Ok(None) }
    }
    pub(crate) fn count(&mut self, field: &'static str, max: usize) -> CResult<usize> {
        let n = self.varint(field)?;
        let n = usize::try_from(n).map_err(|_| CodecError::BadVarint { field })?;
        check_len(field, n, max)?;
        Ok(n)
    }
}

impl Record {
    /// Encode, refusing values outside the limits.
    pub fn encode(&self) -> CResult<Vec<u8>> {
        let mut w = Writer { out: Vec::with_capacity(64) };
        match self {
            Record::Message(m) => {
                check_message(
                    &m.topic,
                    m.queue_id,
                    m.tag.as_deref(),
                    m.keys.iter().map(String::as_str),
                    m.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    m.message_group.as_deref(),
                    &m.born_host,
                    &m.message_id,
                    m.body.len(),
                )?;
                w.out.reserve(m.body.len() + 128);
                w.u8(TYPE_MESSAGE);
                w.u8(VERSION_1);
                w.str(&m.topic);
                w.varint(m.queue_id as u64);
                w.opt_str(m.tag.as_deref());
                w.varint(m.keys.len() as u64);
                for k in &m.keys {
                    w.str(k);
                }
                w.varint(m.properties.len() as u64);
                for (k, v) in &m.properties {
                    w.str(k);
                    w.str(v);
                }
                w.opt_str(m.message_group.as_deref());
                w.zigzag(m.born_timestamp_ms);
                w.zigzag(m.store_timestamp_ms);
                w.str(&m.born_host);
                w.str(&m.message_id);
                match m.delivery_timestamp_ms {
                    None => w.u8(0),
                    Some(t) => {
                        w.u8(1);
                        w.zigzag(t);
                    }
                }
                w.varint(m.reconsume_times as u64);
                w.bytes(&m.body);
            }
            Record::TopicConfig(c) => {
                check_topic_config(c)?;
                w.u8(TYPE_TOPIC_CONFIG);
                w.u8(VERSION_1);
                w.str(&c.topic);
                w.varint(c.read_queue_nums as u64);
                w.varint(c.write_queue_nums as u64);
                w.varint(c.perm as u64);
                w.u8(c.message_type.code());
            }
            Record::ConsumerOffset { group, topic, queue_id, offset } => {
                validate_group(group)?;
                validate_topic(topic)?;
                check_queue_id(*queue_id)?;
                w.u8(TYPE_CONSUMER_OFFSET);
                w.u8(VERSION_1);
                w.str(group);
                w.str(topic);
                w.varint(*queue_id as u64);
                w.varint(*offset);
            }
            Record::DeleteTopic { topic } => {
                validate_topic(topic)?;
                w.u8(TYPE_DELETE_TOPIC);
                w.u8(VERSION_1);
                w.str(topic);
            }
            Record::Noop => {
                w.u8(TYPE_NOOP);
                w.u8(VERSION_1);
            }
        }
        Ok(w.out)
    }

    pub fn decode(bytes: &[u8]) -> CResult<Record> {
        Ok(RecordView::decode(bytes)?.to_owned_record())
    }
}

impl<'a> RecordView<'a> {
    pub fn to_owned_record(&self) -> Record {
        match self {
            RecordView::Message(m) => Record::Message(m.to_owned_record()),
            RecordView::TopicConfig(c) => Record::TopicConfig(c.clone()),
            RecordView::ConsumerOffset { group, topic, queue_id, offset } => Record::ConsumerOffset {
                group: (*group).to_owned(),
                topic: (*topic).to_owned(),
                queue_id: *queue_id,
                offset: *offset,
            },
            RecordView::DeleteTopic { topic } => Record::DeleteTopic { topic: (*topic).to_owned() },
            RecordView::Noop => Record::Noop,
        }
    }

    pub fn decode(bytes: &'a [u8]) -> CResult<RecordView<'a>> {
        let mut r = Reader { input: bytes, at: 0 };
        let record_type = r.u8("record type").map_err(|_| CodecError::Empty)?;
        if !(TYPE_MESSAGE..=TYPE_NOOP).contains(&record_type) {
            return Err(CodecError::UnknownType(record_type));
        }
        let version = r.u8("version")?;
        if version != VERSION_1 {
            return Err(CodecError::UnsupportedVersion { record_type, version });
        }
        let view = match record_type {
            TYPE_MESSAGE => {
                let topic = r.str("topic", TOPIC_LENGTH_MAX)?;
                let queue_id = r.u32("queue_id")?;
                let tag = r.opt_str("tag", TAG_LENGTH_MAX)?;
                let n = r.count("keys count", KEYS_COUNT_MAX)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(r.str("key", KEY_LENGTH_MAX)?);
                }
                let n = r.count("properties count", PROPERTIES_COUNT_MAX)?;
                let mut properties = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = r.str("property name", PROPERTIES_BYTES_MAX)?;
                    let v = r.str("property value", PROPERTIES_BYTES_MAX)?;
                    properties.push((k, v));
                }
                let message_group = r.opt_str("message_group", MESSAGE_GROUP_LENGTH_MAX)?;
                let born_timestamp_ms = r.zigzag("born_timestamp_ms")?;
                let store_timestamp_ms = r.zigzag("store_timestamp_ms")?;
                let born_host = r.str("born_host", BORN_HOST_LENGTH_MAX)?;
                let message_id = r.str("message_id", MESSAGE_ID_LENGTH_MAX)?;
                let delivery_timestamp_ms =
                    if r.flag("delivery_timestamp_ms")? { Some(r.zigzag("delivery_timestamp_ms")?) } else { None };
                let reconsume_times = r.u32("reconsume_times")?;
                let body = r.bytes("body", BODY_BYTES_MAX)?;
                check_message(
                    topic,
                    queue_id,
                    tag,
                    keys.iter().copied(),
                    properties.iter().copied(),
                    message_group,
                    born_host,
                    message_id,
                    body.len(),
                )?;
                RecordView::Message(MessageView {
                    topic,
                    queue_id,
                    tag,
                    keys,
                    properties,
                    message_group,
                    born_timestamp_ms,
                    store_timestamp_ms,
                    born_host,
                    message_id,
                    delivery_timestamp_ms,
                    reconsume_times,
                    body,
                })
            }
            TYPE_TOPIC_CONFIG => {
                let c = TopicConfigRecord {
                    topic: r.str("topic", TOPIC_LENGTH_MAX)?.to_owned(),
                    read_queue_nums: r.u32("read_queue_nums")?,
                    write_queue_nums: r.u32("write_queue_nums")?,
                    perm: r.u32("perm")?,
                    message_type: MessageType::from_code(r.u8("message_type")?)?,
                };
                check_topic_config(&c)?;
                RecordView::TopicConfig(c)
            }
            TYPE_CONSUMER_OFFSET => {
                let group = r.str("group", GROUP_LENGTH_MAX)?;
                let topic = r.str("topic", TOPIC_LENGTH_MAX)?;
                let queue_id = r.u32("queue_id")?;
                let offset = r.varint("offset")?;
                validate_group(group)?;
                validate_topic(topic)?;
                check_queue_id(queue_id)?;
                RecordView::ConsumerOffset { group, topic, queue_id, offset }
            }
            TYPE_DELETE_TOPIC => {
                let topic = r.str("topic", TOPIC_LENGTH_MAX)?;
                validate_topic(topic)?;
                RecordView::DeleteTopic { topic }
            }
            TYPE_NOOP => RecordView::Noop,
            _ => unreachable!("type checked above"),
        };
        if r.at != bytes.len() {
            return Err(CodecError::TrailingBytes(bytes.len() - r.at));
        }
        Ok(view)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl MessageType {
    pub fn all() -> [MessageType; 6] {
        [
            MessageType::Unspecified,
            MessageType::Normal,
            MessageType::Fifo,
            MessageType::Delay,
            MessageType::Transaction,
            MessageType::Mixed,
        ]
    }
}

/// 64-bit hash of a tag for consume-queue filtering (FNV-1a: stable across releases and
/// platforms, unlike `DefaultHasher`). No tag hashes to 0.
pub fn tag_hash(tag: Option<&str>) -> u64 {
    let Some(tag) = tag else { return 0 };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tag.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_%|-]{1,64}"
    }

    fn message() -> impl Strategy<Value = MessageRecord> {
        (
            (
                name(),
                0u32..QUEUE_NUMS_MAX,
                proptest::option::of("\\PC{0,40}"),
                proptest::collection::vec("\\PC{0,20}", 0..5),
            ),
            (
                proptest::collection::vec(("[a-zA-Z]{1,10}", "\\PC{0,30}"), 0..6),
                proptest::option::of("\\PC{0,20}"),
                any::<i64>(),
                any::<i64>(),
            ),
            ("\\PC{0,30}", "[0-9A-F]{0,32}", proptest::option::of(any::<i64>()), any::<u32>()),
            proptest::collection::vec(any::<u8>(), 0..2048),
        )
            .prop_map(
                |(
                    (topic, queue_id, tag, keys),
                    (properties, message_group, born, store),
                    (host, id, delivery, re),
                    body,
                )| {
                    MessageRecord {
                        topic,
                        queue_id,
                        tag,
                        keys,
                        properties,
                        message_group,
                        born_timestamp_ms: born,
                        store_timestamp_ms: store,
                        born_host: host,
                        message_id: id,
                        delivery_timestamp_ms: delivery,
                        reconsume_times: re,
                        body,
                    }
                },
            )
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            message().prop_map(Record::Message),
            (name(), 1u32..=QUEUE_NUMS_MAX, 1u32..=QUEUE_NUMS_MAX, 0u32..=PERM_MAX, 0usize..6).prop_map(
                |(topic, r, w, perm, t)| Record::TopicConfig(TopicConfigRecord {
                    topic,
                    read_queue_nums: r,
                    write_queue_nums: w,
                    perm,
                    message_type: MessageType::all()[t],
                })
            ),
            (name(), name(), 0u32..QUEUE_NUMS_MAX, any::<u64>())
                .prop_map(|(group, topic, queue_id, offset)| Record::ConsumerOffset { group, topic, queue_id, offset }),
            name().prop_map(|topic| Record::DeleteTopic { topic }),
            Just(Record::Noop),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(rec in record()) {
            let bytes = rec.encode().unwrap();
            prop_assert_eq!(Record::decode(&bytes).unwrap(), rec.clone());
            if let Record::Message(m) = &rec {
                prop_assert_eq!(&MessageView::decode(&bytes).unwrap().to_owned_record(), m);
            }
        }

        #[test]
        fn every_strict_prefix_is_an_error(rec in record()) {
            let bytes = rec.encode().unwrap();
            for cut in 0..bytes.len() {
                prop_assert!(Record::decode(&bytes[..cut]).is_err(), "prefix of {} bytes decoded", cut);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn trailing_bytes_rejected(rec in record(), extra in 1usize..8) {
            let mut bytes = rec.encode().unwrap();
            bytes.extend(std::iter::repeat_n(0u8, extra));
            prop_assert_eq!(Record::decode(&bytes), Err(CodecError::TrailingBytes(extra)));
        }
    }

    #[test]
    fn limits_are_enforced_on_encode() {
        let ok = MessageRecord { topic: "T".into(), ..Default::default() };
        Record::Message(ok.clone()).encode().unwrap();
        let long_topic = MessageRecord { topic: "t".repeat(TOPIC_LENGTH_MAX + 1), ..ok.clone() };
        assert!(matches!(Record::Message(long_topic).encode(), Err(CodecError::TooLong { field: "topic", .. })));
        let bad_chars = MessageRecord { topic: "a b".into(), ..ok.clone() };
        assert!(matches!(Record::Message(bad_chars).encode(), Err(CodecError::InvalidValue { field: "topic", .. })));
        let big_props =
            MessageRecord { properties: vec![("k".into(), "v".repeat(PROPERTIES_BYTES_MAX))], ..ok.clone() };
        assert!(matches!(Record::Message(big_props).encode(), Err(CodecError::TooLong { .. })));
        let long_group = Record::ConsumerOffset { group: "g".repeat(65), topic: "T".into(), queue_id: 0, offset: 1 };
        assert!(matches!(long_group.encode(), Err(CodecError::TooLong { field: "group", .. })));
        let zero_queues = Record::TopicConfig(TopicConfigRecord {
            topic: "T".into(),
            read_queue_nums: 0,
            write_queue_nums: 8,
            perm: 6,
            message_type: MessageType::Normal,
        });
        assert!(zero_queues.encode().is_err());
        let bad_queue = MessageRecord { queue_id: QUEUE_NUMS_MAX, ..ok };
        assert!(Record::Message(bad_queue).encode().is_err());
    }

    #[test]
    fn malformed_inputs_give_clear_errors() {
        assert_eq!(Record::decode(&[]), Err(CodecError::Empty));
        assert_eq!(Record::decode(&[99, 1]), Err(CodecError::UnknownType(99)));
        assert_eq!(
            Record::decode(&[TYPE_NOOP, 9]),
            Err(CodecError::UnsupportedVersion { record_type: TYPE_NOOP, version: 9 })
        );
        // Topic length claims 2^35 bytes.
        let mut b = vec![TYPE_DELETE_TOPIC, VERSION_1];
        b.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x40]);
        assert!(matches!(Record::decode(&b), Err(CodecError::TooLong { field: "topic", .. })));
        // Overlong varint.
        let mut b = vec![TYPE_CONSUMER_OFFSET, VERSION_1, 1, b'g', 1, b't', 0];
        b.extend_from_slice(&[0xff; 11]);
        assert!(matches!(Record::decode(&b), Err(CodecError::BadVarint { .. })));
        // Invalid UTF-8 in a topic.
        let b = vec![TYPE_DELETE_TOPIC, VERSION_1, 2, 0xc3, 0x28];
        assert_eq!(Record::decode(&b), Err(CodecError::InvalidUtf8 { field: "topic" }));
        let msg = Record::Noop.encode().unwrap();
        assert_eq!(MessageView::decode(&msg), Err(CodecError::NotAMessage(TYPE_NOOP)));
        let err = Record::decode(&[TYPE_DELETE_TOPIC, VERSION_1, 5, b'a']).unwrap_err();
        assert_eq!(err.to_string(), "input ends inside topic");
    }

    #[test]
    fn tag_hash_is_stable() {
        assert_eq!(tag_hash(None), 0);
        assert_eq!(tag_hash(Some("TagA")), tag_hash(Some("TagA")));
        assert_ne!(tag_hash(Some("TagA")), tag_hash(Some("TagB")));
        // FNV-1a of "a" (published test vector).
        assert_eq!(tag_hash(Some("a")), 0xaf63_dc4c_8601_ec8c);
    }
}

//! The filter world's flat batch: one byte buffer plus an offset table, laid
//! out exactly as documented on `interface filter` in `wit/policy.wit`.
//! Copying one flat buffer into the guest costs a few ns per message where a
//! `list<record>` with strings would cost ~300 ns.

use crate::error::PluginError;

/// The subscription's expression language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpressionKind {
    /// `*`, `TagA`, `TagA || TagB`.
    Tag,
    /// SQL92-like expression over user properties (and TAGS).
    Sql92,
}

/// User properties of a message, in whichever form the caller holds them.
#[derive(Debug, Clone, Copy)]
pub enum Properties<'a> {
    /// Name/value pairs; encoded here as RocketMQ does
    /// (`name 0x01 value 0x02` per pair).
    Pairs(&'a [(String, String)]),
    /// Already in RocketMQ encoding; copied verbatim.
    Encoded(&'a [u8]),
}

/// One message as a filter sees it. Borrowed: building a batch copies each
/// field once, into the flat buffer.
#[derive(Debug, Clone, Copy)]
pub struct FilterMessage<'a> {
    pub tag: Option<&'a str>,
    pub keys: &'a [String],
    pub properties: Properties<'a>,
    pub queue_offset: u64,
    /// Included in the batch only for plugins whose manifest sets `wantsBody`.
    pub body: &'a [u8],
}

const NAME_VALUE_SEPARATOR: u8 = 0x01;
const PROPERTY_SEPARATOR: u8 = 0x02;

/// A chunk of messages encoded for one `filter` call.
#[derive(Debug, Default)]
pub struct FilterBatch {
    pub bytes: Vec<u8>,
    /// `offsets.len() == messages + 1`; record `i` is
    /// `bytes[offsets[i] .. offsets[i + 1]]`.
    pub offsets: Vec<u32>,
}

impl FilterBatch {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.offsets.clear();
    }

    pub fn message_count(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Encodes `messages` (all of `topic`); bodies only if `with_body`.
    /// One pass: variable-length fields get their length patched in after
    /// they are written.
    pub fn encode(&mut self, topic: &str, messages: &[FilterMessage<'_>], with_body: bool) -> Result<(), PluginError> {
        self.clear();
        self.offsets.reserve(messages.len() + 1);
        self.offsets.push(0);
        // Every record starts with the same topic field: build it once.
        let mut topic_field = Vec::with_capacity(2 + topic.len());
        put_u16_field(&mut topic_field, "topic", topic.as_bytes())?;
        self.bytes.reserve(messages.len() * (topic_field.len() + RECORD_BYTES_TYPICAL));
        for message in messages {
            self.push(&topic_field, message, with_body)?;
            let end = u32::try_from(self.bytes.len()).map_err(|_| {
                PluginError::InvalidInput(format!(
                    "filter batch of {} bytes does not fit u32 offsets",
                    self.bytes.len()
                ))
            })?;
            self.offsets.push(end);
        }
        debug_assert_eq!(self.message_count(), messages.len());
        Ok(())
    }

    fn push(&mut self, topic_field: &[u8], m: &FilterMessage<'_>, with_body: bool) -> Result<(), PluginError> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(topic_field);
        put_u16_field(&mut self.bytes, "tag", m.tag.unwrap_or("").as_bytes())?;

        let keys_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 2]);
        for (i, key) in m.keys.iter().enumerate() {
            if contains_any(key.as_bytes(), b' ', b' ') {
                return Err(PluginError::InvalidInput(format!(
                    "message key {key:?} contains a space, the keys separator"
                )));
            }
            if i > 0 {
                self.bytes.push(b' ');
            }
            self.bytes.extend_from_slice(key.as_bytes());
        }
        let keys_len = self.bytes.len() - keys_at - 2;
        let keys_len = u16::try_from(keys_len)
            .map_err(|_| PluginError::InvalidInput(format!("message keys are {keys_len} bytes, the limit is 65535")))?;
        self.bytes[keys_at..keys_at + 2].copy_from_slice(&keys_len.to_le_bytes());

        let props_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        match m.properties {
            Properties::Encoded(raw) => self.bytes.extend_from_slice(raw),
            Properties::Pairs(pairs) => {
                for (name, value) in pairs {
                    let bad = |s: &str| contains_any(s.as_bytes(), NAME_VALUE_SEPARATOR, PROPERTY_SEPARATOR);
                    if bad(name) || bad(value) {
                        return Err(PluginError::InvalidInput(format!(
                            "property {name:?} contains a 0x01/0x02 separator byte"
                        )));
                    }
                    self.bytes.extend_from_slice(name.as_bytes());
                    self.bytes.push(NAME_VALUE_SEPARATOR);
                    self.bytes.extend_from_slice(value.as_bytes());
                    self.bytes.push(PROPERTY_SEPARATOR);
                }
            }
        }
        let props_len = self.bytes.len() - props_at - 4;
        let props_len = u32::try_from(props_len)
            .map_err(|_| PluginError::InvalidInput(format!("message properties are {props_len} bytes")))?;
        self.bytes[props_at..props_at + 4].copy_from_slice(&props_len.to_le_bytes());

        self.bytes.extend_from_slice(&m.queue_offset.to_le_bytes());
        let body: &[u8] = if with_body { m.body } else { &[] };
        let body_len = u32::try_from(body.len())
            .map_err(|_| PluginError::InvalidInput(format!("body of {} bytes", body.len())))?;
        self.bytes.extend_from_slice(&body_len.to_le_bytes());
        self.bytes.extend_from_slice(body);
        debug_assert_eq!(self.bytes.len() - start, encoded_len_of(topic_field.len() - 2, m, with_body));
        Ok(())
    }
}

/// Initial capacity guess per record beyond the topic (grown as needed).
const RECORD_BYTES_TYPICAL: usize = 96;

/// Whether `bytes` holds `a` or `b`. A branch-free fold: the fields are
/// short, and this vectorises where a short-circuiting search does not.
#[inline]
fn contains_any(bytes: &[u8], a: u8, b: u8) -> bool {
    bytes.iter().fold(false, |found, &x| found | (x == a) | (x == b))
}

fn put_u16_field(out: &mut Vec<u8>, field: &str, bytes: &[u8]) -> Result<(), PluginError> {
    let len = u16::try_from(bytes.len()).map_err(|_| {
        PluginError::InvalidInput(format!("message {field} is {} bytes, the limit is 65535", bytes.len()))
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn keys_encoded_len(keys: &[String]) -> usize {
    keys.iter().map(|k| k.len()).sum::<usize>() + keys.len().saturating_sub(1)
}

fn properties_encoded_len(properties: Properties<'_>) -> usize {
    match properties {
        Properties::Encoded(raw) => raw.len(),
        Properties::Pairs(pairs) => pairs.iter().map(|(n, v)| n.len() + v.len() + 2).sum(),
    }
}

/// Bytes `m` takes in a batch (used to cut batches by size before encoding).
pub fn encoded_len(topic: &str, m: &FilterMessage<'_>, with_body: bool) -> usize {
    encoded_len_of(topic.len(), m, with_body)
}

fn encoded_len_of(topic_len: usize, m: &FilterMessage<'_>, with_body: bool) -> usize {
    2 + topic_len
        + 2
        + m.tag.map_or(0, str::len)
        + 2
        + keys_encoded_len(m.keys)
        + 4
        + properties_encoded_len(m.properties)
        + 8
        + 4
        + if with_body { m.body.len() } else { 0 }
}

/// Splits `messages` into consecutive chunks of at most `count_max` messages
/// and (unless one message alone is bigger) at most `bytes_max` bytes.
pub fn chunk_bounds(
    topic: &str,
    messages: &[FilterMessage<'_>],
    with_body: bool,
    count_max: usize,
    bytes_max: usize,
) -> Vec<std::ops::Range<usize>> {
    assert!(count_max > 0);
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, m) in messages.iter().enumerate() {
        let len = encoded_len(topic, m, with_body);
        let count = i - start;
        if count > 0 && (count == count_max || bytes + len > bytes_max) {
            chunks.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < messages.len() {
        chunks.push(start..messages.len());
    }
    debug_assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), messages.len());
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// topic, tag, keys, properties, queue offset, body.
    type Record = (String, String, String, Vec<u8>, u64, Vec<u8>);

    /// An independent reader of the documented layout.
    fn decode(batch: &FilterBatch) -> Vec<Record> {
        let mut out = Vec::new();
        for w in batch.offsets.windows(2) {
            let rec = &batch.bytes[w[0] as usize..w[1] as usize];
            let mut at = 0;
            let mut take = |n: usize| {
                let s = &rec[at..at + n];
                at += n;
                s
            };
            let n = u16::from_le_bytes(take(2).try_into().unwrap()) as usize;
            let topic = String::from_utf8(take(n).to_vec()).unwrap();
            let n = u16::from_le_bytes(take(2).try_into().unwrap()) as usize;
            let tag = String::from_utf8(take(n).to_vec()).unwrap();
            let n = u16::from_le_bytes(take(2).try_into().unwrap()) as usize;
            let keys = String::from_utf8(take(n).to_vec()).unwrap();
            let n = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
            let props = take(n).to_vec();
            let offset = u64::from_le_bytes(take(8).try_into().unwrap());
            let n = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
            let body = take(n).to_vec();
            assert_eq!(at, rec.len(), "record has trailing bytes");
            out.push((topic, tag, keys, props, offset, body));
        }
        out
    }

    #[test]
    fn layout_matches_wit_documentation() {
        let keys = vec!["k1".to_owned(), "k2".to_owned()];
        let props = vec![("a".to_owned(), "1".to_owned()), ("bb".to_owned(), "22".to_owned())];
        let messages = [
            FilterMessage {
                tag: Some("TagA"),
                keys: &keys,
                properties: Properties::Pairs(&props),
                queue_offset: 7,
                body: b"hello",
            },
            FilterMessage {
                tag: None,
                keys: &[],
                properties: Properties::Encoded(b"x\x01y\x02"),
                queue_offset: u64::MAX,
                body: b"",
            },
        ];
        let mut batch = FilterBatch::default();
        batch.encode("orders", &messages, true).unwrap();
        assert_eq!(batch.offsets.len(), 3);
        assert_eq!(batch.offsets[0], 0);
        assert_eq!(*batch.offsets.last().unwrap() as usize, batch.bytes.len());
        let records = decode(&batch);
        assert_eq!(records[0].0, "orders");
        assert_eq!(records[0].1, "TagA");
        assert_eq!(records[0].2, "k1 k2");
        assert_eq!(records[0].3, b"a\x011\x02bb\x0122\x02");
        assert_eq!(records[0].4, 7);
        assert_eq!(records[0].5, b"hello");
        assert_eq!(records[1].1, "");
        assert_eq!(records[1].2, "");
        assert_eq!(records[1].3, b"x\x01y\x02");
        assert_eq!(records[1].4, u64::MAX);
        assert_eq!(encoded_len("orders", &messages[0], true), batch.offsets[1] as usize);

        batch.encode("orders", &messages, false).unwrap();
        let records = decode(&batch);
        assert!(records[0].5.is_empty(), "body sent without wantsBody");
    }

    #[test]
    fn bad_input_is_an_error_not_a_corrupt_batch() {
        let long = "t".repeat(70_000);
        let m = FilterMessage {
            tag: Some(&long),
            keys: &[],
            properties: Properties::Encoded(b""),
            queue_offset: 0,
            body: b"",
        };
        let mut batch = FilterBatch::default();
        let err = batch.encode("t", &[m], false).unwrap_err();
        assert!(err.to_string().contains("tag"), "{err}");

        let keys = vec!["a b".to_owned()];
        let m = FilterMessage { keys: &keys, tag: None, ..m };
        assert!(batch.encode("t", &[m], false).is_err());

        let props = vec![("a\x01".to_owned(), "v".to_owned())];
        let m = FilterMessage { keys: &[], properties: Properties::Pairs(&props), ..m };
        assert!(batch.encode("t", &[m], false).is_err());
    }

    #[test]
    fn chunks_respect_count_and_bytes() {
        let body = vec![0u8; 100];
        let msgs: Vec<FilterMessage<'_>> = (0..10)
            .map(|i| FilterMessage {
                tag: None,
                keys: &[],
                properties: Properties::Encoded(b""),
                queue_offset: i,
                body: &body,
            })
            .collect();
        let c = chunk_bounds("t", &msgs, false, 4, usize::MAX);
        assert_eq!(c, vec![0..4, 4..8, 8..10]);
        let one = encoded_len("t", &msgs[0], true);
        let c = chunk_bounds("t", &msgs, true, 1000, one * 3);
        assert_eq!(c, vec![0..3, 3..6, 6..9, 9..10]);
        // A message bigger than the byte cap still goes, alone.
        let c = chunk_bounds("t", &msgs, true, 1000, 10);
        assert_eq!(c.len(), 10);
        assert!(chunk_bounds("t", &[], true, 4, 10).is_empty());
    }
}

//! The filter batch format (see `wit/policy.wit`, interface `filter`): one flat buffer plus
//! an offset table. This module parses it into zero-copy [`MessageView`]s and can also
//! write it ([`BatchWriter`]), so plugin logic can be unit-tested natively.
//!
//! Record layout, integers little-endian:
//!
//! ```text
//! u16 topic-len, topic | u16 tag-len, tag | u16 keys-len, keys | u32 props-len, props
//! u64 queue-offset     | u32 body-len, body
//! ```

use core::fmt;

/// RocketMQ's property encoding: `name 0x01 value 0x02 name 0x01 value 0x02 ...`.
pub const PROPERTY_NAME_VALUE_SEPARATOR: u8 = 0x01;
pub const PROPERTY_SEPARATOR: u8 = 0x02;

/// Fixed bytes of a record besides the variable-length fields.
const RECORD_FIXED_BYTES: usize = 2 + 2 + 2 + 4 + 8 + 4;

/// A batch that does not follow the documented format. This is a host bug, never the
/// consumer's or producer's fault, so the SDK turns it into a trap (the host then applies the
/// plugin's `onError` policy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("offset table is empty (it must have n+1 entries)")]
    OffsetsEmpty,
    #[error("offset table entry {index} ({offset}) is below the previous entry")]
    OffsetsNotMonotonic { index: usize, offset: u32 },
    #[error("offset table ends at {end} but the batch has {len} bytes")]
    OffsetsPastEnd { end: u32, len: usize },
    #[error("record {index}: field {field} needs {needed} bytes, {available} left")]
    Truncated { index: usize, field: &'static str, needed: usize, available: usize },
    #[error("record {index}: {trailing} trailing bytes after the body")]
    Trailing { index: usize, trailing: usize },
    #[error("record {index}: field {field} is not UTF-8")]
    NotUtf8 { index: usize, field: &'static str },
}

/// A validated batch: the offset table is monotonic and inside the buffer. Records are
/// parsed on access ([`Batch::get`], [`Batch::iter`]), so parsing cost is paid once per
/// message, by the loop that uses it.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    buf: &'a [u8],
    offsets: &'a [u32],
}

impl<'a> Batch<'a> {
    pub fn new(buf: &'a [u8], offsets: &'a [u32]) -> Result<Self, BatchError> {
        let (&first, rest) = offsets.split_first().ok_or(BatchError::OffsetsEmpty)?;
        let mut previous = first;
        for (i, &offset) in rest.iter().enumerate() {
            if offset < previous {
                return Err(BatchError::OffsetsNotMonotonic { index: i + 1, offset });
            }
            previous = offset;
        }
        if previous as usize > buf.len() {
            return Err(BatchError::OffsetsPastEnd { end: previous, len: buf.len() });
        }
        Ok(Batch { buf, offsets })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record `index`; panics if `index >= len()` (a caller bug, like slice indexing).
    #[inline(always)]
    pub fn get(&self, index: usize) -> Result<MessageView<'a>, BatchError> {
        assert!(index < self.len(), "record {index} out of {}", self.len());
        let start = self.offsets[index] as usize;
        let end = self.offsets[index + 1] as usize;
        MessageView::parse(index, &self.buf[start..end])
    }

    /// All records in order (cheaper than `get` in a loop: no per-index bounds checks).
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = Result<MessageView<'a>, BatchError>> + 'a {
        let buf = self.buf;
        self.offsets
            .windows(2)
            .enumerate()
            .map(move |(i, w)| MessageView::parse(i, &buf[w[0] as usize..w[1] as usize]))
    }
}

/// One message of a batch, borrowing from the batch buffer.
///
/// Parsing reads only the length prefixes; text fields are checked for UTF-8 when an
/// accessor returns them as `&str` (a filter that looks at one property pays for that
/// one). The host writes UTF-8, so invalid text is a host bug: those accessors panic,
/// which traps the call and lets the host apply the plugin's `onError` policy. The `*_bytes`
/// accessors never check.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageView<'a> {
    index: usize,
    topic: &'a [u8],
    tag: &'a [u8],
    keys: &'a [u8],
    properties: &'a [u8],
    queue_offset: u64,
    body: &'a [u8],
}

/// Checks text from the host; see [`MessageView`] for why invalid text panics.
#[inline]
fn text<'a>(index: usize, field: &'static str, bytes: &'a [u8]) -> &'a str {
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => panic!("{}", BatchError::NotUtf8 { index, field }),
    }
}

struct Reader<'a> {
    index: usize,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline(always)]
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], BatchError> {
        if self.rest.len() < n {
            return Err(BatchError::Truncated {
                index: self.index,
                field,
                needed: n,
                available: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    #[inline(always)]
    fn u16(&mut self, field: &'static str) -> Result<usize, BatchError> {
        let b = self.take(field, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    #[inline(always)]
    fn u32(&mut self, field: &'static str) -> Result<usize, BatchError> {
        let b = self.take(field, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    #[inline(always)]
    fn u64(&mut self, field: &'static str) -> Result<u64, BatchError> {
        let b = self.take(field, 8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("take returned 8 bytes")))
    }
}

impl<'a> MessageView<'a> {
    /// Parses one record's framing; `index` labels errors. Always inlined: out of line, the
    /// view travels through memory on wasm and costs more than the parse itself.
    #[inline(always)]
    pub fn parse(index: usize, record: &'a [u8]) -> Result<Self, BatchError> {
        if record.len() < RECORD_FIXED_BYTES {
            return Err(BatchError::Truncated {
                index,
                field: "record",
                needed: RECORD_FIXED_BYTES,
                available: record.len(),
            });
        }
        let mut r = Reader { index, rest: record };
        let n = r.u16("topic-len")?;
        let topic = r.take("topic", n)?;
        let n = r.u16("tag-len")?;
        let tag = r.take("tag", n)?;
        let n = r.u16("keys-len")?;
        let keys = r.take("keys", n)?;
        let n = r.u32("props-len")?;
        let properties = r.take("props", n)?;
        let queue_offset = r.u64("queue-offset")?;
        let n = r.u32("body-len")?;
        let body = r.take("body", n)?;
        if !r.rest.is_empty() {
            return Err(BatchError::Trailing { index, trailing: r.rest.len() });
        }
        Ok(MessageView { index, topic, tag, keys, properties, queue_offset, body })
    }

    /// Checks every text field for UTF-8 at once (the accessors check lazily).
    pub fn validate_utf8(&self) -> Result<(), BatchError> {
        for (field, bytes) in [("topic", self.topic), ("tag", self.tag), ("keys", self.keys), ("props", self.properties)] {
            if core::str::from_utf8(bytes).is_err() {
                return Err(BatchError::NotUtf8 { index: self.index, field });
            }
        }
        Ok(())
    }

    /// Position of the record in its batch.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn topic(&self) -> &'a str {
        text(self.index, "topic", self.topic)
    }

    pub fn topic_bytes(&self) -> &'a [u8] {
        self.topic
    }

    /// The message's tag; RocketMQ allows at most one.
    pub fn tag(&self) -> Option<&'a str> {
        if self.tag.is_empty() { None } else { Some(text(self.index, "tag", self.tag)) }
    }

    /// The tag's bytes, without the UTF-8 check (cheapest for comparisons).
    #[inline]
    pub fn tag_bytes(&self) -> Option<&'a [u8]> {
        if self.tag.is_empty() { None } else { Some(self.tag) }
    }

    /// The raw KEYS string (keys separated by a space).
    pub fn keys_raw(&self) -> &'a str {
        text(self.index, "keys", self.keys)
    }

    /// The message keys, in order, without empty entries.
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.keys_raw().split(' ').filter(|k| !k.is_empty())
    }

    pub fn first_key(&self) -> Option<&'a str> {
        self.keys().next()
    }

    /// The user properties, in stored order. Like RocketMQ's decoder, segments without a
    /// name/value separator are ignored.
    pub fn properties(&self) -> Properties<'a> {
        Properties { index: self.index, rest: self.properties }
    }

    /// The raw RocketMQ property encoding.
    pub fn properties_bytes(&self) -> &'a [u8] {
        self.properties
    }

    /// Value of the first property called `name` (a linear scan over bytes: properties are
    /// few; only the returned value is checked for UTF-8).
    #[inline]
    pub fn property(&self, name: &str) -> Option<&'a str> {
        let mut rest = self.properties;
        let name = name.as_bytes();
        while !rest.is_empty() {
            let end = rest.iter().position(|&b| b == PROPERTY_SEPARATOR).unwrap_or(rest.len());
            let segment = &rest[..end];
            rest = if end < rest.len() { &rest[end + 1..] } else { &[] };
            if segment.len() > name.len()
                && segment[name.len()] == PROPERTY_NAME_VALUE_SEPARATOR
                && &segment[..name.len()] == name
            {
                return Some(text(self.index, "props", &segment[name.len() + 1..]));
            }
        }
        None
    }

    /// Consume-queue offset of the message.
    pub fn queue_offset(&self) -> u64 {
        self.queue_offset
    }

    /// The body; empty unless the manifest sets `wantsBody = true`.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

impl fmt::Debug for MessageView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageView")
            .field("topic", &String::from_utf8_lossy(self.topic))
            .field("tag", &String::from_utf8_lossy(self.tag))
            .field("keys", &String::from_utf8_lossy(self.keys))
            .field("properties", &String::from_utf8_lossy(self.properties))
            .field("queue_offset", &self.queue_offset)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Iterator over `(name, value)` pairs of a RocketMQ property string.
#[derive(Clone)]
pub struct Properties<'a> {
    index: usize,
    rest: &'a [u8],
}

impl<'a> Iterator for Properties<'a> {
    type Item = (&'a str, &'a str);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let end = self.rest.iter().position(|&b| b == PROPERTY_SEPARATOR).unwrap_or(self.rest.len());
            let segment = &self.rest[..end];
            self.rest = if end < self.rest.len() { &self.rest[end + 1..] } else { &[] };
            if let Some(split) = segment.iter().position(|&b| b == PROPERTY_NAME_VALUE_SEPARATOR) {
                return Some((
                    text(self.index, "props", &segment[..split]),
                    text(self.index, "props", &segment[split + 1..]),
                ));
            }
        }
        None
    }
}

/// Writes batches in the documented format: what the host does, offered here so plugin
/// logic can be tested natively and benchmarked without a host.
#[derive(Default)]
pub struct BatchWriter {
    buf: Vec<u8>,
    offsets: Vec<u32>,
}

/// One message to write with [`BatchWriter::push`].
#[derive(Default, Clone, Copy)]
pub struct MessageSpec<'a> {
    pub topic: &'a str,
    pub tag: Option<&'a str>,
    pub keys: &'a [&'a str],
    pub properties: &'a [(&'a str, &'a str)],
    pub queue_offset: u64,
    pub body: &'a [u8],
}

impl BatchWriter {
    pub fn new() -> Self {
        BatchWriter { buf: Vec::new(), offsets: vec![0] }
    }

    /// Appends one record. Panics when a field exceeds its length prefix (test helper).
    pub fn push(&mut self, m: &MessageSpec<'_>) -> &mut Self {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let put16 = |buf: &mut Vec<u8>, s: &[u8]| {
            buf.extend_from_slice(&u16::try_from(s.len()).expect("field fits u16").to_le_bytes());
            buf.extend_from_slice(s);
        };
        put16(&mut self.buf, m.topic.as_bytes());
        put16(&mut self.buf, m.tag.unwrap_or("").as_bytes());
        put16(&mut self.buf, m.keys.join(" ").as_bytes());
        let mut props = Vec::new();
        for (name, value) in m.properties {
            props.extend_from_slice(name.as_bytes());
            props.push(PROPERTY_NAME_VALUE_SEPARATOR);
            props.extend_from_slice(value.as_bytes());
            props.push(PROPERTY_SEPARATOR);
        }
        self.buf.extend_from_slice(&u32::try_from(props.len()).expect("props fit u32").to_le_bytes());
        self.buf.extend_from_slice(&props);
        self.buf.extend_from_slice(&m.queue_offset.to_le_bytes());
        self.buf.extend_from_slice(&u32::try_from(m.body.len()).expect("body fits u32").to_le_bytes());
        self.buf.extend_from_slice(m.body);
        self.offsets.push(u32::try_from(self.buf.len()).expect("batch fits u32"));
        self
    }

    pub fn buf(&self) -> &[u8] {
        &self.buf
    }

    pub fn offsets(&self) -> &[u32] {
        if self.offsets.is_empty() { &[0] } else { &self.offsets }
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch::new(self.buf(), self.offsets()).expect("writer produces valid batches")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = BatchWriter::new();
        w.push(&MessageSpec {
            topic: "orders",
            tag: Some("TagA"),
            keys: &["k1", "k2"],
            properties: &[("region", "eu"), ("price", "12.5")],
            queue_offset: 42,
            body: b"hello",
        });
        w.push(&MessageSpec { topic: "t", ..Default::default() });
        let batch = w.batch();
        assert_eq!(batch.len(), 2);
        let m = batch.get(0).unwrap();
        assert_eq!(m.topic(), "orders");
        assert_eq!(m.tag(), Some("TagA"));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["k1", "k2"]);
        assert_eq!(m.first_key(), Some("k1"));
        assert_eq!(m.property("price"), Some("12.5"));
        assert_eq!(m.property("missing"), None);
        assert_eq!(m.properties().count(), 2);
        assert_eq!(m.queue_offset(), 42);
        assert_eq!(m.body(), b"hello");
        let m = batch.get(1).unwrap();
        assert_eq!(m.tag(), None);
        assert_eq!(m.first_key(), None);
        assert_eq!(m.properties().count(), 0);
    }

    #[test]
    fn properties_ignore_segments_without_separator_and_tolerate_missing_final_separator() {
        let p = Properties { index: 0, rest: "a\u{1}1\u{2}junk\u{2}\u{2}b\u{1}2".as_bytes() };
        assert_eq!(p.collect::<Vec<_>>(), [("a", "1"), ("b", "2")]);
    }

    #[test]
    fn rejects_bad_offsets() {
        assert_eq!(Batch::new(b"", &[]).err(), Some(BatchError::OffsetsEmpty));
        assert!(matches!(Batch::new(b"abc", &[0, 2, 1]), Err(BatchError::OffsetsNotMonotonic { index: 2, .. })));
        assert!(matches!(Batch::new(b"abc", &[0, 4]), Err(BatchError::OffsetsPastEnd { end: 4, .. })));
        assert_eq!(Batch::new(b"", &[0]).unwrap().len(), 0);
    }

    #[test]
    fn rejects_truncated_trailing_and_non_utf8_records() {
        let mut w = BatchWriter::new();
        w.push(&MessageSpec { topic: "abc", tag: Some("x"), body: b"zz", ..Default::default() });
        let good = w.buf().to_vec();
        // Every strict prefix is truncated.
        for cut in 0..good.len() {
            let r = MessageView::parse(0, &good[..cut]);
            assert!(matches!(r, Err(BatchError::Truncated { .. })), "cut {cut}: {r:?}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(MessageView::parse(3, &long).err(), Some(BatchError::Trailing { index: 3, trailing: 1 }));
        let mut bad = good.clone();
        bad[2] = 0xff; // first topic byte
        let view = MessageView::parse(0, &bad).expect("framing is fine");
        assert_eq!(view.validate_utf8(), Err(BatchError::NotUtf8 { index: 0, field: "topic" }));
        assert_eq!(view.tag(), Some("x"), "other fields stay readable");
        let panic = std::panic::catch_unwind(|| view.topic()).expect_err("invalid topic panics");
        assert!(panic.downcast_ref::<String>().unwrap().contains("field topic is not UTF-8"));
    }

    #[test]
    fn property_lookup_matches_whole_names_only() {
        let mut w = BatchWriter::new();
        w.push(&MessageSpec { topic: "t", properties: &[("ab", "1"), ("a", "2"), ("a", "3")], ..Default::default() });
        let m = w.batch().get(0).unwrap();
        assert_eq!(m.property("a"), Some("2"), "first match, not a prefix of another name");
        assert_eq!(m.property("ab"), Some("1"));
        assert_eq!(m.property("b"), None);
        assert_eq!(m.property(""), None);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// Corrupted batches (valid ones with random bytes overwritten, random offset tables)
    /// never panic the parser: every record is either a view or a `BatchError`.
    #[test]
    fn corrupted_batches_never_panic() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut views, mut errors) = (0, 0);
        for _ in 0..20_000 {
            let mut w = BatchWriter::new();
            for _ in 0..1 + next() % 3 {
                let tag = if next() % 2 == 0 { Some("TagA") } else { None };
                w.push(&MessageSpec { topic: "t", tag, keys: &["k"], properties: &[("a", "1")], ..Default::default() });
            }
            let mut buf = w.buf().to_vec();
            let mut offsets = w.offsets().to_vec();
            for _ in 0..next() % 4 {
                let at = (next() % buf.len() as u64) as usize;
                buf[at] = (next() % 256) as u8;
            }
            if next() % 4 == 0 {
                let at = (next() % offsets.len() as u64) as usize;
                offsets[at] = (next() % (buf.len() as u64 + 4)) as u32;
            }
            let Ok(batch) = Batch::new(&buf, &offsets) else {
                errors += 1;
                continue;
            };
            for m in batch.iter() {
                match m {
                    Ok(m) => {
                        views += 1;
                        if m.validate_utf8().is_ok() {
                            let _ = (m.topic(), m.tag(), m.keys().count(), m.properties().count(), m.property("a"));
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
        }
        assert!(views > 1000 && errors > 1000, "both arms exercised ({views} views, {errors} errors)");
    }
}

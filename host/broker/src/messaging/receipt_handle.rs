//! Receipt handles: everything needed to ack a delivered message, inside the handle.
//!
//! A handle names (group, topic, queue id, queue offset, delivery attempt, invisibility
//! deadline) and carries a CRC32C check value. Because queue offsets are identical on
//! every replica, a new leader decodes and honours handles issued by the old one
//! without any shared server-side state. The check value catches garbled or truncated
//! handles (they get INVALID_RECEIPT_HANDLE); it is not a secret (clients are trusted
//! members of the consumer group).
//!
//! Text form: `wq1.` followed by lowercase hex of the binary form (little-endian):
//! `u32 queue_id, u64 queue_offset, u32 attempt, u64 deadline_ms, u16 len + group,
//! u16 len + topic, u32 crc32c(all preceding bytes)`.

use thiserror::Error;

const PREFIX: &str = "wq1.";
/// Names are ≤ 64 chars by RocketMQ's rules; allow some slack for namespaced names.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest text handle we accept (prefix + hex of the largest binary form).
pub const HANDLE_CHARS_MAX: usize = PREFIX.len() + 2 * (4 + 8 + 4 + 8 + 2 + NAME_BYTES_MAX + 2 + NAME_BYTES_MAX + 4);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptHandle {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    /// 1 on first delivery.
    pub attempt: u32,
    /// When the message becomes visible again, ms since the epoch.
    pub deadline_ms: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandleError {
    #[error("receipt handle is empty")]
    Empty,
    #[error("receipt handle longer than {HANDLE_CHARS_MAX} chars")]
    TooLong,
    #[error("receipt handle has an unknown format")]
    UnknownFormat,
    #[error("receipt handle is not valid hex")]
    NotHex,
    #[error("receipt handle is truncated")]
    Truncated,
    #[error("receipt handle has trailing bytes")]
    TrailingBytes,
    #[error("receipt handle check value mismatch (garbled)")]
    CheckMismatch,
    #[error("receipt handle names are not UTF-8 or too long")]
    BadName,
    #[error("receipt handle attempt is 0")]
    ZeroAttempt,
}

impl ReceiptHandle {
    pub fn encode(&self) -> String {
        assert!(self.group.len() <= NAME_BYTES_MAX && self.topic.len() <= NAME_BYTES_MAX);
        assert!(self.attempt >= 1, "attempts count from 1");
        let mut b = Vec::with_capacity(40 + self.group.len() + self.topic.len());
        b.extend_from_slice(&self.queue_id.to_le_bytes());
        b.extend_from_slice(&self.queue_offset.to_le_bytes());
        b.extend_from_slice(&self.attempt.to_le_bytes());
        b.extend_from_slice(&self.deadline_ms.to_le_bytes());
        for name in [&self.group, &self.topic] {
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let text = format!("{PREFIX}{}", hex::encode(&b));
        debug_assert!(text.len() <= HANDLE_CHARS_MAX);
        text
    }

    pub fn decode(text: &str) -> Result<Self, HandleError> {
        if text.is_empty() {
            return Err(HandleError::Empty);
        }
        if text.len() > HANDLE_CHARS_MAX {
            return Err(HandleError::TooLong);
        }
        let body = text.strip_prefix(PREFIX).ok_or(HandleError::UnknownFormat)?;
        let b = hex::decode(body).map_err(|_| HandleError::NotHex)?;
        if b.len() < 4 {
            return Err(HandleError::Truncated);
        }
        let (payload, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(payload) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(HandleError::CheckMismatch);
        }
        let mut r = Reader { b: payload };
        let queue_id = u32::from_le_bytes(r.take::<4>()?);
        let queue_offset = u64::from_le_bytes(r.take::<8>()?);
        let attempt = u32::from_le_bytes(r.take::<4>()?);
        let deadline_ms = u64::from_le_bytes(r.take::<8>()?);
        let group = r.name()?;
        let topic = r.name()?;
        if !r.b.is_empty() {
            return Err(HandleError::TrailingBytes);
        }
        if attempt == 0 {
            return Err(HandleError::ZeroAttempt);
        }
        Ok(ReceiptHandle { group, topic, queue_id, queue_offset, attempt, deadline_ms })
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], HandleError> {
        if self.b.len() < N {
            return Err(HandleError::Truncated);
        }
        let (head, rest) = self.b.split_at(N);
        self.b = rest;
        Ok(head.try_into().expect("N bytes"))
    }

    fn name(&mut self) -> Result<String, HandleError> {
        let len = u16::from_le_bytes(self.take::<2>()?) as usize;
        if len > NAME_BYTES_MAX {
            return Err(HandleError::BadName);
        }
        if self.b.len() < len {
            return Err(HandleError::Truncated);
        }
        let (head, rest) = self.b.split_at(len);
        self.b = rest;
        String::from_utf8(head.to_vec()).map_err(|_| HandleError::BadName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sample() -> ReceiptHandle {
        ReceiptHandle {
            group: "GID_orders".into(),
            topic: "orders".into(),
            queue_id: 3,
            queue_offset: 1 << 40,
            attempt: 2,
            deadline_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let text = h.encode();
        assert!(text.starts_with("wq1."));
        assert_eq!(ReceiptHandle::decode(&text).unwrap(), h);
        let long = ReceiptHandle { group: "g".repeat(NAME_BYTES_MAX), topic: "t".repeat(NAME_BYTES_MAX), ..h };
        let text = long.encode();
        assert!(text.len() <= HANDLE_CHARS_MAX);
        assert_eq!(ReceiptHandle::decode(&text).unwrap(), long);
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert_eq!(ReceiptHandle::decode(""), Err(HandleError::Empty));
        assert_eq!(ReceiptHandle::decode("hello"), Err(HandleError::UnknownFormat));
        assert_eq!(ReceiptHandle::decode("wq1.zz"), Err(HandleError::NotHex));
        assert_eq!(ReceiptHandle::decode("wq1.00"), Err(HandleError::Truncated));
        assert_eq!(ReceiptHandle::decode(&"a".repeat(HANDLE_CHARS_MAX + 1)), Err(HandleError::TooLong));
        let text = sample().encode();
        // Truncation: the check value no longer matches (or too short).
        assert!(ReceiptHandle::decode(&text[..text.len() - 2]).is_err());
        // A valid check value over a malformed payload is still rejected.
        let mut payload = vec![0u8; 10];
        let crc = crc32c::crc32c(&payload);
        payload.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(ReceiptHandle::decode(&format!("wq1.{}", hex::encode(&payload))), Err(HandleError::Truncated));
    }

    #[test]
    fn every_single_character_flip_is_detected() {
        let text = sample().encode();
        let bytes = text.as_bytes();
        for i in PREFIX.len()..bytes.len() {
            for replacement in [b'0', b'f', b'7'] {
                if bytes[i] == replacement {
                    continue;
                }
                let mut garbled = bytes.to_vec();
                garbled[i] = replacement;
                let garbled = String::from_utf8(garbled).unwrap();
                assert!(ReceiptHandle::decode(&garbled).is_err(), "flip at {i} accepted");
            }
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"wq1.0123456789abcdefXYZ-_";
        for _ in 0..20_000 {
            let len = rng.random_range(0..120);
            let s: String = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect();
            let _ = ReceiptHandle::decode(&s);
            let with_prefix = format!("wq1.{s}");
            let _ = ReceiptHandle::decode(&with_prefix);
        }
    }
}

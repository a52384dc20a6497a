//! The pull/offset family: the consumer keeps its own position (PullMessage from an
//! offset, UpdateOffset/GetOffset to store it, QueryOffset to find one). Reads serve
//! committed entries, so any member answers them; only UpdateOffset needs the leader.

use std::time::Duration;

use v2::Code;
use wasmq_proto::apache::rocketmq::v2;

use super::backend::{MessagingBackend, StoredMessage};
use super::pop::{Subscription, select};
use super::status::{from_backend, status};

/// Reads per QueryOffset by timestamp (binary search over a queue's offsets).
const TIMESTAMP_SEARCH_READS_MAX: u32 = 64;
/// Messages one PullMessage examines when the filter skips them all.
const PULL_SCAN_MAX: u64 = 4096;

/// BEGINNING → min, END → max, TIMESTAMP → first offset stored at or after `ts_ms`
/// (max if none).
pub async fn query_offset(
    backend: &dyn MessagingBackend,
    topic: &str,
    queue_id: u32,
    policy: v2::QueryOffsetPolicy,
    ts_ms: Option<u64>,
) -> Result<u64, v2::Status> {
    let min = backend.min_offset(topic, queue_id).await.map_err(|e| from_backend(&e))?;
    let max = backend.max_offset(topic, queue_id).await.map_err(|e| from_backend(&e))?;
    match policy {
        v2::QueryOffsetPolicy::Beginning => Ok(min),
        v2::QueryOffsetPolicy::End => Ok(max),
        v2::QueryOffsetPolicy::Timestamp => {
            let ts = ts_ms.ok_or_else(|| status(Code::BadRequest, "TIMESTAMP policy needs a timestamp"))?;
            // Store timestamps grow with the offset (one leader appends at a time).
            let (mut lo, mut hi) = (min, max);
            let mut reads = 0;
            while lo < hi {
                reads += 1;
                if reads > TIMESTAMP_SEARCH_READS_MAX {
                    return Err(status(Code::InternalServerError, "timestamp search did not converge"));
                }
                let mid = lo + (hi - lo) / 2;
                let found = backend.read(topic, queue_id, mid, 1, 1).await.map_err(|e| from_backend(&e))?;
                match found.first() {
                    // Retention may have removed `mid`: the next readable one stands in.
                    Some(m) if m.store_timestamp_ms >= ts => hi = mid.min(m.queue_offset),
                    Some(m) => lo = m.queue_offset.max(mid) + 1,
                    None => hi = mid,
                }
            }
            Ok(lo)
        }
    }
}

/// Up to `batch` messages at or after `offset` that the subscription wants, long
/// polling up to `poll` when there are none. Returns them and the offset to pull next.
pub async fn pull(
    backend: &dyn MessagingBackend,
    group: &str,
    topic: &str,
    queue_id: u32,
    offset: u64,
    batch: u32,
    subscription: &Subscription,
    poll: Duration,
    read_bytes_max: u64,
) -> Result<(Vec<StoredMessage>, u64), v2::Status> {
    assert!(batch >= 1);
    let deadline = tokio::time::Instant::now() + poll;
    let min = backend.min_offset(topic, queue_id).await.map_err(|e| from_backend(&e))?;
    let mut next = offset.max(min);
    let first = next;
    loop {
        let read = backend.read(topic, queue_id, next, batch, read_bytes_max).await.map_err(|e| from_backend(&e))?;
        if let Some(last) = read.last() {
            next = last.queue_offset + 1;
            let wanted = select(backend, group, topic, subscription, read).await.map_err(|e| from_backend(&e))?;
            if !wanted.is_empty() || next - first >= PULL_SCAN_MAX {
                return Ok((wanted, next));
            }
            continue;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok((Vec::new(), next));
        }
        backend.wait_for_new(topic, queue_id, next, deadline - now).await.map_err(|e| from_backend(&e))?;
    }
}

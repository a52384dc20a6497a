//! Which write queue a message goes to when no router plugin decided.
//!
//! - A message group (FIFO) always maps to the same queue: order within a group needs one
//!   queue. CRC32C of the group name, so the mapping is stable across restarts, releases and
//!   replicas.
//! - Otherwise the front end's hint if it is a valid queue, else round robin.

use std::sync::atomic::{AtomicU64, Ordering};

/// Round-robin cursor shared by all topics (RocketMQ's producers rotate per topic; one
/// cursor spreads just as evenly and keeps no per-topic state).
#[derive(Debug, Default)]
pub struct QueueChooser {
    next: AtomicU64,
}

impl QueueChooser {
    pub fn choose(&self, write_queue_count: u32, message_group: Option<&str>, hint: Option<u32>) -> u32 {
        assert!(write_queue_count > 0, "topic with no write queues");
        let queue_id = if let Some(group) = message_group.filter(|g| !g.is_empty()) {
            group_queue(group, write_queue_count)
        } else if let Some(hint) = hint.filter(|h| *h < write_queue_count) {
            hint
        } else {
            (self.next.fetch_add(1, Ordering::Relaxed) % u64::from(write_queue_count)) as u32
        };
        assert!(queue_id < write_queue_count);
        queue_id
    }
}

/// Queue of a message group: stable for a given queue count.
pub fn group_queue(group: &str, write_queue_count: u32) -> u32 {
    assert!(write_queue_count > 0);
    crc32c::crc32c(group.as_bytes()) % write_queue_count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_covers_all_queues_evenly() {
        let c = QueueChooser::default();
        let mut counts = [0u32; 4];
        for _ in 0..400 {
            counts[c.choose(4, None, None) as usize] += 1;
        }
        assert_eq!(counts, [100; 4]);
    }

    #[test]
    fn message_group_is_sticky_and_beats_the_hint() {
        let c = QueueChooser::default();
        let q = c.choose(8, Some("order-42"), Some(0));
        for _ in 0..20 {
            assert_eq!(c.choose(8, Some("order-42"), Some(7)), q);
        }
        assert_eq!(q, group_queue("order-42", 8));
        // Different groups spread over queues.
        let distinct: std::collections::HashSet<u32> = (0..64).map(|i| group_queue(&format!("g{i}"), 8)).collect();
        assert!(distinct.len() >= 6, "{distinct:?}");
    }

    #[test]
    fn valid_hint_is_used_invalid_hint_ignored() {
        let c = QueueChooser::default();
        assert_eq!(c.choose(4, None, Some(3)), 3);
        assert!(c.choose(4, None, Some(4)) < 4);
        assert_eq!(c.choose(1, Some(""), None), 0);
    }
}

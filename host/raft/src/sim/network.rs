//! Simulated network: per-message random delay (so reordering), drop, duplication, and
//! partitions checked at delivery time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::{Message, NodeId};

#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    /// Bound on messages in flight; beyond, new messages are dropped (a full socket buffer).
    pub in_flight_max: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            delay_ms_min: 1,
            delay_ms_max: 10,
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            in_flight_max: 200_000,
        }
    }
}

struct InFlight {
    deliver_at_ms: u64,
    seq: u64,
    from: NodeId,
    to: NodeId,
    msg: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at_ms, self.seq) == (other.deliver_at_ms, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deliver_at_ms, self.seq).cmp(&(other.deliver_at_ms, other.seq))
    }
}

pub(crate) struct Network {
    pub config: NetConfig,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Partition group of node `id-1`; messages cross only within a group.
    group: Vec<u32>,
    pub sent: u64,
    pub dropped: u64,
}

impl Network {
    pub fn new(config: NetConfig, node_count: usize) -> Self {
        Network { config, queue: BinaryHeap::new(), seq: 0, group: vec![0; node_count], sent: 0, dropped: 0 }
    }

    pub fn send(&mut self, rng: &mut ChaCha8Rng, now_ms: u64, from: NodeId, to: NodeId, msg: Message) {
        self.sent += 1;
        if rng.random_bool(self.config.drop_probability) {
            self.dropped += 1;
            return;
        }
        let copies = if rng.random_bool(self.config.duplicate_probability) { 2 } else { 1 };
        for _ in 0..copies {
            if self.queue.len() >= self.config.in_flight_max {
                self.dropped += 1;
                return;
            }
            let delay = rng.random_range(self.config.delay_ms_min..=self.config.delay_ms_max).max(1);
            self.seq += 1;
            self.queue.push(Reverse(InFlight {
                deliver_at_ms: now_ms + delay,
                seq: self.seq,
                from,
                to,
                msg: msg.clone(),
            }));
        }
    }

    /// Next message due at `now_ms` whose endpoints can talk.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(NodeId, NodeId, Message)> {
        while let Some(Reverse(top)) = self.queue.peek() {
            if top.deliver_at_ms > now_ms {
                return None;
            }
            let Reverse(m) = self.queue.pop().expect("peeked");
            if self.connected(m.from, m.to) {
                return Some((m.from, m.to, m.msg));
            }
            self.dropped += 1;
        }
        None
    }

    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.group[a as usize - 1] == self.group[b as usize - 1]
    }

    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        // Nodes not listed form their own group together.
        let other = groups.len() as u32;
        for g in self.group.iter_mut() {
            *g = other;
        }
        for (gi, members) in groups.iter().enumerate() {
            for &id in *members {
                self.group[id as usize - 1] = gi as u32;
            }
        }
    }

    pub fn set_groups(&mut self, groups: Vec<u32>) {
        assert_eq!(groups.len(), self.group.len());
        self.group = groups;
    }

    pub fn heal(&mut self) {
        for g in self.group.iter_mut() {
            *g = 0;
        }
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

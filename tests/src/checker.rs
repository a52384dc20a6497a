//! Verifies what producers were told against what every replica serves.
//!
//! Inputs:
//! - every send *attempt* (a body; retries use a fresh body, so an attempt whose ack was lost
//!   may be stored once but never twice),
//! - the acknowledged sends (producer, sequence, queue id, queue offset, body),
//! - for every replica, a full read of every queue: (queue id, offset, body) in read order.
//!
//! Checks (each failure is one `Violation`, never a panic, so a run reports all of them):
//! 1. acks are consistent: no two acknowledged sends claim the same (queue, offset);
//! 2. per producer and queue, offsets grow with the send sequence (send order);
//! 3. on every replica, each queue is read in strictly increasing, contiguous offsets;
//! 4. on every replica, every acknowledged send is found, at the offset (and queue, when the
//!    ack named one) it was acknowledged with;
//! 5. on every replica, no body is stored twice, and no body was never attempted;
//! 6. all replicas serve identical queues.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

/// Violations listed in full; past this only the count grows (a broken run can be huge).
const VIOLATIONS_LISTED_MAX: usize = 50;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedSend {
    pub producer: u32,
    /// Position in the producer's own send order (acked or not).
    pub seq: u64,
    /// The queue the ack named. RocketMQ v2 send results carry only the queue offset, so
    /// this is usually `None`: the checker then finds the queue by the (unique) body.
    pub queue_id: Option<u32>,
    pub offset: u64,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadMessage {
    pub queue_id: u32,
    pub offset: u64,
    pub body: Vec<u8>,
}

/// Everything one replica served, in the order it served it.
#[derive(Clone, Debug, Default)]
pub struct ReplicaRead {
    pub replica: String,
    pub messages: Vec<ReadMessage>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    ConflictingAcks {
        queue_id: u32,
        offset: u64,
    },
    SendOrder {
        producer: u32,
        queue_id: u32,
        seq_earlier: u64,
        seq_later: u64,
    },
    ReadOrder {
        replica: String,
        queue_id: u32,
        offset_before: u64,
        offset_after: u64,
    },
    /// An acknowledged send is not on this replica.
    Missing {
        replica: String,
        producer: u32,
        seq: u64,
        offset: u64,
    },
    /// An acknowledged send is at another (queue, offset) than the ack said.
    WrongPlace {
        replica: String,
        acked: (Option<u32>, u64),
        found: (u32, u64),
    },
    /// One body stored twice: (queue, offset) of both copies.
    Duplicate {
        replica: String,
        first: (u32, u64),
        again: (u32, u64),
    },
    NeverSent {
        replica: String,
        queue_id: u32,
        offset: u64,
    },
    ReplicasDiffer {
        replica_a: String,
        replica_b: String,
        queue_id: u32,
        detail: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Debug, Default)]
pub struct CheckReport {
    pub acked: usize,
    pub attempted: usize,
    pub replicas: usize,
    /// Messages per replica, summed over queues.
    pub messages_per_replica: Vec<(String, usize)>,
    /// Messages stored that were attempted but never acknowledged (allowed).
    pub unacked_stored_max: usize,
    pub violations: Vec<Violation>,
    pub violation_count: usize,
}

impl CheckReport {
    fn push(&mut self, v: Violation) {
        self.violation_count += 1;
        if self.violations.len() < VIOLATIONS_LISTED_MAX {
            self.violations.push(v);
        }
    }

    pub fn is_ok(&self) -> bool {
        self.violation_count == 0
    }

    /// One line for test output.
    pub fn summary(&self) -> String {
        format!(
            "checker: acked={} attempted={} replicas={} messages={:?} unacked_stored_max={} violations={}",
            self.acked,
            self.attempted,
            self.replicas,
            self.messages_per_replica,
            self.unacked_stored_max,
            self.violation_count
        )
    }

    pub fn into_result(self) -> anyhow::Result<Self> {
        if self.is_ok() {
            Ok(self)
        } else {
            let listed: Vec<String> = self.violations.iter().map(|v| format!("  {v}")).collect();
            anyhow::bail!("{}\n{}", self.summary(), listed.join("\n"))
        }
    }
}

/// queue id → (offset, body) in read order.
type QueuesOfReplica<'a> = BTreeMap<u32, Vec<(u64, &'a [u8])>>;

/// Runs every check; see the module comment.
pub fn check(attempted: &HashSet<Vec<u8>>, acked: &[AckedSend], replicas: &[ReplicaRead]) -> CheckReport {
    let mut report = CheckReport {
        acked: acked.len(),
        attempted: attempted.len(),
        replicas: replicas.len(),
        ..CheckReport::default()
    };
    assert!(acked.iter().all(|a| attempted.contains(&a.body)), "an acked body was not recorded as attempted");

    // 1. Consistent acks: where the ack named its queue, no two acks share a (queue, offset).
    let mut acked_at: HashMap<(u32, u64), &AckedSend> = HashMap::with_capacity(acked.len());
    for a in acked {
        if let Some(queue_id) = a.queue_id
            && let Some(prev) = acked_at.insert((queue_id, a.offset), a)
            && prev.body != a.body
        {
            report.push(Violation::ConflictingAcks { queue_id, offset: a.offset });
        }
    }

    // 3–5. Per replica.
    let mut per_replica_queues: Vec<QueuesOfReplica<'_>> = Vec::with_capacity(replicas.len());
    // Queue each acked send was found in (on the first replica that has it), for the order check.
    let mut found_queue: HashMap<&[u8], u32> = HashMap::with_capacity(acked.len());
    for replica in replicas {
        let mut queues: BTreeMap<u32, Vec<(u64, &[u8])>> = BTreeMap::new();
        for m in &replica.messages {
            queues.entry(m.queue_id).or_default().push((m.offset, m.body.as_slice()));
        }
        let mut located: HashMap<&[u8], Vec<(u32, u64)>> = HashMap::with_capacity(replica.messages.len());
        for (&queue_id, msgs) in &queues {
            for (i, &(offset, body)) in msgs.iter().enumerate() {
                if i > 0 && msgs[i - 1].0 + 1 != offset {
                    report.push(Violation::ReadOrder {
                        replica: replica.replica.clone(),
                        queue_id,
                        offset_before: msgs[i - 1].0,
                        offset_after: offset,
                    });
                }
                if !attempted.contains(body) {
                    report.push(Violation::NeverSent { replica: replica.replica.clone(), queue_id, offset });
                }
                let places = located.entry(body).or_default();
                if let Some(&(first_queue, first_offset)) = places.first() {
                    report.push(Violation::Duplicate {
                        replica: replica.replica.clone(),
                        first: (first_queue, first_offset),
                        again: (queue_id, offset),
                    });
                }
                places.push((queue_id, offset));
            }
        }
        for a in acked {
            match located.get(a.body.as_slice()).and_then(|p| p.first()) {
                None => report.push(Violation::Missing {
                    replica: replica.replica.clone(),
                    producer: a.producer,
                    seq: a.seq,
                    offset: a.offset,
                }),
                Some(&(queue_id, offset)) => {
                    if offset != a.offset || a.queue_id.is_some_and(|q| q != queue_id) {
                        report.push(Violation::WrongPlace {
                            replica: replica.replica.clone(),
                            acked: (a.queue_id, a.offset),
                            found: (queue_id, offset),
                        });
                    }
                    found_queue.entry(a.body.as_slice()).or_insert(queue_id);
                }
            }
        }
        let acked_count = acked.iter().filter(|a| located.contains_key(a.body.as_slice())).count();
        report.unacked_stored_max = report.unacked_stored_max.max(replica.messages.len().saturating_sub(acked_count));
        report.messages_per_replica.push((replica.replica.clone(), replica.messages.len()));
        per_replica_queues.push(queues);
    }

    // 2. Send order per producer and queue (queue as acked, else as found).
    let mut by_producer_queue: BTreeMap<(u32, u32), Vec<&AckedSend>> = BTreeMap::new();
    for a in acked {
        if let Some(queue_id) = a.queue_id.or_else(|| found_queue.get(a.body.as_slice()).copied()) {
            by_producer_queue.entry((a.producer, queue_id)).or_default().push(a);
        }
    }
    for ((producer, queue_id), mut sends) in by_producer_queue {
        sends.sort_by_key(|a| a.seq);
        for pair in sends.windows(2) {
            if pair[0].offset >= pair[1].offset {
                report.push(Violation::SendOrder {
                    producer,
                    queue_id,
                    seq_earlier: pair[0].seq,
                    seq_later: pair[1].seq,
                });
            }
        }
    }

    // 6. Identical replicas.
    if let Some((first, rest)) = per_replica_queues.split_first() {
        for (i, other) in rest.iter().enumerate() {
            let a_name = &replicas[0].replica;
            let b_name = &replicas[i + 1].replica;
            let queue_ids: BTreeSet<u32> = first.keys().chain(other.keys()).copied().collect();
            for queue_id in queue_ids {
                let empty = Vec::new();
                let a = first.get(&queue_id).unwrap_or(&empty);
                let b = other.get(&queue_id).unwrap_or(&empty);
                if a != b {
                    let diverge = a.iter().zip(b.iter()).position(|(x, y)| x != y);
                    let detail = match diverge {
                        Some(pos) => format!("first difference at read position {pos} (offset {})", a[pos].0),
                        None => format!("lengths {} vs {}", a.len(), b.len()),
                    };
                    report.push(Violation::ReplicasDiffer {
                        replica_a: a_name.clone(),
                        replica_b: b_name.clone(),
                        queue_id,
                        detail,
                    });
                }
            }
        }
    }
    report
}

/// A message body that names its producer, sequence and attempt, padded to `size_bytes`
/// (at least the header). Unique per attempt, so duplicates and strays are detectable.
pub fn make_body(producer: u32, seq: u64, attempt: u32, size_bytes: usize) -> Vec<u8> {
    let mut body = format!("p{producer}-s{seq}-a{attempt};").into_bytes();
    let pad = size_bytes.saturating_sub(body.len());
    body.extend(std::iter::repeat_n(b'.', pad));
    body
}

/// Inverse of `make_body`: (producer, seq, attempt).
pub fn parse_body(body: &[u8]) -> Option<(u32, u64, u32)> {
    let end = body.iter().position(|&b| b == b';')?;
    let head = std::str::from_utf8(&body[..end]).ok()?;
    let mut parts = head.split('-');
    let producer = parts.next()?.strip_prefix('p')?.parse().ok()?;
    let seq = parts.next()?.strip_prefix('s')?.parse().ok()?;
    let attempt = parts.next()?.strip_prefix('a')?.parse().ok()?;
    Some((producer, seq, attempt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(producer: u32, seq: u64, queue_id: u32, offset: u64) -> AckedSend {
        AckedSend { producer, seq, queue_id: Some(queue_id), offset, body: make_body(producer, seq, 0, 0) }
    }

    fn read_of(acks: &[AckedSend]) -> Vec<ReadMessage> {
        let mut v: Vec<ReadMessage> = acks
            .iter()
            .map(|a| ReadMessage { queue_id: a.queue_id.unwrap(), offset: a.offset, body: a.body.clone() })
            .collect();
        v.sort_by_key(|m| (m.queue_id, m.offset));
        v
    }

    fn fixture() -> (HashSet<Vec<u8>>, Vec<AckedSend>) {
        let acks = vec![ack(0, 0, 0, 0), ack(1, 0, 0, 1), ack(0, 1, 0, 2), ack(0, 2, 1, 0), ack(1, 1, 1, 1)];
        let attempted = acks.iter().map(|a| a.body.clone()).collect();
        (attempted, acks)
    }

    fn replicas(messages: Vec<ReadMessage>) -> Vec<ReplicaRead> {
        ["n0", "n1", "n2"].iter().map(|n| ReplicaRead { replica: n.to_string(), messages: messages.clone() }).collect()
    }

    #[test]
    fn clean_run_passes() {
        let (attempted, acks) = fixture();
        let report = check(&attempted, &acks, &replicas(read_of(&acks)));
        assert!(report.is_ok(), "{:?}", report.violations);
        assert_eq!(report.messages_per_replica[2], ("n2".to_string(), 5));
    }

    #[test]
    fn unacked_attempt_stored_once_is_allowed() {
        let (mut attempted, acks) = fixture();
        let stray = make_body(1, 2, 0, 0);
        attempted.insert(stray.clone());
        let mut msgs = read_of(&acks);
        msgs.push(ReadMessage { queue_id: 1, offset: 2, body: stray });
        let report = check(&attempted, &acks, &replicas(msgs));
        assert!(report.is_ok(), "{:?}", report.violations);
        assert_eq!(report.unacked_stored_max, 1);
    }

    #[test]
    fn detects_each_kind_of_violation() {
        let (attempted, acks) = fixture();
        let base = read_of(&acks);

        // Missing on one replica.
        let mut rs = replicas(base.clone());
        rs[1].messages.retain(|m| !(m.queue_id == 0 && m.offset == 2));
        let r = check(&attempted, &acks, &rs);
        assert!(r.violations.contains(&Violation::Missing { replica: "n1".into(), producer: 0, seq: 1, offset: 2 }));
        assert!(r.violations.iter().any(|v| matches!(v, Violation::ReplicasDiffer { .. })));

        // Duplicate (same body twice in a queue) and a never-sent body.
        let mut msgs = base.clone();
        msgs.push(ReadMessage { queue_id: 1, offset: 2, body: acks[3].body.clone() });
        msgs.push(ReadMessage { queue_id: 1, offset: 3, body: b"ghost".to_vec() });
        let r = check(&attempted, &acks, &replicas(msgs));
        assert!(r.violations.iter().any(|v| matches!(v, Violation::Duplicate { first: (1, 0), again: (1, 2), .. })));
        assert!(r.violations.iter().any(|v| matches!(v, Violation::NeverSent { queue_id: 1, offset: 3, .. })));

        // Two acked messages swapped: each is at another offset than acknowledged.
        let mut msgs = base.clone();
        msgs[0].body = acks[1].body.clone();
        msgs[1].body = acks[0].body.clone();
        let r = check(&attempted, &acks, &replicas(msgs));
        assert!(
            r.violations.iter().any(|v| matches!(v, Violation::WrongPlace { acked: (Some(0), 0), found: (0, 1), .. }))
        );

        // Without queue ids in the acks, a message in the wrong queue is still caught by offset.
        let mut unnamed = acks.clone();
        unnamed.iter_mut().for_each(|a| a.queue_id = None);
        assert!(check(&attempted, &unnamed, &replicas(base.clone())).is_ok());
        let mut msgs = base.clone();
        msgs.retain(|m| !(m.queue_id == 1 && m.offset == 1));
        msgs.push(ReadMessage { queue_id: 0, offset: 3, body: acks[4].body.clone() });
        let r = check(&attempted, &unnamed, &replicas(msgs));
        assert!(
            r.violations.iter().any(|v| matches!(v, Violation::WrongPlace { acked: (None, 1), found: (0, 3), .. }))
        );

        // Gap in offsets.
        let mut msgs = base.clone();
        msgs.retain(|m| !(m.queue_id == 0 && m.offset == 1));
        let r = check(&attempted, &acks, &replicas(msgs));
        assert!(r.violations.iter().any(|v| matches!(v, Violation::ReadOrder { queue_id: 0, .. })));

        // Producer 0's later send acked at a lower offset in the same queue.
        let mut bad = acks.clone();
        bad[2].offset = 0;
        bad[0].offset = 2;
        let r = check(&attempted, &bad, &replicas(read_of(&bad)));
        assert!(r.violations.iter().any(|v| matches!(v, Violation::SendOrder { producer: 0, queue_id: 0, .. })));

        // Two acks for one offset.
        let mut bad = acks.clone();
        bad[1].offset = 0;
        let r = check(&attempted, &bad, &replicas(base));
        assert!(r.violations.contains(&Violation::ConflictingAcks { queue_id: 0, offset: 0 }));
        assert!(r.into_result().is_err());
    }

    #[test]
    fn body_roundtrip() {
        let b = make_body(7, 12345, 3, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(parse_body(&b), Some((7, 12345, 3)));
        assert_eq!(parse_body(b"nonsense"), None);
    }
}

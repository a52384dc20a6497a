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
//! 4. on every replica, every acknowledged send is at its (queue, offset) with its body;
//! 5. on every replica, no body appears twice in a queue, and no body was never attempted;
//! 6. all replicas serve identical queues.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Violations listed in full; past this only the count grows (a broken run can be huge).
const VIOLATIONS_LISTED_MAX: usize = 50;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedSend {
    pub producer: u32,
    /// Position in the producer's own send order (acked or not).
    pub seq: u64,
    pub queue_id: u32,
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
    ConflictingAcks { queue_id: u32, offset: u64 },
    SendOrder { producer: u32, queue_id: u32, seq_earlier: u64, seq_later: u64 },
    ReadOrder { replica: String, queue_id: u32, offset_before: u64, offset_after: u64 },
    Missing { replica: String, queue_id: u32, offset: u64 },
    WrongBody { replica: String, queue_id: u32, offset: u64 },
    Duplicate { replica: String, queue_id: u32, first_offset: u64, again_offset: u64 },
    NeverSent { replica: String, queue_id: u32, offset: u64 },
    ReplicasDiffer { replica_a: String, replica_b: String, queue_id: u32, detail: String },
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

/// Runs every check; see the module comment.
pub fn check(attempted: &HashSet<Vec<u8>>, acked: &[AckedSend], replicas: &[ReplicaRead]) -> CheckReport {
    let mut report = CheckReport {
        acked: acked.len(),
        attempted: attempted.len(),
        replicas: replicas.len(),
        ..CheckReport::default()
    };
    assert!(acked.iter().all(|a| attempted.contains(&a.body)), "an acked body was not recorded as attempted");

    // 1. Consistent acks.
    let mut acked_at: HashMap<(u32, u64), &AckedSend> = HashMap::with_capacity(acked.len());
    for a in acked {
        if let Some(prev) = acked_at.insert((a.queue_id, a.offset), a) {
            if prev.body != a.body || prev.producer != a.producer {
                report.push(Violation::ConflictingAcks { queue_id: a.queue_id, offset: a.offset });
            }
        }
    }

    // 2. Send order per producer and queue.
    let mut by_producer_queue: BTreeMap<(u32, u32), Vec<&AckedSend>> = BTreeMap::new();
    for a in acked {
        by_producer_queue.entry((a.producer, a.queue_id)).or_default().push(a);
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

    // 3–5. Per replica.
    let mut per_replica_queues: Vec<BTreeMap<u32, Vec<(u64, &[u8])>>> = Vec::with_capacity(replicas.len());
    for replica in replicas {
        let mut queues: BTreeMap<u32, Vec<(u64, &[u8])>> = BTreeMap::new();
        for m in &replica.messages {
            queues.entry(m.queue_id).or_default().push((m.offset, m.body.as_slice()));
        }
        let mut at: HashMap<(u32, u64), &[u8]> = HashMap::new();
        let mut unacked_stored = 0usize;
        for (&queue_id, msgs) in &queues {
            let mut seen: HashMap<&[u8], u64> = HashMap::with_capacity(msgs.len());
            for (i, &(offset, body)) in msgs.iter().enumerate() {
                if i > 0 && msgs[i - 1].0 + 1 != offset {
                    report.push(Violation::ReadOrder {
                        replica: replica.replica.clone(),
                        queue_id,
                        offset_before: msgs[i - 1].0,
                        offset_after: offset,
                    });
                }
                if let Some(&first_offset) = seen.get(body) {
                    report.push(Violation::Duplicate {
                        replica: replica.replica.clone(),
                        queue_id,
                        first_offset,
                        again_offset: offset,
                    });
                } else {
                    seen.insert(body, offset);
                }
                if !attempted.contains(body) {
                    report.push(Violation::NeverSent { replica: replica.replica.clone(), queue_id, offset });
                }
                at.insert((queue_id, offset), body);
            }
            let acked_in_queue = acked.iter().filter(|a| a.queue_id == queue_id).count();
            unacked_stored += msgs.len().saturating_sub(acked_in_queue);
        }
        for a in acked {
            match at.get(&(a.queue_id, a.offset)) {
                None => report.push(Violation::Missing {
                    replica: replica.replica.clone(),
                    queue_id: a.queue_id,
                    offset: a.offset,
                }),
                Some(body) if *body != a.body.as_slice() => report.push(Violation::WrongBody {
                    replica: replica.replica.clone(),
                    queue_id: a.queue_id,
                    offset: a.offset,
                }),
                Some(_) => {}
            }
        }
        report.unacked_stored_max = report.unacked_stored_max.max(unacked_stored);
        report.messages_per_replica.push((replica.replica.clone(), replica.messages.len()));
        per_replica_queues.push(queues);
    }

    // 6. Identical replicas.
    if let Some((first, rest)) = per_replica_queues.split_first() {
        for (i, other) in rest.iter().enumerate() {
            let a_name = &replicas[0].replica;
            let b_name = &replicas[i + 1].replica;
            let queue_ids: HashSet<u32> = first.keys().chain(other.keys()).copied().collect();
            let mut queue_ids: Vec<u32> = queue_ids.into_iter().collect();
            queue_ids.sort_unstable();
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
        AckedSend { producer, seq, queue_id, offset, body: make_body(producer, seq, 0, 0) }
    }

    fn read_of(acks: &[AckedSend]) -> Vec<ReadMessage> {
        let mut v: Vec<ReadMessage> = acks
            .iter()
            .map(|a| ReadMessage { queue_id: a.queue_id, offset: a.offset, body: a.body.clone() })
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
        ["n0", "n1", "n2"]
            .iter()
            .map(|n| ReplicaRead { replica: n.to_string(), messages: messages.clone() })
            .collect()
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
        assert!(r.violations.contains(&Violation::Missing { replica: "n1".into(), queue_id: 0, offset: 2 }));
        assert!(r.violations.iter().any(|v| matches!(v, Violation::ReplicasDiffer { .. })));

        // Duplicate (same body twice in a queue) and a never-sent body.
        let mut msgs = base.clone();
        msgs.push(ReadMessage { queue_id: 1, offset: 2, body: acks[3].body.clone() });
        msgs.push(ReadMessage { queue_id: 1, offset: 3, body: b"ghost".to_vec() });
        let r = check(&attempted, &acks, &replicas(msgs));
        assert!(r.violations.iter().any(|v| matches!(v, Violation::Duplicate { queue_id: 1, .. })));
        assert!(r.violations.iter().any(|v| matches!(v, Violation::NeverSent { queue_id: 1, offset: 3, .. })));

        // Wrong body at an acked offset.
        let mut msgs = base.clone();
        msgs[0].body = acks[1].body.clone();
        let r = check(&attempted, &acks, &replicas(msgs));
        assert!(r.violations.iter().any(|v| matches!(v, Violation::WrongBody { queue_id: 0, offset: 0, .. })));

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

//! Safety checker fed by the simulation after every simulated millisecond.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::{MemLog, NodeId, RaftLog, RaftNode, Role};

/// Global record of what was ever committed, and the checks against it. Every violation
/// panics with a description (the simulation adds the seed).
#[derive(Debug, Default)]
pub struct Checker {
    leaders_by_term: HashMap<u64, NodeId>,
    /// Entry `i+1` as first observed committed: (term, data).
    committed: Vec<(u64, Bytes)>,
    /// Current term of the node that first observed entry `i+1` committed: the term of the
    /// leader that committed it (followers learn of commits strictly later).
    commit_term: Vec<u64>,
    /// Per node (index `id-1`): commit index already checked.
    checked: Vec<u64>,
    /// Acknowledged proposals: (index, payload).
    acked: Vec<(u64, Bytes)>,
    pub elections: u64,
}

impl Checker {
    pub fn new(node_count: usize) -> Self {
        Checker { checked: vec![0; node_count], ..Default::default() }
    }

    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    pub fn acked_len(&self) -> usize {
        self.acked.len()
    }

    pub fn committed_entry(&self, index: u64) -> Option<&(u64, Bytes)> {
        index.checked_sub(1).and_then(|i| self.committed.get(i as usize))
    }

    /// A node restarted: its volatile commit index starts over.
    pub fn on_restart(&mut self, id: NodeId, commit: u64) {
        let slot = &mut self.checked[id as usize - 1];
        *slot = (*slot).min(commit);
    }

    /// At most one leader per term; a new leader holds every entry committed in an earlier
    /// term (Leader Completeness).
    pub fn observe(&mut self, id: NodeId, node: &RaftNode<MemLog>) {
        if node.role() == Role::Leader {
            let term = node.term();
            match self.leaders_by_term.get(&term) {
                Some(&l) => assert_eq!(l, id, "two leaders in term {term}: {l} and {id}"),
                None => {
                    self.leaders_by_term.insert(term, id);
                    self.elections += 1;
                    for (i, (t, data)) in self.committed.iter().enumerate() {
                        if self.commit_term[i] >= term {
                            continue;
                        }
                        let e = node
                            .log()
                            .entry(i as u64 + 1)
                            .unwrap_or_else(|| panic!("leader {id} of term {term} lacks committed entry {}", i + 1));
                        assert!(
                            e.term == *t && e.data == *data,
                            "leader {id} of term {term} has a different entry at committed index {}",
                            i + 1
                        );
                    }
                }
            }
        }
        self.observe_commit(id, node);
    }

    /// State machine safety: what a node considers committed equals what anyone ever
    /// considered committed at that index.
    fn observe_commit(&mut self, id: NodeId, node: &RaftNode<MemLog>) {
        let commit = node.commit_index();
        let slot = id as usize - 1;
        for index in self.checked[slot] + 1..=commit {
            let e = node.log().entry(index).unwrap_or_else(|| panic!("node {id} commit {commit} but no entry {index}"));
            match self.committed_entry(index) {
                Some((t, data)) => assert!(
                    *t == e.term && *data == e.data,
                    "node {id} committed a different entry at {index} (term {} vs {t})",
                    e.term
                ),
                None => {
                    assert_eq!(index, self.committed.len() as u64 + 1, "commit gap at node {id}");
                    self.committed.push((e.term, e.data.clone()));
                    self.commit_term.push(node.term());
                }
            }
        }
        self.checked[slot] = self.checked[slot].max(commit);
    }

    /// A proposal was acknowledged to its client at `index`.
    pub fn on_ack(&mut self, index: u64, data: Bytes) {
        let (_, committed) = self
            .committed_entry(index)
            .unwrap_or_else(|| panic!("acknowledged entry {index} is not globally committed"));
        assert_eq!(*committed, data, "acknowledged payload differs from committed entry {index}");
        self.acked.push((index, data));
    }

    /// Log matching: if two logs hold an entry with the same index and term, they are
    /// identical up to it.
    pub fn check_log_matching(&self, logs: &[(NodeId, &MemLog)]) {
        for (ai, (a, la)) in logs.iter().enumerate() {
            for (b, lb) in &logs[ai + 1..] {
                let n = la.last_index().min(lb.last_index());
                let Some(top) = (1..=n).rev().find(|&i| la.entry(i).unwrap().term == lb.entry(i).unwrap().term) else {
                    continue;
                };
                for i in 1..=top {
                    assert_eq!(la.entry(i), lb.entry(i), "log matching violated between {a} and {b} at {i} (<= {top})");
                }
            }
        }
    }

    /// End of run: every acknowledged proposal is committed exactly once, no payload is
    /// committed twice, and every node's log holds the whole committed prefix.
    pub fn check_final(&self, logs: &[(NodeId, &MemLog)], commits: &[(NodeId, u64)]) {
        let mut seen = HashSet::new();
        for (i, (_, data)) in self.committed.iter().enumerate() {
            if !data.is_empty() {
                assert!(seen.insert(data.clone()), "payload committed twice (second at {})", i + 1);
            }
        }
        for (index, data) in &self.acked {
            assert_eq!(&self.committed[*index as usize - 1].1, data, "acked entry {index} changed");
        }
        for &(id, commit) in commits {
            assert!(
                commit >= self.committed.len() as u64,
                "node {id} commit {commit} below global committed {}",
                self.committed.len()
            );
        }
        for (id, log) in logs {
            for (i, (t, data)) in self.committed.iter().enumerate() {
                let e = log.entry(i as u64 + 1).unwrap_or_else(|| panic!("node {id} lost committed entry {}", i + 1));
                assert!(e.term == *t && e.data == *data, "node {id} changed committed entry {}", i + 1);
            }
        }
    }
}

//! Do the nodes' commitlogs agree enough to become one Raft group?
//!
//! Each node reports its byte span `[min-offset, max-offset)`, its last entry (index, term,
//! CRC32C) and CRC32C checksums over byte ranges. Two logs are compatible when one is a
//! prefix of the other: identical ranges have identical checksums, and the shorter log's
//! last entry can sit inside the longer one.

use std::collections::{HashMap, HashSet};

use wasmq_plugin_sdk::upgrade_validator::{Finding, NodeSummary, RangeChecksum, Severity};

use crate::finding;

/// Bounds the work per call: pairs are quadratic in nodes.
pub const NODES_MAX: usize = 64;
pub const RANGES_PER_NODE_MAX: usize = 100_000;

fn name(n: &NodeSummary) -> String {
    format!("{} ({})", n.node_id, n.address)
}

/// Appends findings about the group's commitlogs; errors refuse the change.
pub fn check_nodes(nodes: &[NodeSummary], findings: &mut Vec<Finding>) {
    if nodes.is_empty() {
        findings.push(finding(Severity::Error, "no-nodes", "enable-replication names no nodes".into()));
        return;
    }
    if nodes.len() > NODES_MAX {
        findings.push(finding(Severity::Error, "too-many-nodes", format!("{} nodes, at most {NODES_MAX}", nodes.len())));
        return;
    }
    if nodes.len() < 3 {
        findings.push(finding(
            Severity::Warning,
            "small-group",
            format!("{} node(s): a Raft group needs 3 to survive the loss of one", nodes.len()),
        ));
    }
    let mut ids = HashSet::new();
    let mut sane = true;
    for n in nodes {
        if !ids.insert(n.node_id.as_str()) {
            findings.push(finding(Severity::Error, "duplicate-node", format!("node id {} appears twice", n.node_id)));
            sane = false;
        }
        if n.replicated {
            findings.push(finding(Severity::Warning, "already-replicated", format!("node {} is already replicated", name(n))));
        }
        sane &= check_summary(n, findings);
    }
    if !sane {
        return;
    }
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            check_pair(a, b, findings);
        }
    }
}

/// A summary that contradicts itself is an error: nothing derived from it can be trusted.
fn check_summary(n: &NodeSummary, findings: &mut Vec<Finding>) -> bool {
    let mut bad = |text: String| findings.push(finding(Severity::Error, "bad-node-summary", format!("node {}: {text}", name(n))));
    if n.min_offset > n.max_offset {
        bad(format!("min-offset {} > max-offset {}", n.min_offset, n.max_offset));
        return false;
    }
    if n.checksums.len() > RANGES_PER_NODE_MAX {
        bad(format!("{} checksum ranges, at most {RANGES_PER_NODE_MAX}", n.checksums.len()));
        return false;
    }
    for r in &n.checksums {
        if r.start >= r.end || r.start < n.min_offset || r.end > n.max_offset {
            bad(format!("checksum range [{}, {}) is empty or outside [{}, {})", r.start, r.end, n.min_offset, n.max_offset));
            return false;
        }
    }
    true
}

fn check_pair(a: &NodeSummary, b: &NodeSummary, findings: &mut Vec<Finding>) {
    let by_range: HashMap<(u64, u64), u32> = b.checksums.iter().map(|r| ((r.start, r.end), r.crc32c)).collect();
    let mut common: Vec<(&RangeChecksum, u32)> =
        a.checksums.iter().filter_map(|r| by_range.get(&(r.start, r.end)).map(|&crc| (r, crc))).collect();
    common.sort_by_key(|(r, _)| (r.start, r.end));

    // The first differing range is where the logs diverge (at or after its start).
    let first_mismatch = common.iter().find(|(r, crc_b)| r.crc32c != *crc_b);
    if let Some((r, crc_b)) = first_mismatch {
        findings.push(finding(
            Severity::Error,
            "commitlog-divergence",
            format!(
                "nodes {} and {} diverge at commitlog offset {}: CRC32C over [{}, {}) is {:08x} on {} and {:08x} on {}",
                a.node_id, b.node_id, r.start, r.start, r.end, r.crc32c, a.node_id, crc_b, b.node_id
            ),
        ));
    }

    // Bytes both nodes hold, and how much of them matching ranges vouch for.
    let shared_start = a.min_offset.max(b.min_offset);
    let shared_end = a.max_offset.min(b.max_offset);
    if first_mismatch.is_none() && shared_end > shared_start {
        let verified = verified_bytes(common.iter().map(|(r, _)| (r.start, r.end)), shared_start, shared_end);
        let shared = shared_end - shared_start;
        if verified < shared {
            findings.push(finding(
                Severity::Warning,
                "divergence-unchecked",
                format!(
                    "nodes {} and {} share commitlog bytes [{shared_start}, {shared_end}) but matching checksums cover only {verified} of {shared} bytes",
                    a.node_id, b.node_id
                ),
            ));
        }
    }

    let (short, long) = if (a.last_index, a.max_offset) <= (b.last_index, b.max_offset) { (a, b) } else { (b, a) };
    if short.last_index == 0 {
        return; // An empty log is a prefix of every log.
    }
    let diverge_after = common
        .iter()
        .take_while(|(r, crc)| r.crc32c == *crc)
        .map(|(r, _)| r.end)
        .max()
        .unwrap_or(shared_start);
    if short.last_index == long.last_index {
        if short.last_term != long.last_term || short.last_entry_crc32c != long.last_entry_crc32c || short.max_offset != long.max_offset {
            findings.push(finding(
                Severity::Error,
                "last-entry-mismatch",
                format!(
                    "nodes {} and {} both end at entry {} but the entries differ (term {} vs {}, CRC32C {:08x} vs {:08x}, end offset {} vs {}); they diverge between commitlog offsets {} and {}",
                    short.node_id,
                    long.node_id,
                    short.last_index,
                    short.last_term,
                    long.last_term,
                    short.last_entry_crc32c,
                    long.last_entry_crc32c,
                    short.max_offset,
                    long.max_offset,
                    diverge_after.min(short.max_offset),
                    short.max_offset.min(long.max_offset),
                ),
            ));
        }
        return;
    }
    assert!(short.last_index < long.last_index);
    if short.last_term > long.last_term {
        findings.push(finding(
            Severity::Error,
            "not-a-prefix",
            format!(
                "node {}'s last entry {} has term {}, later than node {}'s last term {}: {} holds entries {} never had; they diverge after commitlog offset {}",
                short.node_id, short.last_index, short.last_term, long.node_id, long.last_term, short.node_id, long.node_id, diverge_after
            ),
        ));
    } else if short.max_offset > long.max_offset {
        findings.push(finding(
            Severity::Error,
            "not-a-prefix",
            format!(
                "node {} has fewer entries ({}) than node {} ({}) but more bytes ({} > {}); they diverge after commitlog offset {}",
                short.node_id, short.last_index, long.node_id, long.last_index, short.max_offset, long.max_offset, diverge_after
            ),
        ));
    }
}

/// Bytes of `[start, end)` covered by the union of `ranges`.
fn verified_bytes(ranges: impl Iterator<Item = (u64, u64)>, start: u64, end: u64) -> u64 {
    let mut clipped: Vec<(u64, u64)> =
        ranges.map(|(s, e)| (s.max(start), e.min(end))).filter(|(s, e)| s < e).collect();
    clipped.sort_unstable();
    let mut covered = 0;
    let mut reached = start;
    for (s, e) in clipped {
        let s = s.max(reached);
        if e > s {
            covered += e - s;
            reached = e;
        }
    }
    assert!(covered <= end - start);
    covered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, max_offset: u64, last: (u64, u64, u32), ranges: &[(u64, u64, u32)]) -> NodeSummary {
        NodeSummary {
            node_id: id.into(),
            address: format!("127.0.0.1:{}", 40000 + id.len()),
            replicated: false,
            min_offset: 0,
            max_offset,
            last_index: last.0,
            last_term: last.1,
            last_entry_crc32c: last.2,
            checksums: ranges.iter().map(|&(start, end, crc32c)| RangeChecksum { start, end, crc32c }).collect(),
        }
    }

    fn run(nodes: &[NodeSummary]) -> Vec<Finding> {
        let mut f = Vec::new();
        check_nodes(nodes, &mut f);
        f
    }

    fn codes(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.code.as_str()).collect()
    }

    fn errors(f: &[Finding]) -> Vec<&Finding> {
        f.iter().filter(|f| f.severity == Severity::Error).collect()
    }

    #[test]
    fn identical_logs_and_prefixes_pass() {
        let full = [(0, 100, 1), (100, 200, 2)];
        let n1 = node("n1", 200, (20, 1, 7), &full);
        let n2 = node("n2", 200, (20, 1, 7), &full);
        let n3 = node("n3", 100, (10, 1, 5), &full[..1]); // a prefix of the others
        let f = run(&[n1, n2, n3]);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn different_checksums_name_nodes_and_offset() {
        let n1 = node("n1", 300, (30, 1, 7), &[(0, 100, 1), (100, 200, 2), (200, 300, 3)]);
        let n2 = node("n2", 300, (30, 1, 7), &[(0, 100, 1), (100, 200, 9), (200, 300, 8)]);
        let n3 = node("n3", 300, (30, 1, 7), &[(0, 100, 1), (100, 200, 2), (200, 300, 3)]);
        let f = run(&[n1, n2, n3]);
        let e = errors(&f);
        assert_eq!(e.len(), 2, "{f:?}"); // n1-n2 and n2-n3
        assert!(e.iter().all(|f| f.code == "commitlog-divergence"));
        assert!(e[0].text.contains("nodes n1 and n2 diverge at commitlog offset 100"), "{}", e[0].text);
        assert!(e[1].text.contains("nodes n2 and n3 diverge at commitlog offset 100"), "{}", e[1].text);
    }

    #[test]
    fn same_last_index_different_entry_is_refused() {
        let n1 = node("n1", 200, (20, 2, 7), &[(0, 100, 1)]);
        let n2 = node("n2", 200, (20, 3, 8), &[(0, 100, 1)]);
        let n3 = node("n3", 200, (20, 2, 7), &[(0, 100, 1)]);
        let f = run(&[n1, n2, n3]);
        let e = errors(&f);
        assert_eq!(codes(&e.iter().map(|f| (*f).clone()).collect::<Vec<_>>()), ["last-entry-mismatch", "last-entry-mismatch"]);
        assert!(e[0].text.contains("n1") && e[0].text.contains("n2") && e[0].text.contains("between commitlog offsets 100 and 200"), "{}", e[0].text);
    }

    #[test]
    fn shorter_log_with_later_term_or_more_bytes_is_not_a_prefix() {
        let long = node("long", 300, (30, 2, 7), &[(0, 100, 1)]);
        let later_term = node("lt", 100, (10, 3, 5), &[(0, 100, 1)]);
        let f = run(&[long.clone(), later_term]);
        assert_eq!(codes(&errors(&f).into_iter().cloned().collect::<Vec<_>>()), ["not-a-prefix"]);
        assert!(errors(&f)[0].text.contains("term 3"));
        let more_bytes = node("mb", 400, (10, 1, 5), &[(0, 100, 1)]);
        let f = run(&[long, more_bytes]);
        assert_eq!(codes(&errors(&f).into_iter().cloned().collect::<Vec<_>>()), ["not-a-prefix"]);
        assert!(errors(&f)[0].text.contains("400 > 300"));
    }

    #[test]
    fn unverified_shared_bytes_warn() {
        let n1 = node("n1", 200, (20, 1, 7), &[(0, 100, 1)]);
        let n2 = node("n2", 200, (20, 1, 7), &[(0, 50, 1)]);
        let n3 = node("n3", 200, (20, 1, 7), &[(0, 100, 1), (100, 200, 2)]);
        let f = run(&[n1, n2, n3]);
        assert!(errors(&f).is_empty(), "{f:?}");
        assert_eq!(codes(&f), ["divergence-unchecked"; 3]);
        assert!(f[0].text.contains("nodes n1 and n2") && f[0].text.contains("cover only 0 of 200"), "{}", f[0].text);
        assert!(f[1].text.contains("nodes n1 and n3") && f[1].text.contains("cover only 100 of 200"), "{}", f[1].text);
    }

    #[test]
    fn bad_input_is_an_error_and_small_groups_warn() {
        let f = run(&[]);
        assert_eq!(codes(&f), ["no-nodes"]);
        let mut bad = node("n1", 100, (1, 1, 1), &[(50, 150, 1)]);
        let f = run(&[bad.clone(), node("n2", 100, (1, 1, 1), &[])]);
        assert_eq!(codes(&f), ["small-group", "bad-node-summary"]);
        bad.checksums.clear();
        let f = run(&[bad.clone(), bad.clone(), node("n3", 100, (1, 1, 1), &[])]);
        assert!(codes(&f).contains(&"duplicate-node"));
    }

    #[test]
    fn verified_bytes_unions_overlaps() {
        assert_eq!(verified_bytes([(0, 10), (5, 20), (30, 40)].into_iter(), 0, 35), 25);
        assert_eq!(verified_bytes([].into_iter(), 0, 35), 0);
        assert_eq!(verified_bytes([(0, 100)].into_iter(), 10, 20), 10);
    }
}

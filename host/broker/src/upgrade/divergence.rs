//! Where do two commitlogs stop agreeing?
//!
//! Every node's log is cut into byte ranges on one grid taken from the reference log (the
//! chosen source): a boundary every `stride` entries of the reference (1 for logs of up to
//! about [`RANGES_PER_NODE_MAX`] entries, so a plugin can name the diverging entry's offset),
//! plus every node's own start and end. Each node gets a CRC32C (chained over full frames) of its entries starting
//! in each range it fully holds. Equal ranges with equal checksums vouch for those bytes;
//! the upgrade-validator plugins get the same ranges in `node-summary.checksums`.
//!
//! The first differing range is found by bisection over prefix checksums (the checksum of
//! all common ranges up to one, chained: once two prefixes differ, every longer prefix
//! differs), then the entries of that range are compared one by one.

use super::log_scan::{EntryInfo, LogExtent, LogScan, ScanError};

/// Ranges per node: bounds memory, plugin input (the example validator accepts 100 000)
/// and output size.
pub const RANGES_PER_NODE_MAX: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RangeCrc {
    pub start: u64,
    pub end: u64,
    pub crc32c: u32,
}

/// Range boundaries (commitlog positions), sorted, deduplicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    pub bounds: Vec<u64>,
}

/// Builds the grid from the reference log and every node's extent.
pub fn grid(reference: &LogScan, reference_extent: &LogExtent, extents: &[&LogExtent]) -> Result<Grid, ScanError> {
    let reserved = 2 * extents.len() + 2;
    let ranges_by_stride = (RANGES_PER_NODE_MAX - reserved.min(RANGES_PER_NODE_MAX / 2)) as u64;
    let stride = reference_extent.entries.div_ceil(ranges_by_stride).max(1);
    let mut bounds = vec![reference_extent.min_pos, reference_extent.max_pos];
    for e in extents {
        bounds.push(e.min_pos);
        bounds.push(e.max_pos);
    }
    let first = reference_extent.first_index;
    reference.scan(|entry| {
        if (entry.index - first).is_multiple_of(stride) {
            bounds.push(entry.pos);
        }
        true
    })?;
    bounds.sort_unstable();
    bounds.dedup();
    assert!(bounds.len() <= RANGES_PER_NODE_MAX + 1 + reserved, "grid too fine: {}", bounds.len());
    Ok(Grid { bounds })
}

/// A node's checksums over the grid ranges it fully holds (`[start, end)` inside its
/// `[min_pos, max_pos)`).
pub fn range_checksums(scan: &LogScan, extent: &LogExtent, grid: &Grid) -> Result<Vec<RangeCrc>, ScanError> {
    let ranges: Vec<(u64, u64)> = grid
        .bounds
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|&(s, e)| s < e && s >= extent.min_pos && e <= extent.max_pos)
        .collect();
    let mut out: Vec<RangeCrc> = ranges.iter().map(|&(start, end)| RangeCrc { start, end, crc32c: 0 }).collect();
    if out.is_empty() {
        return Ok(out);
    }
    let mut at = 0usize;
    scan.scan(|entry| {
        while at < out.len() && entry.pos >= out[at].end {
            at += 1;
        }
        if at == out.len() {
            return false;
        }
        if entry.pos >= out[at].start {
            let crc = frame_crc_bytes(entry);
            out[at].crc32c = crc32c::crc32c_append(out[at].crc32c, &crc);
        }
        true
    })?;
    Ok(out)
}

/// Ranges are chained from per-entry frame CRCs (4 bytes each, little-endian): cheaper than
/// re-reading frames, and just as sensitive (a frame CRC covers index, term, pos and body).
fn frame_crc_bytes(entry: &EntryInfo) -> [u8; 4] {
    entry.frame_crc.to_le_bytes()
}

/// Where two logs first differ.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Divergence {
    /// First entry index at which the logs hold different entries.
    pub index: u64,
    /// Commitlog position of that entry (on the reference log).
    pub pos: u64,
    /// Term and frame CRC of the entry on the reference (None: the reference has no entry).
    pub reference_entry: Option<(u64, u32)>,
    /// Term and frame CRC of the entry on the other node.
    pub node_entry: Option<(u64, u32)>,
}

/// First differing entry between `reference` and `node`, or `None` when one is a prefix of
/// the other over the entries both hold.
pub fn find(
    reference: (&LogScan, &[RangeCrc]),
    node: (&LogScan, &[RangeCrc]),
) -> Result<Option<Divergence>, ScanError> {
    let (ref_scan, ref_ranges) = reference;
    let (node_scan, node_ranges) = node;
    // Ranges both hold, in order.
    let by_span: std::collections::HashMap<(u64, u64), RangeCrc> =
        node_ranges.iter().map(|n| ((n.start, n.end), *n)).collect();
    let common: Vec<(RangeCrc, RangeCrc)> =
        ref_ranges.iter().filter_map(|r| by_span.get(&(r.start, r.end)).map(|n| (*r, *n))).collect();
    assert!(common.windows(2).all(|w| w[0].0.end <= w[1].0.start), "grid ranges are disjoint and ordered");
    let mut prefix_ref = Vec::with_capacity(common.len());
    let mut prefix_node = Vec::with_capacity(common.len());
    let (mut a, mut b) = (0u32, 0u32);
    for (r, n) in &common {
        a = crc32c::crc32c_append(a, &r.crc32c.to_le_bytes());
        b = crc32c::crc32c_append(b, &n.crc32c.to_le_bytes());
        prefix_ref.push(a);
        prefix_node.push(b);
    }
    // Bisection: smallest i with differing prefixes.
    let (mut lo, mut hi) = (0usize, common.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if prefix_ref[mid] != prefix_node[mid] {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let start = if lo < common.len() {
        common[lo].0.start
    } else {
        // All common ranges agree: the logs can still differ after the last one (a node whose
        // end is not a range boundary of the other, e.g. after padding).
        common.last().map(|(r, _)| r.end).unwrap_or(0)
    };
    compare_from(ref_scan, node_scan, start)
}

/// Walks both logs entry by entry from `pos` (an entry position on both, or the end of one).
fn compare_from(reference: &LogScan, node: &LogScan, mut pos: u64) -> Result<Option<Divergence>, ScanError> {
    // Bounded: one iteration per entry of the shorter log from `pos`.
    loop {
        let r = entry_at_or_after_padding(reference, pos)?;
        let n = entry_at_or_after_padding(node, pos)?;
        match (r, n) {
            (None, _) | (_, None) => {
                // One log ends here. Not a divergence when the other has nothing *different*
                // at this point (a prefix); a divergence when both continue differently is
                // caught above.
                return Ok(None);
            }
            (Some(r), Some(n)) => {
                if r.frame_crc != n.frame_crc || r.pos != n.pos {
                    return Ok(Some(Divergence {
                        index: r.index.min(n.index),
                        pos: r.pos.min(n.pos),
                        reference_entry: Some((r.term, r.frame_crc)),
                        node_entry: Some((n.term, n.frame_crc)),
                    }));
                }
                pos = r.end_pos();
            }
        }
    }
}

fn entry_at_or_after_padding(scan: &LogScan, pos: u64) -> Result<Option<EntryInfo>, ScanError> {
    match scan.entry_at(pos)? {
        Some(e) => Ok(Some(e)),
        None => {
            let next = scan.next_entry_pos(pos)?;
            if next == pos { Ok(None) } else { scan.entry_at(next) }
        }
    }
}

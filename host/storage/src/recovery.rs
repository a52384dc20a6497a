//! Commitlog recovery on open.
//!
//! Only the tail is scanned: the checkpoint written by `flush` names an entry that was
//! durable when it was written, so everything up to it is trusted (its index slot and frame
//! are re-verified). From there entries are validated one by one (magic, header CRC, position,
//! contiguous index, non-decreasing term, body CRC); the first failure is the end of the log.
//! Everything after it (torn or stale frames, padding, later segments, index slots) is erased
//! so no stale frame can ever be taken for a successor of the new last entry.
//!
//! Without a usable checkpoint the scan starts at the first entry of the newest segment whose
//! first entry verifies; if the index file does not agree with the entries at the start, the
//! whole log is scanned and the index rebuilt.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::commitlog::{Bounds, CommitLogConfig, LogCheckpoint, Segments};
use crate::error::{IoContext, Result, corrupt};
use crate::frame::{self, EntryHeader, Frame, HEADER_SIZE};
use crate::index_file::{IndexEntry, IndexFile};
use crate::mapped_file::{self, MappedFile};

/// What `CommitLog::open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub first_index: u64,
    pub last_index: u64,
    pub last_term: u64,
    pub end_pos: u64,
    /// The scan started at the flush checkpoint (the normal case).
    pub started_from_checkpoint: bool,
    /// The index file disagreed with the log, so the whole log was scanned.
    pub full_scan: bool,
    pub scanned_entries: u64,
    pub scanned_bytes: u64,
    /// Index slots rewritten because they were missing or wrong.
    pub repaired_index_slots: u64,
    /// Segment files removed because they held nothing valid.
    pub removed_segments: Vec<u64>,
    /// Why the scan stopped where it did, when it was not clean zero space.
    pub tail_problem: Option<String>,
    pub duration: Duration,
}

/// The last entry known good so far.
#[derive(Debug, Clone, Copy)]
struct Last {
    index: u64,
    term: u64,
    pos: u64,
    size: u64,
}

const PADDING: &str = "padding";

enum Probe {
    Entry(EntryHeader),
    Empty,
    Padding,
    Bad(String),
}

struct Scanner<'a> {
    cfg: &'a CommitLogConfig,
    segments: &'a Segments,
}

impl Scanner<'_> {
    fn seg_size(&self) -> u64 {
        self.cfg.segment_size_bytes
    }

    /// Frame at `pos`, fully verified, or why not.
    fn probe(&self, pos: u64) -> Probe {
        match self.verified_entry(pos) {
            Ok(Some(h)) => Probe::Entry(h),
            Ok(None) => Probe::Empty,
            Err(why) if why == PADDING => Probe::Padding,
            Err(why) => Probe::Bad(why),
        }
    }

    fn verified_entry(&self, pos: u64) -> std::result::Result<Option<EntryHeader>, String> {
        let seg = self.seg_size();
        let base = pos - pos % seg;
        let off = (pos % seg) as usize;
        let Some(file) = self.segments.get(&base) else { return Ok(None) };
        let avail = (seg as usize - off).min(HEADER_SIZE);
        if avail < 4 {
            return Err("segment end".into());
        }
        // SAFETY: recovery runs before the log is shared.
        let bytes = unsafe { file.slice(off, avail) };
        let header = match frame::decode_frame(bytes, || format!("pos {pos}")) {
            Ok(Frame::Entry(h)) => h,
            Ok(Frame::Empty) => return Ok(None),
            Ok(Frame::Blank) => return Err(PADDING.into()),
            Err(err) => return Err(err.to_string()),
        };
        if header.pos != pos {
            return Err(format!("frame at pos {pos} says pos {}", header.pos));
        }
        if off + header.total_size as usize > seg as usize || header.body_len() > self.cfg.entry_size_max_bytes as usize
        {
            return Err(format!("frame at pos {pos} has impossible size {}", header.total_size));
        }
        // SAFETY: as above; size checked.
        let body = unsafe { file.slice(off + HEADER_SIZE, header.body_len()) };
        frame::verify_body(&header, body, || format!("pos {pos}")).map_err(|e| e.to_string())?;
        Ok(Some(header))
    }
}

pub(crate) fn recover(
    cfg: &CommitLogConfig,
    seg_dir: &Path,
    index: &IndexFile,
    checkpoint: Option<LogCheckpoint>,
) -> Result<(Segments, Bounds, RecoveryReport)> {
    let started = Instant::now();
    let seg = cfg.segment_size_bytes;
    let mut report = RecoveryReport::default();

    let listed = mapped_file::list_numbered_files(seg_dir)?;
    let mut segments: Segments = BTreeMap::new();
    let count = listed.len();
    for (i, (base, path)) in listed.into_iter().enumerate() {
        if base % seg != 0 {
            return Err(corrupt(
                path.display().to_string(),
                format!("segment base not a multiple of segment size {seg}"),
            ));
        }
        if let Some((prev, _)) = segments.last_key_value()
            && prev + seg != base
        {
            return Err(corrupt(path.display().to_string(), format!("gap after segment {prev}")));
        }
        // Only the newest segment may be short (a crash while it was being created).
        segments.insert(base, Arc::new(MappedFile::open(&path, seg, i + 1 == count)?));
    }

    // Where the retained log starts.
    let (mut prev_index, mut prev_term, mut min_pos) = match checkpoint {
        Some(cp) => (cp.prev_index, cp.prev_term, cp.min_pos),
        None => (0, 0, 0),
    };
    let ends = segments.first_key_value().map(|(k, _)| *k).zip(segments.last_key_value().map(|(k, _)| *k));
    if let Some((first_base, last_base)) = ends {
        // Segments below the checkpointed start: retention wrote its checkpoint and crashed
        // before deleting them.
        while let Some((&base, _)) = segments.first_key_value() {
            if base + seg <= min_pos && base < last_base {
                let file = segments.remove(&base).expect("present");
                std::fs::remove_file(file.path()).at(file.path())?;
                report.removed_segments.push(base);
            } else {
                break;
            }
        }
        let first_base_now = *segments.first_key_value().expect("kept last").0;
        if checkpoint.is_none() || min_pos < first_base_now || min_pos >= first_base_now + seg {
            // No trustworthy start: derive it from the first segment's first entry.
            min_pos = first_base_now;
            let scanner = Scanner { cfg, segments: &segments };
            match scanner.verified_entry(min_pos) {
                Ok(Some(h)) => {
                    prev_index = h.index - 1;
                    if checkpoint.is_none_or(|cp| cp.prev_index != prev_index) {
                        prev_term = if prev_index == 0 { 0 } else { h.term };
                        if prev_index > 0 {
                            tracing::warn!(
                                prev_index,
                                "term of the entry before the log start is unknown; using the first entry's term"
                            );
                        }
                    }
                }
                _ => {
                    if checkpoint.is_none() && first_base != 0 {
                        tracing::warn!(first_base, "first segment has no valid first entry and no checkpoint");
                    }
                }
            }
        }
    }

    let scanner = Scanner { cfg, segments: &segments };
    let first_index = prev_index + 1;
    let empty_last = Last { index: prev_index, term: prev_term, pos: min_pos, size: 0 };

    // Pick the scan start.
    let mut start: Option<(u64, Last)> = None; // (next pos, last good entry)
    if let Some(cp) = checkpoint
        && cp.flushed_index >= first_index
        && cp.flushed_pos >= min_pos
        && let Ok(Some(h)) = scanner.verified_entry(cp.flushed_pos)
        && h.index == cp.flushed_index
        && h.term == cp.flushed_term
        && index_agrees(index, h.index, &h)
    {
        let last = Last { index: h.index, term: h.term, pos: h.pos, size: h.total_size as u64 };
        start = Some((h.pos + h.total_size as u64, last));
        report.started_from_checkpoint = true;
    }
    if start.is_none() {
        // Newest segment whose first entry verifies and agrees with the index.
        for (&base, _) in segments.iter().rev() {
            let pos = base.max(min_pos);
            if let Ok(Some(h)) = scanner.verified_entry(pos)
                && h.index >= first_index
                && index_agrees(index, h.index, &h)
            {
                let before = if h.index == first_index {
                    empty_last
                } else {
                    match index.get(h.index - 1) {
                        Some(e) => Last { index: h.index - 1, term: e.term, pos: e.pos, size: e.size as u64 },
                        None => continue,
                    }
                };
                start = Some((pos, before));
                break;
            }
        }
    }
    let (mut pos, mut last) = match start {
        Some(s) => s,
        None => {
            report.full_scan = true;
            (min_pos, empty_last)
        }
    };
    // The index must agree at the very start too, or it is rebuilt by a full scan.
    if !report.full_scan
        && last.index >= first_index
        && let Ok(Some(h)) = scanner.verified_entry(min_pos)
        && !index_agrees(index, h.index, &h)
    {
        report.full_scan = true;
        report.started_from_checkpoint = false;
        pos = min_pos;
        last = empty_last;
    }

    // Forward scan.
    loop {
        let base = pos - pos % seg;
        if !segments.contains_key(&base) {
            break;
        }
        let off = pos % seg;
        if seg - off < 4 {
            pos = base + seg;
            continue;
        }
        match scanner.probe(pos) {
            Probe::Empty => break,
            Probe::Padding => {
                pos = base + seg;
                continue;
            }
            Probe::Bad(why) => {
                report.tail_problem = Some(why);
                break;
            }
            Probe::Entry(h) => {
                if h.index != last.index + 1 {
                    report.tail_problem = Some(format!("pos {pos}: index {} after {}", h.index, last.index));
                    break;
                }
                if h.term < last.term {
                    report.tail_problem = Some(format!("pos {pos}: term {} after {}", h.term, last.term));
                    break;
                }
                let slot = IndexEntry { pos, size: h.total_size, term: h.term };
                if index.get(h.index) != Some(slot) {
                    index.ensure(h.index)?;
                    index.put(h.index, slot);
                    report.repaired_index_slots += 1;
                }
                last = Last { index: h.index, term: h.term, pos, size: h.total_size as u64 };
                report.scanned_entries += 1;
                report.scanned_bytes += h.total_size as u64;
                pos += h.total_size as u64;
            }
        }
    }

    let end_pos = if last.index >= first_index { last.pos + last.size } else { min_pos };
    if let Some(problem) = &report.tail_problem {
        tracing::warn!(end_pos, last_index = last.index, %problem, "commitlog tail truncated");
    }

    // Erase everything after the end.
    let doomed: Vec<u64> = segments.range(end_pos..).map(|(k, _)| *k).collect();
    for base in doomed {
        let file = segments.remove(&base).expect("listed");
        std::fs::remove_file(file.path()).at(file.path())?;
        report.removed_segments.push(base);
    }
    let off = end_pos % seg;
    if off != 0
        && let Some(file) = segments.get(&(end_pos - off))
    {
        file.zero_range(off as usize, (seg - off) as usize)?;
        file.sync_all()?;
    }
    if !report.removed_segments.is_empty() {
        mapped_file::sync_dir(seg_dir)?;
    }
    index.truncate_from(last.index + 1)?;
    if report.repaired_index_slots > 0 && last.index >= first_index {
        index.flush(first_index, last.index)?;
    }

    let bounds = Bounds {
        first_index,
        prev_term,
        last_index: last.index,
        last_term: last.term,
        min_pos: if last.index >= first_index { min_pos } else { end_pos },
        end_pos,
        last_pos: last.pos,
    };
    report.first_index = first_index;
    report.last_index = last.index;
    report.last_term = last.term;
    report.end_pos = end_pos;
    report.duration = started.elapsed();
    Ok((segments, bounds, report))
}

fn index_agrees(index: &IndexFile, at: u64, h: &EntryHeader) -> bool {
    index.get(at) == Some(IndexEntry { pos: h.pos, size: h.total_size, term: h.term })
}

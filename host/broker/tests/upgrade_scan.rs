//! The upgrade's read-only commitlog reader and divergence finder against logs written by
//! the storage crate itself: many small segments (padding at every segment end), prefixes,
//! divergence with equal and with different entry sizes, a corrupted tail.

use std::path::Path;

use wasmq_broker::upgrade::divergence::{self, RangeCrc};
use wasmq_broker::upgrade::log_scan::{LogExtent, LogScan};
use wasmq_storage::commitlog::{CommitLog, CommitLogConfig, FlushMode};

const SEGMENT_BYTES: u64 = 4096;

fn open(dir: &Path) -> CommitLog {
    let mut cfg = CommitLogConfig::new(dir);
    cfg.segment_size_bytes = SEGMENT_BYTES;
    cfg.entry_size_max_bytes = 1024;
    cfg.flush_mode = FlushMode::Sync;
    CommitLog::open(cfg).unwrap().0
}

/// Bodies of varying sizes (deterministic), so entries straddle nothing and pad segments.
fn body(i: u64, salt: u8) -> Vec<u8> {
    let len = 20 + (i * 37 % 300) as usize;
    (0..len).map(|j| (i as u8).wrapping_mul(31).wrapping_add(j as u8) ^ salt).collect()
}

fn append(log: &CommitLog, term: u64, from: u64, to: u64, salt: u8) {
    for i in from..to {
        let b = body(i, salt);
        log.append(term, &[&b]).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn scan(dir: &Path) -> (LogScan, LogExtent) {
    let s = LogScan::open(dir, SEGMENT_BYTES).unwrap();
    let e = s.scan(|_| true).unwrap();
    (s, e)
}

fn assert_matches_commitlog(dir: &Path, extent: &LogExtent) {
    let log = open(dir);
    let s = log.summary();
    assert_eq!((extent.first_index, extent.last_index, extent.last_term), (s.first_index, s.last_index, s.last_term));
    assert_eq!((extent.min_pos, extent.max_pos, extent.last_entry_crc), (s.min_pos, s.max_pos, s.last_entry_crc));
    log.close().unwrap();
}

#[test]
fn scan_agrees_with_the_commitlog_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let log = open(&dir);
    append(&log, 0, 0, 150, 0);
    append(&log, 3, 150, 200, 0);
    log.close().unwrap();
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = walk(&dir);
    let (s, extent) = scan(&dir);
    assert_eq!(extent.entries, 200);
    assert!(extent.segments > 10, "small segments: {}", extent.segments);
    assert_eq!(extent.tail_problem, None);
    assert_eq!(walk(&dir), before, "the scan must not write");
    // Every entry can be found again by position.
    let mut n = 0;
    s.scan(|e| {
        assert_eq!(s.entry_at(e.pos).unwrap().as_ref(), Some(e));
        n += 1;
        true
    })
    .unwrap();
    assert_eq!(n, 200);
    assert_matches_commitlog(&dir, &extent);
}

fn walk(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn ranges(reference: &(LogScan, LogExtent), nodes: &[&(LogScan, LogExtent)]) -> Vec<Vec<RangeCrc>> {
    let extents: Vec<&LogExtent> = nodes.iter().map(|(_, e)| e).collect();
    let grid = divergence::grid(&reference.0, &reference.1, &extents).unwrap();
    nodes.iter().map(|(s, e)| divergence::range_checksums(s, e, &grid).unwrap()).collect()
}

#[test]
fn divergence_is_the_first_differing_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let log = open(&a);
    append(&log, 0, 0, 120, 0);
    log.close().unwrap();
    // b: same first 77 entries, then other bodies of the same sizes; c: other sizes from 95;
    // d: a prefix (first 60 entries).
    for (name, cut, salt, size_shift) in [("b", 78u64, 0x55u8, 0u64), ("c", 96, 0, 1), ("d", 61, 0, 0)] {
        let dir = tmp.path().join(name);
        copy_dir(&a, &dir);
        let log = open(&dir);
        log.truncate_from(cut).unwrap();
        if name != "d" {
            for i in cut - 1..cut + 9 {
                let b = body(i + size_shift, salt);
                log.append(0, &[&b]).unwrap();
            }
        }
        log.close().unwrap();
    }
    let na = scan(&a);
    let nb = scan(&tmp.path().join("b"));
    let nc = scan(&tmp.path().join("c"));
    let nd = scan(&tmp.path().join("d"));
    let r = ranges(&na, &[&na, &nb, &nc, &nd]);
    // Stride 1 on a log this size: one range per entry (plus node ends).
    assert!(r[0].len() >= 120, "{}", r[0].len());

    let b = divergence::find((&na.0, &r[0]), (&nb.0, &r[1])).unwrap().expect("b diverges");
    assert_eq!(b.index, 78);
    let c = divergence::find((&na.0, &r[0]), (&nc.0, &r[2])).unwrap().expect("c diverges");
    assert_eq!(c.index, 96);
    assert_eq!(c.pos, na.0.entry_at(c.pos).unwrap().unwrap().pos);
    assert_eq!(divergence::find((&na.0, &r[0]), (&nd.0, &r[3])).unwrap(), None, "a prefix is no divergence");
    assert_eq!(divergence::find((&na.0, &r[0]), (&na.0, &r[0])).unwrap(), None);
    // The shared ranges before the divergence carry equal checksums; the one holding it not.
    let at = r[0].iter().position(|x| x.start == b.pos).unwrap();
    let on_b = r[1].iter().find(|x| x.start == b.pos && x.end == r[0][at].end).unwrap();
    assert_ne!(on_b.crc32c, r[0][at].crc32c);
    assert!(r[0][..at].iter().all(|x| r[1].contains(x)));
}

#[test]
fn corrupted_tail_ends_the_log_where_recovery_would() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let log = open(&dir);
    append(&log, 1, 0, 40, 0);
    log.close().unwrap();
    let (s, full) = scan(&dir);
    // Flip one body byte of the last entry.
    let last = s.entry_at(full.last_pos).unwrap().unwrap();
    let seg = full.last_pos - full.last_pos % SEGMENT_BYTES;
    let path = dir.join("commitlog").join(format!("{seg:020}"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(last.pos % SEGMENT_BYTES) as usize + 45] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let (_, cut) = scan(&dir);
    assert_eq!(cut.last_index, full.last_index - 1);
    assert!(cut.tail_problem.as_deref().unwrap_or("").contains("crc"), "{:?}", cut.tail_problem);
    assert_matches_commitlog(&dir, &cut);
}

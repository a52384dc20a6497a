//! Read-only view of a stopped broker's commitlog.
//!
//! `CommitLog::open` recovers the tail and rewrites the checkpoint, so it must never be run
//! on an old node's store before the operator has agreed to the upgrade. This module reads
//! the segment files with plain `pread`s instead, validating every frame exactly as recovery
//! does (magic, header CRC, position, contiguous index, non-decreasing term, body CRC): the
//! first frame that fails is the end of the log, as it would be after recovery.
//!
//! Each entry's checksum is the CRC32C of its full frame (header + body), the definition of
//! `LogSummary::last_entry_crc`; range checksums (`divergence`) chain these per-entry CRCs.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use wasmq_storage::frame::{self, EntryHeader, Frame, HEADER_SIZE};
use wasmq_storage::mapped_file;

/// Reads from one segment file at a time go through a buffer of this size.
const READ_BUFFER_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {why}")]
    Layout { path: PathBuf, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io { path: path.to_path_buf(), source }
}

/// One verified entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub index: u64,
    pub term: u64,
    pub pos: u64,
    /// Framed size (header + body).
    pub size_bytes: u32,
    /// CRC32C of the full frame.
    pub frame_crc: u32,
}

impl EntryInfo {
    pub fn end_pos(&self) -> u64 {
        self.pos + self.size_bytes as u64
    }
}

/// What a scan found: the extent of the log as recovery would see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogExtent {
    /// Index of the first entry; `last_index + 1` when empty.
    pub first_index: u64,
    pub last_index: u64,
    pub last_term: u64,
    /// Position of the first entry.
    pub min_pos: u64,
    /// End of the last entry (exclusive).
    pub max_pos: u64,
    /// Position of the last entry (0 when empty).
    pub last_pos: u64,
    /// CRC32C of the last entry's frame; 0 when empty.
    pub last_entry_crc: u32,
    pub entries: u64,
    pub segments: u64,
    /// Why the scan stopped when it was not clean never-written space.
    pub tail_problem: Option<String>,
}

impl LogExtent {
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// A commitlog directory (`<storePathRootDir>/log` or `storePathCommitLog`) opened for reading.
#[derive(Debug)]
pub struct LogScan {
    dir: PathBuf,
    segment_size_bytes: u64,
    /// Segment files in position order.
    segments: Vec<(u64, PathBuf)>,
}

impl LogScan {
    /// Lists the segments of `log_dir/commitlog`. A missing directory is an empty log.
    pub fn open(log_dir: &Path, segment_size_bytes: u64) -> Result<LogScan, ScanError> {
        assert!(segment_size_bytes >= HEADER_SIZE as u64);
        let seg_dir = log_dir.join("commitlog");
        let segments = if seg_dir.is_dir() {
            mapped_file::list_numbered_files(&seg_dir)
                .map_err(|e| ScanError::Layout { path: seg_dir.clone(), why: e.to_string() })?
        } else {
            Vec::new()
        };
        for (i, (base, path)) in segments.iter().enumerate() {
            if base % segment_size_bytes != 0 {
                return Err(ScanError::Layout {
                    path: path.clone(),
                    why: format!(
                        "segment base {base} is not a multiple of mappedFileSizeCommitLog {segment_size_bytes}: is the config's segment size the one the log was written with?"
                    ),
                });
            }
            let len = std::fs::metadata(path).map_err(io(path))?.len();
            let last = i + 1 == segments.len();
            if len > segment_size_bytes || (!last && len != segment_size_bytes) {
                return Err(ScanError::Layout {
                    path: path.clone(),
                    why: format!("segment is {len} bytes, mappedFileSizeCommitLog is {segment_size_bytes}"),
                });
            }
            if i > 0 && segments[i - 1].0 + segment_size_bytes != *base {
                return Err(ScanError::Layout {
                    path: path.clone(),
                    why: format!("gap after segment {}", segments[i - 1].0),
                });
            }
        }
        Ok(LogScan { dir: log_dir.to_path_buf(), segment_size_bytes, segments })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn segment_size_bytes(&self) -> u64 {
        self.segment_size_bytes
    }

    /// Visits every valid entry in log order; `visit` returning `false` stops early.
    /// Returns the extent of what was visited (the whole log unless stopped).
    pub fn scan(&self, mut visit: impl FnMut(&EntryInfo) -> bool) -> Result<LogExtent, ScanError> {
        let mut extent = LogExtent { segments: self.segments.len() as u64, ..LogExtent::default() };
        let mut prev: Option<EntryInfo> = None;
        let seg = self.segment_size_bytes;
        'segments: for (i, (base, path)) in self.segments.iter().enumerate() {
            let file = File::open(path).map_err(io(path))?;
            let len = file.metadata().map_err(io(path))?.len();
            let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
            let mut off = 0u64;
            let mut body = Vec::new();
            loop {
                let room = len.min(seg) - off;
                if room < 4 {
                    continue 'segments;
                }
                let mut header = [0u8; HEADER_SIZE];
                let got = room.min(HEADER_SIZE as u64) as usize;
                reader.read_exact(&mut header[..got]).map_err(io(path))?;
                let pos = base + off;
                let decoded = frame::decode_frame(&header[..got], || format!("{} pos {pos}", path.display()));
                let h = match decoded {
                    Ok(Frame::Entry(h)) => h,
                    Ok(Frame::Blank) => continue 'segments,
                    Ok(Frame::Empty) => {
                        if i + 1 < self.segments.len() {
                            extent.tail_problem =
                                Some(format!("never-written space at pos {pos}, but later segments exist (ignored)"));
                        }
                        break 'segments;
                    }
                    Err(e) => {
                        extent.tail_problem = Some(e.to_string());
                        break 'segments;
                    }
                };
                if let Err(why) = check_header(&h, pos, off, seg, prev.as_ref()) {
                    extent.tail_problem = Some(format!("{} pos {pos}: {why}", path.display()));
                    break 'segments;
                }
                body.resize(h.body_len(), 0);
                if let Err(e) = reader.read_exact(&mut body) {
                    extent.tail_problem = Some(format!("{} pos {pos}: body cut short: {e}", path.display()));
                    break 'segments;
                }
                if let Err(e) = frame::verify_body(&h, &body, || format!("{} pos {pos}", path.display())) {
                    extent.tail_problem = Some(e.to_string());
                    break 'segments;
                }
                let info = EntryInfo {
                    index: h.index,
                    term: h.term,
                    pos,
                    size_bytes: h.total_size,
                    frame_crc: crc32c::crc32c_append(crc32c::crc32c(&header), &body),
                };
                if prev.is_none() {
                    extent.first_index = info.index;
                    extent.min_pos = info.pos;
                }
                extent.entries += 1;
                extent.last_index = info.index;
                extent.last_term = info.term;
                extent.last_pos = info.pos;
                extent.max_pos = info.end_pos();
                extent.last_entry_crc = info.frame_crc;
                prev = Some(info);
                off += h.total_size as u64;
                if !visit(&info) {
                    break 'segments;
                }
            }
        }
        if extent.entries == 0 {
            extent.first_index = 1;
            let start = self.segments.first().map(|(b, _)| *b).unwrap_or(0);
            extent.min_pos = start;
            extent.max_pos = start;
        }
        Ok(extent)
    }

    /// The entry whose frame starts at `pos`, verified; `None` for padding or never-written
    /// space (the caller moves on to the next segment for padding).
    pub fn entry_at(&self, pos: u64) -> Result<Option<EntryInfo>, ScanError> {
        let seg = self.segment_size_bytes;
        let base = pos - pos % seg;
        let off = pos % seg;
        let Some((_, path)) = self.segments.iter().find(|(b, _)| *b == base) else {
            return Ok(None);
        };
        if seg - off < 4 {
            return Ok(None);
        }
        let file = File::open(path).map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        if off + 4 > len {
            return Ok(None);
        }
        let got = (len - off).min(HEADER_SIZE as u64) as usize;
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header[..got], off).map_err(io(path))?;
        let where_ = || format!("{} pos {pos}", path.display());
        let h = match frame::decode_frame(&header[..got], where_) {
            Ok(Frame::Entry(h)) => h,
            Ok(Frame::Blank | Frame::Empty) => return Ok(None),
            Err(e) => {
                return Err(ScanError::Layout { path: path.clone(), why: e.to_string() });
            }
        };
        check_header(&h, pos, off, seg, None).map_err(|why| ScanError::Layout { path: path.clone(), why })?;
        let mut body = vec![0u8; h.body_len()];
        file.read_exact_at(&mut body, off + HEADER_SIZE as u64).map_err(io(path))?;
        frame::verify_body(&h, &body, where_)
            .map_err(|e| ScanError::Layout { path: path.clone(), why: e.to_string() })?;
        Ok(Some(EntryInfo {
            index: h.index,
            term: h.term,
            pos,
            size_bytes: h.total_size,
            frame_crc: crc32c::crc32c_append(crc32c::crc32c(&header), &body),
        }))
    }

    /// Where the entry after one ending at `end_pos` starts: `end_pos`, or the next segment's
    /// base when the rest of this segment is padding.
    pub fn next_entry_pos(&self, end_pos: u64) -> Result<u64, ScanError> {
        let seg = self.segment_size_bytes;
        let base = end_pos - end_pos % seg;
        if end_pos.is_multiple_of(seg) {
            return Ok(end_pos);
        }
        match self.entry_at(end_pos)? {
            Some(_) => Ok(end_pos),
            None => {
                // Padding (or nothing yet): an entry there would have started the next segment
                // only if the current one has a blank marker.
                let next = base + seg;
                if self.is_blank(end_pos)? { Ok(next) } else { Ok(end_pos) }
            }
        }
    }

    fn is_blank(&self, pos: u64) -> Result<bool, ScanError> {
        let seg = self.segment_size_bytes;
        let base = pos - pos % seg;
        let off = pos % seg;
        if seg - off < 4 {
            return Ok(true);
        }
        let Some((_, path)) = self.segments.iter().find(|(b, _)| *b == base) else {
            return Ok(false);
        };
        let file = File::open(path).map_err(io(path))?;
        let mut magic = [0u8; 4];
        match file.read_exact_at(&mut magic, off) {
            Ok(()) => Ok(u32::from_le_bytes(magic) == frame::BLANK_MAGIC),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(io(path)(e)),
        }
    }
}

/// The checks recovery makes on a header beyond its CRC.
fn check_header(h: &EntryHeader, pos: u64, off: u64, seg: u64, prev: Option<&EntryInfo>) -> Result<(), String> {
    if h.pos != pos {
        return Err(format!("frame says pos {}", h.pos));
    }
    if off + h.total_size as u64 > seg {
        return Err(format!("impossible size {}", h.total_size));
    }
    if let Some(p) = prev {
        if h.index != p.index + 1 {
            return Err(format!("index {} after index {}", h.index, p.index));
        }
        if h.term < p.term {
            return Err(format!("term {} after term {}", h.term, p.term));
        }
    }
    Ok(())
}

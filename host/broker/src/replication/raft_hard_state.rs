//! The Raft hard state (current term, vote) in one small file, replaced atomically: write a
//! temporary file, fsync it, rename it over the old one, fsync the directory. A vote or an
//! acknowledgement is only sent after this returns.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest file accepted (the content is one short line).
const FILE_BYTES_MAX: u64 = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredHardState {
    pub term: u64,
    /// DLedger id of the member voted for in `term`.
    pub voted_for: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HardStateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt raft hard state: {why}")]
    Corrupt { path: PathBuf, why: String },
}

pub struct HardStateFile {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

impl HardStateFile {
    /// Opens `dir/raft-hardstate`, creating `dir`; a missing file is term 0, no vote.
    pub fn open(dir: &Path) -> Result<(HardStateFile, StoredHardState), HardStateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HardStateError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let file = HardStateFile {
            path: dir.join("raft-hardstate"),
            tmp: dir.join("raft-hardstate.tmp"),
            dir: dir.to_path_buf(),
        };
        let state = match std::fs::metadata(&file.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoredHardState::default(),
            Err(e) => return Err(io(&file.path)(e)),
            Ok(m) if m.len() > FILE_BYTES_MAX => {
                return Err(HardStateError::Corrupt { path: file.path.clone(), why: format!("{} bytes", m.len()) });
            }
            Ok(_) => {
                let text = std::fs::read_to_string(&file.path).map_err(io(&file.path))?;
                decode(&text).map_err(|why| HardStateError::Corrupt { path: file.path.clone(), why })?
            }
        };
        Ok((file, state))
    }

    pub fn store(&self, state: &StoredHardState) -> Result<(), HardStateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HardStateError::Io { path, source }
        };
        let text = encode(state);
        let mut f = std::fs::File::create(&self.tmp).map_err(io(&self.tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&self.tmp))?;
        f.sync_all().map_err(io(&self.tmp))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        Ok(())
    }
}

/// `v1 <term> <voted_for or -> <crc32c of the part before it, hex>`
fn encode(state: &StoredHardState) -> String {
    let body = format!("v1 {} {}", state.term, state.voted_for.as_deref().unwrap_or("-"));
    format!("{body} {:08x}\n", crc32c::crc32c(body.as_bytes()))
}

fn decode(text: &str) -> Result<StoredHardState, String> {
    let line = text.trim_end_matches('\n');
    let (body, crc) = line.rsplit_once(' ').ok_or("missing checksum")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|e| format!("checksum: {e}"))?;
    if crc != crc32c::crc32c(body.as_bytes()) {
        return Err("checksum mismatch".into());
    }
    let mut parts = body.split(' ');
    if parts.next() != Some("v1") {
        return Err("unknown version".into());
    }
    let term = parts.next().ok_or("missing term")?.parse::<u64>().map_err(|e| format!("term: {e}"))?;
    let voted_for = match parts.next().ok_or("missing vote")? {
        "-" => None,
        id => Some(id.to_string()),
    };
    if parts.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(StoredHardState { term, voted_for })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (f, s) = HardStateFile::open(dir.path()).unwrap();
        assert_eq!(s, StoredHardState::default());
        let want = StoredHardState { term: 42, voted_for: Some("n1".into()) };
        f.store(&want).unwrap();
        let (_, got) = HardStateFile::open(dir.path()).unwrap();
        assert_eq!(got, want);
        f.store(&StoredHardState { term: 43, voted_for: None }).unwrap();
        assert_eq!(HardStateFile::open(dir.path()).unwrap().1, StoredHardState { term: 43, voted_for: None });
        std::fs::write(dir.path().join("raft-hardstate"), "v1 44 - 00000000\n").unwrap();
        assert!(matches!(HardStateFile::open(dir.path()), Err(HardStateError::Corrupt { .. })));
    }
}

//! `upgrade` and `upgradeFinish`: carry an accepted [`Plan`] out, and later drop the backups.
//!
//! Order, so that a failure at any step leaves the old nodes as they were:
//! 1. Stage: copy the source's commitlog directory into `<new root>.upgrade-staging-<ts>/log`,
//!    open the copy with the broker's own `CommitLog::open` and check it ends exactly where
//!    the read-only scan said (same last index, term, end position and last-entry CRC), write
//!    the manifest. The old stores are only read.
//! 2. Swap: rename every old store root (and an outside `storePathCommitLog`) to
//!    `<dir>.pre-upgrade-<ts>`, then every staging dir to its new root. A failure undoes the
//!    renames done so far, in reverse.
//!
//! The log needs no rewriting: a standalone broker writes the same frames a Raft member does,
//! in term 0. Raft accepts them as they are (terms only need to be non-decreasing); the first
//! leader, elected in term >= 1, commits them all with its no-op entry. No Raft hard state is
//! copied: a missing `raft/raft-hardstate` is term 0 with no vote, which is what these nodes
//! have. Consume queues, topic configs and consumer offsets are not copied either: each new
//! member applies them from the committed entries.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmq_storage::commitlog::{CommitLog, CommitLogConfig, FlushMode};
use wasmq_storage::frame::HEADER_SIZE;

use super::UpgradeError;
use super::log_scan::LogScan;
use super::plan::Plan;
use crate::config::{self, BrokerConfig};

/// Name of the manifest in each new node's store root while backups exist.
pub const MANIFEST_FILE: &str = "upgrade.json";
/// Marker every backup directory name carries; `upgradeFinish` removes nothing else.
pub const BACKUP_MARKER: &str = ".pre-upgrade-";
const STAGING_MARKER: &str = ".upgrade-staging-";
/// Largest manifest accepted.
const MANIFEST_BYTES_MAX: u64 = 1 << 20;

/// Written to `<new root>/upgrade.json`; read by `upgradeFinish`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub timestamp: u64,
    pub source_node: String,
    /// The old log's end: the new group has taken over once it committed past it.
    pub old_last_index: u64,
    pub old_last_term: u64,
    pub old_last_pos: u64,
    pub old_max_pos: u64,
    pub old_last_entry_crc: u32,
    /// Old store directories, renamed.
    pub backups: Vec<PathBuf>,
    /// Members of the new group (`dLegerPeers` ids).
    pub members: Vec<String>,
}

/// What `upgrade` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub timestamp: u64,
    pub source_node: String,
    pub entries_copied: u64,
    /// (new node id, store root).
    pub new_stores: Vec<(String, PathBuf)>,
    pub backups: Vec<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpgradeError + '_ {
    move |e| UpgradeError::Io { path: path.to_path_buf(), why: e.to_string() }
}

fn with_suffix(dir: &Path, marker: &str, ts: u64) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(format!("{marker}{ts}"));
    PathBuf::from(s)
}

/// Carries out an accepted plan. Refuses (changing nothing) when the plan is not accepted.
pub fn perform(plan: &Plan) -> Result<Outcome, UpgradeError> {
    if !plan.accepted() {
        return Err(UpgradeError::Refused(
            plan.findings.iter().filter(|f| f.level == super::plan::Level::Error).map(|f| f.text.clone()).collect(),
        ));
    }
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let src = plan.source_node();
    let members: Vec<String> =
        plan.new[0].config.dledger_peers().unwrap_or_default().into_iter().map(|p| p.id).collect();

    // Old dirs to back up: each root, plus its commitlog dir when it lives elsewhere.
    let mut backups: Vec<(PathBuf, PathBuf)> = Vec::new();
    for o in &plan.old {
        let root = o.config.store_root();
        for dir in [root.clone(), o.log_dir.clone()] {
            if (dir == root || !dir.starts_with(&root)) && dir.exists() && !backups.iter().any(|(d, _)| d == &dir) {
                backups.push((dir.clone(), with_suffix(&dir, BACKUP_MARKER, ts)));
            }
        }
    }
    let manifest = Manifest {
        timestamp: ts,
        source_node: src.id.clone(),
        old_last_index: src.extent.last_index,
        old_last_term: src.extent.last_term,
        old_last_pos: src.extent.last_pos,
        old_max_pos: src.extent.max_pos,
        old_last_entry_crc: src.extent.last_entry_crc,
        backups: backups.iter().map(|(_, b)| b.clone()).collect(),
        members,
    };

    // 1. Stage.
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new(); // (staging, final root)
    let mut stage_all = || -> Result<(), UpgradeError> {
        for n in &plan.new {
            let root = n.config.store_root();
            let staging = with_suffix(&root, STAGING_MARKER, ts);
            if staging.exists() {
                return Err(UpgradeError::Io { path: staging, why: "staging directory exists already".into() });
            }
            staged.push((staging.clone(), root));
            copy_dir(&src.log_dir, &staging.join("log"))?;
            verify_copy(&staging.join("log"), &n.config, src)?;
            let text = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
            write_synced(&staging.join(MANIFEST_FILE), &text)?;
        }
        Ok(())
    };
    if let Err(e) = stage_all() {
        for (staging, _) in &staged {
            let _ = std::fs::remove_dir_all(staging);
        }
        return Err(e);
    }

    // 2. Swap, undoing on failure.
    let mut done: Vec<(PathBuf, PathBuf)> = Vec::new(); // renames (from, to) done so far
    let swap = |done: &mut Vec<(PathBuf, PathBuf)>| -> Result<(), UpgradeError> {
        for (dir, backup) in &backups {
            rename(dir, backup)?;
            done.push((dir.clone(), backup.clone()));
        }
        for (staging, root) in &staged {
            if root.exists() {
                // Only an empty directory can be left here (checked by the plan).
                std::fs::remove_dir(root).map_err(io(root))?;
            }
            if let Some(parent) = root.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            rename(staging, root)?;
            done.push((staging.clone(), root.clone()));
        }
        Ok(())
    };
    if let Err(e) = swap(&mut done) {
        for (from, to) in done.iter().rev() {
            if let Err(undo) = std::fs::rename(to, from) {
                tracing::error!(from = %to.display(), to = %from.display(), %undo, "could not undo a rename; fix it by hand");
            }
        }
        for (staging, _) in &staged {
            let _ = std::fs::remove_dir_all(staging);
        }
        return Err(e);
    }
    Ok(Outcome {
        timestamp: ts,
        source_node: src.id.clone(),
        entries_copied: src.extent.entries,
        new_stores: plan.new.iter().map(|n| (n.id.clone(), n.config.store_root())).collect(),
        backups: manifest.backups,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), UpgradeError> {
    std::fs::rename(from, to)
        .map_err(|e| UpgradeError::Io { path: from.to_path_buf(), why: format!("rename to {}: {e}", to.display()) })?;
    if let Some(parent) = to.parent() {
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io(parent))?;
    }
    Ok(())
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), UpgradeError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Recursive copy of regular files and directories, each file fsynced. Symlinks are refused:
/// a commitlog directory holds none.
fn copy_dir(from: &Path, to: &Path) -> Result<(), UpgradeError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    if !from.exists() {
        return Ok(()); // An empty old store: the new node starts with an empty log.
    }
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            copy_dir(&path, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&path, &target).map_err(io(&path))?;
            std::fs::File::open(&target).and_then(|f| f.sync_all()).map_err(io(&target))?;
        } else {
            return Err(UpgradeError::Io {
                path,
                why: "unexpected non-regular file in the commitlog directory".into(),
            });
        }
    }
    std::fs::File::open(to).and_then(|d| d.sync_all()).map_err(io(to))
}

/// Opens the staged copy the way the new broker will and checks it holds exactly the
/// source's log.
fn verify_copy(log_dir: &Path, new: &BrokerConfig, src: &super::plan::OldNode) -> Result<(), UpgradeError> {
    let mut cfg = CommitLogConfig::new(log_dir);
    cfg.segment_size_bytes = new.mapped_file_size_commit_log;
    // Largest body the segment allows: the copy must not be cut by a smaller limit here (the
    // plan checked maxMessageSize separately).
    cfg.entry_size_max_bytes = (new.mapped_file_size_commit_log - HEADER_SIZE as u64).min(u32::MAX as u64) as u32;
    cfg.flush_mode = FlushMode::Sync;
    let (log, _report) =
        CommitLog::open(cfg).map_err(|e| UpgradeError::Verify(format!("{}: {e}", log_dir.display())))?;
    let s = log.summary();
    let want = &src.extent;
    let same = if want.is_empty() {
        s.last_index < s.first_index
    } else {
        s.last_index == want.last_index
            && s.last_term == want.last_term
            && s.max_pos == want.max_pos
            && s.last_entry_crc == want.last_entry_crc
    };
    log.close().map_err(|e| UpgradeError::Verify(e.to_string()))?;
    if !same {
        return Err(UpgradeError::Verify(format!(
            "copy in {} ends at entry {} term {} pos {} crc {:08x}, the source {} at entry {} term {} pos {} crc {:08x}",
            log_dir.display(),
            s.last_index,
            s.last_term,
            s.max_pos,
            s.last_entry_crc,
            src.id,
            want.last_index,
            want.last_term,
            want.max_pos,
            want.last_entry_crc
        )));
    }
    Ok(())
}

/// What `upgradeFinish` found and did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FinishOutcome {
    /// Members whose log holds the old end and an entry of a Raft term after it.
    pub past_old_end: Vec<String>,
    pub members: usize,
    pub removed: Vec<PathBuf>,
}

/// Removes the backups once a majority of the group holds the old log's last entry followed
/// by an entry of term >= 1 (written by an elected leader, so committed once on a majority).
/// Reads the new nodes' logs; safe while they run.
pub fn finish(new_configs: &[PathBuf]) -> Result<FinishOutcome, UpgradeError> {
    let mut manifest: Option<Manifest> = None;
    let mut roots = Vec::new();
    let mut past = Vec::new();
    for path in new_configs {
        let c = config::load(path).map_err(|e| UpgradeError::Config { path: path.clone(), why: e.to_string() })?.config;
        let root = c.store_root();
        let mpath = root.join(MANIFEST_FILE);
        let size = std::fs::metadata(&mpath).map_err(io(&mpath))?.len();
        if size > MANIFEST_BYTES_MAX {
            return Err(UpgradeError::Io { path: mpath, why: format!("{size} bytes, too big for a manifest") });
        }
        let text = std::fs::read(&mpath).map_err(io(&mpath))?;
        let m: Manifest =
            serde_json::from_slice(&text).map_err(|e| UpgradeError::Io { path: mpath.clone(), why: e.to_string() })?;
        if let Some(first) = &manifest
            && first.timestamp != m.timestamp
        {
            return Err(UpgradeError::Usage(format!(
                "{} belongs to another upgrade ({} vs {})",
                mpath.display(),
                m.timestamp,
                first.timestamp
            )));
        }
        let scan = LogScan::open(&c.commit_log_dir(), c.mapped_file_size_commit_log)
            .map_err(|e| UpgradeError::Scan { node: c.d_leger_self_id.clone(), why: e.to_string() })?;
        if holds_past_end(&scan, &m)
            .map_err(|e| UpgradeError::Scan { node: c.d_leger_self_id.clone(), why: e.to_string() })?
        {
            past.push(c.d_leger_self_id.clone());
        }
        roots.push(root);
        manifest = Some(m);
    }
    let m = manifest.ok_or_else(|| UpgradeError::Usage("give the --new configs".into()))?;
    let members = m.members.len().max(1);
    if past.len() < members / 2 + 1 {
        return Err(UpgradeError::NotYet(format!(
            "{} of {members} members ({}) hold an entry of the new group past the old end (entry {}); a majority is needed. Start the group and wait for a leader.",
            past.len(),
            past.join(", "),
            m.old_last_index
        )));
    }
    let mut removed = Vec::new();
    for b in &m.backups {
        let name = b.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.contains(BACKUP_MARKER) {
            return Err(UpgradeError::Usage(format!(
                "manifest names {} as a backup, which lacks `{BACKUP_MARKER}`: not removing it",
                b.display()
            )));
        }
        if b.exists() {
            std::fs::remove_dir_all(b).map_err(io(b))?;
            removed.push(b.clone());
        }
    }
    for root in roots {
        let mpath = root.join(MANIFEST_FILE);
        std::fs::remove_file(&mpath).map_err(io(&mpath))?;
    }
    Ok(FinishOutcome { past_old_end: past, members, removed })
}

fn holds_past_end(scan: &LogScan, m: &Manifest) -> Result<bool, super::log_scan::ScanError> {
    let next_pos = if m.old_last_index == 0 {
        scan.scan(|_| false)?.min_pos
    } else {
        match scan.entry_at(m.old_last_pos)? {
            Some(e) if e.index == m.old_last_index && e.frame_crc == m.old_last_entry_crc => {}
            _ => return Ok(false),
        }
        scan.next_entry_pos(m.old_max_pos)?
    };
    Ok(matches!(scan.entry_at(next_pos)?, Some(e) if e.index == m.old_last_index + 1 && e.term >= 1))
}

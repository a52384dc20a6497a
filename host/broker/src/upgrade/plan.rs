//! `upgradeCheck`: read every old node's commitlog (read-only), find where the nodes
//! diverge, pick the source, check the new group's configs, ask the upgrade-validator
//! plugins, and produce a [`Plan`] that either refuses or says exactly what `upgrade` does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wasmq_plugin::validation::{Change, ChangeKind, NodeSummary, RangeChecksum};

use super::divergence::{self, Divergence, RangeCrc};
use super::log_scan::{LogExtent, LogScan};
use super::{UpgradeError, validators};
use crate::config::{self, BrokerConfig};

/// Nodes per side: bounds the pairwise work and the output.
pub const NODES_MAX: usize = 16;
/// How long `upgradeCheck` tries to connect to an old node's listen address to tell whether
/// the broker is still running.
const RUNNING_PROBE_MS: u64 = 300;

/// What the operator asked for.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub old: Vec<PathBuf>,
    pub new: Vec<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
    /// Node id (`brokerName/brokerId`) or config path of the node to copy from.
    pub source: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub level: Level,
    pub code: String,
    pub text: String,
    /// `wasmq` for the built-in checks, `plugins` for upgrade-validator plugins (their text
    /// starts with `[plugin name]`).
    pub by: &'static str,
}

/// One old (non-replicated) node.
#[derive(Debug)]
pub struct OldNode {
    pub id: String,
    pub config_path: PathBuf,
    pub config: BrokerConfig,
    pub log_dir: PathBuf,
    pub scan: LogScan,
    pub extent: LogExtent,
    pub ranges: Vec<RangeCrc>,
}

#[derive(Debug)]
pub struct NewNode {
    pub id: String,
    pub config_path: PathBuf,
    pub config: BrokerConfig,
}

/// A node whose log disagrees with the source's.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeDivergence {
    pub node: String,
    pub source: String,
    #[serde(flatten)]
    pub at: Divergence,
    /// Entries of `node` from the divergence on (not carried over).
    pub node_entries_dropped: u64,
}

#[derive(Debug)]
pub struct Plan {
    pub old: Vec<OldNode>,
    pub new: Vec<NewNode>,
    /// Index into `old` of the node whose log every new node gets.
    pub source: usize,
    pub source_was_chosen: bool,
    pub divergences: Vec<NodeDivergence>,
    pub findings: Vec<Finding>,
    pub validators_run: Vec<String>,
}

impl Plan {
    pub fn accepted(&self) -> bool {
        !self.findings.iter().any(|f| f.level == Level::Error)
    }

    pub fn source_node(&self) -> &OldNode {
        &self.old[self.source]
    }
}

fn load_config(path: &Path) -> Result<BrokerConfig, UpgradeError> {
    let loaded =
        config::load(path).map_err(|e| UpgradeError::Config { path: path.to_path_buf(), why: e.to_string() })?;
    Ok(loaded.config)
}

/// Old node id: RocketMQ's `brokerName` plus `brokerId` (0 = master).
pub fn old_node_id(c: &BrokerConfig) -> String {
    format!("{}/{}", c.broker_name, c.broker_id)
}

/// Builds the plan. Reads the old commitlogs, writes nothing (the plugin compile cache goes
/// to a temporary directory that is removed again).
pub fn check(req: &Request) -> Result<Plan, UpgradeError> {
    if req.old.is_empty() || req.new.is_empty() {
        return Err(UpgradeError::Usage("give at least one --old and one --new config".into()));
    }
    if req.old.len() > NODES_MAX || req.new.len() > NODES_MAX {
        return Err(UpgradeError::Usage(format!("at most {NODES_MAX} --old and {NODES_MAX} --new configs")));
    }
    let mut findings = Vec::new();
    let mut wasmq = |level: Level, code: &str, text: String| {
        findings.push(Finding { level, code: code.into(), text, by: "wasmq" });
    };

    let mut old = Vec::new();
    for path in &req.old {
        let config = load_config(path)?;
        let id = old_node_id(&config);
        if old.iter().any(|o: &OldNode| o.id == id) {
            return Err(UpgradeError::Usage(format!("two --old configs are node {id} (same brokerName and brokerId)")));
        }
        let log_dir = config.commit_log_dir();
        let scan = LogScan::open(&log_dir, config.mapped_file_size_commit_log)
            .map_err(|e| UpgradeError::Scan { node: id.clone(), why: e.to_string() })?;
        let extent = scan.scan(|_| true).map_err(|e| UpgradeError::Scan { node: id.clone(), why: e.to_string() })?;
        if config.enable_d_leger_commit_log {
            wasmq(
                Level::Error,
                "old-replicated",
                format!("old node {id} ({}) already has enableDLegerCommitLog = true", path.display()),
            );
        }
        if let Some(p) = &extent.tail_problem {
            wasmq(
                Level::Warning,
                "tail-problem",
                format!(
                    "old node {id}: the log ends at entry {} because {p}; the broker's own recovery would stop there too",
                    extent.last_index
                ),
            );
        }
        if let Ok(addr) = config.listen_addr()
            && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(RUNNING_PROBE_MS)).is_ok()
        {
            wasmq(
                Level::Error,
                "broker-running",
                format!(
                    "old node {id}: something accepts connections on {addr}; stop the broker first (the upgrade is offline)"
                ),
            );
        }
        old.push(OldNode { id, config_path: path.clone(), config, log_dir, scan, extent, ranges: Vec::new() });
    }

    // Source: asked for, or the most complete (most entries, then latest term, then first given).
    let most_complete = (0..old.len())
        .max_by_key(|&i| (old[i].extent.last_index, old[i].extent.last_term, std::cmp::Reverse(i)))
        .expect("at least one old node");
    let source = match &req.source {
        None => most_complete,
        Some(want) => old.iter().position(|o| &o.id == want || o.config_path == Path::new(want)).ok_or_else(|| {
            UpgradeError::Usage(format!(
                "--source {want}: no --old node has that id or config path (ids: {})",
                old.iter().map(|o| o.id.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?,
    };

    // Checksums on one grid, divergence against the source.
    let extents: Vec<&LogExtent> = old.iter().map(|o| &o.extent).collect();
    let grid = divergence::grid(&old[source].scan, &old[source].extent, &extents)
        .map_err(|e| UpgradeError::Scan { node: old[source].id.clone(), why: e.to_string() })?;
    for o in old.iter_mut() {
        o.ranges = divergence::range_checksums(&o.scan, &o.extent, &grid)
            .map_err(|e| UpgradeError::Scan { node: o.id.clone(), why: e.to_string() })?;
    }
    let mut divergences = Vec::new();
    for (i, o) in old.iter().enumerate() {
        if i == source {
            continue;
        }
        let src = &old[source];
        let found = divergence::find((&src.scan, &src.ranges), (&o.scan, &o.ranges))
            .map_err(|e| UpgradeError::Scan { node: o.id.clone(), why: e.to_string() })?;
        if let Some(at) = found {
            let dropped = o.extent.last_index.saturating_sub(at.index) + 1;
            divergences.push(NodeDivergence {
                node: o.id.clone(),
                source: src.id.clone(),
                at,
                node_entries_dropped: dropped,
            });
        }
    }
    let src = &old[source];
    for d in &divergences {
        let text = format!(
            "old nodes {} and {} diverge at entry {} (commitlog offset {}): {} has {}, {} has {}",
            d.source,
            d.node,
            d.at.index,
            d.at.pos,
            d.source,
            describe(d.at.reference_entry),
            d.node,
            describe(d.at.node_entry),
        );
        if req.source.is_some() {
            wasmq(
                Level::Warning,
                "repair",
                format!(
                    "{text}; {} gets {}'s log: its {} entries from {} on are not carried over (they stay in its backup)",
                    d.node, d.source, d.node_entries_dropped, d.at.index
                ),
            );
        } else {
            wasmq(
                Level::Error,
                "commitlog-divergence",
                format!("{text}; pick the node to keep with --source (the others are repaired from it)"),
            );
        }
    }
    for (i, o) in old.iter().enumerate() {
        let diverged = divergences.iter().any(|d| d.node == o.id);
        if i != source && !diverged && o.extent.last_index > src.extent.last_index {
            wasmq(
                Level::Warning,
                "source-shorter",
                format!(
                    "--source {} ends at entry {}, node {} holds entries up to {}: those are not carried over",
                    src.id, src.extent.last_index, o.id, o.extent.last_index
                ),
            );
        }
    }
    if src.extent.is_empty() {
        wasmq(
            Level::Warning,
            "empty-source",
            format!("source {} has an empty commitlog: the new group starts empty", src.id),
        );
    }

    // The new group.
    let mut new = Vec::new();
    for path in &req.new {
        let config = load_config(path)?;
        let id = config.d_leger_self_id.clone();
        if !config.enable_d_leger_commit_log {
            wasmq(
                Level::Error,
                "new-not-replicated",
                format!("new node {} must set enableDLegerCommitLog = true", path.display()),
            );
        }
        if let Err(e) = config.validate(path, config::StoreCheck::WithoutCreating) {
            wasmq(Level::Error, "new-config-invalid", format!("{e}"));
        }
        if new.iter().any(|n: &NewNode| n.id == id) {
            wasmq(Level::Error, "duplicate-new-node", format!("two --new configs have dLegerSelfId {id}"));
        }
        new.push(NewNode { id, config_path: path.clone(), config });
    }
    let first = &new[0].config;
    for n in &new[1..] {
        if n.config.d_leger_group != first.d_leger_group || n.config.d_leger_peers != first.d_leger_peers {
            wasmq(
                Level::Error,
                "new-group-mismatch",
                format!(
                    "{} and {} disagree on dLegerGroup/dLegerPeers",
                    new[0].config_path.display(),
                    n.config_path.display()
                ),
            );
        }
    }
    let peers = first.dledger_peers().unwrap_or_default();
    let missing: Vec<&str> =
        peers.iter().map(|p| p.id.as_str()).filter(|id| !new.iter().any(|n| n.id == *id)).collect();
    if !missing.is_empty() {
        wasmq(
            Level::Warning,
            "new-nodes-missing",
            format!(
                "members {} have no --new config: they start with an empty store and catch up from the leader",
                missing.join(", ")
            ),
        );
    }
    let old_roots: Vec<PathBuf> = old.iter().map(|o| o.config.store_root()).collect();
    // A store holding a manifest belongs to an upgrade that was not finished: upgrading it
    // again would back up the new copy and bury the real backups.
    let roots_in_use = old_roots.iter().cloned().chain(new.iter().map(|n| n.config.store_root()));
    for root in roots_in_use.collect::<BTreeSet<_>>() {
        if root.join(super::apply::MANIFEST_FILE).exists() {
            wasmq(
                Level::Error,
                "upgrade-in-progress",
                format!(
                    "{} holds {} from an earlier upgrade: finish it (`mqadmin upgradeFinish`) or roll it back first",
                    root.display(),
                    super::apply::MANIFEST_FILE
                ),
            );
        }
    }
    for n in &new {
        let c = &n.config;
        if c.mapped_file_size_commit_log != src.config.mapped_file_size_commit_log {
            wasmq(
                Level::Error,
                "segment-size-mismatch",
                format!(
                    "new node {}: mappedFileSizeCommitLog {} differs from the source's {} (segments are copied as they are)",
                    n.id, c.mapped_file_size_commit_log, src.config.mapped_file_size_commit_log
                ),
            );
        }
        let largest_old = old.iter().map(|o| o.config.max_message_size).max().unwrap_or(0);
        if c.max_message_size < largest_old {
            wasmq(
                Level::Error,
                "message-size-shrinks",
                format!(
                    "new node {}: maxMessageSize {} is below the old {largest_old}: recovery would cut the log at the first bigger entry",
                    n.id, c.max_message_size
                ),
            );
        }
        if !c.store_path_commit_log.is_empty() {
            wasmq(
                Level::Error,
                "store-path-commitlog",
                format!(
                    "new node {}: storePathCommitLog is not supported by upgrade; unset it (the log goes to storePathRootDir/log)",
                    n.id
                ),
            );
        }
        let root = c.store_root();
        let in_place = old_roots.contains(&root);
        for o in &old_roots {
            if o != &root && (o.starts_with(&root) || root.starts_with(o)) {
                wasmq(
                    Level::Error,
                    "nested-store",
                    format!(
                        "new node {} store {} and old store {} contain one another",
                        n.id,
                        root.display(),
                        o.display()
                    ),
                );
            }
        }
        if !in_place && dir_has_entries(&root) {
            wasmq(
                Level::Error,
                "new-store-not-empty",
                format!(
                    "new node {}: {} exists and is not empty (and is no old node's store): refusing to overwrite it",
                    n.id,
                    root.display()
                ),
            );
        }
    }
    let roots: BTreeSet<PathBuf> = new.iter().map(|n| n.config.store_root()).collect();
    if roots.len() != new.len() {
        wasmq(Level::Error, "shared-store", "two --new configs share a storePathRootDir".into());
    }

    // Plugins.
    let mut validators_run = Vec::new();
    match &req.plugin_dir {
        None => wasmq(Level::Info, "no-validators", "no --plugin-dir: no upgrade-validator plugins ran".into()),
        Some(dir) => {
            let nodes: Vec<NodeSummary> = old
                .iter()
                .enumerate()
                .filter(|(i, o)| req.source.is_none() || *i == source || !divergences.iter().any(|d| d.node == o.id))
                .map(|(_, o)| node_summary(o))
                .collect();
            let outcome = run_validators(dir, &old, source, &new, nodes)?;
            validators_run = outcome.validators;
            findings.extend(outcome.findings);
        }
    }
    Ok(Plan { old, new, source, source_was_chosen: req.source.is_some(), divergences, findings, validators_run })
}

fn describe(entry: Option<(u64, u32)>) -> String {
    match entry {
        Some((term, crc)) => format!("term {term} CRC32C {crc:08x}"),
        None => "no entry".into(),
    }
}

fn dir_has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
}

fn node_summary(o: &OldNode) -> NodeSummary {
    NodeSummary {
        node_id: o.id.clone(),
        address: format!("{}:{}", o.config.broker_ip1, o.config.listen_port),
        replicated: o.config.enable_d_leger_commit_log,
        min_offset: o.extent.min_pos,
        max_offset: o.extent.max_pos,
        last_index: o.extent.last_index,
        last_term: o.extent.last_term,
        last_entry_crc32c: o.extent.last_entry_crc,
        checksums: o.ranges.iter().map(|r| RangeChecksum { start: r.start, end: r.end, crc32c: r.crc32c }).collect(),
    }
}

/// A config as the key/value pairs validators see (RocketMQ key names, values as text).
pub fn config_pairs(c: &BrokerConfig) -> Vec<(String, String)> {
    let value = serde_json::to_value(c).expect("config serializes");
    let serde_json::Value::Object(map) = value else { unreachable!("config is a struct") };
    map.into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect()
}

/// One `validate` call per new node (new config = that node's; old config = the old node
/// whose store it takes over in place, else the source's), findings merged without repeats.
fn run_validators(
    dir: &Path,
    old: &[OldNode],
    source: usize,
    new: &[NewNode],
    nodes: Vec<NodeSummary>,
) -> Result<validators::Outcome, UpgradeError> {
    validators::ask(dir, |versions| {
        new.iter()
            .map(|n| {
                let old_config =
                    &old.iter().find(|o| o.config.store_root() == n.config.store_root()).unwrap_or(&old[source]).config;
                let change = Change {
                    kind: ChangeKind::EnableReplication,
                    old_config: config_pairs(old_config),
                    new_config: config_pairs(&n.config),
                    nodes: nodes.clone(),
                    old_plugins: versions.to_vec(),
                    new_plugins: versions.to_vec(),
                };
                (format!("new node {}", n.id), change)
            })
            .collect()
    })
}

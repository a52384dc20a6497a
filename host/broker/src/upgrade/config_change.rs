//! Rolling config changes, one node at a time: a broker that starts with a config different
//! from the one it last ran with asks the upgrade-validator plugins of its (new) `pluginDir`
//! first, and refuses to start — before it opens, creates or writes anything in its store —
//! when the host's own checks or a validator refuse. The rest of the group keeps serving
//! meanwhile; the operator reverts the config (or fixes what the findings name) and starts
//! the node again.
//!
//! What the node last ran with is kept in `storePathRootDir/config.applied.json`, written
//! after every successful start. No such file (a new store, or one from before this file
//! existed, or a store just produced by `mqadmin upgrade`) means nothing to compare: the
//! start goes ahead.
//!
//! The change carries no commitlog summaries: reading the whole log on every restart would
//! cost a full scan, and a config change does not move data.

use std::path::{Path, PathBuf};

use wasmq_plugin::validation::{Change, ChangeKind, PluginVersion};

use super::plan::{Finding, Level, config_pairs};
use super::{UpgradeError, validators};
use crate::config::BrokerConfig;

/// Kept in the store root, next to the commitlog directory.
pub const APPLIED_FILE: &str = "config.applied.json";
/// A config record is a few KiB; anything much larger is not ours.
const APPLIED_BYTES_MAX: u64 = 1 << 20;
/// Keys that place a node in its Raft group. Changing them on a node that holds replicated
/// data is a membership change, which wasmq does not do: the node's log and votes belong to
/// the old membership, and a group whose members disagree on who is in it can elect two
/// leaders.
pub const MEMBERSHIP_KEYS: [&str; 3] = ["dLegerGroup", "dLegerPeers", "dLegerSelfId"];

#[derive(serde::Serialize, serde::Deserialize)]
struct Applied {
    config: Vec<(String, String)>,
    plugins: Vec<AppliedPlugin>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AppliedPlugin {
    name: String,
    kind: String,
    sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyChange {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct ConfigChange {
    pub changed: Vec<KeyChange>,
    pub findings: Vec<Finding>,
    pub validators_run: Vec<String>,
}

impl ConfigChange {
    pub fn accepted(&self) -> bool {
        !self.findings.iter().any(|f| f.level == Level::Error)
    }

    /// One line per changed key and per finding, for logs and `mqbroker --check`.
    pub fn render(&self) -> String {
        let show = |v: &Option<String>| v.as_deref().map_or("(unset)".to_owned(), |v| format!("{v:?}"));
        let mut out = String::new();
        for c in &self.changed {
            out.push_str(&format!("  changed {}: {} -> {}\n", c.key, show(&c.old), show(&c.new)));
        }
        for f in &self.findings {
            let level = match f.level {
                Level::Info => "INFO",
                Level::Warning => "WARNING",
                Level::Error => "ERROR",
            };
            out.push_str(&format!("  {level} {} ({}): {}\n", f.code, f.by, f.text));
        }
        out
    }
}

fn applied_path(config: &BrokerConfig) -> PathBuf {
    config.store_root().join(APPLIED_FILE)
}

fn read_applied(path: &Path) -> Result<Option<Applied>, UpgradeError> {
    let io = |e: std::io::Error| UpgradeError::Io { path: path.to_path_buf(), why: e.to_string() };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.len() > APPLIED_BYTES_MAX {
        return Err(UpgradeError::Io {
            path: path.to_path_buf(),
            why: format!("{} bytes, more than a config record can be ({APPLIED_BYTES_MAX})", meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let applied = serde_json::from_slice(&bytes).map_err(|e| UpgradeError::Io {
        path: path.to_path_buf(),
        why: format!("not a config record ({e}); delete it to start without comparing configs"),
    })?;
    Ok(Some(applied))
}

fn diff(old: &[(String, String)], new: &[(String, String)]) -> Vec<KeyChange> {
    let get = |pairs: &[(String, String)], key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mut keys: Vec<&str> = old.iter().chain(new).map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (a, b) = (get(old, key), get(new, key));
            (a != b).then(|| KeyChange { key: key.to_owned(), old: a, new: b })
        })
        .collect()
}

/// The host's own refusals: changes the store cannot survive whatever the plugins say.
fn builtin_findings(config: &BrokerConfig, changed: &[KeyChange], findings: &mut Vec<Finding>) {
    let holds_data = std::fs::read_dir(config.commit_log_dir()).map(|mut d| d.next().is_some()).unwrap_or(false);
    if !holds_data {
        return;
    }
    let mut wasmq = |code: &str, text: String| {
        findings.push(Finding { level: Level::Error, code: code.into(), text, by: "wasmq" });
    };
    for c in changed {
        if c.key == "enableDLegerCommitLog" {
            let text = if config.enable_d_leger_commit_log {
                "enableDLegerCommitLog changes to true on a store written without replication: \
                 convert it with `mqadmin upgradeCheck` / `mqadmin upgrade` instead"
            } else {
                "enableDLegerCommitLog changes to false on a replicated store: its entries belong to \
                 the Raft group; serve it from the group"
            };
            wasmq("replication-switch", text.to_owned());
        }
        if c.key == "mappedFileSizeCommitLog" {
            // The store would refuse to open anyway; saying so here lets `--check` tell.
            wasmq(
                "segment-size",
                format!(
                    "mappedFileSizeCommitLog changes from {} to {} on a store that holds data: its \
                     segments keep the size they were written with; keep the old value",
                    c.old.as_deref().unwrap_or("the default"),
                    c.new.as_deref().unwrap_or("the default")
                ),
            );
        }
        if config.enable_d_leger_commit_log && MEMBERSHIP_KEYS.contains(&c.key.as_str()) {
            wasmq(
                "membership-change",
                format!(
                    "{} changes on a node that holds replicated data: that is a Raft membership change, \
                     which wasmq does not support; keep the old value",
                    c.key
                ),
            );
        }
    }
}

/// Compares `config` with what this store last ran with. `None`: nothing to compare or no
/// change. Reads only; the validators' compile cache lives in a temporary directory.
pub fn check(config: &BrokerConfig) -> Result<Option<ConfigChange>, UpgradeError> {
    let Some(applied) = read_applied(&applied_path(config))? else { return Ok(None) };
    let new_config = config_pairs(config);
    let changed = diff(&applied.config, &new_config);
    if changed.is_empty() {
        return Ok(None);
    }
    let mut findings = Vec::new();
    builtin_findings(config, &changed, &mut findings);
    let mut validators_run = Vec::new();
    match config.plugin_dir() {
        None => findings.push(Finding {
            level: Level::Info,
            code: "no-validators".into(),
            text: "no pluginDir: no upgrade-validator plugins ran".into(),
            by: "wasmq",
        }),
        Some(dir) => {
            let membership = changed.iter().any(|c| MEMBERSHIP_KEYS.contains(&c.key.as_str()));
            let old_plugins: Vec<PluginVersion> = applied
                .plugins
                .into_iter()
                .map(|p| PluginVersion { name: p.name, kind: p.kind, sha256: p.sha256 })
                .collect();
            let outcome = validators::ask(&dir, |versions| {
                let change = Change {
                    kind: if membership { ChangeKind::Membership } else { ChangeKind::Config },
                    old_config: applied.config.clone(),
                    new_config: new_config.clone(),
                    nodes: Vec::new(),
                    old_plugins,
                    new_plugins: versions.to_vec(),
                };
                vec![(format!("node {}", config.node_id()), change)]
            })?;
            validators_run = outcome.validators;
            findings.extend(outcome.findings);
        }
    }
    Ok(Some(ConfigChange { changed, findings, validators_run }))
}

/// Records `config` and the plugins loaded with it as what this store runs with. Written to
/// a temporary file, synced, then renamed over the old record: a crash leaves one or the other.
pub fn record_applied(config: &BrokerConfig, plugins: &[PluginVersion]) -> Result<(), UpgradeError> {
    let path = applied_path(config);
    let applied = Applied {
        config: config_pairs(config),
        plugins: plugins
            .iter()
            .map(|p| AppliedPlugin { name: p.name.clone(), kind: p.kind.clone(), sha256: p.sha256.clone() })
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&applied).expect("config record serializes");
    let tmp = path.with_extension("json.tmp");
    super::apply::write_synced(&tmp, &bytes)?;
    std::fs::rename(&tmp, &path).map_err(|e| UpgradeError::Io { path, why: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn diff_names_changed_added_and_removed_keys() {
        let old = pairs(&[("a", "1"), ("b", "2"), ("gone", "x")]);
        let new = pairs(&[("a", "1"), ("b", "3"), ("fresh", "y")]);
        let d = diff(&old, &new);
        assert_eq!(
            d,
            vec![
                KeyChange { key: "b".into(), old: Some("2".into()), new: Some("3".into()) },
                KeyChange { key: "fresh".into(), old: None, new: Some("y".into()) },
                KeyChange { key: "gone".into(), old: Some("x".into()), new: None },
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }

    fn config_in(root: &Path) -> BrokerConfig {
        BrokerConfig { store_path_root_dir: root.display().to_string(), ..BrokerConfig::default() }
    }

    #[test]
    fn first_start_and_unchanged_config_have_nothing_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        assert!(check(&config).unwrap().is_none(), "no record yet");
        record_applied(&config, &[]).unwrap();
        assert!(check(&config).unwrap().is_none(), "same config");
        let changed = BrokerConfig { max_message_size: config.max_message_size * 2, ..config.clone() };
        let change = check(&changed).unwrap().expect("a change");
        assert!(change.accepted(), "{change:?}");
        assert_eq!(change.changed.len(), 1, "{change:?}");
        assert_eq!(change.changed[0].key, "maxMessageSize");
        assert!(change.render().contains("changed maxMessageSize"), "{}", change.render());
    }

    #[test]
    fn replication_switch_membership_and_segment_size_on_a_store_with_data_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let standalone = config_in(dir.path());
        record_applied(&standalone, &[]).unwrap();
        let replicated = BrokerConfig {
            enable_d_leger_commit_log: true,
            d_leger_group: "g".into(),
            d_leger_peers: "n0-127.0.0.1:40911".into(),
            d_leger_self_id: "n0".into(),
            ..standalone.clone()
        };
        // An empty store may switch: nothing in it belongs to either mode.
        assert!(check(&replicated).unwrap().expect("a change").accepted());
        std::fs::create_dir_all(standalone.commit_log_dir()).unwrap();
        std::fs::write(standalone.commit_log_dir().join("00000000000000000000"), b"x").unwrap();
        let change = check(&replicated).unwrap().expect("a change");
        assert!(!change.accepted());
        assert!(change.findings.iter().any(|f| f.code == "replication-switch" && f.by == "wasmq"), "{change:?}");

        record_applied(&replicated, &[]).unwrap();
        let moved = BrokerConfig { d_leger_peers: "n0-127.0.0.1:40921".into(), ..replicated.clone() };
        let change = check(&moved).unwrap().expect("a change");
        assert!(!change.accepted());
        let finding = change.findings.iter().find(|f| f.code == "membership-change").expect("membership refusal");
        assert!(finding.text.contains("dLegerPeers"), "{finding:?}");

        let resized = BrokerConfig { mapped_file_size_commit_log: 128 << 20, ..replicated.clone() };
        let change = check(&resized).unwrap().expect("a change");
        assert!(!change.accepted());
        let finding = change.findings.iter().find(|f| f.code == "segment-size").expect("segment size refusal");
        assert!(finding.text.contains("134217728"), "{finding:?}");
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        std::fs::write(dir.path().join(APPLIED_FILE), b"{not json").unwrap();
        let err = check(&config).unwrap_err().to_string();
        assert!(err.contains(APPLIED_FILE) && err.contains("delete it"), "{err}");
    }
}

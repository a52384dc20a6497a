//! wasmq upgrade-validator plugin.
//!
//! - `enable-replication`: every pair of nodes must agree on their commitlogs. Refused (error
//!   findings) when two nodes report different CRC32C over the same byte range, or when one
//!   node's last entry cannot be a prefix of another's log (same last index but a different
//!   entry, a later term on the shorter log, more bytes with fewer entries). Findings name
//!   the nodes and the offset where they diverge. Pairs whose shared byte span no range
//!   covers get a warning: agreement could not be checked.
//! - any change with configs: reports identity keys (`brokerClusterName`, `brokerName`,
//!   ... or the manifest's `identityKeys`, comma-separated) that change or disappear: a
//!   warning while converting a cluster (`enable-replication`, configs are rewritten on
//!   purpose), an error that refuses a rolling `config` or `membership` change of a running
//!   node (its data and its place in the group are tied to them).
//! - `plugin`: warns when a plugin keeps its name but changes kind.

pub mod commitlog;
pub mod config_diff;

use wasmq_plugin_sdk::upgrade_validator::{
    Change, ChangeKind, Finding, Severity, UpgradeValidator, Verdict, verdict_from,
};

/// Config keys that name a broker's place in the cluster or its data: changing them on a
/// running broker orphans data or splits the cluster.
pub const DEFAULT_IDENTITY_KEYS: &[&str] =
    &["brokerClusterName", "brokerName", "dLegerGroup", "dLegerSelfId", "storePathRootDir", "storePathCommitLog"];

pub struct ReplicationValidator {
    identity_keys: Vec<String>,
}

pub fn finding(severity: Severity, code: &str, text: String) -> Finding {
    Finding { severity, code: code.to_owned(), text }
}

impl ReplicationValidator {
    pub fn new(identity_keys: Vec<String>) -> Self {
        ReplicationValidator { identity_keys }
    }

    pub fn check(&self, change: &Change) -> Verdict {
        let mut findings = Vec::new();
        if change.kind == ChangeKind::EnableReplication {
            commitlog::check_nodes(&change.nodes, &mut findings);
        }
        if change.kind == ChangeKind::Plugin {
            config_diff::check_plugins(&change.old_plugins, &change.new_plugins, &mut findings);
        }
        let severity = match change.kind {
            ChangeKind::Config | ChangeKind::Membership => Severity::Error,
            ChangeKind::EnableReplication | ChangeKind::Plugin => Severity::Warning,
        };
        config_diff::check_identity(
            &self.identity_keys,
            severity,
            &change.old_config,
            &change.new_config,
            &mut findings,
        );
        verdict_from(findings)
    }
}

impl UpgradeValidator for ReplicationValidator {
    fn init() -> Result<Self, String> {
        let keys = match wasmq_plugin_sdk::config("identityKeys") {
            Some(list) => list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect(),
            None => DEFAULT_IDENTITY_KEYS.iter().map(|k| k.to_string()).collect(),
        };
        Ok(ReplicationValidator::new(keys))
    }

    fn validate(&self, change: &Change) -> Verdict {
        self.check(change)
    }
}

wasmq_plugin_sdk::export_upgrade_validator!(ReplicationValidator);

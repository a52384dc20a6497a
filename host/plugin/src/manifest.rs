//! `NAME.toml`: what a plugin is, where it applies and what it may spend.
//! Format: "Plugin directory contract" in ARCHITECTURE.md. Unknown keys are
//! errors, so a typo (`fuelPercall`) cannot silently fall back to a default.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::PluginError;

/// Upper bounds a manifest may ask for. A manifest asking for more is refused
/// (not clamped) so that what runs is what the file says.
pub const FUEL_PER_CALL_MAX: u64 = 10_000_000_000;
pub const FUEL_PER_CALL_DEFAULT: u64 = 50_000_000;
pub const MEMORY_BYTES_MAX: u64 = 1 << 30;
pub const MEMORY_BYTES_MIN: u64 = 64 * 1024;
pub const MEMORY_BYTES_DEFAULT: u64 = 32 * 1024 * 1024;
pub const CONFIG_KEYS_MAX: usize = 256;
pub const CONFIG_VALUE_BYTES_MAX: usize = 64 * 1024;
pub const PATTERNS_MAX: usize = 256;
pub const PATTERN_BYTES_MAX: usize = 255;
pub const DESCRIPTION_BYTES_MAX: usize = 4096;
pub const MANIFEST_BYTES_MAX: u64 = 1024 * 1024;
pub const PLUGIN_NAME_BYTES_MAX: usize = 64;

/// Which world of `wit/policy.wit` a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    Router,
    Filter,
    UpgradeValidator,
}

impl PluginKind {
    /// The manifest spelling, also used as `plugin-version.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Router => "router",
            PluginKind::Filter => "filter",
            PluginKind::UpgradeValidator => "upgrade-validator",
        }
    }

    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Router => "router-plugin",
            PluginKind::Filter => "filter-plugin",
            PluginKind::UpgradeValidator => "upgrade-validator-plugin",
        }
    }

    /// The interface the world exports (its instance name in the component).
    pub fn export_name(self) -> &'static str {
        match self {
            PluginKind::Router => "wasmq:policy/router@0.1.0",
            PluginKind::Filter => "wasmq:policy/filter@0.1.0",
            PluginKind::UpgradeValidator => "wasmq:policy/upgrade-validator@0.1.0",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed call (trap, fuel, memory, bad result) means for that call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Behave as if the plugin had no opinion: router → next router / default
    /// queue; filter → deliver; validator → warning finding only.
    Pass,
    /// Fail closed: router → the send is rejected; filter → the filter call
    /// returns the error (nothing is delivered or skipped); validator → the
    /// change is refused.
    Reject,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Pass => "pass",
            OnError::Reject => "reject",
        }
    }
}

/// A parsed, checked manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub kind: PluginKind,
    pub topics: Vec<String>,
    pub groups: Vec<String>,
    pub order: i64,
    pub on_error: OnError,
    pub wants_body: bool,
    pub description: String,
    pub fuel_per_call: u64,
    pub memory_bytes_max: u64,
    /// `[config]`, every value rendered as a string (TOML strings verbatim,
    /// other values in TOML syntax).
    pub config: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ManifestFile {
    kind: PluginKind,
    topics: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    order: Option<i64>,
    on_error: Option<OnError>,
    wants_body: Option<bool>,
    description: Option<String>,
    limits: Option<LimitsFile>,
    config: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LimitsFile {
    fuel_per_call: Option<u64>,
    memory_bytes_max: Option<u64>,
}

impl Manifest {
    /// Reads and checks `path`. Errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<Manifest, PluginError> {
        let metadata = std::fs::metadata(path).map_err(|source| PluginError::Io { path: path.to_owned(), source })?;
        if metadata.len() > MANIFEST_BYTES_MAX {
            return Err(PluginError::Manifest {
                path: path.to_owned(),
                message: format!("file is {} bytes, the limit is {MANIFEST_BYTES_MAX}", metadata.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| PluginError::Io { path: path.to_owned(), source })?;
        Manifest::parse(&text).map_err(|message| PluginError::Manifest { path: path.to_owned(), message })
    }

    /// Parses manifest text; the error is a message naming the key.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let file: ManifestFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let kind = file.kind;

        let topics = file.topics.unwrap_or_else(|| vec!["*".to_owned()]);
        check_patterns("topics", &topics)?;
        if file.groups.is_some() && kind != PluginKind::Filter {
            return Err(format!("key `groups` applies to filters only, this manifest has kind = \"{kind}\""));
        }
        let groups = file.groups.unwrap_or_else(|| vec!["*".to_owned()]);
        check_patterns("groups", &groups)?;
        if file.wants_body.is_some() && kind != PluginKind::Filter {
            return Err(format!(
                "key `wantsBody` applies to filters only (a router says so through its `wants-body` export), this manifest has kind = \"{kind}\""
            ));
        }

        let description = file.description.unwrap_or_default();
        if description.len() > DESCRIPTION_BYTES_MAX {
            return Err(format!(
                "key `description`: {} bytes, the limit is {DESCRIPTION_BYTES_MAX}",
                description.len()
            ));
        }

        let limits = file.limits.unwrap_or(LimitsFile { fuel_per_call: None, memory_bytes_max: None });
        let fuel_per_call = limits.fuel_per_call.unwrap_or(FUEL_PER_CALL_DEFAULT);
        if !(1..=FUEL_PER_CALL_MAX).contains(&fuel_per_call) {
            return Err(format!("key `limits.fuelPerCall` = {fuel_per_call}: must be in 1..={FUEL_PER_CALL_MAX}"));
        }
        let memory_bytes_max = limits.memory_bytes_max.unwrap_or(MEMORY_BYTES_DEFAULT);
        if !(MEMORY_BYTES_MIN..=MEMORY_BYTES_MAX).contains(&memory_bytes_max) {
            return Err(format!(
                "key `limits.memoryBytesMax` = {memory_bytes_max}: must be in {MEMORY_BYTES_MIN}..={MEMORY_BYTES_MAX}"
            ));
        }

        let table = file.config.unwrap_or_default();
        if table.len() > CONFIG_KEYS_MAX {
            return Err(format!("table `config` has {} keys, the limit is {CONFIG_KEYS_MAX}", table.len()));
        }
        let mut config = BTreeMap::new();
        for (key, value) in table {
            let rendered = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            if rendered.len() > CONFIG_VALUE_BYTES_MAX {
                return Err(format!(
                    "key `config.{key}`: value is {} bytes, the limit is {CONFIG_VALUE_BYTES_MAX}",
                    rendered.len()
                ));
            }
            config.insert(key, rendered);
        }

        // Validators guard upgrades: a broken one must not wave changes
        // through unless its manifest says so explicitly.
        let on_error = file.on_error.unwrap_or(match kind {
            PluginKind::UpgradeValidator => OnError::Reject,
            PluginKind::Router | PluginKind::Filter => OnError::Pass,
        });

        Ok(Manifest {
            kind,
            topics,
            groups,
            order: file.order.unwrap_or(0),
            on_error,
            wants_body: file.wants_body.unwrap_or(false),
            description,
            fuel_per_call,
            memory_bytes_max,
            config,
        })
    }

    pub fn applies_to_topic(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| p == "*" || p == topic)
    }

    pub fn applies_to_group(&self, group: &str) -> bool {
        self.groups.iter().any(|p| p == "*" || p == group)
    }
}

fn check_patterns(key: &str, patterns: &[String]) -> Result<(), String> {
    if patterns.is_empty() {
        return Err(format!("key `{key}` is empty; use [\"*\"] for all or remove the plugin"));
    }
    if patterns.len() > PATTERNS_MAX {
        return Err(format!("key `{key}` has {} entries, the limit is {PATTERNS_MAX}", patterns.len()));
    }
    for p in patterns {
        if p.is_empty() || p.len() > PATTERN_BYTES_MAX {
            return Err(format!("key `{key}`: entry {p:?} must be 1..={PATTERN_BYTES_MAX} bytes"));
        }
    }
    Ok(())
}

/// A plugin's name is its file stem: `[A-Za-z0-9_.-]`, 1..=64 bytes, not
/// starting with `.` (editors' and our own temporary files do).
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > PLUGIN_NAME_BYTES_MAX {
        return Err(format!("plugin name {name:?} must be 1..={PLUGIN_NAME_BYTES_MAX} bytes"));
    }
    if name.starts_with('.') {
        return Err(format!("plugin name {name:?} must not start with '.'"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
        return Err(format!("plugin name {name:?} may contain only ASCII letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_manifest_parses() {
        let m = Manifest::parse(
            r#"
kind = "filter"
topics = ["orders", "payments"]
groups = ["g1"]
order = 10
onError = "reject"
wantsBody = true
description = "tag filter"

[limits]
fuelPerCall = 1_000_000
memoryBytesMax = 1048576

[config]
mode = "strict"
threshold = 42
"#,
        )
        .unwrap();
        assert_eq!(m.kind, PluginKind::Filter);
        assert_eq!(m.topics, vec!["orders", "payments"]);
        assert!(m.applies_to_topic("orders"));
        assert!(!m.applies_to_topic("other"));
        assert!(m.applies_to_group("g1"));
        assert!(!m.applies_to_group("g2"));
        assert_eq!(m.order, 10);
        assert_eq!(m.on_error, OnError::Reject);
        assert!(m.wants_body);
        assert_eq!(m.fuel_per_call, 1_000_000);
        assert_eq!(m.memory_bytes_max, 1_048_576);
        assert_eq!(m.config["mode"], "strict");
        assert_eq!(m.config["threshold"], "42");
    }

    #[test]
    fn defaults_per_kind() {
        let r = Manifest::parse("kind = \"router\"").unwrap();
        assert_eq!(r.topics, vec!["*"]);
        assert!(r.applies_to_topic("anything"));
        assert_eq!(r.on_error, OnError::Pass);
        assert_eq!(r.fuel_per_call, FUEL_PER_CALL_DEFAULT);
        let v = Manifest::parse("kind = \"upgrade-validator\"").unwrap();
        assert_eq!(v.on_error, OnError::Reject);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Manifest::parse("kind = \"filter\"\nfuelPerCall = 5").unwrap_err();
        assert!(err.contains("fuelPerCall"), "{err}");
        let err = Manifest::parse("kind = \"filter\"\n[limits]\nfuelPercall = 5").unwrap_err();
        assert!(err.contains("fuelPercall"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Manifest::parse("kind = \"gateway\"").unwrap_err();
        assert!(err.contains("gateway"), "{err}");
        let err = Manifest::parse("topics = [\"*\"]").unwrap_err();
        assert!(err.contains("kind"), "{err}");
        let err = Manifest::parse("kind = \"filter\"\n[limits]\nmemoryBytesMax = 10").unwrap_err();
        assert!(err.contains("limits.memoryBytesMax"), "{err}");
        let err = Manifest::parse("kind = \"filter\"\n[limits]\nfuelPerCall = 0").unwrap_err();
        assert!(err.contains("limits.fuelPerCall"), "{err}");
        let err = Manifest::parse("kind = \"router\"\ngroups = [\"g\"]").unwrap_err();
        assert!(err.contains("groups"), "{err}");
        let err = Manifest::parse("kind = \"filter\"\ntopics = []").unwrap_err();
        assert!(err.contains("topics"), "{err}");
        let err = Manifest::parse("kind = \"filter\"\nonError = \"ignore\"").unwrap_err();
        assert!(err.contains("ignore"), "{err}");
    }

    #[test]
    fn plugin_names() {
        assert!(check_plugin_name("tag-filter_2.v1").is_ok());
        assert!(check_plugin_name("").is_err());
        assert!(check_plugin_name(".hidden").is_err());
        assert!(check_plugin_name("a b").is_err());
        assert!(check_plugin_name(&"x".repeat(65)).is_err());
    }
}

//! Asking a plugin directory's upgrade-validator plugins about changes from outside a running
//! broker (`upgradeCheck`, a broker about to start with a changed config, `mqbroker --check`):
//! a throwaway registry with its compile cache in a temporary directory, no watcher.

use std::collections::BTreeSet;
use std::path::Path;

use wasmq_plugin::validation::{Change, PluginVersion, Severity};
use wasmq_plugin::{PluginKind, PluginRegistry, RegistryConfig};

use super::UpgradeError;
use super::plan::{Finding, Level};

pub struct Outcome {
    /// Names of the upgrade-validator plugins that ran.
    pub validators: Vec<String>,
    /// Every plugin in the directory, as validators see plugin sets.
    pub plugins: Vec<PluginVersion>,
    /// Findings of all calls, without repeats, plus the host's own about loading.
    pub findings: Vec<Finding>,
}

/// Opens `dir`, builds the changes from its plugin versions, and asks every validator about
/// each `(subject, change)`. A refusal without an error finding becomes one, naming `subject`.
pub fn ask(
    dir: &Path,
    changes: impl FnOnce(&[PluginVersion]) -> Vec<(String, Change)>,
) -> Result<Outcome, UpgradeError> {
    let cache = std::env::temp_dir().join(format!(
        "wasmq-validator-cache-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    let mut cfg = RegistryConfig::new(dir, &cache);
    cfg.watch = false;
    let opened = PluginRegistry::open_with_report(cfg);
    let result = (|| {
        let (registry, report) = opened.map_err(|e| UpgradeError::Plugins(e.to_string()))?;
        let mut findings = Vec::new();
        for (name, error) in &report.rejected {
            findings.push(Finding {
                level: Level::Error,
                code: "plugin-load".into(),
                text: format!("plugin {name} did not load: {error}"),
                by: "plugins",
            });
        }
        let list = registry.list();
        let validators: Vec<String> =
            list.iter().filter(|p| p.kind == PluginKind::UpgradeValidator).map(|p| p.name.clone()).collect();
        if validators.is_empty() {
            findings.push(Finding {
                level: Level::Warning,
                code: "no-validators".into(),
                text: format!("{} holds no upgrade-validator plugin", dir.display()),
                by: "wasmq",
            });
        }
        let plugins: Vec<PluginVersion> = list
            .iter()
            .map(|p| PluginVersion { name: p.name.clone(), kind: p.kind.as_str().into(), sha256: p.sha256.clone() })
            .collect();
        let mut seen = BTreeSet::new();
        for (subject, change) in changes(&plugins) {
            let verdict = registry.validate(&change);
            let mut refused = !verdict.accept;
            for f in verdict.findings {
                let level = match f.severity {
                    Severity::Info => Level::Info,
                    Severity::Warning => Level::Warning,
                    Severity::Error => Level::Error,
                };
                refused &= level != Level::Error;
                if seen.insert((f.code.clone(), f.text.clone())) {
                    findings.push(Finding { level, code: f.code, text: f.text, by: "plugins" });
                }
            }
            if refused && seen.insert(("refused".into(), subject.clone())) {
                // accept = false without an error finding: still a refusal, say so.
                findings.push(Finding {
                    level: Level::Error,
                    code: "refused".into(),
                    text: format!("a validator refused the change for {subject} without an error finding"),
                    by: "plugins",
                });
            }
        }
        Ok(Outcome { validators, plugins, findings })
    })();
    let _ = std::fs::remove_dir_all(&cache);
    result
}

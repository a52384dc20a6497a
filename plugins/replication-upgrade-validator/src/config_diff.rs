//! Config and plugin-set differences worth a warning.

use wasmq_plugin_sdk::upgrade_validator::{Finding, PluginVersion, Severity};

use crate::finding;

fn lookup<'a>(config: &'a [(String, String)], key: &str) -> Option<&'a str> {
    config.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Reports every identity key whose value changes or disappears, with `severity` (a warning
/// while converting a cluster, where configs are rewritten on purpose; an error for a rolling
/// change to a running group, where it orphans the node's data). Nothing is reported when a
/// side is empty: that change carries no config.
pub fn check_identity(
    identity_keys: &[String],
    severity: Severity,
    old: &[(String, String)],
    new: &[(String, String)],
    findings: &mut Vec<Finding>,
) {
    if old.is_empty() || new.is_empty() {
        return;
    }
    for key in identity_keys {
        match (lookup(old, key), lookup(new, key)) {
            (Some(a), Some(b)) if a != b => findings.push(finding(
                severity,
                "identity-config-change",
                format!("{key} changes from {a:?} to {b:?}: the broker's data and cluster membership are tied to it"),
            )),
            (Some(a), None) => findings.push(finding(
                severity,
                "identity-config-removed",
                format!("{key} (was {a:?}) is removed: the broker falls back to the default"),
            )),
            (None, Some(b)) => findings.push(finding(
                Severity::Info,
                "identity-config-set",
                format!("{key} is set to {b:?} (was the default)"),
            )),
            _ => {}
        }
    }
}

/// Warns when a plugin keeps its name but changes kind; reports other plugin changes as info.
pub fn check_plugins(old: &[PluginVersion], new: &[PluginVersion], findings: &mut Vec<Finding>) {
    for n in new {
        match old.iter().find(|o| o.name == n.name) {
            Some(o) if o.kind != n.kind => findings.push(finding(
                Severity::Warning,
                "plugin-kind-change",
                format!("plugin {} changes kind from {} to {}", n.name, o.kind, n.kind),
            )),
            Some(o) if o.sha256 != n.sha256 => findings.push(finding(
                Severity::Info,
                "plugin-replaced",
                format!("plugin {} ({}) is replaced: {} -> {}", n.name, n.kind, short(&o.sha256), short(&n.sha256)),
            )),
            Some(_) => {}
            None => findings.push(finding(
                Severity::Info,
                "plugin-added",
                format!("plugin {} ({}) is added", n.name, n.kind),
            )),
        }
    }
    for o in old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)) {
        findings.push(finding(Severity::Info, "plugin-removed", format!("plugin {} ({}) is removed", o.name, o.kind)));
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn keys() -> Vec<String> {
        crate::DEFAULT_IDENTITY_KEYS.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn identity_changes_warn_other_changes_do_not() {
        let old = cfg(&[("brokerClusterName", "A"), ("brokerName", "b1"), ("flushDiskType", "ASYNC_FLUSH")]);
        let new = cfg(&[("brokerClusterName", "B"), ("flushDiskType", "SYNC_FLUSH"), ("dLegerGroup", "g")]);
        let mut f = Vec::new();
        check_identity(&keys(), Severity::Warning, &old, &new, &mut f);
        let codes: Vec<_> = f.iter().map(|f| (f.code.as_str(), f.severity)).collect();
        assert_eq!(
            codes,
            [
                ("identity-config-change", Severity::Warning),
                ("identity-config-removed", Severity::Warning),
                ("identity-config-set", Severity::Info)
            ]
        );
        assert!(f[0].text.contains("brokerClusterName") && f[0].text.contains("\"A\"") && f[0].text.contains("\"B\""));
        let mut f = Vec::new();
        check_identity(&keys(), Severity::Warning, &old, &old, &mut f);
        assert!(f.is_empty());
        check_identity(&keys(), Severity::Warning, &[], &new, &mut f);
        assert!(f.is_empty());
        check_identity(&keys(), Severity::Error, &old, &new, &mut f);
        let severities: Vec<_> = f.iter().map(|f| f.severity).collect();
        assert_eq!(severities, [Severity::Error, Severity::Error, Severity::Info]);
    }

    #[test]
    fn plugin_changes() {
        let p = |name: &str, kind: &str, sha: &str| PluginVersion {
            name: name.into(),
            kind: kind.into(),
            sha256: sha.into(),
        };
        let old = vec![p("a", "filter", "1"), p("b", "router", "2"), p("gone", "filter", "3")];
        let new = vec![p("a", "router", "1"), p("b", "router", "22"), p("fresh", "filter", "4")];
        let mut f = Vec::new();
        check_plugins(&old, &new, &mut f);
        let codes: Vec<_> = f.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["plugin-kind-change", "plugin-replaced", "plugin-added", "plugin-removed"]);
        assert_eq!(f[0].severity, Severity::Warning);
    }
}

//! The real guest plugins from `plugins/dist/` (built by `plugins/build.sh`):
//! Rust, Python and JS filters, the key-hash router, the replication
//! validator and the failure plugins (loop, alloc, trap, wrong world).
//! Missing components fail these tests with a message saying how to build
//! them; they never pass silently.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{init_tracing, write_atomically};
use wasmq_plugin::validation::{Change, ChangeKind, NodeSummary, RangeChecksum, Severity};
use wasmq_plugin::{
    ExpressionKind, FilterMessage, PluginError, PluginRegistry, Properties, RegistryConfig, RouteInput, RouteOutcome,
};

fn dist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist")
}

/// `plugins/dist/NAME.wasm`, or a failure telling how to build it.
fn dist_wasm(name: &str) -> Vec<u8> {
    let path = dist_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. These tests need the guest plugins: run plugins/build.sh (from the repo root) first",
            path.display()
        )
    })
}

fn dist_manifest(name: &str) -> String {
    let path = dist_dir().join(format!("{name}.toml"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}. Run plugins/build.sh (from the repo root) first", path.display()))
}

struct Plugins {
    dir: tempfile::TempDir,
}

impl Plugins {
    fn new() -> Plugins {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        Plugins { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Installs the dist plugin `name` with its own manifest or `manifest`.
    fn add(&self, name: &str, manifest: Option<&str>) -> &Self {
        let manifest = manifest.map(str::to_owned).unwrap_or_else(|| dist_manifest(name));
        common::install(self.path(), name, &dist_wasm(name), &manifest);
        self
    }

    fn config(&self) -> RegistryConfig {
        // One compile cache for every test run: Python/JS compile in seconds.
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasmq-plugin-cache");
        let mut config = RegistryConfig::new(self.path(), cache);
        config.watch = false;
        config
    }

    fn open(&self) -> PluginRegistry {
        let (registry, report) = PluginRegistry::open_with_report(self.config()).unwrap();
        assert!(report.rejected.is_empty(), "{report:#?}");
        registry
    }
}

struct Msg {
    tag: Option<&'static str>,
    props: Vec<(String, String)>,
}

fn msg(tag: Option<&'static str>, props: &[(&str, &str)]) -> Msg {
    Msg { tag, props: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

fn views(msgs: &[Msg]) -> Vec<FilterMessage<'_>> {
    msgs.iter()
        .enumerate()
        .map(|(i, m)| FilterMessage {
            tag: m.tag,
            keys: &[],
            properties: Properties::Pairs(&m.props),
            queue_offset: i as u64,
            body: b"",
        })
        .collect()
}

fn sample() -> Vec<Msg> {
    vec![
        msg(Some("TagA"), &[("region", "eu"), ("price", "5")]),
        msg(Some("TagB"), &[("region", "us"), ("price", "50")]),
        msg(None, &[]),
        msg(Some("TagC"), &[("region", "ap"), ("price", "500")]),
    ]
}

fn tag_verdicts(registry: &PluginRegistry, expression: &str) -> Vec<bool> {
    let msgs = sample();
    registry.filter("g", "orders", ExpressionKind::Tag, expression, &views(&msgs)).unwrap()
}

fn check_tag_semantics(registry: &PluginRegistry) {
    assert_eq!(tag_verdicts(registry, "*"), [true, true, true, true]);
    assert_eq!(tag_verdicts(registry, "TagA"), [true, false, false, false]);
    assert_eq!(tag_verdicts(registry, "TagA || TagC"), [true, false, false, true]);
    assert_eq!(tag_verdicts(registry, "TagZ"), [false, false, false, false]);
}

#[test]
fn rust_tag_filter_handles_tag_and_sql92() {
    let p = Plugins::new();
    p.add("tag-filter", None);
    let registry = p.open();
    check_tag_semantics(&registry);
    let msgs = sample();
    let sql = |e: &str| registry.filter("g", "orders", ExpressionKind::Sql92, e, &views(&msgs)).unwrap();
    assert_eq!(sql("price > 10"), [false, true, false, true]);
    assert_eq!(sql("region IN ('eu', 'us') AND price > 1"), [true, true, false, false]);
    let info = &registry.list()[0];
    assert_eq!(info.errors, 0);
    assert!(info.calls >= 6);
}

#[test]
fn python_tag_filter_agrees_with_the_rust_one() {
    let p = Plugins::new();
    p.add("tag-filter-py", None);
    let registry = p.open();
    check_tag_semantics(&registry);
    assert_eq!(registry.list()[0].errors, 0);
}

#[test]
fn js_tag_filter_agrees_with_the_rust_one() {
    let p = Plugins::new();
    p.add("tag-filter-js", None);
    let registry = p.open();
    check_tag_semantics(&registry);
    assert_eq!(registry.list()[0].errors, 0);
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[test]
fn key_hash_router_routes_by_key_and_config() {
    let p = Plugins::new();
    let manifest = format!(
        "{}\n\"override.audit\" = \"0\"\n\"reject.legacy\" = \"legacy is closed\"\n\"redirect.orders-v1\" = \"orders\"\n",
        dist_manifest("key-hash-router")
    );
    p.add("key-hash-router", Some(&manifest));
    let registry = p.open();
    fn input<'a>(topic: &'a str, group: Option<&'a str>, keys: &'a [String]) -> RouteInput<'a> {
        RouteInput { topic, tag: None, keys, properties: &[], message_group: group, body: b"", queue_count: 8 }
    }
    let keys = &["order-17".to_owned()][..];
    assert_eq!(
        registry.route(&input("orders", None, keys)).unwrap(),
        RouteOutcome::Queue((fnv1a64(b"order-17") % 8) as u32)
    );
    assert_eq!(
        registry.route(&input("orders", Some("fifo-group-3"), keys)).unwrap(),
        RouteOutcome::Queue((fnv1a64(b"fifo-group-3") % 8) as u32),
        "the message group wins over keys"
    );
    assert_eq!(registry.route(&input("orders", None, &[])).unwrap(), RouteOutcome::Default);
    assert_eq!(registry.route(&input("audit", None, keys)).unwrap(), RouteOutcome::Queue(0));
    assert_eq!(registry.route(&input("legacy", None, keys)).unwrap(), RouteOutcome::Reject("legacy is closed".into()));
    assert_eq!(registry.route(&input("orders-v1", None, keys)).unwrap(), RouteOutcome::Redirect("orders".into()));
}

fn node(id: &str, last: (u64, u64, u32), ranges: &[(u64, u64, u32)]) -> NodeSummary {
    NodeSummary {
        node_id: id.to_owned(),
        address: format!("127.0.0.1:{}", 40911 + id.len()),
        replicated: false,
        min_offset: 0,
        max_offset: 4096,
        last_index: last.0,
        last_term: last.1,
        last_entry_crc32c: last.2,
        checksums: ranges.iter().map(|&(start, end, crc32c)| RangeChecksum { start, end, crc32c }).collect(),
    }
}

#[test]
fn replication_validator_refuses_divergent_commitlogs() {
    let p = Plugins::new();
    p.add("replication-upgrade-validator", None);
    let registry = p.open();
    let change = |nodes: Vec<NodeSummary>| Change {
        kind: ChangeKind::EnableReplication,
        old_config: vec![],
        new_config: vec![],
        nodes,
        old_plugins: vec![],
        new_plugins: vec![],
    };
    let same = [(0, 2048, 0xaaaa), (2048, 4096, 0xbbbb)];
    let verdict = registry.validate(&change(vec![
        node("n0", (10, 1, 7), &same),
        node("n1", (10, 1, 7), &same),
        node("n2", (10, 1, 7), &same),
    ]));
    assert!(verdict.accept, "{verdict:?}");

    let diverged = [(0, 2048, 0xaaaa), (2048, 4096, 0xcccc)];
    let verdict = registry.validate(&change(vec![
        node("n0", (10, 1, 7), &same),
        node("n1", (10, 1, 7), &same),
        node("n2", (10, 1, 7), &diverged),
    ]));
    assert!(!verdict.accept, "{verdict:?}");
    let divergence =
        verdict.findings.iter().find(|f| f.code == "commitlog-divergence").unwrap_or_else(|| panic!("{verdict:?}"));
    assert_eq!(divergence.severity, Severity::Error);
    assert!(divergence.text.contains("n2") && divergence.text.contains("2048"), "{divergence:?}");
    assert!(divergence.text.starts_with("[replication-upgrade-validator]"), "{divergence:?}");

    // Identity-config changes: a warning while converting a cluster, a refusal for a rolling
    // config change of a running node; other keys change freely.
    let identity = |kind: ChangeKind, key: &str| {
        registry.validate(&Change {
            kind,
            old_config: vec![(key.into(), "a".into())],
            new_config: vec![(key.into(), "b".into())],
            ..change(vec![node("n0", (10, 1, 7), &same), node("n1", (10, 1, 7), &same)])
        })
    };
    let verdict = identity(ChangeKind::EnableReplication, "brokerName");
    assert!(verdict.accept, "{verdict:?}");
    assert!(verdict.findings.iter().any(|f| f.severity == Severity::Warning), "{verdict:?}");
    let verdict = identity(ChangeKind::Config, "brokerName");
    assert!(!verdict.accept, "{verdict:?}");
    let refusal = verdict.findings.iter().find(|f| f.severity == Severity::Error).expect("an error finding");
    assert_eq!(refusal.code, "identity-config-change");
    assert!(refusal.text.contains("brokerName"), "{refusal:?}");
    let verdict = identity(ChangeKind::Config, "maxMessageSize");
    assert!(verdict.accept && verdict.findings.is_empty(), "{verdict:?}");
}

#[test]
fn failure_plugins_fail_one_call_each_and_the_rest_keeps_serving() {
    let p = Plugins::new();
    // The dist manifests say onError = "pass" and apply to every group; here
    // each gets its own group and "reject" so the error itself is visible.
    let strict = |name: &str, group: &str| {
        dist_manifest(name)
            .replace("onError = \"pass\"", "onError = \"reject\"")
            .replace("groups = [\"*\"]", &format!("groups = [\"{group}\"]"))
    };
    p.add("tag-filter", None)
        .add("loop-filter", Some(&strict("loop-filter", "loop")))
        .add("alloc-filter", Some(&strict("alloc-filter", "alloc")))
        .add("trap-filter", Some(&strict("trap-filter", "trap")));
    let registry = p.open();
    let msgs = sample();
    let run = |group: &str| registry.filter(group, "orders", ExpressionKind::Tag, "TagA", &views(&msgs));

    let started = Instant::now();
    let err = run("loop").unwrap_err();
    assert!(matches!(&err, PluginError::FuelExhausted { plugin, .. } if plugin == "loop-filter"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "fuel stopped the loop only after {:?}", started.elapsed());
    let err = run("alloc").unwrap_err();
    assert!(
        matches!(&err, PluginError::MemoryLimit { plugin, limit_bytes: 16_777_216, .. } if plugin == "alloc-filter"),
        "{err:?}"
    );
    let err = run("trap").unwrap_err();
    assert!(matches!(&err, PluginError::Trap { plugin, .. } if plugin == "trap-filter"), "{err:?}");

    // The broker-facing registry keeps serving: tag-filter alone applies to "g".
    assert_eq!(run("g").unwrap(), [true, false, false, false]);
    // A failing plugin fails again cleanly (fresh instance each time).
    assert!(matches!(run("trap").unwrap_err(), PluginError::Trap { .. }));

    // Under onError = "pass" (the shipped loop/alloc manifests) failures deliver.
    let p = Plugins::new();
    let lax = dist_manifest("trap-filter").replace("onError = \"reject\"", "onError = \"pass\"");
    assert!(lax.contains("onError = \"pass\""), "trap-filter.toml changed shape: {lax}");
    p.add("loop-filter", None).add("alloc-filter", None).add("trap-filter", Some(&lax));
    let registry = p.open();
    assert_eq!(
        registry.filter("g", "orders", ExpressionKind::Tag, "TagA", &views(&msgs)).unwrap(),
        [true, true, true, true]
    );
    assert!(registry.list().iter().all(|i| i.errors == 1 && i.live_instances == 0), "{:#?}", registry.list());
}

#[test]
fn wrong_world_and_invalid_wasm_are_rejected_at_load() {
    let p = Plugins::new();
    p.add("tag-filter", None).add("wrong-world-router", None);
    common::install(p.path(), "truncated", &dist_wasm("tag-filter")[..1000], &dist_manifest("tag-filter"));
    let (registry, report) = PluginRegistry::open_with_report(p.config()).unwrap();
    assert_eq!(report.added, ["tag-filter"]);
    let rejected: std::collections::BTreeMap<_, _> = report.rejected.into_iter().collect();
    let wrong = &rejected["wrong-world-router"];
    assert!(
        wrong.contains("does not implement world `filter-plugin`") && wrong.contains("wasmq:policy/router@0.1.0"),
        "{wrong}"
    );
    assert!(rejected["truncated"].contains("cannot compile"), "{}", rejected["truncated"]);
    check_tag_semantics(&registry);
}

/// The key-hash router's manifest is rewritten between three queue
/// overrides while threads route continuously through the watcher-driven
/// registry: every call answers exactly one version, none fails, each swap
/// is visible within 2 s.
#[test]
fn hot_reload_of_a_real_router_under_concurrent_calls() {
    let p = Plugins::new();
    let manifest = |q: u32| format!("{}\n\"override.t\" = \"{q}\"\n", dist_manifest("key-hash-router"));
    p.add("key-hash-router", Some(&manifest(1)));
    let mut config = p.config();
    config.watch = true;
    let registry = Arc::new(PluginRegistry::open(config).unwrap());
    let input = RouteInput {
        topic: "t",
        tag: None,
        keys: &[],
        properties: &[],
        message_group: None,
        body: b"",
        queue_count: 8,
    };
    assert_eq!(registry.route(&input).unwrap(), RouteOutcome::Queue(1));

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let registry = registry.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                let mut calls = 0u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match registry.route(&input) {
                        Ok(RouteOutcome::Queue(q)) => seen.insert(q),
                        other => panic!("call answered {other:?} during a swap"),
                    };
                    calls += 1;
                }
                (seen, calls)
            })
        })
        .collect();
    let mut swap_ms = Vec::new();
    for round in 1..=6u32 {
        let q = round % 3 + 1;
        let started = Instant::now();
        write_atomically(&p.path().join("key-hash-router.toml"), manifest(q).as_bytes());
        while registry.route(&input).unwrap() != RouteOutcome::Queue(q) {
            assert!(started.elapsed() < Duration::from_secs(2), "round {round}: override {q} not live after 2 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        swap_ms.push(started.elapsed().as_millis());
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for caller in callers {
        let (seen, calls) = caller.join().expect("a caller failed");
        assert!(seen.is_subset(&BTreeSet::from([1, 2, 3])), "{seen:?}");
        total += calls;
    }
    assert_eq!(registry.list()[0].errors, 0);
    eprintln!("real router: swaps visible after {swap_ms:?} ms, {total} calls during swaps");
}

/// Swapping the filter implementation (Rust → JS → Python → Rust) under
/// continuous filtering: no call fails or answers wrongly, and the new
/// version serves once compiled (seconds for Python/JS on a cold cache).
#[test]
fn swapping_filter_languages_under_load_loses_no_call() {
    let p = Plugins::new();
    // Limits that suit all three implementations.
    let manifest = "kind = \"filter\"\n[limits]\nfuelPerCall = 500_000_000\nmemoryBytesMax = 134217728\n";
    common::install(p.path(), "f", &dist_wasm("tag-filter"), manifest);
    let mut config = p.config();
    config.watch = true;
    let registry = Arc::new(PluginRegistry::open(config).unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let registry = registry.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut calls = 0u64;
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    assert_eq!(tag_verdicts(&registry, "TagA || TagC"), [true, false, false, true]);
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for name in ["tag-filter-js", "tag-filter-py", "tag-filter"] {
        let wasm = dist_wasm(name);
        let started = Instant::now();
        write_atomically(&p.path().join("f.wasm"), &wasm);
        let sha = {
            use std::fmt::Write;
            let digest = sha256(&wasm);
            digest.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
        };
        while registry.list()[0].sha256 != sha {
            assert!(started.elapsed() < Duration::from_secs(60), "{name} not live after 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{name} live after {} ms", started.elapsed().as_millis());
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = callers.into_iter().map(|c| c.join().expect("a caller failed")).sum();
    assert!(calls > 0);
    assert_eq!(registry.list()[0].errors, 0);
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The real validator judges hot reloads: a plugin changing kind under the
/// same name gets a warning (logged), not a refusal, and the swap happens.
#[test]
fn real_validator_judges_plugin_changes_during_reload() {
    let p = Plugins::new();
    p.add("replication-upgrade-validator", None);
    common::install(p.path(), "policy", &dist_wasm("tag-filter"), &dist_manifest("tag-filter"));
    let registry = p.open();
    let calls_before = registry.list().into_iter().find(|i| i.name == "replication-upgrade-validator").unwrap().calls;
    common::install(p.path(), "policy", &dist_wasm("key-hash-router"), &dist_manifest("key-hash-router"));
    let report = registry.reload_now();
    assert_eq!(report.replaced, ["policy"], "{report:#?}");
    let info: std::collections::BTreeMap<_, _> = registry.list().into_iter().map(|i| (i.name.clone(), i)).collect();
    assert_eq!(info["policy"].kind, wasmq_plugin::PluginKind::Router);
    assert_eq!(
        info["replication-upgrade-validator"].calls,
        calls_before + 1,
        "the validator was asked about the change"
    );
}

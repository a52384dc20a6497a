//! The registry with small components built from WAT (see `common`): each
//! plugin kind changes behaviour, limits fail one call, bad files are
//! refused with clear errors, hot reload swaps atomically under load.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use wasmq_plugin::validation::{Change, ChangeKind, PluginVersion, Severity};
use wasmq_plugin::{
    ExpressionKind, FilterMessage, PluginError, PluginKind, PluginRegistry, Properties, RegistryConfig, RouteInput,
    RouteOutcome,
};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        Fixture { dir }
    }

    fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    fn config(&self) -> RegistryConfig {
        let mut config = RegistryConfig::new(self.dir.path().join("plugins"), self.dir.path().join("cache"));
        config.watch = false;
        config
    }

    fn open(&self) -> PluginRegistry {
        PluginRegistry::open(self.config()).unwrap()
    }
}

fn route_input(topic: &str, queue_count: u32) -> RouteInput<'_> {
    RouteInput { topic, tag: None, keys: &[], properties: &[], message_group: None, body: b"", queue_count }
}

fn messages<'a>(tags: &[Option<&'a str>]) -> Vec<FilterMessage<'a>> {
    tags.iter()
        .enumerate()
        .map(|(i, tag)| FilterMessage {
            tag: *tag,
            keys: &[],
            properties: Properties::Pairs(&[]),
            queue_offset: i as u64,
            body: b"",
        })
        .collect()
}

const ROUTER: &str = "kind = \"router\"\n";
const FILTER: &str = "kind = \"filter\"\n";
const VALIDATOR: &str = "kind = \"upgrade-validator\"\n";

#[test]
fn each_kind_changes_behaviour() {
    let f = Fixture::new();
    let registry = f.open();
    assert_eq!(registry.route(&route_input("orders", 8)).unwrap(), RouteOutcome::Default);
    let msgs = messages(&[Some("TagA"), Some("TagB"), None]);
    assert_eq!(
        registry.filter("g", "orders", ExpressionKind::Tag, "TagA", &msgs).unwrap(),
        vec![true, true, true],
        "no filter: everything is delivered"
    );

    install(f.plugins(), "last-queue", &router_component(RouterMode::LastQueue), ROUTER);
    install(f.plugins(), "tag", &filter_component(FilterMode::TagEquals), FILTER);
    install(f.plugins(), "guard", &validator_component(), VALIDATOR);
    let report = registry.reload_now();
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(report.added, vec!["guard", "last-queue", "tag"]);
    assert_eq!(report.generation, 1);

    assert_eq!(registry.route(&route_input("orders", 7)).unwrap(), RouteOutcome::Queue(6));
    assert_eq!(registry.route(&route_input("orders", 3)).unwrap(), RouteOutcome::Queue(2));
    assert_eq!(registry.filter("g", "orders", ExpressionKind::Tag, "TagA", &msgs).unwrap(), vec![true, false, false]);
    assert_eq!(registry.filter("g", "orders", ExpressionKind::Tag, "TagB", &msgs).unwrap(), vec![false, true, false]);
    assert_eq!(registry.filter("g", "orders", ExpressionKind::Tag, "*", &msgs).unwrap(), vec![true, true, true]);

    let change = |name: &str| Change {
        kind: ChangeKind::Plugin,
        old_config: vec![],
        new_config: vec![],
        nodes: vec![],
        old_plugins: vec![],
        new_plugins: vec![PluginVersion { name: name.to_owned(), kind: "filter".to_owned(), sha256: "00".repeat(32) }],
    };
    let verdict = registry.validate(&change("fine"));
    assert!(verdict.accept && verdict.findings.is_empty(), "{verdict:?}");
    let verdict = registry.validate(&change("xbad"));
    assert!(!verdict.accept);
    assert_eq!(verdict.findings.len(), 1);
    assert_eq!(verdict.findings[0].severity, Severity::Error);
    assert_eq!(verdict.findings[0].code, "refused");
    assert!(verdict.findings[0].text.starts_with("[guard] "), "{:?}", verdict.findings[0]);

    let info: BTreeMap<String, _> = registry.list().into_iter().map(|p| (p.name.clone(), p)).collect();
    assert_eq!(info["tag"].kind, PluginKind::Filter);
    assert_eq!(info["tag"].calls, 3);
    assert_eq!(info["tag"].errors, 0);
    assert!(info["tag"].mean_call_ns > 0);
    assert_eq!(info["last-queue"].calls, 2);
    assert_eq!(info["guard"].calls, 2);
    assert_eq!(info["tag"].sha256.len(), 64);
}

#[test]
fn routers_run_in_order_and_first_opinion_wins() {
    let f = Fixture::new();
    install(f.plugins(), "a-default", &router_component(RouterMode::Default), "kind = \"router\"\norder = 1\n");
    install(
        f.plugins(),
        "b-three",
        &router_component(RouterMode::Queue(3)),
        "kind = \"router\"\norder = 2\ntopics = [\"orders\"]\n",
    );
    install(f.plugins(), "c-five", &router_component(RouterMode::Queue(5)), "kind = \"router\"\norder = 3\n");
    install(
        f.plugins(),
        "d-reject",
        &router_component(RouterMode::Reject("closed for maintenance".into())),
        "kind = \"router\"\norder = 0\ntopics = [\"legacy\"]\n",
    );
    install(
        f.plugins(),
        "e-redirect",
        &router_component(RouterMode::Redirect("orders-v2".into())),
        "kind = \"router\"\norder = 0\ntopics = [\"orders-v1\"]\n",
    );
    let registry = f.open();
    assert_eq!(registry.route(&route_input("orders", 8)).unwrap(), RouteOutcome::Queue(3));
    assert_eq!(registry.route(&route_input("payments", 8)).unwrap(), RouteOutcome::Queue(5));
    assert_eq!(
        registry.route(&route_input("legacy", 8)).unwrap(),
        RouteOutcome::Reject("closed for maintenance".into())
    );
    assert_eq!(registry.route(&route_input("orders-v1", 8)).unwrap(), RouteOutcome::Redirect("orders-v2".into()));
}

#[test]
fn router_body_is_sent_only_when_wanted() {
    let f = Fixture::new();
    install(f.plugins(), "body", &router_component(RouterMode::BodyLength), ROUTER);
    let registry = f.open();
    let input = RouteInput { body: b"0123456789", ..route_input("t", 4) };
    assert_eq!(registry.route(&input).unwrap(), RouteOutcome::Queue(10 % 4));
}

#[test]
fn filters_are_anded_and_scoped_by_topic_and_group() {
    let f = Fixture::new();
    install(f.plugins(), "tag", &filter_component(FilterMode::TagEquals), FILTER);
    install(
        f.plugins(),
        "skip-audit",
        &filter_component(FilterMode::Constant(0)),
        "kind = \"filter\"\ntopics = [\"audit\"]\n",
    );
    install(
        f.plugins(),
        "skip-g2",
        &filter_component(FilterMode::Constant(0)),
        "kind = \"filter\"\ngroups = [\"g2\"]\n",
    );
    let registry = f.open();
    let msgs = messages(&[Some("A"), Some("B")]);
    let run = |group: &str, topic: &str| registry.filter(group, topic, ExpressionKind::Tag, "A", &msgs).unwrap();
    assert_eq!(run("g1", "orders"), vec![true, false]);
    assert_eq!(run("g1", "audit"), vec![false, false]);
    assert_eq!(run("g2", "orders"), vec![false, false]);
    assert!(registry.has_filters_for("g1", "orders"));
}

#[test]
fn big_batches_are_cut_into_chunks() {
    let f = Fixture::new();
    install(f.plugins(), "tag", &filter_component(FilterMode::TagEquals), FILTER);
    let mut config = f.config();
    config.filter_batch_max = 4;
    let registry = PluginRegistry::open(config).unwrap();
    let tags: Vec<Option<&str>> = (0..10).map(|i| Some(if i % 3 == 0 { "A" } else { "B" })).collect();
    let verdicts = registry.filter("g", "t", ExpressionKind::Tag, "A", &messages(&tags)).unwrap();
    let expected: Vec<bool> = (0..10).map(|i| i % 3 == 0).collect();
    assert_eq!(verdicts, expected);
    assert_eq!(registry.list()[0].calls, 3, "10 messages in chunks of 4");
}

#[test]
fn host_config_and_log_reach_the_guest_and_a_manifest_edit_is_a_new_version() {
    let f = Fixture::new();
    install(
        f.plugins(),
        "cfg",
        &filter_component(FilterMode::FromConfig),
        "kind = \"filter\"\n[config]\nverdict = \"0\"\n",
    );
    let registry = f.open();
    let msgs = messages(&[Some("A"), None]);
    assert_eq!(registry.filter("g", "t", ExpressionKind::Tag, "*", &msgs).unwrap(), vec![false, false]);
    let sha_before = registry.list()[0].manifest_sha256.clone();

    write_atomically(&f.plugins().join("cfg.toml"), b"kind = \"filter\"\n[config]\nverdict = \"1\"\n");
    let report = registry.reload_now();
    assert_eq!(report.replaced, vec!["cfg"], "{report:?}");
    assert_eq!(registry.filter("g", "t", ExpressionKind::Tag, "*", &msgs).unwrap(), vec![true, true]);
    assert_ne!(registry.list()[0].manifest_sha256, sha_before);

    // Unset key: the guest sees `none` and falls back to deliver.
    write_atomically(&f.plugins().join("cfg.toml"), b"kind = \"filter\"\n");
    registry.reload_now();
    assert_eq!(registry.filter("g", "t", ExpressionKind::Tag, "*", &msgs).unwrap(), vec![true, true]);

    // Touching without changing content is not a new version.
    let generation = registry.generation();
    write_atomically(&f.plugins().join("cfg.toml"), b"kind = \"filter\"\n");
    assert!(!registry.reload_now().changed());
    assert_eq!(registry.generation(), generation);
}

#[test]
fn fuel_exhaustion_fails_the_call_and_the_rest_keeps_serving() {
    let f = Fixture::new();
    install(
        f.plugins(),
        "loop",
        &filter_component(FilterMode::LoopForever),
        "kind = \"filter\"\nonError = \"reject\"\ngroups = [\"looping\"]\n[limits]\nfuelPerCall = 1_000_000\n",
    );
    install(f.plugins(), "tag", &filter_component(FilterMode::TagEquals), FILTER);
    let registry = f.open();
    let msgs = messages(&[Some("A"), Some("B")]);
    let started = Instant::now();
    let err = registry.filter("looping", "t", ExpressionKind::Tag, "A", &msgs).unwrap_err();
    assert!(
        matches!(&err, PluginError::FuelExhausted { plugin, fuel_per_call: 1_000_000 } if plugin == "loop"),
        "{err:?}"
    );
    assert!(err.to_string().contains("ran out of fuel"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "fuel did not stop the loop promptly");
    // Other groups are not affected, and the failing plugin keeps failing cleanly.
    assert_eq!(registry.filter("g", "t", ExpressionKind::Tag, "A", &msgs).unwrap(), vec![true, false]);
    assert!(registry.filter("looping", "t", ExpressionKind::Tag, "A", &msgs).is_err());
    let info: BTreeMap<String, _> = registry.list().into_iter().map(|p| (p.name.clone(), p)).collect();
    assert_eq!(info["loop"].errors, 2);
    assert_eq!(info["loop"].live_instances, 0, "trapped instances must be discarded");
    assert_eq!(info["tag"].errors, 0);
}

#[test]
fn on_error_pass_delivers_and_reject_fails_closed() {
    let f = Fixture::new();
    install(f.plugins(), "trap-pass", &filter_component(FilterMode::Trap), "kind = \"filter\"\nonError = \"pass\"\n");
    install(
        f.plugins(),
        "trap-router",
        &router_component(RouterMode::Trap),
        "kind = \"router\"\nonError = \"reject\"\ntopics = [\"strict\"]\n",
    );
    install(
        f.plugins(),
        "trap-router-lax",
        &router_component(RouterMode::Trap),
        "kind = \"router\"\nonError = \"pass\"\ntopics = [\"lax\"]\n",
    );
    let registry = f.open();
    // The broker skips the router hand-off for topics no router applies to; a filter is no router.
    assert!(registry.has_routers_for("strict") && registry.has_routers_for("lax"));
    assert!(!registry.has_routers_for("t"));
    let msgs = messages(&[Some("A"), Some("B")]);
    assert_eq!(registry.filter("g", "t", ExpressionKind::Tag, "A", &msgs).unwrap(), vec![true, true]);
    match registry.route(&route_input("strict", 4)).unwrap() {
        RouteOutcome::Reject(reason) => {
            assert!(reason.contains("trap-router") && reason.contains("unreachable"), "{reason}")
        }
        other => panic!("expected a reject, got {other:?}"),
    }
    assert_eq!(registry.route(&route_input("lax", 4)).unwrap(), RouteOutcome::Default);
}

#[test]
fn memory_cap_fails_the_call() {
    let f = Fixture::new();
    install(
        f.plugins(),
        "alloc",
        &filter_component(FilterMode::GrowMemoryForever),
        "kind = \"filter\"\nonError = \"reject\"\n[limits]\nmemoryBytesMax = 4194304\nfuelPerCall = 100_000_000\n",
    );
    let registry = f.open();
    let err = registry.filter("g", "t", ExpressionKind::Tag, "A", &messages(&[Some("A")])).unwrap_err();
    match &err {
        PluginError::MemoryLimit { plugin, limit_bytes, wanted_bytes } => {
            assert_eq!(plugin, "alloc");
            assert_eq!(*limit_bytes, 4_194_304);
            assert!(*wanted_bytes > *limit_bytes);
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
    assert!(err.to_string().contains("memoryBytesMax"), "{err}");
}

#[test]
fn bad_results_are_plugin_errors() {
    let f = Fixture::new();
    let strict = "kind = \"filter\"\nonError = \"reject\"\n";
    install(f.plugins(), "long", &filter_component(FilterMode::WrongLength), &format!("{strict}groups = [\"long\"]\n"));
    install(f.plugins(), "two", &filter_component(FilterMode::Constant(2)), &format!("{strict}groups = [\"two\"]\n"));
    install(f.plugins(), "q9", &router_component(RouterMode::Queue(9)), "kind = \"router\"\nonError = \"reject\"\n");
    let registry = f.open();
    let msgs = messages(&[Some("A"), Some("B")]);
    let err = registry.filter("long", "t", ExpressionKind::Tag, "A", &msgs).unwrap_err();
    assert!(matches!(err, PluginError::BadResult { .. }), "{err:?}");
    assert!(err.to_string().contains("3 verdict bytes for 2 messages"), "{err}");
    let err = registry.filter("two", "t", ExpressionKind::Tag, "A", &msgs).unwrap_err();
    assert!(err.to_string().contains("must be 0 (skip) or 1 (deliver)"), "{err}");
    match registry.route(&route_input("t", 4)).unwrap() {
        RouteOutcome::Reject(reason) => assert!(reason.contains("queue 9 out of range"), "{reason}"),
        other => panic!("expected a reject, got {other:?}"),
    }
    assert_eq!(registry.route(&route_input("t", 10)).unwrap(), RouteOutcome::Queue(9));
}

#[test]
fn invalid_files_are_rejected_with_clear_errors_and_the_rest_loads() {
    let f = Fixture::new();
    install(f.plugins(), "good", &filter_component(FilterMode::Constant(0)), FILTER);
    install(f.plugins(), "garbage", b"\0asm this is not wasm", FILTER);
    install(f.plugins(), "router-as-filter", &router_component(RouterMode::Queue(1)), FILTER);
    install(f.plugins(), "typo", &filter_component(FilterMode::Constant(1)), "kind = \"filter\"\nfuelPercall = 5\n");
    std::fs::write(f.plugins().join("no-manifest.wasm"), filter_component(FilterMode::Constant(1))).unwrap();
    std::fs::write(f.plugins().join("no-wasm.toml"), FILTER).unwrap();
    std::fs::write(f.plugins().join("bad name.toml"), FILTER).unwrap();
    let (registry, report) = PluginRegistry::open_with_report(f.config()).unwrap();
    assert_eq!(report.added, vec!["good"]);
    let rejected: BTreeMap<String, String> = report.rejected.into_iter().collect();
    assert_eq!(rejected.len(), 6, "{rejected:#?}");
    assert!(rejected["garbage"].contains("cannot compile"), "{}", rejected["garbage"]);
    let wrong = &rejected["router-as-filter"];
    assert!(
        wrong.contains("kind = \"filter\"")
            && wrong.contains("filter-plugin")
            && wrong.contains("wasmq:policy/router@0.1.0"),
        "{wrong}"
    );
    assert!(rejected["typo"].contains("typo.toml") && rejected["typo"].contains("fuelPercall"), "{}", rejected["typo"]);
    assert!(rejected["no-manifest"].contains("no-manifest.toml"), "{}", rejected["no-manifest"]);
    assert!(rejected["no-wasm"].contains("no-wasm.wasm"), "{}", rejected["no-wasm"]);
    assert!(rejected.contains_key("bad name.toml"));
    // The good plugin serves.
    assert_eq!(registry.filter("g", "t", ExpressionKind::Tag, "*", &messages(&[None])).unwrap(), vec![false]);
    // Nothing changed: the rescan does not report (or retry) the same bad files again.
    let again = registry.reload_now();
    assert!(again.rejected.is_empty() && !again.changed(), "{again:?}");
}

#[test]
fn a_bad_new_version_keeps_the_old_one_serving() {
    let f = Fixture::new();
    install(f.plugins(), "r", &router_component(RouterMode::Queue(1)), ROUTER);
    let registry = f.open();
    let sha = registry.list()[0].sha256.clone();
    write_atomically(&f.plugins().join("r.wasm"), b"not wasm at all");
    let report = registry.reload_now();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(!report.changed());
    assert_eq!(registry.route(&route_input("t", 4)).unwrap(), RouteOutcome::Queue(1));
    assert_eq!(registry.list()[0].sha256, sha);

    // A wrong-world version is refused the same way.
    write_atomically(&f.plugins().join("r.wasm"), &filter_component(FilterMode::Constant(1)));
    let report = registry.reload_now();
    assert!(report.rejected[0].1.contains("router-plugin"), "{report:?}");
    assert_eq!(registry.route(&route_input("t", 4)).unwrap(), RouteOutcome::Queue(1));

    // A good version then replaces it.
    write_atomically(&f.plugins().join("r.wasm"), &router_component(RouterMode::Queue(2)));
    assert_eq!(registry.reload_now().replaced, vec!["r"]);
    assert_eq!(registry.route(&route_input("t", 4)).unwrap(), RouteOutcome::Queue(2));
}

#[test]
fn upgrade_validators_gate_plugin_changes() {
    let f = Fixture::new();
    install(f.plugins(), "guard", &validator_component(), VALIDATOR);
    install(f.plugins(), "keep-me", &router_component(RouterMode::Queue(1)), "kind = \"router\"\ntopics = [\"a\"]\n");
    install(f.plugins(), "drop-me", &router_component(RouterMode::Queue(2)), "kind = \"router\"\ntopics = [\"b\"]\n");
    let registry = f.open();
    assert_eq!(registry.list().len(), 3);

    install(f.plugins(), "xrouter", &router_component(RouterMode::Queue(3)), ROUTER);
    let report = registry.reload_now();
    assert!(report.added.is_empty());
    assert!(report.rejected[0].1.contains("refused by upgrade validators"), "{report:?}");
    assert!(report.rejected[0].1.contains("[guard]"), "{report:?}");
    assert_eq!(registry.route(&route_input("c", 4)).unwrap(), RouteOutcome::Default);

    remove(f.plugins(), "keep-me");
    remove(f.plugins(), "drop-me");
    let report = registry.reload_now();
    assert_eq!(report.removed, vec!["drop-me"]);
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(registry.route(&route_input("a", 4)).unwrap(), RouteOutcome::Queue(1));
    assert_eq!(registry.route(&route_input("b", 4)).unwrap(), RouteOutcome::Default);
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let f = Fixture::new();
    install(f.plugins(), "tag", &filter_component(FilterMode::TagEquals), FILTER);
    let first = f.open();
    assert!(!first.list()[0].compiled_from_cache);
    drop(first);
    let cached: Vec<_> = std::fs::read_dir(f.dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].ends_with(".cwasm"));
    let second = f.open();
    let info = &second.list()[0];
    assert!(info.compiled_from_cache);
    assert!(cached[0].starts_with(&info.sha256), "cache key is the wasm's sha256 first");
    assert_eq!(
        second.filter("g", "t", ExpressionKind::Tag, "A", &messages(&[Some("A"), Some("B")])).unwrap(),
        vec![true, false]
    );

    // A corrupt artifact is discarded and recompiled, not trusted.
    drop(second);
    std::fs::write(f.dir.path().join("cache").join(&cached[0]), b"garbage").unwrap();
    let third = f.open();
    assert!(!third.list()[0].compiled_from_cache);
    assert_eq!(
        third.filter("g", "t", ExpressionKind::Tag, "B", &messages(&[Some("A"), Some("B")])).unwrap(),
        vec![false, true]
    );
}

#[test]
fn instances_are_reused_and_bounded() {
    let f = Fixture::new();
    install(f.plugins(), "tag", &filter_component(FilterMode::TagEquals), FILTER);
    let mut config = f.config();
    config.pool.instances_max = 2;
    config.pool.idle_max = 2;
    let registry = Arc::new(PluginRegistry::open(config).unwrap());
    let msgs = messages(&[Some("A")]);
    for _ in 0..50 {
        registry.filter("g", "t", ExpressionKind::Tag, "A", &msgs).unwrap();
    }
    assert_eq!(registry.list()[0].live_instances, 1, "sequential calls reuse one instance");

    let threads: Vec<_> = (0..6)
        .map(|_| {
            let registry = registry.clone();
            std::thread::spawn(move || {
                let msgs = messages(&[Some("A"), Some("B")]);
                for _ in 0..200 {
                    let v = registry.filter("g", "t", ExpressionKind::Tag, "A", &msgs).unwrap();
                    assert_eq!(v, vec![true, false]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let info = &registry.list()[0];
    assert!(info.live_instances <= 2, "{info:?}");
    assert_eq!(info.calls, 50 + 6 * 200);
    assert_eq!(info.errors, 0);
}

/// Routers A → B → C → A ... swapped by file writes while threads route
/// continuously: every call answers with exactly one version, none fails,
/// and each swap is seen within 2 s through the watcher (no `reload_now`).
#[test]
fn hot_reload_swaps_atomically_under_concurrent_calls() {
    let f = Fixture::new();
    let versions: Vec<Vec<u8>> = (1..=3).map(|q| router_component(RouterMode::Queue(q))).collect();
    install(f.plugins(), "r", &versions[0], ROUTER);
    let mut config = f.config();
    config.watch = true;
    let registry = Arc::new(PluginRegistry::open(config).unwrap());
    assert!(registry.watching());
    assert_eq!(registry.route(&route_input("t", 8)).unwrap(), RouteOutcome::Queue(1));

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let registry = registry.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                let mut calls = 0u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match registry.route(&route_input("t", 8)) {
                        Ok(RouteOutcome::Queue(q)) => {
                            seen.insert(q);
                        }
                        other => panic!("call answered {other:?} during a swap"),
                    }
                    calls += 1;
                }
                (seen, calls)
            })
        })
        .collect();

    let mut swap_ms = Vec::new();
    for round in 1..=6 {
        let expected = (round % 3) as u32 + 1;
        let started = Instant::now();
        write_atomically(&f.plugins().join("r.wasm"), &versions[round % 3]);
        loop {
            if registry.route(&route_input("t", 8)).unwrap() == RouteOutcome::Queue(expected) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "round {round}: version {expected} not serving after 2 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        swap_ms.push(started.elapsed().as_millis());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total_calls = 0;
    for caller in callers {
        let (seen, calls) = caller.join().expect("a caller panicked");
        assert!(seen.is_subset(&BTreeSet::from([1, 2, 3])), "{seen:?}");
        total_calls += calls;
    }
    assert!(total_calls > 100, "callers barely ran: {total_calls}");
    let info = &registry.list()[0];
    assert_eq!(info.errors, 0);
    eprintln!("swap visible after {swap_ms:?} ms; {total_calls} calls during swaps");
}

#[test]
fn removed_plugins_stop_applying_and_added_ones_start() {
    let f = Fixture::new();
    let mut config = f.config();
    config.watch = true;
    let registry = PluginRegistry::open(config).unwrap();
    install(f.plugins(), "r", &router_component(RouterMode::Queue(2)), ROUTER);
    wait_for(|| registry.route(&route_input("t", 4)).unwrap() == RouteOutcome::Queue(2));
    remove(f.plugins(), "r");
    wait_for(|| registry.route(&route_input("t", 4)).unwrap() == RouteOutcome::Default);
    assert!(registry.list().is_empty());
}

fn wait_for(mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(2), "not in effect within 2 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A filter call cut into many chunks loads the plugin set once: while the
/// filter flips between "skip all" and "deliver all", every call's verdicts
/// are uniform (one version per call, never a mix).
#[test]
fn a_call_spanning_many_chunks_sees_one_version() {
    let f = Fixture::new();
    let versions = [filter_component(FilterMode::Constant(0)), filter_component(FilterMode::Constant(1))];
    install(f.plugins(), "flip", &versions[0], FILTER);
    let mut config = f.config();
    config.filter_batch_max = 2;
    let registry = Arc::new(PluginRegistry::open(config).unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let registry = registry.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let tags = vec![Some("A"); 64];
                let msgs = messages(&tags);
                let (mut all_true, mut all_false) = (0u32, 0u32);
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let v = registry.filter("g", "t", ExpressionKind::Tag, "*", &msgs).unwrap();
                    assert_eq!(v.len(), 64);
                    if v.iter().all(|&x| x) {
                        all_true += 1;
                    } else if v.iter().all(|&x| !x) {
                        all_false += 1;
                    } else {
                        panic!("one call saw two versions: {v:?}");
                    }
                }
                (all_true, all_false)
            })
        })
        .collect();
    for round in 1..=20 {
        write_atomically(&f.plugins().join("flip.wasm"), &versions[round % 2]);
        assert_eq!(registry.reload_now().replaced, vec!["flip"]);
        std::thread::sleep(Duration::from_millis(15));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut t, mut fa) = (0, 0);
    for c in callers {
        let (a, b) = c.join().expect("a caller saw a mixed answer or an error");
        t += a;
        fa += b;
    }
    assert!(t > 0 && fa > 0, "both versions should have served: {t} / {fa}");
    assert_eq!(registry.generation(), 21);
}

#[test]
fn a_call_waits_a_bounded_time_for_a_free_instance() {
    let f = Fixture::new();
    install(
        f.plugins(),
        "slow",
        &filter_component(FilterMode::LoopForever),
        "kind = \"filter\"\nonError = \"reject\"\n[limits]\nfuelPerCall = 3_000_000_000\n",
    );
    let mut config = f.config();
    config.pool.instances_max = 1;
    config.pool.idle_max = 1;
    config.pool.wait_ms_max = 50;
    let registry = Arc::new(PluginRegistry::open(config).unwrap());
    let busy = {
        let registry = registry.clone();
        std::thread::spawn(move || registry.filter("g", "t", ExpressionKind::Tag, "*", &messages(&[None])).unwrap_err())
    };
    // Wait until the slow call holds the only instance.
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let err = registry.filter("g", "t", ExpressionKind::Tag, "*", &messages(&[None])).unwrap_err();
    assert!(matches!(err, PluginError::Busy { instances_max: 1, wait_ms: 50, .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let first = busy.join().unwrap();
    assert!(matches!(first, PluginError::FuelExhausted { .. }), "{first:?}");
    assert_eq!(registry.list()[0].live_instances, 0);
}

/// WASI sleeps would hold a broker thread for real time that fuel does not
/// count; with the clocks stopped every deadline is already past.
#[test]
fn guest_sleeps_return_at_once() {
    let f = Fixture::new();
    install(f.plugins(), "sleepy", &filter_component(FilterMode::SleepSeconds(30)), FILTER);
    let registry = f.open();
    let started = Instant::now();
    let verdicts = registry.filter("g", "t", ExpressionKind::Tag, "*", &messages(&[None, Some("A")])).unwrap();
    assert_eq!(verdicts, vec![true, true]);
    assert!(started.elapsed() < Duration::from_secs(5), "the guest slept {:?}", started.elapsed());
}

#[test]
fn a_failing_validator_refuses_unless_its_manifest_says_pass() {
    let f = Fixture::new();
    install(f.plugins(), "broken", &trapping_validator_component(), VALIDATOR);
    let registry = f.open();
    let change = Change {
        kind: ChangeKind::Config,
        old_config: vec![],
        new_config: vec![("flushDiskType".into(), "SYNC_FLUSH".into())],
        nodes: vec![],
        old_plugins: vec![],
        new_plugins: vec![],
    };
    let verdict = registry.validate(&change);
    assert!(!verdict.accept, "validators fail closed by default: {verdict:?}");
    assert_eq!(verdict.findings.len(), 1);
    assert_eq!(verdict.findings[0].severity, Severity::Error);
    assert_eq!(verdict.findings[0].code, "plugin-failed");
    assert!(verdict.findings[0].text.contains("broken"), "{verdict:?}");

    // Fail closed covers plugin changes too: nothing new gets in.
    install(f.plugins(), "r", &router_component(RouterMode::Queue(1)), ROUTER);
    let report = registry.reload_now();
    assert!(report.added.is_empty() && report.rejected.len() == 1, "{report:?}");

    // Its own removal is judged by the current (broken) version too, so it
    // stays until a restart (the startup load is not validated).
    remove(f.plugins(), "broken");
    let report = registry.reload_now();
    assert!(report.removed.is_empty() && report.rejected.len() == 1, "{report:?}");
    drop(registry);
    let registry = f.open();
    assert_eq!(registry.list().len(), 1, "after a restart only the router is loaded");
    assert!(registry.validate(&change).accept);

    // With onError = "pass" a failing validator only warns.
    let f = Fixture::new();
    install(
        f.plugins(),
        "broken",
        &trapping_validator_component(),
        "kind = \"upgrade-validator\"\nonError = \"pass\"\n",
    );
    let registry = f.open();
    let verdict = registry.validate(&change);
    assert!(verdict.accept, "{verdict:?}");
    assert_eq!(verdict.findings[0].severity, Severity::Warning);
}

#[test]
fn bad_registry_config_is_an_error() {
    let f = Fixture::new();
    let mut config = f.config();
    config.filter_batch_max = 0;
    let err = PluginRegistry::open(config).err().expect("refused");
    assert!(err.to_string().contains("filter_batch_max"), "{err}");
    let mut config = f.config();
    config.pool.idle_max = config.pool.instances_max + 1;
    assert!(PluginRegistry::open(config).is_err());
    let mut config = f.config();
    config.plugin_dir = f.dir.path().join("missing");
    let err = PluginRegistry::open(config).err().expect("refused");
    assert!(err.to_string().contains("missing"), "{err}");
}

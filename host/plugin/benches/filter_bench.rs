//! Filter cost per message through `PluginRegistry::filter` for the Rust,
//! Python and JS tag filters of `plugins/dist/`, at batch sizes 1, 32 and
//! 256, against a native Rust closure doing the same tag check in the same
//! run (the baseline). Includes everything the broker pays: snapshot load,
//! batch encoding, instance lease, the call, verdict checks.
//!
//!   plugins/build.sh && cargo bench -p wasmq-plugin --bench filter_bench
//!
//! Target: Rust filter at batch 256 under 100 ns per message.
//!
//! `WASMQ_BENCH_IMPLS=host,rust` limits the run to some implementations.
//!
//! The `host` row is a minimal WAT component that answers "deliver" without
//! reading the batch: what the host side (encoding, copy into the guest,
//! instance lease, fuel, verdict check) costs on its own.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use wasmq_plugin::{ExpressionKind, FilterMessage, PluginRegistry, Properties, RegistryConfig};

const BATCH_SIZES: [usize; 3] = [1, 32, 256];
const EXPRESSION: &str = "TagA || TagC";
/// Each measurement runs until this much time or `CALLS_MAX` calls.
const MEASURE_TIME: Duration = Duration::from_millis(700);
const CALLS_MAX: u64 = 2_000_000;
const WARMUP_CALLS: u64 = 50;
const RUST_TARGET_NS_PER_MESSAGE: f64 = 100.0;

struct Message {
    tag: Option<&'static str>,
    keys: Vec<String>,
    properties: Vec<(String, String)>,
}

fn messages(n: usize) -> Vec<Message> {
    const TAGS: [Option<&str>; 5] = [Some("TagA"), Some("TagB"), Some("TagC"), None, Some("TagD")];
    (0..n)
        .map(|i| Message {
            tag: TAGS[i % TAGS.len()],
            keys: vec![format!("order-{i}")],
            properties: vec![
                ("region".to_owned(), ["eu", "us", "ap"][i % 3].to_owned()),
                ("price".to_owned(), (i * 7 % 1000).to_string()),
            ],
        })
        .collect()
}

fn views(messages: &[Message]) -> Vec<FilterMessage<'_>> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| FilterMessage {
            tag: m.tag,
            keys: &m.keys,
            properties: Properties::Pairs(&m.properties),
            queue_offset: i as u64,
            body: b"",
        })
        .collect()
}

/// Times `call` (which handles `batch` messages) and returns ns per message.
fn measure(batch: usize, mut call: impl FnMut()) -> f64 {
    for _ in 0..WARMUP_CALLS {
        call();
    }
    let started = Instant::now();
    let mut calls = 0u64;
    while calls < CALLS_MAX && started.elapsed() < MEASURE_TIME {
        call();
        calls += 1;
    }
    started.elapsed().as_nanos() as f64 / (calls as f64 * batch as f64)
}

/// The baseline: the same tag check as native Rust over the same messages.
fn native_filter(expression: &str, messages: &[FilterMessage<'_>]) -> Vec<bool> {
    let tags: Vec<&str> = expression.split("||").map(str::trim).collect();
    let all = tags.contains(&"*");
    messages.iter().map(|m| all || m.tag.is_some_and(|t| tags.contains(&t))).collect()
}

fn dist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist")
}

fn open_host_overhead(work: &Path) -> PluginRegistry {
    let plugin_dir = work.join("host-overhead");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    common::install(
        &plugin_dir,
        "deliver-all",
        &common::filter_component(common::FilterMode::Constant(1)),
        "kind = \"filter\"\n",
    );
    registry(plugin_dir, "deliver-all")
}

fn registry(plugin_dir: PathBuf, name: &str) -> PluginRegistry {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wasmq-plugin-bench-cache");
    let mut config = RegistryConfig::new(plugin_dir, cache);
    config.watch = false;
    let (registry, report) = PluginRegistry::open_with_report(config).expect("open registry");
    assert_eq!(report.added, [name], "{report:#?}");
    registry
}

fn open(name: &str, work: &Path) -> PluginRegistry {
    let plugin_dir = work.join(name);
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for ext in ["wasm", "toml"] {
        let from = dist_dir().join(format!("{name}.{ext}"));
        if let Err(e) = std::fs::copy(&from, plugin_dir.join(format!("{name}.{ext}"))) {
            eprintln!("filter_bench: {}: {e}\nBuild the guest plugins first: plugins/build.sh", from.display());
            std::process::exit(2);
        }
    }
    registry(plugin_dir, name)
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let selected = std::env::var("WASMQ_BENCH_IMPLS").unwrap_or_else(|_| "host,rust,python,js".to_owned());
    let selected: Vec<&str> = selected.split(',').map(str::trim).collect();
    let plugins = [("rust", "tag-filter"), ("python", "tag-filter-py"), ("js", "tag-filter-js")];
    let mut registries: Vec<(&str, PluginRegistry)> = plugins
        .iter()
        .filter(|(label, _)| selected.contains(label))
        .map(|(label, name)| (*label, open(name, work.path())))
        .collect();
    if selected.contains(&"host") {
        registries.insert(0, ("host", open_host_overhead(work.path())));
    }

    println!("filter cost per message, expression {EXPRESSION:?} (ns/msg; ratio = plugin / native closure)");
    println!("{:>8} {:>6} {:>12} {:>12} {:>10}", "impl", "batch", "plugin", "native", "ratio");
    let mut rust_256 = None;
    for batch in BATCH_SIZES {
        let owned = messages(batch);
        let msgs = views(&owned);
        let expected = native_filter(EXPRESSION, &msgs);
        let native_ns = measure(batch, || {
            black_box(native_filter(black_box(EXPRESSION), black_box(&msgs)));
        });
        for (label, registry) in &registries {
            let verdicts =
                registry.filter("bench", "orders", ExpressionKind::Tag, EXPRESSION, &msgs).expect("filter call");
            if *label == "host" {
                assert!(verdicts.iter().all(|&v| v), "the host-overhead filter delivers everything");
            } else {
                assert_eq!(verdicts, expected, "{label} disagrees with the native filter");
            }
            let plugin_ns = measure(batch, || {
                black_box(
                    registry
                        .filter("bench", "orders", ExpressionKind::Tag, black_box(EXPRESSION), black_box(&msgs))
                        .unwrap(),
                );
            });
            println!("{label:>8} {batch:>6} {plugin_ns:>12.1} {native_ns:>12.1} {:>10.1}", plugin_ns / native_ns);
            if *label == "rust" && batch == 256 {
                rust_256 = Some(plugin_ns);
            }
        }
    }
    for (label, registry) in &registries {
        let info = &registry.list()[0];
        assert_eq!(info.errors, 0, "{label}: {info:?}");
    }
    let Some(rust_256) = rust_256 else {
        return;
    };
    println!(
        "target: rust at batch 256 < {RUST_TARGET_NS_PER_MESSAGE} ns/msg: {rust_256:.1} ns/msg -> {}",
        if rust_256 < RUST_TARGET_NS_PER_MESSAGE { "met" } else { "MISSED" }
    );
}

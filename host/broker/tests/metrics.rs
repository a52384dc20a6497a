//! The Prometheus endpoint: a real broker (`server::start`, standalone, with the example
//! plugins) serves `GET /metrics` on `metricsPort`; counters move with sends, reads, send
//! errors and plugin calls; other paths and methods are refused.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use wasmq_broker::config::BrokerConfig;
use wasmq_broker::core::TopicSpec;
use wasmq_broker::messaging::backend::OutgoingMessage;
use wasmq_broker::metrics::{self, BrokerMetrics};
use wasmq_broker::server;

mod common;
use common::free_port;

fn http(addr: std::net::SocketAddr, request: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let (head, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        body
    })
    .await
    .unwrap()
}

/// Value of one sample line `name{labels} value`.
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn message(id: &str, body_len: usize) -> OutgoingMessage {
    OutgoingMessage {
        topic: "orders".into(),
        message_id: id.into(),
        tag: Some("TagA".into()),
        keys: vec![],
        properties: BTreeMap::new(),
        message_group: None,
        queue_id: None,
        born_timestamp_ms: 1_700_000_000_000,
        born_host: "127.0.0.1:5000".into(),
        delivery_timestamp_ms: None,
        reconsume_times: 0,
        body: vec![b'x'; body_len],
    }
}

fn plugin_dir(dir: &Path) -> std::path::PathBuf {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist");
    let out = dir.join("plugins");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["key-hash-router.wasm", "key-hash-router.toml"] {
        assert!(dist.join(f).exists(), "{f} missing: run plugins/build.sh --rust-only");
        std::fs::copy(dist.join(f), out.join(f)).unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_serves_metrics_that_follow_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        store_path_root_dir: tmp.path().join("store").display().to_string(),
        mapped_file_size_commit_log: 4 << 20,
        max_message_size: 64 * 1024,
        // The shared CI disk's fill level is not this test's subject (disk guard at 99 %).
        disk_max_used_space_ratio: 95,
        listen_port: free_port(),
        metrics_port: free_port(),
        plugin_dir: plugin_dir(tmp.path()).display().to_string(),
        ..BrokerConfig::default()
    };
    let config_path = tmp.path().join("broker.toml");
    let broker = server::start(config.clone(), config_path, server::Extensions::default()).await.unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", config.metrics_port).parse().unwrap();

    let text = scrape(addr).await;
    assert_eq!(sample(&text, "wasmq_raft_role{role=\"STANDALONE\"}"), 1.0);
    assert_eq!(sample(&text, "wasmq_raft_role{role=\"LEADER\"}"), 0.0);
    assert_eq!(sample(&text, "wasmq_sends_total"), 0.0);
    assert!(sample(&text, "wasmq_disk_total_bytes") > 0.0);
    assert_eq!(sample(&text, "wasmq_plugin_calls_total{plugin=\"key-hash-router\",kind=\"router\"}"), 0.0);
    let commit_before = sample(&text, "wasmq_raft_commit_index");

    // The endpoint counts what goes through the metered backend (what the v2 service uses).
    let core = broker.ctx.core.clone();
    core.update_topic(TopicSpec::new("orders", 2)).await.unwrap();
    let counted = BrokerMetrics::new();
    let backend = counted.wrap(core.clone());
    let own =
        metrics::serve("127.0.0.1:0".parse().unwrap(), counted.clone(), core.clone(), broker.ctx.shutdown.clone())
            .await
            .unwrap();
    for i in 0..20 {
        backend.send(message(&format!("m{i}"), 100)).await.unwrap();
    }
    assert!(backend.send(message("too-big", 65 * 1024)).await.is_err());
    let mut read = 0;
    for q in 0..2 {
        read += backend.read("orders", q, 0, 100, 1 << 20).await.unwrap().len();
    }
    assert_eq!(read, 20);

    let text = scrape(own.local_addr()).await;
    assert_eq!(sample(&text, "wasmq_sends_total"), 20.0);
    assert_eq!(sample(&text, "wasmq_send_bytes_total"), 2000.0);
    assert_eq!(sample(&text, "wasmq_send_errors_total{kind=\"message_too_large\"}"), 1.0);
    assert_eq!(sample(&text, "wasmq_send_latency_seconds_count"), 21.0);
    assert_eq!(sample(&text, "wasmq_send_latency_seconds_bucket{le=\"+Inf\"}"), 21.0);
    // Buckets are cumulative.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("wasmq_send_latency_seconds_bucket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    // A standalone store has no replication stages to time.
    assert!(!text.contains("wasmq_raft_propose_"), "{text}");
    assert_eq!(sample(&text, "wasmq_messages_read_total"), 20.0);
    assert_eq!(sample(&text, "wasmq_reads_total"), 2.0);
    assert!(sample(&text, "wasmq_commitlog_segments") >= 1.0);
    assert!(sample(&text, "wasmq_commitlog_bytes") >= (4u64 << 20) as f64);
    assert!(sample(&text, "wasmq_raft_commit_index") >= commit_before + 21.0);
    // The router plugin ran once per accepted send.
    assert!(sample(&text, "wasmq_plugin_calls_total{plugin=\"key-hash-router\",kind=\"router\"}") >= 20.0);

    // Rates: two samples a known time apart (metrics without a sampler task of their own).
    let rated = BrokerMetrics::new();
    let rated_backend = rated.wrap(core.clone());
    assert_eq!(rated.rates_per_second(), (0.0, 0.0));
    let now = std::time::Instant::now();
    rated.sample_rates(now);
    for i in 0..10 {
        rated_backend.send(message(&format!("r{i}"), 10)).await.unwrap();
    }
    rated.sample_rates(now + Duration::from_secs(2));
    let (send_rate, _) = rated.rates_per_second();
    assert!((send_rate - 5.0).abs() < 1e-9, "{send_rate}");

    // Anything but GET /metrics is refused.
    let (head, _) = tokio::task::spawn_blocking(move || http(addr, "GET / HTTP/1.1\r\n\r\n")).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = tokio::task::spawn_blocking(move || http(addr, "POST /metrics HTTP/1.1\r\n\r\n")).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");

    drop((backend, rated_backend));
    broker.stop().await.unwrap();
    // Stopped with the broker.
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}

//! `server::start` as `mqbroker` runs it: the real gRPC listener, driven by a RocketMQ v2
//! client (wasmq-bench's), graceful stop, restart from the same directory.

use std::time::Duration;

use wasmq_bench::client::{MqClient, Outgoing};
use wasmq_broker::config::{BrokerConfig, FlushDiskType};
use wasmq_broker::server;

mod common;
use common::free_port;

fn config(dir: &std::path::Path) -> BrokerConfig {
    let mut c = BrokerConfig::default();
    c.broker_name = "lifecycle".into();
    c.store_path_root_dir = dir.display().to_string();
    c.mapped_file_size_commit_log = 4 << 20;
    c.max_message_size = 64 * 1024;
    // The shared CI disk's fill level is not this test's subject (disk guard at 99 %).
    c.disk_max_used_space_ratio = 95;
    c.flush_disk_type = FlushDiskType::SyncFlush;
    c.auto_create_topic_enable = true;
    c.default_topic_queue_nums = 2;
    c.listen_port = free_port();
    c
}

async fn pull_all(client: &mut MqClient, topic: &str, queue_id: u32) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..100 {
        let (batch, next) = client.pull("g", topic, queue_id, offset, 32).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for m in batch {
            out.push((m.offset, m.body));
        }
        offset = next;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_grpc_stops_gracefully_and_restarts_with_the_data() {
    const MESSAGES: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let path = dir.path().join("broker.toml");
    let broker = server::start(cfg.clone(), path.clone(), server::Extensions::default()).await.unwrap();
    let endpoint = format!("http://{}", broker.local_addr());
    let mut client = MqClient::connect_lazy(&endpoint, Duration::from_secs(5)).unwrap();
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let body = format!("message {i}").into_bytes();
        let receipt = client
            .send(&Outgoing { topic: "life", body: &body, tag: Some("T"), keys: &[], queue_id: Some((i % 2) as u32) })
            .await
            .unwrap();
        assert_eq!(receipt.queue_id, (i % 2) as u32);
        sent.push((receipt.queue_id, receipt.offset, body));
    }
    // Oversize is refused over the wire too.
    let big = vec![0u8; 64 * 1024 + 1];
    assert!(client.send(&Outgoing { topic: "life", body: &big, tag: None, keys: &[], queue_id: None }).await.is_err());
    broker.stop().await.unwrap();
    // The listener is gone after stop.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", cfg.listen_port)).await.is_err());

    let broker = server::start(cfg.clone(), path, server::Extensions::default()).await.unwrap();
    let mut client = MqClient::connect_lazy(&endpoint, Duration::from_secs(5)).unwrap();
    for queue_id in 0..2u32 {
        let got = pull_all(&mut client, "life", queue_id).await;
        let want: Vec<(u64, Vec<u8>)> =
            sent.iter().filter(|(q, _, _)| *q == queue_id).map(|(_, off, body)| (*off, body.clone())).collect();
        assert_eq!(got, want, "queue {queue_id}");
    }
    let status = broker.ctx.core.status();
    assert_eq!(status.replication.role.as_str(), "STANDALONE");
    assert_eq!(status.applied_index, status.replication.commit_index);
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn raft_mode_without_a_replicator_factory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.enable_d_leger_commit_log = true;
    cfg.d_leger_group = "g".into();
    cfg.d_leger_peers = format!("n0-127.0.0.1:{}", free_port());
    cfg.d_leger_self_id = "n0".into();
    let listen_port = cfg.listen_port;
    let err = match server::start(cfg, dir.path().join("b.toml"), server::Extensions::default()).await {
        Ok(_) => panic!("started without a Raft replicator"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("no Raft replicator"), "{err}");
    // Said before anything was bound or opened: the client port is free, no store exists.
    std::net::TcpListener::bind(("127.0.0.1", listen_port)).expect("the client port was never bound");
    let created: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(created.is_empty(), "no store is opened for a config that cannot run: {created:?}");
}

/// Runs `mqbroker -c <toml>` and waits at most 30 s for it to exit: (success, stderr).
fn run_broker_bounded(dir: &std::path::Path, toml: &str) -> (bool, String) {
    use std::process::{Command, Stdio};
    let conf = dir.join("broker.toml");
    std::fs::write(&conf, toml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqbroker"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mqbroker still running after 30 s; it should have exited with an error");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.success(), stderr)
}

/// A port another process holds is a clear error and the process exits, whether it fails
/// before anything started (the client port) or after the store, the replicator and the
/// apply loop are up (the metrics port: the apply thread used to keep the runtime, and so
/// the process, alive forever).
#[test]
fn a_taken_port_is_a_clear_error_and_the_process_exits() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    for (what, listen_port, metrics_port) in [("client", taken_port, 0), ("metrics", free_port(), taken_port)] {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "brokerClusterName = \"C\"\nbrokerName = \"taken\"\nbrokerIP1 = \"127.0.0.1\"\n\
             listenPort = {listen_port}\nmetricsPort = {metrics_port}\nstorePathRootDir = \"{}\"\n\
             diskMaxUsedSpaceRatio = 95\ndiskSpaceWarningLevelRatio = 99\n",
            dir.path().join("store").display()
        );
        let (ok, stderr) = run_broker_bounded(dir.path(), &toml);
        assert!(!ok, "{what} port taken, yet mqbroker exited with success:\n{stderr}");
        assert!(
            stderr.contains(&format!("127.0.0.1:{taken_port}")) && stderr.contains(what),
            "{what} port taken: the error should name it:\n{stderr}"
        );
    }
    drop(taken);
}

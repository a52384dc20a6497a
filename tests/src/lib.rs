//! Cluster test harness: runs the real `mqnamesrv`/`mqbroker`/`mqadmin` binaries.
//!
//! - `proxy`: fault-injecting TCP proxies, one per directional Raft link.
//! - `cluster`: name server + brokers as processes; kill -9, SIGSTOP/SIGCONT, leader lookup.
//! - `client`: the RocketMQ v2 gRPC client (from `wasmq-bench`).
//! - `load`: producers that retry through faults and log every attempt and ack.
//! - `readback`: reads every queue of a topic from each replica's own store.
//! - `monitor`: one leader per term, consumer offsets never go backwards, a live consumer.
//! - `scenario`: steps shared by the tests (start, endpoints, check every replica).
//! - `checker`: verifies acknowledged sends against what every replica serves.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod load;
pub mod monitor;
pub mod proxy;
pub mod readback;

/// Test logs to stderr (captured by the test harness unless `--nocapture`), `RUST_LOG` wins.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_test_writer()
        .try_init();
}
pub mod scenario;

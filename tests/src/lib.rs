//! Cluster test harness: runs the real `mqnamesrv`/`mqbroker`/`mqadmin` binaries.
//!
//! - `proxy`: fault-injecting TCP proxies, one per directional Raft link.
//! - `cluster`: name server + brokers as processes; kill -9, SIGSTOP/SIGCONT, leader lookup.
//! - `client`: a small RocketMQ v2 gRPC client (send, receive/ack, pull).
//! - `checker`: verifies acknowledged sends against what every replica serves.

pub mod checker;
pub mod proxy;
pub mod client;
pub mod cluster;

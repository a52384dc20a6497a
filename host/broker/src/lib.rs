//! wasmq broker: config, broker core, replication runtime, name server, RocketMQ v2
//! messaging service, admin service, metrics.

pub mod admin;
pub mod config;
pub mod core;
pub mod latency_histogram;
pub mod messaging;
pub mod metrics;
pub mod namesrv;
pub mod replication;
pub mod server;
pub mod upgrade;

//! wasmq broker: config, broker core, replication runtime, name server, RocketMQ v2
//! messaging service, admin service, metrics.

pub mod config;
pub mod messaging;
pub mod replication;

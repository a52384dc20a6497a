//! wasmq-bench: the `mqbench` load generator and the small clients it drives.
//!
//! - `client`: RocketMQ 5 v2 gRPC client (also used by the cluster tests).
//! - `nats`: minimal NATS JetStream publisher, for side-by-side comparisons.
//! - `workload`: producers/consumers bounded by count and duration.
//! - `stats`: counters, latency histograms, progress line, report.

pub mod client;
pub mod nats;
pub mod stats;
pub mod workload;

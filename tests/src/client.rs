//! The RocketMQ v2 gRPC client lives in `wasmq-bench` (shared with `mqbench`).
pub use wasmq_bench::client::*;

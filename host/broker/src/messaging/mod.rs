//! RocketMQ 5 gRPC (`apache.rocketmq.v2.MessagingService`) front end.
//!
//! - `backend`: the seam to the broker core ([`backend::MessagingBackend`]).
//! - `service`: the tonic service ([`service::Messaging`]); `forward` relays calls
//!   from a follower to the leader, and `send_coalescer` puts the sends it forwards
//!   together (one request to the leader for the calls that arrive while one is in flight).
//! - `pop`: delivery state of consumers (invisibility, acks, retries, DLQ); `pull`:
//!   the pull/offset family (consumer-managed positions).
//! - `receipt_handle`, `message_codec`, `tag_expression`, `status`, `telemetry`:
//!   the protocol pieces.
//! - `fake`: an in-memory backend for tests and wire checks.

pub mod backend;
pub mod fake;
pub mod forward;
pub mod message_codec;
pub mod pop;
pub mod pull;
pub mod receipt_handle;
pub mod send_coalescer;
pub mod service;
pub mod status;
pub mod tag_expression;
pub mod telemetry;

#[cfg(test)]
mod python_wire_tests;
#[cfg(test)]
mod service_tests;

/// Wall-clock ms since the Unix epoch (receipt handle deadlines survive a leader
/// change, so they are wall-clock, not monotonic).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

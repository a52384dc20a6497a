//! Admin: the `wasmq.admin.Admin` gRPC service every broker serves next to the client
//! protocol, and the `mqadmin` command line that talks to it (and to the name server).
//!
//! - [`backend`]: [`AdminBackend`], the seam to the broker core (so the service is tested
//!   against a fake and runs unchanged on the real broker), and its error type.
//! - [`core_backend`]: [`AdminBackend`] on the real broker core, and [`core_backend::mount`]
//!   for `server.rs`.
//! - [`service`]: the gRPC service: limits, error mapping, loopback-only shutdown.
//! - [`output`]: the rows `mqadmin` prints, as aligned tables or JSON.
//! - [`cli`]: `mqadmin`'s commands (RocketMQ names and flags).

pub mod backend;
pub mod cli;
pub mod core_backend;
pub mod output;
pub mod service;

pub use backend::{AdminBackend, AdminError};
pub use service::service;

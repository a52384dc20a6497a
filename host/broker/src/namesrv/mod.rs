//! Name server: the table of live broker nodes and the routes derived from it.
//!
//! - [`route_table`]: the table itself, sans-IO (every call takes `now`), with limits and
//!   heartbeat expiry. All the rules live here.
//! - [`service`]: the `wasmq.namesrv.NameServer` gRPC service around one table, the expiry
//!   sweep, and [`service::start`] (what `mqnamesrv` runs).
//! - [`client`]: the broker side: [`client::spawn_heartbeat`] registers a node with every
//!   name server in `namesrvAddr`, and a connect helper for tools.
//! - [`registration`]: the broker's background task around [`client::spawn_heartbeat`].
//! - [`config`]: `mqnamesrv` settings (TOML, RocketMQ-style camelCase keys).
//!
//! Name servers never talk to each other: each one builds its table from the heartbeats it
//! receives, so running several side by side needs no coordination.

pub mod client;
pub mod config;
pub mod registration;
pub mod route_table;
pub mod service;

pub use config::NamesrvConfig;
pub use route_table::{RegisterError, RouteTable, TableLimits};

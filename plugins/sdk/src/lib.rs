//! Guest SDK for wasmq policy plugins (`wit/policy.wit`, package `wasmq:policy@0.1.0`).
//!
//! A plugin crate is a `cdylib` that enables exactly one of the features `filter`, `router`,
//! `upgrade-validator`, implements the matching trait and calls the matching export macro:
//!
//! ```ignore
//! use wasmq_plugin_sdk::filter::{Filter, FilterContext, MessageView};
//!
//! struct OnlyOrders;
//! impl Filter for OnlyOrders {
//!     fn prepare(_ctx: &FilterContext<'_>) -> Result<Self, String> { Ok(OnlyOrders) }
//!     fn deliver(&self, _ctx: &FilterContext<'_>, msg: &MessageView<'_>) -> bool {
//!         msg.topic() == "orders"
//!     }
//! }
//! wasmq_plugin_sdk::export_filter!(OnlyOrders);
//! ```
//!
//! Only one world per plugin: every enabled feature embeds its world's component type in the
//! module, and a component describes exactly one world. Build each plugin with its own
//! `cargo build -p NAME` so features of different plugins do not unify.

// Generated bindings and export macros name this crate by its external name.
extern crate self as wasmq_plugin_sdk;

pub mod batch;
pub mod host;

#[cfg(feature = "filter")]
pub mod filter;
#[cfg(feature = "router")]
pub mod router;
#[cfg(feature = "upgrade-validator")]
pub mod upgrade_validator;

pub use host::{Level, config, config_keys, log};

/// Re-exported for the export macros; not part of the API.
#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

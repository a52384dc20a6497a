//! wasmq's policy plugin runtime: WebAssembly components for the worlds of
//! `wit/policy.wit` (router, filter, upgrade validator), run by wasmtime.
//!
//! The broker uses [`PluginRegistry`]: it loads `NAME.wasm` + `NAME.toml`
//! pairs from the plugin directory (format: "Plugin directory contract" in
//! ARCHITECTURE.md), keeps compiled artifacts in a cache directory, reloads
//! changed files by itself and swaps the whole plugin set atomically. Its
//! calls are synchronous and may run on any thread; none of them panics
//! because of a plugin: traps, fuel exhaustion and memory overruns fail one
//! call of one plugin, and the plugin's `onError` decides what that means.

mod bindings;
mod compile_cache;
mod error;
mod filter_batch;
mod host_state;
mod loaded_plugin;
mod manifest;
pub mod plugin_registry;
mod watcher;

pub use compile_cache::{CACHE_ENTRIES_MAX, CacheOutcome};
pub use error::PluginError;
pub use filter_batch::{ExpressionKind, FilterMessage, Properties};
pub use loaded_plugin::{PoolLimits, REJECT_REASON_BYTES_MAX};
pub use manifest::{Manifest, OnError, PluginKind};
pub use plugin_registry::{PluginInfo, PluginRegistry, RegistryConfig, ReloadReport, RouteInput, RouteOutcome};

/// The upgrade-validator world's types, as generated from `wit/policy.wit`.
pub mod validation {
    pub use crate::bindings::validator::exports::wasmq::policy::upgrade_validator::{
        Change, ChangeKind, Finding, NodeSummary, PluginVersion, RangeChecksum, Severity, Verdict,
    };
}

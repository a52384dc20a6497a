//! The one error type of this crate's public API.

use std::path::PathBuf;

/// Everything that can go wrong loading or calling a plugin. Call errors
/// (`FuelExhausted`, `MemoryLimit`, `Trap`, `BadResult`, `Busy`) concern one
/// call of one plugin; the plugin's `onError` policy decides what the broker
/// sees (see `PluginRegistry::route` / `filter` / `validate`).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// `NAME.toml` is unreadable, not TOML, has an unknown key or a bad value.
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The `.wasm` file is not a valid component (or not wasm at all).
    #[error("plugin `{plugin}`: cannot compile {path}: {message}")]
    Compile { plugin: String, path: PathBuf, message: String },

    /// The component does not implement the world its manifest `kind` names.
    #[error(
        "plugin `{plugin}`: manifest says kind = \"{kind}\", but the component does not implement world `{world}`: {detail}"
    )]
    WorldMismatch { plugin: String, kind: &'static str, world: &'static str, detail: String },

    #[error("plugin `{plugin}`: instantiation failed: {message}")]
    Instantiate { plugin: String, message: String },

    #[error("plugin `{plugin}`: ran out of fuel ({fuel_per_call} units per call); the call was stopped")]
    FuelExhausted { plugin: String, fuel_per_call: u64 },

    #[error(
        "plugin `{plugin}`: memory limit exceeded (linear memory would grow to {wanted_bytes} bytes, memoryBytesMax = {limit_bytes}); the call was stopped"
    )]
    MemoryLimit { plugin: String, wanted_bytes: u64, limit_bytes: u64 },

    #[error("plugin `{plugin}`: trapped: {message}")]
    Trap { plugin: String, message: String },

    /// The call returned, but its answer breaks the WIT contract.
    #[error("plugin `{plugin}`: invalid result: {detail}")]
    BadResult { plugin: String, detail: String },

    /// Every instance of the plugin stayed busy for the whole wait.
    #[error("plugin `{plugin}`: all {instances_max} instances busy for {wait_ms} ms")]
    Busy { plugin: String, instances_max: usize, wait_ms: u64 },

    /// A new plugin version (or a removal) was refused by an upgrade validator.
    #[error("plugin `{plugin}`: change refused by upgrade validators: {reason}")]
    Refused { plugin: String, reason: String },

    /// The caller passed something the host cannot encode for a plugin.
    #[error("invalid plugin input: {0}")]
    InvalidInput(String),

    #[error("plugin registry: {0}")]
    Registry(String),
}

impl PluginError {
    /// Name of the plugin the error concerns, if it concerns one.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            PluginError::Compile { plugin, .. }
            | PluginError::WorldMismatch { plugin, .. }
            | PluginError::Instantiate { plugin, .. }
            | PluginError::FuelExhausted { plugin, .. }
            | PluginError::MemoryLimit { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::BadResult { plugin, .. }
            | PluginError::Busy { plugin, .. }
            | PluginError::Refused { plugin, .. } => Some(plugin),
            PluginError::Manifest { .. }
            | PluginError::Io { .. }
            | PluginError::InvalidInput(_)
            | PluginError::Registry(_) => None,
        }
    }
}

/// A wasmtime error as one line of text: its root cause, plus the outer
/// context when it adds something (the backtrace is left out).
pub(crate) fn error_text(error: &wasmtime::Error) -> String {
    let root = error.root_cause().to_string();
    let outer = error.to_string();
    let text = if outer == root || outer.starts_with("error while executing at wasm backtrace") {
        root
    } else {
        format!("{outer}: {root}")
    };
    const TEXT_BYTES_MAX: usize = 2048;
    if text.len() <= TEXT_BYTES_MAX {
        return text;
    }
    let mut end = TEXT_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

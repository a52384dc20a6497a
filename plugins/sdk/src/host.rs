//! The `wasmq:policy/host` imports every plugin gets: logging and the manifest's `[config]`.
//!
//! On wasm these call the host. Compiled natively (unit tests of plugin logic) there is no
//! host: `log` writes to stderr and the config is empty, so keep logic that needs config
//! behind plain parameters and read the config in the thin export layer.

#[allow(clippy::all, unsafe_op_in_unsafe_fn)]
pub(crate) mod bindings {
    // A world with only the host import: the three plugin worlds reuse these bindings
    // (`with` in their `generate!`), so `Level`, `log` and `config` are one set of items.
    wit_bindgen::generate!({
        inline: "package wasmq:sdk; world host-only { import wasmq:policy/host@0.1.0; }",
        path: "../../wit",
        world: "wasmq:sdk/host-only",
        runtime_path: "wit_bindgen::rt",
        generate_all,
    });
}

pub use bindings::wasmq::policy::host::Level;

/// Host log lines longer than this are truncated by the host; cut here to save the copy.
pub const LOG_MESSAGE_BYTES_MAX: usize = 4096;

/// Emits a log line through the host (`tracing`, tagged with the plugin name).
pub fn log(level: Level, message: &str) {
    let message = truncate_at_char_boundary(message, LOG_MESSAGE_BYTES_MAX);
    #[cfg(target_arch = "wasm32")]
    bindings::wasmq::policy::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// The plugin's `[config]` value for `key`, as a string.
pub fn config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return bindings::wasmq::policy::host::config_get(key);
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        None
    }
}

/// All keys of the plugin's `[config]` table.
pub fn config_keys() -> Vec<String> {
    #[cfg(target_arch = "wasm32")]
    return bindings::wasmq::policy::host::config_keys();
    #[cfg(not(target_arch = "wasm32"))]
    Vec::new()
}

fn truncate_at_char_boundary(s: &str, bytes_max: usize) -> &str {
    if s.len() <= bytes_max {
        return s;
    }
    let mut end = bytes_max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Installs (once) a panic hook that sends the panic message to the host log before the
/// instance traps: with `panic = "abort"` on wasm32-unknown-unknown it would be lost.
#[doc(hidden)]
pub fn install_panic_hook() {
    #[cfg(target_arch = "wasm32")]
    {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                log(Level::Error, &format!("plugin panicked: {info}"));
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(super::truncate_at_char_boundary("héllo", 2), "h");
        assert_eq!(super::truncate_at_char_boundary("héllo", 3), "hé");
        assert_eq!(super::truncate_at_char_boundary("abc", 10), "abc");
    }
}

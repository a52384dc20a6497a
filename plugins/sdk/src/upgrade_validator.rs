//! The `upgrade-validator-plugin` world: may a cluster / config / plugin change go ahead?

#[doc(hidden)]
#[allow(clippy::all, unsafe_op_in_unsafe_fn)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "upgrade-validator-plugin",
        runtime_path: "wasmq_plugin_sdk::__wit_bindgen::rt",
        pub_export_macro: true,
        default_bindings_module: "wasmq_plugin_sdk::upgrade_validator::bindings",
        with: { "wasmq:policy/host@0.1.0": crate::host::bindings::wasmq::policy::host },
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::exports::wasmq::policy::upgrade_validator::{
    Change, ChangeKind, Finding, NodeSummary, PluginVersion, RangeChecksum, Severity, Verdict,
};

/// An upgrade validator. One value per instance, built by `init` on the first call.
pub trait UpgradeValidator: Sized + 'static {
    /// `Err` is a plugin fault: every call traps with the text (the host refuses the change).
    fn init() -> Result<Self, String>;

    fn validate(&self, change: &Change) -> Verdict;
}

/// Builds a verdict from findings: accepted unless some finding is an error.
pub fn verdict_from(findings: Vec<Finding>) -> Verdict {
    let accept = !findings.iter().any(|f| f.severity == Severity::Error);
    Verdict { accept, findings }
}

/// Glue behind [`export_upgrade_validator!`](crate::export_upgrade_validator); not part of the API.
#[doc(hidden)]
pub fn __validate<V: UpgradeValidator>(
    cell: &'static std::thread::LocalKey<std::cell::OnceCell<Result<V, String>>>,
    change: Change,
) -> Verdict {
    crate::host::install_panic_hook();
    cell.with(|c| match c.get_or_init(V::init) {
        Ok(v) => v.validate(&change),
        Err(e) => panic!("upgrade validator init failed: {e}"),
    })
}

/// Exports an [`UpgradeValidator`] as the component's `wasmq:policy/upgrade-validator` interface.
#[macro_export]
macro_rules! export_upgrade_validator {
    ($validator:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __WasmqValidatorComponent;
            ::std::thread_local! {
                static __WASMQ_VALIDATOR: ::std::cell::OnceCell<::std::result::Result<$validator, ::std::string::String>> =
                    const { ::std::cell::OnceCell::new() };
            }
            impl $crate::upgrade_validator::bindings::exports::wasmq::policy::upgrade_validator::Guest
                for __WasmqValidatorComponent
            {
                fn validate(change: $crate::upgrade_validator::Change) -> $crate::upgrade_validator::Verdict {
                    $crate::upgrade_validator::__validate::<$validator>(&__WASMQ_VALIDATOR, change)
                }
            }
            $crate::__export_upgrade_validator_plugin_impl!(
                __WasmqValidatorComponent with_types_in $crate::upgrade_validator::bindings
            );
        };
    };
}

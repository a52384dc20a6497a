//! The `router-plugin` world: pick a queue, redirect to another topic, or reject a send.

#[doc(hidden)]
#[allow(clippy::all, unsafe_op_in_unsafe_fn)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "router-plugin",
        runtime_path: "wasmq_plugin_sdk::__wit_bindgen::rt",
        pub_export_macro: true,
        default_bindings_module: "wasmq_plugin_sdk::router::bindings",
        with: { "wasmq:policy/host@0.1.0": crate::host::bindings::wasmq::policy::host },
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::exports::wasmq::policy::router::{Decision, MessageMeta};

/// A router plugin. One value per instance, built by `init` on the first call (read the
/// `[config]` there); a hot reload creates a new instance, so config changes are seen.
pub trait Router: Sized + 'static {
    /// `Err` is a plugin fault (e.g. bad config): every call then traps with the text,
    /// and the host applies the manifest's `onError` policy.
    fn init() -> Result<Self, String>;

    /// Whether `route` wants the message body (it costs a copy per send).
    fn wants_body(&self) -> bool {
        false
    }

    fn route(&self, msg: &MessageMeta, body: Option<&[u8]>) -> Decision;
}

/// Glue behind [`export_router!`](crate::export_router); not part of the API.
#[doc(hidden)]
pub fn __instance<R: Router>(cell: &'static std::thread::LocalKey<std::cell::OnceCell<Result<R, String>>>, f: impl FnOnce(&R) -> Decision) -> Decision {
    crate::host::install_panic_hook();
    cell.with(|c| match c.get_or_init(R::init) {
        Ok(router) => f(router),
        Err(e) => panic!("router init failed: {e}"),
    })
}

#[doc(hidden)]
pub fn __wants_body<R: Router>(cell: &'static std::thread::LocalKey<std::cell::OnceCell<Result<R, String>>>) -> bool {
    crate::host::install_panic_hook();
    cell.with(|c| match c.get_or_init(R::init) {
        Ok(router) => router.wants_body(),
        Err(e) => panic!("router init failed: {e}"),
    })
}

/// Exports a [`Router`] implementation as the component's `wasmq:policy/router` interface.
#[macro_export]
macro_rules! export_router {
    ($router:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __WasmqRouterComponent;
            ::std::thread_local! {
                static __WASMQ_ROUTER: ::std::cell::OnceCell<::std::result::Result<$router, ::std::string::String>> =
                    const { ::std::cell::OnceCell::new() };
            }
            impl $crate::router::bindings::exports::wasmq::policy::router::Guest for __WasmqRouterComponent {
                fn wants_body() -> bool {
                    $crate::router::__wants_body::<$router>(&__WASMQ_ROUTER)
                }
                fn route(
                    msg: $crate::router::MessageMeta,
                    body: ::std::option::Option<::std::vec::Vec<u8>>,
                ) -> $crate::router::Decision {
                    $crate::router::__instance::<$router>(&__WASMQ_ROUTER, |r| {
                        $crate::router::Router::route(r, &msg, body.as_deref())
                    })
                }
            }
            $crate::__export_router_plugin_impl!(__WasmqRouterComponent with_types_in $crate::router::bindings);
        };
    };
}

//! Rust bindings generated from `wit/policy.wit`, one module per world. The
//! `host` interface is generated once (in `router`) and shared by the other
//! worlds, so one `Host` implementation serves all three.

pub mod router {
    wasmtime::component::bindgen!({
        path: "../../wit/policy.wit",
        world: "router-plugin",
    });
}

pub mod filter {
    wasmtime::component::bindgen!({
        path: "../../wit/policy.wit",
        world: "filter-plugin",
        with: {
            "wasmq:policy/host": super::router::wasmq::policy::host,
        },
    });
}

pub mod validator {
    wasmtime::component::bindgen!({
        path: "../../wit/policy.wit",
        world: "upgrade-validator-plugin",
        with: {
            "wasmq:policy/host": super::router::wasmq::policy::host,
        },
    });
}

pub use router::wasmq::policy::host;

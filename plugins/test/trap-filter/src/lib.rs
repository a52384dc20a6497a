//! Test plugin: a filter that panics on every call. With `panic = "abort"` the panic is a
//! wasm `unreachable` trap; the SDK's panic hook first logs the message through the host
//! (level error), so the host log should show "trap-filter: deliberate panic".

use wasmq_plugin_sdk::filter::{Filter, FilterContext, MessageView};

pub struct Trap;

impl Filter for Trap {
    fn prepare(_ctx: &FilterContext<'_>) -> Result<Self, String> {
        Ok(Trap)
    }

    fn deliver(&self, ctx: &FilterContext<'_>, msg: &MessageView<'_>) -> bool {
        panic!("trap-filter: deliberate panic (group {}, topic {})", ctx.group, msg.topic());
    }
}

wasmq_plugin_sdk::export_filter!(Trap);

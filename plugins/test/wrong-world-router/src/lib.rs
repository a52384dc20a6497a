//! Test plugin: a valid *router* component shipped with a manifest that says
//! `kind = "filter"`. The host must refuse to load it into a filter slot (world mismatch)
//! with a clear error, and keep running the previous version, if any.

use wasmq_plugin_sdk::router::{Decision, MessageMeta, Router};

pub struct AlwaysDefault;

impl Router for AlwaysDefault {
    fn init() -> Result<Self, String> {
        Ok(AlwaysDefault)
    }

    fn route(&self, _msg: &MessageMeta, _body: Option<&[u8]>) -> Decision {
        Decision::DefaultQueue
    }
}

wasmq_plugin_sdk::export_router!(AlwaysDefault);

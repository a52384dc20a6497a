//! Test plugin: a filter whose every call loops forever. The host must stop it with its
//! fuel / epoch deadline, fail that one call (onError policy) and stay up.

use wasmq_plugin_sdk::filter::{Filter, FilterContext, MessageView};

pub struct LoopForever;

impl Filter for LoopForever {
    fn prepare(_ctx: &FilterContext<'_>) -> Result<Self, String> {
        Ok(LoopForever)
    }

    fn deliver(&self, _ctx: &FilterContext<'_>, _msg: &MessageView<'_>) -> bool {
        // black_box keeps the loop observable so the optimizer cannot prove it dead.
        let mut spins: u64 = 0;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}

wasmq_plugin_sdk::export_filter!(LoopForever);

//! Test plugin: a filter whose every call allocates without bound (1 MiB at a time, each
//! touched so it is really committed). The host's per-instance memory cap must make
//! `memory.grow` fail; the allocation failure then aborts (traps) the call.

use wasmq_plugin_sdk::filter::{Filter, FilterContext, MessageView};

const CHUNK_BYTES: usize = 1 << 20;

pub struct AllocForever;

impl Filter for AllocForever {
    fn prepare(_ctx: &FilterContext<'_>) -> Result<Self, String> {
        Ok(AllocForever)
    }

    fn deliver(&self, _ctx: &FilterContext<'_>, _msg: &MessageView<'_>) -> bool {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; CHUNK_BYTES]);
            std::hint::black_box(&mut hoard);
        }
    }
}

wasmq_plugin_sdk::export_filter!(AllocForever);

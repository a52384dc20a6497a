//! The data of one plugin instance's `Store`: the `host` imports (log,
//! config), an empty WASI context and the memory limiter.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::StoreContextMut;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::host::{self, Level};

/// Log lines longer than this are cut (WIT contract: 4 KiB).
pub const LOG_MESSAGE_BYTES_MAX: usize = 4096;
/// Log lines a plugin may emit per call; the rest are counted and dropped so a
/// chatty plugin cannot flood the broker's log.
pub const LOG_LINES_PER_CALL_MAX: u32 = 64;
/// Table elements per table (funcref tables of Python/JS runtimes are large
/// but far below this).
pub const TABLE_ELEMENTS_MAX: usize = 1 << 20;

pub struct HostState {
    plugin: Arc<str>,
    config: Arc<BTreeMap<String, String>>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    log_lines_left: u32,
    log_lines_dropped: u32,
}

impl HostState {
    pub fn new(plugin: Arc<str>, config: Arc<BTreeMap<String, String>>, memory_bytes_max: u64) -> Self {
        // Empty on purpose: no preopened dirs, env, args, network or stdio,
        // and clocks stopped at zero (the WIT contract promises no clock: a
        // policy decision must not depend on when it runs). Python/JS guests
        // import WASI, so it must be linked, but it grants nothing. Random
        // stays: CPython seeds its hashing from it.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(StoppedClock)
            .monotonic_clock(StoppedClock)
            .build();
        HostState {
            plugin,
            config,
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_bytes_max),
            log_lines_left: LOG_LINES_PER_CALL_MAX,
            log_lines_dropped: 0,
        }
    }

    /// Called before every call: per-call budgets start afresh.
    pub fn begin_call(&mut self) {
        self.log_lines_left = LOG_LINES_PER_CALL_MAX;
        self.log_lines_dropped = 0;
    }

    /// Called after every call: report what the log budget dropped.
    pub fn end_call(&mut self) {
        if self.log_lines_dropped > 0 {
            tracing::warn!(
                plugin = %self.plugin,
                dropped = self.log_lines_dropped,
                "plugin log lines over the per-call limit of {LOG_LINES_PER_CALL_MAX} were dropped"
            );
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_lines_left == 0 {
            self.log_lines_dropped = self.log_lines_dropped.saturating_add(1);
            return;
        }
        self.log_lines_left -= 1;
        let message = truncate_utf8(&message, LOG_MESSAGE_BYTES_MAX);
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "wasmq_plugin::guest", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "wasmq_plugin::guest", plugin, "{message}"),
            Level::Info => tracing::info!(target: "wasmq_plugin::guest", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "wasmq_plugin::guest", plugin, "{message}"),
            Level::Error => tracing::error!(target: "wasmq_plugin::guest", plugin, "{message}"),
        }
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn config_keys(&mut self) -> Vec<String> {
        self.config.keys().cloned().collect()
    }
}

/// A clock that always reads zero.
struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

fn truncate_utf8(s: &str, bytes_max: usize) -> &str {
    if s.len() <= bytes_max {
        return s;
    }
    let mut end = bytes_max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The error a memory growth past `memoryBytesMax` traps with; the call
/// classifier finds it in the error chain.
#[derive(Debug, thiserror::Error)]
#[error("linear memory would grow to {wanted_bytes} bytes, over memoryBytesMax = {limit_bytes}")]
pub struct MemoryLimitExceeded {
    pub wanted_bytes: u64,
    pub limit_bytes: u64,
}

/// Caps the sum of all linear memories of one instance (a component can hold
/// several core instances, each with its own memory). Growth past the cap
/// traps instead of returning -1: guests (Rust's allocator, CPython) turn -1
/// into an `unreachable` trap anyway, and the trap carries a clear reason.
pub struct MemoryLimiter {
    bytes_max: u64,
    bytes_total: u64,
    /// Growth granted by the last `memory_growing`, returned if it fails.
    last_grant_bytes: u64,
}

impl MemoryLimiter {
    fn new(bytes_max: u64) -> Self {
        MemoryLimiter { bytes_max, bytes_total: 0, last_grant_bytes: 0 }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        debug_assert!(desired >= current);
        let delta = (desired - current) as u64;
        let wanted_bytes = self.bytes_total.saturating_add(delta);
        if wanted_bytes > self.bytes_max {
            return Err(wasmtime::Error::new(MemoryLimitExceeded { wanted_bytes, limit_bytes: self.bytes_max }));
        }
        self.bytes_total = wanted_bytes;
        self.last_grant_bytes = delta;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The OS refused memory we had accounted for: give the budget back and
        // let the guest see the ordinary -1.
        tracing::debug!("plugin memory growth failed: {error}");
        self.bytes_total -= self.last_grant_bytes;
        self.last_grant_bytes = 0;
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// The linker every plugin is instantiated with: `host` plus WASI p2.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    host::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    replace_sleeps(&mut linker)?;
    Ok(linker)
}

/// The WASI version whose definitions wasmtime-wasi registers; guests
/// importing any 0.2.x version are matched to it by semver.
const WASI_CLOCKS_MONOTONIC: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A guest sleeping (`subscribe-duration` / `subscribe-instant` + `block`)
/// would hold a broker thread for real time that fuel does not count. The
/// clocks are stopped anyway, so every deadline is already past: the
/// pollables are ready at once.
fn replace_sleeps(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(WASI_CLOCKS_MONOTONIC)?;
    for name in ["subscribe-duration", "subscribe-instant"] {
        clock.func_wrap(name, |mut store: StoreContextMut<'_, HostState>, (_when,): (u64,)| {
            let table = &mut store.data_mut().table;
            let pollable = table.push(AlreadyPast)?;
            Ok((wasmtime_wasi::p2::subscribe(table, pollable)?,))
        })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

struct AlreadyPast;

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for AlreadyPast {
    async fn ready(&mut self) {}
}

//! One compiled, checked, immutable version of one plugin, with its pool of
//! instances and its call statistics. Calls run under the manifest's limits;
//! an instance whose call failed is dropped, never reused.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Engine, Store, Trap};

use crate::bindings::filter::{FilterPlugin, FilterPluginPre};
use crate::bindings::router::{RouterPlugin, RouterPluginPre};
use crate::bindings::validator::{UpgradeValidatorPlugin, UpgradeValidatorPluginPre};
use crate::compile_cache::{CacheOutcome, CompileCache};
use crate::error::{PluginError, error_text};
use crate::filter_batch::{ExpressionKind, FilterBatch};
use crate::host_state::{HostState, MemoryLimitExceeded};
use crate::manifest::{Manifest, PluginKind};

use crate::bindings::filter::exports::wasmq::policy::filter::ExpressionKind as WitExpressionKind;
pub use crate::bindings::router::exports::wasmq::policy::router::{Decision, MessageMeta};
pub use crate::bindings::validator::exports::wasmq::policy::upgrade_validator::{Change, Verdict};

/// Bounds of one plugin's instance pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Instances alive at once (busy + idle): bounds memory to
    /// `instances_max * memoryBytesMax` per plugin.
    pub instances_max: usize,
    /// Idle instances kept for reuse.
    pub idle_max: usize,
    /// How long a call waits for a free instance before failing with `Busy`.
    pub wait_ms_max: u64,
}

enum WorldPre {
    Router(RouterPluginPre<HostState>),
    Filter(FilterPluginPre<HostState>),
    Validator(UpgradeValidatorPluginPre<HostState>),
}

enum WorldBindings {
    Router(RouterPlugin),
    Filter(FilterPlugin),
    Validator(UpgradeValidatorPlugin),
}

struct Instance {
    store: Store<HostState>,
    bindings: WorldBindings,
}

struct Pool {
    idle: Vec<Instance>,
    /// Idle plus leased instances.
    live: usize,
}

#[derive(Default)]
struct CallStats {
    calls: AtomicU64,
    errors: AtomicU64,
    total_ns: AtomicU64,
}

/// A call's answer broke the WIT contract (checked inside the call so the
/// instance is discarded like after a trap).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadResult(String);

/// A host function panicked during a call.
#[derive(Debug, thiserror::Error)]
#[error("host function panicked during the call: {0}")]
struct HostPanic(String);

impl HostPanic {
    /// The call's error for a caught panic `payload`.
    fn error(payload: Box<dyn std::any::Any + Send>) -> wasmtime::Error {
        wasmtime::Error::new(HostPanic(wasmq_panic::message(&*payload).to_owned()))
    }
}

pub struct LoadedPlugin {
    pub name: Arc<str>,
    pub manifest: Manifest,
    /// sha256 of the `.wasm` file: the plugin's version.
    pub sha256: String,
    /// sha256 of the manifest text: a manifest edit is a new version too.
    pub manifest_sha256: String,
    pub loaded_at: SystemTime,
    pub cache_outcome: CacheOutcome,
    /// Router only: the plugin's `wants-body` answer, asked once at load.
    pub router_wants_body: bool,
    config: Arc<BTreeMap<String, String>>,
    engine: Engine,
    pre: WorldPre,
    pool_limits: PoolLimits,
    pool: Mutex<Pool>,
    pool_freed: Condvar,
    stats: CallStats,
}

/// Snapshot of a plugin's call counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounters {
    pub calls: u64,
    pub errors: u64,
    pub total_call_ns: u64,
}

/// What `LoadedPlugin::load` needs besides the files.
pub struct LoadContext<'a> {
    pub engine: &'a Engine,
    pub linker: &'a Linker<HostState>,
    pub cache: &'a CompileCache,
    pub pool_limits: PoolLimits,
}

impl LoadedPlugin {
    /// Compiles (or fetches from the cache), checks the world, instantiates
    /// once (a start-up trap or an initial memory over the cap is found here,
    /// not on the message path) and keeps that instance warm in the pool.
    #[allow(clippy::too_many_arguments, reason = "one call site; every argument is distinct")]
    pub fn load(
        cx: &LoadContext<'_>,
        name: &str,
        wasm_path: &Path,
        wasm: &[u8],
        sha256: String,
        manifest: Manifest,
        manifest_sha256: String,
    ) -> Result<LoadedPlugin, PluginError> {
        assert!(cx.pool_limits.instances_max > 0);
        assert!(cx.pool_limits.idle_max <= cx.pool_limits.instances_max);
        let (component, cache_outcome) = cx.cache.component(cx.engine, name, wasm_path, wasm, &sha256)?;
        let kind = manifest.kind;
        check_world(cx.engine, name, kind, &component)?;

        let instance_pre = cx.linker.instantiate_pre(&component).map_err(|e| PluginError::Instantiate {
            plugin: name.to_owned(),
            message: format!(
                "imports something the host does not provide (only wasmq:policy/host and WASI 0.2): {}",
                error_text(&e)
            ),
        })?;
        let mismatch = |e: wasmtime::Error| PluginError::WorldMismatch {
            plugin: name.to_owned(),
            kind: kind.as_str(),
            world: kind.world(),
            detail: error_text(&e),
        };
        let pre = match kind {
            PluginKind::Router => WorldPre::Router(RouterPluginPre::new(instance_pre).map_err(mismatch)?),
            PluginKind::Filter => WorldPre::Filter(FilterPluginPre::new(instance_pre).map_err(mismatch)?),
            PluginKind::UpgradeValidator => {
                WorldPre::Validator(UpgradeValidatorPluginPre::new(instance_pre).map_err(mismatch)?)
            }
        };

        let mut plugin = LoadedPlugin {
            name: Arc::from(name),
            config: Arc::new(manifest.config.clone()),
            manifest,
            sha256,
            manifest_sha256,
            loaded_at: SystemTime::now(),
            cache_outcome,
            router_wants_body: false,
            engine: cx.engine.clone(),
            pre,
            pool_limits: cx.pool_limits,
            pool: Mutex::new(Pool { idle: Vec::new(), live: 0 }),
            pool_freed: Condvar::new(),
            stats: CallStats::default(),
        };

        // Warm one instance (a start-up trap or an initial memory over the
        // cap shows here, not on the message path) and, for a router, ask
        // `wants-body` once.
        let wants_body = plugin.run(|store, bindings| match bindings {
            WorldBindings::Router(router) => router.wasmq_policy_router().call_wants_body(store),
            WorldBindings::Filter(_) | WorldBindings::Validator(_) => Ok(false),
        })?;
        plugin.router_wants_body = wants_body;
        debug_assert_eq!(plugin.live_instances(), 1.min(plugin.pool_limits.idle_max));
        Ok(plugin)
    }

    pub fn kind(&self) -> PluginKind {
        self.manifest.kind
    }

    pub fn counters(&self) -> CallCounters {
        CallCounters {
            calls: self.stats.calls.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
            total_call_ns: self.stats.total_ns.load(Ordering::Relaxed),
        }
    }

    /// Instances alive now (idle + busy); for tests and `list()`.
    pub fn live_instances(&self) -> usize {
        self.pool.lock().live
    }

    fn instantiate(&self) -> Result<Instance, PluginError> {
        let state = HostState::new(self.name.clone(), self.config.clone(), self.manifest.memory_bytes_max);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Start functions and guest initialisers run under the same budget as a call.
        store.set_fuel(self.manifest.fuel_per_call).expect("fuel is enabled on the engine");
        let bindings = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &self.pre {
            WorldPre::Router(pre) => pre.instantiate(&mut store).map(WorldBindings::Router),
            WorldPre::Filter(pre) => pre.instantiate(&mut store).map(WorldBindings::Filter),
            WorldPre::Validator(pre) => pre.instantiate(&mut store).map(WorldBindings::Validator),
        }))
        .unwrap_or_else(|panic| Err(HostPanic::error(panic)));
        match bindings {
            Ok(bindings) => Ok(Instance { store, bindings }),
            Err(e) => Err(match self.classify(e) {
                PluginError::Trap { plugin, message } => PluginError::Instantiate { plugin, message },
                other => other,
            }),
        }
    }

    /// Takes an idle instance, or makes one if under `instances_max`, or waits.
    fn lease(&self) -> Result<Instance, PluginError> {
        let deadline = Instant::now() + Duration::from_millis(self.pool_limits.wait_ms_max);
        let mut pool = self.pool.lock();
        loop {
            if let Some(instance) = pool.idle.pop() {
                return Ok(instance);
            }
            if pool.live < self.pool_limits.instances_max {
                pool.live += 1;
                drop(pool);
                // Instantiation happens outside the lock: other callers may
                // return or take instances meanwhile.
                return self.instantiate().inspect_err(|_| self.forget_instance());
            }
            if self.pool_freed.wait_until(&mut pool, deadline).timed_out() {
                return Err(PluginError::Busy {
                    plugin: self.name.to_string(),
                    instances_max: self.pool_limits.instances_max,
                    wait_ms: self.pool_limits.wait_ms_max,
                });
            }
        }
    }

    fn give_back(&self, instance: Instance) {
        let mut pool = self.pool.lock();
        debug_assert!(pool.live > 0 && pool.idle.len() < pool.live);
        if pool.idle.len() < self.pool_limits.idle_max {
            pool.idle.push(instance);
            drop(pool);
        } else {
            pool.live -= 1;
            drop(pool);
            drop(instance);
        }
        self.pool_freed.notify_one();
    }

    fn forget_instance(&self) {
        let mut pool = self.pool.lock();
        assert!(pool.live > 0, "pool accounting: forgetting an instance that is not live");
        pool.live -= 1;
        drop(pool);
        self.pool_freed.notify_one();
    }

    /// Runs `f` on an instance under the per-call limits. On success the
    /// instance goes back to the pool; on any error it is dropped.
    fn call<R>(
        &self,
        f: impl FnOnce(&mut Store<HostState>, &WorldBindings) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let started = Instant::now();
        let result = self.run(f);
        let elapsed_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats.total_ns.fetch_add(elapsed_ns, Ordering::Relaxed);
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// `call` without the statistics.
    fn run<R>(
        &self,
        f: impl FnOnce(&mut Store<HostState>, &WorldBindings) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.lease().and_then(|mut instance| {
            instance.store.data_mut().begin_call();
            instance.store.set_fuel(self.manifest.fuel_per_call).expect("fuel is enabled on the engine");
            // A panic inside a host function (wasmtime resumes it on our side
            // once the wasm frames are unwound) must not take the broker
            // thread down: it fails this call like a trap.
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut instance.store, &instance.bindings)))
                    .unwrap_or_else(|panic| Err(HostPanic::error(panic)));
            instance.store.data_mut().end_call();
            match result {
                Ok(value) => {
                    self.give_back(instance);
                    Ok(value)
                }
                Err(e) => {
                    // A trapped instance may hold broken state: never reuse it.
                    drop(instance);
                    self.forget_instance();
                    Err(self.classify(e))
                }
            }
        })
    }

    fn classify(&self, e: wasmtime::Error) -> PluginError {
        let plugin = self.name.to_string();
        if let Some(Trap::OutOfFuel) = e.downcast_ref::<Trap>() {
            return PluginError::FuelExhausted { plugin, fuel_per_call: self.manifest.fuel_per_call };
        }
        if let Some(m) = e.downcast_ref::<MemoryLimitExceeded>() {
            return PluginError::MemoryLimit { plugin, wanted_bytes: m.wanted_bytes, limit_bytes: m.limit_bytes };
        }
        if let Some(BadResult(detail)) = e.downcast_ref::<BadResult>() {
            return PluginError::BadResult { plugin, detail: detail.clone() };
        }
        PluginError::Trap { plugin, message: error_text(&e) }
    }

    fn wrong_world(&self, wanted: PluginKind) -> PluginError {
        // Unreachable by construction (the registry sorts plugins by kind);
        // an error rather than a panic keeps the broker up regardless.
        PluginError::Registry(format!("internal: plugin `{}` of kind {} called as {wanted}", self.name, self.kind()))
    }

    pub fn route(&self, meta: &MessageMeta, body: Option<&[u8]>) -> Result<Decision, PluginError> {
        if self.kind() != PluginKind::Router {
            return Err(self.wrong_world(PluginKind::Router));
        }
        let queue_count = meta.queue_count;
        self.call(|store, bindings| {
            let WorldBindings::Router(router) = bindings else {
                unreachable!("kind checked above; bindings follow the kind")
            };
            let decision = router.wasmq_policy_router().call_route(store, meta, body)?;
            check_decision(&decision, queue_count)?;
            Ok(decision)
        })
    }

    /// Filters one encoded batch; returns one bool per message.
    pub fn filter(
        &self,
        group: &str,
        kind: ExpressionKind,
        expression: &str,
        batch: &FilterBatch,
    ) -> Result<Vec<u8>, PluginError> {
        if self.kind() != PluginKind::Filter {
            return Err(self.wrong_world(PluginKind::Filter));
        }
        let expected = batch.message_count();
        let wit_kind = match kind {
            ExpressionKind::Tag => WitExpressionKind::Tag,
            ExpressionKind::Sql92 => WitExpressionKind::Sql92,
        };
        self.call(|store, bindings| {
            let WorldBindings::Filter(filter) = bindings else {
                unreachable!("kind checked above; bindings follow the kind")
            };
            let verdicts = filter.wasmq_policy_filter().call_filter(
                store,
                group,
                wit_kind,
                expression,
                &batch.bytes,
                &batch.offsets,
            )?;
            if verdicts.len() != expected {
                return Err(wasmtime::Error::new(BadResult(format!(
                    "filter returned {} verdict bytes for {expected} messages",
                    verdicts.len()
                ))));
            }
            if let Some(i) = verdicts.iter().position(|&v| v > 1) {
                return Err(wasmtime::Error::new(BadResult(format!(
                    "verdict byte {i} is {}, must be 0 (skip) or 1 (deliver)",
                    verdicts[i]
                ))));
            }
            Ok(verdicts)
        })
    }

    pub fn validate(&self, change: &Change) -> Result<Verdict, PluginError> {
        if self.kind() != PluginKind::UpgradeValidator {
            return Err(self.wrong_world(PluginKind::UpgradeValidator));
        }
        self.call(|store, bindings| {
            let WorldBindings::Validator(validator) = bindings else {
                unreachable!("kind checked above; bindings follow the kind")
            };
            let verdict = validator.wasmq_policy_upgrade_validator().call_validate(store, change)?;
            if verdict.findings.len() > FINDINGS_MAX {
                return Err(wasmtime::Error::new(BadResult(format!(
                    "{} findings, the limit is {FINDINGS_MAX}",
                    verdict.findings.len()
                ))));
            }
            Ok(verdict)
        })
    }
}

/// Findings one validator may return for one change.
pub const FINDINGS_MAX: usize = 1024;
/// Longest reject reason passed to a producer.
pub const REJECT_REASON_BYTES_MAX: usize = 1024;
/// RocketMQ's topic name limit.
pub const TOPIC_BYTES_MAX: usize = 127;

fn check_decision(decision: &Decision, queue_count: u32) -> wasmtime::Result<()> {
    let bad = |text: String| Err(wasmtime::Error::new(BadResult(text)));
    match decision {
        Decision::DefaultQueue => Ok(()),
        Decision::Queue(q) if *q >= queue_count => {
            bad(format!("queue {q} out of range: the topic has {queue_count} write queues"))
        }
        Decision::Queue(_) => Ok(()),
        Decision::Redirect(topic) if topic.is_empty() || topic.len() > TOPIC_BYTES_MAX => {
            bad(format!("redirect topic must be 1..={TOPIC_BYTES_MAX} bytes, got {} bytes", topic.len()))
        }
        Decision::Redirect(_) => Ok(()),
        Decision::Reject(reason) if reason.len() > REJECT_REASON_BYTES_MAX => {
            bad(format!("reject reason is {} bytes, the limit is {REJECT_REASON_BYTES_MAX}", reason.len()))
        }
        Decision::Reject(_) => Ok(()),
    }
}

/// Refuses a component that does not export its manifest kind's interface,
/// naming what it does export (e.g. a filter loaded as a router).
fn check_world(engine: &Engine, name: &str, kind: PluginKind, component: &Component) -> Result<(), PluginError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(export, _)| export.to_owned())
        .collect();
    if exports.iter().any(|e| e == kind.export_name()) {
        return Ok(());
    }
    Err(PluginError::WorldMismatch {
        plugin: name.to_owned(),
        kind: kind.as_str(),
        world: kind.world(),
        detail: format!("it must export `{}`, it exports [{}]", kind.export_name(), exports.join(", ")),
    })
}

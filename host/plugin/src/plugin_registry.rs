//! The broker's view of its plugin directory: every loaded plugin in one
//! immutable snapshot (`PluginSet`), swapped atomically on reload.
//!
//! A call loads the snapshot once at its start and keeps its `Arc`, so a
//! call in flight during a reload finishes on the versions it started with;
//! the old versions are dropped when the last such call ends.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use crate::bindings::validator::exports::wasmq::policy::upgrade_validator::{
    ChangeKind, Finding, PluginVersion, Severity,
};
use crate::compile_cache::{CacheOutcome, CompileCache};
use crate::error::PluginError;
use crate::filter_batch::{ExpressionKind, FilterBatch, FilterMessage, chunk_bounds};
use crate::host_state::{HostState, linker};
use crate::loaded_plugin::{Change, Decision, LoadContext, LoadedPlugin, MessageMeta, PoolLimits, Verdict};
use crate::manifest::{Manifest, OnError, PluginKind, check_plugin_name};
use crate::watcher::Watcher;

/// Largest `.wasm` file accepted (Python components are ~18 MB, JS ~12 MB).
pub const WASM_BYTES_MAX: u64 = 128 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `pluginDir`: `NAME.wasm` + `NAME.toml` pairs. Must exist.
    pub plugin_dir: PathBuf,
    /// Compiled artifacts (created if missing). May be inside `plugin_dir`.
    pub cache_dir: PathBuf,
    /// Messages per `filter` call; bigger inputs are cut into chunks.
    pub filter_batch_max: usize,
    /// Bytes per `filter` call (a single bigger message still goes alone).
    pub filter_batch_bytes_max: usize,
    pub pool: PoolLimits,
    /// Plugins loaded at most; files beyond are reported and ignored.
    pub plugins_max: usize,
    /// Start the watcher thread (notify + periodic rescan). Off for tests
    /// that drive `reload_now` themselves.
    pub watch: bool,
    /// Periodic rescan, the fallback when file events are missed.
    pub rescan_interval_ms: u64,
    /// Quiet time after a file event before reloading, so a multi-write
    /// copy is read once, complete.
    pub debounce_ms: u64,
}

impl RegistryConfig {
    pub fn new(plugin_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        RegistryConfig {
            plugin_dir: plugin_dir.into(),
            cache_dir: cache_dir.into(),
            filter_batch_max: 1024,
            filter_batch_bytes_max: 16 * 1024 * 1024,
            pool: PoolLimits { instances_max: 8, idle_max: 4, wait_ms_max: 5_000 },
            plugins_max: 64,
            watch: true,
            rescan_interval_ms: 1_000,
            debounce_ms: 100,
        }
    }
}

impl RegistryConfig {
    fn check(&self) -> Result<(), PluginError> {
        let bad = |what: &str| Err(PluginError::Registry(format!("invalid registry config: {what}")));
        if self.filter_batch_max == 0 || self.filter_batch_max > FILTER_BATCH_MAX_LIMIT {
            return bad(&format!("filter_batch_max must be in 1..={FILTER_BATCH_MAX_LIMIT}"));
        }
        if self.filter_batch_bytes_max == 0 || self.filter_batch_bytes_max > u32::MAX as usize {
            return bad("filter_batch_bytes_max must be in 1..=u32::MAX (offsets are u32)");
        }
        if self.pool.instances_max == 0 || self.pool.idle_max > self.pool.instances_max {
            return bad("pool: need 1 <= instances_max and idle_max <= instances_max");
        }
        if self.plugins_max == 0 {
            return bad("plugins_max must be positive");
        }
        if self.rescan_interval_ms == 0 || self.debounce_ms == 0 {
            return bad("rescan_interval_ms and debounce_ms must be positive");
        }
        Ok(())
    }
}

/// Largest `filter_batch_max` accepted: bounds one call's buffers.
pub const FILTER_BATCH_MAX_LIMIT: usize = 65_536;

/// What `route` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// No router had an opinion: round robin / message-group hash.
    Default,
    Queue(u32),
    Redirect(String),
    /// Refuse the send; the text reaches the producer.
    Reject(String),
}

/// A message about to be stored, as routers see it.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub topic: &'a str,
    pub tag: Option<&'a str>,
    pub keys: &'a [String],
    pub properties: &'a [(String, String)],
    pub message_group: Option<&'a str>,
    pub body: &'a [u8],
    /// Write-queue count of `topic`.
    pub queue_count: u32,
}

/// One loaded plugin, for `list()` (admin API, metrics).
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub name: String,
    pub kind: PluginKind,
    /// sha256 of the `.wasm`: the plugin's version.
    pub sha256: String,
    pub manifest_sha256: String,
    pub description: String,
    pub topics: Vec<String>,
    pub order: i64,
    pub on_error: OnError,
    pub loaded_at: SystemTime,
    /// Whether this version's compiled code came from the on-disk cache.
    pub compiled_from_cache: bool,
    pub calls: u64,
    pub errors: u64,
    pub total_call_ns: u64,
    pub mean_call_ns: u64,
    pub live_instances: usize,
}

/// Outcome of one reload pass. `rejected` plugins keep their old version
/// (if they had one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub generation: u64,
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
    /// (plugin or file name, error text).
    pub rejected: Vec<(String, String)>,
}

impl ReloadReport {
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty())
    }
}

/// An immutable snapshot of every loaded plugin, sorted for calling.
struct PluginSet {
    generation: u64,
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// By (order, name): routers first non-default wins, filters AND,
    /// validators all run.
    routers: Vec<Arc<LoadedPlugin>>,
    filters: Vec<Arc<LoadedPlugin>>,
    validators: Vec<Arc<LoadedPlugin>>,
}

impl PluginSet {
    fn new(generation: u64, plugins: BTreeMap<String, Arc<LoadedPlugin>>) -> PluginSet {
        let of_kind = |kind: PluginKind| {
            let mut v: Vec<Arc<LoadedPlugin>> = plugins.values().filter(|p| p.kind() == kind).cloned().collect();
            v.sort_by(|a, b| (a.manifest.order, &a.name).cmp(&(b.manifest.order, &b.name)));
            v
        };
        PluginSet {
            generation,
            routers: of_kind(PluginKind::Router),
            filters: of_kind(PluginKind::Filter),
            validators: of_kind(PluginKind::UpgradeValidator),
            plugins,
        }
    }
}

/// File metadata at the last look, per plugin name: an unchanged
/// fingerprint is not re-read, so the periodic rescan costs a `stat` per file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileFingerprint {
    wasm: Option<(u64, SystemTime)>,
    toml: Option<(u64, SystemTime)>,
}

/// Fingerprints by plugin name, and (file name, reason) of unusable files.
type DirectoryScan = (BTreeMap<String, FileFingerprint>, Vec<(String, String)>);

#[derive(Default)]
struct ReloadState {
    /// Fingerprint at the last attempt per name, whatever its outcome: a
    /// rejected version is not retried (nor reported again) until its files change.
    seen: HashMap<String, FileFingerprint>,
    /// Directory-level problems already reported (bad names, too many files).
    reported: std::collections::HashSet<String>,
}

pub(crate) struct RegistryInner {
    config: RegistryConfig,
    engine: Engine,
    linker: Linker<HostState>,
    cache: CompileCache,
    current: ArcSwap<PluginSet>,
    /// One reload at a time (watcher thread and `reload_now` callers).
    reload: Mutex<ReloadState>,
}

pub struct PluginRegistry {
    inner: Arc<RegistryInner>,
    watcher: Option<Watcher>,
}

fn engine() -> Result<Engine, PluginError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Fuel bounds every call's CPU: a guest loop traps instead of hanging a broker thread.
    config.consume_fuel(true);
    config.parallel_compilation(true);
    Engine::new(&config).map_err(|e| PluginError::Registry(format!("cannot create wasmtime engine: {e}")))
}

impl PluginRegistry {
    /// Loads every plugin in `config.plugin_dir` and, if `config.watch`,
    /// starts the hot-reload watcher. A bad plugin does not fail `open`: it
    /// is reported (log + `ReloadReport`) and skipped.
    pub fn open(config: RegistryConfig) -> Result<PluginRegistry, PluginError> {
        Self::open_with_report(config).map(|(registry, _)| registry)
    }

    pub fn open_with_report(config: RegistryConfig) -> Result<(PluginRegistry, ReloadReport), PluginError> {
        config.check()?;
        if !config.plugin_dir.is_dir() {
            return Err(PluginError::Registry(format!(
                "plugin directory {} does not exist or is not a directory",
                config.plugin_dir.display()
            )));
        }
        let engine = engine()?;
        let linker = linker(&engine).map_err(|e| PluginError::Registry(format!("cannot link host functions: {e}")))?;
        let cache = CompileCache::open(&config.cache_dir, &engine)?;
        let inner = Arc::new(RegistryInner {
            config,
            engine,
            linker,
            cache,
            current: ArcSwap::from_pointee(PluginSet::new(0, BTreeMap::new())),
            reload: Mutex::new(ReloadState::default()),
        });
        let report = inner.reload_now();
        let watcher = if inner.config.watch { Some(Watcher::start(inner.clone())) } else { None };
        Ok((PluginRegistry { inner, watcher }, report))
    }

    /// Rescans the plugin directory now (the watcher does this by itself).
    pub fn reload_now(&self) -> ReloadReport {
        self.inner.reload_now()
    }

    /// Generation of the current plugin set; +1 per swap.
    pub fn generation(&self) -> u64 {
        self.inner.current.load().generation
    }

    pub fn watching(&self) -> bool {
        self.watcher.is_some()
    }

    pub fn list(&self) -> Vec<PluginInfo> {
        let set = self.inner.current.load_full();
        set.plugins
            .values()
            .map(|p| {
                let c = p.counters();
                PluginInfo {
                    name: p.name.to_string(),
                    kind: p.kind(),
                    sha256: p.sha256.clone(),
                    manifest_sha256: p.manifest_sha256.clone(),
                    description: p.manifest.description.clone(),
                    topics: p.manifest.topics.clone(),
                    order: p.manifest.order,
                    on_error: p.manifest.on_error,
                    loaded_at: p.loaded_at,
                    compiled_from_cache: p.cache_outcome == CacheOutcome::Hit,
                    calls: c.calls,
                    errors: c.errors,
                    total_call_ns: c.total_call_ns,
                    mean_call_ns: c.total_call_ns.checked_div(c.calls).unwrap_or(0),
                    live_instances: p.live_instances(),
                }
            })
            .collect()
    }

    /// Whether any filter applies (the broker can skip building a batch).
    pub fn has_filters_for(&self, group: &str, topic: &str) -> bool {
        let set = self.inner.current.load();
        set.filters.iter().any(|p| p.manifest.applies_to_topic(topic) && p.manifest.applies_to_group(group))
    }

    /// Whether any router applies to `topic` (the broker can skip handing the message to a
    /// blocking thread). A reload between this and [`Self::route`] is harmless: the message
    /// is placed as if it had arrived just before the reload.
    pub fn has_routers_for(&self, topic: &str) -> bool {
        let set = self.inner.current.load();
        set.routers.iter().any(|r| r.manifest.applies_to_topic(topic))
    }

    /// Runs the routers whose `topics` match, in `order`; the first decision
    /// other than default-queue wins. A failing router counts as "no
    /// opinion" under `onError = "pass"` and rejects the send under "reject".
    pub fn route(&self, input: &RouteInput<'_>) -> Result<RouteOutcome, PluginError> {
        if input.topic.is_empty() {
            return Err(PluginError::InvalidInput("route: empty topic".to_owned()));
        }
        let set = self.inner.current.load_full();
        let mut meta: Option<MessageMeta> = None;
        for router in set.routers.iter().filter(|r| r.manifest.applies_to_topic(input.topic)) {
            let meta = meta.get_or_insert_with(|| MessageMeta {
                topic: input.topic.to_owned(),
                tag: input.tag.map(str::to_owned),
                keys: input.keys.to_vec(),
                properties: input.properties.to_vec(),
                message_group: input.message_group.map(str::to_owned),
                body_size: u32::try_from(input.body.len()).unwrap_or(u32::MAX),
                queue_count: input.queue_count,
            });
            let body = router.router_wants_body.then_some(input.body);
            match router.route(meta, body) {
                Ok(Decision::DefaultQueue) => continue,
                Ok(Decision::Queue(q)) => return Ok(RouteOutcome::Queue(q)),
                Ok(Decision::Redirect(topic)) => return Ok(RouteOutcome::Redirect(topic)),
                Ok(Decision::Reject(reason)) => return Ok(RouteOutcome::Reject(reason)),
                Err(e) => match router.manifest.on_error {
                    OnError::Pass => {
                        tracing::warn!(plugin = %router.name, "router failed, onError = pass: {e}");
                        continue;
                    }
                    OnError::Reject => {
                        tracing::warn!(plugin = %router.name, "router failed, onError = reject: {e}");
                        return Ok(RouteOutcome::Reject(e.to_string()));
                    }
                },
            }
        }
        Ok(RouteOutcome::Default)
    }

    /// One verdict per message (true = deliver): the AND of every filter
    /// whose `topics` and `groups` match. Batches are cut to
    /// `filter_batch_max` messages / `filter_batch_bytes_max` bytes.
    /// A failing filter delivers under `onError = "pass"`; under "reject"
    /// the whole call fails (nothing delivered, nothing skipped: the broker
    /// answers the pull with an error and the messages stay where they are).
    pub fn filter(
        &self,
        group: &str,
        topic: &str,
        kind: ExpressionKind,
        expression: &str,
        messages: &[FilterMessage<'_>],
    ) -> Result<Vec<bool>, PluginError> {
        let set = self.inner.current.load_full();
        let filters: Vec<&Arc<LoadedPlugin>> = set
            .filters
            .iter()
            .filter(|p| p.manifest.applies_to_topic(topic) && p.manifest.applies_to_group(group))
            .collect();
        let mut verdicts = vec![true; messages.len()];
        if filters.is_empty() || messages.is_empty() {
            return Ok(verdicts);
        }
        let any_body = filters.iter().any(|p| p.manifest.wants_body);
        let chunks = chunk_bounds(
            topic,
            messages,
            any_body,
            self.inner.config.filter_batch_max,
            self.inner.config.filter_batch_bytes_max,
        );
        let mut without_body = FilterBatch::default();
        let mut with_body = FilterBatch::default();
        for chunk in chunks {
            let chunk_messages = &messages[chunk.clone()];
            let mut encoded_without = false;
            let mut encoded_with = false;
            for filter in &filters {
                let batch = if filter.manifest.wants_body {
                    if !encoded_with {
                        with_body.encode(topic, chunk_messages, true)?;
                        encoded_with = true;
                    }
                    &with_body
                } else {
                    if !encoded_without {
                        without_body.encode(topic, chunk_messages, false)?;
                        encoded_without = true;
                    }
                    &without_body
                };
                match filter.filter(group, kind, expression, batch) {
                    Ok(bytes) => {
                        debug_assert_eq!(bytes.len(), chunk.len());
                        for (verdict, byte) in verdicts[chunk.clone()].iter_mut().zip(bytes) {
                            *verdict &= byte == 1;
                        }
                    }
                    Err(e) => match filter.manifest.on_error {
                        OnError::Pass => {
                            tracing::warn!(plugin = %filter.name, "filter failed, onError = pass (delivering): {e}");
                        }
                        OnError::Reject => {
                            tracing::warn!(plugin = %filter.name, "filter failed, onError = reject: {e}");
                            return Err(e);
                        }
                    },
                }
            }
        }
        assert_eq!(verdicts.len(), messages.len());
        Ok(verdicts)
    }

    /// Runs every upgrade-validator plugin. Refused if any refuses, returns
    /// an error finding, or fails under `onError = "reject"`.
    pub fn validate(&self, change: &Change) -> Verdict {
        let set = self.inner.current.load_full();
        validate_with(&set, change)
    }
}

impl Drop for PluginRegistry {
    fn drop(&mut self) {
        // Stop and join the watcher before the registry goes away.
        self.watcher.take();
    }
}

fn validate_with(set: &PluginSet, change: &Change) -> Verdict {
    let mut accept = true;
    let mut findings = Vec::new();
    for validator in &set.validators {
        match validator.validate(change) {
            Ok(verdict) => {
                let has_error = verdict.findings.iter().any(|f| f.severity == Severity::Error);
                accept &= verdict.accept && !has_error;
                findings.extend(
                    verdict
                        .findings
                        .into_iter()
                        .map(|f| Finding { text: format!("[{}] {}", validator.name, f.text), ..f }),
                );
            }
            Err(e) => {
                let severity = match validator.manifest.on_error {
                    OnError::Pass => Severity::Warning,
                    OnError::Reject => {
                        accept = false;
                        Severity::Error
                    }
                };
                findings.push(Finding { severity, code: "plugin-failed".to_owned(), text: e.to_string() });
            }
        }
    }
    Verdict { accept, findings }
}

/// The manifest as key/value pairs, so validators can judge limits too.
fn manifest_pairs(m: &Manifest) -> Vec<(String, String)> {
    let mut pairs = vec![
        ("kind".to_owned(), m.kind.as_str().to_owned()),
        ("topics".to_owned(), m.topics.join(",")),
        ("groups".to_owned(), m.groups.join(",")),
        ("order".to_owned(), m.order.to_string()),
        ("onError".to_owned(), m.on_error.as_str().to_owned()),
        ("wantsBody".to_owned(), m.wants_body.to_string()),
        ("limits.fuelPerCall".to_owned(), m.fuel_per_call.to_string()),
        ("limits.memoryBytesMax".to_owned(), m.memory_bytes_max.to_string()),
    ];
    pairs.extend(m.config.iter().map(|(k, v)| (format!("config.{k}"), v.clone())));
    pairs
}

fn plugin_change(old: Option<&LoadedPlugin>, new: Option<&LoadedPlugin>) -> Change {
    let version = |p: &LoadedPlugin| PluginVersion {
        name: p.name.to_string(),
        kind: p.kind().as_str().to_owned(),
        sha256: p.sha256.clone(),
    };
    Change {
        kind: ChangeKind::Plugin,
        old_config: old.map(|p| manifest_pairs(&p.manifest)).unwrap_or_default(),
        new_config: new.map(|p| manifest_pairs(&p.manifest)).unwrap_or_default(),
        nodes: Vec::new(),
        old_plugins: old.map(version).into_iter().collect(),
        new_plugins: new.map(version).into_iter().collect(),
    }
}

fn refusal_reason(verdict: &Verdict) -> String {
    let texts: Vec<String> = verdict
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error || !verdict.accept)
        .map(|f| format!("{}: {}", f.code, f.text))
        .collect();
    if texts.is_empty() { "refused without findings".to_owned() } else { texts.join("; ") }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn stat(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    Some((m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

impl RegistryInner {
    pub(crate) fn rescan_interval(&self) -> Duration {
        Duration::from_millis(self.config.rescan_interval_ms)
    }

    pub(crate) fn debounce(&self) -> Duration {
        Duration::from_millis(self.config.debounce_ms)
    }

    pub(crate) fn plugin_dir(&self) -> &Path {
        &self.config.plugin_dir
    }

    /// Plugin names with a `.wasm` or `.toml` in the directory; invalid
    /// names are returned separately with the reason.
    fn scan(&self) -> Result<DirectoryScan, PluginError> {
        let dir = &self.config.plugin_dir;
        let entries = std::fs::read_dir(dir).map_err(|source| PluginError::Io { path: dir.clone(), source })?;
        let mut names = BTreeMap::new();
        let mut invalid = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let Some(stem) = file_name.strip_suffix(".wasm").or_else(|| file_name.strip_suffix(".toml")) else {
                continue;
            };
            // Hidden files are how editors and copy tools stage writes.
            if file_name.starts_with('.') {
                continue;
            }
            if let Err(reason) = check_plugin_name(stem) {
                invalid.push((file_name.to_owned(), reason));
                continue;
            }
            names.entry(stem.to_owned()).or_insert_with(|| FileFingerprint {
                wasm: stat(&dir.join(format!("{stem}.wasm"))),
                toml: stat(&dir.join(format!("{stem}.toml"))),
            });
        }
        Ok((names, invalid))
    }

    /// Reads, compiles, checks and instantiates `name`'s current files.
    fn load_candidate(&self, name: &str) -> Result<LoadedPlugin, PluginError> {
        let dir = &self.config.plugin_dir;
        let wasm_path = dir.join(format!("{name}.wasm"));
        let toml_path = dir.join(format!("{name}.toml"));
        if !toml_path.is_file() {
            return Err(PluginError::Manifest {
                path: toml_path,
                message: format!("missing: every plugin needs a manifest next to {name}.wasm"),
            });
        }
        let manifest_text =
            std::fs::read(&toml_path).map_err(|source| PluginError::Io { path: toml_path.clone(), source })?;
        let manifest = Manifest::load(&toml_path)?;
        let wasm_len =
            std::fs::metadata(&wasm_path).map_err(|source| PluginError::Io { path: wasm_path.clone(), source })?.len();
        if wasm_len > WASM_BYTES_MAX {
            return Err(PluginError::Compile {
                plugin: name.to_owned(),
                path: wasm_path,
                message: format!("file is {wasm_len} bytes, the limit is {WASM_BYTES_MAX}"),
            });
        }
        let wasm = std::fs::read(&wasm_path).map_err(|source| PluginError::Io { path: wasm_path.clone(), source })?;
        let sha256 = sha256_hex(&wasm);
        let cx = LoadContext {
            engine: &self.engine,
            linker: &self.linker,
            cache: &self.cache,
            pool_limits: self.config.pool,
        };
        LoadedPlugin::load(&cx, name, &wasm_path, &wasm, sha256, manifest, sha256_hex(&manifest_text))
    }

    pub(crate) fn reload_now(&self) -> ReloadReport {
        let mut state = self.reload.lock();
        let current = self.current.load_full();
        let mut report = ReloadReport { generation: current.generation, ..ReloadReport::default() };
        let (mut scanned, mut problems) = match self.scan() {
            Ok(found) => found,
            Err(e) => {
                tracing::error!("plugin rescan failed, keeping the current plugins: {e}");
                report.rejected.push((self.config.plugin_dir.display().to_string(), e.to_string()));
                return report;
            }
        };
        if scanned.len() > self.config.plugins_max {
            // Loaded plugins keep their places; new names fill what is left.
            let loaded = scanned.keys().filter(|n| current.plugins.contains_key(*n));
            let new = scanned.keys().filter(|n| !current.plugins.contains_key(*n));
            let keep: std::collections::BTreeSet<String> =
                loaded.chain(new).take(self.config.plugins_max).cloned().collect();
            scanned.retain(|name, _| {
                let kept = keep.contains(name);
                if !kept {
                    problems.push((
                        name.clone(),
                        format!("not loaded: more than plugins_max = {} plugins", self.config.plugins_max),
                    ));
                }
                kept
            });
        }
        // Directory-level problems are reported when they first appear, not
        // on every rescan.
        let problem_keys: std::collections::HashSet<String> =
            problems.iter().map(|(n, r)| format!("{n}: {r}")).collect();
        for (name, reason) in problems {
            if !state.reported.contains(&format!("{name}: {reason}")) {
                tracing::error!(file = %name, "{reason}");
                report.rejected.push((name, reason));
            }
        }
        state.reported = problem_keys;

        let mut next = current.plugins.clone();
        let names: std::collections::BTreeSet<String> = scanned.keys().chain(current.plugins.keys()).cloned().collect();
        for name in &names {
            let fingerprint = scanned.get(name).cloned().unwrap_or(FileFingerprint { wasm: None, toml: None });
            if state.seen.get(name) == Some(&fingerprint) {
                continue; // nothing changed since the last attempt, good or bad
            }
            state.seen.insert(name.clone(), fingerprint.clone());
            let old = current.plugins.get(name);

            if fingerprint.wasm.is_none() {
                let Some(old) = old else {
                    let reason = format!("{name}.toml has no {name}.wasm next to it");
                    tracing::error!(plugin = %name, "not loaded: {reason}");
                    report.rejected.push((name.clone(), reason));
                    continue;
                };
                let verdict = validate_with(&current, &plugin_change(Some(old), None));
                if !verdict.accept {
                    let e = PluginError::Refused { plugin: name.clone(), reason: refusal_reason(&verdict) };
                    tracing::error!(plugin = %name, "removal refused, the plugin keeps serving: {e}");
                    report.rejected.push((name.clone(), e.to_string()));
                    continue;
                }
                tracing::info!(plugin = %name, "plugin removed");
                next.remove(name);
                report.removed.push(name.clone());
                continue;
            }

            let candidate = match self.load_candidate(name) {
                Ok(candidate) => candidate,
                Err(e) => {
                    match old {
                        Some(_) => {
                            tracing::error!(plugin = %name, "new version rejected, the old version keeps serving: {e}")
                        }
                        None => tracing::error!(plugin = %name, "plugin rejected: {e}"),
                    }
                    report.rejected.push((name.clone(), e.to_string()));
                    continue;
                }
            };
            if let Some(old) = old
                && old.sha256 == candidate.sha256
                && old.manifest_sha256 == candidate.manifest_sha256
            {
                continue; // touched, not changed
            }
            let verdict = validate_with(&current, &plugin_change(old.map(|p| &**p), Some(&candidate)));
            if !verdict.accept {
                let e = PluginError::Refused { plugin: name.clone(), reason: refusal_reason(&verdict) };
                tracing::error!(plugin = %name, "{e}; the old version (if any) keeps serving");
                report.rejected.push((name.clone(), e.to_string()));
                continue;
            }
            tracing::info!(
                plugin = %name,
                kind = %candidate.kind(),
                sha256 = %candidate.sha256,
                cache = ?candidate.cache_outcome,
                "plugin {}",
                if old.is_some() { "replaced" } else { "loaded" }
            );
            if old.is_some() {
                report.replaced.push(name.clone());
            } else {
                report.added.push(name.clone());
            }
            next.insert(name.clone(), Arc::new(candidate));
        }
        state.seen.retain(|name, _| scanned.contains_key(name) || next.contains_key(name));

        if report.changed() {
            let generation = current.generation + 1;
            self.current.store(Arc::new(PluginSet::new(generation, next)));
            report.generation = generation;
        }
        report
    }
}

//! Broker configuration: one struct, read from TOML (`broker.toml`) or from a RocketMQ-style
//! properties file (`broker.conf`, `key=value`, `#` comments), with RocketMQ key names.
//!
//! Both formats go through the same path: file → key/value table → drop the RocketMQ keys
//! wasmq knows but does not use (one warning each) → serde with `deny_unknown_fields` →
//! [`BrokerConfig::validate`]. Every error names the file and the key.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::replication::idle_poll::IDLE_POLL_US_MAX;

/// Hard cap on `maxMessageSize`: one message must fit comfortably in a commitlog segment
/// and in one gRPC frame.
pub const MESSAGE_SIZE_MAX_BYTES: u32 = 64 * 1024 * 1024;
/// Smallest commitlog segment we accept: below this, segment churn dominates.
pub const COMMIT_LOG_SEGMENT_MIN_BYTES: u64 = 1024 * 1024;
/// Bound on a config file's size: a config is a few KiB; anything bigger is a mistake.
pub const CONFIG_FILE_SIZE_MAX_BYTES: u64 = 1024 * 1024;
/// Members of one DLedger group: 1, 3 or 5 in practice; 9 is a generous cap.
pub const DLEDGER_PEERS_MAX: usize = 9;
/// Name servers one broker registers with.
pub const NAMESRV_ADDRS_MAX: usize = 16;
/// `diskSpaceWarningLevelRatio` default (RocketMQ's) and cap: at 100 % the disk is full.
pub const DISK_FULL_PERCENT_DEFAULT: u32 = 90;
pub const DISK_FULL_PERCENT_MAX: u32 = 99;
/// Bound on concurrently processed sends (`sendMessageThreadPoolNums`).
pub const SEND_CONCURRENCY_MAX: u32 = 4096;
/// RocketMQ's `serverChannelMaxIdleTimeSeconds` default (`NettyServerConfig`).
const SERVER_CHANNEL_MAX_IDLE_TIME_SECONDS_DEFAULT: u32 = 120;
/// A day: an idle limit beyond it is a typo (use 0 to never close).
const SERVER_CHANNEL_MAX_IDLE_TIME_SECONDS_MAX: u32 = 86_400;
/// Seastar's default idle poll (`--idle-poll-time-us`); measured in ARCHITECTURE.md.
const RAFT_IDLE_POLL_US_DEFAULT: u64 = 200;
/// `serverWorkerThreads` cap: beyond a few per CPU, threads only add switching.
pub const SERVER_WORKER_THREADS_MAX: u32 = 256;

/// `flushDiskType`: when a send is acknowledged relative to fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlushDiskType {
    /// Acknowledge after the entry is fsynced (group commit: one fsync serves many sends).
    SyncFlush,
    /// Acknowledge after the entry is in the page cache; a flusher fsyncs every
    /// `flushIntervalCommitLog` ms.
    AsyncFlush,
}

/// The broker's configuration. Field names are RocketMQ's property keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct BrokerConfig {
    pub broker_cluster_name: String,
    pub broker_name: String,
    /// 0 = master in RocketMQ's master/slave terms; with DLedger the role comes from Raft.
    pub broker_id: u64,
    /// Address this broker listens on and advertises to clients.
    #[serde(rename = "brokerIP1")]
    pub broker_ip1: String,
    /// Client gRPC port (RocketMQ v2 messaging service + wasmq admin service).
    pub listen_port: u16,
    /// Name servers, `host:port;host:port`. Empty: do not register anywhere.
    pub namesrv_addr: String,
    pub store_path_root_dir: String,
    /// Default: `<storePathRootDir>/log`. When set, `<storePathRootDir>/log` becomes a symlink
    /// to it.
    pub store_path_commit_log: String,
    pub mapped_file_size_commit_log: u64,
    pub flush_disk_type: FlushDiskType,
    /// ASYNC_FLUSH: interval between background fsyncs.
    pub flush_interval_commit_log: u64,
    /// Hours a commitlog segment is kept after its last write.
    pub file_reserved_time: u64,
    /// Percent of the store's disk above which old segments are deleted early.
    pub disk_max_used_space_ratio: u32,
    /// Percent of the store's disk above which sends are refused (RocketMQ 5's
    /// `diskSpaceWarningLevelRatio`), so the commitlog never fills the disk. Unset: see
    /// [`BrokerConfig::disk_full_percent`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_space_warning_level_ratio: Option<u32>,
    pub max_message_size: u32,
    pub enable_d_leger_commit_log: bool,
    pub d_leger_group: String,
    /// `n0-127.0.0.1:40911;n1-127.0.0.1:40912;n2-127.0.0.1:40913`.
    pub d_leger_peers: String,
    pub d_leger_self_id: String,
    /// wasmq extension: each member's client endpoint (`id-host:port`, same ids as
    /// `dLegerPeers`), so any member can tell clients where the leader is. Empty: only this
    /// node's own endpoint (`brokerIP1:listenPort`) is known.
    pub d_leger_client_endpoints: String,
    /// Leadership is transferred to this member when it is healthy. Empty: none.
    pub preferred_leader_id: String,
    pub d_leger_heartbeat_interval_ms: u64,
    pub d_leger_election_timeout_min_ms: u64,
    pub d_leger_election_timeout_max_ms: u64,
    /// Directory of policy plugins (`NAME.wasm` + `NAME.toml`). Empty: no plugins.
    pub plugin_dir: String,
    /// Prometheus text endpoint port. 0: disabled.
    pub metrics_port: u16,
    /// `trace|debug|info|warn|error`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// Sends processed concurrently; more wait (bounded by the gRPC layer).
    pub send_message_thread_pool_nums: u32,
    /// Worker threads of the broker's runtime (gRPC front end, admin, plugins); the Raft
    /// driver has a thread of its own besides. 0: one per CPU. When several brokers share a
    /// machine (a local group), 1 each avoids cross-thread wake-ups: measured on 2 cores with
    /// 3 members, the leader spent 15 % less CPU per message.
    pub server_worker_threads: u32,
    /// A client connection without a call for this long is closed (GOAWAY), as RocketMQ
    /// closes an idle channel: a client that vanished without closing does not hold its
    /// connection forever. A live RocketMQ client heartbeats every 10 s and a gRPC client
    /// reconnects on its next call. 0: never.
    pub server_channel_max_idle_time_seconds: u32,
    /// How long the Raft driver's thread keeps polling its sockets after its last input
    /// before it sleeps (`replication::idle_poll`): waking a sleeping thread costs tens of
    /// microseconds on a virtual machine, several times per send. CPU that would be idle
    /// buys latency; 0 turns it off (a member on a busy shared machine).
    pub raft_idle_poll_us: u64,
    /// Topics are created by `mqadmin updateTopic` only, unless this is set.
    pub auto_create_topic_enable: bool,
    /// Queue count of auto-created topics and of `%RETRY%`/`%DLQ%` topics.
    pub default_topic_queue_nums: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            broker_cluster_name: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            broker_ip1: "127.0.0.1".into(),
            listen_port: 8081,
            namesrv_addr: String::new(),
            store_path_root_dir: "~/store".into(),
            store_path_commit_log: String::new(),
            mapped_file_size_commit_log: 1024 * 1024 * 1024,
            flush_disk_type: FlushDiskType::AsyncFlush,
            flush_interval_commit_log: 500,
            file_reserved_time: 72,
            disk_max_used_space_ratio: 75,
            disk_space_warning_level_ratio: None,
            max_message_size: 4 * 1024 * 1024,
            enable_d_leger_commit_log: false,
            d_leger_group: String::new(),
            d_leger_peers: String::new(),
            d_leger_self_id: String::new(),
            d_leger_client_endpoints: String::new(),
            preferred_leader_id: String::new(),
            d_leger_heartbeat_interval_ms: 200,
            d_leger_election_timeout_min_ms: 1000,
            d_leger_election_timeout_max_ms: 2000,
            plugin_dir: String::new(),
            metrics_port: 0,
            log_level: "info".into(),
            send_message_thread_pool_nums: 64,
            server_worker_threads: 0,
            server_channel_max_idle_time_seconds: SERVER_CHANNEL_MAX_IDLE_TIME_SECONDS_DEFAULT,
            raft_idle_poll_us: RAFT_IDLE_POLL_US_DEFAULT,
            auto_create_topic_enable: false,
            default_topic_queue_nums: 8,
        }
    }
}

/// Value kinds of the keys of [`BrokerConfig`], for the untyped `.conf` format.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    U64,
    Bool,
    OneOf(&'static [&'static str]),
}

/// Every key of [`BrokerConfig`] with its kind. A unit test keeps this in step with the
/// struct (serde is the source of truth for the key names).
const KEYS: &[(&str, Kind)] = &[
    ("brokerClusterName", Kind::Str),
    ("brokerName", Kind::Str),
    ("brokerId", Kind::U64),
    ("brokerIP1", Kind::Str),
    ("listenPort", Kind::U64),
    ("namesrvAddr", Kind::Str),
    ("storePathRootDir", Kind::Str),
    ("storePathCommitLog", Kind::Str),
    ("mappedFileSizeCommitLog", Kind::U64),
    ("flushDiskType", Kind::OneOf(&["SYNC_FLUSH", "ASYNC_FLUSH"])),
    ("flushIntervalCommitLog", Kind::U64),
    ("fileReservedTime", Kind::U64),
    ("diskMaxUsedSpaceRatio", Kind::U64),
    ("diskSpaceWarningLevelRatio", Kind::U64),
    ("maxMessageSize", Kind::U64),
    ("enableDLegerCommitLog", Kind::Bool),
    ("dLegerGroup", Kind::Str),
    ("dLegerPeers", Kind::Str),
    ("dLegerSelfId", Kind::Str),
    ("dLegerClientEndpoints", Kind::Str),
    ("preferredLeaderId", Kind::Str),
    ("dLegerHeartbeatIntervalMs", Kind::U64),
    ("dLegerElectionTimeoutMinMs", Kind::U64),
    ("dLegerElectionTimeoutMaxMs", Kind::U64),
    ("pluginDir", Kind::Str),
    ("metricsPort", Kind::U64),
    ("logLevel", Kind::OneOf(&["trace", "debug", "info", "warn", "error"])),
    ("sendMessageThreadPoolNums", Kind::U64),
    ("serverWorkerThreads", Kind::U64),
    ("serverChannelMaxIdleTimeSeconds", Kind::U64),
    ("raftIdlePollUs", Kind::U64),
    ("autoCreateTopicEnable", Kind::Bool),
    ("defaultTopicQueueNums", Kind::U64),
];

/// RocketMQ broker keys wasmq accepts and ignores (one warning each), so an existing
/// `broker.conf` works unchanged. Anything not here and not in [`KEYS`] is an error.
pub const KNOWN_UNUSED_KEYS: &[&str] = &[
    "brokerRole",
    "brokerIP2",
    "haListenPort",
    "deleteWhen",
    "storePathConsumeQueue",
    "storePathIndex",
    "storeCheckpoint",
    "abortFile",
    "mappedFileSizeConsumeQueue",
    "mapedFileSizeConsumeQueue",
    "mapedFileSizeCommitLog",
    "autoCreateSubscriptionGroup",
    "pullMessageThreadPoolNums",
    "queryMessageThreadPoolNums",
    "adminBrokerThreadPoolNums",
    "clientManageThreadPoolNums",
    "consumerManageThreadPoolNums",
    "transientStorePoolEnable",
    "useReentrantLockWhenPutMessage",
    "waitTimeMillsInSendQueue",
    "osPageCacheBusyTimeOutMills",
    "fetchNamesrvAddrByAddressServer",
    "rocketmqHome",
    "brokerPermission",
    "traceTopicEnable",
    "slaveReadEnable",
    "enablePropertyFilter",
    "filterServerNums",
    "sendThreadPoolQueueCapacity",
    "maxTransferCountOnMessageInMemory",
    "accessMessageInMemoryMaxRatio",
    "messageIndexEnable",
    "defaultQueryMaxNum",
    "cleanFileForciblyEnable",
    "flushCommitLogLeastPages",
    "flushConsumeQueueLeastPages",
    "enableControllerMode",
    "enableSlaveActingMaster",
    "enableDLegerCommitLogV2",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: file is {size_bytes} bytes, more than the {max_bytes}-byte limit")]
    TooBig { path: PathBuf, size_bytes: u64, max_bytes: u64 },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}:{line}: unknown key `{key}`")]
    UnknownKey { path: PathBuf, line: usize, key: String },
    #[error("{path}: key `{key}`: {message}")]
    BadValue { path: PathBuf, key: String, message: String },
}

/// One member of a DLedger group, parsed from `dLegerPeers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DLedgerPeer {
    pub id: String,
    /// `host:port` of its Raft peer service.
    pub address: String,
    pub port: u16,
}

/// How strictly [`BrokerConfig::validate`] checks the store path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreCheck {
    /// `--check`: the nearest existing ancestor must be a writable directory; nothing is
    /// created.
    WithoutCreating,
    /// Broker start: create the store directories, then check they are writable.
    Create,
}

/// A loaded config plus the non-fatal findings to log once tracing is set up.
#[derive(Debug)]
pub struct Loaded {
    pub config: BrokerConfig,
    /// One line per ignored RocketMQ key.
    pub warnings: Vec<String>,
}

/// Loads `path`: properties format if it ends in `.conf` or `.properties`, TOML otherwise.
/// Does not validate (see [`BrokerConfig::validate`]).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let io = |source| ConfigError::Io { path: path.to_path_buf(), source };
    let size_bytes = std::fs::metadata(path).map_err(io)?.len();
    if size_bytes > CONFIG_FILE_SIZE_MAX_BYTES {
        return Err(ConfigError::TooBig {
            path: path.to_path_buf(),
            size_bytes,
            max_bytes: CONFIG_FILE_SIZE_MAX_BYTES,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let is_properties = path.extension().is_some_and(|e| e == "conf" || e == "properties");
    if is_properties { parse_properties(&text, path) } else { parse_toml(&text, path) }
}

/// Parses TOML text; `path` only names the source in errors.
pub fn parse_toml(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Syntax { path: path.to_path_buf(), message: e.to_string() })?;
    from_table(table, path)
}

/// Parses RocketMQ properties text (`key=value`, `#`/`!` comments, blank lines, values
/// trimmed); `path` only names the source in errors.
pub fn parse_properties(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let mut table = toml::Table::new();
    let mut warnings = Vec::new();
    let mut lines_by_key: BTreeMap<String, usize> = BTreeMap::new();
    for (line_index, raw) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((key, value)) = line.split_once(['=', ':']) else {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                message: format!("line {line_number}: expected `key=value`, got `{line}`"),
            });
        };
        let (key, value) = (key.trim(), value.trim());
        if let Some(first) = lines_by_key.insert(key.to_string(), line_number) {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                message: format!("line {line_number}: key `{key}` already set on line {first}"),
            });
        }
        if KNOWN_UNUSED_KEYS.contains(&key) {
            warnings.push(unused_key_warning(path, key));
            continue;
        }
        let Some((_, kind)) = KEYS.iter().find(|(k, _)| *k == key) else {
            return Err(ConfigError::UnknownKey { path: path.to_path_buf(), line: line_number, key: key.to_string() });
        };
        let bad = |message: String| ConfigError::BadValue { path: path.to_path_buf(), key: key.to_string(), message };
        let typed = match kind {
            Kind::Str => toml::Value::String(value.to_string()),
            Kind::U64 => {
                let n: u64 = value.parse().map_err(|_| bad(format!("`{value}` is not a non-negative integer")))?;
                let n = i64::try_from(n).map_err(|_| bad(format!("`{value}` is too large")))?;
                toml::Value::Integer(n)
            }
            Kind::Bool => match value {
                "true" => toml::Value::Boolean(true),
                "false" => toml::Value::Boolean(false),
                _ => return Err(bad(format!("`{value}` is not `true` or `false`"))),
            },
            Kind::OneOf(choices) => {
                if !choices.contains(&value) {
                    return Err(bad(format!("`{value}` is not one of {}", choices.join(", "))));
                }
                toml::Value::String(value.to_string())
            }
        };
        table.insert(key.to_string(), typed);
    }
    let mut loaded = from_table(table, path)?;
    warnings.append(&mut loaded.warnings);
    loaded.warnings = warnings;
    Ok(loaded)
}

fn unused_key_warning(path: &Path, key: &str) -> String {
    format!("{}: key `{key}` is a RocketMQ setting wasmq does not use; ignored", path.display())
}

fn from_table(mut table: toml::Table, path: &Path) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    for key in KNOWN_UNUSED_KEYS {
        if table.remove(*key).is_some() {
            warnings.push(unused_key_warning(path, key));
        }
    }
    // Unknown keys are reported by name here rather than through serde, whose message for
    // `deny_unknown_fields` lists every expected field.
    if let Some(key) = table.keys().find(|k| !KEYS.iter().any(|(known, _)| known == k)) {
        return Err(ConfigError::UnknownKey { path: path.to_path_buf(), line: 0, key: key.clone() });
    }
    for (key, value) in &table {
        let (_, kind) = KEYS.iter().find(|(k, _)| k == key).expect("checked above");
        check_value_kind(key, *kind, value).map_err(|message| ConfigError::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
            message,
        })?;
    }
    let config: BrokerConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Syntax { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(Loaded { config, warnings })
}

/// Type check per key before serde, so that the error names the key.
fn check_value_kind(key: &str, kind: Kind, value: &toml::Value) -> Result<(), String> {
    let _ = key;
    match (kind, value) {
        (Kind::Str, toml::Value::String(_)) => Ok(()),
        (Kind::U64, toml::Value::Integer(n)) if *n >= 0 => Ok(()),
        (Kind::U64, toml::Value::Integer(n)) => Err(format!("{n} is negative")),
        (Kind::Bool, toml::Value::Boolean(_)) => Ok(()),
        (Kind::OneOf(choices), toml::Value::String(s)) if choices.contains(&s.as_str()) => Ok(()),
        (Kind::OneOf(choices), toml::Value::String(s)) => Err(format!("`{s}` is not one of {}", choices.join(", "))),
        (kind, value) => Err(format!(
            "expected {}, got {} `{value}`",
            match kind {
                Kind::Str | Kind::OneOf(_) => "a string",
                Kind::U64 => "a non-negative integer",
                Kind::Bool => "a boolean",
            },
            value.type_str()
        )),
    }
}

impl BrokerConfig {
    /// Used percent of the store's disk at which sends are refused: `diskSpaceWarningLevelRatio`
    /// when set, else RocketMQ's 90, or 5 points above `diskMaxUsedSpaceRatio` when that is
    /// set higher (retention must be able to act before sends stop).
    pub fn disk_full_percent(&self) -> u32 {
        self.disk_space_warning_level_ratio.unwrap_or_else(|| {
            DISK_FULL_PERCENT_DEFAULT.max(self.disk_max_used_space_ratio + 5).min(DISK_FULL_PERCENT_MAX)
        })
    }

    /// `storePathRootDir` with a leading `~/` expanded from `$HOME`.
    pub fn store_root(&self) -> PathBuf {
        expand_home(&self.store_path_root_dir)
    }

    /// Commitlog directory: `storePathCommitLog`, or `<storePathRootDir>/log`.
    pub fn commit_log_dir(&self) -> PathBuf {
        if self.store_path_commit_log.is_empty() {
            self.store_root().join("log")
        } else {
            expand_home(&self.store_path_commit_log)
        }
    }

    /// Plugin directory, if configured.
    pub fn plugin_dir(&self) -> Option<PathBuf> {
        (!self.plugin_dir.is_empty()).then(|| expand_home(&self.plugin_dir))
    }

    /// Client gRPC listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        let ip: IpAddr = self.broker_ip1.parse().map_err(|_| format!("`{}` is not an IP address", self.broker_ip1))?;
        Ok(SocketAddr::new(ip, self.listen_port))
    }

    /// `namesrvAddr` split on `;` (empty entries ignored).
    pub fn namesrv_addrs(&self) -> Vec<String> {
        self.namesrv_addr.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
    }

    /// `dLegerPeers` parsed; empty when it is empty.
    pub fn dledger_peers(&self) -> Result<Vec<DLedgerPeer>, String> {
        parse_peers(&self.d_leger_peers)
    }

    /// `dLegerClientEndpoints` parsed (same syntax as `dLegerPeers`).
    pub fn dledger_client_endpoints(&self) -> Result<Vec<DLedgerPeer>, String> {
        parse_peers(&self.d_leger_client_endpoints)
    }

    /// Client endpoint (`host:port`) of group member `id`: from `dLegerClientEndpoints`, or
    /// this node's own listen address.
    pub fn client_endpoint_of(&self, id: &str) -> Option<String> {
        if let Some(p) = self.dledger_client_endpoints().ok()?.into_iter().find(|p| p.id == id) {
            return Some(p.address);
        }
        (id == self.node_id()).then(|| format!("{}:{}", self.broker_ip1, self.listen_port))
    }

    /// This node's entry in `dLegerPeers` (only meaningful with DLedger enabled).
    pub fn dledger_self(&self) -> Option<DLedgerPeer> {
        self.dledger_peers().ok()?.into_iter().find(|p| p.id == self.d_leger_self_id)
    }

    /// Id this node reports in status: `dLegerSelfId`, or the broker name when standalone.
    pub fn node_id(&self) -> String {
        if self.enable_d_leger_commit_log { self.d_leger_self_id.clone() } else { self.broker_name.clone() }
    }

    /// Checks everything that can be checked before opening the store. `path` names the
    /// config file in errors.
    pub fn validate(&self, path: &Path, store: StoreCheck) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::BadValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        for (key, value) in [("brokerClusterName", &self.broker_cluster_name), ("brokerName", &self.broker_name)] {
            check_name(value).map_err(|m| bad(key, m))?;
        }
        let listen = self.listen_addr().map_err(|m| bad("brokerIP1", m))?;
        if self.listen_port == 0 {
            return Err(bad("listenPort", "must not be 0".into()));
        }
        let namesrvs = self.namesrv_addrs();
        if namesrvs.len() > NAMESRV_ADDRS_MAX {
            return Err(bad("namesrvAddr", format!("{} addresses; at most {NAMESRV_ADDRS_MAX}", namesrvs.len())));
        }
        for addr in &namesrvs {
            parse_host_port(addr).map_err(|m| bad("namesrvAddr", m))?;
        }
        if self.mapped_file_size_commit_log < COMMIT_LOG_SEGMENT_MIN_BYTES {
            return Err(bad(
                "mappedFileSizeCommitLog",
                format!(
                    "{} bytes is below the {COMMIT_LOG_SEGMENT_MIN_BYTES}-byte minimum",
                    self.mapped_file_size_commit_log
                ),
            ));
        }
        if self.max_message_size == 0 || self.max_message_size > MESSAGE_SIZE_MAX_BYTES {
            return Err(bad(
                "maxMessageSize",
                format!("{} is outside 1..={MESSAGE_SIZE_MAX_BYTES}", self.max_message_size),
            ));
        }
        // A message plus its record header must fit one segment.
        if u64::from(self.max_message_size) * 2 > self.mapped_file_size_commit_log {
            return Err(bad(
                "maxMessageSize",
                format!(
                    "{} is more than half of mappedFileSizeCommitLog ({})",
                    self.max_message_size, self.mapped_file_size_commit_log
                ),
            ));
        }
        if !(10..=95).contains(&self.disk_max_used_space_ratio) {
            return Err(bad(
                "diskMaxUsedSpaceRatio",
                format!("{} is outside 10..=95 (percent)", self.disk_max_used_space_ratio),
            ));
        }
        // Sends stop at the warning level; retention must get a chance to free space first.
        let warning = self.disk_full_percent();
        if warning <= self.disk_max_used_space_ratio || warning > DISK_FULL_PERCENT_MAX {
            return Err(bad(
                "diskSpaceWarningLevelRatio",
                format!(
                    "{warning} must be above diskMaxUsedSpaceRatio ({}) and at most 99 (percent)",
                    self.disk_max_used_space_ratio
                ),
            ));
        }
        if self.file_reserved_time == 0 {
            return Err(bad("fileReservedTime", "must be at least 1 hour".into()));
        }
        if !(10..=60_000).contains(&self.flush_interval_commit_log) {
            return Err(bad(
                "flushIntervalCommitLog",
                format!("{} ms is outside 10..=60000", self.flush_interval_commit_log),
            ));
        }
        if !(1..=SEND_CONCURRENCY_MAX).contains(&self.send_message_thread_pool_nums) {
            return Err(bad(
                "sendMessageThreadPoolNums",
                format!("{} is outside 1..={SEND_CONCURRENCY_MAX}", self.send_message_thread_pool_nums),
            ));
        }
        if self.server_worker_threads > SERVER_WORKER_THREADS_MAX {
            return Err(bad(
                "serverWorkerThreads",
                format!("{} is outside 0..={SERVER_WORKER_THREADS_MAX} (0: one per CPU)", self.server_worker_threads),
            ));
        }
        if self.server_channel_max_idle_time_seconds > SERVER_CHANNEL_MAX_IDLE_TIME_SECONDS_MAX {
            return Err(bad(
                "serverChannelMaxIdleTimeSeconds",
                format!(
                    "{} is outside 0..={SERVER_CHANNEL_MAX_IDLE_TIME_SECONDS_MAX} (0: never close)",
                    self.server_channel_max_idle_time_seconds
                ),
            ));
        }
        if self.raft_idle_poll_us > IDLE_POLL_US_MAX {
            return Err(bad(
                "raftIdlePollUs",
                format!("{} is outside 0..={IDLE_POLL_US_MAX} (0: sleep at once)", self.raft_idle_poll_us),
            ));
        }
        if !(1..=1024).contains(&self.default_topic_queue_nums) {
            return Err(bad("defaultTopicQueueNums", format!("{} is outside 1..=1024", self.default_topic_queue_nums)));
        }
        if !["trace", "debug", "info", "warn", "error"].contains(&self.log_level.as_str()) {
            return Err(bad("logLevel", format!("`{}` is not trace, debug, info, warn or error", self.log_level)));
        }
        self.validate_raft_timeouts(&bad)?;

        // Ports this process binds, to catch two listeners on one port.
        let mut ports: Vec<(&str, u16)> = vec![("listenPort", listen.port())];
        if self.metrics_port != 0 {
            ports.push(("metricsPort", self.metrics_port));
        }
        let peers = self.dledger_peers().map_err(|m| bad("dLegerPeers", m))?;
        if self.enable_d_leger_commit_log {
            self.validate_dledger(&peers, &bad)?;
            let me = peers.iter().find(|p| p.id == self.d_leger_self_id).expect("checked by validate_dledger");
            ports.push(("dLegerPeers (this node)", me.port));
        }
        for (i, (key_a, port_a)) in ports.iter().enumerate() {
            if let Some((key_b, _)) = ports[i + 1..].iter().find(|(_, p)| p == port_a) {
                return Err(bad(key_a, format!("port {port_a} is also used by {key_b}")));
            }
        }

        let root = self.store_root();
        check_store_dir(&root, store).map_err(|m| bad("storePathRootDir", m))?;
        if !self.store_path_commit_log.is_empty() {
            check_store_dir(&self.commit_log_dir(), store).map_err(|m| bad("storePathCommitLog", m))?;
        }
        if let Some(dir) = self.plugin_dir()
            && !dir.is_dir()
        {
            return Err(bad("pluginDir", format!("{} is not a directory", dir.display())));
        }
        Ok(())
    }

    fn validate_raft_timeouts(&self, bad: &impl Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let heartbeat = self.d_leger_heartbeat_interval_ms;
        let (min, max) = (self.d_leger_election_timeout_min_ms, self.d_leger_election_timeout_max_ms);
        if !(10..=60_000).contains(&heartbeat) {
            return Err(bad("dLegerHeartbeatIntervalMs", format!("{heartbeat} ms is outside 10..=60000")));
        }
        // A follower must see a few heartbeats before it may time out, or a healthy leader
        // gets deposed by jitter.
        if min < heartbeat * 3 {
            return Err(bad(
                "dLegerElectionTimeoutMinMs",
                format!("{min} ms is less than 3 heartbeat intervals ({heartbeat} ms each)"),
            ));
        }
        if max <= min || max > 600_000 {
            return Err(bad(
                "dLegerElectionTimeoutMaxMs",
                format!("{max} ms must be above dLegerElectionTimeoutMinMs ({min}) and at most 600000"),
            ));
        }
        Ok(())
    }

    fn validate_dledger(
        &self,
        peers: &[DLedgerPeer],
        bad: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if self.d_leger_group.is_empty() {
            return Err(bad("dLegerGroup", "required when enableDLegerCommitLog = true".into()));
        }
        check_name(&self.d_leger_group).map_err(|m| bad("dLegerGroup", m))?;
        if peers.is_empty() {
            return Err(bad("dLegerPeers", "required when enableDLegerCommitLog = true".into()));
        }
        if !peers.iter().any(|p| p.id == self.d_leger_self_id) {
            return Err(bad(
                "dLegerSelfId",
                format!(
                    "`{}` is not one of the ids in dLegerPeers ({})",
                    self.d_leger_self_id,
                    peers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let endpoints = self.dledger_client_endpoints().map_err(|m| bad("dLegerClientEndpoints", m))?;
        if let Some(p) = endpoints.iter().find(|e| !peers.iter().any(|p| p.id == e.id)) {
            return Err(bad("dLegerClientEndpoints", format!("id `{}` is not one of the ids in dLegerPeers", p.id)));
        }
        if !self.preferred_leader_id.is_empty() && !peers.iter().any(|p| p.id == self.preferred_leader_id) {
            return Err(bad(
                "preferredLeaderId",
                format!("`{}` is not one of the ids in dLegerPeers", self.preferred_leader_id),
            ));
        }
        Ok(())
    }
}

/// Names go into file paths, topic routes and metrics labels: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 127 {
        return Err(format!("`{name}` must be 1..=127 characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%'))) {
        return Err(format!("`{name}` contains `{c}`; allowed: A-Z a-z 0-9 - _ . %"));
    }
    Ok(())
}

fn parse_host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("`{addr}` is not host:port"))?;
    if host.is_empty() {
        return Err(format!("`{addr}` has no host"));
    }
    let port: u16 = port.parse().map_err(|_| format!("`{addr}`: `{port}` is not a port number"))?;
    if port == 0 {
        return Err(format!("`{addr}`: port 0"));
    }
    Ok((host.to_string(), port))
}

/// `n0-127.0.0.1:40911;n1-127.0.0.1:40912`: ids unique, addresses unique.
fn parse_peers(text: &str) -> Result<Vec<DLedgerPeer>, String> {
    let mut peers: Vec<DLedgerPeer> = Vec::new();
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item.split_once('-').ok_or_else(|| format!("`{item}` is not `id-host:port`"))?;
        check_name(id).map_err(|m| format!("peer id {m}"))?;
        let (_, port) = parse_host_port(address)?;
        if peers.iter().any(|p| p.id == id) {
            return Err(format!("peer id `{id}` appears twice"));
        }
        if peers.iter().any(|p| p.address == address) {
            return Err(format!("address `{address}` appears twice"));
        }
        peers.push(DLedgerPeer { id: id.to_string(), address: address.to_string(), port });
    }
    if peers.len() > DLEDGER_PEERS_MAX {
        return Err(format!("{} peers; at most {DLEDGER_PEERS_MAX}", peers.len()));
    }
    Ok(peers)
}

/// Resolves a `host:port` to socket addresses (for peers given by name).
pub fn resolve(addr: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(addr.to_socket_addrs()?.collect())
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

fn is_writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    dir.is_dir() && unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } == 0
}

fn check_store_dir(dir: &Path, store: StoreCheck) -> Result<(), String> {
    match store {
        StoreCheck::Create => {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            if !is_writable_dir(dir) {
                return Err(format!("{} is not a writable directory", dir.display()));
            }
        }
        StoreCheck::WithoutCreating => {
            // The broker would create the missing part under the nearest existing ancestor.
            let mut existing = dir;
            let mut seen = HashSet::new();
            while !existing.exists() {
                existing = existing.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if !seen.insert(existing.to_path_buf()) {
                    break;
                }
            }
            if !is_writable_dir(existing) {
                return Err(format!("{} is not a writable directory (checking {})", existing.display(), dir.display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_cfg(text: &str) -> Result<Loaded, ConfigError> {
        parse_toml(text, Path::new("test.toml"))
    }

    fn conf_cfg(text: &str) -> Result<Loaded, ConfigError> {
        parse_properties(text, Path::new("broker.conf"))
    }

    fn valid(config: &BrokerConfig) -> Result<(), ConfigError> {
        config.validate(Path::new("test.toml"), StoreCheck::WithoutCreating)
    }

    fn dledger_toml(extra: &str) -> String {
        format!(
            "storePathRootDir = \"/tmp/wasmq-config-test\"\n\
             enableDLegerCommitLog = true\n\
             dLegerGroup = \"g0\"\n\
             dLegerPeers = \"n0-127.0.0.1:40911;n1-127.0.0.1:40912;n2-127.0.0.1:40913\"\n\
             dLegerSelfId = \"n0\"\n{extra}"
        )
    }

    fn err_text(e: ConfigError) -> String {
        e.to_string()
    }

    #[test]
    fn keys_table_matches_struct_fields() {
        // Optional keys serialize only when set.
        let config = BrokerConfig { disk_space_warning_level_ratio: Some(90), ..BrokerConfig::default() };
        let table = toml::Table::try_from(config).unwrap();
        let mut struct_keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut kind_keys: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
        struct_keys.sort();
        kind_keys.sort();
        assert_eq!(struct_keys, kind_keys);
        for key in KNOWN_UNUSED_KEYS {
            assert!(!kind_keys.contains(key), "{key} is both used and unused");
        }
    }

    #[test]
    fn defaults_are_valid_and_roundtrip() {
        let mut config = BrokerConfig::default();
        config.store_path_root_dir = "/tmp/wasmq-config-test".into();
        valid(&config).unwrap();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml_cfg(&text).unwrap().config, config);
        assert_eq!(config.listen_port, 8081);
        assert_eq!(config.max_message_size, 4 * 1024 * 1024);
    }

    #[test]
    fn toml_dledger_config_parses() {
        let loaded = toml_cfg(&dledger_toml("flushDiskType = \"SYNC_FLUSH\"\nbrokerIP1 = \"127.0.0.2\"\n")).unwrap();
        let c = loaded.config;
        assert_eq!(c.flush_disk_type, FlushDiskType::SyncFlush);
        assert_eq!(c.broker_ip1, "127.0.0.2");
        let peers = c.dledger_peers().unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[1].id, "n1");
        assert_eq!(peers[1].address, "127.0.0.1:40912");
        assert_eq!(c.dledger_self().unwrap().port, 40911);
        valid(&c).unwrap();
    }

    #[test]
    fn toml_unknown_key_is_named() {
        let e = err_text(toml_cfg("brokerNmae = \"x\"\n").err().unwrap());
        assert!(e.contains("brokerNmae") && e.contains("test.toml"), "{e}");
    }

    #[test]
    fn toml_wrong_type_is_named() {
        let e = err_text(toml_cfg("listenPort = \"abc\"\n").err().unwrap());
        assert!(e.contains("listenPort") && e.contains("test.toml"), "{e}");
        let e = err_text(toml_cfg("flushDiskType = \"SOMETIMES\"\n").err().unwrap());
        assert!(e.contains("flushDiskType") && e.contains("SOMETIMES"), "{e}");
        let e = err_text(toml_cfg("listenPort = 70000\n").err().unwrap());
        assert!(e.contains("test.toml") && e.contains("70000"), "{e}");
    }

    #[test]
    fn toml_known_unused_key_warns() {
        let loaded = toml_cfg("brokerRole = \"ASYNC_MASTER\"\nlistenPort = 9000\n").unwrap();
        assert_eq!(loaded.config.listen_port, 9000);
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("brokerRole"));
    }

    #[test]
    fn properties_parse_like_rocketmq() {
        let text = "# RocketMQ style\n\
                    brokerClusterName = DefaultCluster\n\
                    brokerName=broker-b\n\
                    brokerId=0\n\
                    deleteWhen=04\n\
                    brokerRole=ASYNC_MASTER\n\
                    flushDiskType=SYNC_FLUSH\n\
                    listenPort=10911\n\
                    namesrvAddr=127.0.0.1:9876;127.0.0.1:9877\n\
                    enableDLegerCommitLog=false\n\
                    storePathRootDir=/tmp/wasmq-config-test\n";
        let loaded = conf_cfg(text).unwrap();
        let c = &loaded.config;
        assert_eq!(c.broker_name, "broker-b");
        assert_eq!(c.listen_port, 10911);
        assert_eq!(c.flush_disk_type, FlushDiskType::SyncFlush);
        assert_eq!(c.namesrv_addrs(), vec!["127.0.0.1:9876", "127.0.0.1:9877"]);
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        assert!(loaded.warnings.iter().any(|w| w.contains("deleteWhen")));
        valid(c).unwrap();
    }

    #[test]
    fn properties_unknown_key_names_key_line_and_file() {
        let e = err_text(conf_cfg("brokerName=a\nfooBar=1\n").err().unwrap());
        assert!(e.contains("fooBar") && e.contains("broker.conf:2"), "{e}");
    }

    #[test]
    fn properties_bad_values_name_the_key() {
        for (text, key) in [
            ("listenPort=eighty\n", "listenPort"),
            ("listenPort=-1\n", "listenPort"),
            ("enableDLegerCommitLog=yes\n", "enableDLegerCommitLog"),
            ("flushDiskType=SOMETIMES\n", "flushDiskType"),
            ("logLevel=loud\n", "logLevel"),
        ] {
            let e = err_text(conf_cfg(text).err().unwrap());
            assert!(e.contains(key) && e.contains("broker.conf"), "{text}: {e}");
        }
        // Out of range for the field type: serde names the value.
        let e = err_text(conf_cfg("listenPort=70000\n").err().unwrap());
        assert!(e.contains("broker.conf") && e.contains("70000"), "{e}");
    }

    #[test]
    fn properties_syntax_errors() {
        let e = err_text(conf_cfg("brokerName\n").err().unwrap());
        assert!(e.contains("line 1"), "{e}");
        let e = err_text(conf_cfg("brokerName=a\nbrokerName=b\n").err().unwrap());
        assert!(e.contains("already set on line 1"), "{e}");
    }

    #[test]
    fn bad_peer_lists_are_rejected() {
        for (peers, needle) in [
            ("n0:127.0.0.1:40911", "id-host:port"),
            ("n0-127.0.0.1", "host:port"),
            ("n0-127.0.0.1:notaport", "port number"),
            ("n0-127.0.0.1:40911;n0-127.0.0.1:40912", "appears twice"),
            ("n0-127.0.0.1:40911;n1-127.0.0.1:40911", "appears twice"),
            ("n0-127.0.0.1:0", "port 0"),
        ] {
            let text = dledger_toml("").replace("n0-127.0.0.1:40911;n1-127.0.0.1:40912;n2-127.0.0.1:40913", peers);
            let c = toml_cfg(&text).unwrap().config;
            let e = err_text(valid(&c).err().unwrap());
            assert!(e.contains("dLegerPeers") && e.contains(needle), "{peers}: {e}");
        }
    }

    #[test]
    fn self_id_must_be_a_peer() {
        let text = dledger_toml("").replace("dLegerSelfId = \"n0\"", "dLegerSelfId = \"n7\"");
        let e = err_text(valid(&toml_cfg(&text).unwrap().config).err().unwrap());
        assert!(e.contains("dLegerSelfId") && e.contains("n7"), "{e}");
        let text = dledger_toml("preferredLeaderId = \"n9\"\n");
        let e = err_text(valid(&toml_cfg(&text).unwrap().config).err().unwrap());
        assert!(e.contains("preferredLeaderId"), "{e}");
        let text = dledger_toml("dLegerClientEndpoints = \"n0-127.0.0.1:8081;x9-127.0.0.1:8089\"\n");
        let e = err_text(valid(&toml_cfg(&text).unwrap().config).err().unwrap());
        assert!(e.contains("dLegerClientEndpoints") && e.contains("x9"), "{e}");
        let text = dledger_toml("").replace("dLegerGroup = \"g0\"", "");
        let e = err_text(valid(&toml_cfg(&text).unwrap().config).err().unwrap());
        assert!(e.contains("dLegerGroup"), "{e}");
    }

    #[test]
    fn duplicate_ports_are_rejected() {
        let text = dledger_toml("listenPort = 40911\n");
        let e = err_text(valid(&toml_cfg(&text).unwrap().config).err().unwrap());
        assert!(e.contains("40911") && e.contains("dLegerPeers"), "{e}");
        let text = "storePathRootDir = \"/tmp/x\"\nmetricsPort = 8081\n";
        let e = err_text(valid(&toml_cfg(text).unwrap().config).err().unwrap());
        assert!(e.contains("metricsPort") || e.contains("listenPort"), "{e}");
    }

    #[test]
    fn raft_timeouts_are_checked() {
        let text = dledger_toml("dLegerElectionTimeoutMinMs = 2000\ndLegerElectionTimeoutMaxMs = 1000\n");
        let e = err_text(valid(&toml_cfg(&text).unwrap().config).err().unwrap());
        assert!(e.contains("dLegerElectionTimeoutMaxMs"), "{e}");
        let text = dledger_toml("dLegerHeartbeatIntervalMs = 500\n");
        let e = err_text(valid(&toml_cfg(&text).unwrap().config).err().unwrap());
        assert!(e.contains("dLegerElectionTimeoutMinMs"), "{e}");
    }

    #[test]
    fn disk_full_mark_defaults_to_rocketmq_and_stays_above_retention() {
        let at = |text: &str| {
            let config = toml_cfg(text).unwrap().config;
            valid(&config).unwrap();
            config.disk_full_percent()
        };
        assert_eq!(at("storePathRootDir = \"/tmp/x\"\n"), 90);
        assert_eq!(at("storePathRootDir = \"/tmp/x\"\ndiskMaxUsedSpaceRatio = 88\n"), 93);
        assert_eq!(at("storePathRootDir = \"/tmp/x\"\ndiskMaxUsedSpaceRatio = 95\n"), 99);
        assert_eq!(at("storePathRootDir = \"/tmp/x\"\ndiskSpaceWarningLevelRatio = 97\n"), 97);
    }

    #[test]
    fn limits_are_checked() {
        for (line, key) in [
            ("maxMessageSize = 0", "maxMessageSize"),
            ("maxMessageSize = 1073741824", "maxMessageSize"),
            ("mappedFileSizeCommitLog = 4096", "mappedFileSizeCommitLog"),
            ("diskMaxUsedSpaceRatio = 99", "diskMaxUsedSpaceRatio"),
            ("diskSpaceWarningLevelRatio = 70", "diskSpaceWarningLevelRatio"),
            ("diskSpaceWarningLevelRatio = 100", "diskSpaceWarningLevelRatio"),
            ("sendMessageThreadPoolNums = 0", "sendMessageThreadPoolNums"),
            ("serverWorkerThreads = 100000", "serverWorkerThreads"),
            ("serverChannelMaxIdleTimeSeconds = 86401", "serverChannelMaxIdleTimeSeconds"),
            ("raftIdlePollUs = 10001", "raftIdlePollUs"),
            ("brokerIP1 = \"localhost\"", "brokerIP1"),
            ("brokerName = \"a b\"", "brokerName"),
            ("namesrvAddr = \"127.0.0.1\"", "namesrvAddr"),
            ("pluginDir = \"/nonexistent/wasmq/plugins\"", "pluginDir"),
        ] {
            let text = format!("storePathRootDir = \"/tmp/x\"\n{line}\n");
            let e = err_text(valid(&toml_cfg(&text).unwrap().config).err().unwrap());
            assert!(e.contains(key), "{line}: {e}");
        }
    }

    #[test]
    fn store_path_check_does_not_create_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("a/b/store");
        let mut c = BrokerConfig::default();
        c.store_path_root_dir = store.display().to_string();
        valid(&c).unwrap();
        assert!(!dir.path().join("a").exists());
        c.validate(Path::new("t"), StoreCheck::Create).unwrap();
        assert!(store.is_dir());
    }

    #[test]
    fn unwritable_store_path_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let mut c = BrokerConfig::default();
        c.store_path_root_dir = file.join("store").display().to_string();
        let e = err_text(valid(&c).err().unwrap());
        assert!(e.contains("storePathRootDir") && e.contains("writable"), "{e}");
    }

    #[test]
    fn load_picks_format_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("broker.conf");
        std::fs::write(&conf, "listenPort=9001\n").unwrap();
        assert_eq!(load(&conf).unwrap().config.listen_port, 9001);
        let toml_path = dir.path().join("broker.toml");
        std::fs::write(&toml_path, "listenPort = 9002\n").unwrap();
        assert_eq!(load(&toml_path).unwrap().config.listen_port, 9002);
        let e = err_text(load(&dir.path().join("missing.toml")).err().unwrap());
        assert!(e.contains("missing.toml"), "{e}");
    }
}

//! Starts a name server and N brokers as real processes, with generated configs and data
//! under a temp dir, and injects process faults (kill -9, SIGSTOP/SIGCONT, restart, a full
//! disk).
//!
//! Binaries come from `target/release/` of this workspace, or from `$WASMQ_BIN_DIR`.
//! Each process logs to `<dir>/logs/<name>.log`; `dump_logs` prints their tails (tests call it
//! on failure, via `Cluster::finish`). `WASMQ_KEEP_DIR=1` keeps the temp dir for inspection.
//!
//! With `ClusterSpec::proxied`, every Raft link goes through a `ProxyMesh` (see `proxy`).

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wasmq_proto::wasmq::admin::{self, admin_client::AdminClient};
use wasmq_proto::wasmq::namesrv::{self, name_server_client::NameServerClient};

use crate::proxy::ProxyMesh;

/// Room left for a node's log file under [`Cluster::disk_full`].
const DISK_FULL_LOG_ROOM_BYTES: u64 = 128 * 1024;
/// `mqbroker`'s exit code when replication stopped on a storage error
/// (`wasmq_broker::server::ReplicationFailed::EXIT_CODE`, EX_TEMPFAIL).
pub const FAIL_STOP_EXIT_CODE: u8 = 75;

/// Nodes in one Raft group: DLedger groups are 1, 3 or 5 in practice.
pub const NODES_MAX: usize = 5;
/// Commitlog segment size in test clusters (the broker's minimum is 1 MiB).
pub const COMMIT_LOG_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Largest message in test clusters (the broker requires at most half a segment).
pub const MESSAGE_BYTES_MAX: u64 = 1024 * 1024;
/// Queues of auto-created topics in test clusters (tests create theirs explicitly too).
pub const DEFAULT_TOPIC_QUEUES: u32 = 4;
/// Lines of each log printed on failure.
pub const LOG_TAIL_LINES: usize = 60;
/// How long one admin status call may take before the node counts as unreachable.
const STATUS_TIMEOUT_MS: u64 = 1_000;
/// How long a started process gets to open its port.
const PORT_OPEN_TIMEOUT_MS: u64 = 20_000;
/// A graceful stop hands leadership over (bounded by the transfer timeout) and flushes.
const STOP_TIMEOUT_MS: u64 = 20_000;
const POLL_INTERVAL_MS: u64 = 50;
/// How long a SIGSTOPped process may take until all its threads have stopped.
const SIGSTOP_TIMEOUT_MS: u64 = 5_000;

/// Whether every thread of `pid` is stopped (state `T` or `t` in `/proc/PID/task/TID/stat`).
/// A thread that exited meanwhile (gone, `Z` or `X`) counts as stopped: it cannot answer
/// either, and a process that died on its own is for `check_alive` to report.
fn all_threads_stopped(pid: libc::pid_t) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return true };
    tasks.flatten().all(|task| match fs::read_to_string(task.path().join("stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't', 'Z', 'X'])),
        Err(_) => true,
    })
}

/// Where the release binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    pub const NAMESRV: &'static str = "mqnamesrv";
    pub const BROKER: &'static str = "mqbroker";
    pub const ADMIN: &'static str = "mqadmin";

    /// `$WASMQ_BIN_DIR`, else `$CARGO_TARGET_DIR/release`, else `<workspace>/target/release`. Fails with a clear message when a
    /// binary is missing: these tests run the real processes, they never build them.
    pub fn locate() -> Result<Self> {
        let dir = match (std::env::var_os("WASMQ_BIN_DIR"), std::env::var_os("CARGO_TARGET_DIR")) {
            (Some(d), _) => PathBuf::from(d),
            (None, Some(t)) => PathBuf::from(t).join("release"),
            (None, None) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"),
        };
        let bins = Binaries { dir };
        for name in [Self::NAMESRV, Self::BROKER, Self::ADMIN] {
            let path = bins.path(name);
            ensure!(
                path.is_file(),
                "missing binary {} — build the release binaries first: \
                 `cargo build --release -p wasmq-broker` (or set WASMQ_BIN_DIR)",
                path.display()
            );
        }
        Ok(bins)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Ports `free_port` picks from: below the kernel's ephemeral range (`ip_local_port_range`,
/// 32768 and up by default) and below the fixed ports of `conf/dledger` (30911-30913).
const TEST_PORTS: std::ops::Range<u16> = 20_000..30_000;
/// Ports tried before `free_port` gives up.
const PORT_PROBES_MAX: u32 = 1_000;
/// Ports `free_port` has handed out in this process: two nodes never get the same one.
static PORTS_HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Picks a loopback port that is free now, for a process to bind later. Not from bind(0):
/// that gives an *ephemeral* port, which any outgoing loopback connection may take as its
/// source port between the pick and the broker's bind, and the broker then failed to start
/// with EADDRINUSE (a CI failure: `bind raft peer service on 127.0.0.1:35419`). The kernel
/// never gives ports below the ephemeral range to connections, so only another explicit bind
/// could take this one.
pub fn free_port() -> Result<u16> {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut handed_out = PORTS_HANDED_OUT.lock().expect("not poisoned");
    for _ in 0..PORT_PROBES_MAX {
        let port = rng.random_range(TEST_PORTS);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(loopback(port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port in {TEST_PORTS:?} after {PORT_PROBES_MAX} tries")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub nodes: usize,
    /// Route Raft traffic through fault-injecting proxies.
    pub proxied: bool,
    pub cluster_name: String,
    pub group_name: String,
    /// Extra `key = value` TOML lines appended to every broker config (tuning under test).
    pub broker_extra_toml: Vec<String>,
    /// Extra lines for one member only: `(index, line)`, after `broker_extra_toml`.
    pub member_extra_toml: Vec<(usize, String)>,
    /// `mappedFileSizeCommitLog`; `maxMessageSize` is the smaller of [`MESSAGE_BYTES_MAX`]
    /// and half of it.
    pub segment_bytes: u64,
}

impl ClusterSpec {
    pub fn replicated(nodes: usize) -> Self {
        ClusterSpec {
            nodes,
            proxied: false,
            cluster_name: "WasmqTestCluster".into(),
            group_name: "broker-a".into(),
            broker_extra_toml: Vec::new(),
            member_extra_toml: Vec::new(),
            segment_bytes: COMMIT_LOG_SEGMENT_BYTES,
        }
    }

    /// Smaller commitlog segments: more segment rolls, so more moments where the store needs
    /// new space (what a full disk refuses).
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    pub fn proxied(mut self) -> Self {
        self.proxied = true;
        self
    }

    /// One more config line for member `index` only.
    pub fn member_toml(mut self, index: usize, line: &str) -> Self {
        self.member_extra_toml.push((index, line.to_string()));
        self
    }
}

/// A process we started: its pid is ours to signal.
struct Proc {
    child: Child,
    stopped: bool,
}

impl Proc {
    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet (so not reused).
        let rc = unsafe { libc::kill(self.pid(), sig) };
        ensure!(rc == 0, "kill({}, {sig}): {}", self.pid(), std::io::Error::last_os_error());
        Ok(())
    }

    /// SIGKILL and reap. A stopped process dies from SIGKILL too.
    fn kill9(mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.signal(libc::SIGKILL)?;
        }
        self.child.wait().context("reap killed process")?;
        Ok(())
    }
}

pub struct BrokerNode {
    pub index: usize,
    /// `dLegerSelfId`, e.g. "n0".
    pub id: String,
    pub client_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub config_path: PathBuf,
    pub store_dir: PathBuf,
    pub log_path: PathBuf,
    proc: Option<Proc>,
    pub restarts: u32,
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub bins: Binaries,
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub namesrv_addr: SocketAddr,
    namesrv_log: PathBuf,
    namesrv_config: PathBuf,
    namesrv: Option<Proc>,
    pub nodes: Vec<BrokerNode>,
    pub mesh: Option<ProxyMesh>,
    logs_dumped: bool,
}

/// One node's view of itself, from the admin `BrokerStatus` call.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub index: usize,
    pub node_id: String,
    pub role: admin::Role,
    pub term: u64,
    pub leader_id: String,
    pub last_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
}

impl Cluster {
    /// Picks ports, starts the proxies (if any) and writes every config; starts no process.
    /// `start` then waits until each process has opened its port; neither waits for a leader
    /// (see `wait_for_leader`).
    pub async fn prepare(spec: ClusterSpec) -> Result<Self> {
        ensure!((1..=NODES_MAX).contains(&spec.nodes), "{} nodes", spec.nodes);
        let bins = Binaries::locate()?;
        let dir = tempfile::Builder::new().prefix("wasmq-cluster-").tempdir()?;
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("logs"))?;
        fs::create_dir_all(root.join("conf"))?;

        let namesrv_addr = loopback(free_port()?);
        let namesrv_config = root.join("conf/namesrv.toml");
        fs::write(&namesrv_config, format!("listenPort = {}\n", namesrv_addr.port()))?;

        let mut nodes = Vec::with_capacity(spec.nodes);
        for index in 0..spec.nodes {
            let id = format!("n{index}");
            nodes.push(BrokerNode {
                index,
                client_addr: loopback(free_port()?),
                raft_addr: loopback(free_port()?),
                config_path: root.join(format!("conf/broker-{id}.toml")),
                store_dir: root.join(format!("store/{id}")),
                log_path: root.join(format!("logs/broker-{id}.log")),
                id,
                proc: None,
                restarts: 0,
            });
        }
        let mesh = if spec.proxied && spec.nodes > 1 {
            let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.raft_addr).collect();
            Some(ProxyMesh::start(&addrs).await?)
        } else {
            None
        };

        let cluster = Cluster {
            spec,
            bins,
            namesrv_log: root.join("logs/namesrv.log"),
            namesrv_config,
            root,
            dir: Some(dir),
            namesrv_addr,
            namesrv: None,
            nodes,
            mesh,
            logs_dumped: false,
        };
        for i in 0..cluster.nodes.len() {
            let text = cluster.broker_config(i);
            fs::write(&cluster.nodes[i].config_path, text)?;
            fs::create_dir_all(&cluster.nodes[i].store_dir)?;
        }
        Ok(cluster)
    }

    /// `prepare`, then start the name server and every broker.
    pub async fn start(spec: ClusterSpec) -> Result<Self> {
        let mut cluster = Self::prepare(spec).await?;
        cluster.start_namesrv().await?;
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i).await?;
        }
        Ok(cluster)
    }

    /// The `dLegerPeers` node `i` dials: its own real address, proxies for the others.
    pub fn peers_for(&self, i: usize) -> String {
        let mut parts = Vec::with_capacity(self.nodes.len());
        for (j, n) in self.nodes.iter().enumerate() {
            let addr = match &self.mesh {
                Some(mesh) => mesh.dial_addr(i, j),
                None => n.raft_addr,
            };
            parts.push(format!("{}-{}", n.id, addr));
        }
        parts.join(";")
    }

    fn broker_config(&self, i: usize) -> String {
        let n = &self.nodes[i];
        let mut t = String::new();
        let replicated = self.nodes.len() > 1;
        writeln!(t, "brokerClusterName = \"{}\"", self.spec.cluster_name).unwrap();
        writeln!(t, "brokerName = \"{}\"", self.spec.group_name).unwrap();
        writeln!(t, "brokerIP1 = \"127.0.0.1\"").unwrap();
        writeln!(t, "listenPort = {}", n.client_addr.port()).unwrap();
        writeln!(t, "namesrvAddr = \"{}\"", self.namesrv_addr).unwrap();
        writeln!(t, "storePathRootDir = \"{}\"", n.store_dir.display()).unwrap();
        // Small segments: tests cross segment boundaries and keep the disk footprint small.
        writeln!(t, "mappedFileSizeCommitLog = {}", self.spec.segment_bytes).unwrap();
        writeln!(t, "maxMessageSize = {}", MESSAGE_BYTES_MAX.min(self.spec.segment_bytes / 2)).unwrap();
        // Disk-pressure retention deletes old segments, consumed or not (RocketMQ semantics),
        // once the filesystem is this full; CI disks (root-reserved blocks count as used) can
        // sit above the default 75 %. These tests are about crashes, not disk pressure; sends
        // are refused only past 99 % (diskSpaceWarningLevelRatio follows this up).
        writeln!(t, "diskMaxUsedSpaceRatio = 95").unwrap();
        writeln!(t, "autoCreateTopicEnable = true").unwrap();
        writeln!(t, "defaultTopicQueueNums = {DEFAULT_TOPIC_QUEUES}").unwrap();
        writeln!(t, "enableDLegerCommitLog = {replicated}").unwrap();
        if replicated {
            writeln!(t, "dLegerGroup = \"{}\"", self.spec.group_name).unwrap();
            writeln!(t, "dLegerPeers = \"{}\"", self.peers_for(i)).unwrap();
            writeln!(t, "dLegerSelfId = \"{}\"", n.id).unwrap();
            // Client endpoints are never proxied: faults are injected on Raft links only.
            let endpoints: Vec<String> = self.nodes.iter().map(|m| format!("{}-{}", m.id, m.client_addr)).collect();
            writeln!(t, "dLegerClientEndpoints = \"{}\"", endpoints.join(";")).unwrap();
        }
        for line in &self.spec.broker_extra_toml {
            writeln!(t, "{line}").unwrap();
        }
        for (_, line) in self.spec.member_extra_toml.iter().filter(|(m, _)| *m == i) {
            writeln!(t, "{line}").unwrap();
        }
        t
    }

    fn spawn_logged(&self, bin: &str, args: &[&str], log_path: &Path) -> Result<Proc> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let mut cmd = Command::new(self.bins.path(bin));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_BACKTRACE", "1")
            // Plain text logs: they are read in files and printed in test output.
            .env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // The child dies with the thread that spawned it (a test runtime thread): a crashed or
        // interrupted test run leaves no brokers behind.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("spawn {bin} {args:?}"))?;
        Ok(Proc { child, stopped: false })
    }

    pub async fn start_namesrv(&mut self) -> Result<()> {
        ensure!(self.namesrv.is_none(), "name server already running");
        let config = self.namesrv_config.display().to_string();
        let mut proc = self.spawn_logged(Binaries::NAMESRV, &["-c", &config], &self.namesrv_log)?;
        if let Err(e) = wait_port_open(&mut proc, self.namesrv_addr).await {
            let _ = proc.kill9();
            return Err(e).context(format!("name server did not start\n{}", tail(&self.namesrv_log, LOG_TAIL_LINES)));
        }
        self.namesrv = Some(proc);
        Ok(())
    }

    /// Starts node `i` (again, after a kill) on its existing store and config.
    pub async fn start_node(&mut self, i: usize) -> Result<()> {
        ensure!(self.nodes[i].proc.is_none(), "node {i} already running");
        let config = self.nodes[i].config_path.display().to_string();
        let mut proc = self.spawn_logged(Binaries::BROKER, &["-c", &config], &self.nodes[i].log_path)?;
        if let Err(e) = wait_port_open(&mut proc, self.nodes[i].client_addr).await {
            let _ = proc.kill9();
            return Err(e).context(format!(
                "broker {} did not start\n{}",
                self.nodes[i].id,
                tail(&self.nodes[i].log_path, LOG_TAIL_LINES)
            ));
        }
        self.nodes[i].proc = Some(proc);
        Ok(())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].proc.is_some()
    }

    pub fn is_stopped(&self, i: usize) -> bool {
        self.nodes[i].proc.as_ref().is_some_and(|p| p.stopped)
    }

    /// kill -9 node `i` (no-op if it is not running).
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        if let Some(proc) = self.nodes[i].proc.take() {
            proc.kill9().with_context(|| format!("kill -9 {}", self.nodes[i].id))?;
        }
        Ok(())
    }

    /// Graceful stop, as `mqshutdown` or systemd would do it (SIGTERM): the broker hands
    /// leadership over, flushes and must exit 0 within `STOP_TIMEOUT_MS`.
    pub async fn stop(&mut self, i: usize) -> Result<()> {
        let Some(proc) = self.nodes[i].proc.take() else { return Ok(()) };
        let mut proc = proc;
        proc.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        loop {
            if let Some(status) = proc.child.try_wait()? {
                ensure!(
                    status.success(),
                    "broker {} exited with {status} on SIGTERM\n{}",
                    self.nodes[i].id,
                    tail(&self.nodes[i].log_path, LOG_TAIL_LINES)
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = proc.kill9();
                bail!("broker {} still running {STOP_TIMEOUT_MS} ms after SIGTERM", self.nodes[i].id);
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Sets `key = value_toml` in node `i`'s config file: replaces the line that sets `key`,
    /// else appends one.
    pub fn set_config(&self, i: usize, key: &str, value_toml: &str) -> Result<()> {
        let path = &self.nodes[i].config_path;
        let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let line = format!("{key} = {value_toml}");
        let mut found = false;
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| match l.split_once('=') {
                Some((k, _)) if k.trim() == key => {
                    found = true;
                    line.clone()
                }
                _ => l.to_owned(),
            })
            .collect();
        if !found {
            lines.push(line);
        }
        fs::write(path, lines.join("\n") + "\n").with_context(|| format!("write {}", path.display()))
    }

    /// `mqbroker --check -c` on node `i`'s config: (exit status success, stdout + stderr).
    pub fn check_config(&self, i: usize) -> Result<(bool, String)> {
        let out = Command::new(self.bins.path(Binaries::BROKER))
            .args(["--check", "-c"])
            .arg(&self.nodes[i].config_path)
            .env("NO_COLOR", "1")
            .output()
            .context("run mqbroker --check")?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.kill9(i)?;
        self.nodes[i].restarts += 1;
        self.start_node(i).await
    }

    /// A full disk for node `i`: RLIMIT_FSIZE on the running process, just above what its log
    /// file already holds. No file of the process can then grow (preallocating a commitlog
    /// segment or a consume-queue file fails with EFBIG, which the store treats as ENOSPC),
    /// while space already allocated stays usable: a real full disk under preallocated,
    /// memory-mapped files. The log keeps some room so what the broker says about it is kept.
    pub fn disk_full(&mut self, i: usize) -> Result<()> {
        let log_bytes = fs::metadata(&self.nodes[i].log_path).map(|m| m.len()).unwrap_or(0);
        self.set_file_size_limit(i, Some(log_bytes + DISK_FULL_LOG_ROOM_BYTES))
    }

    /// Lifts [`Cluster::disk_full`] (no-op if the node is not running).
    pub fn disk_freed(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].proc.as_mut().is_some_and(|p| p.child.try_wait().ok().flatten().is_none()) {
            self.set_file_size_limit(i, None)?;
        }
        Ok(())
    }

    fn set_file_size_limit(&mut self, i: usize, bytes: Option<u64>) -> Result<()> {
        let proc = self.nodes[i].proc.as_ref().context("file size limit: node not running")?;
        let limit = libc::rlimit { rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY), rlim_max: libc::RLIM_INFINITY };
        // SAFETY: prlimit(2) on a pid we spawned and have not reaped; `limit` is a valid rlimit
        // and the old value is not asked for.
        let rc = unsafe { libc::prlimit(proc.pid(), libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
        ensure!(rc == 0, "prlimit({}, RLIMIT_FSIZE): {}", proc.pid(), std::io::Error::last_os_error());
        Ok(())
    }

    /// Whether node `i` has exited by itself with the broker's fail-stop code (replication
    /// stopped on a storage error); if so the process is forgotten, to be started again.
    /// Another exit is an error; a node still running gives false.
    pub fn reap_fail_stop(&mut self, i: usize) -> Result<bool> {
        let Some(proc) = self.nodes[i].proc.as_mut() else { return Ok(false) };
        let Some(status) = proc.child.try_wait()? else { return Ok(false) };
        ensure!(
            status.code() == Some(i32::from(FAIL_STOP_EXIT_CODE)),
            "broker {} exited by itself with {status}, not the fail-stop code {FAIL_STOP_EXIT_CODE}\n{}",
            self.nodes[i].id,
            tail(&self.nodes[i].log_path, LOG_TAIL_LINES)
        );
        self.nodes[i].proc = None;
        Ok(true)
    }

    /// SIGSTOP node `i`: the process freezes with its sockets open (a GC pause or a hung
    /// VM). Returns once every thread of it has stopped, within `SIGSTOP_TIMEOUT_MS`. Why
    /// wait: kill(2) returns once the signal is queued, and the process goes on running
    /// until one of its threads is scheduled to take it; on a loaded machine it answered a
    /// call meanwhile (the harness test failed once with "a SIGSTOPped broker answered").
    /// The wait is a blocking 1 ms poll of `/proc`, as callers are sync: it holds up the
    /// caller's thread for the millisecond or two a stop takes.
    pub fn sigstop(&mut self, i: usize) -> Result<()> {
        let proc = self.nodes[i].proc.as_mut().context("sigstop: node not running")?;
        proc.signal(libc::SIGSTOP)?;
        proc.stopped = true;
        let pid = proc.pid();
        let deadline = Instant::now() + Duration::from_millis(SIGSTOP_TIMEOUT_MS);
        while !all_threads_stopped(pid) {
            ensure!(Instant::now() < deadline, "pid {pid} not stopped {SIGSTOP_TIMEOUT_MS} ms after SIGSTOP");
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    pub fn sigcont(&mut self, i: usize) -> Result<()> {
        let proc = self.nodes[i].proc.as_mut().context("sigcont: node not running")?;
        proc.signal(libc::SIGCONT)?;
        proc.stopped = false;
        Ok(())
    }

    /// Checks that no process we started has exited on its own (a crash is a failure, not
    /// a fault we injected).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(p) = self.namesrv.as_mut()
            && let Some(status) = p.child.try_wait()?
        {
            bail!("name server exited by itself: {status}\n{}", tail(&self.namesrv_log, LOG_TAIL_LINES));
        }
        for n in &mut self.nodes {
            if let Some(p) = n.proc.as_mut()
                && let Some(status) = p.child.try_wait()?
            {
                bail!("broker {} exited by itself: {status}\n{}", n.id, tail(&n.log_path, LOG_TAIL_LINES));
            }
        }
        Ok(())
    }

    pub fn client_endpoint(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].client_addr)
    }

    pub async fn admin(&self, i: usize) -> Result<AdminClient<tonic::transport::Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(self.client_endpoint(i))?
            .connect_timeout(Duration::from_millis(STATUS_TIMEOUT_MS))
            .timeout(Duration::from_millis(STATUS_TIMEOUT_MS * 5))
            .connect()
            .await
            .with_context(|| format!("connect admin {}", self.nodes[i].id))?;
        Ok(AdminClient::new(channel))
    }

    /// Node `i`'s own status; errors when it is down, stopped or slow.
    pub async fn status(&self, i: usize) -> Result<NodeStatus> {
        let call = async {
            let mut client = self.admin(i).await?;
            let r = client.broker_status(admin::BrokerStatusRequest {}).await;
            Ok::<_, anyhow::Error>(r)
        };
        let r = tokio::time::timeout(Duration::from_millis(STATUS_TIMEOUT_MS), call)
            .await
            .with_context(|| format!("status of {} timed out", self.nodes[i].id))??;
        let r = match r {
            Ok(r) => r.into_inner(),
            // A broker without the admin service: its own heartbeat to the name server.
            Err(s) if s.code() == tonic::Code::Unimplemented => return self.status_from_namesrv(i).await,
            Err(s) => return Err(s).with_context(|| format!("brokerStatus of {}", self.nodes[i].id)),
        };
        Ok(NodeStatus {
            index: i,
            node_id: r.node_id.clone(),
            role: r.role(),
            term: r.term,
            leader_id: r.leader_id,
            last_index: r.last_index,
            committed_index: r.committed_index,
            applied_index: r.applied_index,
        })
    }

    /// Node `i` as its last heartbeat to the name server described it (up to one heartbeat
    /// old; applied index = committed index, the only one reported).
    async fn status_from_namesrv(&self, i: usize) -> Result<NodeStatus> {
        let info = self.cluster_info().await?;
        let addr = self.nodes[i].client_addr.to_string();
        for group in &info.brokers {
            let Some(n) = group.nodes.iter().find(|n| n.client_addr == addr) else { continue };
            let leader = group
                .nodes
                .iter()
                .filter(|m| m.role == namesrv::Role::Leader as i32 || m.role == namesrv::Role::Standalone as i32)
                .max_by_key(|m| m.term);
            let role = match namesrv::Role::try_from(n.role).unwrap_or(namesrv::Role::Unspecified) {
                namesrv::Role::Leader => admin::Role::Leader,
                namesrv::Role::Follower => admin::Role::Follower,
                namesrv::Role::Candidate => admin::Role::Candidate,
                namesrv::Role::Standalone => admin::Role::Standalone,
                namesrv::Role::Unspecified => admin::Role::Unspecified,
            };
            return Ok(NodeStatus {
                index: i,
                node_id: n.node_id.clone(),
                role,
                term: n.term,
                leader_id: leader.map(|l| l.node_id.clone()).unwrap_or_default(),
                last_index: n.committed_index,
                committed_index: n.committed_index,
                applied_index: n.committed_index,
            });
        }
        bail!("{} ({addr}) is not registered with the name server", self.nodes[i].id)
    }

    /// Status of every running, not stopped node that answers in time.
    pub async fn statuses(&self) -> Vec<NodeStatus> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let calls =
            (0..self.nodes.len()).filter(|&i| self.is_running(i) && !self.is_stopped(i)).map(|i| self.status(i));
        for s in futures::future::join_all(calls).await.into_iter().flatten() {
            out.push(s);
        }
        out
    }

    /// Waits until exactly one answering node says it is leader (standalone counts) and a
    /// majority of answering nodes agree on it and its term. Returns (index, term).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(usize, u64)> {
        self.wait_for_leader_among(timeout, &(0..self.nodes.len()).collect::<Vec<_>>()).await
    }

    /// Like `wait_for_leader`, but only nodes in `candidates` may be the leader (e.g. the
    /// majority side of a partition) and only their views count.
    pub async fn wait_for_leader_among(&self, timeout: Duration, candidates: &[usize]) -> Result<(usize, u64)> {
        let deadline = Instant::now() + timeout;
        let majority = self.nodes.len() / 2 + 1;
        let mut last = Vec::new();
        loop {
            let statuses: Vec<NodeStatus> =
                self.statuses().await.into_iter().filter(|s| candidates.contains(&s.index)).collect();
            let leaders: Vec<&NodeStatus> =
                statuses.iter().filter(|s| matches!(s.role, admin::Role::Leader | admin::Role::Standalone)).collect();
            if let [leader] = leaders.as_slice() {
                let agree = statuses.iter().filter(|s| s.term == leader.term && s.leader_id == leader.node_id).count();
                let needed = if self.nodes.len() == 1 { 1 } else { majority };
                if agree >= needed || (leader.role == admin::Role::Standalone) {
                    return Ok((leader.index, leader.term));
                }
            }
            if Instant::now() >= deadline {
                bail!("no leader among {candidates:?} after {timeout:?}; last statuses: {last:#?}");
            }
            last = statuses;
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 4)).await;
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_running(i)).collect();
            let statuses = self.statuses().await;
            let behind: Vec<String> = running
                .iter()
                .filter(|&&i| !statuses.iter().any(|s| s.index == i && s.applied_index >= index))
                .map(|&i| {
                    let s = statuses.iter().find(|s| s.index == i);
                    format!("{}: {:?}", self.nodes[i].id, s.map(|s| (s.applied_index, s.committed_index)))
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nodes not caught up to applied index {index} after {timeout:?}: {behind:?}");
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 4)).await;
        }
    }

    pub async fn namesrv_client(&self) -> Result<NameServerClient<tonic::transport::Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.namesrv_addr))?
            .connect_timeout(Duration::from_millis(STATUS_TIMEOUT_MS))
            .timeout(Duration::from_millis(STATUS_TIMEOUT_MS * 5))
            .connect()
            .await
            .context("connect name server")?;
        Ok(NameServerClient::new(channel))
    }

    /// The name server's cluster table (gRPC `GetClusterInfo`).
    pub async fn cluster_info(&self) -> Result<namesrv::GetClusterInfoResponse> {
        let mut c = self.namesrv_client().await?;
        Ok(c.get_cluster_info(namesrv::GetClusterInfoRequest {}).await?.into_inner())
    }

    /// `mqadmin clusterList -n <namesrv> --json`, parsed. Runs the real CLI.
    pub async fn mqadmin_cluster_list(&self) -> Result<serde_json::Value> {
        let out = self.mqadmin(&["clusterList", "-n", &self.namesrv_addr.to_string(), "--json"]).await?;
        serde_json::from_str(&out).with_context(|| format!("mqadmin clusterList --json printed non-JSON: {out}"))
    }

    /// Leaders in the name server's table as printed by the real `mqadmin clusterList --json`:
    /// (node id, term) of every row whose role is LEADER or STANDALONE.
    pub async fn cli_leaders(&self) -> Result<Vec<(String, u64)>> {
        let v = self.mqadmin_cluster_list().await?;
        let rows = v.as_array().with_context(|| format!("clusterList --json is not an array: {v}"))?;
        let mut leaders = Vec::new();
        for row in rows {
            let role = row.get("role").and_then(|r| r.as_str()).unwrap_or("");
            if role == "LEADER" || role == "STANDALONE" {
                let node = row.get("nodeId").and_then(|n| n.as_str()).context("row without nodeId")?;
                let term = row.get("term").and_then(|t| t.as_u64()).context("row without term")?;
                leaders.push((node.to_string(), term));
            }
        }
        Ok(leaders)
    }

    /// Waits until `mqadmin clusterList` shows `node_id` as the leader with a term of at least
    /// `term_min`, and no other leader in the same or a higher term.
    pub async fn wait_cli_leader(&self, node_id: &str, term_min: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders = self.cli_leaders().await?;
            let ours = leaders.iter().find(|(n, t)| n == node_id && *t >= term_min);
            if let Some((_, term)) = ours {
                let rivals: Vec<_> = leaders.iter().filter(|(n, t)| n != node_id && t >= term).collect();
                ensure!(rivals.is_empty(), "clusterList shows rival leaders {rivals:?} next to {node_id} term {term}");
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("clusterList never showed {node_id} as leader (term >= {term_min}); last: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 10)).await;
        }
    }

    /// Runs `mqadmin ARGS`, returns stdout; a non-zero exit is an error with stderr.
    pub async fn mqadmin(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(self.bins.path(Binaries::ADMIN))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .with_context(|| format!("mqadmin {args:?} timed out"))??;
        ensure!(
            out.status.success(),
            "mqadmin {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Prints the tail of every log to stderr.
    pub fn dump_logs(&mut self, lines: usize) {
        self.logs_dumped = true;
        eprintln!("===== cluster dir: {}", self.root.display());
        eprintln!("===== namesrv log tail\n{}", tail(&self.namesrv_log, lines));
        for n in &self.nodes {
            eprintln!("===== broker {} log tail ({} restarts)\n{}", n.id, n.restarts, tail(&n.log_path, lines));
        }
    }

    /// Ends a test: on error, prints the logs and panics with the error chain; kills every
    /// process either way.
    pub fn finish(mut self, result: Result<()>) {
        if let Err(e) = &result {
            self.dump_logs(LOG_TAIL_LINES);
            if std::env::var_os("WASMQ_KEEP_DIR").is_none() {
                // Keep the evidence of a failure.
                if let Some(dir) = self.dir.take() {
                    let kept = dir.keep();
                    eprintln!("===== kept {}", kept.display());
                }
            }
            self.shutdown();
            panic!("{e:?}");
        }
        self.shutdown();
    }

    pub fn shutdown(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill9(i);
        }
        if let Some(p) = self.namesrv.take() {
            let _ = p.kill9();
        }
        if std::env::var_os("WASMQ_KEEP_DIR").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("kept cluster dir {}", dir.keep().display());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.logs_dumped {
            self.dump_logs(LOG_TAIL_LINES);
        }
        self.shutdown();
    }
}

async fn wait_port_open(proc: &mut Proc, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(PORT_OPEN_TIMEOUT_MS);
    loop {
        if let Some(status) = proc.child.try_wait()? {
            bail!("process exited during startup: {status}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("port {addr} not open after {PORT_OPEN_TIMEOUT_MS} ms");
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// Last `lines` lines of a file (whole file read: logs of a test run are small).
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

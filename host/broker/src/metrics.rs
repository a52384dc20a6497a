//! Prometheus text endpoint (`GET /metrics` on `metricsPort`), plain HTTP/1.1 over tokio.
//!
//! Sources, read at scrape time (nothing is sampled in the hot path except the counters):
//! - send/read counters, send latency histogram, per-kind send errors: [`MeteredBackend`]
//!   wraps the core's `MessagingBackend` for the v2 service, so every client send and read
//!   is counted at the seam without touching the core's send path;
//! - send/read rates over the last [`RATE_WINDOW_S`] seconds: a 1 s sampler task;
//! - Raft role, term, commit/last/applied index, per-follower match index and lag, disk:
//!   `BrokerCore::status()`;
//! - per-plugin calls, errors and time: `PluginRegistry::list()`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::core::BrokerCore;
use crate::latency_histogram::LatencyHistogram;
use crate::messaging::backend::{
    BackendError, BackendResult, FilterKind, MessagingBackend, OutgoingMessage, RouteInfo, SendOutcome, StoredMessage,
    TopicInfo,
};
use crate::replication::Role;

/// Rates are averaged over this many seconds of 1 s samples.
pub const RATE_WINDOW_S: usize = 10;
/// Largest request head read; a scrape is one short GET.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// A client must send its request within this time.
const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Scrapes served at once; more wait in the accept queue.
const CONNECTIONS_MAX: usize = 16;

const ERROR_KINDS: [&str; 7] =
    ["topic_not_found", "message_too_large", "not_leader", "plugin_reject", "bad_request", "timeout", "internal"];

fn error_kind(e: &BackendError) -> usize {
    match e {
        BackendError::TopicNotFound(_) => 0,
        BackendError::MessageTooLarge { .. } => 1,
        BackendError::NotLeader { .. } => 2,
        BackendError::PluginReject(_) => 3,
        BackendError::BadRequest(_) => 4,
        BackendError::Timeout(_) => 5,
        BackendError::Internal(_) => 6,
    }
}

/// Counters of one broker process.
#[derive(Default)]
pub struct BrokerMetrics {
    sends_ok: AtomicU64,
    send_bytes: AtomicU64,
    send_errors: [AtomicU64; ERROR_KINDS.len()],
    send_latency: LatencyHistogram,
    reads: AtomicU64,
    messages_read: AtomicU64,
    bytes_read: AtomicU64,
    rates: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl BrokerMetrics {
    pub fn new() -> Arc<BrokerMetrics> {
        Arc::new(BrokerMetrics::default())
    }

    fn record_send(&self, elapsed: Duration, body_bytes: usize, result: &BackendResult<SendOutcome>) {
        self.send_latency.record(elapsed);
        match result {
            Ok(_) => {
                self.sends_ok.fetch_add(1, Ordering::Relaxed);
                self.send_bytes.fetch_add(body_bytes as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.send_errors[error_kind(e)].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn record_read(&self, messages: &[StoredMessage]) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.messages_read.fetch_add(messages.len() as u64, Ordering::Relaxed);
        self.bytes_read.fetch_add(messages.iter().map(|m| m.body.len() as u64).sum(), Ordering::Relaxed);
    }

    /// Takes one rate sample (the sampler task calls this every second).
    pub fn sample_rates(&self, now: Instant) {
        let mut r = self.rates.lock();
        r.push_back((now, self.sends_ok.load(Ordering::Relaxed), self.messages_read.load(Ordering::Relaxed)));
        while r.len() > RATE_WINDOW_S + 1 {
            r.pop_front();
        }
    }

    /// (sends/s, messages read/s) over the sampled window; zeros before two samples exist.
    pub fn rates_per_second(&self) -> (f64, f64) {
        let r = self.rates.lock();
        match (r.front(), r.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let s = (b.0 - a.0).as_secs_f64();
                ((b.1 - a.1) as f64 / s, (b.2 - a.2) as f64 / s)
            }
            _ => (0.0, 0.0),
        }
    }

    /// Wraps a backend so that its sends and reads are counted here.
    pub fn wrap(self: &Arc<Self>, inner: Arc<dyn MessagingBackend>) -> Arc<dyn MessagingBackend> {
        Arc::new(MeteredBackend { inner, metrics: self.clone() })
    }
}

/// A `MessagingBackend` that counts into [`BrokerMetrics`] and delegates everything.
pub struct MeteredBackend {
    inner: Arc<dyn MessagingBackend>,
    metrics: Arc<BrokerMetrics>,
}

#[async_trait]
impl MessagingBackend for MeteredBackend {
    async fn topic(&self, topic: &str) -> BackendResult<Option<TopicInfo>> {
        self.inner.topic(topic).await
    }
    async fn route(&self) -> BackendResult<RouteInfo> {
        self.inner.route().await
    }
    async fn send_batch(&self, msgs: Vec<OutgoingMessage>) -> Vec<BackendResult<SendOutcome>> {
        let sizes: Vec<usize> = msgs.iter().map(|m| m.body.len()).collect();
        let started = Instant::now();
        let results = self.inner.send_batch(msgs).await;
        let elapsed = started.elapsed();
        for (bytes, result) in sizes.into_iter().zip(&results) {
            self.metrics.record_send(elapsed, bytes, result);
        }
        results
    }
    async fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: u32,
        max_bytes: u64,
    ) -> BackendResult<Vec<StoredMessage>> {
        let result = self.inner.read(topic, queue_id, offset, max_count, max_bytes).await;
        if let Ok(messages) = &result {
            self.metrics.record_read(messages);
        }
        result
    }
    async fn min_offset(&self, topic: &str, queue_id: u32) -> BackendResult<u64> {
        self.inner.min_offset(topic, queue_id).await
    }
    async fn max_offset(&self, topic: &str, queue_id: u32) -> BackendResult<u64> {
        self.inner.max_offset(topic, queue_id).await
    }
    async fn wait_for_new(
        &self,
        topic: &str,
        queue_id: u32,
        after_offset: u64,
        timeout: Duration,
    ) -> BackendResult<u64> {
        self.inner.wait_for_new(topic, queue_id, after_offset, timeout).await
    }
    async fn commit_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> BackendResult<()> {
        self.inner.commit_offset(group, topic, queue_id, offset).await
    }
    async fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> BackendResult<Option<u64>> {
        self.inner.consumer_offset(group, topic, queue_id).await
    }
    async fn filter(
        &self,
        group: &str,
        topic: &str,
        kind: FilterKind,
        expression: &str,
        messages: &[StoredMessage],
    ) -> BackendResult<Vec<bool>> {
        self.inner.filter(group, topic, kind, expression, messages).await
    }
    fn leader_client_endpoint(&self) -> Option<String> {
        self.inner.leader_client_endpoint()
    }
    fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }
    fn max_message_size_bytes(&self) -> u64 {
        self.inner.max_message_size_bytes()
    }
}

/// Escapes a label value (backslash, quote, newline), as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition, Prometheus text format 0.0.4.
pub fn render(metrics: &BrokerMetrics, core: &BrokerCore) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    header(
        &mut out,
        "wasmq_sends_total",
        "counter",
        "Messages stored and acknowledged through this broker's client service.",
    );
    let _ = writeln!(out, "wasmq_sends_total {}", load(&metrics.sends_ok));
    header(&mut out, "wasmq_send_bytes_total", "counter", "Body bytes of acknowledged sends.");
    let _ = writeln!(out, "wasmq_send_bytes_total {}", load(&metrics.send_bytes));
    header(&mut out, "wasmq_send_errors_total", "counter", "Failed sends by error kind.");
    for (i, kind) in ERROR_KINDS.iter().enumerate() {
        let _ = writeln!(out, "wasmq_send_errors_total{{kind=\"{kind}\"}} {}", load(&metrics.send_errors[i]));
    }
    header(
        &mut out,
        "wasmq_send_latency_seconds",
        "histogram",
        "Time from send request to commit and apply (or error), in the core behind the client service.",
    );
    metrics.send_latency.render(&mut out, "wasmq_send_latency_seconds");
    header(&mut out, "wasmq_reads_total", "counter", "Queue reads served (pop / pull batches).");
    let _ = writeln!(out, "wasmq_reads_total {}", load(&metrics.reads));
    header(
        &mut out,
        "wasmq_messages_read_total",
        "counter",
        "Messages returned by queue reads (before filter plugins).",
    );
    let _ = writeln!(out, "wasmq_messages_read_total {}", load(&metrics.messages_read));
    header(&mut out, "wasmq_bytes_read_total", "counter", "Body bytes returned by queue reads.");
    let _ = writeln!(out, "wasmq_bytes_read_total {}", load(&metrics.bytes_read));
    let (send_rate, read_rate) = metrics.rates_per_second();
    header(&mut out, "wasmq_send_rate_per_second", "gauge", "Acknowledged sends per second over the last 10 s.");
    let _ = writeln!(out, "wasmq_send_rate_per_second {send_rate:.3}");
    header(&mut out, "wasmq_read_rate_per_second", "gauge", "Messages read per second over the last 10 s.");
    let _ = writeln!(out, "wasmq_read_rate_per_second {read_rate:.3}");

    if let Some(stages) = core.replicator().propose_latency() {
        for (histogram, name, help) in [
            (
                &stages.queued,
                "wasmq_raft_propose_queued_seconds",
                "Leader: from a proposal to the Raft driver appending it (channel, driver wake-up, backpressure).",
            ),
            (
                &stages.replicated,
                "wasmq_raft_propose_replicated_seconds",
                "Leader: from the append to the answer (followers' round trip, group flush, commit hook).",
            ),
            (
                &stages.resumed,
                "wasmq_raft_propose_resumed_seconds",
                "Leader: from the driver's answer to the proposing task running again.",
            ),
        ] {
            header(&mut out, name, "histogram", help);
            histogram.render(&mut out, name);
        }
    }

    let status = core.status();
    let r = &status.replication;
    header(&mut out, "wasmq_raft_role", "gauge", "1 for this node's current role.");
    for role in [Role::Standalone, Role::Leader, Role::Follower, Role::Candidate] {
        let _ = writeln!(out, "wasmq_raft_role{{role=\"{}\"}} {}", role.as_str(), u8::from(r.role == role));
    }
    header(&mut out, "wasmq_raft_term", "gauge", "Current Raft term (0 when standalone).");
    let _ = writeln!(out, "wasmq_raft_term {}", r.term);
    header(&mut out, "wasmq_raft_commit_index", "gauge", "Highest committed entry index.");
    let _ = writeln!(out, "wasmq_raft_commit_index {}", r.commit_index);
    header(&mut out, "wasmq_raft_last_index", "gauge", "Highest entry index in the local commitlog.");
    let _ = writeln!(out, "wasmq_raft_last_index {}", r.last_index);
    header(&mut out, "wasmq_applied_index", "gauge", "Highest entry applied to consume queues and tables.");
    let _ = writeln!(out, "wasmq_applied_index {}", status.applied_index);
    header(&mut out, "wasmq_raft_peer_match_index", "gauge", "Highest index known replicated on a peer (leader view).");
    for p in &r.peers {
        let _ = writeln!(out, "wasmq_raft_peer_match_index{{peer=\"{}\"}} {}", label(&p.id), p.match_index);
    }
    header(
        &mut out,
        "wasmq_raft_replication_lag_entries",
        "gauge",
        "Entries a peer is behind this node's last index (leader view).",
    );
    for p in &r.peers {
        let _ = writeln!(
            out,
            "wasmq_raft_replication_lag_entries{{peer=\"{}\"}} {}",
            label(&p.id),
            r.last_index.saturating_sub(p.match_index)
        );
    }
    header(&mut out, "wasmq_raft_peer_last_contact_seconds", "gauge", "Time since the last exchange with a peer.");
    for p in &r.peers {
        if let Some(ms) = p.last_contact_ms {
            let _ =
                writeln!(out, "wasmq_raft_peer_last_contact_seconds{{peer=\"{}\"}} {}", label(&p.id), ms as f64 / 1e3);
        }
    }

    let d = &status.disk;
    header(&mut out, "wasmq_commitlog_bytes", "gauge", "Bytes of commitlog segment files (preallocated size).");
    let _ = writeln!(out, "wasmq_commitlog_bytes {}", d.commit_log_bytes);
    header(&mut out, "wasmq_commitlog_segments", "gauge", "Commitlog segment files.");
    let _ = writeln!(out, "wasmq_commitlog_segments {}", d.segments);
    header(&mut out, "wasmq_disk_total_bytes", "gauge", "Size of the file system holding the commitlog.");
    let _ = writeln!(out, "wasmq_disk_total_bytes {}", d.fs_total_bytes);
    header(&mut out, "wasmq_disk_available_bytes", "gauge", "Free bytes of that file system.");
    let _ = writeln!(out, "wasmq_disk_available_bytes {}", d.fs_available_bytes);
    header(&mut out, "wasmq_disk_used_ratio", "gauge", "Used share of that file system (0..1).");
    let _ = writeln!(out, "wasmq_disk_used_ratio {}", d.fs_used_percent as f64 / 100.0);

    if let Some(plugins) = core.plugins() {
        let list = plugins.list();
        header(&mut out, "wasmq_plugin_calls_total", "counter", "Calls into a plugin (current version).");
        for p in &list {
            let _ = writeln!(
                out,
                "wasmq_plugin_calls_total{{plugin=\"{}\",kind=\"{}\"}} {}",
                label(&p.name),
                p.kind.as_str(),
                p.calls
            );
        }
        header(
            &mut out,
            "wasmq_plugin_errors_total",
            "counter",
            "Calls that trapped, ran out of fuel/memory or returned a bad result.",
        );
        for p in &list {
            let _ = writeln!(
                out,
                "wasmq_plugin_errors_total{{plugin=\"{}\",kind=\"{}\"}} {}",
                label(&p.name),
                p.kind.as_str(),
                p.errors
            );
        }
        header(&mut out, "wasmq_plugin_call_seconds_total", "counter", "Time spent in a plugin's calls.");
        for p in &list {
            let _ = writeln!(
                out,
                "wasmq_plugin_call_seconds_total{{plugin=\"{}\",kind=\"{}\"}} {}",
                label(&p.name),
                p.kind.as_str(),
                p.total_call_ns as f64 / 1e9
            );
        }
    }
    out
}

/// The running endpoint.
pub struct MetricsServer {
    local_addr: SocketAddr,
}

impl MetricsServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Binds `addr` and serves `GET /metrics` until `shutdown` flips to true; also runs the
/// 1 s rate sampler.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<BrokerMetrics>,
    core: Arc<BrokerCore>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let sampler_metrics = metrics.clone();
    let mut sampler_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => sampler_metrics.sample_rates(Instant::now()),
                _ = sampler_stop.wait_for(|s| *s) => break,
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let (stream, _) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (metrics, core) = (metrics.clone(), core.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = handle(stream, &metrics, &core).await {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            });
        }
    });
    tracing::info!(%local_addr, "metrics endpoint serving");
    Ok(MetricsServer { local_addr })
}

async fn handle(
    mut stream: tokio::net::TcpStream,
    metrics: &BrokerMetrics,
    core: &Arc<BrokerCore>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() > REQUEST_BYTES_MAX {
                return Ok(false);
            }
        }
    };
    let complete = match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), read_head).await {
        Ok(r) => r?,
        Err(_) => false,
    };
    if !complete {
        return respond(&mut stream, "400 Bad Request", "text/plain", "bad request\n").await;
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET\n").await;
    }
    if path != "/metrics" {
        return respond(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await;
    }
    // One statvfs and a walk over topics: cheap enough for the scrape interval.
    let body = render(metrics, core);
    respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body).await
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

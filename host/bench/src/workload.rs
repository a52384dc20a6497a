//! The load: producers (wasmq v2 gRPC or NATS JetStream) and consumers (wasmq), bounded by a
//! message count and a duration, whichever ends first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;

use crate::client::{ClientError, MqClient, Outgoing, SEND_BATCH_MAX};
use crate::nats::{NatsConn, NatsMux};
use crate::stats::{Counters, LatencySummary, Report, new_histogram, progress_line, record_latency};
use wasmq_proto::apache::rocketmq::v2::Code;
use wasmq_proto::h2_channel::H2Channel;

pub const SIZE_BYTES_MIN: usize = 8;
pub const SIZE_BYTES_MAX: usize = 4 * 1024 * 1024;
pub const PRODUCERS_MAX: u32 = 1024;
pub const CONSUMERS_MAX: u32 = 256;
pub const DURATION_SECS_MAX: u64 = 3600;
/// After the producers stop, consumers get this long without progress to drain what is left.
const DRAIN_IDLE_MS: u64 = 3_000;
/// Pause after a failed send before the next try (a leader change takes a moment).
const ERROR_BACKOFF_MS: u64 = 20;
const CONSUMER_BATCH: i32 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Wasmq,
    Nats,
}

/// Which wasmq member a producer sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// Producers spread over all endpoints; followers forward to the leader (what a client
    /// given one access point does; NATS clients are spread the same way).
    Spread,
    /// Every producer sends to the group leader, found with the admin `BrokerStatus` call
    /// and looked up again after a failed send (what a RocketMQ client does with a route
    /// that names the master).
    Leader,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub target: Target,
    /// wasmq: gRPC endpoints (`http://127.0.0.1:8081` or `127.0.0.1:8081`); nats: `host:port`.
    pub endpoints: Vec<String>,
    pub topic: String,
    pub group: String,
    pub size_bytes: usize,
    pub count: u64,
    pub duration: Duration,
    pub producers: u32,
    /// Messages per send request (wasmq: one `SendMessage` call; NATS: that many publishes
    /// in flight on the shared connection, then their acks). Latency is per request.
    pub batch: u32,
    pub consumers: u32,
    pub timeout: Duration,
    pub route: Route,
    /// Connections per endpoint shared by the producers (wasmq: each call an HTTP/2 stream;
    /// NATS: each request its own reply subject); 0: every producer dials its own.
    pub connections: u32,
    pub label: String,
    pub progress: bool,
    /// Producer threads: each runs its share of the producers on a current-thread runtime
    /// of its own, with `connections` per endpoint of its own.
    pub client_threads: u32,
}

impl Workload {
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.endpoints.is_empty(), "at least one endpoint");
        ensure!(
            (SIZE_BYTES_MIN..=SIZE_BYTES_MAX).contains(&self.size_bytes),
            "message size {} B outside [{SIZE_BYTES_MIN}, {SIZE_BYTES_MAX}]",
            self.size_bytes
        );
        ensure!((1..=PRODUCERS_MAX).contains(&self.producers), "producers must be in [1, {PRODUCERS_MAX}]");
        ensure!((1..=SEND_BATCH_MAX as u32).contains(&self.batch), "batch must be in [1, {SEND_BATCH_MAX}]");
        ensure!(
            self.batch == 1 || self.target == Target::Wasmq || self.connections > 0,
            "NATS batches need --connections >= 1 (publishes pipelined on a shared connection)"
        );
        ensure!(self.connections <= PRODUCERS_MAX, "connections must be at most {PRODUCERS_MAX}");
        ensure!(self.consumers <= CONSUMERS_MAX, "consumers must be at most {CONSUMERS_MAX}");
        ensure!(
            self.target == Target::Wasmq || self.consumers == 0,
            "consumers are only implemented for the wasmq target"
        );
        if self.target == Target::Wasmq {
            for e in &self.endpoints {
                if let Err(why) = H2Channel::for_endpoint(e, self.timeout, self.timeout) {
                    bail!("endpoint {e:?}: {why} (write http://host:port or host:port)");
                }
            }
        }
        ensure!(self.count > 0, "count must be positive");
        ensure!(
            !self.duration.is_zero() && self.duration <= Duration::from_secs(DURATION_SECS_MAX),
            "duration must be in [1, {DURATION_SECS_MAX}] s"
        );
        Ok(())
    }

    fn subject(&self) -> String {
        format!("bench.{}", self.topic)
    }
}

/// The body carries its send time (µs since the Unix epoch, little endian) for end-to-end
/// latency; the rest is filler.
fn make_body(size_bytes: usize) -> Vec<u8> {
    let mut body = vec![b'x'; size_bytes];
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
    body[..8].copy_from_slice(&now_us.to_le_bytes());
    body
}

fn body_age(body: &[u8]) -> Option<Duration> {
    let sent_us = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_micros() as u64;
    Some(Duration::from_micros(now_us.saturating_sub(sent_us)))
}

/// A send acknowledged `t0` after it started: its latency and the counters (each message
/// of a batch records the batch's latency).
fn acked(hist: &mut Histogram<u64>, counters: &Counters, t0: Instant, bytes: usize) {
    record_latency(hist, t0.elapsed());
    counters.sent.fetch_add(1, Ordering::Relaxed);
    counters.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Records the acknowledged messages of one batch sent at `t0`: how many were, and the
/// first error among the others.
fn settle<T, E>(
    results: impl IntoIterator<Item = Result<T, E>>,
    hist: &mut Histogram<u64>,
    counters: &Counters,
    t0: Instant,
    size_bytes: usize,
) -> (u32, Option<E>) {
    let (mut acked_len, mut error) = (0, None);
    for r in results {
        match r {
            Ok(_) => {
                acked(hist, counters, t0, size_bytes);
                acked_len += 1;
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    (acked_len, error)
}

/// A failed attempt: its `unacked` messages go back to the budget, the error is counted
/// (once per attempt), and the producer pauses (a leader change takes a moment).
async fn failed(budget: &AtomicU64, counters: &Counters, unacked: u32, error: impl std::fmt::Display) {
    budget.fetch_add(u64::from(unacked), Ordering::Relaxed);
    counters.send_error(&error);
    tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
}

/// Takes one message from the shared budget; false when it is spent.
fn claim(budget: &AtomicU64) -> bool {
    claim_up_to(budget, 1) == 1
}

/// Takes up to `n` messages from the shared budget; how many it got (0: spent).
fn claim_up_to(budget: &AtomicU64, n: u32) -> u32 {
    match budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| (b > 0).then(|| b - b.min(u64::from(n)))) {
        Ok(before) => before.min(u64::from(n)) as u32,
        Err(_) => 0,
    }
}

pub async fn run(w: Workload) -> Result<Report> {
    w.validate()?;
    let counters = Arc::new(Counters::default());
    let budget = Arc::new(AtomicU64::new(w.count));
    let start = Instant::now();
    let cpu_at_start = process_cpu_us();
    let deadline = start + w.duration;
    let producers_done = Arc::new(AtomicBool::new(false));

    let progress = w.progress.then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut before = counters.snapshot();
            let mut last = Instant::now();
            loop {
                tick.tick().await;
                let now = counters.snapshot();
                eprintln!("{}", progress_line(start.elapsed(), now, before, last.elapsed()));
                before = now;
                last = Instant::now();
            }
        })
    });

    let mut consumer_tasks = Vec::new();
    for id in 0..w.consumers {
        let (w, counters, done) = (w.clone(), counters.clone(), producers_done.clone());
        consumer_tasks.push(tokio::spawn(async move { wasmq_consumer(id, &w, &counters, &done, deadline).await }));
    }
    let send_latency = if w.client_threads <= 1 {
        run_producers(&w, 0, 1, &counters, &budget, deadline).await?
    } else {
        // One current-thread runtime per thread, each with its share of the producers and
        // connections of its own: a multi-thread runtime around shared connections paid
        // a cross-thread wake-up per call (18 us of CPU per message at 64 producers on 2
        // threads against 11 on one).
        let threads: Vec<_> = (0..w.client_threads)
            .map(|t| {
                let (w, counters, budget) = (w.clone(), counters.clone(), budget.clone());
                std::thread::Builder::new().name(format!("mqbench-{t}")).spawn(move || {
                    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run_producers(
                        &w,
                        t,
                        w.client_threads,
                        &counters,
                        &budget,
                        deadline,
                    ))
                })
            })
            .collect::<std::io::Result<_>>()
            .context("spawn producer threads")?;
        let joined = tokio::task::spawn_blocking(move || {
            let mut all = new_histogram();
            for t in threads {
                all.add(t.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??)?;
            }
            anyhow::Ok(all)
        });
        joined.await.context("join producer threads")??
    };
    let send_elapsed = start.elapsed();
    producers_done.store(true, Ordering::Relaxed);
    let mut e2e = new_histogram();
    for t in consumer_tasks {
        e2e.add(t.await.context("consumer task panicked")??)?;
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
    }

    let sent = counters.sent.load(Ordering::Relaxed);
    let received = counters.received.load(Ordering::Relaxed);
    let client_cpu_us = process_cpu_us().saturating_sub(cpu_at_start);
    Ok(Report {
        target: format!("{:?}", w.target).to_lowercase(),
        label: w.label.clone(),
        topic: w.topic.clone(),
        size_bytes: w.size_bytes,
        producers: w.producers,
        batch: w.batch,
        consumers: w.consumers,
        elapsed_s: elapsed.as_secs_f64(),
        sent,
        send_errors: counters.send_errors.load(Ordering::Relaxed),
        received,
        receive_errors: counters.receive_errors.load(Ordering::Relaxed),
        last_send_error: counters.last_send_error.lock().expect("not poisoned").clone(),
        last_receive_error: counters.last_receive_error.lock().expect("not poisoned").clone(),
        send_msgs_per_s: sent as f64 / send_elapsed.as_secs_f64(),
        send_mb_per_s: counters.sent_bytes.load(Ordering::Relaxed) as f64 / 1e6 / send_elapsed.as_secs_f64(),
        receive_msgs_per_s: received as f64 / elapsed.as_secs_f64(),
        send_latency_us: LatencySummary::of(&send_latency),
        e2e_latency_us: (w.consumers > 0).then(|| LatencySummary::of(&e2e)),
        client_threads: w.client_threads,
        client_cpu_us_per_msg: (sent + received > 0).then(|| client_cpu_us as f64 / (sent + received) as f64),
    })
}

/// Runs producers `first`, `first + step`, ... on the current runtime, with connections of
/// their own (`w.connections` per endpoint), until the budget or the deadline ends them;
/// their send latencies.
async fn run_producers(
    w: &Workload,
    first: u32,
    step: u32,
    counters: &Arc<Counters>,
    budget: &Arc<AtomicU64>,
    deadline: Instant,
) -> Result<Histogram<u64>> {
    // Shared connections: `shared[c][e]` is connection c to endpoint e.
    let shared: Vec<Vec<MqClient>> = if w.target == Target::Wasmq {
        (0..w.connections).map(|_| connect_all(w)).collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let nats_shared: Vec<Arc<NatsMux>> = if w.target == Target::Nats {
        let mut muxes = Vec::new();
        for _ in 0..w.connections {
            for e in &w.endpoints {
                muxes.push(NatsConn::connect(e, w.timeout).await.with_context(|| format!("connect {e}"))?.into_mux());
            }
        }
        muxes
    } else {
        Vec::new()
    };
    let mut producer_tasks = Vec::new();
    for (n, id) in (first..w.producers).step_by(step as usize).enumerate() {
        let (w, counters, budget) = (w.clone(), counters.clone(), budget.clone());
        let clients = shared.get(n % shared.len().max(1)).cloned();
        let mux = nats_shared.get(n % nats_shared.len().max(1)).cloned();
        producer_tasks.push(tokio::spawn(async move {
            match (w.target, mux) {
                (Target::Wasmq, _) => wasmq_producer(id, &w, clients, &counters, &budget, deadline).await,
                (Target::Nats, Some(mux)) => nats_shared_producer(&w, &mux, &counters, &budget, deadline).await,
                (Target::Nats, None) => nats_producer(id, &w, &counters, &budget, deadline).await,
            }
        }));
    }
    let mut send_latency = new_histogram();
    for t in producer_tasks {
        send_latency.add(t.await.context("producer task panicked")??)?;
    }
    Ok(send_latency)
}

/// CPU time (user + system) this process has used so far, in microseconds. The load
/// generator shares the machine with the brokers, so its own cost per message is part of
/// reading a run's throughput.
fn process_cpu_us() -> u64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0;
        }
        usage
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// One lazily dialled client per endpoint.
fn connect_all(w: &Workload) -> Result<Vec<MqClient>, ClientError> {
    w.endpoints.iter().map(|e| MqClient::connect_lazy(e, w.timeout)).collect()
}

async fn wasmq_producer(
    id: u32,
    w: &Workload,
    shared: Option<Vec<MqClient>>,
    counters: &Counters,
    budget: &AtomicU64,
    deadline: Instant,
) -> Result<Histogram<u64>> {
    let mut clients = match shared {
        Some(clients) => clients,
        None => connect_all(w)?,
    };
    // Spread producers over the endpoints; followers forward to the leader.
    let mut current = id as usize % clients.len();
    let mut find_leader = w.route == Route::Leader;
    let mut hist = new_histogram();
    loop {
        let claimed = if Instant::now() < deadline { claim_up_to(budget, w.batch) } else { 0 };
        if claimed == 0 {
            break;
        }
        if find_leader {
            match leader_of(&clients).await {
                Some(i) => {
                    current = i;
                    find_leader = false;
                }
                None => {
                    failed(budget, counters, claimed, &"no endpoint reports itself leader").await;
                    continue;
                }
            }
        }
        let bodies: Vec<Vec<u8>> = (0..claimed).map(|_| make_body(w.size_bytes)).collect();
        let msgs: Vec<Outgoing<'_>> = bodies
            .iter()
            .map(|body| Outgoing { topic: &w.topic, body, tag: Some("bench"), keys: &[], queue_id: None })
            .collect();
        let t0 = Instant::now();
        let (acked_len, error) = match clients[current].send_batch(&msgs).await {
            Ok(results) => settle(results, &mut hist, counters, t0, w.size_bytes),
            Err(e) => (0, Some(e)),
        };
        if let Some(e) = error {
            tracing::debug!(producer = id, endpoint = %clients[current].endpoint, error = %e, "send failed");
            let leader_may_have_moved = matches!(
                e,
                ClientError::Rpc(_)
                    | ClientError::Timeout(_)
                    | ClientError::Status { code: Some(Code::HaNotAvailable), .. }
            );
            if w.route == Route::Leader {
                // Not on every error: a broker refusing sends (disk full, say) had 64
                // producers each dialling every member per attempt, 1,250 connections/s.
                find_leader = leader_may_have_moved;
            } else if matches!(e, ClientError::Rpc(_)) {
                current = (current + 1) % clients.len();
            }
            failed(budget, counters, claimed - acked_len, &e).await;
        }
    }
    Ok(hist)
}

/// Index of the endpoint whose broker says it is the Raft leader (a standalone broker
/// counts), asking each in turn over the producer's own connections (as a client asks its
/// routes on the channel it sends on: no connection of its own per probe).
async fn leader_of(clients: &[MqClient]) -> Option<usize> {
    for (i, client) in clients.iter().enumerate() {
        if let Ok(true) = client.takes_sends().await {
            return Some(i);
        }
    }
    None
}

/// A producer on a shared NATS connection (no reconnect: the run reports the errors).
async fn nats_shared_producer(
    w: &Workload,
    mux: &NatsMux,
    counters: &Counters,
    budget: &AtomicU64,
    deadline: Instant,
) -> Result<Histogram<u64>> {
    let subject = w.subject();
    let mut hist = new_histogram();
    loop {
        let claimed = if Instant::now() < deadline { claim_up_to(budget, w.batch) } else { 0 };
        if claimed == 0 {
            break;
        }
        let bodies: Vec<Vec<u8>> = (0..claimed).map(|_| make_body(w.size_bytes)).collect();
        let t0 = Instant::now();
        // All publishes of the batch in flight at once, then every ack (a NATS client's
        // async publish).
        let acks = futures::future::join_all(bodies.iter().map(|body| mux.js_publish(&subject, body))).await;
        let (acked_len, error) = settle(acks, &mut hist, counters, t0, w.size_bytes);
        if let Some(e) = error {
            failed(budget, counters, claimed - acked_len, &format!("{e:#}")).await;
        }
    }
    Ok(hist)
}

async fn nats_producer(
    id: u32,
    w: &Workload,
    counters: &Counters,
    budget: &AtomicU64,
    deadline: Instant,
) -> Result<Histogram<u64>> {
    let subject = w.subject();
    let mut current = id as usize % w.endpoints.len();
    let mut conn: Option<NatsConn> = None;
    let mut hist = new_histogram();
    while Instant::now() < deadline && claim(budget) {
        if conn.is_none() {
            match NatsConn::connect(&w.endpoints[current], w.timeout).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(producer = id, error = %e, "nats connect failed");
                    current = (current + 1) % w.endpoints.len();
                    failed(budget, counters, 1, &format!("connect: {e:#}")).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let body = make_body(w.size_bytes);
        let t0 = Instant::now();
        match c.js_publish(&subject, &body).await {
            Ok(_seq) => {
                acked(&mut hist, counters, t0, body.len());
            }
            Err(e) => {
                tracing::debug!(producer = id, error = %e, "publish failed");
                // The connection state is unknown after an error: start over.
                conn = None;
                failed(budget, counters, 1, &format!("{e:#}")).await;
            }
        }
    }
    Ok(hist)
}

async fn wasmq_consumer(
    id: u32,
    w: &Workload,
    counters: &Counters,
    producers_done: &AtomicBool,
    deadline: Instant,
) -> Result<Histogram<u64>> {
    let mut client = MqClient::connect_lazy(&w.endpoints[id as usize % w.endpoints.len()], w.timeout)?;
    let mut hist = new_histogram();
    let hard_stop = deadline + Duration::from_millis(DRAIN_IDLE_MS * 3);
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        if now >= hard_stop {
            break;
        }
        if producers_done.load(Ordering::Relaxed) {
            let all_in = counters.received.load(Ordering::Relaxed) >= counters.sent.load(Ordering::Relaxed);
            if all_in || now.duration_since(last_progress) >= Duration::from_millis(DRAIN_IDLE_MS) {
                break;
            }
        }
        match client
            .receive(&w.group, &w.topic, CONSUMER_BATCH, Duration::from_secs(30), Duration::from_millis(500))
            .await
        {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => {
                last_progress = Instant::now();
                for m in &batch {
                    if let Some(age) = body_age(&m.body) {
                        record_latency(&mut hist, age);
                    }
                    counters.received_bytes.fetch_add(m.body.len() as u64, Ordering::Relaxed);
                }
                counters.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if let Err(e) = client.ack(&w.group, &w.topic, &batch).await {
                    counters.receive_error(&format!("ack: {e}"));
                    tracing::debug!(consumer = id, error = %e, "ack failed");
                }
            }
            Err(e) => {
                counters.receive_error(&e);
                tracing::debug!(consumer = id, error = %e, "receive failed");
                tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
            }
        }
    }
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wasmq_workload(endpoints: &[&str]) -> Workload {
        Workload {
            target: Target::Wasmq,
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            topic: "BenchTopic".into(),
            group: "BenchGroup".into(),
            size_bytes: 1024,
            count: 1,
            duration: Duration::from_secs(1),
            producers: 1,
            batch: 1,
            consumers: 0,
            timeout: Duration::from_secs(1),
            route: Route::Leader,
            connections: 1,
            label: String::new(),
            progress: false,
            client_threads: 1,
        }
    }

    /// `host:port` is as good as `http://host:port` (the leader lookup used to need the
    /// scheme, and reported "no endpoint reports itself leader" without it); what no
    /// producer could dial is refused before the run, naming the endpoint.
    #[test]
    fn wasmq_endpoints_are_checked_before_the_run() {
        wasmq_workload(&["127.0.0.1:8081", "http://127.0.0.1:8082"]).validate().unwrap();
        for bad in ["127.0.0.1", "https://127.0.0.1:8081", "http://"] {
            let e = wasmq_workload(&["127.0.0.1:8081", bad]).validate().unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("host:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn body_carries_its_send_time() {
        let b = make_body(64);
        assert_eq!(b.len(), 64);
        let age = body_age(&b).unwrap();
        assert!(age < Duration::from_secs(5), "{age:?}");
    }

    #[test]
    fn budget_is_never_overdrawn() {
        let b = AtomicU64::new(2);
        assert!(claim(&b));
        assert!(claim(&b));
        assert!(!claim(&b));
        assert_eq!(b.load(Ordering::Relaxed), 0);
        // Batches take what is left, never more.
        let b = AtomicU64::new(10);
        assert_eq!(claim_up_to(&b, 4), 4);
        assert_eq!(claim_up_to(&b, 4), 4);
        assert_eq!(claim_up_to(&b, 4), 2);
        assert_eq!(claim_up_to(&b, 4), 0);
        assert_eq!(b.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_batch_settles_every_message_and_keeps_the_first_error() {
        let counters = Counters::default();
        let mut hist = new_histogram();
        let results: Vec<Result<(), &str>> = vec![Ok(()), Err("first"), Ok(()), Err("second")];
        let (acked_len, error) = settle(results, &mut hist, &counters, Instant::now(), 100);
        assert_eq!((acked_len, error), (2, Some("first")));
        assert_eq!(counters.sent.load(Ordering::Relaxed), 2);
        assert_eq!(counters.sent_bytes.load(Ordering::Relaxed), 200);
        assert_eq!(hist.len(), 2);
    }
}

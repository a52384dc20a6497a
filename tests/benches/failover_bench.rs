//! Failover time over the real binaries: a 3-node group under a steady, paced send load; N
//! times, kill -9 the leader, time kill → first acknowledged send *started* after the kill,
//! restart the killed node and wait until every node has applied the leader's commit index.
//! Baselines from the same run: the configured election timeout range and the median send
//! latency before the kills. Also replicated vs standalone throughput (1 KiB, 32 producers).
//!
//! `cargo bench -p wasmq-cluster-tests --bench failover_bench [-- --kills N --budget-s S]`
//! (needs `cargo build --release -p wasmq-broker`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::sync::Mutex;
use wasmq_bench::client::{MqClient, Outgoing};
use wasmq_cluster_tests::checker::make_body;
use wasmq_cluster_tests::cluster::{Cluster, ClusterSpec};
use wasmq_cluster_tests::readback::create_topic;
use wasmq_cluster_tests::scenario::{self, LEADER_TIMEOUT, endpoints, others};

const KILLS_DEFAULT: u32 = 10;
const KILLS_MAX: u32 = 100;
/// Whole-run bound: the kill loop stops early once it is spent.
const BUDGET_S_DEFAULT: u64 = 600;
const ELECTION_TIMEOUT_MIN_MS: u64 = 1_000;
const ELECTION_TIMEOUT_MAX_MS: u64 = 2_000;
const QUEUES: u32 = 4;
/// Steady load during the kills: few paced producers (a failover probe, not a stress test).
const STEADY_PRODUCERS: u32 = 4;
const STEADY_PACE_MS: u64 = 5;
const STEADY_BODY_BYTES: usize = 256;
const BASELINE_WINDOW_MS: u64 = 3_000;
/// Acks recorded with their timing; beyond this, counted only (bounds memory).
const ACK_TIMES_MAX: usize = 1_000_000;
const RPC_TIMEOUT_MS: u64 = 2_000;
const RETRY_BACKOFF_MS: u64 = 20;
const FAILOVER_WAIT_MS_MAX: u64 = 60_000;
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
const THROUGHPUT_PRODUCERS: u32 = 32;
const THROUGHPUT_BODY_BYTES: usize = 1024;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);

/// One acknowledged send: when the attempt started and when its ack arrived.
#[derive(Clone, Copy)]
struct AckTime {
    started: Instant,
    acked: Instant,
}

#[derive(Default)]
struct Load {
    acks: Mutex<Vec<AckTime>>,
    acked_count: AtomicU64,
    failed_count: AtomicU64,
    stop: AtomicBool,
}

/// Sends until `stop` or `deadline`; a failed attempt moves to the next endpoint.
async fn producer(
    id: u32,
    endpoints: Vec<String>,
    topic: String,
    body_bytes: usize,
    pace: Duration,
    deadline: Instant,
    load: Arc<Load>,
) {
    let rpc_timeout = Duration::from_millis(RPC_TIMEOUT_MS);
    let mut clients: Vec<MqClient> =
        endpoints.iter().map(|e| MqClient::connect_lazy(e, rpc_timeout).expect("valid endpoint")).collect();
    let mut current = id as usize % clients.len();
    let tag = format!("p{id}");
    let mut seq = 0u64;
    while !load.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let body = make_body(id, seq, 0, body_bytes);
        let keys = [format!("p{id}-s{seq}")];
        let started = Instant::now();
        let sent = clients[current]
            .send(&Outgoing { topic: &topic, body: &body, tag: Some(&tag), keys: &keys, queue_id: None })
            .await;
        match sent {
            Ok(_) => {
                let acked = Instant::now();
                load.acked_count.fetch_add(1, Ordering::Relaxed);
                let mut acks = load.acks.lock().await;
                if acks.len() < ACK_TIMES_MAX {
                    acks.push(AckTime { started, acked });
                }
                drop(acks);
                seq += 1;
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            Err(e) => {
                tracing::debug!(producer = id, error = %e, "send failed");
                load.failed_count.fetch_add(1, Ordering::Relaxed);
                current = (current + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
            }
        }
    }
}

fn spawn(
    n: u32,
    endpoints: &[String],
    topic: &str,
    body_bytes: usize,
    pace: Duration,
    deadline: Instant,
    load: &Arc<Load>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|id| {
            tokio::spawn(producer(id, endpoints.to_vec(), topic.to_string(), body_bytes, pace, deadline, load.clone()))
        })
        .collect()
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Args {
    kills: u32,
    budget: Duration,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { kills: KILLS_DEFAULT, budget: Duration::from_secs(BUDGET_S_DEFAULT) };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kills" => args.kills = it.next().context("--kills N")?.parse().context("--kills N")?,
            "--budget-s" => {
                args.budget = Duration::from_secs(it.next().context("--budget-s S")?.parse().context("--budget-s S")?)
            }
            // `cargo bench` passes `--bench`; other flags are not ours.
            _ => {}
        }
    }
    ensure!((1..=KILLS_MAX).contains(&args.kills), "--kills must be 1..={KILLS_MAX}");
    Ok(args)
}

/// Acks per second of `THROUGHPUT_PRODUCERS` unpaced producers sending to `endpoints`.
async fn throughput(endpoints: &[String], topic: &str) -> Result<(f64, u64)> {
    let load = Arc::new(Load::default());
    let started = Instant::now();
    let handles = spawn(
        THROUGHPUT_PRODUCERS,
        endpoints,
        topic,
        THROUGHPUT_BODY_BYTES,
        Duration::ZERO,
        started + THROUGHPUT_WINDOW,
        &load,
    );
    for h in handles {
        h.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acked = load.acked_count.load(Ordering::Relaxed);
    ensure!(acked > 0, "no send acknowledged in {THROUGHPUT_WINDOW:?}");
    Ok((acked as f64 / elapsed, load.failed_count.load(Ordering::Relaxed)))
}

struct Kill {
    victim: usize,
    failover_ms: f64,
    election_seen_ms: f64,
    catch_up_ms: f64,
}

async fn run(group: &mut Cluster, args: &Args, run_deadline: Instant) -> Result<()> {
    let (leader, term) = group.wait_for_leader(LEADER_TIMEOUT).await?;
    println!("group up: leader n{leader} term {term}");
    create_topic(group, leader, "BenchThroughput", QUEUES).await?;
    create_topic(group, leader, "BenchFailover", QUEUES).await?;

    // Replicated throughput, on the fresh group with no other load; clients start at the leader.
    let mut tp_endpoints = endpoints(group);
    tp_endpoints.rotate_left(leader);
    let (replicated_tps, replicated_failed) = throughput(&tp_endpoints[..1], "BenchThroughput").await?;
    println!(
        "replicated throughput: {replicated_tps:.0} msg/s ({THROUGHPUT_PRODUCERS} producers, {THROUGHPUT_BODY_BYTES} B, {THROUGHPUT_WINDOW:?}, {replicated_failed} failed attempts)"
    );

    // Steady load for the kills.
    let load = Arc::new(Load::default());
    let handles = spawn(
        STEADY_PRODUCERS,
        &endpoints(group),
        "BenchFailover",
        STEADY_BODY_BYTES,
        Duration::from_millis(STEADY_PACE_MS),
        run_deadline,
        &load,
    );
    tokio::time::sleep(Duration::from_millis(BASELINE_WINDOW_MS)).await;
    let baseline: Vec<f64> = load.acks.lock().await.iter().map(|a| (a.acked - a.started).as_secs_f64() * 1e3).collect();
    ensure!(!baseline.is_empty(), "no ack in the {BASELINE_WINDOW_MS} ms baseline window");
    let baseline_median_ms = median_ms(baseline.clone());
    println!(
        "baseline: election timeout {ELECTION_TIMEOUT_MIN_MS}..{ELECTION_TIMEOUT_MAX_MS} ms; send latency median {baseline_median_ms:.2} ms over {} acks ({STEADY_PRODUCERS} producers paced {STEADY_PACE_MS} ms)",
        baseline.len()
    );

    let mut kills: Vec<Kill> = Vec::new();
    for round in 0..args.kills {
        if Instant::now() >= run_deadline {
            println!("budget spent after {round} kills");
            break;
        }
        let (leader, term) = group.wait_for_leader(LEADER_TIMEOUT).await?;
        group.kill9(leader)?;
        let killed_at = Instant::now();

        // First ack of a send started after the kill (an earlier send's ack may have been in flight).
        let failover_ms = loop {
            let first = load.acks.lock().await.iter().filter(|a| a.started >= killed_at).map(|a| a.acked).min();
            if let Some(t) = first {
                break (t - killed_at).as_secs_f64() * 1e3;
            }
            if killed_at.elapsed() >= Duration::from_millis(FAILOVER_WAIT_MS_MAX) {
                bail!("round {round}: no send acknowledged {FAILOVER_WAIT_MS_MAX} ms after killing n{leader}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let (new_leader, new_term) =
            group.wait_for_leader_among(LEADER_TIMEOUT, &others(group.nodes.len(), leader)).await?;
        let election_seen_ms = killed_at.elapsed().as_secs_f64() * 1e3;
        ensure!(new_term > term, "new leader n{new_leader} term {new_term} not above {term}");

        let restart_at = Instant::now();
        group.restart(leader).await?;
        let (l, _) = group.wait_for_leader(LEADER_TIMEOUT).await?;
        let target = group.status(l).await?.committed_index;
        group.wait_applied(target, CATCH_UP_TIMEOUT).await?;
        let catch_up_ms = restart_at.elapsed().as_secs_f64() * 1e3;
        group.check_alive()?;
        println!(
            "kill {round}: n{leader} (term {term}) → first ack {failover_ms:.0} ms; new leader n{new_leader} term {new_term} seen at {election_seen_ms:.0} ms; restart + catch-up to index {target} {catch_up_ms:.0} ms"
        );
        kills.push(Kill { victim: leader, failover_ms, election_seen_ms, catch_up_ms });
    }
    load.stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await?;
    }
    ensure!(!kills.is_empty(), "no kill done within the budget");

    let failover: Vec<f64> = kills.iter().map(|k| k.failover_ms).collect();
    let max = failover.iter().cloned().fold(f64::MIN, f64::max);
    let med = median_ms(failover.clone());
    let election_med = median_ms(kills.iter().map(|k| k.election_seen_ms).collect());
    let catch_up_med = median_ms(kills.iter().map(|k| k.catch_up_ms).collect());
    let victims: Vec<usize> = kills.iter().map(|k| k.victim).collect();

    // Standalone baseline for throughput, in the same run (the group is stopped first so the
    // two measurements do not share the CPU).
    group.shutdown();
    let mut single_spec = ClusterSpec::replicated(1);
    single_spec.cluster_name = "WasmqBenchStandalone".into();
    let mut single = scenario::start(single_spec).await;
    let standalone = async {
        single.wait_for_leader(LEADER_TIMEOUT).await?;
        create_topic(&single, 0, "BenchThroughput", QUEUES).await?;
        throughput(&endpoints(&single), "BenchThroughput").await
    }
    .await;
    single.shutdown();
    let (standalone_tps, standalone_failed) = standalone?;
    println!("standalone throughput: {standalone_tps:.0} msg/s ({standalone_failed} failed attempts)");

    println!("===== failover_bench summary");
    println!(
        "kills: {} (victims {victims:?}), acked {} sends, {} failed attempts under steady load",
        kills.len(),
        load.acked_count.load(Ordering::Relaxed),
        load.failed_count.load(Ordering::Relaxed)
    );
    println!(
        "kill → first ack: median {med:.0} ms, max {max:.0} ms (each: {:?})",
        failover.iter().map(|f| f.round() as u64).collect::<Vec<_>>()
    );
    println!(
        "kill → new leader seen by status polling: median {election_med:.0} ms; restart → caught up: median {catch_up_med:.0} ms"
    );
    println!(
        "baseline: election timeout {ELECTION_TIMEOUT_MIN_MS}..{ELECTION_TIMEOUT_MAX_MS} ms; send latency median {baseline_median_ms:.2} ms → failover median = {:.1}× election timeout max, {:.0}× send latency",
        med / ELECTION_TIMEOUT_MAX_MS as f64,
        med / baseline_median_ms
    );
    println!(
        "throughput 1 KiB × {THROUGHPUT_PRODUCERS} producers: replicated(3) {replicated_tps:.0} msg/s, standalone {standalone_tps:.0} msg/s, ratio {:.2}",
        replicated_tps / standalone_tps
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
    runtime.block_on(async {
        let run_deadline = Instant::now() + args.budget;
        let mut spec = ClusterSpec::replicated(3);
        spec.broker_extra_toml = vec![
            format!("dLegerElectionTimeoutMinMs = {ELECTION_TIMEOUT_MIN_MS}"),
            format!("dLegerElectionTimeoutMaxMs = {ELECTION_TIMEOUT_MAX_MS}"),
        ];
        let mut group = scenario::start(spec).await;
        let result = run(&mut group, &args, run_deadline).await;
        if result.is_err() {
            group.dump_logs(20);
        }
        group.shutdown();
        result
    })
}

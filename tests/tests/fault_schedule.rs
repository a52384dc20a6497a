//! A randomised fault schedule under continuous sends and receives, on a 3-node group whose
//! Raft links go through fault-injecting proxies.
//!
//! Faults, one at a time, each held for a random while and then repaired: kill -9 + restart,
//! isolate a node, split the group, cut one direction of one link, delay links, SIGSTOP +
//! SIGCONT, a full disk (no file of the node can grow; see `Cluster::disk_full`). Two members
//! run the Raft driver on their runtime's one worker, the third on a thread of its own. A node whose
//! store needs new space while its disk is full fail-stops (exits with the fail-stop code) and
//! is started again once the space is back, as a supervisor would; any other exit fails the
//! test. Segments are the smallest allowed (1 MiB) and a full disk lasts longer than other
//! faults, so that the store usually needs new space while it lasts. Checked throughout and at the end: at most one leader per term (every node's
//! status and the name server's table), consumer offsets never go backwards, the consumer
//! only gets bodies that were sent; at the end every acknowledged message is on every replica
//! exactly once per queue, in order, and the replicas are identical.
//!
//! Bounded: `WASMQ_FAULT_SECS` (default 120) of faults, then at most a few minutes of
//! catch-up. `WASMQ_FAULT_SEED` replays a schedule (the seed is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng, rngs::StdRng};
use wasmq_cluster_tests::cluster::{Cluster, ClusterSpec};
use wasmq_cluster_tests::load::{LoadState, ProducerSpec, spawn_producers};
use wasmq_cluster_tests::monitor::{ConsumeStats, Observations, run_consumer};
use wasmq_cluster_tests::proxy::LinkMode;
use wasmq_cluster_tests::readback::create_topic;
use wasmq_cluster_tests::scenario::{self, LEADER_TIMEOUT, endpoints};

const TOPIC: &str = "FaultTopic";
const GROUP: &str = "FaultGroup";
const PRODUCERS: u32 = 4;
const CONSUMERS: usize = 2;
const QUEUES: u32 = 4;
const FAULT_SECS_DEFAULT: u64 = 120;
/// Upper bound on the schedule however it is configured (a soak is for a person to start).
const FAULT_SECS_MAX: u64 = 6 * 3600;
const OBSERVE_EVERY: Duration = Duration::from_millis(300);
/// The smallest segment a broker accepts: at this load one fills in about 8 s.
const SEGMENT_BYTES: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill9 { node: usize },
    Isolate { node: usize },
    Split { alone: usize },
    OneWay { from: usize, to: usize },
    Delay { node: usize, delay_ms: u64 },
    Pause { node: usize },
    DiskFull { node: usize },
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Kill9 { .. } => "kill9+restart",
            Fault::Isolate { .. } => "isolate",
            Fault::Split { .. } => "partition",
            Fault::OneWay { .. } => "one-way-cut",
            Fault::Delay { .. } => "delay",
            Fault::Pause { .. } => "sigstop+sigcont",
            Fault::DiskFull { .. } => "disk-full",
        }
    }

    fn pick(rng: &mut StdRng, leader: Option<usize>) -> Fault {
        // Half the faults aim at the leader: that is where the interesting transitions are.
        let node = match leader {
            Some(l) if rng.random_bool(0.5) => l,
            _ => rng.random_range(0..3),
        };
        match rng.random_range(0..7) {
            0 => Fault::Kill9 { node },
            1 => Fault::Isolate { node },
            2 => Fault::Split { alone: node },
            3 => Fault::OneWay { from: node, to: (node + rng.random_range(1..3)) % 3 },
            4 => Fault::Delay { node, delay_ms: rng.random_range(20..400) },
            5 => Fault::Pause { node },
            _ => Fault::DiskFull { node },
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be an integer")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomised_fault_schedule() {
    let seed = env_u64("WASMQ_FAULT_SEED").unwrap_or_else(|| rand::rng().random());
    let fault_secs = env_u64("WASMQ_FAULT_SECS").unwrap_or(FAULT_SECS_DEFAULT).clamp(5, FAULT_SECS_MAX);
    eprintln!("fault schedule: seed {seed} (replay: WASMQ_FAULT_SEED={seed}), {fault_secs}s of faults");
    // Both places of the Raft driver under the same faults: n0 and n1 run it on their one
    // runtime worker (`serverWorkerThreads = 1`, as conf/dledger ships), n2 on its own thread.
    let spec = ClusterSpec::replicated(3)
        .proxied()
        .segment_bytes(SEGMENT_BYTES)
        .member_toml(0, "serverWorkerThreads = 1")
        .member_toml(1, "serverWorkerThreads = 1");
    let mut cluster = scenario::start(spec).await;
    let result = run(&mut cluster, seed, Duration::from_secs(fault_secs)).await;
    cluster.finish(result);
}

/// Observes until `until`, every OBSERVE_EVERY.
async fn observe_until(cluster: &Cluster, obs: &mut Observations, until: Instant) {
    while Instant::now() < until {
        obs.observe(cluster, GROUP, TOPIC).await;
        tokio::time::sleep(OBSERVE_EVERY.min(until.saturating_duration_since(Instant::now()))).await;
    }
}

async fn apply(cluster: &mut Cluster, fault: Fault) -> Result<()> {
    let mesh = cluster.mesh.as_ref().expect("proxied cluster");
    match fault {
        Fault::Kill9 { node } => cluster.kill9(node)?,
        Fault::Isolate { node } => mesh.isolate(node),
        Fault::Split { alone } => {
            let sides: Vec<u8> = (0..3).map(|i| u8::from(i == alone)).collect();
            mesh.partition(&sides);
        }
        Fault::OneWay { from, to } => mesh.set_link(from, to, LinkMode::Block),
        Fault::Delay { node, delay_ms } => {
            for other in (0..3).filter(|&o| o != node) {
                mesh.set_link(node, other, LinkMode::Delay { delay_ms });
                mesh.set_link(other, node, LinkMode::Delay { delay_ms });
            }
        }
        Fault::Pause { node } => cluster.sigstop(node)?,
        Fault::DiskFull { node } => cluster.disk_full(node)?,
    }
    Ok(())
}

async fn repair(cluster: &mut Cluster, fault: Fault) -> Result<()> {
    match fault {
        Fault::Kill9 { node } => cluster.restart(node).await?,
        Fault::Pause { node } => cluster.sigcont(node)?,
        // A node that fail-stopped meanwhile is started by `restart_fail_stopped`.
        Fault::DiskFull { node } => cluster.disk_freed(node)?,
        Fault::Isolate { .. } | Fault::Split { .. } | Fault::OneWay { .. } | Fault::Delay { .. } => {
            cluster.mesh.as_ref().expect("proxied cluster").heal_all();
        }
    }
    Ok(())
}

/// Starts again the nodes of `disk_full_nodes` that fail-stopped (they may exit a little after
/// the space is back: the broker notices within 250 ms, then stops gracefully). Returns how
/// many it started.
async fn restart_fail_stopped(cluster: &mut Cluster, disk_full_nodes: &BTreeSet<usize>) -> Result<u32> {
    let mut restarted = 0;
    for &i in disk_full_nodes {
        if cluster.reap_fail_stop(i)? {
            eprintln!("           node {i} fail-stopped on its full disk; starting it again");
            cluster.restart(i).await?;
            restarted += 1;
        }
    }
    Ok(restarted)
}

async fn run(cluster: &mut Cluster, seed: u64, fault_time: Duration) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (leader, _) = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    create_topic(cluster, leader, TOPIC, QUEUES).await?;

    let start = Instant::now();
    let faults_end = start + fault_time;
    let state = Arc::new(LoadState::default());
    let spec = ProducerSpec {
        topic: TOPIC.into(),
        endpoints: endpoints(cluster),
        messages: 1_000_000,
        size_bytes: 300,
        deadline: faults_end + Duration::from_secs(5),
        rpc_timeout: Duration::from_secs(3),
        pace: Duration::from_millis(5),
    };
    let producers = spawn_producers(PRODUCERS, &spec, &state);
    let consume_stats = Arc::new(ConsumeStats::default());
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            tokio::spawn(run_consumer(
                endpoints(cluster),
                TOPIC.into(),
                GROUP.into(),
                state.clone(),
                consume_stats.clone(),
                faults_end + Duration::from_secs(10),
            ))
        })
        .collect();

    let mut obs = Observations::default();
    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut leader_hint = Some(leader);
    let mut disk_full_nodes = BTreeSet::new();
    let mut fail_stops = 0;
    while Instant::now() < faults_end {
        let fault = Fault::pick(&mut rng, leader_hint);
        let hold = match fault {
            // Long enough to span a segment roll more often than not.
            Fault::DiskFull { .. } => Duration::from_millis(rng.random_range(4_000..10_000)),
            _ => Duration::from_millis(rng.random_range(500..5_000)),
        };
        let settle = Duration::from_millis(rng.random_range(500..3_000));
        eprintln!(
            "[{:>6.1}s] fault {fault:?} for {:.1}s (acked so far {})",
            start.elapsed().as_secs_f64(),
            hold.as_secs_f64(),
            state.acked_count.load(Ordering::Relaxed)
        );
        apply(cluster, fault).await?;
        *faults.entry(fault.kind()).or_default() += 1;
        if let Fault::DiskFull { node } = fault {
            disk_full_nodes.insert(node);
        }
        observe_until(cluster, &mut obs, Instant::now() + hold).await;
        repair(cluster, fault).await?;
        observe_until(cluster, &mut obs, Instant::now() + settle).await;
        fail_stops += restart_fail_stopped(cluster, &disk_full_nodes).await?;
        cluster.check_alive()?;
        leader_hint = cluster
            .statuses()
            .await
            .into_iter()
            .find(|s| s.role == wasmq_proto::wasmq::admin::Role::Leader)
            .map(|s| s.index);
    }

    // Repair everything, let the load finish, and check.
    cluster.mesh.as_ref().expect("proxied").heal_all();
    fail_stops += restart_fail_stopped(cluster, &disk_full_nodes).await?;
    for i in 0..3 {
        if cluster.is_stopped(i) {
            cluster.sigcont(i)?;
        }
        if !cluster.is_running(i) {
            cluster.restart(i).await?;
        }
    }
    for p in producers {
        p.await?;
    }
    state.stop.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await?;
    }
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let report = scenario::check_replicas_report(cluster, &state, TOPIC, true).await?;
    obs.observe(cluster, GROUP, TOPIC).await;
    obs.check_final_offsets(cluster, GROUP, TOPIC).await;

    let log = state.log.lock().await;
    let strays = consume_stats.strays.load(Ordering::Relaxed);
    eprintln!("===== fault schedule summary (seed {seed})");
    eprintln!(
        "operations: send attempts {} acked {} failed {} abandoned {}; received {} acked {} receive errors {}",
        log.attempted.len(),
        log.acked.len(),
        log.failed_attempts,
        log.abandoned,
        consume_stats.received.load(Ordering::Relaxed),
        consume_stats.acked.load(Ordering::Relaxed),
        consume_stats.errors.load(Ordering::Relaxed),
    );
    eprintln!(
        "faults: {faults:?} ({} total); fail-stops on a full disk, restarted: {fail_stops}",
        faults.values().sum::<u32>()
    );
    eprintln!("{}", obs.summary());
    eprintln!(
        "violations: checker {} + monitor {} + consumer strays {strays} = {}",
        report.violation_count,
        obs.violation_count,
        report.violation_count as u64 + obs.violation_count + strays
    );
    drop(log);
    report.into_result()?;
    ensure!(obs.violation_count == 0, "monitor violations: {:#?}", obs.violations);
    ensure!(strays == 0, "the consumer received {strays} bodies nobody sent");
    ensure!(obs.leaders_by_term.len() >= 2, "no leader change happened: the faults did not bite");
    ensure!(consume_stats.received.load(Ordering::Relaxed) > 0, "the consumer received nothing");
    Ok(())
}

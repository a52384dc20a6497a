//! Randomized simulation over many seeds. A failure prints the seed; replay one seed with
//! `WASMQ_SIM_SEED=<seed> cargo test --release -p wasmq-raft --test sim_chaos`.
//! `WASMQ_SIM_SEEDS=<n>` changes how many seeds run (default 200).

use std::panic::{AssertUnwindSafe, catch_unwind};

use wasmq_raft::sim::{ChaosConfig, ChaosReport, run_chaos};

fn config_for(seed: u64) -> ChaosConfig {
    // Every fourth seed runs a 5-node group.
    ChaosConfig { node_count: if seed % 4 == 3 { 5 } else { 3 }, ..ChaosConfig::default() }
}

fn run_seed(seed: u64) -> ChaosReport {
    match catch_unwind(AssertUnwindSafe(|| run_chaos(seed, &config_for(seed)))) {
        Ok(r) => r,
        Err(e) => {
            let why = wasmq_panic::message(&*e);
            panic!(
                "simulation failed for seed {seed}: {why}\nreplay: WASMQ_SIM_SEED={seed} cargo test --release -p wasmq-raft --test sim_chaos"
            );
        }
    }
}

#[test]
fn chaos_many_seeds() {
    let seeds: Vec<u64> = match std::env::var("WASMQ_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("WASMQ_SIM_SEED must be a u64")],
        Err(_) => {
            let n: u64 = std::env::var("WASMQ_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
            (0..n).collect()
        }
    };
    let (mut committed, mut acked, mut elections, mut recovery_max) = (0u64, 0usize, 0u64, 0u64);
    for &seed in &seeds {
        let r = run_seed(seed);
        // Liveness during chaos as well as after: the run must have made progress.
        assert!(r.committed > 0, "seed {seed}: nothing committed in the whole run");
        committed += r.committed;
        acked += r.acked;
        elections += r.elections;
        recovery_max = recovery_max.max(r.recovery_ms);
    }
    eprintln!(
        "{} seeds: {committed} entries committed, {acked} proposals acknowledged, {elections} elections, slowest recovery after heal {recovery_max} ms",
        seeds.len()
    );
    assert!(acked > 0, "no proposal was ever acknowledged");
}

#[test]
fn same_seed_same_run() {
    let a = run_chaos(7, &config_for(7));
    let b = run_chaos(7, &config_for(7));
    assert_eq!((a.committed, a.acked, a.elections, a.messages), (b.committed, b.acked, b.elections, b.messages));
}

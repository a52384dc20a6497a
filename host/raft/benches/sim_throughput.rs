//! Commit throughput of a simulated 3-node group vs. proposal batch size.
//!
//! The leader keeps proposing batches of `batch` entries (256 bytes each) while fewer than
//! 64 proposals are uncommitted; the network delays messages 1–5 ms and each node fsyncs
//! every 2 ms. Reported per batch size, as ratios against batch size 1 measured in the same
//! run:
//! - simulated throughput (entries committed per simulated second): what batching buys
//!   against latency-bound replication;
//! - CPU throughput of the Raft core plus simulator (entries committed per wall-clock
//!   second).
//!
//! `cargo bench -p wasmq-raft --bench sim_throughput`

use std::time::Instant;

use wasmq_raft::sim::{NetConfig, ProposalOutcome, Sim, SimConfig};

const SIMULATED_MS: u64 = 5_000;
const ENTRY_BYTES: usize = 256;
const IN_FLIGHT_PROPOSALS_MAX: usize = 64;

struct Run {
    committed_entries: u64,
    wall_s: f64,
}

fn run(batch: usize) -> Run {
    let mut cfg = SimConfig::new(3, 42);
    cfg.net = NetConfig { delay_ms_min: 1, delay_ms_max: 5, ..NetConfig::default() };
    cfg.flush_interval_ms = 2;
    let mut sim = Sim::new(cfg);
    assert!(sim.run_until(5_000, |s| s.leader().is_some()), "no leader");
    let leader = sim.leader().unwrap();
    let start_commit = sim.node(leader).unwrap().commit_index();
    let payload = bytes::Bytes::from(vec![0xAB; ENTRY_BYTES]);
    let started = Instant::now();
    let mut in_flight = Vec::new();
    for _ in 0..SIMULATED_MS {
        in_flight.retain(|p| sim.outcome(p) == ProposalOutcome::Pending);
        while in_flight.len() < IN_FLIGHT_PROPOSALS_MAX {
            match sim.propose_data(leader, vec![payload.clone(); batch]) {
                Ok(p) => in_flight.push(p),
                Err(e) => panic!("propose: {e}"),
            }
        }
        sim.step();
    }
    let wall_s = started.elapsed().as_secs_f64();
    let committed_entries = sim.node(leader).unwrap().commit_index() - start_commit;
    Run { committed_entries, wall_s }
}

fn main() {
    let sizes = [1usize, 4, 16, 64, 256];
    let runs: Vec<(usize, Run)> = sizes.iter().map(|&b| (b, run(b))).collect();
    let base = &runs[0].1;
    let base_sim = base.committed_entries as f64 / (SIMULATED_MS as f64 / 1000.0);
    let base_cpu = base.committed_entries as f64 / base.wall_s;
    println!("batch  entries/sim-s   x(batch=1)   entries/wall-s   x(batch=1)");
    for (batch, r) in &runs {
        let sim_rate = r.committed_entries as f64 / (SIMULATED_MS as f64 / 1000.0);
        let cpu_rate = r.committed_entries as f64 / r.wall_s;
        println!(
            "{batch:>5}  {sim_rate:>13.0}   {:>10.2}   {cpu_rate:>14.0}   {:>10.2}",
            sim_rate / base_sim,
            cpu_rate / base_cpu
        );
    }
}

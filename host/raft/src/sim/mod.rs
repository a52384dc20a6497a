//! Seeded deterministic simulation of a Raft group.
//!
//! One [`Sim`] owns N [`RaftNode`]s over [`MemLog`]s, a simulated millisecond clock, a
//! lossy reordering network with partitions, and per-node disks: a crash keeps the persisted
//! hard state and the *flushed* prefix of the log only. After every simulated millisecond
//! the [`Checker`] verifies election safety, leader completeness and state machine safety;
//! [`run_chaos`] adds random faults and client proposals, then heals everything and checks
//! liveness and the end-to-end properties. Same seed, same run: failures replay with
//! `WASMQ_SIM_SEED=<seed>`.

mod checker;
mod network;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use checker::Checker;
pub use network::NetConfig;
use network::Network;

use crate::{
    HardState, MemLog, NodeId, Proposal, ProposeError, RaftConfig, RaftError, RaftLog, RaftNode, Ready, Role,
    TransferError,
};

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub node_count: usize,
    pub seed: u64,
    pub raft: RaftConfig,
    pub net: NetConfig,
    /// Each node's runtime ticks the node this often.
    pub tick_interval_ms: u64,
    /// Each node's group fsync runs this often (so entries stay unflushed for a while).
    pub flush_interval_ms: u64,
}

impl SimConfig {
    pub fn new(node_count: usize, seed: u64) -> Self {
        SimConfig {
            node_count,
            seed,
            raft: RaftConfig::default(),
            net: NetConfig::default(),
            tick_interval_ms: 5,
            flush_interval_ms: 4,
        }
    }
}

struct SimNode {
    raft: Option<RaftNode<MemLog>>,
    /// The disk while crashed.
    disk: Option<MemLog>,
    hard_state: HardState,
    incarnation: u64,
    next_tick_ms: u64,
    next_flush_ms: u64,
}

struct Pending {
    node: NodeId,
    incarnation: u64,
    proposal: Proposal,
    data: Vec<Bytes>,
}

pub struct Sim {
    config: SimConfig,
    now_ms: u64,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    net: Network,
    checker: Checker,
    pending: Vec<Pending>,
    next_payload: u64,
    steps_since_matching_check: u64,
}

/// Outcome of a proposal the simulation tracked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalOutcome {
    Pending,
    Acked,
    /// Replaced by another leader's entries, or the proposer crashed (outcome unknown to a
    /// client; the checker still verifies it never commits twice).
    Abandoned,
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        assert!(config.node_count >= 1 && config.node_count <= 9);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let voters: Vec<NodeId> = (1..=config.node_count as u64).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let raft_config = RaftConfig { rng_seed: rng.random(), ..config.raft.clone() };
                let raft = RaftNode::new(id, &voters, raft_config, HardState::default(), MemLog::new(), 0)
                    .expect("valid simulation config");
                SimNode {
                    raft: Some(raft),
                    disk: None,
                    hard_state: HardState::default(),
                    incarnation: 0,
                    next_tick_ms: rng.random_range(0..config.tick_interval_ms),
                    next_flush_ms: rng.random_range(0..config.flush_interval_ms.max(1)),
                }
            })
            .collect();
        Sim {
            net: Network::new(config.net.clone(), config.node_count),
            checker: Checker::new(config.node_count),
            config,
            now_ms: 0,
            rng,
            nodes,
            pending: Vec::new(),
            next_payload: 0,
            steps_since_matching_check: 0,
        }
    }

    pub fn seed(&self) -> u64 {
        self.config.seed
    }
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }
    pub fn node_ids(&self) -> Vec<NodeId> {
        (1..=self.nodes.len() as u64).collect()
    }
    pub fn node(&self, id: NodeId) -> Option<&RaftNode<MemLog>> {
        self.nodes[id as usize - 1].raft.as_ref()
    }
    pub fn is_alive(&self, id: NodeId) -> bool {
        self.node(id).is_some()
    }
    pub fn checker(&self) -> &Checker {
        &self.checker
    }
    pub fn messages_sent(&self) -> u64 {
        self.net.sent
    }
    pub fn messages_in_flight(&self) -> usize {
        self.net.in_flight()
    }
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.node_ids()
            .into_iter()
            .filter_map(|id| self.node(id).filter(|n| n.role() == Role::Leader).map(|n| (n.term(), id)))
            .max()
            .map(|(_, id)| id)
    }

    pub fn max_term(&self) -> u64 {
        self.node_ids().into_iter().filter_map(|id| self.node(id).map(|n| n.term())).max().unwrap_or(0)
    }

    /// Advances one millisecond: deliveries, ticks, flushes, then checks.
    pub fn step(&mut self) {
        self.now_ms += 1;
        let now = self.now_ms;
        while let Some((from, to, msg)) = self.net.pop_due(now) {
            if let Some(raft) = self.nodes[to as usize - 1].raft.as_mut() {
                raft.step(from, msg).expect("MemLog does not fail");
                self.drain(to);
            }
        }
        for id in self.node_ids() {
            let tick_ms = self.config.tick_interval_ms;
            let flush_ms = self.config.flush_interval_ms;
            let n = &mut self.nodes[id as usize - 1];
            let Some(raft) = n.raft.as_mut() else { continue };
            if now >= n.next_tick_ms {
                n.next_tick_ms = now + tick_ms;
                raft.tick(now).expect("MemLog does not fail");
            }
            if now >= n.next_flush_ms {
                n.next_flush_ms = now + flush_ms;
                let flushed = raft.log_mut().flush();
                raft.on_flushed(flushed).expect("MemLog does not fail");
            }
            self.drain(id);
        }
        for id in self.node_ids() {
            if let Some(raft) = self.nodes[id as usize - 1].raft.as_ref() {
                self.checker.observe(id, raft);
            }
        }
        self.resolve_pending();
        self.steps_since_matching_check += 1;
        if self.steps_since_matching_check >= 1000 {
            self.steps_since_matching_check = 0;
            self.check_log_matching();
        }
    }

    /// Persists the node's hard state, then puts its messages on the network.
    fn drain(&mut self, id: NodeId) {
        let n = &mut self.nodes[id as usize - 1];
        let Some(raft) = n.raft.as_mut() else { return };
        let Ready { hard_state, messages } = raft.take_ready();
        if let Some(hs) = hard_state {
            assert!(hs.term >= n.hard_state.term, "persisted term went backwards");
            n.hard_state = hs;
        }
        for (to, msg) in messages {
            self.net.send(&mut self.rng, self.now_ms, id, to, msg);
        }
    }

    pub fn run_for(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step();
        }
    }

    /// Steps until `done` holds (checked after each millisecond) or `ms_max` elapse.
    pub fn run_until(&mut self, ms_max: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..ms_max {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    pub fn crash(&mut self, id: NodeId) {
        let n = &mut self.nodes[id as usize - 1];
        if let Some(raft) = n.raft.take() {
            let mut log = raft.into_log();
            log.crash();
            n.disk = Some(log);
        }
    }

    pub fn restart(&mut self, id: NodeId) {
        let voters = self.node_ids();
        let seed = self.rng.random();
        let n = &mut self.nodes[id as usize - 1];
        let Some(log) = n.disk.take() else { return };
        let config = RaftConfig { rng_seed: seed, ..self.config.raft.clone() };
        let raft = RaftNode::new(id, &voters, config, n.hard_state, log, self.now_ms).expect("valid config");
        self.checker.on_restart(id, raft.commit_index());
        n.raft = Some(raft);
        n.incarnation += 1;
        self.drain(id);
    }

    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.net.partition(groups);
    }
    pub fn isolate(&mut self, id: NodeId) {
        self.net.partition(&[&[id]]);
    }
    pub fn heal(&mut self) {
        self.net.heal();
    }
    pub fn set_net(&mut self, net: NetConfig) {
        self.net.config = net;
    }
    pub fn net_config(&self) -> &NetConfig {
        &self.net.config
    }

    /// Proposes `count` fresh unique payloads at node `id` and tracks the outcome.
    pub fn propose(&mut self, id: NodeId, count: usize) -> Result<Proposal, ProposeError> {
        let data: Vec<Bytes> = (0..count)
            .map(|_| {
                self.next_payload += 1;
                Bytes::from(format!("p{}", self.next_payload))
            })
            .collect();
        self.propose_data(id, data)
    }

    pub fn propose_data(&mut self, id: NodeId, data: Vec<Bytes>) -> Result<Proposal, ProposeError> {
        let n = &mut self.nodes[id as usize - 1];
        let Some(raft) = n.raft.as_mut() else {
            return Err(ProposeError::NotLeader { leader_hint: None });
        };
        let proposal = match raft.propose(&data) {
            Ok(p) => p,
            Err(RaftError::Propose(e)) => return Err(e),
            Err(RaftError::Log(e)) => panic!("MemLog failed: {e}"),
        };
        self.pending.push(Pending { node: id, incarnation: n.incarnation, proposal: proposal.clone(), data });
        self.drain(id);
        Ok(proposal)
    }

    pub fn transfer_leadership(&mut self, leader: NodeId, to: NodeId) -> Result<(), TransferError> {
        let raft =
            self.nodes[leader as usize - 1].raft.as_mut().ok_or(TransferError::NotLeader { leader_hint: None })?;
        raft.transfer_leadership(to)?;
        self.drain(leader);
        Ok(())
    }

    /// Outcome of a proposal made through [`Sim::propose`], by its first index.
    pub fn outcome(&self, proposal: &Proposal) -> ProposalOutcome {
        if self.pending.iter().any(|p| p.proposal == *proposal) {
            return ProposalOutcome::Pending;
        }
        let idx = proposal.range.start;
        match self.checker.committed_entry(idx) {
            Some((t, _)) if *t == proposal.term => ProposalOutcome::Acked,
            _ => ProposalOutcome::Abandoned,
        }
    }

    /// A client sees its proposal acknowledged when the node it proposed to (same
    /// incarnation) has committed the entries and still holds them in the proposal's term.
    fn resolve_pending(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let n = &self.nodes[p.node as usize - 1];
            let verdict = match n.raft.as_ref() {
                Some(raft) if n.incarnation == p.incarnation => {
                    let last = p.proposal.range.end - 1;
                    let terms: Vec<Option<u64>> =
                        p.proposal.range.clone().map(|ix| raft.log().term_at(ix).expect("MemLog")).collect();
                    if terms.iter().any(|t| *t != Some(p.proposal.term)) {
                        Some(false)
                    } else if raft.commit_index() >= last {
                        Some(true)
                    } else {
                        None
                    }
                }
                _ => Some(false),
            };
            match verdict {
                None => i += 1,
                Some(acked) => {
                    let p = self.pending.swap_remove(i);
                    if acked {
                        for (ix, data) in p.proposal.range.clone().zip(p.data) {
                            self.checker.on_ack(ix, data);
                        }
                    }
                }
            }
        }
    }

    fn logs(&self) -> Vec<(NodeId, &MemLog)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let log = n.raft.as_ref().map(|r| r.log()).or(n.disk.as_ref()).expect("node has a log");
                (i as u64 + 1, log)
            })
            .collect()
    }

    pub fn check_log_matching(&self) {
        self.checker.check_log_matching(&self.logs());
    }

    /// End-of-run checks; every node must be alive and caught up.
    pub fn check_final(&self) {
        self.check_log_matching();
        let commits: Vec<(NodeId, u64)> =
            self.node_ids().into_iter().map(|id| (id, self.node(id).expect("alive").commit_index())).collect();
        self.checker.check_final(&self.logs(), &commits);
    }
}

/// Knobs of a randomized run.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub node_count: usize,
    /// Simulated time with faults and client load.
    pub chaos_ms: u64,
    /// Bound on simulated time after healing until a leader commits a marker everywhere.
    pub heal_ms_max: u64,
    /// Mean simulated time between two faults.
    pub fault_interval_ms: u64,
    /// Group fsync period is drawn per run from `1..=flush_interval_ms_max` (longer periods
    /// leave more acknowledged-but-unflushed data for crashes to destroy).
    pub flush_interval_ms_max: u64,
    /// Probability per millisecond that a client proposes.
    pub propose_probability: f64,
    pub net: NetConfig,
    pub raft: RaftConfig,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            node_count: 3,
            chaos_ms: 12_000,
            heal_ms_max: 20_000,
            fault_interval_ms: 500,
            flush_interval_ms_max: 40,
            propose_probability: 0.05,
            net: NetConfig {
                delay_ms_min: 1,
                delay_ms_max: 15,
                drop_probability: 0.02,
                duplicate_probability: 0.02,
                ..NetConfig::default()
            },
            raft: RaftConfig::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChaosReport {
    pub seed: u64,
    pub committed: u64,
    pub acked: usize,
    pub elections: u64,
    pub max_term: u64,
    pub messages: u64,
    /// Simulated time from heal to the marker committed everywhere.
    pub recovery_ms: u64,
}

/// One randomized run: faults (crash, restart, partition, isolate leader, lossy network,
/// leader transfer) under client load, then heal and require liveness; panics on any
/// violated property.
pub fn run_chaos(seed: u64, cfg: &ChaosConfig) -> ChaosReport {
    let mut sim_cfg = SimConfig::new(cfg.node_count, seed);
    sim_cfg.net = cfg.net.clone();
    sim_cfg.raft = cfg.raft.clone();
    sim_cfg.flush_interval_ms =
        ChaCha8Rng::seed_from_u64(seed ^ 0xF1A5).random_range(1..=cfg.flush_interval_ms_max.max(1));
    let mut sim = Sim::new(sim_cfg);
    let ids = sim.node_ids();
    let n = ids.len();
    let fault_p = 1.0 / cfg.fault_interval_ms.max(1) as f64;
    for _ in 0..cfg.chaos_ms {
        if sim.rng.random_bool(fault_p) {
            let kind = sim.rng.random_range(0..9u32);
            let pick = ids[sim.rng.random_range(0..n)];
            match kind {
                0 => sim.crash(pick),
                1 => {
                    // Power failure: every node loses its unflushed entries at once.
                    for &id in &ids {
                        sim.crash(id);
                    }
                }
                2..=4 => {
                    let crashed: Vec<NodeId> = ids.iter().copied().filter(|&i| !sim.is_alive(i)).collect();
                    if !crashed.is_empty() {
                        let c = crashed[sim.rng.random_range(0..crashed.len())];
                        sim.restart(c);
                    }
                }
                5 => {
                    let groups: Vec<u32> = (0..n).map(|_| sim.rng.random_range(0..2)).collect();
                    sim.net.set_groups(groups);
                }
                6 => sim.heal(),
                7 => {
                    if let Some(l) = sim.leader() {
                        sim.isolate(l);
                    }
                }
                _ => {
                    if let Some(l) = sim.leader() {
                        let _ = sim.transfer_leadership(l, pick);
                    }
                }
            }
        }
        if sim.rng.random_bool(cfg.propose_probability) {
            let target = match sim.leader() {
                Some(l) if sim.rng.random_bool(0.8) => l,
                _ => ids[sim.rng.random_range(0..n)],
            };
            let count = sim.rng.random_range(1..=3);
            let _ = sim.propose(target, count);
        }
        sim.step();
    }
    // Heal: everyone up, network reliable apart from delays; a leader must emerge and commit
    // a marker on every node within the bound.
    sim.heal();
    sim.set_net(NetConfig { drop_probability: 0.0, duplicate_probability: 0.0, ..cfg.net.clone() });
    for id in ids.clone() {
        sim.restart(id);
    }
    let healed_at = sim.now_ms();
    let mut marker: Option<Proposal> = None;
    let mut done = false;
    for _ in 0..cfg.heal_ms_max {
        if marker.as_ref().is_none_or(|m| sim.outcome(m) == ProposalOutcome::Abandoned)
            && let Some(l) = sim.leader()
        {
            marker = sim.propose(l, 1).ok();
        }
        if let Some(m) = &marker
            && sim.outcome(m) == ProposalOutcome::Acked
            && ids.iter().all(|&id| sim.node(id).expect("alive").commit_index() >= m.range.end - 1)
        {
            done = true;
            break;
        }
        sim.step();
    }
    assert!(
        done,
        "no liveness within {} ms after heal (leader: {:?}, max term {})",
        cfg.heal_ms_max,
        sim.leader(),
        sim.max_term()
    );
    let recovery_ms = sim.now_ms() - healed_at;
    sim.check_final();
    ChaosReport {
        seed,
        committed: sim.checker.committed_len(),
        acked: sim.checker.acked_len(),
        elections: sim.checker.elections,
        max_term: sim.max_term(),
        messages: sim.messages_sent(),
        recovery_ms,
    }
}

//! Three Raft replicators on 127.0.0.1 in one process: election, replication, follower
//! redirection, leader loss (dropped without shutdown), re-election without losing
//! acknowledged entries, leadership transfer, and a restarted member catching up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmq_broker::replication::raft_group::{DriverPlacement, RaftGroupConfig, RaftReplicator};
use wasmq_broker::replication::{CommittedRange, ReplicationError, Replicator, Role};
use wasmq_raft::RaftConfig;
use wasmq_storage::commitlog::{CommitLog, CommitLogConfig, FlushMode};

mod common;
use common::free_ports;

const IDS: [&str; 3] = ["n0", "n1", "n2"];

fn open_log(dir: &std::path::Path) -> Arc<CommitLog> {
    let mut cfg = CommitLogConfig::small(dir.join("log"));
    cfg.flush_mode = FlushMode::Sync;
    Arc::new(CommitLog::open(cfg).unwrap().0)
}

/// Long enough that a leader change by election timeout is told apart from a handover even
/// on a loaded 2-core CI machine (a 300 ms timeout made a slow handover look like none).
const ELECTION_TIMEOUT_MIN_MS: u64 = 1_000;
/// A handover (TimeoutNow) must beat any election timeout (≥ min − one heartbeat).
const HANDOVER_MS_MAX: u64 = ELECTION_TIMEOUT_MIN_MS - 100;

fn group_config(ports: &[u16], me: usize, dir: &std::path::Path, placement: DriverPlacement) -> RaftGroupConfig {
    RaftGroupConfig {
        group: "g".into(),
        self_id: IDS[me].into(),
        members: IDS.iter().zip(ports).map(|(id, p)| (id.to_string(), format!("127.0.0.1:{p}"))).collect(),
        data_dir: dir.join("raft"),
        raft: RaftConfig {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max_ms: ELECTION_TIMEOUT_MIN_MS + 500,
            noop_entry: Bytes::from_static(b"noop"),
            ..RaftConfig::default()
        },
        preferred_leader: None,
        sync_flush: true,
        tick_interval_ms: 10,
        driver_placement: placement,
        idle_poll_us: 200,
    }
}

type Members = BTreeMap<usize, (Arc<RaftReplicator>, Arc<CommitLog>)>;

/// Three members on fresh ports and directories, their drivers placed as `placement` says.
async fn start_group(placement: DriverPlacement) -> (Vec<u16>, Vec<tempfile::TempDir>, Members) {
    let ports = free_ports(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = BTreeMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let log = open_log(dir.path());
        let r = RaftReplicator::start(group_config(&ports, i, dir.path(), placement), log.clone()).await.unwrap();
        nodes.insert(i, (Arc::new(r), log));
    }
    (ports, dirs, nodes)
}

async fn wait_for_leader(nodes: &Members, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let leaders: Vec<usize> =
            nodes.iter().filter(|(_, (r, _))| r.status().role == Role::Leader).map(|(&i, _)| i).collect();
        if leaders.len() == 1 {
            let l = leaders[0];
            let term = nodes[&l].0.status().term;
            let agreed = nodes.values().all(|(r, _)| {
                let s = r.status();
                s.term == term && s.leader_id.as_deref() == Some(IDS[l])
            });
            if agreed {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_committed(r: &RaftReplicator, index: u64, timeout: Duration) {
    let mut rx = r.committed();
    tokio::time::timeout(timeout, rx.wait_for(|&c| c >= index))
        .await
        .unwrap_or_else(|_| panic!("{} did not commit {index} in {timeout:?}", r.self_id()))
        .unwrap();
}

/// `r.propose`, bounded: the replicator keeps no timer of its own (its callers bound it),
/// and a test must fail, not hang.
async fn propose(r: &RaftReplicator, payloads: Vec<Bytes>) -> Result<CommittedRange, ReplicationError> {
    tokio::time::timeout(Duration::from_secs(10), r.propose(payloads)).await.expect("a proposal answered within 10 s")
}

async fn propose_many(r: &Arc<RaftReplicator>, tag: &str, count: usize) -> Vec<(CommittedRange, Vec<Bytes>)> {
    let mut tasks = Vec::new();
    for i in 0..count {
        let r = r.clone();
        let payloads: Vec<Bytes> = (0..(i % 3 + 1)).map(|k| Bytes::from(format!("{tag}-{i}-{k}"))).collect();
        tasks.push(tokio::spawn(async move {
            let range = propose(&r, payloads.clone()).await.expect("proposal on the leader commits");
            (range, payloads)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn assert_holds(log: &CommitLog, acked: &[(CommittedRange, Vec<Bytes>)]) {
    for (range, payloads) in acked {
        for (index, p) in range.indexes().zip(payloads) {
            let e = log.read(index).unwrap_or_else(|e| panic!("entry {index} missing: {e}"));
            assert_eq!(e.body(), p.as_ref(), "entry {index} changed");
            assert_eq!(e.term(), range.term);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_replicate_fail_over_and_catch_up() {
    elect_replicate_fail_over_and_catch_up(DriverPlacement::OwnThread).await;
}

/// The same with every driver a task on the test's runtime, as `serverWorkerThreads = 1`
/// places it: a dropped member's driver must still stop and let go of its log, a graceful
/// stop must still hand over, fsyncs must not stall the other members' tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_with_drivers_on_the_callers_runtime() {
    elect_replicate_fail_over_and_catch_up(DriverPlacement::CallerRuntime).await;
}

async fn elect_replicate_fail_over_and_catch_up(placement: DriverPlacement) {
    let (ports, dirs, mut nodes) = start_group(placement).await;

    let leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    let first_term = nodes[&leader].0.status().term;
    let mut acked = propose_many(&nodes[&leader].0, "a", 60).await;
    let last = acked.iter().map(|(r, _)| r.last).max().unwrap();
    // Every proposal got its own contiguous range.
    let mut ranges: Vec<_> = acked.iter().map(|(r, _)| (r.first, r.last)).collect();
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0));
    for (r, log) in nodes.values() {
        wait_committed(r, last, Duration::from_secs(5)).await;
        assert_holds(log, &acked);
        assert!(r.status().commit_index <= log.last_index());
    }
    let status = nodes[&leader].0.status();
    assert_eq!(status.peers.len(), 2);
    assert!(status.peers.iter().all(|p| p.match_index >= last), "{status:?}");
    // The leader timed the stages of each of its 60 proposals; the refused ones below add
    // nothing.
    let stages = nodes[&leader].0.propose_latency().expect("a Raft member times its proposals");
    for stage in [&stages.queued, &stages.replicated, &stages.resumed] {
        assert_eq!(stage.count(), 60);
    }

    // A follower refuses proposals and names the leader.
    let follower = (0..3).find(|&i| i != leader).unwrap();
    match propose(&nodes[&follower].0, vec![Bytes::from_static(b"x")]).await {
        Err(ReplicationError::NotLeader { leader_id }) => assert_eq!(leader_id.as_deref(), Some(IDS[leader])),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    assert!(matches!(propose(&nodes[&leader].0, vec![]).await, Err(ReplicationError::Rejected(_))));
    assert_eq!(nodes[&leader].0.propose_latency().unwrap().replicated.count(), 60);
    assert_eq!(nodes[&follower].0.propose_latency().unwrap().replicated.count(), 0);

    // Kill the leader: drop it without shutdown.
    let (killed, killed_log) = nodes.remove(&leader).unwrap();
    drop(killed);
    let lost_at = Instant::now();
    let new_leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    let failover = lost_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(nodes[&new_leader].0.status().term > first_term);
    let more = propose_many(&nodes[&new_leader].0, "b", 20).await;
    acked.extend(more);
    let last = acked.iter().map(|(r, _)| r.last).max().unwrap();
    for (r, log) in nodes.values() {
        wait_committed(r, last, Duration::from_secs(5)).await;
        assert_holds(log, &acked);
    }
    eprintln!("failover to {} took {failover:?}", IDS[new_leader]);

    // Hand leadership to the other survivor.
    let other = *nodes.keys().find(|&&i| i != new_leader).unwrap();
    nodes[&new_leader].0.transfer_leadership(IDS[other]).await.expect("transfer");
    assert_eq!(wait_for_leader(&nodes, Duration::from_secs(5)).await, other);
    let more = propose_many(&nodes[&other].0, "c", 10).await;
    acked.extend(more);
    let last = acked.iter().map(|(r, _)| r.last).max().unwrap();

    // Restart the killed member on its own disk once its driver let go of the log.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&killed_log) > 1 {
        assert!(Instant::now() < deadline, "killed member's driver still holds its log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(killed_log);
    let log = open_log(dirs[leader].path());
    let r = Arc::new(
        RaftReplicator::start(group_config(&ports, leader, dirs[leader].path(), placement), log.clone()).await.unwrap(),
    );
    nodes.insert(leader, (r, log));
    for (r, log) in nodes.values() {
        wait_committed(r, last, Duration::from_secs(10)).await;
        assert_holds(log, &acked);
    }
    assert_eq!(wait_for_leader(&nodes, Duration::from_secs(5)).await, other);

    // A graceful stop of the leader hands leadership over instead of leaving the group to
    // an election timeout.
    let (stopped, _) = nodes.remove(&other).unwrap();
    stopped.shutdown().await.unwrap();
    let handed_over_at = Instant::now();
    let next = wait_for_leader(&nodes, Duration::from_secs(5)).await;
    assert!(
        handed_over_at.elapsed() < Duration::from_millis(HANDOVER_MS_MAX),
        "no handover: new leader {} after {:?}",
        IDS[next],
        handed_over_at.elapsed()
    );
    let more = propose_many(&nodes[&next].0, "d", 5).await;
    for (r, log) in nodes.values() {
        wait_committed(r, more.iter().map(|(r, _)| r.last).max().unwrap(), Duration::from_secs(5)).await;
        assert_holds(log, &more);
    }

    for (r, _) in nodes.values() {
        r.shutdown().await.unwrap();
    }
    assert!(matches!(propose(&stopped, vec![Bytes::from_static(b"late")]).await, Err(ReplicationError::ShuttingDown)));
}

/// A member whose peer address is taken (another process on the port) fails to start with
/// an error that names the address; nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_peer_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut ports = free_ports(3);
    ports[0] = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    let err = match RaftReplicator::start(group_config(&ports, 0, dir.path(), DriverPlacement::OwnThread), log).await {
        Ok(_) => panic!("started on a port another listener holds"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("127.0.0.1:{}", ports[0])), "{err}");
}

/// A member whose storage fails stops as a crashed one does, whichever way its driver is
/// placed: proposals get the storage error, its peer port refuses new connections and a
/// connection it had already accepted is closed (with `CallerRuntime` the loop's end must
/// abort the peer service and senders itself; no runtime is dropped for it). The others
/// elect a leader among themselves and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_storage_fails_stops_like_a_crash_in_both_placements() {
    for placement in [DriverPlacement::CallerRuntime, DriverPlacement::OwnThread] {
        storage_failure_stops_the_member(placement).await;
    }
}

async fn storage_failure_stops_the_member(placement: DriverPlacement) {
    use tokio::io::AsyncReadExt;

    let (ports, dirs, mut nodes) = start_group(placement).await;
    let leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    let acked = propose_many(&nodes[&leader].0, "a", 10).await;
    let failing = (leader + 1) % 3;
    let peer_address = format!("127.0.0.1:{}", ports[failing]);
    // A connection the failing member has accepted (it waits for an HTTP/2 preface).
    let mut accepted = tokio::net::TcpStream::connect(&peer_address).await.unwrap();

    // The next hard-state write fails: its temporary file's name is taken by a directory.
    std::fs::create_dir_all(dirs[failing].path().join("raft").join("raft-hardstate.tmp")).unwrap();
    // A new term makes every member store its hard state: the leader steps down gracefully
    // and hands over.
    let (old_leader, _) = nodes.remove(&leader).unwrap();
    old_leader.shutdown().await.unwrap();

    let failed = &nodes[&failing].0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match propose(&failed, vec![Bytes::from_static(b"after")]).await {
            Err(ReplicationError::Storage(why)) => break why,
            _ => {
                assert!(Instant::now() < deadline, "{placement:?}: the member did not stop on a storage error");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(err.contains("raft-hardstate"), "{placement:?}: {err}");
    // The server's HTTP/2 settings may come first; then the connection must end.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), accepted.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "{placement:?}: a connection the stopped member accepted is still open: {read:?}");
    let connect = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&peer_address)).await;
    assert!(matches!(connect, Ok(Err(_))), "{placement:?}: the stopped member's peer port still accepts");

    // The remaining member cannot win alone (two of three members are gone), but it still
    // holds what was acknowledged.
    let survivor = (leader + 2) % 3;
    assert_holds(&nodes[&survivor].1, &acked);
    for (r, _) in nodes.values() {
        let _ = r.shutdown().await;
    }
}

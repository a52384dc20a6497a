//! Name server over real gRPC on 127.0.0.1: brokers heartbeat in with
//! `namesrv::client::spawn_heartbeat`, routes follow, silent brokers expire, several name
//! servers run side by side independently.

use std::time::{Duration, Instant};

use wasmq_broker::namesrv::client::{self, HeartbeatHandle};
use wasmq_broker::namesrv::{NamesrvConfig, service};
use wasmq_proto::wasmq::namesrv::{
    BrokerHeartbeat, GetClusterInfoRequest, GetRouteRequest, Role, ShutdownRequest, TopicInfo,
};

const HEARTBEAT: Duration = Duration::from_millis(100);
const EXPIRY_MS: u64 = 400;

fn config() -> NamesrvConfig {
    NamesrvConfig {
        listen_port: 0,
        broker_expiry_ms: EXPIRY_MS,
        expiry_sweep_interval_ms: 50,
        ..NamesrvConfig::default()
    }
}

fn node(group: &str, id: &str, role: Role, port: u16) -> BrokerHeartbeat {
    BrokerHeartbeat {
        cluster_name: "RaftCluster".into(),
        broker_name: group.into(),
        node_id: id.into(),
        client_addr: format!("127.0.0.1:{port}"),
        raft_addr: format!("127.0.0.1:{}", port + 1000),
        role: role as i32,
        term: 2,
        committed_index: 17,
        version: "test".into(),
        topics: vec![TopicInfo { name: "TopicTest".into(), read_queue_nums: 8, write_queue_nums: 8, perm: 6 }],
        heartbeat_interval_ms: HEARTBEAT.as_millis() as u64,
    }
}

fn start_node(addrs: &[String], hb: BrokerHeartbeat) -> HeartbeatHandle {
    client::spawn_heartbeat(addrs.to_vec(), HEARTBEAT, move || hb.clone())
}

/// Polls `check` every 20 ms until it returns true or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn live_nodes(addr: &str) -> Vec<String> {
    let Ok(mut c) = client::connect(addr, Duration::from_secs(1)).await else {
        return vec!["<unreachable>".into()];
    };
    let info = c.get_cluster_info(GetClusterInfoRequest {}).await.unwrap().into_inner();
    info.brokers.iter().flat_map(|g| g.nodes.iter().map(move |n| format!("{}/{}", g.broker_name, n.node_id))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_heartbeats_and_silent_brokers_expire() {
    let ns = service::start(&config()).await.unwrap();
    let addr = ns.local_addr().to_string();
    let addrs = vec![addr.clone()];

    let n0 = start_node(&addrs, node("RaftNode00", "n0", Role::Leader, 18081));
    let n1 = start_node(&addrs, node("RaftNode00", "n1", Role::Follower, 18082));
    let n2 = start_node(&addrs, node("RaftNode00", "n2", Role::Follower, 18083));
    assert!(
        eventually(Duration::from_secs(5), || async { live_nodes(&addr).await.len() == 3 }).await,
        "3 nodes registered: {:?}",
        live_nodes(&addr).await
    );

    let mut c = client::connect(&addr, Duration::from_secs(1)).await.unwrap();
    let route = c.get_route(GetRouteRequest { topic: "TopicTest".into() }).await.unwrap().into_inner();
    assert_eq!(route.queues.len(), 1);
    assert_eq!(route.queues[0].broker_name, "RaftNode00");
    assert_eq!(route.queues[0].write_queue_nums, 8);
    let ids: Vec<_> = route.brokers[0].nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["n0", "n1", "n2"]);
    assert_eq!(route.brokers[0].nodes[0].role, Role::Leader as i32);
    let missing = c.get_route(GetRouteRequest { topic: "NoSuchTopic".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // n2 dies without a goodbye: it must drop out after the expiry, not before one
    // heartbeat interval, and the others must stay.
    let killed = Instant::now();
    drop(n2);
    assert!(eventually(Duration::from_secs(3), || async { live_nodes(&addr).await.len() == 2 }).await, "n2 expired");
    let gone_after = killed.elapsed();
    assert!(
        gone_after >= Duration::from_millis(EXPIRY_MS - HEARTBEAT.as_millis() as u64),
        "expired too early: {gone_after:?}"
    );
    assert_eq!(live_nodes(&addr).await, ["RaftNode00/n0", "RaftNode00/n1"]);
    // Stays expired (no zombie re-registration), others keep heartbeating.
    tokio::time::sleep(Duration::from_millis(2 * EXPIRY_MS)).await;
    assert_eq!(live_nodes(&addr).await, ["RaftNode00/n0", "RaftNode00/n1"]);

    // n1 stops gracefully: it unregisters, so it is gone well before the expiry.
    let stopped = Instant::now();
    n1.stop().await;
    assert_eq!(live_nodes(&addr).await, ["RaftNode00/n0"]);
    assert!(stopped.elapsed() < Duration::from_millis(EXPIRY_MS));

    n0.stop().await;
    let gone = c.get_route(GetRouteRequest { topic: "TopicTest".into() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);

    ns.shutdown();
    ns.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_servers_are_independent() {
    let ns_a = service::start(&config()).await.unwrap();
    let ns_b = service::start(&config()).await.unwrap();
    let a = ns_a.local_addr().to_string();
    let b = ns_b.local_addr().to_string();
    // Registered with both, plus an address where nothing listens: that one must not
    // slow down or block the others.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let addrs = client::parse_addrs(&format!("{a};{dead};{b}")).unwrap();
    let n0 = start_node(&addrs, node("RaftNode00", "n0", Role::Leader, 18081));
    assert!(
        eventually(Duration::from_secs(5), || async {
            live_nodes(&a).await.len() == 1 && live_nodes(&b).await.len() == 1
        })
        .await
    );

    // Stop name server A through its RPC (we are on loopback): B keeps serving.
    let mut ca = client::connect(&a, Duration::from_secs(1)).await.unwrap();
    ca.shutdown(ShutdownRequest {}).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), ns_a.wait()).await.expect("name server A stops").unwrap();
    assert!(client::connect(&a, Duration::from_millis(300)).await.is_err());
    tokio::time::sleep(Duration::from_millis(2 * EXPIRY_MS)).await;
    assert_eq!(live_nodes(&b).await, ["RaftNode00/n0"]);

    n0.stop().await;
    assert!(live_nodes(&b).await.is_empty());
    ns_b.shutdown();
    ns_b.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_heartbeats_are_refused_with_reasons() {
    let ns = service::start(&NamesrvConfig { brokers_max: 1, ..config() }).await.unwrap();
    let addr = ns.local_addr().to_string();
    let mut c = client::connect(&addr, Duration::from_secs(1)).await.unwrap();
    let register = |hb: BrokerHeartbeat| wasmq_proto::wasmq::namesrv::RegisterBrokerRequest { broker: Some(hb) };
    let ok = c.register_broker(register(node("g0", "n0", Role::Leader, 18081))).await.unwrap().into_inner();
    assert_eq!(ok.expiry_ms, EXPIRY_MS);
    let full = c.register_broker(register(node("g0", "n1", Role::Follower, 18082))).await.unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
    let mut bad = node("g0", "n0", Role::Leader, 18081);
    bad.topics[0].name = "bad topic".into();
    let invalid = c.register_broker(register(bad)).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(invalid.message().contains("bad topic"), "{}", invalid.message());
    let missing =
        c.register_broker(wasmq_proto::wasmq::namesrv::RegisterBrokerRequest { broker: None }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    ns.shutdown();
    ns.wait().await.unwrap();
}

/// (role, term) of every registered node, as the name server sees it.
async fn roles(addr: &str) -> Vec<(String, i32, u64)> {
    let mut c = client::connect(addr, Duration::from_secs(1)).await.unwrap();
    let info = c.get_cluster_info(GetClusterInfoRequest {}).await.unwrap().into_inner();
    info.brokers.iter().flat_map(|g| g.nodes.iter().map(|n| (n.node_id.clone(), n.role, n.term))).collect()
}

/// A role change reaches the name server at once when the broker nudges its heartbeat,
/// not a heartbeat interval later (here a minute, so only the nudge can explain it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_heartbeats_at_once() {
    let ns = service::start(&NamesrvConfig { broker_expiry_ms: 120_000, ..config() }).await.unwrap();
    let addr = ns.local_addr().to_string();
    let status = std::sync::Arc::new(std::sync::Mutex::new(node("RaftNode00", "n0", Role::Leader, 18091)));
    let current = status.clone();
    let handle =
        client::spawn_heartbeat(vec![addr.clone()], Duration::from_secs(60), move || current.lock().unwrap().clone());
    let leader = ("n0".to_string(), Role::Leader as i32, 2);
    assert!(eventually(Duration::from_secs(5), || async { roles(&addr).await == [leader.clone()] }).await);

    // Deposed in term 3: without a nudge the name server keeps the old role (the next tick
    // is a minute away)...
    {
        let mut s = status.lock().unwrap();
        s.role = Role::Follower as i32;
        s.term = 3;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(roles(&addr).await, [leader.clone()], "heartbeat without a nudge");
    // ...and has the new one right after it.
    let nudged = Instant::now();
    handle.nudge();
    let follower = ("n0".to_string(), Role::Follower as i32, 3);
    assert!(
        eventually(Duration::from_secs(2), || async { roles(&addr).await == [follower.clone()] }).await,
        "{:?}",
        roles(&addr).await
    );
    assert!(nudged.elapsed() < Duration::from_secs(2));
    handle.stop().await;
    ns.shutdown();
}

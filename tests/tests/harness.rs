//! The harness against the real binaries, before any Raft group is involved: generated
//! configs pass `mqbroker --check`, the proxied peer lists are wired as intended, and the
//! process faults (SIGSTOP/SIGCONT, kill -9, restart) do what the other tests rely on.

use std::time::Duration;

use wasmq_cluster_tests::client::{ClientError, MqClient};
use wasmq_cluster_tests::cluster::{Binaries, Cluster, ClusterSpec};

#[tokio::test]
async fn generated_configs_pass_mqbroker_check_and_route_peers_through_proxies() {
    wasmq_cluster_tests::init_tracing();
    let cluster = Cluster::prepare(ClusterSpec::replicated(3).proxied()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let mesh = cluster.mesh.as_ref().expect("proxied");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let out = std::process::Command::new(cluster.bins.path(Binaries::BROKER))
            .arg("-c")
            .arg(&node.config_path)
            .arg("--check")
            .env("NO_COLOR", "1")
            .output()
            .expect("run mqbroker --check");
        assert!(
            out.status.success(),
            "mqbroker --check rejected {}: {}{}",
            node.config_path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Own entry: the real address; the others: this node's proxies towards them.
        let peers = cluster.peers_for(i);
        for (j, other) in cluster.nodes.iter().enumerate() {
            let expected = if i == j { other.raft_addr } else { mesh.link(i, j).listen_addr() };
            assert!(peers.contains(&format!("{}-{expected}", other.id)), "{peers} lacks {} at {expected}", other.id);
            if i != j {
                assert_eq!(mesh.link(i, j).target_addr(), other.raft_addr);
            }
        }
        let text = std::fs::read_to_string(&node.config_path).unwrap();
        assert!(text.contains(&format!("dLegerPeers = \"{peers}\"")), "{text}");
    }
}

/// A v2 call that any live broker answers at once (with a status, whatever it is).
async fn answers(endpoint: &str) -> bool {
    let mut c = MqClient::connect_lazy(endpoint, Duration::from_millis(800)).unwrap();
    match c.query_route("NoSuchTopicForHarnessProbe").await {
        Ok(_) | Err(ClientError::Status { .. }) => true,
        Err(_) => false,
    }
}

#[tokio::test]
async fn sigstop_freezes_kill9_stops_and_restart_recovers_a_broker() {
    let mut cluster = wasmq_cluster_tests::scenario::start(ClusterSpec::replicated(1)).await;
    let endpoint = cluster.client_endpoint(0);
    assert!(answers(&endpoint).await, "fresh broker does not answer");
    cluster.sigstop(0).unwrap();
    assert!(cluster.is_stopped(0));
    assert!(!answers(&endpoint).await, "a SIGSTOPped broker answered");
    cluster.sigcont(0).unwrap();
    assert!(answers(&endpoint).await, "broker does not answer after SIGCONT");
    cluster.kill9(0).unwrap();
    assert!(!cluster.is_running(0));
    assert!(!answers(&endpoint).await, "a killed broker answered");
    cluster.restart(0).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(cluster.nodes[0].restarts, 1);
    assert!(answers(&endpoint).await, "restarted broker does not answer");
    cluster.check_alive().unwrap();
    let leaders = cluster.cli_leaders().await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("mqadmin clusterList leaders: {leaders:?}");
    cluster.finish(Ok(()));
}

//! The admin service and name-server registration on a real (standalone) broker: the
//! store, the broker core and `server::start` with `admin::core_backend::mount` and
//! `namesrv::registration::task`, driven by `mqadmin` commands. All on 127.0.0.1.

use std::time::{Duration, Instant};

use clap::Parser;
use wasmq_broker::admin::cli::{Cli, run};
use wasmq_broker::config::BrokerConfig;
use wasmq_broker::messaging::backend::MessagingBackend;
use wasmq_broker::namesrv::{NamesrvConfig, registration, service};
use wasmq_broker::server::{self, Extensions};
use wasmq_proto::wasmq::admin::ShutdownRequest;
use wasmq_proto::wasmq::admin::admin_client::AdminClient;

mod common;
use common::free_port;

async fn mqadmin(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("mqadmin").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    run(cli, &mut out).await?;
    Ok(String::from_utf8(out)?)
}

async fn mqadmin_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let text = mqadmin(&all).await.unwrap_or_else(|e| panic!("mqadmin {args:?}: {e:#}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqadmin_against_a_standalone_broker() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
    let ns = service::start(&NamesrvConfig { listen_port: 0, ..NamesrvConfig::default() }).await.unwrap();
    let n = ns.local_addr().to_string();

    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        store_path_root_dir: dir.path().display().to_string(),
        mapped_file_size_commit_log: 4 << 20,
        max_message_size: 64 * 1024,
        // The shared CI disk's fill level is not this test's subject (disk guard at 99 %).
        disk_max_used_space_ratio: 95,
        broker_ip1: "127.0.0.1".into(),
        listen_port: free_port(),
        namesrv_addr: n.clone(),
        ..BrokerConfig::default()
    };
    let broker_addr = format!("127.0.0.1:{}", config.listen_port);
    let extensions = Extensions {
        mounts: vec![Box::new(wasmq_broker::admin::core_backend::mount)],
        tasks: vec![Box::new(registration::task)],
        replicator: None,
    };
    let broker = server::start(config, dir.path().join("broker.toml"), extensions).await.unwrap();

    // Registered within a heartbeat or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let cluster = loop {
        let rows = mqadmin_json(&["clusterList", "-n", &n]).await;
        if rows.as_array().unwrap().len() == 1 {
            break rows;
        }
        assert!(Instant::now() < deadline, "broker never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(cluster[0]["role"], "STANDALONE");
    assert_eq!(cluster[0]["addr"], broker_addr.as_str());
    assert_eq!(cluster[0]["clusterName"], "DefaultCluster");

    let created =
        mqadmin_json(&["updateTopic", "-n", &n, "-c", "DefaultCluster", "-t", "AdminT", "-r", "4", "-w", "4"]).await;
    assert_eq!(created[0]["created"], true);
    assert_eq!(created[0]["writeQueueNums"], 4);
    let again = mqadmin_json(&["updateTopic", "-b", &broker_addr, "-t", "AdminT", "-r", "4", "-w", "4"]).await;
    assert_eq!(again[0]["created"], false);

    // The route appears with the next heartbeat.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mqadmin(&["topicList", "-n", &n]).await.unwrap().contains("AdminT") {
        assert!(Instant::now() < deadline, "AdminT never routed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut ids = Vec::new();
    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        let sent =
            mqadmin_json(&["sendMessage", "-n", &n, "-t", "AdminT", "-p", body, "-k", "key1", "-c", "TagA", "-i", "2"])
                .await;
        assert_eq!(sent[0]["queueId"], 2);
        assert_eq!(sent[0]["queueOffset"], i as u64);
        assert_eq!(sent[0]["topic"], "AdminT");
        ids.push(sent[0]["messageId"].as_str().unwrap().to_string());
    }
    let consumed = mqadmin_json(&["consumeMessage", "-n", &n, "-t", "AdminT", "-q", "2", "-o", "1", "-c", "5"]).await;
    let bodies: Vec<_> =
        consumed["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap().to_string()).collect();
    assert_eq!(bodies, ["two", "three"]);
    assert_eq!(consumed["nextOffset"], 3);
    assert_eq!(consumed["maxOffset"], 3);
    assert_eq!(consumed["messages"][0]["tag"], "TagA");
    assert_eq!(consumed["messages"][0]["keys"][0], "key1");
    // Past the end: nothing, no error.
    let empty = mqadmin_json(&["consumeMessage", "-n", &n, "-t", "AdminT", "-q", "2", "-o", "3"]).await;
    assert!(empty["messages"].as_array().unwrap().is_empty());

    let status = mqadmin_json(&["topicStatus", "-n", &n, "-t", "AdminT"]).await;
    let queues = status.as_array().unwrap();
    assert_eq!(queues.len(), 4);
    assert_eq!(queues[2]["maxOffset"], 3);
    assert!(queues[2]["lastUpdateTimestampMs"].as_i64().unwrap() > 0);
    assert_eq!(queues[0]["maxOffset"], 0);

    let found = mqadmin_json(&["queryMsgById", "-n", &n, "-i", &ids[1]]).await;
    assert_eq!(found["body"], "two");
    assert_eq!(found["queueOffset"], 1);
    assert!(mqadmin(&["queryMsgById", "-n", &n, "-i", "NO_SUCH_ID"]).await.is_err());

    broker.ctx.core.commit_offset("G1", "AdminT", 2, 1).await.unwrap();
    let progress = mqadmin_json(&["consumerProgress", "-n", &n, "-g", "G1"]).await;
    assert_eq!(progress["diffTotal"], 2);
    assert_eq!(progress["queues"][0]["brokerOffset"], 3);
    assert_eq!(progress["queues"][0]["consumerOffset"], 1);

    let status = mqadmin_json(&["brokerStatus", "-b", &broker_addr]).await;
    assert_eq!(status["role"], "STANDALONE");
    assert!(status["committedIndex"].as_u64().unwrap() >= 5, "{status}");
    assert!(status["diskTotalBytes"].as_u64().unwrap() > 0);
    assert!(status["topics"].as_array().unwrap().iter().any(|t| t["topic"] == "AdminT"));

    assert_eq!(mqadmin_json(&["pluginList", "-b", &broker_addr]).await, serde_json::json!([]));
    let reload = mqadmin(&["pluginReload", "-b", &broker_addr]).await.unwrap_err();
    assert!(format!("{reload:#}").contains("no pluginDir"), "{reload:#}");
    let transfer = mqadmin(&["transferLeader", "-b", &broker_addr, "--to", "n1"]).await.unwrap_err();
    assert!(format!("{transfer:#}").contains("standalone"), "{transfer:#}");

    // Shutdown RPC (as mqshutdown broker does) flips the broker's stop signal.
    let mut admin = AdminClient::connect(format!("http://{broker_addr}")).await.unwrap();
    admin.shutdown(ShutdownRequest {}).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), broker.stopped_by_request()).await.expect("stop requested");
    broker.stop().await.unwrap();
    // The registration task unregistered on the way out: no wait for expiry.
    assert_eq!(mqadmin_json(&["clusterList", "-n", &n]).await, serde_json::json!([]));
    ns.shutdown();
}

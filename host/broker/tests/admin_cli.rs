//! `mqadmin` commands (`admin::cli::run`) against the real admin gRPC service and name
//! server on 127.0.0.1, with an in-memory broker behind the `AdminBackend` seam: a leader
//! and a follower that answers NotLeader (so mqadmin must follow it to the leader).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Parser;
use parking_lot::Mutex;
use tokio::sync::watch;
use wasmq_broker::admin::backend::AdminResult;
use wasmq_broker::admin::cli::{Cli, run};
use wasmq_broker::admin::{self, AdminBackend, AdminError};
use wasmq_broker::namesrv::client::{self, HeartbeatHandle};
use wasmq_broker::namesrv::{NamesrvConfig, service};
use wasmq_proto::wasmq::admin as pb;
use wasmq_proto::wasmq::namesrv as pb_ns;

#[derive(Default)]
struct State {
    topics: BTreeMap<String, pb::TopicConfig>,
    queues: BTreeMap<(String, u32), Vec<pb::Message>>,
    /// (group, topic, queue) -> consumer offset
    offsets: BTreeMap<(String, String, u32), u64>,
    next_id: u64,
    leader: String,
}

/// One in-memory broker group: both members share the state; only the leader writes.
struct FakeNode {
    node_id: String,
    leader_addr: Option<String>,
    state: Arc<Mutex<State>>,
}

impl FakeNode {
    fn write_check(&self) -> AdminResult<()> {
        match &self.leader_addr {
            None => Ok(()),
            Some(addr) => Err(AdminError::NotLeader { leader: Some(addr.clone()) }),
        }
    }
}

#[async_trait]
impl AdminBackend for FakeNode {
    async fn broker_status(&self) -> AdminResult<pb::BrokerStatusResponse> {
        let s = self.state.lock();
        Ok(pb::BrokerStatusResponse {
            cluster_name: "RaftCluster".into(),
            broker_name: "g0".into(),
            node_id: self.node_id.clone(),
            role: if self.leader_addr.is_none() { pb::Role::Leader } else { pb::Role::Follower } as i32,
            term: 3,
            leader_id: s.leader.clone(),
            topics: s.topics.values().cloned().collect(),
            ..Default::default()
        })
    }

    async fn update_topic(&self, topic: pb::TopicConfig) -> AdminResult<pb::UpdateTopicResponse> {
        self.write_check()?;
        let existed = self.state.lock().topics.insert(topic.name.clone(), topic.clone()).is_some();
        Ok(pb::UpdateTopicResponse { existed, topic: Some(topic) })
    }

    async fn topic_status(&self, topic: &str) -> AdminResult<pb::TopicStatusResponse> {
        let s = self.state.lock();
        let config = s.topics.get(topic).ok_or_else(|| AdminError::NotFound(topic.into()))?;
        let queues = (0..config.read_queue_nums)
            .map(|q| {
                let len = s.queues.get(&(topic.to_string(), q)).map_or(0, Vec::len);
                pb::QueueStatus { queue_id: q, min_offset: 0, max_offset: len as u64, last_update_timestamp_ms: 0 }
            })
            .collect();
        Ok(pb::TopicStatusResponse { broker_name: "g0".into(), queues })
    }

    async fn send_message(&self, r: pb::SendMessageRequest) -> AdminResult<pb::SendMessageResponse> {
        self.write_check()?;
        let mut s = self.state.lock();
        let write_queues =
            s.topics.get(&r.topic).ok_or_else(|| AdminError::NotFound(format!("topic {}", r.topic)))?.write_queue_nums;
        s.next_id += 1;
        let id = format!("MSG{:08}", s.next_id);
        let queue_id = r.queue_id.unwrap_or((s.next_id % u64::from(write_queues)) as u32);
        let r_topic = r.topic.clone();
        let queue = s.queues.entry((r.topic.clone(), queue_id)).or_default();
        let offset = queue.len() as u64;
        queue.push(pb::Message {
            message_id: id.clone(),
            topic: r.topic,
            tag: r.tag,
            keys: r.keys,
            properties: r.properties,
            body: r.body,
            queue_id,
            queue_offset: offset,
            commit_index: offset + 1,
            store_timestamp_ms: 1_700_000_000_000,
            ..Default::default()
        });
        Ok(pb::SendMessageResponse {
            topic: r_topic,
            message_id: id,
            queue_id,
            queue_offset: offset,
            commit_index: offset + 1,
            broker_name: "g0".into(),
        })
    }

    async fn consume_message(&self, r: pb::ConsumeMessageRequest) -> AdminResult<pb::ConsumeMessageResponse> {
        let s = self.state.lock();
        let queue = s.queues.get(&(r.topic.clone(), r.queue_id)).cloned().unwrap_or_default();
        let messages: Vec<_> = queue.iter().skip(r.offset as usize).take(r.max_count as usize).cloned().collect();
        Ok(pb::ConsumeMessageResponse {
            next_offset: r.offset + messages.len() as u64,
            messages,
            min_offset: 0,
            max_offset: queue.len() as u64,
        })
    }

    async fn query_message_by_id(&self, id: &str) -> AdminResult<Option<pb::Message>> {
        let s = self.state.lock();
        Ok(s.queues.values().flatten().find(|m| m.message_id == id).cloned())
    }

    async fn consumer_progress(&self, group: &str) -> AdminResult<pb::ConsumerProgressResponse> {
        let s = self.state.lock();
        let queues = s
            .offsets
            .iter()
            .filter(|((g, _, _), _)| group.is_empty() || g == group)
            .map(|((g, t, q), consumer)| {
                let broker = s.queues.get(&(t.clone(), *q)).map_or(0, Vec::len) as u64;
                pb::QueueProgress {
                    group: g.clone(),
                    topic: t.clone(),
                    queue_id: *q,
                    broker_offset: broker,
                    consumer_offset: *consumer,
                    lag: broker.saturating_sub(*consumer),
                }
            })
            .collect();
        Ok(pb::ConsumerProgressResponse { broker_name: "g0".into(), queues })
    }

    async fn plugin_list(&self) -> AdminResult<pb::PluginListResponse> {
        Ok(pb::PluginListResponse {
            plugin_dir: "/tmp/plugins".into(),
            plugins: vec![pb::PluginInfo {
                name: "key-hash-router".into(),
                kind: "router".into(),
                topics: vec!["*".into()],
                order: 10,
                on_error: "pass".into(),
                digest: "0123456789abcdef0123".into(),
                ..Default::default()
            }],
        })
    }

    async fn plugin_reload(&self) -> AdminResult<pb::PluginReloadResponse> {
        Ok(pb::PluginReloadResponse {
            loaded: vec!["key-hash-router".into()],
            removed: vec![],
            failed: vec!["broken: not a component".into()],
        })
    }

    async fn transfer_leader(&self, to: &str, _timeout: Duration) -> AdminResult<pb::TransferLeaderResponse> {
        self.write_check()?;
        if !["n0", "n1"].contains(&to) {
            return Err(AdminError::InvalidArgument(format!("{to} is not a member")));
        }
        self.state.lock().leader = to.into();
        Ok(pb::TransferLeaderResponse { leader_id: to.into(), term: 4 })
    }
}

struct Cluster {
    namesrv: String,
    leader: String,
    follower: String,
    state: Arc<Mutex<State>>,
    heartbeats: Vec<HeartbeatHandle>,
    stops: Vec<Arc<watch::Sender<bool>>>,
    namesrv_handle: service::RunningNamesrv,
}

async fn serve_admin(node: FakeNode) -> (String, Arc<watch::Sender<bool>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, _) = watch::channel(false);
    let stop = Arc::new(stop);
    let svc = admin::service(Arc::new(node), stop.clone());
    let mut stopped = stop.subscribe();
    tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(
        tonic::transport::server::TcpIncoming::from(listener),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    (addr, stop)
}

async fn cluster() -> Cluster {
    let ns = service::start(&NamesrvConfig {
        listen_port: 0,
        broker_expiry_ms: 1000,
        expiry_sweep_interval_ms: 100,
        ..NamesrvConfig::default()
    })
    .await
    .unwrap();
    let namesrv = ns.local_addr().to_string();
    let state = Arc::new(Mutex::new(State { leader: "n0".into(), ..State::default() }));
    let (leader, stop_leader) =
        serve_admin(FakeNode { node_id: "n0".into(), leader_addr: None, state: state.clone() }).await;
    let (follower, stop_follower) =
        serve_admin(FakeNode { node_id: "n1".into(), leader_addr: Some(leader.clone()), state: state.clone() }).await;
    let mut heartbeats = Vec::new();
    for (id, addr, role) in
        [("n0", leader.clone(), pb_ns::Role::Leader), ("n1", follower.clone(), pb_ns::Role::Follower)]
    {
        let state = state.clone();
        heartbeats.push(client::spawn_heartbeat(vec![namesrv.clone()], Duration::from_millis(100), move || {
            pb_ns::BrokerHeartbeat {
                cluster_name: "RaftCluster".into(),
                broker_name: "g0".into(),
                node_id: id.into(),
                client_addr: addr.clone(),
                raft_addr: "127.0.0.1:40911".into(),
                role: role as i32,
                term: 3,
                committed_index: 5,
                version: "test".into(),
                topics: state
                    .lock()
                    .topics
                    .values()
                    .map(|t| pb_ns::TopicInfo {
                        name: t.name.clone(),
                        read_queue_nums: t.read_queue_nums,
                        write_queue_nums: t.write_queue_nums,
                        perm: t.perm,
                    })
                    .collect(),
                heartbeat_interval_ms: 100,
            }
        }));
    }
    let c = Cluster {
        namesrv,
        leader,
        follower,
        state,
        heartbeats,
        stops: vec![stop_leader, stop_follower],
        namesrv_handle: ns,
    };
    let ok = wait_for(Duration::from_secs(5), || async {
        mqadmin(&["clusterList", "-n", &c.namesrv]).await.map(|o| o.lines().count() == 3).unwrap_or(false)
    })
    .await;
    assert!(ok, "both nodes registered");
    c
}

async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> bool
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
async fn mqadmin_commands_against_admin_service() {
    let c = cluster().await;
    let n = c.namesrv.as_str();

    let table = mqadmin(&["clusterList", "-n", n]).await.unwrap();
    let lines: Vec<_> = table.lines().collect();
    assert!(lines[0].starts_with("#Cluster Name"), "{table}");
    assert!(lines[1].contains("RaftCluster") && lines[1].contains(" n0 ") && lines[1].contains("LEADER"), "{table}");
    assert!(lines[2].contains(&c.follower) && lines[2].contains("FOLLOWER"), "{table}");

    // Whole cluster: goes to the group's leader.
    let created = mqadmin_json(&["updateTopic", "-n", n, "-c", "RaftCluster", "-t", "T1", "-r", "4", "-w", "4"]).await;
    assert_eq!(created[0]["brokerAddr"], c.leader.as_str());
    assert_eq!(created[0]["created"], true);
    assert_eq!(c.state.lock().topics["T1"].write_queue_nums, 4);
    // Asked at the follower: redirected to the leader it names.
    let updated = mqadmin_json(&["updateTopic", "-b", &c.follower, "-t", "T1", "-r", "2", "-w", "2"]).await;
    assert_eq!(updated[0]["brokerAddr"], c.leader.as_str());
    assert_eq!(updated[0]["created"], false);
    let bad = mqadmin(&["updateTopic", "-b", &c.leader, "-t", "T1", "-w", "0"]).await.unwrap_err();
    assert!(format!("{bad:#}").contains("writeQueueNums"), "{bad:#}");
    let unknown_cluster = mqadmin(&["updateTopic", "-n", n, "-c", "Nope", "-t", "T1"]).await.unwrap_err();
    assert!(format!("{unknown_cluster:#}").contains("cluster Nope"), "{unknown_cluster:#}");

    // Routes follow the next heartbeat.
    let listed =
        wait_for(Duration::from_secs(3), || async { mqadmin(&["topicList", "-n", n]).await.unwrap().contains("T1") })
            .await;
    assert!(listed, "T1 in topicList");

    let sent = mqadmin_json(&[
        "sendMessage",
        "-n",
        n,
        "-t",
        "T1",
        "-p",
        "hello wasmq",
        "-k",
        "k1 k2",
        "-g",
        "TagA",
        "-i",
        "1",
    ])
    .await;
    assert_eq!(sent[0]["status"], "SEND_OK");
    assert_eq!(sent[0]["queueId"], 1);
    let id = sent[0]["messageId"].as_str().unwrap().to_string();
    mqadmin(&["sendMessage", "-n", n, "-t", "T1", "-p", "second", "-c", "TagB", "-i", "1"]).await.unwrap();

    let consumed = mqadmin_json(&["consumeMessage", "-n", n, "-t", "T1", "-q", "1", "-o", "0", "-c", "10"]).await;
    let messages = consumed["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["body"], "hello wasmq");
    assert_eq!(messages[0]["keys"], serde_json::json!(["k1", "k2"]));
    assert_eq!(messages[0]["tag"], "TagA");
    assert_eq!(messages[1]["tag"], "TagB");
    assert_eq!(consumed["nextOffset"], 2);
    let from_one = mqadmin(&["consumeMessage", "-n", n, "-t", "T1", "-q", "1", "-o", "1"]).await.unwrap();
    assert!(from_one.contains("second") && !from_one.contains("hello wasmq"), "{from_one}");
    assert!(mqadmin(&["consumeMessage", "-n", n, "-t", "T1", "-c", "100000"]).await.is_err());

    let status = mqadmin_json(&["topicStatus", "-n", n, "-t", "T1"]).await;
    assert_eq!(status.as_array().unwrap().len(), 2);
    assert_eq!(status[1]["maxOffset"], 2);

    let found = mqadmin(&["queryMsgById", "-n", n, "-i", &id]).await.unwrap();
    assert!(found.contains("hello wasmq") && found.contains(&id), "{found}");
    let not_found = mqadmin(&["queryMsgById", "-n", n, "-i", "MSG_NOPE"]).await.unwrap_err();
    assert!(format!("{not_found:#}").contains("not found"), "{not_found:#}");

    c.state.lock().offsets.insert(("G1".into(), "T1".into(), 1), 1);
    let progress = mqadmin_json(&["consumerProgress", "-n", n, "-g", "G1"]).await;
    assert_eq!(progress["diffTotal"], 1);
    assert_eq!(progress["queues"][0]["brokerOffset"], 2);
    let progress_text = mqadmin(&["consumerProgress", "-n", n, "-g", "G1"]).await.unwrap();
    assert!(progress_text.ends_with("Diff Total: 1\n"), "{progress_text}");
    assert!(mqadmin(&["consumerProgress", "-n", n, "-g", "G_NONE"]).await.is_err());

    let broker = mqadmin_json(&["brokerStatus", "-b", &c.follower]).await;
    assert_eq!(broker["role"], "FOLLOWER");
    assert_eq!(broker["topics"][0]["topic"], "T1");

    let plugins = mqadmin(&["pluginList", "-b", &c.leader]).await.unwrap();
    assert!(plugins.contains("key-hash-router") && plugins.contains("0123456789ab "), "{plugins}");
    // A failed plugin load is reported and makes the command fail (scripts see it).
    let reload = mqadmin(&["pluginReload", "-b", &c.leader]).await.unwrap_err();
    assert!(format!("{reload:#}").contains("1 plugin(s) failed"), "{reload:#}");

    let moved = mqadmin_json(&["transferLeader", "-b", &c.follower, "--to", "n1"]).await;
    assert_eq!(moved["leaderId"], "n1");
    assert_eq!(moved["via"], c.leader.as_str());
    assert_eq!(c.state.lock().leader, "n1");

    for h in c.heartbeats {
        h.stop().await;
    }
    for s in c.stops {
        s.send_replace(true);
    }
    c.namesrv_handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_give_clear_errors() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let err = mqadmin(&["clusterList", "-n", &dead, "--timeout-ms", "500"]).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("cannot reach any name server") && text.contains(&dead), "{text}");
    let err = mqadmin(&["brokerStatus", "-b", &dead, "--timeout-ms", "500"]).await.unwrap_err();
    assert!(format!("{err:#}").contains(&format!("cannot reach broker {dead}")), "{err:#}");
    let err = mqadmin(&["clusterList"]).await;
    if std::env::var_os("NAMESRV_ADDR").is_none() {
        assert!(format!("{:#}", err.unwrap_err()).contains("NAMESRV_ADDR"));
    }
}

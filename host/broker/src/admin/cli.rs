//! `mqadmin`: RocketMQ's command and flag names where they exist, `--json` everywhere.
//!
//! Commands that name a topic or a cluster ask a name server (`-n`, or `NAMESRV_ADDR`;
//! several separated by `;` are tried in order) which broker groups serve it, then talk to
//! each group's leader over `wasmq.admin.Admin`. Commands with `-b ADDR` talk to that
//! broker directly; a write sent to a follower is retried once on the leader it names.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use tonic::transport::Channel;
use wasmq_proto::wasmq::admin as pb;
use wasmq_proto::wasmq::admin::admin_client::AdminClient;
use wasmq_proto::wasmq::namesrv as pb_ns;
use wasmq_proto::wasmq::namesrv::name_server_client::NameServerClient;

use super::output::{self, Row};
use super::service::{CONSUME_COUNT_MAX, LEADER_ADDR_METADATA};
use crate::namesrv::client as ns_client;

#[derive(Parser, Debug)]
#[command(
    name = "mqadmin",
    version,
    about = "wasmq admin tool (RocketMQ mqadmin commands)",
    after_help = "Upgrading a non-replicated cluster to a Raft group (offline; see docs/operating.md):\n  \
                  upgradeCheck   --old FILE... --new FILE... [--plugin-dir DIR] [--source NODE] [--json]\n  \
                  upgrade        same flags: performs the checked plan, keeps backups\n  \
                  upgradeFinish  --new FILE...: drops the backups once the group committed past the old end\n\
                  Run `mqadmin upgradeCheck --help` for the details."
)]
pub struct Cli {
    /// Print JSON instead of a table (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// Connect and request timeout per call.
    #[arg(long = "timeout-ms", global = true, default_value_t = 5000)]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct NamesrvArg {
    /// Name server address(es), `host:port;host:port`.
    #[arg(short = 'n', long = "namesrvAddr", env = "NAMESRV_ADDR")]
    pub namesrv: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List broker nodes: cluster, broker name, id, address, role, term, commit index.
    #[command(name = "clusterList")]
    ClusterList {
        #[command(flatten)]
        n: NamesrvArg,
    },
    /// Create or update a topic on every group of a cluster (-c) or on one broker (-b).
    #[command(name = "updateTopic")]
    UpdateTopic {
        #[command(flatten)]
        n: NamesrvArg,
        /// Cluster name: the topic goes to every broker group in it (needs -n).
        #[arg(short = 'c', long = "clusterName", conflicts_with = "broker_addr")]
        cluster: Option<String>,
        /// Broker address host:port (a follower forwards you to its leader).
        #[arg(short = 'b', long = "brokerAddr")]
        broker_addr: Option<String>,
        #[arg(short = 't', long = "topic")]
        topic: String,
        #[arg(short = 'r', long = "readQueueNums", default_value_t = 8)]
        read_queue_nums: u32,
        #[arg(short = 'w', long = "writeQueueNums", default_value_t = 8)]
        write_queue_nums: u32,
        /// 2 = write, 4 = read, 6 = read+write.
        #[arg(short = 'p', long = "perm", default_value_t = 6)]
        perm: u32,
    },
    /// List every topic live brokers report.
    #[command(name = "topicList")]
    TopicList {
        #[command(flatten)]
        n: NamesrvArg,
    },
    /// Per-queue min / max offsets of a topic, on every group serving it.
    #[command(name = "topicStatus")]
    TopicStatus {
        #[command(flatten)]
        n: NamesrvArg,
        #[arg(short = 't', long = "topic")]
        topic: String,
    },
    /// Send one message.
    #[command(name = "sendMessage")]
    SendMessage {
        #[command(flatten)]
        n: NamesrvArg,
        #[arg(short = 't', long = "topic")]
        topic: String,
        /// Message body (UTF-8 text).
        #[arg(short = 'p', long = "body")]
        body: String,
        /// Message keys, space separated.
        #[arg(short = 'k', long = "keys")]
        keys: Option<String>,
        /// Message tag.
        #[arg(short = 'c', long = "tags", short_alias = 'g')]
        tags: Option<String>,
        /// Broker name (group) to send to; default: the first group serving the topic.
        #[arg(short = 'b', long = "broker")]
        broker: Option<String>,
        /// Queue id; default: the broker (and its router plugins) choose.
        #[arg(short = 'i', long = "qid")]
        queue_id: Option<u32>,
    },
    /// Read messages of one queue from an offset.
    #[command(name = "consumeMessage")]
    ConsumeMessage {
        #[command(flatten)]
        n: NamesrvArg,
        #[arg(short = 't', long = "topic")]
        topic: String,
        #[arg(short = 'q', long = "queue", default_value_t = 0)]
        queue_id: u32,
        #[arg(short = 'o', long = "offset", default_value_t = 0)]
        offset: u64,
        /// How many messages (at most 256).
        #[arg(short = 'c', long = "count", default_value_t = 32)]
        count: u32,
        /// Broker name (group); needed when several groups serve the topic.
        #[arg(short = 'b', long = "broker")]
        broker: Option<String>,
    },
    /// Find a message by id on every broker group.
    #[command(name = "queryMsgById")]
    QueryMsgById {
        #[command(flatten)]
        n: NamesrvArg,
        #[arg(short = 'i', long = "msgId")]
        message_id: String,
    },
    /// Per-queue broker offset, consumer offset and lag of a consumer group.
    #[command(name = "consumerProgress")]
    ConsumerProgress {
        #[command(flatten)]
        n: NamesrvArg,
        /// Consumer group; omitted = every group.
        #[arg(short = 'g', long = "groupName")]
        group: Option<String>,
    },
    /// Status of one broker: role, term, indexes, peer lag, disk, topics.
    #[command(name = "brokerStatus")]
    BrokerStatus {
        #[arg(short = 'b', long = "brokerAddr")]
        broker_addr: String,
    },
    /// Plugins loaded on one broker.
    #[command(name = "pluginList")]
    PluginList {
        #[arg(short = 'b', long = "brokerAddr")]
        broker_addr: String,
    },
    /// Rescan one broker's plugin directory now.
    #[command(name = "pluginReload")]
    PluginReload {
        #[arg(short = 'b', long = "brokerAddr")]
        broker_addr: String,
    },
    /// Move leadership of a broker's group to another node.
    #[command(name = "transferLeader")]
    TransferLeader {
        /// Any member of the group (a follower forwards you to its leader).
        #[arg(short = 'b', long = "brokerAddr")]
        broker_addr: String,
        /// Target node id (dLegerSelfId), e.g. n1.
        #[arg(long = "to")]
        to: String,
    },
}

/// Runs one command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let ctx = Ctx { json: cli.json, timeout: Duration::from_millis(cli.timeout_ms.max(1)) };
    let text = match cli.command {
        Command::ClusterList { n } => ctx.cluster_list(&n).await?,
        Command::UpdateTopic { n, cluster, broker_addr, topic, read_queue_nums, write_queue_nums, perm } => {
            let config = pb::TopicConfig { name: topic, read_queue_nums, write_queue_nums, perm };
            ctx.update_topic(&n, cluster, broker_addr, config).await?
        }
        Command::TopicList { n } => {
            let (_, list) = ctx
                .ask_namesrv(&n, |mut c| async move { c.get_topic_list(pb_ns::GetTopicListRequest {}).await })
                .await?;
            ctx.render_rows(&output::topic_list_rows(&list))
        }
        Command::TopicStatus { n, topic } => ctx.topic_status(&n, &topic).await?,
        Command::SendMessage { n, topic, body, keys, tags, broker, queue_id } => {
            let request = pb::SendMessageRequest {
                topic,
                body: body.into_bytes(),
                tag: tags.unwrap_or_default(),
                keys: keys.map(|k| k.split_whitespace().map(String::from).collect()).unwrap_or_default(),
                properties: Default::default(),
                queue_id,
            };
            ctx.send_message(&n, broker.as_deref(), request).await?
        }
        Command::ConsumeMessage { n, topic, queue_id, offset, count, broker } => {
            if !(1..=CONSUME_COUNT_MAX).contains(&count) {
                bail!("-c {count}: count must be in [1, {CONSUME_COUNT_MAX}]");
            }
            let request = pb::ConsumeMessageRequest { topic, queue_id, offset, max_count: count };
            ctx.consume_message(&n, broker.as_deref(), request).await?
        }
        Command::QueryMsgById { n, message_id } => ctx.query_by_id(&n, &message_id).await?,
        Command::ConsumerProgress { n, group } => ctx.consumer_progress(&n, group.unwrap_or_default()).await?,
        Command::BrokerStatus { broker_addr } => {
            let mut client = ctx.admin(&broker_addr).await?;
            let status = client
                .broker_status(pb::BrokerStatusRequest {})
                .await
                .map_err(|s| rpc_error("brokerStatus", &broker_addr, s))?
                .into_inner();
            let report = output::broker_status_report(&broker_addr, &status);
            ctx.render(&report, output::broker_status_text)
        }
        Command::PluginList { broker_addr } => {
            let mut client = ctx.admin(&broker_addr).await?;
            let list = client
                .plugin_list(pb::PluginListRequest {})
                .await
                .map_err(|s| rpc_error("pluginList", &broker_addr, s))?
                .into_inner();
            ctx.render_rows(&output::plugin_rows(&list))
        }
        Command::PluginReload { broker_addr } => {
            let mut client = ctx.admin(&broker_addr).await?;
            let answer = client
                .plugin_reload(pb::PluginReloadRequest {})
                .await
                .map_err(|s| rpc_error("pluginReload", &broker_addr, s))?
                .into_inner();
            let report = output::ReloadReport {
                addr: broker_addr.clone(),
                loaded: answer.loaded,
                removed: answer.removed,
                failed: answer.failed,
            };
            let text = ctx.render(&report, output::reload_text);
            if !report.failed.is_empty() {
                out.write_all(text.as_bytes())?;
                bail!("{} plugin(s) failed to load on {broker_addr}", report.failed.len());
            }
            text
        }
        Command::TransferLeader { broker_addr, to } => {
            let timeout_ms = ctx.timeout.as_millis() as u64;
            let request = pb::TransferLeaderRequest { to_node_id: to.clone(), timeout_ms };
            let (addr, answer) = ctx
                .on_leader(&broker_addr, "transferLeader", |mut c| {
                    let request = request.clone();
                    async move { c.transfer_leader(request).await }
                })
                .await?;
            if ctx.json {
                output::json(&serde_json::json!({
                    "via": addr, "leaderId": answer.leader_id, "term": answer.term,
                }))
            } else {
                format!(
                    "leadership transferred (asked {addr}): leader is now {} in term {}\n",
                    answer.leader_id, answer.term
                )
            }
        }
    };
    out.write_all(text.as_bytes()).context("writing output")?;
    Ok(())
}

struct Ctx {
    json: bool,
    timeout: Duration,
}

/// Turns a failed RPC into an error that says what was asked, where, and why.
fn rpc_error(what: &str, addr: &str, status: tonic::Status) -> anyhow::Error {
    let why = match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            format!("cannot reach {addr}: {}", status.message())
        }
        code => format!("{addr} answered {code:?}: {}", status.message()),
    };
    anyhow!("{what} failed: {why}")
}

impl Ctx {
    fn render_rows<R: Row>(&self, rows: &[R]) -> String {
        if self.json { output::json(rows) } else { output::table(rows) }
    }

    fn render<T: serde::Serialize>(&self, value: &T, text: impl Fn(&T) -> String) -> String {
        if self.json { output::json(value) } else { text(value) }
    }

    fn namesrv_addrs(&self, n: &NamesrvArg) -> Result<Vec<String>> {
        let list = n
            .namesrv
            .as_deref()
            .ok_or_else(|| anyhow!("no name server given: pass -n HOST:PORT or set NAMESRV_ADDR"))?;
        ns_client::parse_addrs(list).with_context(|| format!("bad -n {list:?}"))
    }

    /// Asks the name servers in order; the first that answers wins. Name servers are
    /// independent copies, so any live one is as good as another.
    async fn ask_namesrv<T, F, Fut>(&self, n: &NamesrvArg, call: F) -> Result<(String, T)>
    where
        F: Fn(NameServerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let addrs = self.namesrv_addrs(n)?;
        let mut failures = Vec::new();
        for addr in &addrs {
            let client = match ns_client::connect(addr, self.timeout).await {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            match call(client).await {
                Ok(answer) => return Ok((addr.clone(), answer.into_inner())),
                // A definite answer (e.g. topic not found) is not retried elsewhere.
                Err(s) if s.code() != tonic::Code::Unavailable && s.code() != tonic::Code::DeadlineExceeded => {
                    return Err(rpc_error("name server query", addr, s));
                }
                Err(s) => failures.push(format!("{addr}: {}", s.message())),
            }
        }
        bail!("cannot reach any name server ({})", failures.join("; "))
    }

    async fn admin(&self, addr: &str) -> Result<AdminClient<Channel>> {
        let channel = ns_client::endpoint(addr, self.timeout)
            .with_context(|| format!("bad broker address {addr:?}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach broker {addr}"))?;
        Ok(AdminClient::new(channel))
    }

    /// Calls `call` on `addr`; if that broker says it is not the leader and names one,
    /// calls it once more there. Returns the address that answered.
    async fn on_leader<T, F, Fut>(&self, addr: &str, what: &str, call: F) -> Result<(String, T)>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.admin(addr).await?;
        match call(client).await {
            Ok(answer) => Ok((addr.to_string(), answer.into_inner())),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                let leader = s.metadata().get(LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok()).map(String::from);
                let Some(leader) = leader.filter(|l| l != addr) else {
                    return Err(rpc_error(what, addr, s));
                };
                let client = self.admin(&leader).await?;
                let answer = call(client).await.map_err(|s| rpc_error(what, &leader, s))?;
                Ok((leader, answer.into_inner()))
            }
            Err(s) => Err(rpc_error(what, addr, s)),
        }
    }

    async fn cluster_info(&self, n: &NamesrvArg) -> Result<(String, pb_ns::GetClusterInfoResponse)> {
        self.ask_namesrv(n, |mut c| async move { c.get_cluster_info(pb_ns::GetClusterInfoRequest {}).await }).await
    }

    async fn cluster_list(&self, n: &NamesrvArg) -> Result<String> {
        let (addr, info) = self.cluster_info(n).await?;
        Ok(self.render_rows(&output::cluster_rows(&addr, &info)))
    }

    async fn route(&self, n: &NamesrvArg, topic: &str) -> Result<pb_ns::GetRouteResponse> {
        let topic = topic.to_string();
        let (_, route) = self
            .ask_namesrv(n, |mut c| {
                let topic = topic.clone();
                async move { c.get_route(pb_ns::GetRouteRequest { topic }).await }
            })
            .await?;
        Ok(route)
    }

    async fn update_topic(
        &self,
        n: &NamesrvArg,
        cluster: Option<String>,
        broker_addr: Option<String>,
        config: pb::TopicConfig,
    ) -> Result<String> {
        let targets = match (cluster, broker_addr) {
            (_, Some(addr)) => vec![addr],
            (Some(cluster), None) => {
                let (_, info) = self.cluster_info(n).await?;
                let groups: Vec<_> = info.brokers.iter().filter(|g| g.cluster_name == cluster).collect();
                if groups.is_empty() {
                    bail!("cluster {cluster} has no live broker on the name server");
                }
                groups.into_iter().map(|g| leader_addr(g).map(String::from)).collect::<Result<Vec<_>>>()?
            }
            (None, None) => bail!("updateTopic needs -c CLUSTER or -b BROKER_ADDR"),
        };
        let mut rows = Vec::new();
        for addr in targets {
            let request = pb::UpdateTopicRequest { topic: Some(config.clone()) };
            let (answered, answer) = self
                .on_leader(&addr, "updateTopic", |mut c| {
                    let request = request.clone();
                    async move { c.update_topic(request).await }
                })
                .await?;
            rows.push(output::update_topic_row(&answered, &answer));
        }
        Ok(self.render_rows(&rows))
    }

    /// Leader addresses of the groups serving `topic` (optionally only `broker`).
    async fn topic_targets(&self, n: &NamesrvArg, topic: &str, broker: Option<&str>) -> Result<Vec<(String, String)>> {
        let route = self.route(n, topic).await?;
        let mut targets = Vec::new();
        for group in &route.brokers {
            if broker.is_some_and(|b| b != group.broker_name) {
                continue;
            }
            targets.push((group.broker_name.clone(), leader_addr(group)?.to_string()));
        }
        if targets.is_empty() {
            bail!("broker {} does not serve topic {topic}", broker.unwrap_or("?"));
        }
        Ok(targets)
    }

    async fn topic_status(&self, n: &NamesrvArg, topic: &str) -> Result<String> {
        let mut rows = Vec::new();
        for (_, addr) in self.topic_targets(n, topic, None).await? {
            let request = pb::TopicStatusRequest { topic: topic.to_string() };
            let (_, status) = self
                .on_leader(&addr, "topicStatus", |mut c| {
                    let request = request.clone();
                    async move { c.topic_status(request).await }
                })
                .await?;
            rows.extend(output::topic_status_rows(&status));
        }
        Ok(self.render_rows(&rows))
    }

    async fn send_message(
        &self,
        n: &NamesrvArg,
        broker: Option<&str>,
        request: pb::SendMessageRequest,
    ) -> Result<String> {
        let targets = self.topic_targets(n, &request.topic, broker).await?;
        let (_, addr) = &targets[0];
        let (_, answer) = self
            .on_leader(addr, "sendMessage", |mut c| {
                let request = request.clone();
                async move { c.send_message(request).await }
            })
            .await?;
        Ok(self.render_rows(&[output::send_row(&answer)]))
    }

    async fn consume_message(
        &self,
        n: &NamesrvArg,
        broker: Option<&str>,
        request: pb::ConsumeMessageRequest,
    ) -> Result<String> {
        let targets = self.topic_targets(n, &request.topic, broker).await?;
        if targets.len() > 1 {
            let names: Vec<_> = targets.iter().map(|(name, _)| name.as_str()).collect();
            bail!(
                "topic {} is served by several broker groups ({}): pick one with -b",
                request.topic,
                names.join(", ")
            );
        }
        let (_, addr) = &targets[0];
        let (_, answer) = self
            .on_leader(addr, "consumeMessage", |mut c| {
                let request = request.clone();
                async move { c.consume_message(request).await }
            })
            .await?;
        let rows: Vec<_> = answer.messages.iter().map(output::message_row).collect();
        if self.json {
            return Ok(output::json(&serde_json::json!({
                "messages": rows,
                "nextOffset": answer.next_offset,
                "minOffset": answer.min_offset,
                "maxOffset": answer.max_offset,
            })));
        }
        Ok(format!(
            "{}\nqueue {} offsets [{}, {}), next offset {}\n",
            output::table(&rows),
            request.queue_id,
            answer.min_offset,
            answer.max_offset,
            answer.next_offset
        ))
    }

    /// Asks the leader of every group; message ids are unique, the first hit wins.
    async fn query_by_id(&self, n: &NamesrvArg, message_id: &str) -> Result<String> {
        let (_, info) = self.cluster_info(n).await?;
        if info.brokers.is_empty() {
            bail!("no live broker on the name server");
        }
        for group in &info.brokers {
            let addr = leader_addr(group)?;
            let request = pb::QueryMessageByIdRequest { message_id: message_id.to_string() };
            let (_, answer) = self
                .on_leader(addr, "queryMsgById", |mut c| {
                    let request = request.clone();
                    async move { c.query_message_by_id(request).await }
                })
                .await?;
            if let Some(message) = answer.message {
                let row = output::message_row(&message);
                return Ok(self.render(&row, output::message_details));
            }
        }
        bail!("message {message_id} not found on any broker group")
    }

    async fn consumer_progress(&self, n: &NamesrvArg, group: String) -> Result<String> {
        let (_, info) = self.cluster_info(n).await?;
        let mut rows = Vec::new();
        for broker_group in &info.brokers {
            let addr = leader_addr(broker_group)?;
            let request = pb::ConsumerProgressRequest { group: group.clone() };
            let (_, answer) = self
                .on_leader(addr, "consumerProgress", |mut c| {
                    let request = request.clone();
                    async move { c.consumer_progress(request).await }
                })
                .await?;
            rows.extend(output::progress_rows(&answer));
        }
        if rows.is_empty() && !group.is_empty() {
            bail!("consumer group {group} has no offsets on any broker group");
        }
        let report = output::progress_report(rows);
        Ok(self.render(&report, output::progress_text))
    }
}

/// The client address of a group's leader (or standalone node).
fn leader_addr(group: &pb_ns::BrokerData) -> Result<&str> {
    group
        .nodes
        .iter()
        .find(|node| matches!(pb_ns::Role::try_from(node.role), Ok(pb_ns::Role::Leader) | Ok(pb_ns::Role::Standalone)))
        .map(|node| node.client_addr.as_str())
        .ok_or_else(|| anyhow!("broker group {} has no leader right now (election in progress?)", group.broker_name))
}

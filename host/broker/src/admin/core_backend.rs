//! [`AdminBackend`] on the real broker: the broker core, its replicator and its plugin
//! registry, plus [`mount`], which `server.rs` calls to serve `wasmq.admin.Admin` on the
//! client listener.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tonic::service::RoutesBuilder;
use wasmq_proto::wasmq::admin as pb;

use super::backend::{AdminBackend, AdminError, AdminResult};
use crate::core::{BrokerCore, TopicSpec};
use crate::messaging::backend::{BackendError, MessagingBackend, OutgoingMessage, StoredMessage};
use crate::replication::{ReplicationError, Role};
use crate::server::BrokerContext;

/// Body bytes one ConsumeMessage answer may carry (gRPC's default message cap is 4 MiB).
const CONSUME_BYTES_MAX: u64 = 3 * 1024 * 1024;
/// queryMsgById scans queues (there is no message-id index); this bounds one query.
pub const QUERY_SCAN_MESSAGES_MAX: u64 = 200_000;
const QUERY_SCAN_BATCH: u32 = 256;

/// Serves `wasmq.admin.Admin` for this broker on the client listener.
pub fn mount(ctx: &BrokerContext, routes: &mut RoutesBuilder) -> anyhow::Result<()> {
    let backend = CoreAdmin::new(ctx);
    routes.add_service(super::service(Arc::new(backend), ctx.stop.clone()));
    Ok(())
}

pub struct CoreAdmin {
    core: Arc<BrokerCore>,
    plugin_dir: String,
    started: Instant,
}

impl CoreAdmin {
    pub fn new(ctx: &BrokerContext) -> CoreAdmin {
        CoreAdmin {
            core: ctx.core.clone(),
            plugin_dir: ctx.config.plugin_dir().map(|d| d.display().to_string()).unwrap_or_default(),
            started: Instant::now(),
        }
    }
}

fn admin_error(e: BackendError) -> AdminError {
    match e {
        BackendError::TopicNotFound(t) => AdminError::NotFound(format!("topic {t}")),
        BackendError::NotLeader { leader } => AdminError::NotLeader { leader },
        e @ (BackendError::MessageTooLarge { .. } | BackendError::PluginReject(_) | BackendError::BadRequest(_)) => {
            AdminError::InvalidArgument(e.to_string())
        }
        BackendError::Timeout(m) => AdminError::Unavailable(m),
        BackendError::Internal(m) => AdminError::Internal(m),
    }
}

fn role(r: Role) -> pb::Role {
    match r {
        Role::Standalone => pb::Role::Standalone,
        Role::Leader => pb::Role::Leader,
        Role::Follower => pb::Role::Follower,
        Role::Candidate => pb::Role::Candidate,
    }
}

fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn message(m: StoredMessage) -> pb::Message {
    pb::Message {
        message_id: m.message_id,
        topic: m.topic,
        tag: m.tag.unwrap_or_default(),
        keys: m.keys,
        properties: m.properties.into_iter().collect(),
        body: m.body,
        queue_id: m.queue_id,
        queue_offset: m.queue_offset,
        // Not carried by the read path.
        commit_index: 0,
        born_timestamp_ms: ms_i64(m.born_timestamp_ms),
        store_timestamp_ms: ms_i64(m.store_timestamp_ms),
        born_host: m.born_host,
    }
}

fn topic_config(t: &wasmq_storage::record::TopicConfigRecord) -> pb::TopicConfig {
    pb::TopicConfig {
        name: t.topic.clone(),
        read_queue_nums: t.read_queue_nums,
        write_queue_nums: t.write_queue_nums,
        perm: t.perm,
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl CoreAdmin {
    /// Store time of the last message of a queue (0 when empty): one single-message read.
    async fn last_store_time(&self, topic: &str, queue_id: u32, max_offset: u64) -> i64 {
        if max_offset == 0 {
            return 0;
        }
        match self.core.read(topic, queue_id, max_offset - 1, 1, u64::MAX).await {
            Ok(mut ms) => ms.pop().map_or(0, |m| ms_i64(m.store_timestamp_ms)),
            Err(_) => 0,
        }
    }
}

#[async_trait]
impl AdminBackend for CoreAdmin {
    async fn broker_status(&self) -> AdminResult<pb::BrokerStatusResponse> {
        let s = self.core.status();
        let r = &s.replication;
        let peers = r
            .peers
            .iter()
            .map(|p| pb::PeerStatus {
                node_id: p.id.clone(),
                raft_addr: p.address.clone(),
                match_index: p.match_index,
                lag_entries: r.last_index.saturating_sub(p.match_index),
            })
            .collect();
        Ok(pb::BrokerStatusResponse {
            cluster_name: s.cluster_name,
            broker_name: s.broker_name,
            node_id: s.node_id,
            role: role(r.role) as i32,
            term: r.term,
            leader_id: r.leader_id.clone().unwrap_or_default(),
            last_index: s.last_index,
            committed_index: r.commit_index,
            applied_index: s.applied_index,
            peers,
            disk_used_bytes: s.disk.commit_log_bytes,
            disk_total_bytes: s.disk.fs_total_bytes,
            disk_free_bytes: s.disk.fs_available_bytes,
            store_dir: self.core.options().store_root.display().to_string(),
            topics: s
                .topics
                .iter()
                .map(|t| pb::TopicConfig {
                    name: t.name.clone(),
                    read_queue_nums: t.read_queue_nums,
                    write_queue_nums: t.write_queue_nums,
                    perm: t.perm,
                })
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        })
    }

    async fn update_topic(&self, topic: pb::TopicConfig) -> AdminResult<pb::UpdateTopicResponse> {
        let existing = self.core.topic(&topic.name);
        let mut spec = TopicSpec::new(&topic.name, topic.write_queue_nums);
        spec.read_queue_nums = topic.read_queue_nums;
        spec.perm = topic.perm;
        if let Some(old) = &existing {
            // updateTopic has no type flag: keep the topic's type.
            spec.message_type = old.message_type;
        }
        self.core.update_topic(spec).await.map_err(admin_error)?;
        let now = self
            .core
            .topic(&topic.name)
            .ok_or_else(|| AdminError::Internal(format!("topic {} missing after update", topic.name)))?;
        Ok(pb::UpdateTopicResponse { existed: existing.is_some(), topic: Some(topic_config(&now)) })
    }

    async fn topic_status(&self, topic: &str) -> AdminResult<pb::TopicStatusResponse> {
        let status = self.core.topic_status(topic).ok_or_else(|| AdminError::NotFound(format!("topic {topic}")))?;
        let mut queues = Vec::with_capacity(status.queues.len());
        for q in status.queues {
            queues.push(pb::QueueStatus {
                queue_id: q.queue_id,
                min_offset: q.min_offset,
                max_offset: q.max_offset,
                last_update_timestamp_ms: self.last_store_time(topic, q.queue_id, q.max_offset).await,
            });
        }
        Ok(pb::TopicStatusResponse { broker_name: self.core.options().broker_name.clone(), queues })
    }

    async fn send_message(&self, r: pb::SendMessageRequest) -> AdminResult<pb::SendMessageResponse> {
        let message_id = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        let outcome = self
            .core
            .send(OutgoingMessage {
                topic: r.topic,
                message_id,
                tag: Some(r.tag).filter(|t| !t.is_empty()),
                keys: r.keys,
                properties: r.properties.into_iter().collect(),
                message_group: None,
                queue_id: r.queue_id,
                born_timestamp_ms: now_ms(),
                born_host: "mqadmin".into(),
                delivery_timestamp_ms: None,
                reconsume_times: 0,
                body: r.body,
            })
            .await
            .map_err(admin_error)?;
        Ok(pb::SendMessageResponse {
            message_id: outcome.message_id,
            queue_id: outcome.queue_id,
            queue_offset: outcome.queue_offset,
            commit_index: 0,
            broker_name: self.core.options().broker_name.clone(),
            topic: outcome.topic,
        })
    }

    async fn consume_message(&self, r: pb::ConsumeMessageRequest) -> AdminResult<pb::ConsumeMessageResponse> {
        let min_offset = self.core.min_offset(&r.topic, r.queue_id).await.map_err(admin_error)?;
        let max_offset = self.core.max_offset(&r.topic, r.queue_id).await.map_err(admin_error)?;
        let messages = if r.offset >= max_offset {
            Vec::new()
        } else {
            self.core.read(&r.topic, r.queue_id, r.offset, r.max_count, CONSUME_BYTES_MAX).await.map_err(admin_error)?
        };
        let next_offset = messages.last().map_or(r.offset.max(min_offset).min(max_offset), |m| m.queue_offset + 1);
        Ok(pb::ConsumeMessageResponse {
            messages: messages.into_iter().map(message).collect(),
            next_offset,
            min_offset,
            max_offset,
        })
    }

    async fn query_message_by_id(&self, message_id: &str) -> AdminResult<Option<pb::Message>> {
        // No id index: scan every readable queue, bounded in messages read.
        let mut scanned: u64 = 0;
        for topic in self.core.topics() {
            let queues = topic.read_queue_nums.max(topic.write_queue_nums);
            for queue_id in 0..queues {
                let Some((min, max)) = self.core.queue_offsets(&topic.topic, queue_id) else {
                    continue;
                };
                let mut offset = min;
                while offset < max {
                    if scanned >= QUERY_SCAN_MESSAGES_MAX {
                        return Err(AdminError::Unavailable(format!(
                            "message {message_id} not found in the {QUERY_SCAN_MESSAGES_MAX} \
                             messages scanned (the scan limit); there is no message-id index"
                        )));
                    }
                    let batch =
                        match self.core.read(&topic.topic, queue_id, offset, QUERY_SCAN_BATCH, CONSUME_BYTES_MAX).await
                        {
                            Ok(batch) => batch,
                            // Unreadable topic (perm): nothing to find there.
                            Err(BackendError::BadRequest(_)) => break,
                            Err(e) => return Err(admin_error(e)),
                        };
                    let Some(last) = batch.last() else { break };
                    offset = last.queue_offset + 1;
                    scanned += batch.len() as u64;
                    if let Some(found) = batch.into_iter().find(|m| m.message_id == message_id) {
                        return Ok(Some(message(found)));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn consumer_progress(&self, group: &str) -> AdminResult<pb::ConsumerProgressResponse> {
        let queues = self
            .core
            .consumer_offsets()
            .into_iter()
            .filter(|(g, _, _, _)| group.is_empty() || g == group)
            .map(|(group, topic, queue_id, consumer_offset)| {
                let broker_offset = self.core.queue_offsets(&topic, queue_id).map_or(0, |(_, max)| max);
                pb::QueueProgress {
                    group,
                    topic,
                    queue_id,
                    broker_offset,
                    consumer_offset,
                    lag: broker_offset.saturating_sub(consumer_offset),
                }
            })
            .collect();
        Ok(pb::ConsumerProgressResponse { broker_name: self.core.options().broker_name.clone(), queues })
    }

    async fn plugin_list(&self) -> AdminResult<pb::PluginListResponse> {
        let plugins = self
            .core
            .plugins()
            .map(|registry| registry.list())
            .unwrap_or_default()
            .into_iter()
            .map(|p| pb::PluginInfo {
                name: p.name,
                kind: p.kind.as_str().to_string(),
                topics: p.topics,
                groups: Vec::new(),
                order: i32::try_from(p.order).unwrap_or(if p.order < 0 { i32::MIN } else { i32::MAX }),
                on_error: p.on_error.as_str().to_string(),
                digest: p.sha256,
                loaded_at_ms: p.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| ms_i64(d.as_millis() as u64)),
                description: p.description,
                path: String::new(),
                calls: p.calls,
                errors: p.errors,
            })
            .collect();
        Ok(pb::PluginListResponse { plugin_dir: self.plugin_dir.clone(), plugins })
    }

    async fn plugin_reload(&self) -> AdminResult<pb::PluginReloadResponse> {
        let Some(registry) = self.core.plugins().cloned() else {
            return Err(AdminError::InvalidArgument("this broker has no pluginDir configured".into()));
        };
        // Compiling components is CPU-heavy and blocking.
        let report = tokio::task::spawn_blocking(move || registry.reload_now())
            .await
            .map_err(|e| AdminError::Internal(format!("plugin reload task: {e}")))?;
        let mut loaded = report.added;
        loaded.extend(report.replaced);
        Ok(pb::PluginReloadResponse {
            loaded,
            removed: report.removed,
            failed: report.rejected.into_iter().map(|(name, error)| format!("{name}: {error}")).collect(),
        })
    }

    async fn transfer_leader(&self, to_node_id: &str, timeout: Duration) -> AdminResult<pb::TransferLeaderResponse> {
        let replicator = self.core.replicator();
        let status = replicator.status();
        match status.role {
            Role::Standalone => {
                return Err(AdminError::InvalidArgument(
                    "a standalone broker has no group to transfer leadership in".into(),
                ));
            }
            Role::Leader => {}
            Role::Follower | Role::Candidate => {
                return Err(AdminError::NotLeader { leader: self.core.leader_endpoint() });
            }
        }
        let members = &self.core.options().members;
        if !members.iter().any(|(id, _)| id == to_node_id) {
            let ids: Vec<_> = members.iter().map(|(id, _)| id.as_str()).collect();
            return Err(AdminError::InvalidArgument(format!(
                "{to_node_id} is not a member of this group ({})",
                ids.join(", ")
            )));
        }
        if status.leader_id.as_deref() == Some(to_node_id) {
            return Ok(pb::TransferLeaderResponse { leader_id: to_node_id.to_string(), term: status.term });
        }
        match tokio::time::timeout(timeout, replicator.transfer_leadership(to_node_id)).await {
            Err(_) => {
                return Err(AdminError::Unavailable(format!(
                    "leadership did not move to {to_node_id} within {} ms",
                    timeout.as_millis()
                )));
            }
            Ok(Err(ReplicationError::NotLeader { leader_id })) => {
                return Err(AdminError::NotLeader {
                    leader: leader_id.and_then(|id| members.iter().find(|(m, _)| *m == id).map(|(_, e)| e.clone())),
                });
            }
            Ok(Err(e)) => return Err(AdminError::Unavailable(e.to_string())),
            Ok(Ok(())) => {}
        }
        let after = replicator.status();
        Ok(pb::TransferLeaderResponse { leader_id: after.leader_id.unwrap_or_default(), term: after.term })
    }
}

//! `MessagingBackend` for the broker core: what the RocketMQ v2 front end calls.

use std::time::Duration;

use async_trait::async_trait;
use wasmq_plugin::{ExpressionKind, FilterMessage, Properties};
use wasmq_storage::record::Record;

use super::BrokerCore;
use super::topics::topic_info;
use crate::messaging::backend::{
    BackendError, BackendResult, FilterKind, GroupMember, MessagingBackend, OutgoingMessage, PERM_READ, RouteInfo,
    SendOutcome, StoredMessage, TopicInfo,
};

/// Messages per read call, whatever the caller asks.
pub const READ_COUNT_MAX: u32 = 1024;
/// Long-poll waits are capped: a client's own timeout is shorter anyway.
const WAIT_MS_MAX: u64 = 60_000;

impl BrokerCore {
    fn readable_queue(&self, topic: &str, queue_id: u32) -> BackendResult<()> {
        let t = self.store.topic(topic).ok_or_else(|| BackendError::TopicNotFound(topic.to_string()))?;
        if t.perm & PERM_READ == 0 {
            return Err(BackendError::BadRequest(format!("topic {topic} is not readable")));
        }
        if queue_id >= t.read_queue_nums.max(t.write_queue_nums) {
            return Err(BackendError::BadRequest(format!(
                "topic {topic} has no queue {queue_id} ({} read queues)",
                t.read_queue_nums
            )));
        }
        Ok(())
    }

    fn max_offset_now(&self, topic: &str, queue_id: u32) -> u64 {
        self.store.queue_offsets(topic, queue_id).map(|(_, max)| max).unwrap_or(0)
    }
}

#[async_trait]
impl MessagingBackend for BrokerCore {
    async fn topic(&self, topic: &str) -> BackendResult<Option<TopicInfo>> {
        if let Some(t) = self.store.topic(topic) {
            return Ok(Some(topic_info(&t)));
        }
        // As RocketMQ's route query with autoCreateTopicEnable: a producer's first route
        // lookup creates the topic (on the leader; followers just answer "not found").
        let creatable = self.options.auto_create_topic || super::topics::is_reserved(topic);
        if !creatable || !self.replicator.role().is_writable() || wasmq_storage::record::validate_topic(topic).is_err()
        {
            return Ok(None);
        }
        Ok(Some(topic_info(&self.topic_for_write(topic).await?)))
    }

    async fn route(&self) -> BackendResult<RouteInfo> {
        let leader = self.replicator.status().leader_id;
        let mut members: Vec<GroupMember> = self
            .options
            .members
            .iter()
            .map(|(id, endpoint)| GroupMember {
                client_endpoint: endpoint.clone(),
                is_leader: leader.as_deref() == Some(id.as_str()),
            })
            .collect();
        // Leader first (stable sort keeps config order otherwise).
        members.sort_by_key(|m| !m.is_leader);
        Ok(RouteInfo { broker_name: self.options.broker_name.clone(), members })
    }

    async fn send_batch(&self, msgs: Vec<OutgoingMessage>) -> Vec<BackendResult<SendOutcome>> {
        self.send_messages(msgs).await
    }

    async fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: u32,
        max_bytes: u64,
    ) -> BackendResult<Vec<StoredMessage>> {
        self.readable_queue(topic, queue_id)?;
        let max_count = max_count.clamp(1, READ_COUNT_MAX);
        let store = self.store.clone();
        let topic_name = topic.to_string();
        let store_host = self.options.self_endpoint.clone();
        let records =
            tokio::task::spawn_blocking(move || store.read(&topic_name, queue_id, offset, max_count, max_bytes))
                .await
                .map_err(|e| BackendError::Internal(format!("read task: {e}")))?
                .map_err(|e| BackendError::Internal(e.to_string()))?;
        let mut out = Vec::with_capacity(records.len());
        let mut previous: Option<u64> = None;
        for (queue_offset, r) in records {
            assert!(
                queue_offset >= offset && previous.is_none_or(|p| p < queue_offset),
                "read from {offset} returned offset {queue_offset} after {previous:?}"
            );
            previous = Some(queue_offset);
            assert_eq!(r.queue_id, queue_id);
            out.push(StoredMessage {
                topic: r.topic,
                queue_id,
                queue_offset,
                message_id: r.message_id,
                tag: r.tag,
                keys: r.keys,
                properties: r.properties.into_iter().collect(),
                message_group: r.message_group,
                born_timestamp_ms: r.born_timestamp_ms.max(0) as u64,
                born_host: r.born_host,
                store_timestamp_ms: r.store_timestamp_ms.max(0) as u64,
                store_host: store_host.clone(),
                delivery_timestamp_ms: r.delivery_timestamp_ms.map(|t| t.max(0) as u64),
                reconsume_times: r.reconsume_times,
                body: r.body,
            });
        }
        Ok(out)
    }

    async fn min_offset(&self, topic: &str, queue_id: u32) -> BackendResult<u64> {
        self.readable_queue(topic, queue_id)?;
        Ok(self.store.queue_offsets(topic, queue_id).map(|(min, _)| min).unwrap_or(0))
    }

    async fn max_offset(&self, topic: &str, queue_id: u32) -> BackendResult<u64> {
        self.readable_queue(topic, queue_id)?;
        Ok(self.max_offset_now(topic, queue_id))
    }

    async fn wait_for_new(
        &self,
        topic: &str,
        queue_id: u32,
        after_offset: u64,
        timeout: Duration,
    ) -> BackendResult<u64> {
        self.readable_queue(topic, queue_id)?;
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_millis(WAIT_MS_MAX));
        let mut applied = self.applied.clone();
        loop {
            // Mark the current value seen before checking, so an apply between the check
            // and the wait still wakes us.
            applied.borrow_and_update();
            let max = self.max_offset_now(topic, queue_id);
            if max > after_offset {
                return Ok(max);
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(self.max_offset_now(topic, queue_id)),
            }
        }
    }

    async fn commit_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> BackendResult<()> {
        wasmq_storage::record::validate_group(group).map_err(|e| BackendError::BadRequest(e.to_string()))?;
        self.readable_queue(topic, queue_id)?;
        self.replicate(&[Record::ConsumerOffset {
            group: group.to_string(),
            topic: topic.to_string(),
            queue_id,
            offset,
        }])
        .await?;
        Ok(())
    }

    async fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> BackendResult<Option<u64>> {
        Ok(self.store.consumer_offset(group, topic, queue_id))
    }

    async fn filter(
        &self,
        group: &str,
        topic: &str,
        kind: FilterKind,
        expression: &str,
        messages: &[StoredMessage],
    ) -> BackendResult<Vec<bool>> {
        let has_filter = self.plugins.as_ref().is_some_and(|p| p.has_filters_for(group, topic));
        if !has_filter {
            return match kind {
                FilterKind::Tag => Ok(vec![true; messages.len()]),
                FilterKind::Sql92 => Err(BackendError::BadRequest(format!(
                    "no filter plugin for group {group} / topic {topic} can evaluate SQL92"
                ))),
            };
        }
        let plugins = self.plugins.clone().expect("checked above");
        let (group, topic, expression) = (group.to_string(), topic.to_string(), expression.to_string());
        let messages = messages.to_vec();
        let kind = match kind {
            FilterKind::Tag => ExpressionKind::Tag,
            FilterKind::Sql92 => ExpressionKind::Sql92,
        };
        tokio::task::spawn_blocking(move || {
            let props: Vec<Vec<(String, String)>> =
                messages.iter().map(|m| m.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).collect();
            let views: Vec<FilterMessage<'_>> = messages
                .iter()
                .zip(&props)
                .map(|(m, p)| FilterMessage {
                    tag: m.tag.as_deref(),
                    keys: &m.keys,
                    properties: Properties::Pairs(p),
                    queue_offset: m.queue_offset,
                    body: &m.body,
                })
                .collect();
            plugins.filter(&group, &topic, kind, &expression, &views)
        })
        .await
        .map_err(|e| BackendError::Internal(format!("filter task: {e}")))?
        .map_err(|e| BackendError::PluginReject(format!("filter: {e}")))
    }

    fn leader_client_endpoint(&self) -> Option<String> {
        self.leader_endpoint()
    }

    fn is_leader(&self) -> bool {
        self.replicator.role().is_writable()
    }

    fn max_message_size_bytes(&self) -> u64 {
        u64::from(self.options.max_message_size_bytes)
    }
}

//! The send path: limits → topic → router plugins → queue → encode → replicate → placement.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmq_plugin::{RouteInput, RouteOutcome};
use wasmq_storage::record::{MessageRecord, Record, TopicConfigRecord};

use super::BrokerCore;
use crate::messaging::backend::{BackendError, BackendResult, OutgoingMessage, PERM_WRITE, SendOutcome};

/// Redirects followed per message: a router may redirect to a topic whose router
/// redirects again, but not forever.
const REDIRECTS_MAX: usize = 4;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn to_i64(field: &str, v: u64) -> BackendResult<i64> {
    i64::try_from(v).map_err(|_| BackendError::BadRequest(format!("{field} {v} out of range")))
}

impl BrokerCore {
    pub(crate) async fn send_message(&self, msg: OutgoingMessage) -> BackendResult<SendOutcome> {
        let max = u64::from(self.options.max_message_size_bytes);
        if msg.body.len() as u64 > max {
            return Err(BackendError::MessageTooLarge { size_bytes: msg.body.len() as u64, max_bytes: max });
        }
        if msg.message_id.is_empty() {
            return Err(BackendError::BadRequest("empty message id".into()));
        }
        if !self.replicator.role().is_writable() {
            return Err(self.not_leader());
        }
        if self.disk_full.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(BackendError::Internal(format!(
                "disk full: the store's file system is past {}% used (diskSpaceWarningLevelRatio); send refused",
                self.options.disk.full_percent
            )));
        }
        let _permit =
            self.send_permits.acquire().await.map_err(|_| BackendError::Internal("broker core stopped".into()))?;

        let properties: Vec<(String, String)> = msg.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (topic, queue_id) = self.place(&msg, &properties).await?;
        let record = MessageRecord {
            topic: topic.topic.clone(),
            queue_id,
            tag: msg.tag.clone(),
            keys: msg.keys.clone(),
            properties,
            message_group: msg.message_group.clone(),
            born_timestamp_ms: to_i64("born_timestamp_ms", msg.born_timestamp_ms)?,
            store_timestamp_ms: now_ms(),
            born_host: msg.born_host.clone(),
            message_id: msg.message_id.clone(),
            delivery_timestamp_ms: msg.delivery_timestamp_ms.map(|t| to_i64("delivery_timestamp_ms", t)).transpose()?,
            reconsume_times: msg.reconsume_times,
            body: msg.body,
        };
        let range = self.replicate(&[Record::Message(record)]).await?;
        let placement = self.take_outcome(range.last).ok_or_else(|| {
            BackendError::Internal(format!("entry {} applied but its queue offset was not recorded", range.last))
        })?;
        assert_eq!(placement.queue_id, queue_id, "apply placed the message elsewhere");
        Ok(SendOutcome {
            message_id: msg.message_id,
            topic: topic.topic,
            queue_id,
            queue_offset: placement.queue_offset,
        })
    }

    /// Topic and queue for `msg`: router plugins first (first non-default decision wins,
    /// redirects followed up to [`REDIRECTS_MAX`]), else message-group hash / hint / round
    /// robin.
    async fn place(
        &self,
        msg: &OutgoingMessage,
        properties: &[(String, String)],
    ) -> BackendResult<(TopicConfigRecord, u32)> {
        let mut topic = self.writable_topic(&msg.topic).await?;
        for _ in 0..=REDIRECTS_MAX {
            let outcome = match &self.plugins {
                None => RouteOutcome::Default,
                Some(plugins) => {
                    let plugins = plugins.clone();
                    // Plugin calls are synchronous and may wait for an instance.
                    let topic_name = topic.topic.clone();
                    let queue_count = topic.write_queue_nums;
                    let (tag, keys, props, group, body) = (
                        msg.tag.clone(),
                        msg.keys.clone(),
                        properties.to_vec(),
                        msg.message_group.clone(),
                        msg.body.clone(),
                    );
                    tokio::task::spawn_blocking(move || {
                        plugins.route(&RouteInput {
                            topic: &topic_name,
                            tag: tag.as_deref(),
                            keys: &keys,
                            properties: &props,
                            message_group: group.as_deref(),
                            body: &body,
                            queue_count,
                        })
                    })
                    .await
                    .map_err(|e| BackendError::Internal(format!("router task: {e}")))?
                    .map_err(|e| BackendError::Internal(format!("router: {e}")))?
                }
            };
            match outcome {
                RouteOutcome::Default => break,
                RouteOutcome::Queue(q) if q < topic.write_queue_nums => return Ok((topic, q)),
                RouteOutcome::Queue(q) => {
                    // A plugin bug must not lose the message: fall back to the default.
                    tracing::warn!(topic = %topic.topic, queue = q, queues = topic.write_queue_nums,
                        "router chose a queue outside the topic; using the default choice");
                    break;
                }
                RouteOutcome::Reject(reason) => return Err(BackendError::PluginReject(reason)),
                RouteOutcome::Redirect(to) => {
                    if to == topic.topic {
                        break;
                    }
                    topic = self.writable_topic(&to).await?;
                    continue;
                }
            }
        }
        let queue_id = self.chooser.choose(topic.write_queue_nums, msg.message_group.as_deref(), msg.queue_id);
        Ok((topic, queue_id))
    }

    async fn writable_topic(&self, name: &str) -> BackendResult<TopicConfigRecord> {
        let topic = self.topic_for_write(name).await?;
        if topic.perm & PERM_WRITE == 0 || topic.write_queue_nums == 0 {
            return Err(BackendError::BadRequest(format!("topic {name} is not writable")));
        }
        Ok(topic)
    }
}

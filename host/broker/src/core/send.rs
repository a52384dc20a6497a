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
    /// Stores `msgs` (one client request) with **one** proposal, so a batch of N costs one
    /// replication round and one apply wait instead of N in a row. Each message is checked
    /// and placed on its own: one result per message, in order, and a message refused
    /// (too large, rejected by a router, ...) does not hold back the others. The accepted
    /// ones are consecutive in the log, in request order.
    pub(crate) async fn send_messages(&self, msgs: Vec<OutgoingMessage>) -> Vec<BackendResult<SendOutcome>> {
        assert!(!msgs.is_empty(), "an empty batch is refused by the front end");
        let mut results: Vec<BackendResult<SendOutcome>> = Vec::with_capacity(msgs.len());
        // Also bounds how many sends wait for a commit at once; a batch takes up to its
        // size (capped, so one large batch can still go alone).
        let permits_len = msgs.len().min(self.options.send_concurrency_max as usize) as u32;
        let Ok(_permits) = self.send_permits.acquire_many(permits_len).await else {
            return msgs.iter().map(|_| Err(BackendError::Internal("broker core stopped".into()))).collect();
        };
        let mut payloads = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let prepared = self.prepare(msg).await.and_then(|(outcome, record)| {
                let payload = super::encode_record(&Record::Message(record))?;
                Ok((outcome, payload))
            });
            results.push(prepared.map(|(outcome, payload)| {
                payloads.push(payload);
                outcome
            }));
        }
        if payloads.is_empty() {
            return results;
        }
        let range = match self.replicate_encoded(payloads).await {
            Ok(range) => range,
            Err(e) => {
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(e.clone());
                }
                return results;
            }
        };
        // The accepted messages took the entries of `range` in order.
        let mut indexes = range.indexes();
        for r in results.iter_mut() {
            let Ok(outcome) = r else { continue };
            let index = indexes.next().expect("one entry per accepted message");
            match self.take_outcome(index) {
                Some(p) => {
                    assert_eq!(p.queue_id, outcome.queue_id, "apply placed the message elsewhere");
                    outcome.queue_offset = p.queue_offset;
                }
                None => {
                    *r = Err(BackendError::Internal(format!(
                        "entry {index} applied but its queue offset was not recorded"
                    )))
                }
            }
        }
        assert!(indexes.next().is_none(), "every entry of the proposal belongs to a message");
        results
    }

    /// Checks one message and places it: the outcome (offset still unknown) and its record.
    async fn prepare(&self, msg: OutgoingMessage) -> BackendResult<(SendOutcome, MessageRecord)> {
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
        let properties: Vec<(String, String)> = msg.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (topic, queue_id) = self.place(&msg, &properties).await?;
        let outcome =
            SendOutcome { message_id: msg.message_id.clone(), topic: topic.topic.clone(), queue_id, queue_offset: 0 };
        let record = MessageRecord {
            topic: topic.topic,
            queue_id,
            tag: msg.tag,
            keys: msg.keys,
            properties,
            message_group: msg.message_group,
            born_timestamp_ms: to_i64("born_timestamp_ms", msg.born_timestamp_ms)?,
            store_timestamp_ms: now_ms(),
            born_host: msg.born_host,
            message_id: msg.message_id,
            delivery_timestamp_ms: msg.delivery_timestamp_ms.map(|t| to_i64("delivery_timestamp_ms", t)).transpose()?,
            reconsume_times: msg.reconsume_times,
            body: msg.body,
        };
        Ok((outcome, record))
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
                // Most topics have no router: no hand-off to a blocking thread (two context
                // switches and copies of the message) for them.
                Some(plugins) if plugins.has_routers_for(&topic.topic) => {
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
                _ => RouteOutcome::Default,
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

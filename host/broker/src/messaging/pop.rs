//! SimpleConsumer / PushConsumer delivery state ("pop" semantics), leader only.
//!
//! Per (group, topic, queue): a cursor (next offset never handed out by this node), the
//! in-flight (invisible) messages with their attempt and deadline, and acks that
//! arrived for offsets beyond the cursor (handles issued by a previous leader). The
//! committed consumer offset is the lowest offset still pending: the lowest in-flight
//! offset, else the cursor. It is stored through the backend (replicated), so a new
//! leader restarts from it: messages in flight on the old leader are delivered again
//! (at-least-once), and acks carrying the old leader's handles still work because the
//! handle names the queue offset.
//!
//! This state is in memory and bounded: in-flight entries per queue, queues tracked.
//! Invisibility expiry is evaluated lazily on the next receive of that queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use super::backend::{
    BackendError, BackendResult, FilterKind, MessagingBackend, OutgoingMessage, StoredMessage, TopicInfo,
    TopicMessageType,
};
use super::receipt_handle::ReceiptHandle;
use super::tag_expression::TagExpression;

/// Upper bounds of the pop state; see module docs.
#[derive(Clone, Debug)]
pub struct PopLimits {
    pub inflight_per_queue_max: usize,
    pub acked_ahead_per_queue_max: usize,
    pub queues_max: usize,
    /// Messages examined (including filtered out) per receive call.
    pub scan_per_receive_max: u32,
    /// Body bytes per backend read.
    pub read_bytes_max: u64,
    /// Consumer offsets are replicated at most this often per queue (each commit is a
    /// replicated write; acks arrive one RPC per message). `flush` writes the rest.
    /// 0 = commit on every advance.
    pub commit_interval_ms: u64,
}

impl Default for PopLimits {
    fn default() -> Self {
        PopLimits {
            inflight_per_queue_max: 4096,
            acked_ahead_per_queue_max: 4096,
            queues_max: 16_384,
            scan_per_receive_max: 1024,
            read_bytes_max: 16 * 1024 * 1024,
            commit_interval_ms: 100,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Inflight {
    attempt: u32,
    deadline_ms: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Next offset never handed out (by this node since it became leader).
    cursor: u64,
    /// Last value given to backend.commit_offset (or loaded from it).
    committed: u64,
    inflight: BTreeMap<u64, Inflight>,
    /// Acked offsets ≥ cursor: skip them when the cursor gets there.
    acked_ahead: BTreeSet<u64>,
    /// When `committed` was last written.
    committed_at: Option<std::time::Instant>,
}

impl QueueState {
    fn commit_point(&self) -> u64 {
        self.inflight.keys().next().copied().unwrap_or(self.cursor).min(self.cursor)
    }
}

/// The subscription of one receive call.
#[derive(Clone, Debug)]
pub enum Subscription {
    Tag(TagExpression),
    /// Evaluated by the filter plugins through the backend.
    Sql92(String),
}

/// One message handed to a consumer.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub message: StoredMessage,
    pub handle: ReceiptHandle,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PopError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("too many tracked queues ({0}); retry later")]
    TooManyQueues(usize),
    #[error("too many acks ahead of delivery for this queue ({0})")]
    TooManyAckedAhead(usize),
    #[error("message at offset {0} was already acknowledged")]
    AlreadyAcked(u64),
}

pub struct ReceiveRequest<'a> {
    pub group: &'a str,
    pub topic: &'a TopicInfo,
    pub queue_id: u32,
    pub subscription: &'a Subscription,
    pub batch_max: u32,
    pub invisible_ms: u64,
    pub max_attempts: u32,
    pub now_ms: u64,
}

pub struct PopService {
    backend: Arc<dyn MessagingBackend>,
    limits: PopLimits,
    /// Woken when an invisibility deadline moves earlier or later (long polls re-plan).
    deadline_moved: Arc<tokio::sync::Notify>,
    queues: Mutex<HashMap<QueueKey, Arc<tokio::sync::Mutex<Option<QueueState>>>>>,
}

pub fn dlq_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

impl PopService {
    pub fn new(backend: Arc<dyn MessagingBackend>, limits: PopLimits) -> Self {
        assert!(limits.inflight_per_queue_max > 0 && limits.queues_max > 0 && limits.scan_per_receive_max > 0);
        PopService {
            backend,
            limits,
            queues: Mutex::new(HashMap::new()),
            deadline_moved: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Drops all state (this node lost or regained leadership: whatever it knew may
    /// be stale; the committed offsets in the backend are the truth).
    pub fn reset(&self) {
        self.queues.lock().clear();
    }

    /// Completes at the next invisibility change after this call (not before it).
    pub fn deadlines_changed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let notify = self.deadline_moved.clone();
        let mut notified = Box::pin(async move { notify.notified_owned().await });
        // Poll once so the waiter is registered now, not when first awaited.
        let _ = futures::FutureExt::now_or_never(&mut notified);
        notified
    }

    /// Forgets one queue (its offset was set from outside): reloaded on next use.
    pub fn forget(&self, key: &QueueKey) {
        self.queues.lock().remove(key);
    }

    fn queue(&self, key: &QueueKey) -> Result<Arc<tokio::sync::Mutex<Option<QueueState>>>, PopError> {
        let mut queues = self.queues.lock();
        if let Some(q) = queues.get(key) {
            return Ok(q.clone());
        }
        if queues.len() >= self.limits.queues_max {
            // Forget idle queues (nothing in flight): their progress is committed.
            queues.retain(|_, q| {
                q.try_lock().map(|s| s.as_ref().is_some_and(|s| !s.inflight.is_empty())).unwrap_or(true)
            });
            if queues.len() >= self.limits.queues_max {
                return Err(PopError::TooManyQueues(queues.len()));
            }
        }
        Ok(queues.entry(key.clone()).or_default().clone())
    }

    async fn load(&self, key: &QueueKey, slot: &mut Option<QueueState>) -> BackendResult<()> {
        if slot.is_some() {
            return Ok(());
        }
        let min = self.backend.min_offset(&key.topic, key.queue_id).await?;
        // A group that never committed starts at the oldest retained message.
        let committed =
            self.backend.consumer_offset(&key.group, &key.topic, key.queue_id).await?.unwrap_or(min).max(min);
        *slot = Some(QueueState { cursor: committed, committed, ..Default::default() });
        Ok(())
    }

    async fn commit_if_advanced(&self, key: &QueueKey, st: &mut QueueState, force: bool) -> BackendResult<()> {
        let point = st.commit_point();
        if point <= st.committed {
            return Ok(());
        }
        let interval = std::time::Duration::from_millis(self.limits.commit_interval_ms);
        let due = force || st.committed_at.is_none_or(|at| at.elapsed() >= interval);
        if due {
            self.backend.commit_offset(&key.group, &key.topic, key.queue_id, point).await?;
            st.committed = point;
            st.committed_at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Writes every queue's pending progress. Run periodically (every
    /// `commit_interval_ms`) by the service, and before shutdown.
    pub async fn flush(&self) -> Result<(), PopError> {
        let queues: Vec<(QueueKey, Arc<tokio::sync::Mutex<Option<QueueState>>>)> =
            self.queues.lock().iter().map(|(k, q)| (k.clone(), q.clone())).collect();
        let mut first_error = None;
        for (key, q) in queues {
            let mut slot = q.lock().await;
            if let Some(st) = slot.as_mut() {
                if let Err(e) = self.commit_if_advanced(&key, st, true).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Expired invisible messages first (attempt + 1, or to the DLQ past
    /// `max_attempts`), then new messages from the cursor that match the subscription.
    /// Empty if there is nothing now (the caller long-polls).
    pub async fn receive(&self, req: &ReceiveRequest<'_>) -> Result<Vec<Delivered>, PopError> {
        assert!(req.batch_max >= 1 && req.max_attempts >= 1);
        let key = QueueKey { group: req.group.to_string(), topic: req.topic.name.clone(), queue_id: req.queue_id };
        let q = self.queue(&key)?;
        let mut slot = q.lock().await;
        self.load(&key, &mut slot).await?;
        let st = slot.as_mut().expect("loaded");
        let mut out = Vec::new();
        let deadline_ms = req.now_ms.saturating_add(req.invisible_ms);

        // 1. Redeliveries.
        let expired: Vec<(u64, Inflight)> = st
            .inflight
            .iter()
            .filter(|(_, i)| i.deadline_ms <= req.now_ms)
            .map(|(o, i)| (*o, *i))
            .take(req.batch_max as usize)
            .collect();
        for (offset, inflight) in expired {
            let found = self.backend.read(&key.topic, key.queue_id, offset, 1, self.limits.read_bytes_max).await?;
            let Some(message) = found.into_iter().find(|m| m.queue_offset == offset) else {
                // Gone (retention): nothing left to deliver.
                st.inflight.remove(&offset);
                continue;
            };
            let attempt = inflight.attempt + 1;
            if attempt > req.max_attempts {
                self.to_dead_letter(&key.group, &message, inflight.attempt).await?;
                st.inflight.remove(&offset);
                continue;
            }
            st.inflight.insert(offset, Inflight { attempt, deadline_ms });
            out.push(self.delivered(&key, message, attempt, deadline_ms));
        }

        // 2. New messages. FIFO topics: nothing new while the queue has messages in
        // flight, so a message group is never consumed out of order.
        let fifo = req.topic.message_type == TopicMessageType::Fifo;
        let mut scanned = 0u32;
        while out.len() < req.batch_max as usize
            && st.inflight.len() < self.limits.inflight_per_queue_max
            && !(fifo && !st.inflight.is_empty())
            && scanned < self.limits.scan_per_receive_max
        {
            let want = (req.batch_max as usize - out.len())
                .min(self.limits.inflight_per_queue_max - st.inflight.len())
                .min((self.limits.scan_per_receive_max - scanned) as usize) as u32;
            let min = self.backend.min_offset(&key.topic, key.queue_id).await?;
            if st.cursor < min {
                st.cursor = min;
                st.inflight.retain(|o, _| *o >= min);
            }
            let batch =
                self.backend.read(&key.topic, key.queue_id, st.cursor, want, self.limits.read_bytes_max).await?;
            if batch.is_empty() {
                break;
            }
            scanned += batch.len() as u32;
            let mut fresh = Vec::with_capacity(batch.len());
            for m in batch {
                assert!(m.queue_offset >= st.cursor, "backend read went backwards");
                st.cursor = m.queue_offset + 1;
                if st.acked_ahead.remove(&m.queue_offset) || st.inflight.contains_key(&m.queue_offset) {
                    continue;
                }
                fresh.push(m);
            }
            for m in select(self.backend.as_ref(), &key.group, &key.topic, req.subscription, fresh).await? {
                st.inflight.insert(m.queue_offset, Inflight { attempt: 1, deadline_ms });
                out.push(self.delivered(&key, m, 1, deadline_ms));
            }
        }
        // Skipped (filtered) messages count as consumed.
        self.commit_if_advanced(&key, st, false).await?;
        Ok(out)
    }

    fn delivered(&self, key: &QueueKey, message: StoredMessage, attempt: u32, deadline_ms: u64) -> Delivered {
        let handle = ReceiptHandle {
            group: key.group.clone(),
            topic: key.topic.clone(),
            queue_id: key.queue_id,
            queue_offset: message.queue_offset,
            attempt,
            deadline_ms,
        };
        Delivered { message, handle }
    }

    /// Earliest invisibility deadline of the queue (to bound a long poll).
    pub async fn next_deadline_ms(&self, key: &QueueKey) -> Option<u64> {
        let q = self.queues.lock().get(key).cloned()?;
        let slot = q.lock().await;
        slot.as_ref()?.inflight.values().map(|i| i.deadline_ms).min()
    }

    /// Next offset this queue would read (for long polling); loads the state.
    pub async fn cursor(&self, key: &QueueKey) -> Result<u64, PopError> {
        let q = self.queue(key)?;
        let mut slot = q.lock().await;
        self.load(key, &mut slot).await?;
        Ok(slot.as_ref().expect("loaded").cursor)
    }

    /// Acknowledges one message. Idempotent: acking an already-acked message is OK.
    pub async fn ack(&self, h: &ReceiptHandle) -> Result<(), PopError> {
        let key = QueueKey { group: h.group.clone(), topic: h.topic.clone(), queue_id: h.queue_id };
        let q = self.queue(&key)?;
        let mut slot = q.lock().await;
        self.load(&key, &mut slot).await?;
        let st = slot.as_mut().expect("loaded");
        if st.inflight.remove(&h.queue_offset).is_none() && h.queue_offset >= st.cursor {
            // Delivered by an earlier leader; remember so it is not delivered again.
            if st.acked_ahead.len() >= self.limits.acked_ahead_per_queue_max {
                return Err(PopError::TooManyAckedAhead(st.acked_ahead.len()));
            }
            st.acked_ahead.insert(h.queue_offset);
        }
        self.commit_if_advanced(&key, st, false).await?;
        Ok(())
    }

    /// Moves the invisibility deadline; returns the new handle.
    pub async fn change_invisible(
        &self,
        h: &ReceiptHandle,
        invisible_ms: u64,
        now_ms: u64,
    ) -> Result<ReceiptHandle, PopError> {
        let key = QueueKey { group: h.group.clone(), topic: h.topic.clone(), queue_id: h.queue_id };
        let q = self.queue(&key)?;
        let mut slot = q.lock().await;
        self.load(&key, &mut slot).await?;
        let st = slot.as_mut().expect("loaded");
        let deadline_ms = now_ms.saturating_add(invisible_ms);
        let attempt = match st.inflight.get_mut(&h.queue_offset) {
            Some(i) => {
                i.deadline_ms = deadline_ms;
                i.attempt
            }
            None if h.queue_offset < st.committed => return Err(PopError::AlreadyAcked(h.queue_offset)),
            None if h.queue_offset < st.cursor => return Err(PopError::AlreadyAcked(h.queue_offset)),
            None => {
                if st.acked_ahead.contains(&h.queue_offset) {
                    return Err(PopError::AlreadyAcked(h.queue_offset));
                }
                // Delivered by an earlier leader: track it from here on.
                if st.inflight.len() >= self.limits.inflight_per_queue_max {
                    return Err(PopError::TooManyAckedAhead(st.inflight.len()));
                }
                st.inflight.insert(h.queue_offset, Inflight { attempt: h.attempt, deadline_ms });
                h.attempt
            }
        };
        self.deadline_moved.notify_waiters();
        Ok(ReceiptHandle { attempt, deadline_ms, ..h.clone() })
    }

    /// Copies the message to `%DLQ%<group>` (the caller then acks it).
    pub async fn to_dead_letter(&self, group: &str, m: &StoredMessage, attempts: u32) -> BackendResult<()> {
        let mut properties = m.properties.clone();
        properties.insert("DLQ_ORIGIN_TOPIC".to_string(), m.topic.clone());
        properties.insert("DLQ_ORIGIN_MESSAGE_ID".to_string(), m.message_id.clone());
        self.backend
            .send(OutgoingMessage {
                topic: dlq_topic(group),
                message_id: m.message_id.clone(),
                tag: m.tag.clone(),
                keys: m.keys.clone(),
                properties,
                message_group: None,
                queue_id: None,
                born_timestamp_ms: m.born_timestamp_ms,
                born_host: m.born_host.clone(),
                delivery_timestamp_ms: None,
                reconsume_times: attempts,
                body: m.body.clone(),
            })
            .await?;
        Ok(())
    }

    /// Reads the message a handle points at (for ForwardMessageToDeadLetterQueue).
    pub async fn message_at(&self, h: &ReceiptHandle) -> BackendResult<Option<StoredMessage>> {
        let found = self.backend.read(&h.topic, h.queue_id, h.queue_offset, 1, self.limits.read_bytes_max).await?;
        Ok(found.into_iter().find(|m| m.queue_offset == h.queue_offset))
    }

    #[cfg(test)]
    pub(crate) async fn inflight_count(&self, key: &QueueKey) -> usize {
        let Some(q) = self.queues.lock().get(key).cloned() else { return 0 };
        let slot = q.lock().await;
        slot.as_ref().map(|s| s.inflight.len()).unwrap_or(0)
    }
}

/// The messages a subscription wants, in order: tags matched here, then the filter
/// plugins (through the backend) decide.
pub async fn select(
    backend: &dyn MessagingBackend,
    group: &str,
    topic: &str,
    subscription: &Subscription,
    messages: Vec<StoredMessage>,
) -> BackendResult<Vec<StoredMessage>> {
    let candidates: Vec<StoredMessage> = messages
        .into_iter()
        .filter(|m| match subscription {
            Subscription::Tag(t) => t.matches(m.tag.as_deref()),
            Subscription::Sql92(_) => true,
        })
        .collect();
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let (kind, expression) = match subscription {
        Subscription::Tag(_) => (FilterKind::Tag, tag_text(subscription)),
        Subscription::Sql92(e) => (FilterKind::Sql92, e.clone()),
    };
    let verdicts = backend.filter(group, topic, kind, &expression, &candidates).await?;
    if verdicts.len() != candidates.len() {
        return Err(BackendError::Internal(format!(
            "filter returned {} verdicts for {} messages",
            verdicts.len(),
            candidates.len()
        )));
    }
    Ok(candidates.into_iter().zip(verdicts).filter_map(|(m, deliver)| deliver.then_some(m)).collect())
}

fn tag_text(s: &Subscription) -> String {
    match s {
        Subscription::Tag(TagExpression::All) => "*".to_string(),
        Subscription::Tag(TagExpression::AnyOf(tags)) => tags.iter().cloned().collect::<Vec<_>>().join(" || "),
        Subscription::Sql92(e) => e.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::fake::{FakeBackend, props};

    async fn send(b: &FakeBackend, topic: &str, tag: &str, n: usize) {
        for i in 0..n {
            b.send(OutgoingMessage {
                topic: topic.into(),
                message_id: format!("id-{tag}-{i}"),
                tag: Some(tag.into()),
                keys: vec![],
                properties: props(&[("i", &i.to_string())]),
                message_group: None,
                queue_id: Some(0),
                born_timestamp_ms: 1,
                born_host: "h".into(),
                delivery_timestamp_ms: None,
                reconsume_times: 0,
                body: vec![b'x'; 3],
            })
            .await
            .unwrap();
        }
    }

    fn setup(t: TopicMessageType) -> (Arc<FakeBackend>, PopService, TopicInfo) {
        let b = FakeBackend::new("127.0.0.1:1");
        b.create_topic("t", 1, t);
        let pop = PopService::new(
            b.clone(),
            PopLimits { inflight_per_queue_max: 8, commit_interval_ms: 0, ..Default::default() },
        );
        let info = TopicInfo { name: "t".into(), read_queue_count: 1, write_queue_count: 1, perm: 6, message_type: t };
        (b, pop, info)
    }

    fn req<'a>(info: &'a TopicInfo, sub: &'a Subscription, batch: u32, now: u64) -> ReceiveRequest<'a> {
        ReceiveRequest {
            group: "g",
            topic: info,
            queue_id: 0,
            subscription: sub,
            batch_max: batch,
            invisible_ms: 1000,
            max_attempts: 3,
            now_ms: now,
        }
    }

    #[tokio::test]
    async fn deliver_ack_and_commit_contiguously() {
        let (b, pop, info) = setup(TopicMessageType::Normal);
        send(&b, "t", "A", 5).await;
        let all = Subscription::Tag(TagExpression::All);
        let got = pop.receive(&req(&info, &all, 3, 0)).await.unwrap();
        assert_eq!(got.iter().map(|d| d.message.queue_offset).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(got.iter().all(|d| d.handle.attempt == 1 && d.handle.deadline_ms == 1000));
        // Ack out of order: the commit only moves over a contiguous prefix.
        pop.ack(&got[1].handle).await.unwrap();
        assert_eq!(b.consumer_offset("g", "t", 0).await.unwrap(), None);
        pop.ack(&got[0].handle).await.unwrap();
        assert_eq!(b.consumer_offset("g", "t", 0).await.unwrap(), Some(2));
        pop.ack(&got[0].handle).await.unwrap(); // idempotent
        pop.ack(&got[2].handle).await.unwrap();
        assert_eq!(b.consumer_offset("g", "t", 0).await.unwrap(), Some(3));
        let rest = pop.receive(&req(&info, &all, 10, 0)).await.unwrap();
        assert_eq!(rest.len(), 2);
    }

    #[tokio::test]
    async fn expired_messages_come_back_with_the_next_attempt_then_go_to_the_dlq() {
        let (b, pop, info) = setup(TopicMessageType::Normal);
        send(&b, "t", "A", 1).await;
        let all = Subscription::Tag(TagExpression::All);
        let first = pop.receive(&req(&info, &all, 1, 0)).await.unwrap();
        assert_eq!(first[0].handle.attempt, 1);
        assert!(pop.receive(&req(&info, &all, 1, 999)).await.unwrap().is_empty(), "still invisible");
        let second = pop.receive(&req(&info, &all, 1, 1000)).await.unwrap();
        assert_eq!((second[0].handle.attempt, second[0].message.queue_offset), (2, 0));
        let third = pop.receive(&req(&info, &all, 1, 2000)).await.unwrap();
        assert_eq!(third[0].handle.attempt, 3);
        // max_attempts = 3: the fourth expiry moves it to the DLQ and commits past it.
        assert!(pop.receive(&req(&info, &all, 1, 3000)).await.unwrap().is_empty());
        let dlq = b.messages("%DLQ%g");
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq[0].message_id, "id-A-0");
        assert_eq!(dlq[0].properties.get("DLQ_ORIGIN_TOPIC").map(String::as_str), Some("t"));
        assert_eq!(b.consumer_offset("g", "t", 0).await.unwrap(), Some(1));
    }

    #[tokio::test]
    async fn tag_filter_skips_and_commits_past_unwanted_messages() {
        let (b, pop, info) = setup(TopicMessageType::Normal);
        send(&b, "t", "A", 3).await;
        send(&b, "t", "B", 2).await;
        let only_b = Subscription::Tag(TagExpression::parse("B").unwrap());
        let got = pop.receive(&req(&info, &only_b, 10, 0)).await.unwrap();
        assert_eq!(got.iter().map(|d| d.message.tag.clone().unwrap()).collect::<Vec<_>>(), vec!["B", "B"]);
        assert_eq!(b.consumer_offset("g", "t", 0).await.unwrap(), Some(3), "A messages skipped = consumed");
    }

    #[tokio::test]
    async fn sql_goes_through_the_backend_filter() {
        let (b, pop, info) = setup(TopicMessageType::Normal);
        send(&b, "t", "A", 4).await;
        let sql = Subscription::Sql92("i = '2'".into());
        let got = pop.receive(&req(&info, &sql, 10, 0)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.queue_offset, 2);
        let bad = Subscription::Sql92("i > 1".into());
        send(&b, "t", "A", 1).await;
        assert!(matches!(
            pop.receive(&req(&info, &bad, 10, 0)).await,
            Err(PopError::Backend(BackendError::BadRequest(_)))
        ));
    }

    #[tokio::test]
    async fn inflight_is_bounded() {
        let (b, pop, info) = setup(TopicMessageType::Normal);
        send(&b, "t", "A", 20).await;
        let all = Subscription::Tag(TagExpression::All);
        let got = pop.receive(&req(&info, &all, 32, 0)).await.unwrap();
        assert_eq!(got.len(), 8, "inflight_per_queue_max");
        assert!(pop.receive(&req(&info, &all, 32, 0)).await.unwrap().is_empty());
        let key = QueueKey { group: "g".into(), topic: "t".into(), queue_id: 0 };
        assert_eq!(pop.inflight_count(&key).await, 8);
    }

    #[tokio::test]
    async fn fifo_queue_waits_for_the_inflight_message() {
        let (b, pop, info) = setup(TopicMessageType::Fifo);
        send(&b, "t", "A", 3).await;
        let all = Subscription::Tag(TagExpression::All);
        let first = pop.receive(&req(&info, &all, 1, 0)).await.unwrap();
        assert_eq!(first[0].message.queue_offset, 0);
        assert!(pop.receive(&req(&info, &all, 5, 10)).await.unwrap().is_empty(), "0 is in flight");
        pop.ack(&first[0].handle).await.unwrap();
        let next = pop.receive(&req(&info, &all, 5, 10)).await.unwrap();
        assert_eq!(next.iter().map(|d| d.message.queue_offset).collect::<Vec<_>>(), vec![1, 2], "in order");
        assert!(pop.receive(&req(&info, &all, 5, 10)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn new_leader_honours_old_handles_and_resumes_from_the_committed_offset() {
        let (b, pop, info) = setup(TopicMessageType::Normal);
        send(&b, "t", "A", 4).await;
        let all = Subscription::Tag(TagExpression::All);
        let got = pop.receive(&req(&info, &all, 4, 0)).await.unwrap();
        pop.ack(&got[0].handle).await.unwrap();
        // Leader change: a fresh PopService over the same (replicated) offsets.
        let new_leader = PopService::new(b.clone(), PopLimits { commit_interval_ms: 0, ..Default::default() });
        new_leader.ack(&got[2].handle).await.unwrap(); // delivered by the old leader
        let again = new_leader.receive(&req(&info, &all, 10, 0)).await.unwrap();
        assert_eq!(again.iter().map(|d| d.message.queue_offset).collect::<Vec<_>>(), vec![1, 3]);
        let moved = new_leader.change_invisible(&again[0].handle, 5000, 10).await.unwrap();
        assert_eq!(moved.deadline_ms, 5010);
        new_leader.ack(&moved).await.unwrap();
        new_leader.ack(&again[1].handle).await.unwrap();
        assert_eq!(b.consumer_offset("g", "t", 0).await.unwrap(), Some(4));
        assert_eq!(new_leader.change_invisible(&again[1].handle, 10, 0).await, Err(PopError::AlreadyAcked(3)));
    }

    #[tokio::test]
    async fn commits_are_rate_limited_and_flush_writes_the_rest() {
        let b = FakeBackend::new("127.0.0.1:1");
        b.create_topic("t", 1, TopicMessageType::Normal);
        let pop = PopService::new(b.clone(), PopLimits { commit_interval_ms: 60_000, ..Default::default() });
        let info = TopicInfo {
            name: "t".into(),
            read_queue_count: 1,
            write_queue_count: 1,
            perm: 6,
            message_type: TopicMessageType::Normal,
        };
        send(&b, "t", "A", 3).await;
        let all = Subscription::Tag(TagExpression::All);
        let got = pop.receive(&req(&info, &all, 3, 0)).await.unwrap();
        pop.ack(&got[0].handle).await.unwrap();
        assert_eq!(b.consumer_offset("g", "t", 0).await.unwrap(), Some(1), "first advance is written at once");
        pop.ack(&got[1].handle).await.unwrap();
        pop.ack(&got[2].handle).await.unwrap();
        assert_eq!(b.consumer_offset("g", "t", 0).await.unwrap(), Some(1), "then at most once per interval");
        pop.flush().await.unwrap();
        assert_eq!(b.consumer_offset("g", "t", 0).await.unwrap(), Some(3));
        assert_eq!(b.commits.lock().len(), 2);
    }
}

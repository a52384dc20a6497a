//! Coalescing the sends a follower forwards to the leader.
//!
//! Forwarded one by one, each SendMessage call a follower takes costs the leader a gRPC
//! request and a replication round of its own; with many producers on followers that
//! doubles the leader's front-end work. Here the calls of one client to one leader form a
//! *lane*. A call that finds its lane idle goes at once (a lone producer waits for
//! nothing); calls that arrive while [`BATCHES_IN_FLIGHT_MAX`] requests of the lane are in
//! flight wait, and the next request carries all of them (up to the batch limits). The
//! leader handles that request as one send: one replication round, one entry per message,
//! in order. Each caller gets back the entries of its own messages and a status combined
//! from them, as if it had been forwarded alone.
//!
//! Invariants:
//! - every call gets exactly one answer, from the task that forwarded its messages; the
//!   task is spawned, so a caller that goes away cannot strand the others of its batch;
//! - a request never carries more than `messages_max` messages or `bytes_max` encoded
//!   bytes, except a single call that is larger alone (the leader judges it, as before);
//! - calls from different clients never share a request (the leader sees each client's
//!   own metadata).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::oneshot;
use tonic::metadata::MetadataMap;
use tracing::Instrument;
use wasmq_proto::apache::rocketmq::v2;

use super::forward::{self, Forwarder};
use super::status::{combine, ok};

/// Requests of one lane in flight at once: one is being replicated while the next fills.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Calls waiting in one lane. Beyond it a call is forwarded on its own (never refused):
/// the server's stream limits bound the calls in progress anyway.
const LANE_CALLS_WAITING_MAX: usize = 4096;
/// Lanes kept (one per client and leader while busy; an idle lane is dropped). Beyond it
/// a call is forwarded on its own.
const LANES_MAX: usize = 1024;
/// Metadata that differs on every call and that the leader does not read; kept out of the
/// lane key so that one client's calls can share a request.
const PER_CALL_METADATA: &[&str] = &["x-mq-request-id"];

type Answer = Result<v2::SendMessageResponse, tonic::Status>;

struct Call {
    messages: Vec<v2::Message>,
    encoded_bytes: usize,
    deadline: Instant,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct LaneState {
    waiting: VecDeque<Call>,
    in_flight: usize,
}

struct Lane {
    key: Vec<u8>,
    leader: String,
    metadata: MetadataMap,
    state: Mutex<LaneState>,
}

struct Limits {
    messages_max: usize,
    bytes_max: usize,
}

pub struct SendCoalescer {
    forwarder: Arc<Forwarder>,
    lanes: Arc<Mutex<HashMap<Vec<u8>, Arc<Lane>>>>,
    limits: Arc<Limits>,
}

impl SendCoalescer {
    /// `messages_max` and `bytes_max`: the most one request to the leader carries (the
    /// leader's send batch and gRPC message limits).
    pub fn new(forwarder: Arc<Forwarder>, messages_max: usize, bytes_max: usize) -> Self {
        assert!(messages_max >= 1 && bytes_max >= 1);
        SendCoalescer {
            forwarder,
            lanes: Arc::new(Mutex::new(HashMap::new())),
            limits: Arc::new(Limits { messages_max, bytes_max }),
        }
    }

    /// Forwards `request` (a client's call, with its `metadata`) to `leader` and returns
    /// the leader's answer for its messages.
    pub async fn send(&self, leader: &str, metadata: &MetadataMap, request: v2::SendMessageRequest) -> Answer {
        let (answer, answered) = oneshot::channel();
        let call = Call {
            encoded_bytes: request.encoded_len(),
            messages: request.messages,
            deadline: Instant::now() + forward::forward_timeout(metadata),
            answer,
        };
        let lane = self.lane(leader, metadata);
        let first = {
            let mut state = lane.state.lock();
            state.waiting.push_back(call);
            if state.in_flight < BATCHES_IN_FLIGHT_MAX {
                state.in_flight += 1;
                Some(take_batch(&mut state.waiting, &self.limits))
            } else {
                None
            }
        };
        if let Some(batch) = first {
            let task = LaneTask {
                forwarder: self.forwarder.clone(),
                lanes: self.lanes.clone(),
                limits: self.limits.clone(),
                lane,
            };
            tokio::spawn(task.run(batch));
        }
        answered.await.unwrap_or_else(|_| Err(tonic::Status::internal("forwarding task ended without an answer")))
    }

    /// The lane of this client and leader: the shared one, or a private one (its call
    /// goes alone) when the lane is full or there are too many lanes.
    fn lane(&self, leader: &str, metadata: &MetadataMap) -> Arc<Lane> {
        let key = lane_key(leader, metadata);
        // The lane's metadata is built only for a new lane: the lookup is on every call.
        let lane_metadata = || {
            let mut relayed = forward::relayed_metadata(metadata);
            for name in PER_CALL_METADATA {
                relayed.remove(*name);
            }
            relayed
        };
        let private = || {
            Arc::new(Lane {
                key: Vec::new(),
                leader: leader.to_string(),
                metadata: lane_metadata(),
                state: Mutex::new(LaneState::default()),
            })
        };
        let mut lanes = self.lanes.lock();
        if let Some(lane) = lanes.get(&key) {
            if lane.state.lock().waiting.len() >= LANE_CALLS_WAITING_MAX {
                return private();
            }
            return lane.clone();
        }
        if lanes.len() >= LANES_MAX {
            return private();
        }
        let lane = Arc::new(Lane {
            key: key.clone(),
            leader: leader.to_string(),
            metadata: lane_metadata(),
            state: Mutex::new(LaneState::default()),
        });
        lanes.insert(key, lane.clone());
        lane
    }
}

/// A lane's key: the leader, then the client's relayed headers but the per-call ones,
/// sorted (the same client's headers may come in another order). Built from borrowed
/// names and values: one vector and one buffer per call.
fn lane_key(leader: &str, metadata: &MetadataMap) -> Vec<u8> {
    let mut pairs: Vec<(&str, &[u8])> = metadata
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v)
                if forward::is_relayed(k.as_str()) && !PER_CALL_METADATA.contains(&k.as_str()) =>
            {
                Some((k.as_str(), v.as_bytes()))
            }
            _ => None,
        })
        .collect();
    pairs.sort_unstable();
    let len: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut key = Vec::with_capacity(leader.len() + len);
    key.extend_from_slice(leader.as_bytes());
    // Header names and values hold no newline and names no `=`: the key is unambiguous.
    for (name, value) in pairs {
        key.push(b'\n');
        key.extend_from_slice(name.as_bytes());
        key.push(b'=');
        key.extend_from_slice(value);
    }
    key
}

/// Takes the calls of the next request: in arrival order, at least one, then as many as
/// fit the limits.
fn take_batch(waiting: &mut VecDeque<Call>, limits: &Limits) -> Vec<Call> {
    let mut batch = Vec::new();
    let (mut messages, mut bytes) = (0usize, 0usize);
    while let Some(next) = waiting.front() {
        let fits =
            messages + next.messages.len() <= limits.messages_max && bytes + next.encoded_bytes <= limits.bytes_max;
        if !batch.is_empty() && !fits {
            break;
        }
        messages += next.messages.len();
        bytes += next.encoded_bytes;
        batch.push(waiting.pop_front().expect("front exists"));
    }
    assert!(!batch.is_empty(), "a batch is taken only when a call waits");
    batch
}

/// One of a lane's in-flight slots: forwards batches until the lane has nothing waiting.
struct LaneTask {
    forwarder: Arc<Forwarder>,
    lanes: Arc<Mutex<HashMap<Vec<u8>, Arc<Lane>>>>,
    limits: Arc<Limits>,
    lane: Arc<Lane>,
}

impl LaneTask {
    async fn run(self, mut batch: Vec<Call>) {
        loop {
            self.forward(batch).await;
            let mut state = self.lane.state.lock();
            if state.waiting.is_empty() {
                state.in_flight -= 1;
                break;
            }
            batch = take_batch(&mut state.waiting, &self.limits);
        }
        // Drop the lane once idle, unless a newer lane took its key. Lock order: lanes, then
        // a lane's state (as in `SendCoalescer::lane`).
        let mut lanes = self.lanes.lock();
        if let Some(kept) = lanes.get(&self.lane.key) {
            let idle = {
                let state = kept.state.lock();
                state.in_flight == 0 && state.waiting.is_empty()
            };
            if Arc::ptr_eq(kept, &self.lane) && idle {
                lanes.remove(&self.lane.key);
            }
        }
    }

    /// One request to the leader for `batch`; every call of it is answered.
    async fn forward(&self, batch: Vec<Call>) {
        let now = Instant::now();
        let deadline = batch.iter().map(|c| c.deadline).min().expect("a batch is not empty");
        let total: usize = batch.iter().map(|c| c.messages.len()).sum();
        let mut messages = Vec::with_capacity(total);
        let mut callers = Vec::with_capacity(batch.len());
        for call in batch {
            callers.push((call.messages.len(), call.answer));
            messages.extend(call.messages);
        }
        let span =
            tracing::debug_span!("forward_sends", leader = %self.lane.leader, calls = callers.len(), messages = total);
        let mut request = tonic::Request::new(v2::SendMessageRequest { messages });
        *request.metadata_mut() = self.lane.metadata.clone();
        request.set_timeout(deadline.saturating_duration_since(now).max(Duration::from_millis(1)));
        let answer = match self.forwarder.channel(&self.lane.leader) {
            Ok(channel) => channel
                .unary::<_, v2::SendMessageResponse>(v2::SEND_MESSAGE_PATH, request, self.forwarder.message_bytes_max)
                .instrument(span)
                .await
                .map(|r| r.into_inner()),
            Err(e) => Err(e),
        };
        match answer {
            Ok(response) if response.entries.len() == total => {
                let mut entries = response.entries.into_iter();
                for (count, answer) in callers {
                    let own: Vec<v2::SendResultEntry> = entries.by_ref().take(count).collect();
                    assert_eq!(own.len(), count, "one entry per message");
                    let overall = combine(own.iter().map(|e| e.status.clone().unwrap_or_else(ok)));
                    // A caller that went away no longer needs its answer.
                    let _ = answer.send(Ok(v2::SendMessageResponse { status: Some(overall), entries: own }));
                }
            }
            // No entry per message: the leader refused the request as a whole (it is no
            // longer the leader, ...); every caller gets that status.
            Ok(response) => {
                for (_, answer) in callers {
                    let _ = answer
                        .send(Ok(v2::SendMessageResponse { status: response.status.clone(), entries: Vec::new() }));
                }
            }
            Err(e) => {
                let unreachable = forward::leader_unreachable(&self.lane.leader, &e);
                for (_, answer) in callers {
                    let _ = answer
                        .send(Ok(v2::SendMessageResponse { status: Some(unreachable.clone()), entries: Vec::new() }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(messages: usize, encoded_bytes: usize) -> Call {
        let (answer, _) = oneshot::channel();
        Call { messages: vec![v2::Message::default(); messages], encoded_bytes, deadline: Instant::now(), answer }
    }

    fn sizes(batch: &[Call]) -> Vec<usize> {
        batch.iter().map(|c| c.messages.len()).collect()
    }

    fn metadata(headers: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_lane_key_names_the_leader_and_the_client_not_the_call() {
        let key = |headers| lane_key("n0", &metadata(headers));
        let one = key(&[("x-mq-client-id", "c1"), ("authorization", "a"), ("x-mq-request-id", "r1")]);
        // Another call of the same client: new request id, headers reordered, transport
        // headers that are not relayed.
        let again =
            key(&[("x-mq-request-id", "r2"), ("authorization", "a"), ("user-agent", "u"), ("x-mq-client-id", "c1")]);
        assert_eq!(one, again);
        assert_ne!(one, key(&[("x-mq-client-id", "c2"), ("authorization", "a")]));
        assert_ne!(one, key(&[("x-mq-client-id", "c1"), ("authorization", "b")]));
        assert_ne!(one, key(&[("x-mq-client-id", "c1")]));
        assert_ne!(one, lane_key("n1", &metadata(&[("x-mq-client-id", "c1"), ("authorization", "a")])));
    }

    #[test]
    fn a_batch_keeps_arrival_order_and_its_limits_but_takes_an_oversized_call_alone() {
        let limits = Limits { messages_max: 4, bytes_max: 1000 };
        let mut waiting: VecDeque<Call> =
            [call(1, 100), call(2, 100), call(2, 100), call(1, 950), call(9, 50), call(1, 10)].into_iter().collect();
        assert_eq!(sizes(&take_batch(&mut waiting, &limits)), vec![1, 2], "the next call would make 5 messages");
        assert_eq!(sizes(&take_batch(&mut waiting, &limits)), vec![2], "the next call would make 1,000+ bytes");
        assert_eq!(sizes(&take_batch(&mut waiting, &limits)), vec![1]);
        assert_eq!(sizes(&take_batch(&mut waiting, &limits)), vec![9], "over the limit alone: sent alone");
        assert_eq!(sizes(&take_batch(&mut waiting, &limits)), vec![1]);
        assert!(waiting.is_empty());
    }
}

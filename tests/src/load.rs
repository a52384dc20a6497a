//! Producers that keep sending through faults: every attempt gets a fresh body (so an attempt
//! whose ack was lost can be told apart from a duplicate), a failed attempt is retried on the
//! next endpoint until the producer's deadline, and only acknowledged sends are recorded as
//! acked. Bounded by a message count and a deadline.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use wasmq_bench::client::{MqClient, Outgoing};

use crate::checker::{AckedSend, make_body};

/// Pause after a failed attempt: long enough not to spin while an election runs.
const RETRY_BACKOFF_MS: u64 = 50;
/// Attempts one message may take before the producer gives up on it (and stops).
pub const ATTEMPTS_PER_MESSAGE_MAX: u32 = 2_000;

/// Everything the producers did, for the checker.
#[derive(Debug, Default)]
pub struct SendLog {
    pub attempted: HashSet<Vec<u8>>,
    pub acked: Vec<AckedSend>,
    pub failed_attempts: u64,
    /// Messages a producer gave up on at its deadline (never acknowledged).
    pub abandoned: u64,
}

#[derive(Clone, Debug)]
pub struct ProducerSpec {
    pub topic: String,
    /// Client endpoints of every node (`http://127.0.0.1:PORT`); tried in turn on errors.
    pub endpoints: Vec<String>,
    pub messages: u64,
    pub size_bytes: usize,
    pub deadline: Instant,
    pub rpc_timeout: Duration,
    /// Pause between two sends (0 = as fast as acks come back).
    pub pace: Duration,
}

/// Shared between the producers and the test body.
#[derive(Default)]
pub struct LoadState {
    pub log: Mutex<SendLog>,
    pub acked_count: AtomicU64,
    pub stop: AtomicBool,
}

/// One producer: `spec.messages` sequential sends, each retried until acknowledged.
pub async fn run_producer(id: u32, spec: ProducerSpec, state: Arc<LoadState>) {
    let mut clients: Vec<MqClient> =
        spec.endpoints.iter().map(|e| MqClient::connect_lazy(e, spec.rpc_timeout).expect("valid endpoint")).collect();
    let mut current = id as usize % clients.len();
    'messages: for seq in 0..spec.messages {
        for attempt in 0..ATTEMPTS_PER_MESSAGE_MAX {
            if state.stop.load(Ordering::Relaxed) || Instant::now() >= spec.deadline {
                state.log.lock().await.abandoned += 1;
                break 'messages;
            }
            let body = make_body(id, seq, attempt, spec.size_bytes);
            state.log.lock().await.attempted.insert(body.clone());
            let tag = format!("p{id}");
            let keys = [format!("p{id}-s{seq}")];
            let sent = clients[current]
                .send(&Outgoing { topic: &spec.topic, body: &body, tag: Some(&tag), keys: &keys, queue_id: None })
                .await;
            match sent {
                Ok(receipt) => {
                    let mut log = state.log.lock().await;
                    log.acked.push(AckedSend { producer: id, seq, queue_id: None, offset: receipt.offset, body });
                    state.acked_count.fetch_add(1, Ordering::Relaxed);
                    drop(log);
                    if !spec.pace.is_zero() {
                        tokio::time::sleep(spec.pace).await;
                    }
                    continue 'messages;
                }
                Err(e) => {
                    tracing::debug!(producer = id, seq, attempt, endpoint = %clients[current].endpoint, error = %e, "send failed");
                    state.log.lock().await.failed_attempts += 1;
                    current = (current + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
                }
            }
        }
        // Out of attempts: the cluster never recovered for this producer.
        state.log.lock().await.abandoned += 1;
        break;
    }
}

/// Starts `producers` producers; returns their handles.
pub fn spawn_producers(
    producers: u32,
    spec: &ProducerSpec,
    state: &Arc<LoadState>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..producers).map(|id| tokio::spawn(run_producer(id, spec.clone(), state.clone()))).collect()
}

/// Waits until `count` sends are acknowledged or `timeout` passes; returns the count reached.
pub async fn wait_acked(state: &LoadState, count: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let n = state.acked_count.load(Ordering::Relaxed);
        if n >= count || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

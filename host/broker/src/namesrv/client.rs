//! Broker side of the name server protocol, and a connect helper for tools.
//!
//! [`spawn_heartbeat`] runs one task per name server address, so a slow or dead name server
//! never delays registration with the others. Each tick it asks the broker for a fresh
//! [`BrokerHeartbeat`] (through `status_fn`) and sends it; on failure it reconnects on the
//! next tick. [`HeartbeatHandle::stop`] unregisters the node so it leaves routes at once
//! instead of after expiry.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};
use wasmq_proto::wasmq::namesrv::name_server_client::NameServerClient;
use wasmq_proto::wasmq::namesrv::{BrokerHeartbeat, RegisterBrokerRequest, UnregisterBrokerRequest};

/// The broker heartbeat period RocketMQ-on-DLedger setups expect (name server expiry is 3×).
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Upper bound on name server addresses one broker registers with.
pub const NAMESRV_ADDRS_MAX: usize = 16;
/// Log a persistent failure once, then every this many ticks (not every second).
const FAILURE_LOG_EVERY_TICKS: u64 = 30;
const UNREGISTER_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad name server address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("no name server address given")]
    NoAddress,
    #[error("{count} name server addresses, more than the limit of {NAMESRV_ADDRS_MAX}")]
    TooManyAddresses { count: usize },
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: tonic::transport::Error },
}

/// Splits RocketMQ's `namesrvAddr` syntax (`host:port;host:port`, commas also accepted).
pub fn parse_addrs(list: &str) -> Result<Vec<String>, ClientError> {
    let addrs: Vec<String> =
        list.split([';', ',']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    if addrs.is_empty() {
        return Err(ClientError::NoAddress);
    }
    if addrs.len() > NAMESRV_ADDRS_MAX {
        return Err(ClientError::TooManyAddresses { count: addrs.len() });
    }
    for addr in &addrs {
        endpoint(addr, Duration::from_secs(1))?;
    }
    Ok(addrs)
}

/// A gRPC endpoint for `host:port` (or a full `http://` URI) with connect and request
/// timeouts of `timeout`.
pub fn endpoint(addr: &str, timeout: Duration) -> Result<Endpoint, ClientError> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let has_port = uri.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    if !has_port {
        return Err(ClientError::BadAddress { addr: addr.into(), reason: "expected host:port".into() });
    }
    Endpoint::from_shared(uri)
        .map(|e| e.connect_timeout(timeout).timeout(timeout).tcp_nodelay(true))
        .map_err(|e| ClientError::BadAddress { addr: addr.into(), reason: e.to_string() })
}

/// Connects to one name server.
pub async fn connect(addr: &str, timeout: Duration) -> Result<NameServerClient<Channel>, ClientError> {
    let channel = endpoint(addr, timeout)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect { addr: addr.into(), source })?;
    Ok(NameServerClient::new(channel))
}

/// Stops the heartbeat tasks it owns. Dropping it stops them too, without unregistering.
pub struct HeartbeatHandle {
    stop: watch::Sender<bool>,
    /// Bumped by [`HeartbeatHandle::nudge`]: every loop heartbeats at once.
    nudge: watch::Sender<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl HeartbeatHandle {
    /// Heartbeats to every name server now instead of at the next tick: a node whose Raft
    /// role or term changed says so at once (as RocketMQ's DLedger role-change handler
    /// re-registers the broker), so `clusterList` and routes do not show a deposed leader
    /// for up to a heartbeat interval. Several nudges before a loop wakes make one heartbeat.
    pub fn nudge(&self) {
        self.nudge.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Stops heartbeating and unregisters from every name server (best effort, bounded by
    /// a short timeout each), so routes drop this node at once.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for HeartbeatHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Registers this broker with every name server in `addrs` now and then every `interval`.
/// `status_fn` is called once per tick per name server and must be cheap (no I/O).
/// Must be called inside a tokio runtime.
pub fn spawn_heartbeat<F>(addrs: Vec<String>, interval: Duration, status_fn: F) -> HeartbeatHandle
where
    F: Fn() -> BrokerHeartbeat + Send + Sync + 'static,
{
    assert!(!interval.is_zero());
    assert!(addrs.len() <= NAMESRV_ADDRS_MAX);
    let status_fn = Arc::new(status_fn);
    let (stop, _) = watch::channel(false);
    let (nudge, _) = watch::channel(0u64);
    let tasks = addrs
        .into_iter()
        .map(|addr| {
            let status_fn = status_fn.clone();
            let stop = stop.subscribe();
            let nudged = nudge.subscribe();
            tokio::spawn(heartbeat_loop(addr, interval, status_fn, stop, nudged))
        })
        .collect();
    HeartbeatHandle { stop, nudge, tasks }
}

async fn heartbeat_loop<F>(
    addr: String,
    interval: Duration,
    status_fn: Arc<F>,
    mut stop: watch::Receiver<bool>,
    mut nudged: watch::Receiver<u64>,
) where
    F: Fn() -> BrokerHeartbeat + Send + Sync + 'static,
{
    // A request must finish before the next tick is due.
    let timeout = interval.min(Duration::from_secs(3));
    let endpoint = match endpoint(&addr, timeout) {
        Ok(e) => e,
        Err(e) => {
            warn!(namesrv = %addr, error = %e, "not heartbeating to this name server");
            return;
        }
    };
    // Lazy: connects on first use and reconnects after failures by itself.
    let mut client = NameServerClient::new(endpoint.connect_lazy());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u64 = 0;
    let mut last = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = nudged.changed() => {
                if changed.is_ok() {
                    // The next periodic heartbeat is due a whole interval after this one.
                    ticker.reset();
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
        let heartbeat = status_fn();
        let key = (heartbeat.cluster_name.clone(), heartbeat.broker_name.clone(), heartbeat.node_id.clone());
        let request = RegisterBrokerRequest { broker: Some(heartbeat) };
        match client.register_broker(request).await {
            Ok(_) => {
                if failures > 0 {
                    info!(namesrv = %addr, after_failures = failures, "registered with name server");
                }
                failures = 0;
            }
            Err(status) => {
                if failures.is_multiple_of(FAILURE_LOG_EVERY_TICKS) {
                    warn!(namesrv = %addr, code = ?status.code(), error = %status.message(),
                        failures, "heartbeat to name server failed");
                } else {
                    debug!(namesrv = %addr, error = %status.message(), "heartbeat failed");
                }
                failures += 1;
            }
        }
        last = Some(key);
    }
    if let Some((cluster_name, broker_name, node_id)) = last {
        let goodbye = client.unregister_broker(UnregisterBrokerRequest { cluster_name, broker_name, node_id });
        match tokio::time::timeout(UNREGISTER_TIMEOUT, goodbye).await {
            Ok(Ok(_)) => info!(namesrv = %addr, "unregistered from name server"),
            Ok(Err(status)) => {
                debug!(namesrv = %addr, error = %status.message(), "unregister failed")
            }
            Err(_) => debug!(namesrv = %addr, "unregister timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_addrs_accepts_rocketmq_syntax() {
        assert_eq!(parse_addrs("127.0.0.1:9876; 127.0.0.1:9877,").unwrap(), vec!["127.0.0.1:9876", "127.0.0.1:9877"]);
        assert!(matches!(parse_addrs(" ; "), Err(ClientError::NoAddress)));
        assert!(matches!(parse_addrs("127.0.0.1"), Err(ClientError::BadAddress { .. })));
        let many = vec!["127.0.0.1:1"; NAMESRV_ADDRS_MAX + 1].join(";");
        assert!(matches!(parse_addrs(&many), Err(ClientError::TooManyAddresses { .. })));
    }
}

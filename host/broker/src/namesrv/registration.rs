//! The broker's name-server registration task: heartbeats this node (role, term, commit
//! index, topics) to every address in `namesrvAddr` until the broker stops, then
//! unregisters so routes drop it at once. `server.rs` starts it as a background task.

use futures::future::BoxFuture;
use wasmq_proto::wasmq::namesrv::{BrokerHeartbeat, Role as NsRole, TopicInfo};

use super::client::{self, HEARTBEAT_INTERVAL_DEFAULT};
use crate::core::BrokerCore;
use crate::replication::Role;
use crate::server::BrokerContext;

/// For `Extensions::tasks`.
pub fn task(ctx: BrokerContext) -> BoxFuture<'static, ()> {
    Box::pin(run(ctx))
}

pub async fn run(ctx: BrokerContext) {
    let addrs = ctx.config.namesrv_addrs();
    if addrs.is_empty() {
        tracing::info!("namesrvAddr is empty: not registering with any name server");
        return;
    }
    let core = ctx.core.clone();
    let raft_addr = if ctx.config.enable_d_leger_commit_log {
        ctx.config.dledger_self().map(|p| p.address).unwrap_or_default()
    } else {
        String::new()
    };
    tracing::info!(namesrv = ?addrs, "registering with name servers");
    let handle = client::spawn_heartbeat(addrs, HEARTBEAT_INTERVAL_DEFAULT, move || heartbeat(&core, &raft_addr));
    let mut shutdown = ctx.shutdown.clone();
    // Role and term are polled (the replicator publishes them as a status snapshot, not as
    // a channel); a change heartbeats at once instead of up to a second later.
    let mut poll = tokio::time::interval(ROLE_POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = role_and_term(&ctx.core);
    loop {
        tokio::select! {
            _ = poll.tick() => {
                let now = role_and_term(&ctx.core);
                if now != last {
                    tracing::debug!(from = ?last, to = ?now, "raft role or term changed: heartbeating now");
                    last = now;
                    handle.nudge();
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    handle.stop().await;
}

/// How often the registration task looks at the node's Raft role and term: bounds how long
/// name servers show a role this node no longer has (besides the heartbeat's own latency).
const ROLE_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

fn role_and_term(core: &BrokerCore) -> (Role, u64) {
    let status = core.replicator().status();
    (status.role, status.term)
}

/// What this node tells the name servers. Cheap: in-memory state only.
pub fn heartbeat(core: &BrokerCore, raft_addr: &str) -> BrokerHeartbeat {
    let options = core.options();
    let status = core.replicator().status();
    let role = match status.role {
        Role::Standalone => NsRole::Standalone,
        Role::Leader => NsRole::Leader,
        Role::Follower => NsRole::Follower,
        Role::Candidate => NsRole::Candidate,
    };
    BrokerHeartbeat {
        cluster_name: options.cluster_name.clone(),
        broker_name: options.broker_name.clone(),
        node_id: options.node_id.clone(),
        client_addr: options.self_endpoint.clone(),
        raft_addr: raft_addr.to_string(),
        role: role as i32,
        term: status.term,
        committed_index: status.commit_index,
        version: env!("CARGO_PKG_VERSION").to_string(),
        topics: core
            .topics()
            .into_iter()
            .map(|t| TopicInfo {
                name: t.topic,
                read_queue_nums: t.read_queue_nums,
                write_queue_nums: t.write_queue_nums,
                perm: t.perm,
            })
            .collect(),
        heartbeat_interval_ms: HEARTBEAT_INTERVAL_DEFAULT.as_millis() as u64,
    }
}

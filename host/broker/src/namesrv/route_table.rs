//! The name server's table of live broker nodes, and the routes derived from it.
//!
//! Sans-IO: every call takes `now`, so expiry is tested without sleeping. A node is *live*
//! while `now - last_heartbeat < expiry`; reads skip nodes that are not live even before
//! [`RouteTable::expire`] removes them, so an answer never depends on sweep timing.
//!
//! Keys are (cluster, broker name, node id). A broker name is a Raft group (`dLegerGroup`):
//! all of its nodes hold the same replicated topic configs, but a follower may lag, so a
//! route takes a group's queue counts from its freshest live node (leader first, then the
//! highest (term, committed index)).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use wasmq_proto::wasmq::namesrv::{
    BrokerData, BrokerHeartbeat, BrokerNode, GetRouteResponse, QueueData, Role, TopicInfo, TopicListEntry,
};

/// Limits on what the table holds. Each bounds memory a misbehaving client could take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLimits {
    pub brokers_max: usize,
    pub topics_per_broker_max: usize,
    /// Cluster, broker, node and topic names (RocketMQ caps topic names at 127).
    pub name_bytes_max: usize,
    /// Client / Raft addresses and version strings.
    pub address_bytes_max: usize,
    /// Queue counts per topic (RocketMQ's default cap is 1024).
    pub queue_nums_max: u32,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits {
            brokers_max: 256,
            topics_per_broker_max: 10_000,
            name_bytes_max: 127,
            address_bytes_max: 255,
            queue_nums_max: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("invalid heartbeat: {0}")]
    Invalid(String),
    #[error("name server is full: {brokers_max} broker nodes registered")]
    TooManyBrokers { brokers_max: usize },
    #[error("broker reports {count} topics, more than the limit of {topics_max}")]
    TooManyTopics { count: usize, topics_max: usize },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeKey {
    pub cluster_name: String,
    pub broker_name: String,
    pub node_id: String,
}

#[derive(Debug)]
struct NodeEntry {
    /// As received, with `topics` sorted by name (binary search in routes).
    heartbeat: BrokerHeartbeat,
    last_heartbeat: Instant,
}

#[derive(Debug)]
pub struct RouteTable {
    nodes: BTreeMap<NodeKey, NodeEntry>,
    limits: TableLimits,
    expiry: Duration,
}

impl RouteTable {
    pub fn new(limits: TableLimits, expiry: Duration) -> Self {
        assert!(limits.brokers_max > 0 && limits.topics_per_broker_max > 0);
        assert!(!expiry.is_zero());
        RouteTable { nodes: BTreeMap::new(), limits, expiry }
    }

    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// Registered nodes, live or not yet swept.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn is_live(&self, entry: &NodeEntry, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_heartbeat) < self.expiry
    }

    /// Registers or refreshes one node. Returns whether the node is new (was not live).
    pub fn register(&mut self, mut heartbeat: BrokerHeartbeat, now: Instant) -> Result<bool, RegisterError> {
        self.validate(&mut heartbeat)?;
        let key = NodeKey {
            cluster_name: heartbeat.cluster_name.clone(),
            broker_name: heartbeat.broker_name.clone(),
            node_id: heartbeat.node_id.clone(),
        };
        let was_live = self.nodes.get(&key).is_some_and(|e| self.is_live(e, now));
        if !self.nodes.contains_key(&key) && self.nodes.len() >= self.limits.brokers_max {
            // Make room from expired entries before refusing a live node.
            self.expire(now);
            if self.nodes.len() >= self.limits.brokers_max {
                return Err(RegisterError::TooManyBrokers { brokers_max: self.limits.brokers_max });
            }
        }
        self.nodes.insert(key, NodeEntry { heartbeat, last_heartbeat: now });
        assert!(self.nodes.len() <= self.limits.brokers_max);
        Ok(!was_live)
    }

    /// Checks a heartbeat against the limits and sorts its topics.
    fn validate(&self, hb: &mut BrokerHeartbeat) -> Result<(), RegisterError> {
        let limits = &self.limits;
        for (what, value) in
            [("cluster name", &hb.cluster_name), ("broker name", &hb.broker_name), ("node id", &hb.node_id)]
        {
            check_name(what, value, limits.name_bytes_max)?;
        }
        for (what, value) in
            [("client address", &hb.client_addr), ("raft address", &hb.raft_addr), ("version", &hb.version)]
        {
            if value.len() > limits.address_bytes_max {
                return Err(RegisterError::Invalid(format!(
                    "{what} is {} bytes, more than {}",
                    value.len(),
                    limits.address_bytes_max
                )));
            }
        }
        if hb.client_addr.is_empty() {
            return Err(RegisterError::Invalid("client address is empty".into()));
        }
        match Role::try_from(hb.role) {
            Ok(Role::Unspecified) | Err(_) => {
                return Err(RegisterError::Invalid(format!("role {} is not valid", hb.role)));
            }
            Ok(_) => {}
        }
        if hb.topics.len() > limits.topics_per_broker_max {
            return Err(RegisterError::TooManyTopics {
                count: hb.topics.len(),
                topics_max: limits.topics_per_broker_max,
            });
        }
        hb.topics.sort_by(|a, b| a.name.cmp(&b.name));
        for pair in hb.topics.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(RegisterError::Invalid(format!("topic {} is reported twice", pair[0].name)));
            }
        }
        for topic in &hb.topics {
            check_name("topic", &topic.name, limits.name_bytes_max)?;
            if topic.read_queue_nums > limits.queue_nums_max || topic.write_queue_nums > limits.queue_nums_max {
                return Err(RegisterError::Invalid(format!(
                    "topic {}: queue counts {}/{} exceed {}",
                    topic.name, topic.read_queue_nums, topic.write_queue_nums, limits.queue_nums_max
                )));
            }
        }
        Ok(())
    }

    /// Removes one node now (graceful shutdown). Returns whether it was registered.
    pub fn unregister(&mut self, key: &NodeKey) -> bool {
        self.nodes.remove(key).is_some()
    }

    /// Removes every node whose registration lapsed, and returns their keys.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeKey> {
        let expiry = self.expiry;
        let mut expired = Vec::new();
        self.nodes.retain(|key, entry| {
            let live = now.saturating_duration_since(entry.last_heartbeat) < expiry;
            if !live {
                expired.push(key.clone());
            }
            live
        });
        expired
    }

    fn live_nodes(&self, now: Instant) -> impl Iterator<Item = (&NodeKey, &NodeEntry)> {
        self.nodes.iter().filter(move |(_, e)| self.is_live(e, now))
    }

    /// Live nodes grouped by (cluster, broker name), sorted; nodes sorted by id.
    pub fn cluster_info(&self, now: Instant) -> Vec<BrokerData> {
        let mut groups: Vec<BrokerData> = Vec::new();
        // BTreeMap order is (cluster, broker, node), so groups arrive contiguous and sorted.
        for (key, entry) in self.live_nodes(now) {
            let same_group =
                groups.last().is_some_and(|g| g.cluster_name == key.cluster_name && g.broker_name == key.broker_name);
            if !same_group {
                groups.push(BrokerData {
                    cluster_name: key.cluster_name.clone(),
                    broker_name: key.broker_name.clone(),
                    nodes: Vec::new(),
                });
            }
            let group = groups.last_mut().expect("pushed above");
            group.nodes.push(node_view(entry, now));
        }
        groups
    }

    /// Queues and groups serving `topic`, or `None` if no live node reports it.
    pub fn route(&self, topic: &str, now: Instant) -> Option<GetRouteResponse> {
        let mut queues = Vec::new();
        let mut brokers = Vec::new();
        for group in self.cluster_info(now) {
            let key_prefix = (&group.cluster_name, &group.broker_name);
            // Freshest live node of this group that reports the topic.
            let freshest = self
                .live_nodes(now)
                .filter(|(k, _)| (&k.cluster_name, &k.broker_name) == key_prefix)
                .filter_map(|(_, e)| find_topic(&e.heartbeat, topic).map(|t| (e, t)))
                .max_by_key(|(e, _)| freshness(&e.heartbeat));
            let Some((_, info)) = freshest else { continue };
            queues.push(QueueData {
                broker_name: group.broker_name.clone(),
                read_queue_nums: info.read_queue_nums,
                write_queue_nums: info.write_queue_nums,
                perm: info.perm,
            });
            brokers.push(group);
        }
        if queues.is_empty() {
            return None;
        }
        assert_eq!(queues.len(), brokers.len());
        Some(GetRouteResponse { topic: topic.to_string(), queues, brokers })
    }

    /// Every topic some live node reports, sorted, with the clusters and groups serving it.
    pub fn topic_list(&self, now: Instant) -> Vec<TopicListEntry> {
        let mut topics: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
        for (key, entry) in self.live_nodes(now) {
            for topic in &entry.heartbeat.topics {
                let (clusters, groups) = topics.entry(topic.name.as_str()).or_default();
                clusters.insert(key.cluster_name.as_str());
                groups.insert(key.broker_name.as_str());
            }
        }
        topics
            .into_iter()
            .map(|(name, (clusters, groups))| TopicListEntry {
                name: name.to_string(),
                cluster_names: clusters.into_iter().map(String::from).collect(),
                broker_names: groups.into_iter().map(String::from).collect(),
            })
            .collect()
    }
}

fn check_name(what: &str, value: &str, bytes_max: usize) -> Result<(), RegisterError> {
    if value.is_empty() {
        return Err(RegisterError::Invalid(format!("{what} is empty")));
    }
    if value.len() > bytes_max {
        return Err(RegisterError::Invalid(format!("{what} is {} bytes, more than {bytes_max}", value.len())));
    }
    // RocketMQ's character set for topic and group names; also keeps table output sane.
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '%' | '|' | '.'))) {
        return Err(RegisterError::Invalid(format!(
            "{what} {value:?} contains {c:?}; allowed: letters, digits, - _ % | ."
        )));
    }
    Ok(())
}

fn find_topic<'a>(hb: &'a BrokerHeartbeat, topic: &str) -> Option<&'a TopicInfo> {
    hb.topics.binary_search_by(|t| t.name.as_str().cmp(topic)).ok().map(|i| &hb.topics[i])
}

/// Leader first, then the most advanced replica.
fn freshness(hb: &BrokerHeartbeat) -> (bool, u64, u64) {
    let leads = matches!(Role::try_from(hb.role), Ok(Role::Leader) | Ok(Role::Standalone));
    (leads, hb.term, hb.committed_index)
}

fn node_view(entry: &NodeEntry, now: Instant) -> BrokerNode {
    let hb = &entry.heartbeat;
    let age = now.saturating_duration_since(entry.last_heartbeat);
    BrokerNode {
        node_id: hb.node_id.clone(),
        client_addr: hb.client_addr.clone(),
        raft_addr: hb.raft_addr.clone(),
        role: hb.role,
        term: hb.term,
        committed_index: hb.committed_index,
        version: hb.version.clone(),
        last_heartbeat_age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        topic_count: u32::try_from(hb.topics.len()).expect("bounded by topics_per_broker_max"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(group: &str, node: &str, role: Role, topics: &[(&str, u32)]) -> BrokerHeartbeat {
        BrokerHeartbeat {
            cluster_name: "DefaultCluster".into(),
            broker_name: group.into(),
            node_id: node.into(),
            client_addr: "127.0.0.1:18081".into(),
            raft_addr: "127.0.0.1:40911".into(),
            role: role as i32,
            term: 3,
            committed_index: 10,
            version: "0.1.0".into(),
            topics: topics
                .iter()
                .map(|(name, queues)| TopicInfo {
                    name: name.to_string(),
                    read_queue_nums: *queues,
                    write_queue_nums: *queues,
                    perm: 6,
                })
                .collect(),
            heartbeat_interval_ms: 1000,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(TableLimits::default(), Duration::from_secs(3))
    }

    #[test]
    fn node_expires_after_missed_heartbeats_and_route_follows() {
        let mut t = table();
        let t0 = Instant::now();
        assert!(t.register(heartbeat("g0", "n0", Role::Leader, &[("T", 8)]), t0).unwrap());
        assert!(t.register(heartbeat("g0", "n1", Role::Follower, &[("T", 8)]), t0).unwrap());
        assert!(t.register(heartbeat("g1", "n0", Role::Leader, &[("T", 4)]), t0).unwrap());

        let route = t.route("T", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(route.queues.len(), 2);
        assert_eq!(route.brokers[0].broker_name, "g0");
        assert_eq!(route.brokers[0].nodes.len(), 2);
        assert_eq!(route.queues[1].write_queue_nums, 4);

        // g0/n0 keeps heartbeating, the others stop.
        let t1 = t0 + Duration::from_millis(2500);
        assert!(!t.register(heartbeat("g0", "n0", Role::Leader, &[("T", 8)]), t1).unwrap());
        let t2 = t0 + Duration::from_millis(3000);
        let route = t.route("T", t2).unwrap();
        assert_eq!(route.queues.len(), 1, "g1 expired: {route:?}");
        assert_eq!(route.brokers[0].nodes.len(), 1);
        assert_eq!(route.brokers[0].nodes[0].node_id, "n0");
        assert_eq!(route.brokers[0].nodes[0].last_heartbeat_age_ms, 500);
        // Reads filter before the sweep; the sweep then frees the memory.
        assert_eq!(t.len(), 3);
        let mut expired = t.expire(t2);
        expired.sort();
        assert_eq!(expired.len(), 2);
        assert_eq!(expired[0].broker_name, "g0");
        assert_eq!(expired[0].node_id, "n1");
        assert_eq!(t.len(), 1);

        assert!(t.route("T", t1 + Duration::from_secs(3)).is_none());
        assert!(t.cluster_info(t1 + Duration::from_secs(3)).is_empty());
    }

    #[test]
    fn route_takes_queue_counts_from_leader_then_most_advanced() {
        let mut t = table();
        let now = Instant::now();
        let mut stale = heartbeat("g0", "n1", Role::Follower, &[("T", 4)]);
        stale.committed_index = 5;
        let mut fresh = heartbeat("g0", "n2", Role::Follower, &[("T", 16)]);
        fresh.committed_index = 50;
        t.register(stale, now).unwrap();
        t.register(fresh, now).unwrap();
        assert_eq!(t.route("T", now).unwrap().queues[0].write_queue_nums, 16);
        t.register(heartbeat("g0", "n0", Role::Leader, &[("T", 8)]), now).unwrap();
        assert_eq!(t.route("T", now).unwrap().queues[0].write_queue_nums, 8);
        assert!(t.route("Other", now).is_none());
    }

    #[test]
    fn unregister_removes_at_once() {
        let mut t = table();
        let now = Instant::now();
        t.register(heartbeat("g0", "n0", Role::Leader, &[("T", 8)]), now).unwrap();
        let key = NodeKey { cluster_name: "DefaultCluster".into(), broker_name: "g0".into(), node_id: "n0".into() };
        assert!(t.unregister(&key));
        assert!(!t.unregister(&key));
        assert!(t.route("T", now).is_none());
    }

    #[test]
    fn limits_are_enforced() {
        let limits = TableLimits { brokers_max: 2, topics_per_broker_max: 2, ..TableLimits::default() };
        let mut t = RouteTable::new(limits, Duration::from_secs(3));
        let now = Instant::now();
        t.register(heartbeat("g0", "n0", Role::Leader, &[]), now).unwrap();
        t.register(heartbeat("g0", "n1", Role::Follower, &[]), now).unwrap();
        assert_eq!(
            t.register(heartbeat("g0", "n2", Role::Follower, &[]), now),
            Err(RegisterError::TooManyBrokers { brokers_max: 2 })
        );
        // Refreshing a known node is always allowed.
        t.register(heartbeat("g0", "n1", Role::Follower, &[]), now).unwrap();
        // Once a node lapses, its slot is reused.
        let later = now + Duration::from_secs(3);
        t.register(heartbeat("g0", "n0", Role::Leader, &[]), later).unwrap();
        t.register(heartbeat("g0", "n2", Role::Follower, &[]), later).unwrap();
        assert_eq!(t.len(), 2);

        assert!(matches!(
            t.register(heartbeat("g0", "n0", Role::Leader, &[("A", 1), ("B", 1), ("C", 1)]), later),
            Err(RegisterError::TooManyTopics { count: 3, topics_max: 2 })
        ));
        assert!(matches!(
            t.register(heartbeat("g0", "n0", Role::Leader, &[("A", 1), ("A", 2)]), later),
            Err(RegisterError::Invalid(_))
        ));
        assert!(matches!(
            t.register(heartbeat("g0", "n0", Role::Leader, &[("A", 5000)]), later),
            Err(RegisterError::Invalid(_))
        ));
        assert!(matches!(t.register(heartbeat("g 0", "n0", Role::Leader, &[]), later), Err(RegisterError::Invalid(_))));
        assert!(matches!(
            t.register(heartbeat("g0", "n0", Role::Unspecified, &[]), later),
            Err(RegisterError::Invalid(_))
        ));
        let mut no_addr = heartbeat("g0", "n0", Role::Leader, &[]);
        no_addr.client_addr.clear();
        assert!(matches!(t.register(no_addr, later), Err(RegisterError::Invalid(_))));
    }

    #[test]
    fn topic_list_merges_groups() {
        let mut t = table();
        let now = Instant::now();
        t.register(heartbeat("g0", "n0", Role::Leader, &[("B", 1), ("A", 1)]), now).unwrap();
        t.register(heartbeat("g1", "n0", Role::Leader, &[("A", 1)]), now).unwrap();
        let list = t.topic_list(now);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "A");
        assert_eq!(list[0].broker_names, vec!["g0", "g1"]);
        assert_eq!(list[1].broker_names, vec!["g0"]);
    }
}

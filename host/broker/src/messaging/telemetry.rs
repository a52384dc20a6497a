//! Telemetry: the client reports its Settings on a bidirectional stream and waits for
//! the server's Settings (the Python clients give up after 10 s without them). We
//! answer every Settings command with the settings the client should use, and
//! remember per-client facts the service needs (consumer group, max attempts).

use std::collections::HashMap;

use parking_lot::Mutex;
use wasmq_proto::apache::rocketmq::v2;

use super::backend::TopicMessageType;
use super::message_codec::to_duration;

/// Bounds of what the server tells clients and remembers about them.
#[derive(Clone, Debug)]
pub struct TelemetryLimits {
    pub clients_max: usize,
    pub max_attempts_default: u32,
    pub max_attempts_max: u32,
    pub receive_batch_size: u32,
    pub long_polling_ms: u64,
}

impl Default for TelemetryLimits {
    fn default() -> Self {
        TelemetryLimits {
            clients_max: 65_536,
            max_attempts_default: 16,
            max_attempts_max: 64,
            receive_batch_size: 32,
            long_polling_ms: 20_000,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_type: i32,
    pub group: Option<String>,
    pub last_seen_ms: u64,
}

/// Clients known to this node (bounded; the oldest is forgotten first).
pub struct ClientRegistry {
    limits: TelemetryLimits,
    clients: Mutex<HashMap<String, ClientInfo>>,
    /// Max delivery attempts per consumer group, as its clients declared it.
    group_max_attempts: Mutex<HashMap<String, u32>>,
}

/// RocketMQ's classic retry ladder (delay before redelivery after a failure).
const RETRY_LADDER_SECONDS: [i64; 16] = [1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800];

impl ClientRegistry {
    pub fn new(limits: TelemetryLimits) -> Self {
        assert!(limits.clients_max > 0 && limits.max_attempts_default >= 1);
        ClientRegistry { limits, clients: Mutex::new(HashMap::new()), group_max_attempts: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> &TelemetryLimits {
        &self.limits
    }

    pub fn touch(&self, client_id: &str, client_type: i32, group: Option<String>, now_ms: u64) {
        let mut clients = self.clients.lock();
        if !clients.contains_key(client_id) && clients.len() >= self.limits.clients_max {
            let oldest = clients.iter().min_by_key(|(_, c)| c.last_seen_ms).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                clients.remove(&k);
            }
        }
        let entry = clients.entry(client_id.to_string()).or_default();
        entry.client_type = client_type;
        if group.is_some() {
            entry.group = group;
        }
        entry.last_seen_ms = now_ms;
    }

    pub fn remove(&self, client_id: &str) {
        self.clients.lock().remove(client_id);
    }

    pub fn client(&self, client_id: &str) -> Option<ClientInfo> {
        self.clients.lock().get(client_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn max_attempts(&self, group: &str) -> u32 {
        self.group_max_attempts.lock().get(group).copied().unwrap_or(self.limits.max_attempts_default)
    }

    /// The server's answer to a client's Settings. `topic_types` has the type of each
    /// subscribed topic that exists (a FIFO topic makes the consumer consume in order).
    pub fn answer(
        &self,
        client_id: &str,
        reported: &v2::Settings,
        topic_types: &[TopicMessageType],
        max_body_bytes: u64,
        now_ms: u64,
    ) -> v2::Settings {
        let client_type = reported.client_type.unwrap_or(v2::ClientType::Unspecified as i32);
        let group = match &reported.pub_sub {
            Some(v2::settings::PubSub::Subscription(s)) => s.group.as_ref().map(|g| g.name.clone()),
            _ => None,
        };
        self.touch(client_id, client_type, group.clone(), now_ms);
        let reported_attempts = reported.backoff_policy.as_ref().map(|p| p.max_attempts).unwrap_or(0);
        if let Some(g) = &group {
            if reported_attempts > 0 {
                let attempts = (reported_attempts as u32).min(self.limits.max_attempts_max);
                let mut map = self.group_max_attempts.lock();
                if map.len() < self.limits.clients_max || map.contains_key(g) {
                    map.insert(g.clone(), attempts);
                }
            }
        }

        let mut answer = v2::Settings {
            client_type: reported.client_type,
            access_point: reported.access_point.clone(),
            backoff_policy: None,
            request_timeout: reported.request_timeout,
            pub_sub: None,
            user_agent: reported.user_agent.clone(),
            metric: Some(v2::Metric { on: false, endpoints: None }),
        };
        match &reported.pub_sub {
            Some(v2::settings::PubSub::Subscription(s)) => {
                let attempts =
                    group.as_deref().map(|g| self.max_attempts(g)).unwrap_or(self.limits.max_attempts_default);
                answer.backoff_policy = Some(v2::RetryPolicy {
                    max_attempts: attempts as i32,
                    strategy: Some(v2::retry_policy::Strategy::CustomizedBackoff(v2::CustomizedBackoff {
                        next: RETRY_LADDER_SECONDS.iter().map(|s| to_duration(*s as u64 * 1000)).collect(),
                    })),
                });
                answer.pub_sub = Some(v2::settings::PubSub::Subscription(v2::Subscription {
                    group: s.group.clone(),
                    subscriptions: s.subscriptions.clone(),
                    fifo: Some(topic_types.contains(&TopicMessageType::Fifo)),
                    receive_batch_size: Some(self.limits.receive_batch_size as i32),
                    long_polling_timeout: Some(to_duration(self.limits.long_polling_ms)),
                    lite_subscription_quota: None,
                    max_lite_topic_size: None,
                }));
            }
            _ => {
                answer.backoff_policy = Some(v2::RetryPolicy {
                    max_attempts: 3,
                    strategy: Some(v2::retry_policy::Strategy::ExponentialBackoff(v2::ExponentialBackoff {
                        initial: Some(to_duration(10)),
                        max: Some(to_duration(1000)),
                        multiplier: 2.0,
                    })),
                });
                let topics = match &reported.pub_sub {
                    Some(v2::settings::PubSub::Publishing(p)) => p.topics.clone(),
                    _ => Vec::new(),
                };
                answer.pub_sub = Some(v2::settings::PubSub::Publishing(v2::Publishing {
                    topics,
                    max_body_size: max_body_bytes.min(i32::MAX as u64) as i32,
                    validate_message_type: true,
                }));
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer_settings(attempts: i32) -> v2::Settings {
        v2::Settings {
            client_type: Some(v2::ClientType::PushConsumer as i32),
            backoff_policy: (attempts > 0).then(|| v2::RetryPolicy { max_attempts: attempts, strategy: None }),
            pub_sub: Some(v2::settings::PubSub::Subscription(v2::Subscription {
                group: Some(v2::Resource { resource_namespace: String::new(), name: "G".into() }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn producer_gets_publishing_limits() {
        let r = ClientRegistry::new(TelemetryLimits::default());
        let reported = v2::Settings {
            client_type: Some(v2::ClientType::Producer as i32),
            pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
                max_body_size: 1 << 27,
                ..Default::default()
            })),
            ..Default::default()
        };
        let a = r.answer("c1", &reported, &[], 4 << 20, 1);
        let Some(v2::settings::PubSub::Publishing(p)) = a.pub_sub else { panic!("no publishing") };
        assert_eq!(p.max_body_size, 4 << 20);
        assert!(p.validate_message_type);
        assert_eq!(r.client("c1").unwrap().client_type, v2::ClientType::Producer as i32);
    }

    #[test]
    fn consumer_gets_subscription_and_fifo_from_topic_types() {
        let r = ClientRegistry::new(TelemetryLimits::default());
        let a = r.answer("c2", &consumer_settings(0), &[TopicMessageType::Fifo], 1, 1);
        let Some(v2::settings::PubSub::Subscription(s)) = a.pub_sub else { panic!("no subscription") };
        assert_eq!(s.fifo, Some(true));
        assert_eq!(s.long_polling_timeout.unwrap().seconds, 20);
        assert_eq!(a.backoff_policy.unwrap().max_attempts, 16);
        assert_eq!(r.max_attempts("G"), 16);
        r.answer("c2", &consumer_settings(5), &[TopicMessageType::Normal], 1, 2);
        assert_eq!(r.max_attempts("G"), 5);
        r.answer("c2", &consumer_settings(1000), &[], 1, 3);
        assert_eq!(r.max_attempts("G"), 64, "bounded");
        assert_eq!(r.client("c2").unwrap().group.as_deref(), Some("G"));
    }

    #[test]
    fn registry_is_bounded() {
        let r = ClientRegistry::new(TelemetryLimits { clients_max: 3, ..Default::default() });
        for i in 0..10u64 {
            r.touch(&format!("c{i}"), 1, None, i);
        }
        assert_eq!(r.len(), 3);
        assert!(r.client("c9").is_some() && r.client("c0").is_none());
        r.remove("c9");
        assert_eq!(r.len(), 2);
    }
}

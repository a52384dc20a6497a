//! wasmq router plugin: sends messages with the same key to the same queue.
//!
//! - queue = FNV-1a-64(message group, else first key) % queue-count. The message group wins
//!   when present so a FIFO group never spreads over several queues (that would break its
//!   order); messages with neither get the host's default queue.
//! - per-topic rules from the manifest's `[config]` (quote the keys: `"override.orders" = "3"`):
//!   `override.<topic> = "<queue>"` fixed queue, `reject.<topic> = "<reason>"` refuse the send,
//!   `redirect.<topic> = "<other topic>"` store into another topic. One rule per topic;
//!   unknown keys are configuration errors (a typo must not silently disable a rule).

use std::collections::HashMap;

use wasmq_plugin_sdk::router::{Decision, MessageMeta, Router};
use wasmq_plugin_sdk::{Level, log};

/// Bounds the config this plugin accepts.
pub const RULES_MAX: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRule {
    Queue(u32),
    Reject(String),
    Redirect(String),
}

#[derive(Debug, Default)]
pub struct KeyHashRouter {
    rules: HashMap<String, TopicRule>,
}

/// FNV-1a, 64 bit: stable across versions and platforms, unlike std's `DefaultHasher`, so a
/// key maps to the same queue after a plugin upgrade or on another broker.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl KeyHashRouter {
    /// Builds the rules from `[config]` pairs.
    pub fn from_config<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Result<Self, String> {
        let mut rules = HashMap::new();
        for (key, value) in pairs {
            let (kind, topic) = key
                .split_once('.')
                .ok_or_else(|| format!("config key {key:?}: expected override.<topic>, reject.<topic> or redirect.<topic>"))?;
            if topic.is_empty() {
                return Err(format!("config key {key:?}: empty topic"));
            }
            let rule = match kind {
                "override" => TopicRule::Queue(
                    value.trim().parse().map_err(|_| format!("config {key:?} = {value:?}: not a queue id"))?,
                ),
                "reject" => TopicRule::Reject(value),
                "redirect" => {
                    if value.is_empty() || value == topic {
                        return Err(format!("config {key:?} = {value:?}: redirect needs another topic"));
                    }
                    TopicRule::Redirect(value)
                }
                _ => return Err(format!("config key {key:?}: unknown rule {kind:?}")),
            };
            if rules.len() == RULES_MAX {
                return Err(format!("more than {RULES_MAX} rules"));
            }
            if let Some(previous) = rules.insert(topic.to_owned(), rule) {
                return Err(format!("topic {topic:?} has two rules ({previous:?} and {key:?})"));
            }
        }
        Ok(KeyHashRouter { rules })
    }

    /// The routing decision, as a pure function of the message metadata.
    pub fn decide(&self, msg: &MessageMeta) -> Decision {
        if let Some(rule) = self.rules.get(&msg.topic) {
            return match rule {
                TopicRule::Queue(q) if *q < msg.queue_count => Decision::Queue(*q),
                TopicRule::Queue(q) => Decision::Reject(format!(
                    "key-hash-router: override.{} = {q} but the topic has {} queues",
                    msg.topic, msg.queue_count
                )),
                TopicRule::Reject(reason) => Decision::Reject(reason.clone()),
                TopicRule::Redirect(to) => Decision::Redirect(to.clone()),
            };
        }
        let key = msg
            .message_group
            .as_deref()
            .filter(|g| !g.is_empty())
            .or_else(|| msg.keys.iter().map(String::as_str).find(|k| !k.is_empty()));
        match key {
            Some(key) if msg.queue_count > 0 => {
                let queue = (fnv1a64(key.as_bytes()) % u64::from(msg.queue_count)) as u32;
                assert!(queue < msg.queue_count);
                Decision::Queue(queue)
            }
            _ => Decision::DefaultQueue,
        }
    }
}

impl Router for KeyHashRouter {
    fn init() -> Result<Self, String> {
        let pairs = wasmq_plugin_sdk::config_keys()
            .into_iter()
            .map(|k| {
                let v = wasmq_plugin_sdk::config(&k).unwrap_or_default();
                (k, v)
            })
            .collect::<Vec<_>>();
        let router = KeyHashRouter::from_config(pairs)?;
        log(Level::Info, &format!("key-hash-router: {} topic rules", router.rules.len()));
        Ok(router)
    }

    fn route(&self, msg: &MessageMeta, _body: Option<&[u8]>) -> Decision {
        self.decide(msg)
    }
}

wasmq_plugin_sdk::export_router!(KeyHashRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(topic: &str, keys: &[&str], group: Option<&str>, queue_count: u32) -> MessageMeta {
        MessageMeta {
            topic: topic.into(),
            tag: None,
            keys: keys.iter().map(|k| k.to_string()).collect(),
            properties: vec![],
            message_group: group.map(Into::into),
            body_size: 0,
            queue_count,
        }
    }

    fn router(pairs: &[(&str, &str)]) -> Result<KeyHashRouter, String> {
        KeyHashRouter::from_config(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn same_key_same_queue_and_keys_spread() {
        let r = router(&[]).unwrap();
        let q = |k: &str| match r.decide(&meta("t", &[k, "other"], None, 8)) {
            Decision::Queue(q) => q,
            d => panic!("{d:?}"),
        };
        assert_eq!(q("order-1"), q("order-1"));
        assert_eq!(q("order-1"), (fnv1a64(b"order-1") % 8) as u32);
        let used: std::collections::HashSet<u32> = (0..200).map(|i| q(&format!("k{i}"))).collect();
        assert_eq!(used.len(), 8, "200 keys reach all 8 queues");
    }

    #[test]
    fn message_group_wins_then_first_non_empty_key_then_default() {
        let r = router(&[]).unwrap();
        let by_group = r.decide(&meta("t", &["k"], Some("g"), 16));
        assert_eq!(by_group, Decision::Queue((fnv1a64(b"g") % 16) as u32));
        assert_eq!(r.decide(&meta("t", &["", "k"], None, 16)), Decision::Queue((fnv1a64(b"k") % 16) as u32));
        assert_eq!(r.decide(&meta("t", &[], None, 16)), Decision::DefaultQueue);
        assert_eq!(r.decide(&meta("t", &["k"], None, 0)), Decision::DefaultQueue);
    }

    #[test]
    fn topic_rules() {
        let r = router(&[("override.fixed", "3"), ("reject.closed", "topic closed"), ("redirect.old", "new")]).unwrap();
        assert_eq!(r.decide(&meta("fixed", &["k"], None, 4)), Decision::Queue(3));
        assert!(matches!(r.decide(&meta("fixed", &["k"], None, 2)), Decision::Reject(s) if s.contains("2 queues")));
        assert_eq!(r.decide(&meta("closed", &["k"], None, 4)), Decision::Reject("topic closed".into()));
        assert_eq!(r.decide(&meta("old", &[], None, 4)), Decision::Redirect("new".into()));
        assert!(matches!(r.decide(&meta("other", &["k"], None, 4)), Decision::Queue(_)));
    }

    #[test]
    fn config_errors() {
        for bad in [
            &[("override.t", "x")][..],
            &[("override.t", "-1")],
            &[("overide.t", "1")],
            &[("nodot", "1")],
            &[("override.", "1")],
            &[("redirect.t", "t")],
            &[("redirect.t", "")],
            &[("override.t", "1"), ("reject.t", "no")],
        ] {
            assert!(router(bad).is_err(), "{bad:?}");
        }
    }
}

//! Topic names and the topics the broker creates by itself.
//!
//! RocketMQ reserves `%RETRY%<group>` (messages to redeliver to a consumer group) and
//! `%DLQ%<group>` (messages that exhausted their retries). They are created on first use,
//! one queue each as in RocketMQ, regardless of `autoCreateTopicEnable`.

use wasmq_storage::record::{MessageType, TopicConfigRecord};

use crate::messaging::backend::{PERM_READ, PERM_WRITE, TopicInfo, TopicMessageType};

pub const RETRY_PREFIX: &str = "%RETRY%";
pub const DLQ_PREFIX: &str = "%DLQ%";
/// Queues of a reserved (retry / dead-letter) topic.
pub const RESERVED_TOPIC_QUEUES: u32 = 1;

/// A topic's settings as `mqadmin updateTopic` gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    pub message_type: MessageType,
}

impl TopicSpec {
    pub fn new(name: &str, queue_nums: u32) -> TopicSpec {
        TopicSpec {
            name: name.to_string(),
            read_queue_nums: queue_nums,
            write_queue_nums: queue_nums,
            perm: PERM_READ | PERM_WRITE,
            message_type: MessageType::Normal,
        }
    }

    pub fn to_record(&self) -> TopicConfigRecord {
        TopicConfigRecord {
            topic: self.name.clone(),
            read_queue_nums: self.read_queue_nums,
            write_queue_nums: self.write_queue_nums,
            perm: self.perm,
            message_type: self.message_type,
        }
    }
}

/// Whether `topic` is a retry or dead-letter topic (created on demand).
pub fn is_reserved(topic: &str) -> bool {
    reserved_suffix(topic).is_some()
}

fn reserved_suffix(topic: &str) -> Option<&str> {
    topic.strip_prefix(RETRY_PREFIX).or_else(|| topic.strip_prefix(DLQ_PREFIX)).filter(|group| !group.is_empty())
}

pub fn message_type_to_backend(t: MessageType) -> TopicMessageType {
    match t {
        MessageType::Fifo => TopicMessageType::Fifo,
        MessageType::Delay => TopicMessageType::Delay,
        MessageType::Transaction => TopicMessageType::Transaction,
        // RocketMQ treats unspecified / mixed topics like normal ones for typing purposes.
        MessageType::Normal | MessageType::Unspecified | MessageType::Mixed => TopicMessageType::Normal,
    }
}

pub fn topic_info(record: &TopicConfigRecord) -> TopicInfo {
    TopicInfo {
        name: record.topic.clone(),
        read_queue_count: record.read_queue_nums,
        write_queue_count: record.write_queue_nums,
        perm: record.perm,
        message_type: message_type_to_backend(record.message_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_topics() {
        assert!(is_reserved("%RETRY%group-a"));
        assert!(is_reserved("%DLQ%group-a"));
        assert!(!is_reserved("%RETRY%"));
        assert!(!is_reserved("orders"));
        assert!(!is_reserved("RETRY%x"));
    }
}

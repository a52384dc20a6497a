//! wasmq storage: the replicated commitlog (which is the Raft log) and the state derived
//! from it.
//!
//! - [`commitlog`]: segmented, preallocated, memory-mapped log; entries framed with CRC32C,
//!   O(1) lookup by Raft index; group commit; recovery in [`recovery`].
//! - [`record`]: entry body codec (messages, topic configs, consumer offsets, ...).
//! - [`consume_queue`]: per topic/queue index of message positions.
//! - [`store`]: [`MessageStore`] applies committed entries to consume queues and tables.
//! - [`retention`]: deletes old segments by age or disk budget.
//!
//! No async runtime here: the broker calls this from blocking contexts.

pub mod checkpoint;
pub mod commitlog;
pub mod consume_queue;
pub mod error;
pub mod frame;
pub mod index_file;
pub mod mapped_file;
mod prefaulter;
pub mod record;
pub mod recovery;
pub mod retention;
pub mod store;

pub use commitlog::{CommitLog, CommitLogConfig, EntryRef, FlushMode, LogSummary, SegmentInfo};
pub use error::{Result, StorageError};
pub use record::{CodecError, MessageRecord, MessageType, MessageView, Record, RecordView, TopicConfigRecord};
pub use recovery::RecoveryReport;
pub use retention::{RetentionPolicy, RetentionReport};
pub use store::{Applied, MessageStore, MessageStoreConfig, QueuedEntry, QueuedMessage, StoreRecoveryReport};

#[cfg(test)]
mod commitlog_tests;

#[cfg(test)]
mod store_tests;

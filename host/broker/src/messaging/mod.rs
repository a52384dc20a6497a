//! RocketMQ 5 gRPC (`apache.rocketmq.v2.MessagingService`) front end.

pub mod backend;
pub mod receipt_handle;
pub mod status;
pub mod tag_expression;

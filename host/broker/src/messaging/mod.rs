//! RocketMQ 5 gRPC (`apache.rocketmq.v2.MessagingService`) front end.

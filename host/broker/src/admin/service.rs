//! `wasmq.admin.Admin`: checks every request against limits, forwards it to the
//! [`AdminBackend`], and maps [`AdminError`] to gRPC status codes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::info;
use wasmq_proto::wasmq::admin::admin_server::{Admin, AdminServer};
use wasmq_proto::wasmq::admin::{
    BrokerStatusRequest, BrokerStatusResponse, ConsumeMessageRequest, ConsumeMessageResponse, ConsumerProgressRequest,
    ConsumerProgressResponse, PluginListRequest, PluginListResponse, PluginReloadRequest, PluginReloadResponse,
    QueryMessageByIdRequest, QueryMessageByIdResponse, SendMessageRequest, SendMessageResponse, ShutdownRequest,
    ShutdownResponse, TopicStatusRequest, TopicStatusResponse, TransferLeaderRequest, TransferLeaderResponse,
    UpdateTopicRequest, UpdateTopicResponse,
};

use super::backend::{AdminBackend, AdminError};

/// Messages one ConsumeMessage call may return (bounds response size with the body cap).
pub const CONSUME_COUNT_MAX: u32 = 256;
/// Body size accepted by SendMessage; the core applies its own `maxMessageSize` as well.
pub const SEND_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Keys and properties per SendMessage.
pub const SEND_KEYS_MAX: usize = 64;
pub const SEND_PROPERTIES_MAX: usize = 128;
/// Topic, tag, group, node and message id length (RocketMQ caps topic names at 127).
pub const NAME_BYTES_MAX: usize = 255;
/// Queue counts a topic may have (RocketMQ's default cap).
pub const QUEUE_NUMS_MAX: u32 = 1024;
pub const TRANSFER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
pub const TRANSFER_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// The service to mount on the broker's listenPort. `shutdown` is the broker's stop
/// trigger: the Shutdown RPC (loopback peers only) sets it to `true`.
pub fn service(backend: Arc<dyn AdminBackend>, shutdown: Arc<watch::Sender<bool>>) -> AdminServer<AdminService> {
    AdminServer::new(AdminService { backend, shutdown })
}

pub struct AdminService {
    backend: Arc<dyn AdminBackend>,
    shutdown: Arc<watch::Sender<bool>>,
}

/// gRPC metadata key carrying the leader's client address on a NotLeader answer, so tools
/// can retry there without parsing the message text.
pub const LEADER_ADDR_METADATA: &str = "x-wasmq-leader";

fn status(err: AdminError) -> Status {
    let message = err.to_string();
    match err {
        AdminError::NotFound(_) => Status::not_found(message),
        AdminError::InvalidArgument(_) => Status::invalid_argument(message),
        AdminError::NotLeader { leader } => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Some(addr) = leader.and_then(|a| a.parse().ok()) {
                metadata.insert(LEADER_ADDR_METADATA, addr);
            }
            Status::with_metadata(tonic::Code::FailedPrecondition, message, metadata)
        }
        AdminError::Unavailable(_) => Status::unavailable(message),
        AdminError::Internal(_) => Status::internal(message),
    }
}

fn check_name(what: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is empty")));
    }
    if value.len() > NAME_BYTES_MAX {
        return Err(Status::invalid_argument(format!("{what} is {} bytes, more than {NAME_BYTES_MAX}", value.len())));
    }
    Ok(())
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn broker_status(
        &self,
        _request: Request<BrokerStatusRequest>,
    ) -> Result<Response<BrokerStatusResponse>, Status> {
        self.backend.broker_status().await.map(Response::new).map_err(status)
    }

    async fn update_topic(
        &self,
        request: Request<UpdateTopicRequest>,
    ) -> Result<Response<UpdateTopicResponse>, Status> {
        let topic = request.into_inner().topic.ok_or_else(|| Status::invalid_argument("missing topic"))?;
        check_name("topic", &topic.name)?;
        for (what, n) in [("readQueueNums", topic.read_queue_nums), ("writeQueueNums", topic.write_queue_nums)] {
            if !(1..=QUEUE_NUMS_MAX).contains(&n) {
                return Err(Status::invalid_argument(format!("{what} = {n} is outside [1, {QUEUE_NUMS_MAX}]")));
            }
        }
        if topic.perm & !6 != 0 || topic.perm == 0 {
            return Err(Status::invalid_argument(format!(
                "perm = {} is not one of 2 (write), 4 (read), 6 (read+write)",
                topic.perm
            )));
        }
        info!(topic = %topic.name, read = topic.read_queue_nums, write = topic.write_queue_nums,
            perm = topic.perm, "admin: update topic");
        self.backend.update_topic(topic).await.map(Response::new).map_err(status)
    }

    async fn topic_status(
        &self,
        request: Request<TopicStatusRequest>,
    ) -> Result<Response<TopicStatusResponse>, Status> {
        let topic = request.into_inner().topic;
        check_name("topic", &topic)?;
        self.backend.topic_status(&topic).await.map(Response::new).map_err(status)
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let r = request.into_inner();
        check_name("topic", &r.topic)?;
        if r.body.len() > SEND_BODY_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "body is {} bytes, more than {SEND_BODY_BYTES_MAX}",
                r.body.len()
            )));
        }
        if r.keys.len() > SEND_KEYS_MAX || r.properties.len() > SEND_PROPERTIES_MAX {
            return Err(Status::invalid_argument(format!(
                "at most {SEND_KEYS_MAX} keys and {SEND_PROPERTIES_MAX} properties"
            )));
        }
        if r.tag.len() > NAME_BYTES_MAX || r.keys.iter().any(|k| k.len() > NAME_BYTES_MAX) {
            return Err(Status::invalid_argument(format!("tag and keys are limited to {NAME_BYTES_MAX} bytes each")));
        }
        self.backend.send_message(r).await.map(Response::new).map_err(status)
    }

    async fn consume_message(
        &self,
        request: Request<ConsumeMessageRequest>,
    ) -> Result<Response<ConsumeMessageResponse>, Status> {
        let r = request.into_inner();
        check_name("topic", &r.topic)?;
        if !(1..=CONSUME_COUNT_MAX).contains(&r.max_count) {
            return Err(Status::invalid_argument(format!(
                "max_count = {} is outside [1, {CONSUME_COUNT_MAX}]",
                r.max_count
            )));
        }
        let max_count = r.max_count as usize;
        let response = self.backend.consume_message(r).await.map_err(status)?;
        assert!(response.messages.len() <= max_count, "backend returned too many messages");
        Ok(Response::new(response))
    }

    async fn query_message_by_id(
        &self,
        request: Request<QueryMessageByIdRequest>,
    ) -> Result<Response<QueryMessageByIdResponse>, Status> {
        let id = request.into_inner().message_id;
        check_name("message id", &id)?;
        let message = self.backend.query_message_by_id(&id).await.map_err(status)?;
        Ok(Response::new(QueryMessageByIdResponse { message }))
    }

    async fn consumer_progress(
        &self,
        request: Request<ConsumerProgressRequest>,
    ) -> Result<Response<ConsumerProgressResponse>, Status> {
        let group = request.into_inner().group;
        if group.len() > NAME_BYTES_MAX {
            return Err(Status::invalid_argument("group name too long"));
        }
        self.backend.consumer_progress(&group).await.map(Response::new).map_err(status)
    }

    async fn plugin_list(&self, _request: Request<PluginListRequest>) -> Result<Response<PluginListResponse>, Status> {
        self.backend.plugin_list().await.map(Response::new).map_err(status)
    }

    async fn plugin_reload(
        &self,
        _request: Request<PluginReloadRequest>,
    ) -> Result<Response<PluginReloadResponse>, Status> {
        info!("admin: plugin reload");
        self.backend.plugin_reload().await.map(Response::new).map_err(status)
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let r = request.into_inner();
        check_name("target node id", &r.to_node_id)?;
        let timeout = match r.timeout_ms {
            0 => TRANSFER_TIMEOUT_DEFAULT,
            ms => Duration::from_millis(ms).min(TRANSFER_TIMEOUT_MAX),
        };
        info!(to = %r.to_node_id, "admin: leader transfer");
        self.backend.transfer_leader(&r.to_node_id, timeout).await.map(Response::new).map_err(status)
    }

    async fn shutdown(&self, request: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        // Only a local operator may stop the broker; listenPort is usually reachable remotely.
        match request.remote_addr() {
            Some(peer) if peer.ip().is_loopback() => {
                info!(%peer, "admin: shutdown requested");
                self.shutdown.send_replace(true);
                Ok(Response::new(ShutdownResponse {}))
            }
            peer => Err(Status::permission_denied(format!(
                "shutdown is accepted only from a loopback address, not {peer:?}"
            ))),
        }
    }
}

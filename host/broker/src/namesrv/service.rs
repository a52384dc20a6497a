//! `wasmq.namesrv.NameServer` over one [`RouteTable`], plus the expiry sweep and the
//! server lifecycle ([`start`] → [`RunningNamesrv`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use wasmq_proto::wasmq::namesrv::name_server_server::{NameServer, NameServerServer};
use wasmq_proto::wasmq::namesrv::{
    GetClusterInfoRequest, GetClusterInfoResponse, GetRouteRequest, GetRouteResponse, GetTopicListRequest,
    GetTopicListResponse, RegisterBrokerRequest, RegisterBrokerResponse, ShutdownRequest, ShutdownResponse,
    UnregisterBrokerRequest, UnregisterBrokerResponse,
};

use super::config::NamesrvConfig;
use super::route_table::{NodeKey, RegisterError, RouteTable};

/// The gRPC service. Cheap to clone (shared table).
#[derive(Clone)]
pub struct NameServerService {
    table: Arc<Mutex<RouteTable>>,
    shutdown: watch::Sender<bool>,
}

impl NameServerService {
    pub fn new(table: Arc<Mutex<RouteTable>>, shutdown: watch::Sender<bool>) -> Self {
        NameServerService { table, shutdown }
    }
}

fn register_status(err: RegisterError) -> Status {
    match err {
        RegisterError::Invalid(_) => Status::invalid_argument(err.to_string()),
        RegisterError::TooManyBrokers { .. } | RegisterError::TooManyTopics { .. } => {
            Status::resource_exhausted(err.to_string())
        }
    }
}

#[tonic::async_trait]
impl NameServer for NameServerService {
    async fn register_broker(
        &self,
        request: Request<RegisterBrokerRequest>,
    ) -> Result<Response<RegisterBrokerResponse>, Status> {
        let heartbeat = request.into_inner().broker.ok_or_else(|| Status::invalid_argument("missing broker"))?;
        let who = format!(
            "{}/{}/{} at {}",
            heartbeat.cluster_name, heartbeat.broker_name, heartbeat.node_id, heartbeat.client_addr
        );
        let role = heartbeat.role().as_str_name();
        let (is_new, expiry) = {
            let mut table = self.table.lock();
            let is_new = table.register(heartbeat, Instant::now()).map_err(|e| {
                warn!(broker = %who, error = %e, "registration refused");
                register_status(e)
            })?;
            (is_new, table.expiry())
        };
        if is_new {
            info!(broker = %who, role, "broker registered");
        }
        Ok(Response::new(RegisterBrokerResponse { expiry_ms: u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX) }))
    }

    async fn unregister_broker(
        &self,
        request: Request<UnregisterBrokerRequest>,
    ) -> Result<Response<UnregisterBrokerResponse>, Status> {
        let r = request.into_inner();
        let key = NodeKey { cluster_name: r.cluster_name, broker_name: r.broker_name, node_id: r.node_id };
        let removed = self.table.lock().unregister(&key);
        if removed {
            info!(cluster = %key.cluster_name, broker = %key.broker_name, node = %key.node_id,
                "broker unregistered");
        }
        Ok(Response::new(UnregisterBrokerResponse { removed }))
    }

    async fn get_route(&self, request: Request<GetRouteRequest>) -> Result<Response<GetRouteResponse>, Status> {
        let topic = request.into_inner().topic;
        if topic.is_empty() {
            return Err(Status::invalid_argument("topic is empty"));
        }
        let route = self.table.lock().route(&topic, Instant::now());
        route.map(Response::new).ok_or_else(|| Status::not_found(format!("no live broker serves topic {topic}")))
    }

    async fn get_cluster_info(
        &self,
        _request: Request<GetClusterInfoRequest>,
    ) -> Result<Response<GetClusterInfoResponse>, Status> {
        let table = self.table.lock();
        Ok(Response::new(GetClusterInfoResponse {
            brokers: table.cluster_info(Instant::now()),
            expiry_ms: u64::try_from(table.expiry().as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn get_topic_list(
        &self,
        _request: Request<GetTopicListRequest>,
    ) -> Result<Response<GetTopicListResponse>, Status> {
        let topics = self.table.lock().topic_list(Instant::now());
        Ok(Response::new(GetTopicListResponse { topics }))
    }

    async fn shutdown(&self, request: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        // Only a local operator may stop the name server; the port may be reachable remotely.
        match request.remote_addr() {
            Some(peer) if peer.ip().is_loopback() => {
                info!(%peer, "shutdown requested");
                self.shutdown.send_replace(true);
                Ok(Response::new(ShutdownResponse {}))
            }
            peer => Err(Status::permission_denied(format!(
                "shutdown is accepted only from a loopback address, not {peer:?}"
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("name server transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("name server task panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A started name server.
pub struct RunningNamesrv {
    local_addr: SocketAddr,
    table: Arc<Mutex<RouteTable>>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: JoinHandle<()>,
}

impl RunningNamesrv {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live table, for in-process inspection.
    pub fn table(&self) -> Arc<Mutex<RouteTable>> {
        self.table.clone()
    }

    /// Asks the server to stop (same as the Shutdown RPC).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// A receiver that turns `true` when shutdown was requested (signal or RPC).
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Waits until the server has stopped (after [`Self::shutdown`] or the Shutdown RPC).
    pub async fn wait(self) -> Result<(), ServeError> {
        let served = self.server.await;
        self.sweeper.abort();
        served??;
        Ok(())
    }
}

/// Binds `config.listen_addr()` and serves until shutdown is requested.
pub async fn start(config: &NamesrvConfig) -> Result<RunningNamesrv, ServeError> {
    let addr = config.listen_addr();
    let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    let table = Arc::new(Mutex::new(RouteTable::new(config.limits(), config.broker_expiry())));
    let (shutdown, _) = watch::channel(false);
    let service = NameServerService::new(table.clone(), shutdown.clone());

    let mut stop = shutdown.subscribe();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(
        tonic::transport::Server::builder().add_service(NameServerServer::new(service)).serve_with_incoming_shutdown(
            incoming,
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            },
        ),
    );
    let sweeper = tokio::spawn(sweep(table.clone(), Duration::from_millis(config.expiry_sweep_interval_ms)));
    info!(%local_addr, expiry_ms = config.broker_expiry_ms, "name server listening");
    Ok(RunningNamesrv { local_addr, table, shutdown, server, sweeper })
}

/// Frees expired registrations. Reads already skip them; this only bounds memory and logs.
async fn sweep(table: Arc<Mutex<RouteTable>>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let expired = table.lock().expire(Instant::now());
        for key in expired {
            warn!(cluster = %key.cluster_name, broker = %key.broker_name, node = %key.node_id,
                "broker expired: no heartbeat");
        }
    }
}

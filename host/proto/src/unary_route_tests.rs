//! Differential tests: the same service behind tonic alone, behind [`UnaryRouteLayer`] and
//! behind [`crate::h2_server::H2Server`] with the route as its unary method; the same raw
//! HTTP/2 requests to all three, the answers compared field by field.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::wasmq::raft::raft_server::{Raft, RaftServer};
use crate::wasmq::raft::{DeliverReply, MessageBatch, RaftMessage};

const DELIVER: &str = "/wasmq.raft.Raft/Deliver";
const MESSAGE_BYTES_MAX: usize = 256;

/// `Deliver` answers with the number of messages and echoes the `x-tag` metadata back as
/// response metadata; group "refuse" is an application error, group "slow" answers after
/// 300 ms.
struct Echo;

#[tonic::async_trait]
impl Raft for Echo {
    type PipeStream = Pin<Box<dyn futures_core::Stream<Item = Result<DeliverReply, Status>> + Send>>;

    async fn pipe(
        &self,
        _: tonic::Request<tonic::Streaming<MessageBatch>>,
    ) -> Result<tonic::Response<Self::PipeStream>, Status> {
        Err(Status::unimplemented("pipe is not in this test"))
    }

    async fn deliver(&self, r: tonic::Request<MessageBatch>) -> Result<tonic::Response<DeliverReply>, Status> {
        let tag = r.metadata().get("x-tag").cloned();
        let batch = r.into_inner();
        if batch.group == "refuse" {
            return Err(Status::permission_denied("wrong group"));
        }
        if batch.group == "slow" {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        let mut response =
            tonic::Response::new(DeliverReply { accepted: batch.messages.len() as u32, batches_through: 0 });
        if let Some(tag) = tag {
            response.metadata_mut().insert("x-tag", tag);
        }
        // A handler that sets a reserved header does not get to override the protocol's.
        response.metadata_mut().insert("grpc-status", "13".parse().unwrap());
        Ok(response)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Server {
    /// tonic alone.
    Tonic,
    /// tonic with `Deliver` on the unary route.
    Layer,
    /// `H2Server` with `Deliver` as its unary method, tonic's routes behind it.
    H2,
}

/// Serves `Echo` as `server` says; the returned counter counts the calls the unary route
/// took.
pub(crate) async fn serve(server: Server) -> (SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = Arc::new(Echo);
    let service = RaftServer::from_arc(echo.clone())
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let routed = Arc::new(AtomicU32::new(0));
    let counter = routed.clone();
    let handler: UnaryHandler<MessageBatch, DeliverReply> = Arc::new(move |request| {
        counter.fetch_add(1, Ordering::Relaxed);
        let echo = echo.clone();
        Box::pin(async move { echo.deliver(request).await })
    });
    let layer = UnaryRouteLayer::new(DELIVER, MESSAGE_BYTES_MAX, handler);
    match server {
        Server::Tonic => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        }
        Server::Layer => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(
                tonic::transport::Server::builder().layer(layer).add_service(service).serve_with_incoming(incoming),
            );
        }
        Server::H2 => {
            let incoming = futures::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |tcp| {
                tcp.map(crate::coalescing_io::CoalescingIo::new)
            });
            let server = crate::h2_server::H2Server::new(tonic::service::Routes::new(service)).unary(Arc::new(layer));
            tokio::spawn(server.serve(incoming, std::future::pending()));
        }
    }
    (addr, routed)
}

/// What a client can observe of one call.
#[derive(Debug, PartialEq)]
pub(crate) struct Answer {
    http_status: u16,
    content_type: Option<String>,
    /// `grpc-status` and `grpc-message`, from the headers of a trailers-only answer or
    /// from the trailers.
    pub(crate) grpc_status: Option<String>,
    pub(crate) grpc_message: Option<String>,
    tag: Option<String>,
    body: Vec<u8>,
}

/// One raw HTTP/2 call on a connection of its own: `body` as the request body, verbatim.
pub(crate) async fn call(addr: SocketAddr, path: &str, extra: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    call_on(client, path, extra, body).await.unwrap()
}

/// One raw HTTP/2 call on `client`'s connection; the error of a connection that refuses a
/// new stream (after a GOAWAY) or fails.
pub(crate) async fn call_on(
    client: h2::client::SendRequest<Bytes>,
    path: &str,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Answer, h2::Error> {
    let mut client = client.ready().await?;
    let mut request = http::Request::post(format!("http://wasmq.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let (response, mut send) = client.send_request(request.body(()).unwrap(), false)?;
    send.send_data(Bytes::from(body), true)?;
    let response = response.await?;
    let (parts, mut recv) = response.into_parts();
    let header = |map: &http::HeaderMap, name: &str| map.get(name).map(|v| v.to_str().unwrap().to_string());
    let mut answer = Answer {
        http_status: parts.status.as_u16(),
        content_type: header(&parts.headers, "content-type"),
        grpc_status: header(&parts.headers, "grpc-status"),
        grpc_message: header(&parts.headers, "grpc-message"),
        tag: header(&parts.headers, "x-tag"),
        body: Vec::new(),
    };
    while let Some(data) = recv.data().await {
        let data = data?;
        let _ = recv.flow_control().release_capacity(data.len());
        answer.body.extend_from_slice(&data);
    }
    if let Some(trailers) = recv.trailers().await? {
        answer.grpc_status = header(&trailers, "grpc-status").or(answer.grpc_status);
        answer.grpc_message = header(&trailers, "grpc-message").or(answer.grpc_message);
    }
    Ok(answer)
}

pub(crate) fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn batch(group: &str, messages: usize) -> Vec<u8> {
    MessageBatch { group: group.into(), messages: vec![RaftMessage::default(); messages], ..Default::default() }
        .encode_to_vec()
}

#[tokio::test]
async fn answers_every_request_as_tonic_does() {
    let (plain, plain_routed) = serve(Server::Tonic).await;
    let (fast, routed) = serve(Server::Layer).await;
    let (direct, direct_routed) = serve(Server::H2).await;
    let good = framed(0, &batch("g", 3));
    let cases: Vec<(&str, &str, Vec<(&str, &str)>, Vec<u8>)> = vec![
        ("a call", DELIVER, vec![("x-tag", "abc")], good.clone()),
        ("an application error", DELIVER, vec![], framed(0, &batch("refuse", 1))),
        ("an empty body", DELIVER, vec![], Vec::new()),
        ("a cut prefix", DELIVER, vec![], good[..3].to_vec()),
        ("a cut message", DELIVER, vec![], good[..good.len() - 1].to_vec()),
        ("a compressed flag without grpc-encoding", DELIVER, vec![], framed(1, &batch("g", 1))),
        ("an invalid flag", DELIVER, vec![], framed(7, &batch("g", 1))),
        ("a message over the limit", DELIVER, vec![], framed(0, &batch("g", 200))),
        ("bytes that do not decode", DELIVER, vec![], framed(0, &[0xff; 9])),
        ("a deadline that expires", DELIVER, vec![("grpc-timeout", "50m")], framed(0, &batch("slow", 1))),
        ("a deadline that does not", DELIVER, vec![("grpc-timeout", "5S")], framed(0, &batch("slow", 1))),
        // Not taken by the route: tonic answers both.
        ("a compressed call", DELIVER, vec![("grpc-encoding", "gzip")], framed(1, &batch("g", 1))),
        ("another method", "/wasmq.raft.Raft/Pipe", vec![], good.clone()),
        ("an unknown method", "/wasmq.raft.Raft/Nothing", vec![], good.clone()),
    ];
    for (what, path, extra, body) in cases {
        let expected = call(plain, path, &extra, body.clone()).await;
        let got = call(fast, path, &extra, body.clone()).await;
        assert_eq!(got, expected, "{what}");
        assert_eq!(call(direct, path, &extra, body).await, expected, "{what}, on h2 directly");
        if what == "a call" {
            let reply = DeliverReply::decode(&got.body[5..]).unwrap();
            assert_eq!(reply.accepted, 3);
            assert_eq!(got.tag.as_deref(), Some("abc"));
            assert_eq!(got.grpc_status.as_deref(), Some("0"));
        }
    }
    assert_eq!(plain_routed.load(Ordering::Relaxed), 0);
    // The calls the route took (the others never reached a handler: bad bodies are refused
    // before it, tonic took the last three).
    assert_eq!(routed.load(Ordering::Relaxed), 4);
    assert_eq!(direct_routed.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn refuses_a_second_message_in_a_unary_call() {
    for server in [Server::Layer, Server::H2] {
        let (fast, routed) = serve(server).await;
        let mut body = framed(0, &batch("g", 1));
        body.extend(framed(0, &batch("g", 2)));
        let got = call(fast, DELIVER, &[], body).await;
        assert_eq!(got.grpc_status.as_deref(), Some("13"), "{server:?}: {got:?}");
        assert_eq!(
            got.grpc_message.as_deref(),
            Some("more%20than%20one%20request%20message%20in%20a%20unary%20call"),
            "{server:?}: percent-encoded"
        );
        assert_eq!(routed.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test]
async fn a_generated_client_works_against_it() {
    for server in [Server::Layer, Server::H2] {
        a_generated_client_works_against(server).await;
    }
}

async fn a_generated_client_works_against(server: Server) {
    let (fast, routed) = serve(server).await;
    let mut client = crate::wasmq::raft::raft_client::RaftClient::connect(format!("http://{fast}")).await.unwrap();
    let mut request = tonic::Request::new(MessageBatch {
        group: "g".into(),
        messages: vec![RaftMessage::default(); 5],
        ..Default::default()
    });
    request.metadata_mut().insert("x-tag", "t1".parse().unwrap());
    let response = client.deliver(request).await.unwrap();
    assert_eq!(response.metadata().get("x-tag").unwrap(), "t1");
    assert_eq!(response.into_inner().accepted, 5);
    let refused = client.deliver(MessageBatch { group: "refuse".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (tonic::Code::PermissionDenied, "wrong group"));
    assert_eq!(routed.load(Ordering::Relaxed), 2);
}

//! [`H2Channel`]: a gRPC client transport written straight on the `h2` crate. One HTTP/2
//! connection (a [`CoalescingIo`] socket, or a plain one: [`H2Channel::plain`]) to one
//! endpoint, dialled on first use and dialled again on the first call after it failed.
//! tonic's generated clients run on it unchanged (`XxxClient::with_origin(channel, origin)`).
//!
//! Why not tonic's `Channel`: between a call and its socket, `Channel` puts a tower
//! `Buffer` (a queue and a worker task) and hyper's client dispatch (another queue, and a
//! task per call that waits for the response). Each is a task switch and a waker per call.
//! Here a call puts its request straight into h2's stream table and awaits the response in
//! the caller's own task; only h2's connection task, which owns the socket, runs besides.
//! Measured with mqbench against the same servers (`examples/bench/ab.sh` with
//! `BASE_BENCH`, 3 interleaved rounds): the client's CPU per message 0.81× and msg/s 1.12×
//! at 64 producers; 0.87× CPU (77 → 68 µs; NATS's client: 31) and msg/s within noise at 1.
//!
//! What it leaves out, deliberately: client-streaming and bidirectional calls through
//! tonic's clients (the request body is collected before the call starts, so such a call
//! would wait for its own end; `H2Channel::duplex` makes a bidirectional call without them),
//! load balancing and several addresses (one channel, one endpoint), HTTP/2 keep-alive
//! pings (a dead peer shows as a call's timeout, after which the connection is dropped and
//! dialled anew), TLS, compression.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use parking_lot::Mutex;

use crate::coalescing_io::CoalescingIo;
use crate::grpc_frame;

/// HTTP/2 receive windows: hyper's client defaults, which `Channel` used, so a receive of a
/// large batch is not held back by the protocol's 64 KiB default.
const STREAM_WINDOW_BYTES: u32 = 2 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 5 << 20;
/// Most bytes h2 buffers for one stream beyond its send window (hyper's default).
const SEND_BUFFER_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum H2ChannelError {
    #[error("connect {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("http/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request body: {0}")]
    Body(#[from] tonic::Status),
    #[error("bad request uri: {0}")]
    Uri(String),
}

/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct H2Channel {
    shared: Arc<Shared>,
}

struct Shared {
    /// `host:port` to dial; also the requests' `:authority`.
    authority: http::uri::Authority,
    connect_timeout: Duration,
    /// For a call whose request names no `grpc-timeout`.
    call_timeout: Duration,
    current: Mutex<Option<Connection>>,
    /// Whether the socket is a [`CoalescingIo`] (the default) or a plain `TcpStream`.
    coalescing: bool,
    /// Held while dialling, so concurrent first calls share one connection.
    dialing: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) send: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when the connection ends.
    closed: Arc<AtomicBool>,
}

impl H2Channel {
    /// A channel to `authority` (`host:port`); nothing is dialled yet. `connect_timeout`
    /// bounds each dial, `call_timeout` each call that carries no `grpc-timeout` of its own
    /// (from dialling to the response's headers, as `Channel`'s timeout did).
    pub fn new(authority: http::uri::Authority, connect_timeout: Duration, call_timeout: Duration) -> H2Channel {
        H2Channel::with_io(authority, connect_timeout, call_timeout, true)
    }

    /// [`H2Channel::new`] whose connections write straight to the socket, without a
    /// [`CoalescingIo`] and its writer task: for one long stream of large messages (a Raft
    /// pipe), where there are no concurrent calls' frames to gather and the writer task
    /// would only add a hand-off per flush.
    pub fn plain(authority: http::uri::Authority, connect_timeout: Duration, call_timeout: Duration) -> H2Channel {
        H2Channel::with_io(authority, connect_timeout, call_timeout, false)
    }

    fn with_io(
        authority: http::uri::Authority,
        connect_timeout: Duration,
        call_timeout: Duration,
        coalescing: bool,
    ) -> H2Channel {
        H2Channel {
            shared: Arc::new(Shared {
                authority,
                connect_timeout,
                call_timeout,
                current: Mutex::new(None),
                coalescing,
                dialing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// [`H2Channel::new`] for `endpoint`, written `http://host:port` or `host:port`; the
    /// error says what is wrong with it.
    pub fn for_endpoint(
        endpoint: &str,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<H2Channel, String> {
        let uri = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        let uri: http::Uri = uri.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// endpoints are supported".into());
        }
        let authority = uri.authority().filter(|a| a.port_u16().is_some()).ok_or("no host:port")?;
        Ok(H2Channel::new(authority.clone(), connect_timeout, call_timeout))
    }

    /// The origin to give a tonic client (`with_origin`): `http://authority`.
    pub fn origin(&self) -> http::Uri {
        http::Uri::builder()
            .scheme("http")
            .authority(self.shared.authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme, authority and path make a URI")
    }

    fn live(&self) -> Option<Connection> {
        self.shared.current.lock().as_ref().filter(|c| !c.closed.load(Ordering::Acquire)).cloned()
    }

    /// Drops `broken` unless a newer connection replaced it already.
    fn forget(&self, broken: &Connection) {
        let mut current = self.shared.current.lock();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(&c.closed, &broken.closed)) {
            *current = None;
        }
    }

    /// Forgets `connection` after `e` if `e` says it is done for: a broken socket, a
    /// GOAWAY, or its task ended.
    pub(crate) fn failed(&self, connection: &Connection, e: &h2::Error) {
        if e.is_io() || e.is_go_away() || connection.closed.load(Ordering::Acquire) {
            self.forget(connection);
        }
    }

    /// `http://authority/path` on this channel.
    pub(crate) fn uri(&self, path: &str) -> Result<http::Uri, tonic::Status> {
        http::Uri::builder()
            .scheme("http")
            .authority(self.shared.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| tonic::Status::internal(format!("bad method path {path:?}: {e}")))
    }

    pub(crate) async fn connection(&self) -> Result<Connection, H2ChannelError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _dialing = self.shared.dialing.lock().await;
        if let Some(c) = self.live() {
            return Ok(c); // dialled by another call meanwhile
        }
        let address = self.shared.authority.as_str();
        let connect_error = |source| H2ChannelError::Connect { address: address.to_string(), source };
        let stream = crate::dial::dial(address, self.shared.connect_timeout).await.map_err(connect_error)?;
        let c = if self.shared.coalescing { start(CoalescingIo::new(stream)).await? } else { start(stream).await? };
        *self.shared.current.lock() = Some(c.clone());
        Ok(c)
    }

    /// A unary call without tonic's client codec: `request` encoded straight into one
    /// buffer, the answer's one message decoded from its collected body. For a caller on
    /// the hot path (a producer's sends, a follower's forwarded sends); what it returns is
    /// what tonic's generated client would, status codes and texts included (tested side by
    /// side). `message_bytes_max` bounds the request and the answer, as tonic's
    /// `max_encoding_message_size` and `max_decoding_message_size`.
    ///
    /// Why: in mqbench with 64 producers, tonic's client path (a `Streaming` decoder and an
    /// `EncodeBody` per call, the request's header map rebuilt) was about a fifth of the
    /// client's CPU samples, for one buffer each way.
    pub async fn unary<Req, Resp>(
        &self,
        path: &'static str,
        request: tonic::Request<Req>,
        message_bytes_max: usize,
    ) -> Result<tonic::Response<Resp>, tonic::Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let (metadata, extensions, message) = request.into_parts();
        let data = grpc_frame::encode(&message, message_bytes_max)?;
        let mut headers = grpc_frame::headers(metadata);
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        let uri = self.uri(path)?;
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = headers;
        *request.extensions_mut() = extensions;
        let (parts, ()) = request.into_parts();
        let timeout = crate::grpc_timeout::of(&parts.headers).unwrap_or(self.shared.call_timeout);
        let response = self
            .timed(timeout, self.clone().send(parts, data))
            .await
            .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
        read_unary_answer(response, message_bytes_max).await
    }

    /// `call` within `timeout`. On a timeout the connection is dropped: a peer that stopped
    /// answering (paused, cut off) is dialled anew next time rather than queued behind.
    async fn timed<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<T, H2ChannelError>>,
    ) -> Result<T, H2ChannelError> {
        let connection_before = self.live();
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => {
                if let Some(c) = connection_before.or_else(|| self.live()) {
                    self.forget(&c);
                }
                Err(H2ChannelError::Timeout(timeout))
            }
        }
    }

    async fn call(self, request: http::Request<tonic::body::Body>) -> Result<http::Response<H2Body>, H2ChannelError> {
        let (mut parts, body) = request.into_parts();
        // A unary or server-streaming request's one message: ready at once.
        let data = body.collect().await?.to_bytes();
        // A client made `with_origin(channel, channel.origin())` names scheme and authority
        // already; h2 needs both, so a bare path gets this channel's.
        if parts.uri.scheme().is_none() || parts.uri.authority().is_none() {
            let path = parts.uri.path_and_query().cloned().ok_or_else(|| H2ChannelError::Uri(parts.uri.to_string()))?;
            parts.uri = http::Uri::builder()
                .scheme("http")
                .authority(self.shared.authority.clone())
                .path_and_query(path)
                .build()
                .map_err(|e| H2ChannelError::Uri(e.to_string()))?;
        }
        self.send(parts, data).await
    }

    /// Sends a request whose body is `data` (nothing if empty) on the live connection,
    /// dialling one if needed; resolves at the answer's headers.
    async fn send(self, parts: http::request::Parts, data: Bytes) -> Result<http::Response<H2Body>, H2ChannelError> {
        let connection = self.connection().await?;
        let sent = async {
            let mut send = connection.send.clone().ready().await?;
            let (response, mut body) = send.send_request(http::Request::from_parts(parts, ()), data.is_empty())?;
            if !data.is_empty() {
                body.send_data(data, true)?;
            }
            response.await
        };
        match sent.await {
            Ok(response) => Ok(response.map(H2Body::new)),
            Err(e) => {
                self.failed(&connection, &e);
                Err(e.into())
            }
        }
    }
}

/// The HTTP/2 handshake on `io`, and a task to drive the connection.
async fn start<T>(io: T) -> Result<Connection, h2::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_send_buffer_size(SEND_BUFFER_BYTES_MAX)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let on_end = closed.clone();
    tokio::spawn(async move {
        // Ends on an I/O error, a GOAWAY, or when every handle and stream is gone.
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "grpc connection ended");
        }
        on_end.store(true, Ordering::Release);
    });
    Ok(Connection { send, closed })
}

impl tower::Service<http::Request<tonic::body::Body>> for H2Channel {
    type Response = http::Response<H2Body>;
    type Error = H2ChannelError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, H2ChannelError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), H2ChannelError>> {
        // Readiness (a dial, h2's limit of concurrent streams) is awaited inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let channel = self.clone();
        let timeout = crate::grpc_timeout::of(request.headers()).unwrap_or(self.shared.call_timeout);
        Box::pin(async move { channel.timed(timeout, channel.clone().call(request)).await })
    }
}

/// The one message of a unary call's answer, or the status it failed with, as tonic's
/// client reads them: a non-OK `grpc-status` in the headers (trailers-only) fails at once;
/// otherwise the message is decoded first and the trailers' status checked after, with
/// tonic's mapping from the HTTP status when the trailers name none.
async fn read_unary_answer<M: prost::Message + Default>(
    response: http::Response<H2Body>,
    bytes_max: usize,
) -> Result<tonic::Response<M>, tonic::Status> {
    use http_body::Body as _;
    let (parts, mut body) = response.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
        return Err(tonic::Status::internal("Missing response message."));
    }
    let mut frame = grpc_frame::OneFrame::new(bytes_max, grpc_frame::Reader::Client(parts.status));
    let mut trailers: Option<http::HeaderMap> = None;
    while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match chunk.map_err(h2_status)?.into_data() {
            Ok(data) => frame.push(&data)?,
            Err(chunk) => trailers = chunk.into_trailers().ok(),
        }
    }
    let message = frame.finish::<M>(trailers.is_some())?;
    if let Some(failed) = answer_status(trailers.as_ref(), parts.status) {
        return Err(failed);
    }
    let message = message.ok_or_else(|| tonic::Status::internal("Missing response message."))?;
    let mut headers = parts.headers;
    if let Some(trailers) = trailers {
        headers.extend(trailers);
    }
    Ok(tonic::Response::from_parts(tonic::metadata::MetadataMap::from_headers(headers), message, parts.extensions))
}

/// An h2 failure as the status tonic's client gives for it.
pub(crate) fn h2_status(e: h2::Error) -> tonic::Status {
    tonic::Status::from_error(Box::new(e))
}

/// The failure an answer's end names, if any (tonic's `infer_grpc_status`).
pub(crate) fn answer_status(
    trailers: Option<&http::HeaderMap>,
    http_status: http::StatusCode,
) -> Option<tonic::Status> {
    use tonic::Code;
    // The common end, `grpc-status: 0`, without building a `Status` (which copies every
    // other trailer into its metadata only to be dropped).
    if trailers.and_then(|t| t.get("grpc-status")).is_some_and(|v| v.as_bytes() == b"0") {
        return None;
    }
    if let Some(status) = trailers.and_then(tonic::Status::from_header_map) {
        return (status.code() != Code::Ok).then_some(status);
    }
    let code = match http_status {
        http::StatusCode::BAD_REQUEST => Code::Internal,
        http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        http::StatusCode::FORBIDDEN => Code::PermissionDenied,
        http::StatusCode::NOT_FOUND => Code::Unimplemented,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        http::StatusCode::OK => {
            return Some(tonic::Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated without a final status (possible truncation by a proxy or load balancer)",
            ));
        }
        _ => Code::Unknown,
    };
    Some(tonic::Status::new(
        code,
        format!("grpc-status header missing, mapped from HTTP status code {}", http_status.as_u16()),
    ))
}

/// A response body: h2's receive stream, data then trailers, giving the flow-control
/// window back as data is taken.
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl H2Body {
    pub(crate) fn new(recv: h2::RecvStream) -> H2Body {
        H2Body { recv, data_done: false, done: false }
    }
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Only fails for a stream already reset; the next poll reports that.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => self.data_done = true,
            }
        }
        let trailers = ready!(self.recv.poll_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicU32;

    use tokio::net::TcpListener;

    use super::*;
    use crate::wasmq::raft::raft_client::RaftClient;
    use crate::wasmq::raft::raft_server::{Raft, RaftServer};
    use crate::wasmq::raft::{DeliverReply, MessageBatch, RaftMessage};
    use prost::Message as _;

    /// Answers `Deliver` with the number of messages; a batch for group "slow" is answered
    /// after 2 s.
    struct Echo {
        calls: Arc<AtomicU32>,
    }

    #[tonic::async_trait]
    impl Raft for Echo {
        type PipeStream =
            std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<DeliverReply, tonic::Status>> + Send>>;

        async fn pipe(
            &self,
            _: tonic::Request<tonic::Streaming<MessageBatch>>,
        ) -> Result<tonic::Response<Self::PipeStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn deliver(
            &self,
            r: tonic::Request<MessageBatch>,
        ) -> Result<tonic::Response<DeliverReply>, tonic::Status> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let batch = r.into_inner();
            if batch.group == "slow" {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            if batch.group == "refuse" {
                return Err(tonic::Status::permission_denied("wrong group"));
            }
            Ok(tonic::Response::new(DeliverReply { accepted: batch.messages.len() as u32, batches_through: 0 }))
        }
    }

    /// Serves `Echo` on `listener` until the returned handle is aborted; its connections
    /// close with it, as a crashed server's do.
    fn serve(listener: TcpListener, calls: Arc<AtomicU32>) -> tokio::task::JoinHandle<()> {
        use tokio_stream::StreamExt;
        tokio::spawn(async move {
            let token = tokio_util::sync::CancellationToken::new();
            let _close_connections = token.clone().drop_guard();
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .map(move |s| s.map(|s| crate::cancellable_io::CancellableIo::new(s, token.clone())));
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(Echo { calls }))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        })
    }

    fn batch(group: &str, messages: usize) -> MessageBatch {
        MessageBatch { group: group.into(), messages: vec![RaftMessage::default(); messages], ..Default::default() }
    }

    fn client(authority: &str, call_timeout: Duration) -> RaftClient<H2Channel> {
        let channel = H2Channel::new(authority.parse().unwrap(), Duration::from_secs(2), call_timeout);
        let origin = channel.origin();
        RaftClient::with_origin(channel, origin)
    }

    #[tokio::test]
    async fn calls_share_one_connection_fail_while_the_server_is_down_and_redial_after() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let server = serve(listener, calls.clone());
        let mut c = client(&addr.to_string(), Duration::from_secs(5));

        // Concurrent calls, one connection, each its own answer.
        let answers = futures::future::join_all((1..=20).map(|n| {
            let mut c = c.clone();
            async move { c.deliver(batch("g", n)).await.unwrap().into_inner().accepted }
        }))
        .await;
        assert_eq!(answers, (1..=20).collect::<Vec<u32>>());
        // An application error is a status, and the connection stays usable.
        let refused = c.deliver(batch("refuse", 1)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(c.deliver(batch("g", 3)).await.unwrap().into_inner().accepted, 3);

        // The server goes away: calls fail (no hang), and once it is back on the same port
        // the next call dials again.
        server.abort();
        let _ = server.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if c.deliver(batch("g", 1)).await.is_err() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "calls still succeed after the server stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listener = TcpListener::bind(addr).await.unwrap();
        let _server = serve(listener, calls.clone());
        assert_eq!(c.deliver(batch("g", 4)).await.unwrap().into_inner().accepted, 4);
        assert_eq!(calls.load(Ordering::Relaxed), 23, "20 + refused + 1 before, 1 after the restart");
    }

    #[tokio::test]
    async fn a_call_without_an_answer_times_out_and_the_next_one_works() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = serve(listener, Arc::new(AtomicU32::new(0)));
        let mut c = client(&addr.to_string(), Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = c.deliver(batch("slow", 1)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(1_500), "timed out after {:?}", started.elapsed());
        assert!(err.to_string().contains("no answer within"), "{err}");
        assert_eq!(c.deliver(batch("g", 2)).await.unwrap().into_inner().accepted, 2);
        // A request's own grpc-timeout wins over the channel's.
        let mut request = tonic::Request::new(batch("slow", 1));
        request.set_timeout(Duration::from_secs(5));
        assert_eq!(c.deliver(request).await.unwrap().into_inner().accepted, 1);
    }

    #[tokio::test]
    async fn a_client_without_an_origin_gets_the_channels_authority() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = serve(listener, Arc::new(AtomicU32::new(0)));
        let channel = H2Channel::new(addr.to_string().parse().unwrap(), Duration::from_secs(2), Duration::from_secs(5));
        let mut c = RaftClient::new(channel);
        assert_eq!(c.deliver(batch("g", 5)).await.unwrap().into_inner().accepted, 5);
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c = client(&format!("127.0.0.1:{port}"), Duration::from_secs(5));
        let err = c.deliver(batch("g", 1)).await.unwrap_err();
        assert!(err.to_string().contains("connect 127.0.0.1"), "{err}");
    }

    #[test]
    fn endpoints_with_and_without_a_scheme_and_bad_ones() {
        let t = Duration::from_secs(1);
        let origin = |e: &str| H2Channel::for_endpoint(e, t, t).map(|c| c.origin().to_string());
        assert_eq!(origin("http://127.0.0.1:8081").unwrap(), "http://127.0.0.1:8081/");
        assert_eq!(origin("127.0.0.1:8081").unwrap(), "http://127.0.0.1:8081/");
        assert_eq!(origin("[::1]:8081").unwrap(), "http://[::1]:8081/");
        assert!(origin("https://127.0.0.1:8081").unwrap_err().contains("only http://"));
        assert!(origin("http://127.0.0.1").unwrap_err().contains("no host:port"));
        assert!(origin("http://bad host:1").is_err());
    }

    /// Serves canned HTTP/2 answers, picked by the request's path, for what a tonic
    /// server never sends: answers a client must still read as tonic's client does.
    /// Each answer but `NotFound`, `Unavailable` and `OkNoMessage` carries one `DeliverReply`
    /// with `accepted: 7`.
    pub(crate) async fn serve_canned() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        let reply = DeliverReply { accepted: 7, batches_through: 0 }.encode_to_vec();
                        let mut framed = vec![0u8];
                        framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                        framed.extend_from_slice(&reply);
                        let case = request.uri().path().rsplit('/').next().unwrap().to_string();
                        let (status, data, trailer_status): (u16, Vec<u8>, Option<&str>) = match case.as_str() {
                            "NoTrailers" => (200, framed, None),
                            "NotFound" => (404, Vec::new(), None),
                            "Unavailable" => (503, Vec::new(), None),
                            "OkNoMessage" => (200, Vec::new(), Some("0")),
                            "BadFlag" => (200, [&[9u8][..], &framed[1..]].concat(), Some("0")),
                            "Cut" => (200, framed[..framed.len() - 2].to_vec(), Some("0")),
                            "Garbage" => (200, vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff], Some("0")),
                            "ThenFails" => (200, framed, Some("14")),
                            _ => (200, framed, Some("0")),
                        };
                        let response = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/grpc")
                            .header("x-tag", "canned")
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(response, false).unwrap();
                        if !data.is_empty() {
                            send.send_data(Bytes::from(data), trailer_status.is_none()).unwrap();
                        }
                        match trailer_status {
                            Some(code) => {
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", code.parse().unwrap());
                                trailers.insert("grpc-message", "canned".parse().unwrap());
                                send.send_trailers(trailers).unwrap();
                            }
                            None if data_was_empty(status) => send.send_data(Bytes::new(), true).unwrap(),
                            None => {}
                        }
                    }
                });
            }
        });
        addr
    }

    fn data_was_empty(status: u16) -> bool {
        status != 200
    }

    /// What a caller can observe of a unary call's outcome.
    fn outcome(result: Result<tonic::Response<DeliverReply>, tonic::Status>) -> String {
        match result {
            Ok(r) => format!(
                "ok accepted={} tag={:?}",
                r.get_ref().accepted,
                r.metadata().get("x-tag").map(|v| v.to_str().unwrap().to_string())
            ),
            Err(s) => format!("err {:?} {:?}", s.code(), s.message()),
        }
    }

    /// `unary` against tonic's generated client on the same channel and server.
    async fn both(channel: &H2Channel, path: &'static str, batch: MessageBatch, bytes_max: usize) -> (String, String) {
        let origin = channel.origin();
        let mut tonic_client = RaftClient::with_origin(channel.clone(), origin)
            .max_decoding_message_size(bytes_max)
            .max_encoding_message_size(bytes_max);
        let tonic_result = if path.ends_with("/Deliver") {
            tonic_client.deliver(tonic::Request::new(batch.clone())).await
        } else {
            // Any other path: tonic's generic unary call, as a generated method makes it.
            tonic_client_call(channel, path, batch.clone(), bytes_max).await
        };
        let ours = channel.unary::<MessageBatch, DeliverReply>(path, tonic::Request::new(batch), bytes_max).await;
        (outcome(ours), outcome(tonic_result))
    }

    async fn tonic_client_call(
        channel: &H2Channel,
        path: &'static str,
        batch: MessageBatch,
        bytes_max: usize,
    ) -> Result<tonic::Response<DeliverReply>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::with_origin(channel.clone(), channel.origin())
            .max_decoding_message_size(bytes_max)
            .max_encoding_message_size(bytes_max);
        grpc.ready().await.map_err(|e| tonic::Status::unknown(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<MessageBatch, DeliverReply>::default();
        grpc.unary(tonic::Request::new(batch), http::uri::PathAndQuery::from_static(path), codec).await
    }

    #[tokio::test]
    async fn unary_answers_as_tonic_s_client_does() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = serve(listener, Arc::new(AtomicU32::new(0)));
        let channel =
            H2Channel::new(addr.to_string().parse().unwrap(), Duration::from_secs(2), Duration::from_millis(300));
        let deliver = "/wasmq.raft.Raft/Deliver";
        let cases: Vec<(&str, &'static str, MessageBatch, usize)> = vec![
            (
                "a call",
                deliver,
                MessageBatch { group: "g".into(), messages: vec![RaftMessage::default(); 4], ..Default::default() },
                1 << 20,
            ),
            ("an application error", deliver, MessageBatch { group: "refuse".into(), ..Default::default() }, 1 << 20),
            ("an unknown method", "/wasmq.raft.Raft/Nothing", MessageBatch::default(), 1 << 20),
            (
                "a request over the limit",
                deliver,
                MessageBatch { group: "g".into(), messages: vec![RaftMessage::default(); 50], ..Default::default() },
                64,
            ),
            ("a call past its timeout", deliver, MessageBatch { group: "slow".into(), ..Default::default() }, 1 << 20),
        ];
        for (what, path, batch, bytes_max) in cases {
            let (ours, theirs) = both(&channel, path, batch, bytes_max).await;
            assert_eq!(ours, theirs, "{what}");
            if what == "a call" {
                assert_eq!(ours, "ok accepted=4 tag=None");
            }
        }

        // Answers no tonic server gives.
        let canned = serve_canned().await;
        let channel =
            H2Channel::new(canned.to_string().parse().unwrap(), Duration::from_secs(2), Duration::from_secs(2));
        for case in
            ["Fine", "NoTrailers", "NotFound", "Unavailable", "OkNoMessage", "BadFlag", "Cut", "Garbage", "ThenFails"]
        {
            let path: &'static str = Box::leak(format!("/canned.Canned/{case}").into_boxed_str());
            let (ours, theirs) = both(&channel, path, MessageBatch::default(), 1 << 20).await;
            assert_eq!(ours, theirs, "{case}");
            if case == "Fine" {
                assert_eq!(ours, "ok accepted=7 tag=Some(\"canned\")");
            }
        }
        // An answer over the limit.
        let (ours, theirs) = both(&channel, "/canned.Canned/Fine", MessageBatch::default(), 1).await;
        assert_eq!(ours, theirs, "an answer over the limit");
        assert!(ours.starts_with("err OutOfRange"), "{ours}");

        // Nobody listening: the same transport error.
        drop(_server);
        let gone = H2Channel::new("127.0.0.1:1".parse().unwrap(), Duration::from_secs(1), Duration::from_secs(1));
        let (ours, theirs) = both(&gone, deliver, MessageBatch::default(), 1 << 20).await;
        assert_eq!(ours, theirs, "a dead endpoint");
    }
}

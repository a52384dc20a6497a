//! [`H2Server`]: a gRPC server written on `h2` directly. Unary methods registered as
//! [`UnaryMethod`]s are answered here; every other request goes to a tower service (tonic's
//! `Routes`) as hyper would hand it over.
//!
//! Why: on the leader, with 64 producers and one connection, the per-call tasks were 54 % of
//! the tokio workers' samples and our own send path only 40 % of those; the rest was hyper's
//! stream task and body pipe, tonic's outer layers (timeout, error recovery, connect info,
//! the boxed service stack) and the conversions between them. [`crate::unary_route`]
//! already skipped tonic's router and codec; this skips hyper and tonic's server as well:
//! a call is h2's request, the handler, and h2's response.
//!
//! A connection's unary calls run inside its own task, not one task each. Why: a commit
//! answers many calls at once; each answer woke its call's task, which then woke the
//! connection's task to send. Now the answers wake the one task that sends them, and a
//! call costs no task of its own. Measured with `ab.sh` (64 producers, one connection, 5
//! rounds, against the same server with a task per call): msg/s 1.16×, p99 0.75×, leader
//! CPU per message 0.80×, lower in 5 of 5 rounds. The cost: one connection's unary calls
//! share one core (NATS reads each client connection in one goroutine too); what could
//! stall them is off this task already (plugins run on the blocking pool, Raft appends on
//! the driver), and a client wanting more opens more connections. Calls on the routes
//! (streams, long polls) still get a task each.
//!
//! What a client sees is what tonic's server gives it:
//! - the same answers, status codes and trailers (the unary path shares its code with
//!   [`crate::unary_route`], and the differential tests run all three servers side by side);
//! - `grpc-timeout` bounds the handler, and an expired call gets `CANCELLED` with "Timeout
//!   expired", as tonic's `GrpcTimeout` layer answers;
//! - the connection's `TcpConnectInfo` is in every request's extensions, so
//!   `Request::remote_addr` works;
//! - HTTP/2 settings are hyper's defaults as tonic uses them (1 MiB windows, 16 KiB frames,
//!   16 KiB header lists, a 400 KiB send buffer per stream), with a limit on concurrent
//!   streams per connection, which tonic leaves unlimited;
//! - a stop stops accepting, sends GOAWAY on every connection and waits for their streams
//!   to finish (the caller bounds the wait);
//! - with [`H2Server::idle_close_after`], a connection without a call for that long gets a
//!   GOAWAY and closes, as RocketMQ's `serverChannelMaxIdleTimeSeconds` closes a channel: a
//!   client that vanished without closing (power loss, a cut cable) no longer holds its task
//!   and buffers, or a place on the preferred runtime, forever. A gRPC client reconnects on
//!   its next call.
//!
//! A [`StreamMethod`] (the Raft pipe) runs in the connection's task too, for the same
//! reason: each message of it would otherwise cost a hand-off between two tasks.
//!
//! Streaming answers are piped as hyper pipes them: the next frame is taken from the body
//! once the peer's window has room, and a stream the peer resets drops the body.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::Connected;

use crate::grpc_timeout;
use crate::h2_channel::H2Body;
use crate::unary_route::{UnaryAnswer, UnaryMethod};

/// Concurrent streams one connection may open. Why a limit: each is a task and its
/// buffers; a client beyond it waits for a stream to end (HTTP/2's own back-pressure).
/// Far above what a client needs: mqbench's 256 producers share one connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// hyper's server defaults, which tonic's server used.
const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
const FRAME_BYTES_MAX: u32 = 16 * 1024;
const HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;
const SEND_BUFFER_BYTES_MAX: usize = 400 * 1024;
const LOCAL_ERROR_RESETS_MAX: usize = 1024;
/// A connection that has not sent the HTTP/2 preface by then is closed: without a bound an
/// idle socket would hold its task and writer forever.
const PREFACE_MS_MAX: u64 = 10_000;

/// The routes of every request no [`UnaryMethod`] takes.
pub trait Routes:
    tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Routes for S where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A method whose calls run in their connection's task from start to end, given the
/// request's head, its body and the responder: for a long-lived bidirectional stream (a
/// Raft pipe), whose every message would otherwise go from the connection's task to the
/// call's own task (and through tonic's decoder and hyper's body piping) before its handler
/// sees it. A call must not block: it shares the task with the connection's other streams.
pub trait StreamMethod: Send + Sync + 'static {
    /// The method's path, `/package.Service/Method`.
    fn path(&self) -> &'static str;
    fn call(
        &self,
        parts: http::request::Parts,
        body: RecvStream,
        respond: SendResponse<Bytes>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
}

pub struct H2Server<S> {
    routes: S,
    unary: Option<Arc<dyn UnaryMethod>>,
    stream: Option<Arc<dyn StreamMethod>>,
    placement: Placement,
    idle_close_after: Option<Duration>,
}

/// Where connection tasks run: on a preferred runtime while it has fewer than its limit of
/// live connections, else on the runtime that serves. The default prefers none.
#[derive(Default)]
pub struct Placement {
    preferred: Option<Preferred>,
}

struct Preferred {
    runtime: tokio::runtime::Handle,
    connections_max: usize,
    live: Arc<AtomicUsize>,
}

/// Counts a connection live on the preferred runtime until its task ends or is dropped (a
/// runtime that shuts down drops its tasks).
struct LiveConnection(Arc<AtomicUsize>);

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Placement {
    /// Up to `connections_max` live connections on `runtime`.
    pub fn preferring(runtime: tokio::runtime::Handle, connections_max: usize) -> Placement {
        Placement { preferred: Some(Preferred { runtime, connections_max, live: Arc::default() }) }
    }

    /// Spawns `connection` on the preferred runtime if it has room, else on the current one.
    /// Only the accept loop spawns, so the check and the count do not race.
    fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        match &self.preferred {
            Some(p) if p.live.load(Ordering::Relaxed) < p.connections_max => {
                p.live.fetch_add(1, Ordering::Relaxed);
                let live = LiveConnection(p.live.clone());
                p.runtime.spawn(async move {
                    let _live = live;
                    connection.await
                });
            }
            _ => drop(tokio::spawn(connection)),
        }
    }
}

impl<S: Routes> H2Server<S> {
    pub fn new(routes: S) -> Self {
        H2Server { routes, unary: None, stream: None, placement: Placement::default(), idle_close_after: None }
    }

    /// Runs `method`'s calls in their connection's task (see [`StreamMethod`]), except a
    /// call with a `grpc-encoding`, which goes to the routes.
    pub fn stream(mut self, method: Arc<dyn StreamMethod>) -> Self {
        self.stream = Some(method);
        self
    }

    /// Runs connection tasks where `placement` says (their unary and stream-method calls
    /// with them); the routes' calls still get their tasks on the serving runtime. For an IO
    /// type that joins the reactor of the runtime it is first used on
    /// ([`crate::rehomed_tcp::RehomedTcp`]): one registered where it was accepted would be
    /// woken from there.
    pub fn connections_on(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Closes (GOAWAY) a connection that has had no call in flight and none started for
    /// `idle` (at most a quarter more: the check runs every quarter of it). A call in flight
    /// (a long poll, a stream) keeps its connection open however long it lasts.
    pub fn idle_close_after(mut self, idle: Duration) -> Self {
        assert!(!idle.is_zero(), "an idle limit of zero would close every connection at once");
        self.idle_close_after = Some(idle);
        self
    }

    /// Answers `method`'s calls here (except a call with a `grpc-encoding`, which goes to
    /// the routes: no compression is enabled on our servers, and tonic answers it).
    pub fn unary(mut self, method: Arc<dyn UnaryMethod>) -> Self {
        self.unary = Some(method);
        self
    }

    /// Serves every connection `incoming` yields until `signal` resolves; then stops
    /// accepting, asks every connection to close (GOAWAY) and returns once all have.
    pub async fn serve<I, IO, E>(self, incoming: I, signal: impl Future<Output = ()>)
    where
        I: Stream<Item = Result<IO, E>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(self);
        // The routes' calls get their tasks here, wherever their connection runs.
        let home = tokio::runtime::Handle::current();
        {
            let mut incoming = std::pin::pin!(incoming);
            let mut signal = std::pin::pin!(signal);
            loop {
                tokio::select! {
                    _ = &mut signal => break,
                    io = incoming.next() => match io {
                        Some(Ok(io)) => {
                            shared.placement.spawn(connection(shared.clone(), home.clone(), io, stop_rx.clone()));
                        }
                        Some(Err(e)) => tracing::debug!(error = %e, "accept failed"),
                        None => break,
                    },
                }
            }
            // `incoming` is dropped here: the listening socket closes before the wait.
        }
        drop(stop_rx);
        stop_tx.send_replace(true);
        stop_tx.closed().await;
    }
}

fn builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(FRAME_BYTES_MAX)
        .max_header_list_size(HEADER_LIST_BYTES_MAX)
        .max_send_buffer_size(SEND_BUFFER_BYTES_MAX)
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS_MAX));
    builder
}

/// One connection: its unary and stream-method calls in this task, its other streams each
/// on a task of its own on `home` (the serving runtime), until the peer closes it, it
/// fails, or a stop drains it. Holds `stop` (a receiver) until it ends: the server's stop
/// waits for every receiver to be gone.
async fn connection<S, IO>(
    server: Arc<H2Server<S>>,
    home: tokio::runtime::Handle,
    io: IO,
    mut stop: watch::Receiver<bool>,
) where
    S: Routes,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let info = io.connect_info();
    let handshake = tokio::time::timeout(Duration::from_millis(PREFACE_MS_MAX), builder().handshake::<_, Bytes>(io));
    let mut conn = match handshake.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return tracing::debug!(error = %e, "HTTP/2 handshake failed"),
        Err(_) => return tracing::debug!(preface_ms_max = PREFACE_MS_MAX, "no HTTP/2 preface in time"),
    };
    let mut draining = *stop.borrow();
    if draining {
        conn.graceful_shutdown();
    }
    // At most STREAMS_PER_CONNECTION_MAX: h2 refuses streams beyond it.
    let mut calls = futures::stream::FuturesUnordered::new();
    let routed_calls = Arc::new(RoutedCalls::default());
    // Calls started or ended here (a count, not a clock read per call: this is the send path).
    let mut activity: u64 = 0;
    let mut idle = server.idle_close_after.map(IdleCheck::new);
    loop {
        tokio::select! {
            Some(()) = calls.next(), if !calls.is_empty() => activity += 1,
            () = IdleCheck::tick(&mut idle), if !draining => {
                let check = idle.as_mut().expect("ticks only with a limit");
                let open = !calls.is_empty() || routed_calls.open.load(Ordering::Acquire) > 0;
                let seen = activity + routed_calls.ended.load(Ordering::Acquire);
                if check.idle_through(seen, open) {
                    tracing::debug!(idle_ms = check.idle.as_millis() as u64, "closing an idle connection");
                    draining = true;
                    conn.graceful_shutdown();
                }
            }
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    activity += 1;
                    let (mut parts, body) = request.into_parts();
                    parts.extensions.insert(info.clone());
                    if let Some(method) = server.unary.as_ref().filter(|m| takes(m.path(), &parts)) {
                        calls.push(futures::future::Either::Left(unary(method.clone(), parts, body, respond)));
                    } else if let Some(method) = server.stream.as_ref().filter(|m| takes(m.path(), &parts)) {
                        calls.push(futures::future::Either::Right(method.call(parts, body, respond)));
                    } else {
                        let (call, routes) = (RoutedCall::start(&routed_calls), server.routes.clone());
                        home.spawn(async move {
                            let _call = call;
                            routed(routes, parts, body, respond).await
                        });
                    }
                }
                Some(Err(e)) => return tracing::debug!(error = %e, "HTTP/2 connection failed"),
                None => return,
            },
            // A dropped sender counts as a stop too.
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
        }
    }
}

/// A connection's calls on the routes, which run as tasks of their own: how many are open,
/// and how many have ended (activity the connection's idle check counts).
#[derive(Default)]
struct RoutedCalls {
    open: AtomicUsize,
    ended: std::sync::atomic::AtomicU64,
}

/// One routed call, open until dropped.
struct RoutedCall(Arc<RoutedCalls>);

impl RoutedCall {
    fn start(calls: &Arc<RoutedCalls>) -> RoutedCall {
        calls.open.fetch_add(1, Ordering::AcqRel);
        RoutedCall(calls.clone())
    }
}

impl Drop for RoutedCall {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::AcqRel);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Checks every quarter of `idle` whether a connection did anything; closes it after four
/// quiet checks in a row (so after `idle` to `idle` × 1.25 without a call).
struct IdleCheck {
    idle: Duration,
    ticker: tokio::time::Interval,
    seen: u64,
    quiet_checks: u32,
}

impl IdleCheck {
    const CHECKS_PER_LIMIT: u32 = 4;

    fn new(idle: Duration) -> IdleCheck {
        let period = idle / Self::CHECKS_PER_LIMIT;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        IdleCheck { idle, ticker, seen: 0, quiet_checks: 0 }
    }

    /// The next check's time; never, without a limit (the branch is then disabled anyway).
    async fn tick(check: &mut Option<IdleCheck>) {
        match check {
            Some(check) => drop(check.ticker.tick().await),
            None => std::future::pending().await,
        }
    }

    /// One check: `seen` counts the calls started and ended so far, `open` says whether a
    /// call is in flight. True once the connection has been quiet for the whole limit.
    fn idle_through(&mut self, seen: u64, open: bool) -> bool {
        if open || seen != self.seen {
            self.seen = seen;
            self.quiet_checks = 0;
            return false;
        }
        self.quiet_checks += 1;
        self.quiet_checks >= Self::CHECKS_PER_LIMIT
    }
}

fn takes(path: &str, parts: &http::request::Parts) -> bool {
    parts.uri.path() == path && !parts.headers.contains_key("grpc-encoding")
}

/// The `grpc-timeout` of `parts` applied to `answer`: an expired call is answered as
/// tonic's `GrpcTimeout` answers it.
async fn bounded<T>(timeout: Option<Duration>, answer: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match timeout {
        None => answer.await,
        Some(timeout) => tokio::time::timeout(timeout, answer)
            .await
            .unwrap_or_else(|_| Err(Status::cancelled(tonic::TimeoutExpired(()).to_string()))),
    }
}

async fn unary(
    method: Arc<dyn UnaryMethod>,
    parts: http::request::Parts,
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
) {
    let timeout = grpc_timeout::of(&parts.headers);
    let sent = match bounded(timeout, method.answer(parts, H2Body::new(body))).await {
        Ok(answer) => send_message(&mut respond, answer),
        Err(status) => respond.send_response(status.into_http(), true).map(drop),
    };
    if let Err(e) = sent {
        // The peer reset the stream or the connection is gone: nobody to tell.
        tracing::debug!(error = %e, "unary answer not sent");
    }
}

fn send_message(respond: &mut SendResponse<Bytes>, answer: UnaryAnswer) -> Result<(), h2::Error> {
    let UnaryAnswer { headers, extensions, frame } = answer;
    let mut head = http::Response::new(());
    *head.headers_mut() = headers;
    *head.extensions_mut() = extensions;
    let mut send = respond.send_response(head, false)?;
    send.send_data(frame, false)?;
    let mut trailers = http::HeaderMap::with_capacity(1);
    trailers.insert(http::HeaderName::from_static("grpc-status"), http::HeaderValue::from_static("0"));
    send.send_trailers(trailers)
}

/// A request for the routes: handed over as hyper hands it to tonic, the answer's body
/// piped back.
async fn routed<S: Routes>(
    mut routes: S,
    parts: http::request::Parts,
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
) {
    let timeout = grpc_timeout::of(&parts.headers);
    let request = http::Request::from_parts(parts, Body::new(H2Body::new(body)));
    let call = async move {
        let Ok(()) = poll_fn(|cx| routes.poll_ready(cx)).await;
        let Ok(response) = routes.call(request).await;
        Ok(response)
    };
    // The peer may give up before the answer's head: the call is dropped then, as hyper
    // drops it.
    let reset = poll_fn(|cx| respond.poll_reset(cx));
    let answer = tokio::select! {
        answer = bounded(timeout, call) => answer,
        reason = reset => return tracing::debug!(?reason, "stream reset before its answer"),
    };
    let response = answer.unwrap_or_else(|status| status.into_http());
    let (parts, body) = response.into_parts();
    let end = body.is_end_stream();
    match respond.send_response(http::Response::from_parts(parts, ()), end) {
        Ok(send) if !end => pipe(body, send).await,
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "answer not sent"),
    }
}

/// Sends `body`'s frames on `send` until it ends, the peer resets the stream, or the body
/// fails (then the stream is reset with INTERNAL_ERROR, as hyper does).
async fn pipe(mut body: Body, mut send: SendStream<Bytes>) {
    let piped = poll_fn(|cx| {
        loop {
            // Back-pressure: a frame is taken from the body only when the peer's window
            // has room (h2 sizes the actual frame itself).
            send.reserve_capacity(1);
            if send.capacity() == 0 {
                loop {
                    match std::task::ready!(send.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return Poll::Ready(Err(e)),
                        None => return Poll::Ready(Err(h2::Error::from(Reason::CANCEL))),
                    }
                }
            } else if let Poll::Ready(reason) = send.poll_reset(cx)? {
                return Poll::Ready(Err(h2::Error::from(reason)));
            }
            match std::task::ready!(std::pin::Pin::new(&mut body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = body.is_end_stream();
                        send.send_data(data, end)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            send.reserve_capacity(0);
                            return Poll::Ready(send.send_trailers(trailers));
                        }
                    }
                },
                Some(Err(status)) => {
                    tracing::debug!(%status, "answer body failed");
                    send.send_reset(Reason::INTERNAL_ERROR);
                    return Poll::Ready(Ok(()));
                }
                None => return Poll::Ready(send.send_data(Bytes::new(), true)),
            }
        }
    });
    if let Err(e) = piped.await {
        tracing::debug!(error = %e, "answer stream ended early");
    }
}

#[cfg(test)]
#[path = "h2_server_tests.rs"]
mod tests;

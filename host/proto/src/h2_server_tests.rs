//! What the differential tests in `unary_route_tests` do not cover: streams both ways through
//! the routes, the connection's address, `grpc-timeout` on both paths, a stream the client
//! resets, and a stop that waits for calls in flight.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::*;
use crate::coalescing_io::CoalescingIo;
use crate::unary_route::{UnaryHandler, UnaryRouteLayer};
use crate::wasmq::raft::raft_client::RaftClient;
use crate::wasmq::raft::raft_server::{Raft, RaftServer};
use crate::wasmq::raft::{DeliverReply, MessageBatch, RaftMessage};

const DELIVER: &str = "/wasmq.raft.Raft/Deliver";
const MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// `Deliver`: group "slow" waits 300 ms; the answer's metadata names the caller's address.
/// `Pipe`: one reply per batch, `accepted` = its message count; counts the pipes that ended.
#[derive(Default)]
struct Service {
    pipes_ended: Arc<AtomicU32>,
}

struct Ended(Arc<AtomicU32>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl Raft for Service {
    type PipeStream = Pin<Box<dyn Stream<Item = Result<DeliverReply, Status>> + Send>>;

    async fn pipe(
        &self,
        request: tonic::Request<tonic::Streaming<MessageBatch>>,
    ) -> Result<tonic::Response<Self::PipeStream>, Status> {
        let ended = Ended(self.pipes_ended.clone());
        let replies = request.into_inner().map(move |batch| {
            let _alive = &ended;
            batch.map(|b| DeliverReply { accepted: b.messages.len() as u32, batches_through: 0 })
        });
        Ok(tonic::Response::new(Box::pin(replies)))
    }

    async fn deliver(&self, r: tonic::Request<MessageBatch>) -> Result<tonic::Response<DeliverReply>, Status> {
        let from = r.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        if r.get_ref().group == "slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut response =
            tonic::Response::new(DeliverReply { accepted: r.get_ref().messages.len() as u32, batches_through: 0 });
        response.metadata_mut().insert("x-from", from.parse().unwrap());
        Ok(response)
    }
}

struct Running {
    addr: SocketAddr,
    pipes_ended: Arc<AtomicU32>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

/// `H2Server` with `Deliver` as its unary method when `unary`, else on the routes.
async fn start(unary: bool) -> Running {
    start_closing_idle(unary, None).await
}

/// [`start`], closing connections idle for `idle`.
async fn start_closing_idle(unary: bool, idle: Option<Duration>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Arc::new(Service::default());
    let pipes_ended = service.pipes_ended.clone();
    let mut server = H2Server::new(tonic::service::Routes::new(RaftServer::from_arc(service.clone())));
    if unary {
        let handler: UnaryHandler<MessageBatch, DeliverReply> = Arc::new(move |request| {
            let service = service.clone();
            Box::pin(async move { service.deliver(request).await })
        });
        server = server.unary(Arc::new(UnaryRouteLayer::new(DELIVER, MESSAGE_BYTES_MAX, handler)));
    }
    if let Some(idle) = idle {
        server = server.idle_close_after(idle);
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|tcp| tcp.map(CoalescingIo::new));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(incoming, async move {
        let _ = stopped.await;
    }));
    Running { addr, pipes_ended, stop: Some(stop), server }
}

async fn client(addr: SocketAddr) -> RaftClient<tonic::transport::Channel> {
    RaftClient::connect(format!("http://{addr}")).await.unwrap()
}

fn batch(group: &str, messages: usize) -> MessageBatch {
    MessageBatch { group: group.into(), messages: vec![RaftMessage::default(); messages], ..Default::default() }
}

#[tokio::test]
async fn a_stream_both_ways_goes_through_the_routes_and_ends_when_the_client_drops_it() {
    let running = start(true).await;
    let mut client = client(running.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client.pipe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for n in 1..=50 {
        tx.send(batch("g", n % 7)).await.unwrap();
        let reply = replies.message().await.unwrap().expect("a reply per batch");
        assert_eq!(reply.accepted, (n % 7) as u32);
    }
    // An answer larger than the stream window's first grant is piped in pieces.
    tx.send(batch("g", 9000)).await.unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().accepted, 9000);
    assert_eq!(running.pipes_ended.load(Ordering::SeqCst), 0);
    // The client goes away mid-stream: the server's side of the pipe is dropped.
    drop(replies);
    drop(tx);
    for _ in 0..100 {
        if running.pipes_ended.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running.pipes_ended.load(Ordering::SeqCst), 1, "the pipe's body was dropped");
}

#[tokio::test]
async fn both_paths_see_the_callers_address() {
    for unary in [true, false] {
        let running = start(unary).await;
        let mut client = client(running.addr).await;
        let response = client.deliver(batch("g", 2)).await.unwrap();
        let from: SocketAddr = response.metadata().get("x-from").unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(from.ip(), running.addr.ip(), "unary {unary}");
        assert_ne!(from.port(), running.addr.port(), "unary {unary}: the client's port");
        assert_eq!(response.into_inner().accepted, 2);
    }
}

/// A raw call: tonic's client enforces a deadline itself, so it could not tell whether the
/// server did.
#[tokio::test]
async fn an_expired_grpc_timeout_is_cancelled_on_both_paths() {
    use prost::Message as _;
    let slow = crate::unary_route::tests::framed(0, &batch("slow", 1).encode_to_vec());
    for unary in [true, false] {
        let running = start(unary).await;
        let started = std::time::Instant::now();
        let answer =
            crate::unary_route::tests::call(running.addr, DELIVER, &[("grpc-timeout", "50m")], slow.clone()).await;
        assert!(started.elapsed() < Duration::from_millis(290), "answered at the deadline, not after the handler");
        assert_eq!(answer.grpc_status.as_deref(), Some("1"), "unary {unary}: CANCELLED");
        assert_eq!(answer.grpc_message.as_deref(), Some("Timeout%20expired"), "unary {unary}");
        // Within the deadline the same call is answered.
        let answer =
            crate::unary_route::tests::call(running.addr, DELIVER, &[("grpc-timeout", "5S")], slow.clone()).await;
        assert_eq!(answer.grpc_status.as_deref(), Some("0"), "unary {unary}");
    }
}

#[tokio::test]
async fn a_stop_lets_calls_in_flight_finish_and_refuses_new_connections() {
    let mut running = start(true).await;
    let mut client = client(running.addr).await;
    let slow = tokio::spawn(async move { client.deliver(batch("slow", 3)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    running.stop.take().unwrap().send(()).unwrap();
    let answer = slow.await.unwrap().expect("the call in flight is answered");
    assert_eq!(answer.into_inner().accepted, 3);
    tokio::time::timeout(Duration::from_secs(5), running.server)
        .await
        .expect("the server returns once its connections closed")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(running.addr).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn a_connection_that_never_speaks_http2_is_closed() {
    let running = start(true).await;
    let mut tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "closed, not left hanging");
    // The server still serves others.
    let mut client = client(running.addr).await;
    assert_eq!(client.deliver(batch("g", 1)).await.unwrap().into_inner().accepted, 1);
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("unnamed").to_string()
}

/// Answers with the name of the thread its handler ran on (`x-thread`).
struct ThreadNames;

#[tonic::async_trait]
impl Raft for ThreadNames {
    type PipeStream = Pin<Box<dyn Stream<Item = Result<DeliverReply, Status>> + Send>>;

    async fn pipe(
        &self,
        _: tonic::Request<tonic::Streaming<MessageBatch>>,
    ) -> Result<tonic::Response<Self::PipeStream>, Status> {
        let mut response = tonic::Response::new(Box::pin(futures::stream::empty()) as Self::PipeStream);
        response.metadata_mut().insert("x-thread", thread_name().parse().unwrap());
        Ok(response)
    }

    async fn deliver(&self, _: tonic::Request<MessageBatch>) -> Result<tonic::Response<DeliverReply>, Status> {
        let mut response = tonic::Response::new(DeliverReply::default());
        response.metadata_mut().insert("x-thread", thread_name().parse().unwrap());
        Ok(response)
    }
}

/// A runtime on a thread of its own named `name`, as a Raft driver's; it ends when the
/// sender is dropped or used.
fn runtime_thread(name: &str) -> (tokio::runtime::Handle, oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            handle_tx.send(runtime.handle().clone()).unwrap();
            runtime.block_on(async {
                let _ = end_rx.await;
            });
        })
        .unwrap();
    (handle_rx.recv().unwrap(), end_tx, thread)
}

#[tokio::test]
async fn connections_run_on_the_preferred_runtime_up_to_its_limit_and_routed_calls_at_home() {
    let (preferred, end, thread) = runtime_thread("preferred");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler: UnaryHandler<MessageBatch, DeliverReply> =
        Arc::new(|request| Box::pin(async move { ThreadNames.deliver(request).await }));
    let server = H2Server::new(tonic::service::Routes::new(RaftServer::new(ThreadNames)))
        .unary(Arc::new(UnaryRouteLayer::new(DELIVER, MESSAGE_BYTES_MAX, handler)))
        .connections_on(Placement::preferring(preferred, 1));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
        .map(|tcp| tcp.and_then(crate::rehomed_tcp::RehomedTcp::new));
    tokio::spawn(server.serve(incoming, std::future::pending()));
    let home = thread_name();
    let thread_of = |m: &tonic::metadata::MetadataMap| m.get("x-thread").unwrap().to_str().unwrap().to_string();

    let mut first = client(addr).await;
    let answer = first.deliver(batch("g", 1)).await.unwrap();
    assert_eq!(thread_of(answer.metadata()), "preferred", "the first connection runs on the preferred runtime");
    let routed = first.pipe(tokio_stream::empty()).await.unwrap();
    assert_eq!(thread_of(routed.metadata()), home, "a call on the routes gets its task where the server runs");
    let mut second = client(addr).await;
    let answer = second.deliver(batch("g", 1)).await.unwrap();
    assert_eq!(thread_of(answer.metadata()), home, "beyond the limit: where the server runs");

    // Once the first connection has closed, the preferred runtime takes the next one.
    drop((first, routed));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = client(addr).await;
        if thread_of(next.deliver(batch("g", 1)).await.unwrap().metadata()) == "preferred" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the closed connection still counts on the preferred runtime");
        drop(next);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second connection, which stayed where the server runs, still works.
    assert_eq!(thread_of(second.deliver(batch("g", 1)).await.unwrap().metadata()), home);
    end.send(()).unwrap();
    thread.join().unwrap();
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_call_in_flight_keeps_it_open_on_both_paths() {
    use prost::Message as _;

    use crate::unary_route::tests::{call_on, framed};
    const IDLE: Duration = Duration::from_millis(200);
    for unary in [true, false] {
        let running = start_closing_idle(unary, Some(IDLE)).await;
        let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let mut closed = tokio::spawn(connection);
        let ok = |group: &str| framed(0, &batch(group, 1).encode_to_vec());
        let status = |a: crate::unary_route::tests::Answer| a.grpc_status;
        assert_eq!(status(call_on(client.clone(), DELIVER, &[], ok("g")).await.unwrap()).as_deref(), Some("0"));
        // "slow" answers after 300 ms, longer than the limit: the call in flight keeps the
        // connection open, so the next call on it (right after) is still taken.
        assert_eq!(status(call_on(client.clone(), DELIVER, &[], ok("slow")).await.unwrap()).as_deref(), Some("0"));
        assert_eq!(status(call_on(client.clone(), DELIVER, &[], ok("g")).await.unwrap()).as_deref(), Some("0"));
        let quiet_from = std::time::Instant::now();
        // Then nothing: the server closes it between 1 and 1.25 times the limit later.
        let waited = tokio::time::timeout(Duration::from_secs(5), &mut closed).await;
        assert!(waited.is_ok(), "unary {unary}: the idle connection is still open after 5 s");
        let quiet = quiet_from.elapsed();
        assert!(quiet >= IDLE, "unary {unary}: closed after {quiet:?} of quiet, limit {IDLE:?}");
        assert!(
            call_on(client, DELIVER, &[], ok("g")).await.is_err(),
            "unary {unary}: a call on the closed connection"
        );
    }
}

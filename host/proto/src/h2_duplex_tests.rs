use std::time::Duration;

use prost::Message as _;
use tokio::net::TcpListener;

use super::*;
use crate::wasmq::raft::raft_server::{Raft, RaftServer};
use crate::wasmq::raft::{DeliverReply, MessageBatch, RaftMessage};

const PIPE: &str = "/wasmq.raft.Raft/Pipe";
const BYTES_MAX: usize = 64 << 20;

/// Serves `Pipe` as a Raft member does: one answer per batch that asks, counting the
/// batches; a batch for group "refuse" ends the answers with INVALID_ARGUMENT. With
/// `unimplemented`, as a member from before `Pipe`.
struct PipeEcho {
    unimplemented: bool,
}

type Answers = std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<DeliverReply, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Raft for PipeEcho {
    type PipeStream = Answers;

    async fn pipe(
        &self,
        request: tonic::Request<tonic::Streaming<MessageBatch>>,
    ) -> Result<tonic::Response<Answers>, tonic::Status> {
        use futures::StreamExt;
        if self.unimplemented {
            return Err(tonic::Status::unimplemented("no Pipe before this version"));
        }
        let mut received = 0u64;
        let answers = request
            .into_inner()
            .map(move |batch| {
                let batch = batch?;
                received += 1;
                if batch.group == "refuse" {
                    return Err(tonic::Status::invalid_argument("refused batch"));
                }
                let accepted = batch.messages.iter().map(|m| m.encoded_len() as u32).sum::<u32>();
                Ok((!batch.no_reply).then_some(DeliverReply { accepted, batches_through: received }))
            })
            .filter_map(|answer| std::future::ready(answer.transpose()));
        Ok(tonic::Response::new(Box::pin(answers)))
    }

    async fn deliver(&self, _: tonic::Request<MessageBatch>) -> Result<tonic::Response<DeliverReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

async fn serve(unimplemented: bool) -> H2Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                RaftServer::new(PipeEcho { unimplemented })
                    .max_decoding_message_size(BYTES_MAX)
                    .max_encoding_message_size(BYTES_MAX),
            )
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    H2Channel::new(addr.to_string().parse().unwrap(), Duration::from_secs(2), Duration::from_secs(5))
}

/// A batch whose one message is `bytes` long encoded, asking for an answer unless `quiet`.
fn batch(group: &str, bytes: usize, quiet: bool) -> MessageBatch {
    use crate::wasmq::raft::raft_message::Kind;
    let append = crate::wasmq::raft::Append {
        entries: vec![crate::wasmq::raft::Entry { index: 1, term: 1, data: vec![7; bytes] }],
        ..Default::default()
    };
    MessageBatch {
        group: group.into(),
        messages: vec![RaftMessage { kind: Some(Kind::Append(append)) }],
        no_reply: quiet,
        ..Default::default()
    }
}

fn accepted(b: &MessageBatch) -> u32 {
    b.messages.iter().map(|m| m.encoded_len() as u32).sum()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f).await.unwrap_or_else(|_| panic!("{what}: no progress in 10 s"))
}

/// 64 batches of 128 KiB (8 MiB, well beyond the stream's and the connection's windows),
/// sent as `room` allows while the answers are read in the same task: each batch arrives
/// whole, once, in order (the server counts them and answers with its size).
#[tokio::test]
async fn batches_beyond_the_window_arrive_in_order_and_answers_come_back() {
    let channel = serve(false).await;
    let (mut sender, opening) = channel.duplex(PIPE, BYTES_MAX).await.unwrap();
    let batches: Vec<MessageBatch> = (0..64).map(|i| batch("g", (128 << 10) + i, false)).collect();
    sender.room().await.unwrap();
    sender.send(&batches[0]).unwrap();
    let mut answers = within("headers", opening.answers::<DeliverReply>()).await.unwrap();
    let mut sent = 1;
    let mut got = Vec::new();
    while got.len() < batches.len() {
        tokio::select! {
            answer = answers.message() => got.push(answer.unwrap().expect("an answer per batch")),
            room = sender.room(), if sent < batches.len() => {
                room.unwrap();
                sender.send(&batches[sent]).unwrap();
                sent += 1;
            }
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("stalled after {sent} sent, {} answered", got.len()),
        }
    }
    let expected: Vec<DeliverReply> = batches
        .iter()
        .enumerate()
        .map(|(i, b)| DeliverReply { accepted: accepted(b), batches_through: i as u64 + 1 })
        .collect();
    assert_eq!(got, expected);
}

/// Quiet batches get no answer; the next asking one is answered with the count of all.
#[tokio::test]
async fn only_the_batches_that_ask_are_answered() {
    let channel = serve(false).await;
    let (mut sender, opening) = channel.duplex(PIPE, BYTES_MAX).await.unwrap();
    for quiet in [true, true, true, false] {
        sender.send(&batch("g", 10, quiet)).unwrap();
    }
    let mut answers = within("headers", opening.answers::<DeliverReply>()).await.unwrap();
    let answer = within("answer", answers.message()).await.unwrap().unwrap();
    assert_eq!(answer.batches_through, 4);
}

#[tokio::test]
async fn a_member_without_the_method_fails_the_opening_with_unimplemented() {
    let channel = serve(true).await;
    let (mut sender, opening) = channel.duplex(PIPE, BYTES_MAX).await.unwrap();
    sender.send(&batch("g", 10, false)).unwrap();
    let failed = within("headers", opening.answers::<DeliverReply>()).await.err().expect("a failed opening");
    assert_eq!(failed.code(), tonic::Code::Unimplemented, "{failed:?}");
    assert_eq!(failed.message(), "no Pipe before this version");
}

/// The server ends the answers with a status: answers before it arrive, then the status,
/// then nothing.
#[tokio::test]
async fn the_server_s_status_ends_the_answers() {
    let channel = serve(false).await;
    let (mut sender, opening) = channel.duplex(PIPE, BYTES_MAX).await.unwrap();
    sender.send(&batch("g", 10, false)).unwrap();
    sender.send(&batch("refuse", 10, false)).unwrap();
    let mut answers = within("headers", opening.answers::<DeliverReply>()).await.unwrap();
    assert_eq!(within("first", answers.message()).await.unwrap().unwrap().batches_through, 1);
    let refused = within("status", answers.message()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(refused.message(), "refused batch");
    assert_eq!(answers.message().await.unwrap(), None);
    // The connection serves the next call.
    let (mut sender, opening) = channel.duplex(PIPE, BYTES_MAX).await.unwrap();
    sender.send(&batch("g", 10, false)).unwrap();
    let mut answers = within("headers", opening.answers::<DeliverReply>()).await.unwrap();
    assert_eq!(within("again", answers.message()).await.unwrap().unwrap().batches_through, 1);
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_before_it_is_sent() {
    let channel = serve(false).await;
    let (mut sender, _opening) = channel.duplex(PIPE, 1 << 10).await.unwrap();
    let refused = sender.send(&batch("g", 4 << 10, false)).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
}

#[tokio::test]
async fn a_dead_endpoint_fails_the_opening() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let channel =
        H2Channel::new(format!("127.0.0.1:{port}").parse().unwrap(), Duration::from_secs(1), Duration::from_secs(1));
    let failed = channel.duplex(PIPE, BYTES_MAX).await.err().expect("no connection");
    assert!(failed.message().contains("connect 127.0.0.1"), "{failed:?}");
}

/// Answers a tonic server never gives (`serve_canned`'s), read as tonic's client reads them:
/// the messages before the end, then the status the end names or implies.
#[tokio::test]
async fn broken_answers_end_with_tonic_s_statuses() {
    use tonic::Code;
    let addr = crate::h2_channel::tests::serve_canned().await;
    let channel = H2Channel::new(addr.to_string().parse().unwrap(), Duration::from_secs(1), Duration::from_secs(1));
    let cases = [
        ("Fine", 1, None),
        ("OkNoMessage", 0, None),
        ("NoTrailers", 1, Some(Code::Unknown)),
        ("ThenFails", 1, Some(Code::Unavailable)),
        ("NotFound", 0, Some(Code::Unimplemented)),
        ("Unavailable", 0, Some(Code::Unavailable)),
        ("Cut", 0, Some(Code::Internal)),
        ("BadFlag", 0, Some(Code::Internal)),
        ("Garbage", 0, Some(Code::Internal)),
    ];
    for (case, messages, end) in cases {
        let path: &'static str = Box::leak(format!("/canned.Canned/{case}").into_boxed_str());
        let (_sender, opening) = channel.duplex(path, BYTES_MAX).await.unwrap();
        let mut answers = within(case, opening.answers::<DeliverReply>()).await.unwrap();
        for _ in 0..messages {
            let answer = within(case, answers.message()).await.unwrap();
            assert_eq!(answer.map(|a| a.accepted), Some(7), "{case}");
        }
        let ended = within(case, answers.message()).await;
        assert_eq!(ended.as_ref().err().map(|s| s.code()), end, "{case}: {ended:?}");
        assert_eq!(answers.message().await.unwrap(), None, "{case}: read past the end");
    }
}

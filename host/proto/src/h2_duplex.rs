//! [`H2Channel::duplex`]: a bidirectional-streaming gRPC call written on h2 directly, for
//! the Raft pipes. The caller encodes each message straight into the call's h2 stream and
//! reads the answers from it, in its own task. The server's side of such a call, for an
//! `h2_server::StreamMethod`: [`MessageReader::requests`] and [`DuplexReplies`].
//!
//! Why not tonic's client: with it a message went from the caller through an mpsc to
//! hyper's body task (tonic's `EncodeBody` encodes it there), and only then to h2's
//! connection task. On a Raft pipe that is every batch of appends, on the path of every
//! send. Here only the connection's task (which owns the socket) runs besides the caller.
//!
//! What the caller sees is what tonic's client gives: a status in the answer's headers
//! (trailers-only, such as UNIMPLEMENTED from a server without the method) fails the
//! opening; the answers' messages come in order; the trailers' status (or tonic's mapping
//! from the HTTP status) ends them.

use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Body as _;

use crate::grpc_frame;
use crate::h2_channel::{H2Body, H2Channel, answer_status, h2_status};

/// The sending half: one message per [`DuplexSender::send`], each after
/// [`DuplexSender::room`] said the stream has some send window (h2 sizes the frames).
pub struct DuplexSender {
    send: h2::SendStream<Bytes>,
    bytes_max: usize,
}

/// The call's answer, before its headers came.
pub struct DuplexOpening {
    response: h2::client::ResponseFuture,
    bytes_max: usize,
}

/// The answers' messages, in order, then the status their end names.
pub struct DuplexAnswers<M> {
    reader: MessageReader<M>,
    http_status: http::StatusCode,
    /// The end's status was reported; every later read is `None`.
    ended: bool,
}

/// The gRPC messages of an HTTP/2 body, decoded as its chunks arrive, then its trailers.
/// Both sides of a bidirectional call read with it: a client its answers
/// ([`DuplexAnswers`]), a server its requests ([`MessageReader::requests`]).
pub struct MessageReader<M> {
    body: H2Body,
    frames: grpc_frame::Frames,
    trailers: Option<http::HeaderMap>,
    /// The end was read, or the stream failed; every later read is `None`.
    done: bool,
    message: PhantomData<fn() -> M>,
}

impl H2Channel {
    /// Opens a bidirectional call on `path`: its request headers are queued on the
    /// channel's connection (dialled if there is none) at once, without waiting for the
    /// answer's. `bytes_max` bounds each message either way. The dial is bounded by the
    /// channel's connect timeout; the caller bounds the rest (the answer's headers with
    /// [`DuplexOpening::answers`]).
    pub async fn duplex(
        &self,
        path: &'static str,
        bytes_max: usize,
    ) -> Result<(DuplexSender, DuplexOpening), tonic::Status> {
        let connection = self.connection().await.map_err(|e| tonic::Status::from_error(Box::new(e)))?;
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri(path)?;
        *request.version_mut() = http::Version::HTTP_2;
        let headers = request.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        let opened = async {
            let mut send = connection.send.clone().ready().await?;
            send.send_request(request, false)
        };
        match opened.await {
            Ok((response, send)) => Ok((DuplexSender { send, bytes_max }, DuplexOpening { response, bytes_max })),
            Err(e) => {
                self.failed(&connection, &e);
                Err(h2_status(e))
            }
        }
    }
}

impl DuplexSender {
    /// Ready when the stream has send window for at least a byte, as hyper's body piping
    /// waits: a message sent then is taken whole, and h2 holds back what exceeds the window
    /// (at most one message beyond it). Fails once the peer reset the stream.
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        self.send.reserve_capacity(1);
        if self.send.capacity() > 0 {
            if let Poll::Ready(reason) = self.send.poll_reset(cx) {
                return Poll::Ready(Err(h2_status(reason.map_or_else(|e| e, h2::Error::from))));
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => {}
                Some(Ok(_)) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(h2_status(e))),
                None => return Poll::Ready(Err(tonic::Status::unavailable("the call's request stream closed"))),
            }
        }
    }

    /// [`DuplexSender::poll_room`] as a future. Cancel-safe: it holds no state of its own.
    pub async fn room(&mut self) -> Result<(), tonic::Status> {
        poll_fn(|cx| self.poll_room(cx)).await
    }

    /// Encodes `message` into the stream. Refused beyond the call's `bytes_max`.
    pub fn send<M: prost::Message>(&mut self, message: &M) -> Result<(), tonic::Status> {
        let data = grpc_frame::encode(message, self.bytes_max)?;
        self.send.send_data(data, false).map_err(h2_status)
    }
}

impl DuplexOpening {
    /// Waits for the answer's headers. A non-OK `grpc-status` among them (a trailers-only
    /// answer) is the call's failure.
    pub async fn answers<M: prost::Message + Default>(self) -> Result<DuplexAnswers<M>, tonic::Status> {
        let response = self.response.await.map_err(h2_status)?;
        let (parts, recv) = response.into_parts();
        let trailers_only = match tonic::Status::from_header_map(&parts.headers) {
            Some(status) if status.code() != tonic::Code::Ok => return Err(status),
            Some(_) => true,
            None => false,
        };
        let mut reader = MessageReader::new(recv, self.bytes_max, grpc_frame::Reader::Client(parts.status));
        reader.done = trailers_only;
        Ok(DuplexAnswers { reader, http_status: parts.status, ended: false })
    }
}

impl<M: prost::Message + Default> DuplexAnswers<M> {
    /// The next answer; `None` at an OK end; the status the answer ended with otherwise
    /// (then `None` from there on).
    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<M>, tonic::Status>> {
        match ready!(self.reader.poll_message(cx)) {
            Ok(None) if !self.ended => {
                self.ended = true;
                Poll::Ready(match answer_status(self.reader.trailers.as_ref(), self.http_status) {
                    Some(failed) => Err(failed),
                    None => Ok(None),
                })
            }
            Err(broken) => {
                // A broken message or stream is the end: no status to read after it.
                self.ended = true;
                Poll::Ready(Err(broken))
            }
            read => Poll::Ready(read),
        }
    }

    /// [`DuplexAnswers::poll_message`] as a future. Cancel-safe: what was read of a
    /// message stays in `self`.
    pub async fn message(&mut self) -> Result<Option<M>, tonic::Status> {
        poll_fn(|cx| self.poll_message(cx)).await
    }
}

impl<M: prost::Message + Default> MessageReader<M> {
    fn new(recv: h2::RecvStream, bytes_max: usize, reader: grpc_frame::Reader) -> MessageReader<M> {
        MessageReader {
            body: H2Body::new(recv),
            frames: grpc_frame::Frames::new(bytes_max, reader),
            trailers: None,
            done: false,
            message: PhantomData,
        }
    }

    /// A server's reader of a call's request messages, each at most `bytes_max`.
    pub fn requests(body: h2::RecvStream, bytes_max: usize) -> MessageReader<M> {
        MessageReader::new(body, bytes_max, grpc_frame::Reader::Server)
    }

    /// The next message; `None` at the body's end (its trailers kept); an error for a
    /// broken message or stream (then `None` from there on).
    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<M>, tonic::Status>> {
        loop {
            // Done means every whole message was taken before the end was read (or the
            // stream failed): what is left is a broken message's bytes, not to be read again.
            if self.done {
                return Poll::Ready(Ok(None));
            }
            if let Some(message) = self.frames.next_message::<M>().inspect_err(|_| self.done = true)? {
                return Poll::Ready(Ok(Some(message)));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.frames.push(&data);
                        continue;
                    }
                    Err(frame) => self.trailers = frame.into_trailers().ok(),
                },
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Err(h2_status(e)));
                }
                None => {}
            }
            self.done = true;
            self.frames.finish()?;
            return Poll::Ready(Ok(None));
        }
    }

    /// [`MessageReader::poll_message`] as a future. Cancel-safe: what was read of a message
    /// stays in `self`.
    pub async fn message(&mut self) -> Result<Option<M>, tonic::Status> {
        poll_fn(|cx| self.poll_message(cx)).await
    }
}

/// A server's answers on a bidirectional call: headers at once, then messages, then the
/// call's status in the trailers.
pub struct DuplexReplies {
    send: h2::SendStream<Bytes>,
    bytes_max: usize,
}

impl DuplexReplies {
    /// Sends the answer's headers (`200`, `application/grpc`), as tonic's server does once
    /// a streaming handler returned its stream.
    pub fn open(respond: &mut h2::server::SendResponse<Bytes>, bytes_max: usize) -> Result<DuplexReplies, h2::Error> {
        let mut head = http::Response::new(());
        head.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        let send = respond.send_response(head, false)?;
        Ok(DuplexReplies { send, bytes_max })
    }

    /// One answer. Answers are not held back for the peer's window: a caller sends few and
    /// small ones (h2 buffers them).
    pub fn send<M: prost::Message>(&mut self, message: &M) -> Result<(), tonic::Status> {
        let data = grpc_frame::encode(message, self.bytes_max)?;
        self.send.send_data(data, false).map_err(h2_status)
    }

    /// Ends the answers with `status` in the trailers (OK for `Ok`).
    pub fn finish(mut self, status: Result<(), tonic::Status>) -> Result<(), h2::Error> {
        let status = status.err().unwrap_or_else(|| tonic::Status::ok(""));
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // Only a message that cannot be a header value; the code alone then.
            trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
        }
        self.send.send_trailers(trailers)
    }
}

#[cfg(test)]
#[path = "h2_duplex_tests.rs"]
mod tests;

//! [`H2Channel::duplex`]: a bidirectional-streaming gRPC call written on h2 directly, for
//! the Raft pipes. The caller encodes each message straight into the call's h2 stream and
//! reads the answers from it, in its own task.
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

/// The answers' messages, in order.
pub struct DuplexAnswers<M> {
    body: H2Body,
    http_status: http::StatusCode,
    frames: grpc_frame::Frames,
    /// The end was read (and reported); every later read is `None`.
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
        Ok(DuplexAnswers {
            body: H2Body::new(recv),
            http_status: parts.status,
            frames: grpc_frame::Frames::new(self.bytes_max, grpc_frame::Reader::Client(parts.status)),
            done: trailers_only,
            message: PhantomData,
        })
    }
}

impl<M: prost::Message + Default> DuplexAnswers<M> {
    /// The next answer; `None` at an OK end; the status the answer ended with otherwise
    /// (then `None` from there on).
    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<M>, tonic::Status>> {
        loop {
            // Done means every whole message was taken before the end was read (or the
            // stream failed): what is left is a broken message's bytes, not to be read again.
            if self.done {
                return Poll::Ready(Ok(None));
            }
            if let Some(message) = self.frames.next::<M>().inspect_err(|_| self.done = true)? {
                return Poll::Ready(Ok(Some(message)));
            }
            let trailers = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.frames.push(&data);
                        continue;
                    }
                    Err(frame) => frame.into_trailers().ok(),
                },
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Err(h2_status(e)));
                }
                None => None,
            };
            self.done = true;
            self.frames.finish()?;
            return Poll::Ready(match answer_status(trailers.as_ref(), self.http_status) {
                Some(failed) => Err(failed),
                None => Ok(None),
            });
        }
    }

    /// [`DuplexAnswers::poll_message`] as a future. Cancel-safe: what was read of a
    /// message stays in `self`.
    pub async fn message(&mut self) -> Result<Option<M>, tonic::Status> {
        poll_fn(|cx| self.poll_message(cx)).await
    }
}

#[cfg(test)]
#[path = "h2_duplex_tests.rs"]
mod tests;

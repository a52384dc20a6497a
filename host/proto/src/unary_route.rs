//! [`UnaryRouteLayer`]: one unary gRPC method served in front of tonic's router, every
//! other request passed on to it unchanged. The broker now serves it through
//! [`crate::h2_server`] (as a [`UnaryMethod`], without hyper); as a tower layer it still
//! serves behind tonic's server, and the differential tests run both.
//!
//! Why: on the leader, with 64 producers, the per-call tasks were 43 % of the broker's CPU
//! samples and our own send path only 16 %; most of the rest was the router (axum's path
//! router, tower's boxed services) and tonic's generic codec path: a `Streaming` decoder
//! for the one request message, an `EncodeBody` stream for the one answer, a header map
//! built for the trailers. For a unary call all of that is one buffer in, one buffer out.
//! Here the method's request is collected, decoded with prost and handed to the same
//! service method tonic would call; the answer goes back as one data frame and its
//! trailers. The hyper connection, its stream tasks and tonic's outer layers (the
//! `grpc-timeout` deadline, the concurrency limits) stay as they were.
//!
//! What a client sees is what tonic's generated server gives it, status codes included:
//! the same `grpc-status` for a missing, truncated, oversize or undecodable message, the
//! same trailers-only answer for an error. A request with a `grpc-encoding` goes to tonic
//! instead, which answers it as before (no compression is enabled on our servers).
//! Request trailers, which no RocketMQ client sends on a unary call, are not merged into
//! the metadata as tonic would.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use http::{HeaderName, HeaderValue};
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataMap;

use crate::grpc_frame::{self, OneFrame, Reader};
use crate::h2_channel::H2Body;

/// The method's implementation: what tonic's generated server would call for it.
pub type UnaryHandler<Req, Resp> =
    Arc<dyn Fn(tonic::Request<Req>) -> BoxFuture<'static, Result<tonic::Response<Resp>, Status>> + Send + Sync>;

pub struct UnaryRouteLayer<Req, Resp> {
    path: &'static str,
    handler: UnaryHandler<Req, Resp>,
    message_bytes_max: usize,
}

impl<Req, Resp> UnaryRouteLayer<Req, Resp> {
    /// `path` is the method's `/package.Service/Method`; `message_bytes_max` limits the
    /// decoded request and the encoded answer alike, as tonic's `max_decoding_message_size`
    /// and `max_encoding_message_size`.
    pub fn new(path: &'static str, message_bytes_max: usize, handler: UnaryHandler<Req, Resp>) -> Self {
        assert!(path.starts_with('/') && path[1..].contains('/'), "not a gRPC method path: {path}");
        UnaryRouteLayer { path, handler, message_bytes_max }
    }
}

impl<Req, Resp> Clone for UnaryRouteLayer<Req, Resp> {
    fn clone(&self) -> Self {
        UnaryRouteLayer { path: self.path, handler: self.handler.clone(), message_bytes_max: self.message_bytes_max }
    }
}

impl<S, Req, Resp> tower::Layer<S> for UnaryRouteLayer<Req, Resp> {
    type Service = UnaryRoute<S, Req, Resp>;

    fn layer(&self, inner: S) -> Self::Service {
        UnaryRoute { inner, route: self.clone(), _types: PhantomData }
    }
}

pub struct UnaryRoute<S, Req, Resp> {
    inner: S,
    route: UnaryRouteLayer<Req, Resp>,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<S: Clone, Req, Resp> Clone for UnaryRoute<S, Req, Resp> {
    fn clone(&self) -> Self {
        UnaryRoute { inner: self.inner.clone(), route: self.route.clone(), _types: PhantomData }
    }
}

impl<S, Req, Resp> tower::Service<http::Request<Body>> for UnaryRoute<S, Req, Resp>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<http::Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != self.route.path || request.headers().contains_key("grpc-encoding") {
            return Either::Left(self.inner.call(request));
        }
        let handler = self.route.handler.clone();
        let bytes_max = self.route.message_bytes_max;
        Either::Right(Box::pin(async move { Ok(serve(handler, bytes_max, request).await) }))
    }
}

async fn serve<Req, Resp>(
    handler: UnaryHandler<Req, Resp>,
    bytes_max: usize,
    request: http::Request<Body>,
) -> http::Response<Body>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
{
    let (parts, body) = request.into_parts();
    match answer(handler, bytes_max, parts, body).await {
        Ok(answer) => {
            let mut response = http::Response::new(Body::new(OneMessage { data: Some(answer.frame), trailers: true }));
            *response.version_mut() = http::Version::HTTP_2;
            *response.headers_mut() = answer.headers;
            *response.extensions_mut() = answer.extensions;
            response
        }
        Err(status) => status.into_http(),
    }
}

/// A unary method's successful answer: the headers, and the one framed message that
/// `grpc-status: 0` follows.
pub struct UnaryAnswer {
    pub headers: http::HeaderMap,
    pub extensions: http::Extensions,
    pub frame: Bytes,
}

/// Reads the request's one message, runs the handler, encodes its answer; an error is the
/// status of a trailers-only answer. Shared by [`UnaryRoute`] (behind hyper) and
/// [`crate::h2_server`] (on h2 directly), so both answer alike.
async fn answer<Req, Resp, B>(
    handler: UnaryHandler<Req, Resp>,
    bytes_max: usize,
    parts: http::request::Parts,
    body: B,
) -> Result<UnaryAnswer, Status>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let message = read_message::<Req, B>(body, bytes_max).await?;
    let request = tonic::Request::from_parts(MetadataMap::from_headers(parts.headers), parts.extensions, message);
    let (metadata, message, extensions) = handler(request).await?.into_parts();
    let frame = grpc_frame::encode(&message, bytes_max)?;
    Ok(UnaryAnswer { headers: grpc_frame::headers(metadata), extensions, frame })
}

/// A unary method the HTTP/2 server ([`crate::h2_server`]) serves itself, its types erased.
pub trait UnaryMethod: Send + Sync + 'static {
    /// `/package.Service/Method`.
    fn path(&self) -> &'static str;
    /// The answer to one call whose headers are `parts` and whose body is `body`.
    fn answer(&self, parts: http::request::Parts, body: H2Body) -> BoxFuture<'static, Result<UnaryAnswer, Status>>;
}

impl<Req, Resp> UnaryMethod for UnaryRouteLayer<Req, Resp>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    fn path(&self) -> &'static str {
        self.path
    }

    fn answer(&self, parts: http::request::Parts, body: H2Body) -> BoxFuture<'static, Result<UnaryAnswer, Status>> {
        Box::pin(answer(self.handler.clone(), self.message_bytes_max, parts, body))
    }
}

/// The one message of a unary request body.
async fn read_message<M, B>(mut body: B, bytes_max: usize) -> Result<M, Status>
where
    M: prost::Message + Default,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut frame = OneFrame::new(bytes_max, Reader::Server);
    // Body frames until the end of the stream; trailers end it too.
    while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(data) = chunk.map_err(|e| Status::from_error(e.into()))?.into_data() else { break };
        frame.push(&data)?;
    }
    frame.finish(false)?.ok_or_else(|| Status::internal("Missing request message."))
}

/// A unary answer's body: its one data frame, then `grpc-status: 0`.
struct OneMessage {
    data: Option<Bytes>,
    trailers: bool,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if std::mem::take(&mut self.trailers) {
            const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
            let mut trailers = http::HeaderMap::with_capacity(1);
            trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !self.trailers
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
#[path = "unary_route_tests.rs"]
pub(crate) mod tests;

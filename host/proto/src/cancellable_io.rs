//! [`CancellableIo`]: a server-side connection that ends when its service stops.
//!
//! Why: tonic spawns every accepted connection as a task of its own, so a peer service that
//! stops by having its serve task aborted (a Raft member whose driver shares the broker's
//! runtime and stopped on a storage error) would leave the connections it had accepted
//! open: its peers would go on writing into a member that no longer reads, instead of
//! seeing the connection close, as they do when a member crashes. Each connection of such
//! a service wraps its socket in this type with the service's token; the service cancels
//! the token when it ends, for whatever reason (a drop guard), and every connection's next
//! read or write fails, which makes hyper drop it and so close the socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub struct CancellableIo<T> {
    inner: T,
    /// Polled before every I/O call, which also registers the connection task's waker, so
    /// a cancellation wakes an idle connection.
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> CancellableIo<T> {
    pub fn new(inner: T, token: CancellationToken) -> Self {
        CancellableIo { inner, cancelled: Box::pin(token.cancelled_owned()) }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.cancelled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the service this connection belongs to stopped"))
            }
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CancellableIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CancellableIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for CancellableIo<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn bytes_pass_until_the_token_is_cancelled_then_an_idle_reader_wakes_with_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut peer = client.unwrap();
        let token = CancellationToken::new();
        let mut io = CancellableIo::new(accepted.unwrap().0, token.clone());

        peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        io.write_all(b"pong").await.unwrap();
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // A read waiting for data is woken by the cancellation, not by the peer.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            let err = io.read(&mut buf).await.unwrap_err();
            drop(io); // as hyper does on an error: the socket closes
            err
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "nothing to read and not cancelled yet");
        token.cancel();
        let err = tokio::time::timeout(Duration::from_secs(5), reader).await.unwrap().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty(), "the peer sees the connection close");
    }
}

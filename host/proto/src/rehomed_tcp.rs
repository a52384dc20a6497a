//! [`RehomedTcp`]: a TCP connection accepted on one runtime and served on another. The
//! socket leaves the accepting runtime's reactor at once and joins the reactor of the
//! runtime that first reads or writes it, with its [`CoalescingIo`] writer task spawned
//! there too; until then it is a plain `std` socket, which no reactor watches.
//!
//! Why: a connection task spawned onto another runtime (`H2Server::connections_on`) whose
//! socket stayed registered where it was accepted would be woken by that runtime's I/O
//! driver, one thread hop per readiness event, and its writer would run over there too.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::TcpConnectInfo;

use crate::coalescing_io::CoalescingIo;

pub struct RehomedTcp {
    /// The socket until its first use.
    pending: Option<std::net::TcpStream>,
    io: Option<CoalescingIo>,
    connect_info: TcpConnectInfo,
}

impl RehomedTcp {
    /// Takes `stream` out of the current runtime's reactor.
    pub fn new(stream: tokio::net::TcpStream) -> io::Result<RehomedTcp> {
        let connect_info =
            TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: stream.peer_addr().ok() };
        Ok(RehomedTcp { pending: Some(stream.into_std()?), io: None, connect_info })
    }

    /// `op` on the socket, registered with the current runtime on the first call.
    fn with_io<T>(
        self: Pin<&mut Self>,
        op: impl FnOnce(Pin<&mut CoalescingIo>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let this = self.get_mut();
        if let Some(socket) = this.pending.take() {
            match tokio::net::TcpStream::from_std(socket) {
                Ok(socket) => this.io = Some(CoalescingIo::new(socket)),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match this.io.as_mut() {
            Some(io) => op(Pin::new(io)),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection could not join this runtime",
            ))),
        }
    }
}

impl AsyncRead for RehomedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.with_io(|io| io.poll_read(cx, buf))
    }
}

impl AsyncWrite for RehomedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.with_io(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with_io(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true // as CoalescingIo
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with_io(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with_io(|io| io.poll_shutdown(cx))
    }
}

impl tonic::transport::server::Connected for RehomedTcp {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.connect_info.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tonic::transport::server::Connected;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// A socket still registered where it was accepted would fail here: that runtime's I/O
    /// driver is gone.
    #[test]
    fn a_connection_accepted_on_a_runtime_that_stopped_is_served_on_another() {
        let accepting = runtime();
        let (rehomed, mut client) = accepting.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            (RehomedTcp::new(accepted).unwrap(), client)
        });
        drop(accepting);
        let client_addr = client.local_addr().unwrap();
        runtime().block_on(async move {
            let mut rehomed = rehomed;
            assert_eq!(rehomed.connect_info().remote_addr, Some(client_addr));
            client.write_all(b"ping").unwrap();
            let mut got = [0u8; 4];
            rehomed.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            rehomed.write_all(b"pong").await.unwrap();
            rehomed.flush().await.unwrap();
            let answer = tokio::task::spawn_blocking(move || {
                let mut got = [0u8; 4];
                client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                client.read_exact(&mut got).map(|()| got)
            });
            assert_eq!(&answer.await.unwrap().unwrap(), b"pong");
        });
    }
}

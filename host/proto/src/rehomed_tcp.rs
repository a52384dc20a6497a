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

    /// The socket on the current runtime, registered there on the first call.
    fn io(&mut self) -> io::Result<Pin<&mut CoalescingIo>> {
        if let Some(socket) = self.pending.take() {
            self.io = Some(CoalescingIo::new(tokio::net::TcpStream::from_std(socket)?));
        }
        match self.io.as_mut() {
            Some(io) => Ok(Pin::new(io)),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "the connection could not join this runtime")),
        }
    }
}

impl AsyncRead for RehomedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for RehomedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true // as CoalescingIo
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
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

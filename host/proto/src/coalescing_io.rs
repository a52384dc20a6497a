//! [`CoalescingIo`]: a TCP stream whose writes go through a buffer and a writer task, so
//! the frames HTTP/2 produces for concurrent calls leave in one `write` instead of one each.
//!
//! Why: h2 writes every DATA frame over 256 bytes in a syscall of its own (it chains the
//! payload instead of copying it), and it writes whenever its connection task runs; when one
//! event completes many calls (a commit answers 64 senders, one read brings 11 responses),
//! the frames of each call went out in a write of their own. Measured at 64 producers with
//! 1 KiB messages: about one `writev` per message on the client and on the leader. On
//! loopback a write also runs the receiver's TCP stack and wakes the reader.
//!
//! How: `poll_write` copies into a bounded buffer (at most [`WRITE_BUFFER_BYTES_MAX`]; beyond
//! it a writer is told to wait) and `poll_flush` hands it over: the writer task, once woken,
//! first yields, so the tasks that are already ready add their frames, then writes what the
//! buffer holds with one syscall. Flush thus means "queued for the socket", as a kernel send
//! buffer does; errors of the socket are reported to the next write or flush. Reads go
//! straight to the socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

/// Most bytes queued for one socket before writers wait (h2 itself buffers up to its
/// window; this only bounds what one scheduler round adds).
pub const WRITE_BUFFER_BYTES_MAX: usize = 256 * 1024;
/// A write that makes no progress this long fails the connection: the peer stopped
/// reading (or vanished), and a dropped connection's writer must not live forever.
const WRITE_STALL_MS_MAX: u64 = 30_000;

pub struct CoalescingIo {
    read: OwnedReadHalf,
    shared: Arc<Shared>,
    connect_info: tonic::transport::server::TcpConnectInfo,
}

struct Shared {
    state: Mutex<WriteState>,
    /// Wakes the writer task: bytes queued, or shutdown asked.
    work: Notify,
}

#[derive(Default)]
struct WriteState {
    queued: Vec<u8>,
    /// The socket failed; every later write and flush reports it.
    failed: Option<(io::ErrorKind, String)>,
    /// No more writes: the writer shuts the socket's write side once the buffer is out.
    shutdown: bool,
    /// The writer is gone (shut down or failed).
    done: bool,
    /// A writer waiting for room, or a shutdown waiting for the writer.
    waiting: Vec<Waker>,
}

impl WriteState {
    fn error(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }

    /// Registers `waker` once (a task polled again while it waits is not added twice, so the
    /// list stays as short as the number of tasks waiting: one or two per connection).
    fn wait(&mut self, waker: &Waker) {
        if !self.waiting.iter().any(|w| w.will_wake(waker)) {
            self.waiting.push(waker.clone());
        }
    }

    fn wake_waiting(&mut self) {
        for w in self.waiting.drain(..) {
            w.wake();
        }
    }
}

impl CoalescingIo {
    /// Wraps a connected stream and spawns its writer task (needs a tokio runtime).
    pub fn new(stream: TcpStream) -> Self {
        let connect_info = tonic::transport::server::TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: stream.peer_addr().ok(),
        };
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared { state: Mutex::new(WriteState::default()), work: Notify::new() });
        tokio::spawn(writer(shared.clone(), write));
        CoalescingIo { read, shared, connect_info }
    }
}

/// Writes what the buffer holds, one syscall per round, until shutdown or a socket error.
async fn writer(shared: Arc<Shared>, mut socket: OwnedWriteHalf) {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        shared.work.notified().await;
        // Let the tasks that are ready now queue their frames first (a plain wake would
        // run this task next, from tokio's LIFO slot, and write one call's frames).
        tokio::task::yield_now().await;
        loop {
            let shutdown = {
                let mut state = shared.state.lock();
                assert!(batch.is_empty());
                std::mem::swap(&mut batch, &mut state.queued);
                state.wake_waiting();
                state.shutdown && batch.is_empty()
            };
            if shutdown {
                let _ = socket.shutdown().await;
                let mut state = shared.state.lock();
                state.done = true;
                state.wake_waiting();
                return;
            }
            if batch.is_empty() {
                break;
            }
            let written =
                tokio::time::timeout(std::time::Duration::from_millis(WRITE_STALL_MS_MAX), socket.write_all(&batch))
                    .await
                    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "socket write stalled")));
            batch.clear();
            let mut state = shared.state.lock();
            if let Err(e) = written {
                state.failed = Some((e.kind(), e.to_string()));
                state.done = true;
                state.queued = Vec::new();
                state.wake_waiting();
                return;
            }
        }
    }
}

impl Drop for CoalescingIo {
    fn drop(&mut self) {
        // The writer sends what is queued, shuts the write side and ends.
        self.shared.state.lock().shutdown = true;
        self.shared.work.notify_one();
    }
}

impl AsyncRead for CoalescingIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescingIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// Copies as much of `bufs` as there is room for (a frame header and its payload in
    /// one call, where h2 chains them).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.state.lock();
        if let Some(e) = state.error() {
            return Poll::Ready(Err(e));
        }
        if state.shutdown {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown")));
        }
        let room = WRITE_BUFFER_BYTES_MAX.saturating_sub(state.queued.len());
        if room == 0 {
            state.wait(cx.waker());
            return Poll::Pending;
        }
        let was_empty = state.queued.is_empty();
        let mut n = 0;
        for buf in bufs {
            let take = (room - n).min(buf.len());
            state.queued.extend_from_slice(&buf[..take]);
            n += take;
            if n == room {
                break;
            }
        }
        drop(state);
        if was_empty {
            self.shared.work.notify_one();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued bytes are the writer's: it writes them as soon as the ready tasks ran.
        match self.shared.state.lock().error() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.state.lock();
        if state.done {
            return Poll::Ready(state.error().map_or(Ok(()), Err));
        }
        state.shutdown = true;
        state.wait(cx.waker());
        drop(state);
        self.shared.work.notify_one();
        Poll::Pending
    }
}

impl tonic::transport::server::Connected for CoalescingIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.connect_info.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (CoalescingIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (CoalescingIo::new(client.unwrap()), accepted.unwrap().0)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_then_eof_after_shutdown() {
        let (mut io, mut peer) = pair().await;
        let expected = pattern(3 * WRITE_BUFFER_BYTES_MAX + 12_345);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        // Odd-sized writes, more than the buffer holds: writers must wait for room.
        for chunk in expected.chunks(1_123) {
            io.write_all(chunk).await.unwrap();
            io.flush().await.unwrap();
        }
        io.shutdown().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), reader).await.unwrap().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes reordered or corrupted");
    }

    #[tokio::test]
    async fn vectored_writes_take_every_slice_up_to_the_room_left() {
        let (mut io, mut peer) = pair().await;
        let (a, b) = (pattern(300), pattern(WRITE_BUFFER_BYTES_MAX));
        let slices = [io::IoSlice::new(&a), io::IoSlice::new(&[]), io::IoSlice::new(&b)];
        let n = io.write_vectored(&slices).await.unwrap();
        assert_eq!(n, WRITE_BUFFER_BYTES_MAX, "all of the first slice, the second up to the limit");
        drop(io);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut got)).await.unwrap().unwrap();
        let mut expected = a.clone();
        expected.extend_from_slice(&b[..WRITE_BUFFER_BYTES_MAX - a.len()]);
        assert!(got == expected);
    }

    #[tokio::test]
    async fn a_dropped_stream_still_delivers_what_it_queued() {
        let (mut io, mut peer) = pair().await;
        let expected = pattern(100_000);
        io.write_all(&expected).await.unwrap();
        drop(io);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut got)).await.unwrap().unwrap();
        assert!(got == expected);
    }

    #[tokio::test]
    async fn reads_pass_through_and_a_closed_peer_fails_later_writes() {
        let (mut io, mut peer) = pair().await;
        peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        drop(peer);
        // The first writes may still be accepted (queued, then reset by the peer); a later
        // one must fail rather than queue forever.
        let chunk = pattern(64 * 1024);
        let failed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = io.write_all(&chunk).await {
                    return e;
                }
                if let Err(e) = io.flush().await {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("writes to a closed peer never failed");
        assert!(
            matches!(failed.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset),
            "unexpected error {failed:?}"
        );
    }

    #[tokio::test]
    async fn connect_info_names_both_ends() {
        use tonic::transport::server::Connected;
        let (io, peer) = pair().await;
        let info = io.connect_info();
        assert_eq!(info.local_addr, Some(peer.peer_addr().unwrap()));
        assert_eq!(info.remote_addr, Some(peer.local_addr().unwrap()));
    }
}

//! [`dial`]: the one way our gRPC clients open a TCP connection (Raft peers, a follower's
//! forwarder, mqbench), so each gets the same bounded connect, TCP_NODELAY and self-connect
//! check.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// Connects to `address` (`host:port`) within `timeout`, refuses a socket connected to
/// itself, and sets TCP_NODELAY (gRPC frames are small and latency-bound; Nagle would hold
/// them back for the peer's delayed ack).
pub async fn dial(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect {address}: timed out")))??;
    let stream = refuse_self_connect(stream, address)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Drops a TCP connection to itself. While a peer is down, a dial whose ephemeral source
/// port happens to equal the peer's port (peer ports such as 40911 are in Linux's ephemeral
/// range) connects the socket to itself on loopback (simultaneous open), and that socket
/// then holds the port the restarting peer must bind ("address in use"; CI once failed that
/// way, though which socket held the port there is not known). Go's dialer makes the same
/// check.
fn refuse_self_connect(stream: TcpStream, address: &str) -> io::Result<TcpStream> {
    if stream.local_addr()? == stream.peer_addr()? {
        // An abortive close: a graceful one would leave the port in TIME_WAIT for a minute.
        // (Deprecated because a non-zero linger blocks on drop; a zero one resets at once.)
        #[allow(deprecated)]
        stream.set_linger(Some(Duration::ZERO))?;
        drop(stream);
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("connect {address}: the socket connected to itself (peer down)"),
        ));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[tokio::test]
    async fn a_socket_connected_to_itself_is_refused_and_frees_the_port() {
        // A self-connect on loopback: a socket bound to a port and connected to that port.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(addr).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        assert_eq!(stream.local_addr().unwrap(), stream.peer_addr().unwrap());
        let err = refuse_self_connect(stream, &addr.to_string()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        // The member that owns the port can bind it again.
        std::net::TcpListener::bind(addr).unwrap();
    }

    #[tokio::test]
    async fn an_ordinary_dial_connects_with_nodelay_and_a_dead_port_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap().to_string();
        let stream = dial(&to, Duration::from_secs(5)).await.unwrap();
        assert!(stream.nodelay().unwrap());
        drop(listener);
        let err = dial(&to, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}

//! A minimal NATS client for JetStream publishing: CONNECT, PING/PONG, SUB, PUB with a reply
//! inbox, MSG, +OK/-ERR, and the JetStream publish-ack JSON. [`NatsConn`] has one request in
//! flight; [`NatsMux`] shares one connection among many requesters (each request its own
//! reply subject), as NATS client libraries do. Not a general client.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

/// Largest MSG payload accepted (JetStream acks are tiny; API answers are a few KiB).
const PAYLOAD_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Longest protocol line accepted (INFO can be a few KiB on a cluster).
const LINE_BYTES_MAX: usize = 64 * 1024;

pub struct NatsConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    inbox_prefix: String,
    next_reply: u64,
    timeout: Duration,
    line: String,
}

/// A message delivered to our inbox.
struct Delivery {
    subject: String,
    payload: Vec<u8>,
}

impl NatsConn {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect {addr} timed out"))?
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut conn = NatsConn {
            reader: BufReader::new(r),
            writer: w,
            inbox_prefix: format!("_INBOX.{:016x}", rand_u64()),
            next_reply: 0,
            timeout,
            line: String::new(),
        };
        let info = conn.read_line().await?;
        ensure!(info.starts_with("INFO "), "expected INFO from {addr}, got {info:?}");
        let connect = r#"{"verbose":false,"pedantic":false,"headers":false,"protocol":1,"name":"mqbench","lang":"rust","version":"0.1.0"}"#;
        let sub = format!("CONNECT {connect}\r\nSUB {}.* 1\r\nPING\r\n", conn.inbox_prefix);
        conn.writer.write_all(sub.as_bytes()).await?;
        loop {
            let line = conn.read_line().await?;
            match line.as_str() {
                "PONG" => break,
                "+OK" => continue,
                "PING" => conn.writer.write_all(b"PONG\r\n").await?,
                l if l.starts_with("-ERR") => bail!("server refused connection: {l}"),
                l if l.starts_with("INFO ") => continue,
                other => bail!("unexpected line during handshake: {other:?}"),
            }
        }
        Ok(conn)
    }

    async fn read_line(&mut self) -> Result<String> {
        self.line.clear();
        let n = tokio::time::timeout(
            self.timeout,
            (&mut self.reader).take(LINE_BYTES_MAX as u64).read_line(&mut self.line),
        )
        .await
        .context("timed out waiting for the server")??;
        ensure!(n > 0, "connection closed by server");
        ensure!(self.line.ends_with("\r\n"), "protocol line too long or cut: {} bytes", n);
        Ok(self.line.trim_end_matches("\r\n").to_string())
    }

    /// Reads until a MSG arrives for our inbox, answering PINGs on the way.
    async fn next_delivery(&mut self) -> Result<Delivery> {
        loop {
            let line = self.read_line().await?;
            if let Some(rest) = line.strip_prefix("MSG ") {
                let (subject, len) = parse_msg_line(rest)?;
                let payload = tokio::time::timeout(self.timeout, read_payload(&mut self.reader, len))
                    .await
                    .context("timed out reading MSG payload")??;
                return Ok(Delivery { subject, payload });
            }
            if control_line(&line)? {
                self.writer.write_all(b"PONG\r\n").await?;
            }
        }
    }

    /// Shares this connection among concurrent requesters.
    pub fn into_mux(self) -> Arc<NatsMux> {
        let mux = Arc::new(NatsMux {
            writer: tokio::sync::Mutex::new(self.writer),
            pending: parking_lot::Mutex::new(HashMap::new()),
            inbox_prefix: self.inbox_prefix,
            next_reply: AtomicU64::new(self.next_reply),
            timeout: self.timeout,
        });
        let reader_mux = Arc::downgrade(&mux);
        tokio::spawn(async move {
            if let Err(e) = mux_reader(self.reader, reader_mux).await {
                tracing::debug!(error = %e, "nats connection reader stopped");
            }
        });
        mux
    }

    /// Request/reply: publishes `payload` to `subject` with a fresh reply inbox and waits for
    /// the answer on it (stale answers to earlier, timed-out requests are skipped).
    pub async fn request(&mut self, subject: &str, payload: &[u8]) -> Result<Vec<u8>> {
        self.next_reply += 1;
        let reply = format!("{}.{}", self.inbox_prefix, self.next_reply);
        self.writer.write_all(&pub_frame(subject, &reply, payload)).await?;
        loop {
            let d = self.next_delivery().await?;
            if d.subject == reply {
                return Ok(d.payload);
            }
        }
    }

    /// JetStream publish with a synchronous ack: `Ok(seq)` once the stream stored it.
    pub async fn js_publish(&mut self, subject: &str, payload: &[u8]) -> Result<u64> {
        let ack = self.request(subject, payload).await?;
        parse_pub_ack(&ack)
    }

    /// Creates a stream (or accepts that it exists with the same config).
    pub async fn js_create_stream(&mut self, name: &str, subjects: &[&str], replicas: u32) -> Result<()> {
        let config = serde_json::json!({
            "name": name,
            "subjects": subjects,
            "storage": "file",
            "retention": "limits",
            "discard": "old",
            "num_replicas": replicas,
        });
        let answer = self.request(&format!("$JS.API.STREAM.CREATE.{name}"), config.to_string().as_bytes()).await?;
        let v: serde_json::Value = serde_json::from_slice(&answer).context("stream create answer is not JSON")?;
        if let Some(err) = v.get("error") {
            // 10058: stream name already in use with a different config; same config is OK.
            bail!("stream create failed: {err}");
        }
        Ok(())
    }

    pub async fn js_delete_stream(&mut self, name: &str) -> Result<()> {
        let answer = self.request(&format!("$JS.API.STREAM.DELETE.{name}"), b"").await?;
        let v: serde_json::Value = serde_json::from_slice(&answer).context("stream delete answer is not JSON")?;
        // 10059: stream not found; deleting a missing stream is fine.
        if let Some(err) = v.get("error")
            && err.get("err_code").and_then(|c| c.as_u64()) != Some(10059)
        {
            bail!("stream delete failed: {err}");
        }
        Ok(())
    }
}

/// One connection, many requests in flight: a reader task hands each reply to the request
/// waiting on its subject.
pub struct NatsMux {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Reply number → the waiting request. A request that times out removes itself.
    pending: parking_lot::Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
    inbox_prefix: String,
    next_reply: AtomicU64,
    timeout: Duration,
}

impl NatsMux {
    pub async fn request(&self, subject: &str, payload: &[u8]) -> Result<Vec<u8>> {
        let n = self.next_reply.fetch_add(1, Ordering::Relaxed) + 1;
        let frame = pub_frame(subject, &format!("{}.{n}", self.inbox_prefix), payload);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(n, tx);
        let answer = tokio::time::timeout(self.timeout, async {
            self.writer.lock().await.write_all(&frame).await?;
            rx.await.context("connection closed before the reply")
        })
        .await;
        self.pending.lock().remove(&n);
        answer.context("timed out waiting for the reply")?
    }

    pub async fn js_publish(&self, subject: &str, payload: &[u8]) -> Result<u64> {
        parse_pub_ack(&self.request(subject, payload).await?)
    }
}

async fn mux_reader(mut reader: BufReader<OwnedReadHalf>, mux: std::sync::Weak<NatsMux>) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut reader).take(LINE_BYTES_MAX as u64).read_line(&mut line).await?;
        ensure!(n > 0 && line.ends_with("\r\n"), "connection closed or protocol line cut");
        let Some(mux) = mux.upgrade() else { return Ok(()) };
        let l = line.trim_end_matches("\r\n");
        if let Some(rest) = l.strip_prefix("MSG ") {
            let (subject, len) = parse_msg_line(rest)?;
            let payload = read_payload(&mut reader, len).await?;
            let n = subject.rsplit_once('.').and_then(|(_, n)| n.parse::<u64>().ok());
            if let Some(tx) = n.and_then(|n| mux.pending.lock().remove(&n)) {
                let _ = tx.send(payload);
            }
        } else if control_line(l)? {
            mux.writer.lock().await.write_all(b"PONG\r\n").await?;
        }
    }
}

/// `MSG <subject> <sid> [reply-to] <#bytes>` without the `MSG `: subject and size.
fn parse_msg_line(rest: &str) -> Result<(String, usize)> {
    let parts: Vec<&str> = rest.split(' ').collect();
    ensure!((3..=4).contains(&parts.len()), "bad MSG line {rest:?}");
    let len: usize = parts[parts.len() - 1].parse().with_context(|| format!("bad MSG size in {rest:?}"))?;
    ensure!(len <= PAYLOAD_BYTES_MAX, "MSG payload of {len} bytes exceeds {PAYLOAD_BYTES_MAX}");
    Ok((parts[0].to_string(), len))
}

async fn read_payload(reader: &mut BufReader<OwnedReadHalf>, len: usize) -> Result<Vec<u8>> {
    let mut payload = vec![0u8; len + 2];
    reader.read_exact(&mut payload).await?;
    ensure!(payload.ends_with(b"\r\n"), "MSG payload not terminated");
    payload.truncate(len);
    Ok(payload)
}

/// A line that is not a MSG: true when it is a PING (answer PONG); errors on -ERR and on
/// anything unknown.
fn control_line(line: &str) -> Result<bool> {
    match line {
        "PING" => Ok(true),
        "PONG" | "+OK" => Ok(false),
        l if l.starts_with("-ERR") => bail!("server error: {l}"),
        l if l.starts_with("INFO ") => Ok(false),
        other => bail!("unexpected protocol line {other:?}"),
    }
}

fn pub_frame(subject: &str, reply: &str, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(subject.len() + reply.len() + payload.len() + 32);
    frame.extend_from_slice(format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes());
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\n");
    frame
}

/// `{"stream":"S","seq":N}` or `{"error":{"code":..,"description":..}}`.
pub fn parse_pub_ack(ack: &[u8]) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_slice(ack)
        .with_context(|| format!("publish ack is not JSON: {:?}", String::from_utf8_lossy(ack)))?;
    if let Some(err) = v.get("error") {
        bail!("publish rejected: {err}");
    }
    v.get("seq").and_then(|s| s.as_u64()).with_context(|| format!("publish ack without seq: {v}"))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mixing in the time makes each call differ.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn pub_ack_parsing() {
        assert_eq!(parse_pub_ack(br#"{"stream":"BENCH","seq":42}"#).unwrap(), 42);
        assert!(parse_pub_ack(br#"{"error":{"code":503,"description":"no responders"}}"#).is_err());
        assert!(parse_pub_ack(b"garbage").is_err());
    }

    /// A fake server speaking just enough of the protocol: checks the client's framing.
    #[tokio::test]
    async fn publish_roundtrip_against_fake_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"INFO {\"server_id\":\"x\"}\r\n").await.unwrap();
            let mut line = String::new();
            let mut seq = 0;
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    return seq;
                }
                let l = line.trim_end();
                if l == "PING" {
                    w.write_all(b"PING\r\nPONG\r\n").await.unwrap();
                } else if let Some(rest) = l.strip_prefix("PUB ") {
                    let parts: Vec<&str> = rest.split(' ').collect();
                    let len: usize = parts[2].parse().unwrap();
                    let mut payload = vec![0u8; len + 2];
                    r.read_exact(&mut payload).await.unwrap();
                    seq += 1;
                    let ack = format!("{{\"stream\":\"S\",\"seq\":{seq}}}");
                    // A stale answer first: the client must skip it.
                    w.write_all(format!("MSG {}.0 1 2\r\n{{}}\r\n", parts[1].rsplit_once('.').unwrap().0).as_bytes())
                        .await
                        .unwrap();
                    w.write_all(format!("MSG {} 1 {}\r\n{ack}\r\n", parts[1], ack.len()).as_bytes()).await.unwrap();
                }
            }
        });
        let mut c = NatsConn::connect(&addr.to_string(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.js_publish("bench.x", b"hello").await.unwrap(), 1);
        assert_eq!(c.js_publish("bench.x", &[7u8; 3000]).await.unwrap(), 2);
        // Shared: concurrent requests each get their own answer (the fake acks in order).
        let mux = c.into_mux();
        let (a, b) = tokio::join!(mux.js_publish("bench.x", b"a"), mux.js_publish("bench.x", b"b"));
        let mut seqs = [a.unwrap(), b.unwrap()];
        seqs.sort();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(mux.js_publish("bench.x", b"c").await.unwrap(), 5);
        drop(mux);
        assert_eq!(server.await.unwrap(), 5);
    }
}

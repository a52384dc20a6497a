//! gRPC's length-prefixed message framing, for the paths that bypass tonic's codec
//! (`unary_route` on the server, `H2Channel::unary` and `H2Channel::duplex` on the
//! client). Error texts are tonic's, so a peer cannot tell the paths apart.

use bytes::{BufMut, Bytes, BytesMut};
use tonic::Status;

/// A compressed flag byte and a 4-byte big-endian length.
const PREFIX_BYTES: usize = 5;
/// Headers that metadata may not set: the protocol's own (tonic sanitises the same). As
/// `HeaderName`s, not strings: a string is parsed again on every `remove` (every call).
static RESERVED_HEADERS: [http::HeaderName; 6] = [
    http::header::TE,
    http::header::USER_AGENT,
    http::header::CONTENT_TYPE,
    http::HeaderName::from_static("grpc-message"),
    http::HeaderName::from_static("grpc-message-type"),
    http::HeaderName::from_static("grpc-status"),
];

/// The headers of a gRPC request or answer carrying `metadata`: the protocol's reserved
/// names removed from it, `content-type: application/grpc` set.
pub fn headers(metadata: tonic::metadata::MetadataMap) -> http::HeaderMap {
    let mut headers = metadata.into_headers();
    // Most answers carry no metadata: no names to look up then.
    if !headers.is_empty() {
        for name in RESERVED_HEADERS.iter() {
            headers.remove(name);
        }
    }
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers
}

/// `message` framed: an uncompressed prefix, then its encoding. Refused beyond `bytes_max`.
pub fn encode<M: prost::Message>(message: &M, bytes_max: usize) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    if len > bytes_max {
        return Err(Status::out_of_range(format!(
            "Error, encoded message length too large: found {len} bytes, the limit is: {bytes_max} bytes"
        )));
    }
    let mut frame = BytesMut::with_capacity(PREFIX_BYTES + len);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(len).expect("a gRPC message length fits 32 bits"));
    message.encode(&mut frame).expect("capacity reserved for the encoded length");
    assert_eq!(frame.len(), PREFIX_BYTES + len, "prost wrote its encoded_len");
    Ok(frame.freeze())
}

/// Which side reads: tonic words a bad flag differently for each.
#[derive(Clone, Copy, Debug)]
pub enum Reader {
    Server,
    /// The answer's HTTP status, named in the error.
    Client(http::StatusCode),
}

/// The length a prefix declares, after checking its compressed flag (no compression is
/// negotiated on these paths) and the limit.
fn declared_len(prefix: &[u8], bytes_max: usize, reader: Reader) -> Result<usize, Status> {
    match prefix[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        flag => {
            let message = match reader {
                Reader::Server => format!(
                    "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1), while sending request"
                ),
                Reader::Client(status) => format!(
                    "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1) while receiving response with status: {status}"
                ),
            };
            return Err(Status::internal(message));
        }
    }
    let len = u32::from_be_bytes(prefix[1..PREFIX_BYTES].try_into().expect("4 bytes")) as usize;
    if len > bytes_max {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {bytes_max} bytes"
        )));
    }
    Ok(len)
}

/// The one message of a unary body, collected chunk by chunk: the prefix is checked as soon
/// as it is in, and nothing beyond one message (plus the chunk that overran it) is held.
pub struct OneFrame {
    buf: BytesMut,
    declared: Option<usize>,
    bytes_max: usize,
    reader: Reader,
}

impl OneFrame {
    pub fn new(bytes_max: usize, reader: Reader) -> OneFrame {
        OneFrame { buf: BytesMut::new(), declared: None, bytes_max, reader }
    }

    pub fn push(&mut self, data: &[u8]) -> Result<(), Status> {
        self.buf.extend_from_slice(data);
        if self.declared.is_none() && self.buf.len() >= PREFIX_BYTES {
            self.declared = Some(declared_len(&self.buf, self.bytes_max, self.reader)?);
        }
        if self.declared.is_some_and(|len| self.buf.len() > PREFIX_BYTES + len) {
            // gRPC's unary contract: one message each way (grpc-java: "Too many requests").
            // tonic's client would take the first of an answer's and ignore the rest.
            return Err(Status::internal(match self.reader {
                Reader::Server => "more than one request message in a unary call",
                Reader::Client(_) => "more than one message in a unary answer",
            }));
        }
        Ok(())
    }

    /// The message, once the body ended: `None` if it held no bytes. A partial message is
    /// an error, or nothing if `drop_partial` (tonic's client stops reading at the trailers
    /// and drops a partial message unread).
    pub fn finish<M: prost::Message + Default>(self, drop_partial: bool) -> Result<Option<M>, Status> {
        match self.declared {
            Some(len) if self.buf.len() == PREFIX_BYTES + len => {
                let message = self.buf.freeze().slice(PREFIX_BYTES..);
                M::decode(message).map(Some).map_err(|e| Status::internal(e.to_string()))
            }
            None if self.buf.is_empty() => Ok(None),
            _ if drop_partial => Ok(None),
            _ => Err(Status::internal("Unexpected EOF decoding stream.")),
        }
    }
}

/// The messages of a streaming body, in order, as its chunks arrive: a message is decoded
/// as soon as its last byte is in; what is left of a chunk waits for the next one.
pub struct Frames {
    buf: BytesMut,
    bytes_max: usize,
    reader: Reader,
}

impl Frames {
    pub fn new(bytes_max: usize, reader: Reader) -> Frames {
        Frames { buf: BytesMut::new(), bytes_max, reader }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if one is in. A bad prefix or encoding is an error (the
    /// stream cannot be read on past it).
    pub fn next_message<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        if self.buf.len() < PREFIX_BYTES {
            return Ok(None);
        }
        let len = declared_len(&self.buf, self.bytes_max, self.reader)?;
        if self.buf.len() < PREFIX_BYTES + len {
            // Room for the rest at once: one copy per message, not one per chunk.
            self.buf.reserve(PREFIX_BYTES + len - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(PREFIX_BYTES + len);
        let message = frame.split_off(PREFIX_BYTES).freeze();
        M::decode(message).map(Some).map_err(|e| Status::internal(e.to_string()))
    }

    /// At the body's end: an error if part of a message is left (tonic's wording).
    pub fn finish(&self) -> Result<(), Status> {
        if self.buf.is_empty() { Ok(()) } else { Err(Status::internal("Unexpected EOF decoding stream.")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_drop_the_reserved_names_metadata_sets_and_keep_the_rest() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        for name in ["te", "user-agent", "content-type", "grpc-message", "grpc-message-type", "grpc-status"] {
            metadata.insert(name, tonic::metadata::MetadataValue::from_static("from-metadata"));
        }
        metadata.insert("x-mq-client-id", tonic::metadata::MetadataValue::from_static("c1"));
        let h = headers(metadata);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h.get_all("content-type").iter().collect::<Vec<_>>(), ["application/grpc"]);
        assert_eq!(h.get("x-mq-client-id").unwrap(), "c1");
        assert_eq!(headers(tonic::metadata::MetadataMap::new()).len(), 1, "content-type alone");
    }

    #[test]
    fn frames_split_anywhere_decode_in_order_and_a_cut_one_is_an_error() {
        let messages: Vec<crate::wasmq::raft::DeliverReply> = (1..=5)
            .map(|n| crate::wasmq::raft::DeliverReply { accepted: n, batches_through: n as u64 * 1000 })
            .collect();
        let stream: Vec<u8> = messages.iter().flat_map(|m| encode(m, 1 << 10).unwrap().to_vec()).collect();
        for chunk in 1..=stream.len() {
            let mut frames = Frames::new(1 << 10, Reader::Client(http::StatusCode::OK));
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                frames.push(piece);
                while let Some(m) = frames.next_message::<crate::wasmq::raft::DeliverReply>().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, messages, "chunks of {chunk}");
            frames.finish().unwrap();
        }
        let mut cut = Frames::new(1 << 10, Reader::Server);
        cut.push(&stream[..stream.len() - 1]);
        while cut.next_message::<crate::wasmq::raft::DeliverReply>().unwrap().is_some() {}
        assert_eq!(cut.finish().unwrap_err().message(), "Unexpected EOF decoding stream.");
        // Over the limit, a compressed flag, a bad encoding.
        let mut big = Frames::new(2, Reader::Server);
        big.push(&stream);
        assert_eq!(big.next_message::<crate::wasmq::raft::DeliverReply>().unwrap_err().code(), tonic::Code::OutOfRange);
        let mut flagged = Frames::new(1 << 10, Reader::Server);
        flagged.push(&[1, 0, 0, 0, 0]);
        assert_eq!(
            flagged.next_message::<crate::wasmq::raft::DeliverReply>().unwrap_err().code(),
            tonic::Code::Internal
        );
        let mut garbage = Frames::new(1 << 10, Reader::Server);
        garbage.push(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(garbage.next_message::<crate::wasmq::raft::DeliverReply>().is_err());
    }
}

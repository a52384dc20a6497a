//! gRPC's length-prefixed message framing, for the paths that bypass tonic's codec
//! (`unary_route` on the server, `H2Channel::unary` on the client). Error texts are
//! tonic's, so a peer cannot tell the paths apart.

use bytes::{BufMut, Bytes, BytesMut};
use tonic::Status;

/// A compressed flag byte and a 4-byte big-endian length.
pub const PREFIX_BYTES: usize = 5;
/// Headers that metadata may not set: the protocol's own (tonic sanitises the same).
pub const RESERVED_HEADERS: [&str; 6] =
    ["te", "user-agent", "content-type", "grpc-message", "grpc-message-type", "grpc-status"];

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
pub fn declared_len(prefix: &[u8], bytes_max: usize, reader: Reader) -> Result<usize, Status> {
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

/// The message a complete frame holds.
pub fn decode<M: prost::Message + Default>(frame: Bytes) -> Result<M, Status> {
    assert!(frame.len() >= PREFIX_BYTES);
    M::decode(frame.slice(PREFIX_BYTES..)).map_err(|e| Status::internal(e.to_string()))
}

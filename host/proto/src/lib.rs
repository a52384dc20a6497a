//! Generated protobuf messages and tonic services.
//!
//! - `apache::rocketmq::v2`: the RocketMQ 5 gRPC protocol, written by us from the published
//!   definitions (same package, message/field names and numbers: identical wire format).
//! - `wasmq::{raft, admin, namesrv}`: wasmq's internal services.
//! - `coalescing_io`: the socket wrapper our gRPC servers and clients use (fewer writes).
//! - `dial`: how our gRPC clients connect (bounded, TCP_NODELAY, no self-connects).
//! - `unary_route`: one unary method served in front of tonic's router (the send path).
//! - `h2_server`: our HTTP/2 server, on h2 directly: the client listener (the send path on
//!   it) and the Raft peer listener (the pipes on it).
//! - `h2_channel`, `h2_duplex`: gRPC clients on h2 directly (unary calls; the Raft pipes),
//!   and the server's side of a bidirectional call (`h2_duplex`).

pub mod cancellable_io;
pub mod coalescing_io;
pub mod dial;
pub mod grpc_frame;
pub mod grpc_timeout;
pub mod h2_channel;
pub mod h2_duplex;
pub mod h2_server;
pub mod rehomed_tcp;
pub mod unary_route;

pub mod apache {
    pub mod rocketmq {
        pub mod v2 {
            tonic::include_proto!("apache.rocketmq.v2");

            /// The SendMessage method's path: the calls that take the paths around tonic's
            /// codec (`unary_route` on a broker, `H2Channel::unary` in our clients).
            pub const SEND_MESSAGE_PATH: &str = "/apache.rocketmq.v2.MessagingService/SendMessage";
        }
    }
}

pub mod wasmq {
    pub mod raft {
        tonic::include_proto!("wasmq.raft");
    }
    pub mod admin {
        tonic::include_proto!("wasmq.admin");
    }
    pub mod namesrv {
        tonic::include_proto!("wasmq.namesrv");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_send_message_path_is_the_generated_one() {
        use tonic::server::NamedService;
        type Server = crate::apache::rocketmq::v2::messaging_service_server::MessagingServiceServer<()>;
        let generated = <Server as NamedService>::NAME;
        assert_eq!(crate::apache::rocketmq::v2::SEND_MESSAGE_PATH, format!("/{generated}/SendMessage"));
    }
}

//! rewind's wire contract: the `rewind.v1` protobuf types and gRPC services
//! (generated from `proto/rewind/v1`), and the mutual-TLS setup and
//! certificate identities that the agent and the coordinator share.

pub mod accept;
pub mod bounded;
pub mod connect;
pub mod crl;
pub mod identity;
pub mod masked;
pub mod metrics;
pub mod tls;

/// Generated from `proto/rewind/v1/*.proto`.
pub mod v1 {
    tonic::include_proto!("rewind.v1");
}

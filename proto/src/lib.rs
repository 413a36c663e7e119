//! Quartermaster's gRPC contract, package `quartermaster.v1`, and its conversions.
//!
//! Module map:
//! - [`v1`]: the code generated from `proto/quartermaster/v1/*.proto` (messages, clients,
//!   servers for `JobService`, `AdminService`, `AgentService` and `RaftService`).
//! - [`convert`]: proto to core (validating: bad input becomes a `ConvertError` naming the
//!   field and the reason) and core to proto.
//! - [`auth`]: the client's bearer token (an interceptor) and the channel type that carries it.
//! - [`tls`]: certificate files, the identity a certificate names (`qm://replica/ID`,
//!   `qm://node/NAME`), and how a process dials another (plaintext or TLS).
//! - [`certs`]: a cluster's certificate authority (`qm admin certs`, `qm dev`).
//! - [`build`]: builders of common messages (a GPU job, a node inventory, a team).

pub mod auth;
pub mod build;
pub mod certs;
pub mod convert;
pub mod tls;

/// The encoded `FileDescriptorSet` of package `quartermaster.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/quartermaster_v1.bin"));

/// Generated code of package `quartermaster.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("quartermaster.v1");
}

//! The scheduler replica (`qm server`): Raft node and transport, sled storage, the state
//! machine around `qm_core::State`, the leader's scheduling loop and the gRPC services.
//!
//! Module map:
//! - `storage`: the `LogStore` trait (log with checksums, hard/conf state, snapshots) and its
//!   sled implementation.

pub mod codec;
pub mod fsm;
pub mod leader;
pub mod logging;
pub mod node;
pub mod restore;
pub mod server;
pub mod service;
pub mod storage;
#[cfg(test)]
mod testing;
pub mod transport;

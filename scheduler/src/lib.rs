//! The scheduler replica (`qm server`): Raft node and transport, sled storage, the state
//! machine around `qm_core::State`, the leader's loops and the gRPC services.
//!
//! Module map:
//! - `access`: bearer tokens and roles, the table of who may call what, and the layer that
//!   checks every call; the cluster's first admin token.
//! - `audit`: the audit trail of the changes callers asked for, kept in the replicated state.
//! - `server`: a replica as a process: storage, node, transport, loops and one tonic server.
//! - `node`: the raft-rs `RawNode` on its own thread (the Ready loop, batching, read barriers,
//!   snapshots, membership) and `Handle`, through which everything else talks to it.
//! - `storage`: the `LogStore` trait (log with checksums, hard/conf state, snapshots) and its
//!   sled implementation.
//! - `transport`: how Raft messages leave: gRPC streams per peer, or an in-process network for
//!   tests that drops, delays and partitions.
//! - `fsm`: the replicated state machine (core state, retry tokens, members); `codec`: what log
//!   entries and snapshots hold, versioned.
//! - `leader`: the scheduling loop, and the watch on idle accelerators (`leader::idle`); `service`: `JobService`, `AdminService`, `AgentService`
//!   (sessions, orders, node liveness) and `RaftService`.
//! - `restore`: backups: seeding a new cluster, exporting a stopped replica.
//! - `observe`: the gRPC health service, and the HTTP address with Prometheus metrics,
//!   `/healthz` and `/readyz`.
//! - `logging`: raft-rs's slog records into `tracing`.
//! - `dst`: the deterministic simulation of a cluster (replicas, agents, clients and faults in
//!   one thread from a seed); `testing`: builders of jobs and teams for it and the tests.

pub mod access;
pub mod audit;
pub mod codec;
pub mod dst;
pub mod fsm;
pub mod leader;
pub mod logging;
pub mod node;
pub mod observe;
pub mod restore;
pub mod server;
pub mod service;
pub mod storage;
mod testing;
pub mod transport;

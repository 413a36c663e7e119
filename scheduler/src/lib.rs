//! The scheduler replica (`qm server`): Raft node and transport, sled storage, the state
//! machine around `qm_core::State`, the leader's scheduling loop and the gRPC services.
//!
//! Module map: empty until the replication issue lands; the contract it implements is in
//! `qm-proto` and the policy it runs is `qm_core`.

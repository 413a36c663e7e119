//! The tower layer in front of every service of a replica. For each call it finds the RPC's
//! rule (no rule: `PermissionDenied`), reads the bearer token from the `authorization`
//! metadata, looks its hash up in the replicated tokens (missing or unknown:
//! `Unauthenticated`), checks the role against the rule (`PermissionDenied`, naming role and
//! RPC), and puts the `Caller` in the request's extensions for the service. A refused call is
//! answered here, before its body is read or decoded.
//!
//! Two rules also ask for the client certificate of the connection (mutual TLS): `RaftService`
//! admits only a peer whose certificate names a replica (the service is handed its id as a
//! [`Peer`] and drops messages claiming another sender), and `AgentService` only an agent token
//! for node N over a connection whose certificate names node N.
//!
//! A token this replica does not know may be one created a moment ago that it has not applied
//! yet (a follower behind, a replica that just joined): it is looked up again after a read
//! barrier before it is refused, and a replica that cannot reach the leader for the barrier
//! answers `Unavailable`, so that clients try another replica.

use super::rules::{rule, Rule};
use super::tokens::{digest, Digest};
use super::{Caller, Role};
use crate::node::Handle;
use qm_proto::tls::Identity;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// An RPC's service, method and rule.
type Rpc = (&'static str, &'static str, Rule);

/// Where callers come from.
#[derive(Clone, Debug)]
pub enum Gate {
    /// Bearer tokens, looked up in the state of this replica.
    Tokens(Handle),
    /// `--insecure`: every caller is an admin.
    Open,
}

/// What the gate says of a call at once.
#[derive(Debug)]
pub enum Admission {
    /// Admitted, as this caller.
    Caller(Caller),
    /// Refused.
    Refused(Status),
    /// A Raft peer, by the replica id its certificate names.
    Peer(Peer),
    /// An open RPC (health): anyone, with no caller.
    Open,
    /// The token is not in this replica's state: look again after a read barrier.
    Unknown(Handle, Digest, Rpc, Option<Identity>),
}

/// The replica a `RaftService` call comes from, as its certificate says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub u64);

impl Gate {
    /// What the gate says of a request to `path` with these headers, over a connection whose
    /// client certificate names `certified`.
    pub fn admit(&self, path: &str, headers: &http::HeaderMap, certified: Option<Identity>) -> Admission {
        let Some(rpc) = rule(path) else {
            return Admission::Refused(Status::permission_denied(format!(
                "{path}: no such RPC, or it has no access rule"
            )));
        };
        let handle = match self {
            Gate::Open => return Admission::Caller(Caller::insecure()),
            Gate::Tokens(_) if rpc.2 == Rule::Peer => return peer(rpc, certified),
            Gate::Tokens(_) if rpc.2 == Rule::Open => return Admission::Open,
            Gate::Tokens(handle) => handle,
        };
        let hash = match bearer(headers) {
            Ok(token) => digest(token),
            Err(s) => return Admission::Refused(s),
        };
        match lookup(handle, hash, rpc, certified.as_ref()) {
            Ok(Some(caller)) => Admission::Caller(caller),
            Ok(None) => Admission::Unknown(handle.clone(), hash, rpc, certified),
            Err(s) => Admission::Refused(s),
        }
    }
}

/// A Raft peer is known by its certificate alone.
fn peer((service, method, _): Rpc, certified: Option<Identity>) -> Admission {
    match certified {
        Some(Identity::Replica(id)) => Admission::Peer(Peer(id)),
        other => Admission::Refused(Status::unauthenticated(format!(
            "{service}/{method}: only a replica may call it, with a certificate of the cluster's CA naming it \
             (this connection's names {})",
            named(other.as_ref())
        ))),
    }
}

fn named(who: Option<&Identity>) -> String {
    who.map_or_else(|| "no one".to_owned(), Identity::to_string)
}

/// The identity the client certificate of the connection a request came on names.
pub fn certified<B>(request: &http::Request<B>) -> Option<Identity> {
    let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    Identity::of_certificate(certs.first()?)
}

/// The caller whose token hashes to `hash`, checked against the RPC's rule (and an agent's
/// against the connection's certificate); `None` when this replica does not know the token.
fn lookup(
    handle: &Handle,
    hash: Digest,
    (service, method, rule): Rpc,
    certified: Option<&Identity>,
) -> Result<Option<Caller>, Status> {
    let found = handle.fsm().tokens.find(&hash).map(|r| (r.name.clone(), r.role.clone()));
    let Some((name, role)) = found else { return Ok(None) };
    if !rule.admits(&role) {
        let word = role.word();
        return Err(Status::permission_denied(format!("{word} token {name:?} may not call {service}/{method}")));
    }
    if let (Rule::Agent, Role::Agent { node }) = (rule, &role) {
        if certified != Some(&Identity::Node(node.clone())) {
            return Err(Status::permission_denied(format!(
                "agent token {name:?} of node {node:?} may call {service}/{method} only over a connection whose \
                 certificate names that node (this one's names {})",
                named(certified)
            )));
        }
    }
    Ok(Some(Caller { name, role, hash: Some(hash) }))
}

/// Looks an unknown token up again once this replica has applied everything committed.
async fn confirm(handle: Handle, hash: Digest, rpc: Rpc, certified: Option<Identity>) -> Result<Caller, Status> {
    let barrier = handle.read_barrier().await;
    barrier.map_err(|e| Status::unavailable(format!("this replica cannot check the token now: {e}")))?;
    lookup(&handle, hash, rpc, certified.as_ref())?
        .ok_or_else(|| Status::unauthenticated("the token is unknown or revoked"))
}

/// The secret of an `authorization: Bearer SECRET` header.
fn bearer(headers: &http::HeaderMap) -> Result<&str, Status> {
    let expected = || Status::unauthenticated("authorization: expected \"Bearer <token>\"");
    let value = headers
        .get(qm_proto::auth::AUTHORIZATION)
        .ok_or_else(|| Status::unauthenticated("no token: send \"authorization: Bearer <token>\""))?;
    let text = value.to_str().map_err(|_| expected())?;
    let (scheme, secret) = text.split_once(' ').ok_or_else(expected)?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err(expected());
    }
    Ok(secret.trim())
}

/// The layer, for `tonic::transport::Server::layer`.
#[derive(Clone, Debug)]
pub struct AccessLayer(pub Gate);

impl<S> tower_layer::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access { gate: self.0.clone(), inner }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone, Debug)]
pub struct Access<S> {
    gate: Gate,
    inner: S,
}

type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Access<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Boxed<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is ready only after its own poll_ready; the one that was polled serves
        // this call, the clone the next (tower's documented pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let certified = match self.gate {
            Gate::Tokens(_) => certified(&request),
            Gate::Open => None,
        };
        match self.gate.admit(request.uri().path(), request.headers(), certified) {
            Admission::Caller(caller) => {
                request.extensions_mut().insert(Arc::new(caller));
                Box::pin(inner.call(request))
            }
            Admission::Peer(peer) => {
                request.extensions_mut().insert(peer);
                Box::pin(inner.call(request))
            }
            Admission::Open => Box::pin(inner.call(request)),
            Admission::Refused(status) => {
                tracing::info!(path = request.uri().path(), code = ?status.code(), "refused a call: {}", status.message());
                Box::pin(async move { Ok(status.into_http()) })
            }
            Admission::Unknown(handle, hash, rpc, certified) => Box::pin(async move {
                match confirm(handle, hash, rpc, certified).await {
                    Ok(caller) => {
                        request.extensions_mut().insert(Arc::new(caller));
                        inner.call(request).await
                    }
                    Err(status) => {
                        tracing::info!(code = ?status.code(), "refused a call: {}", status.message());
                        Ok(status.into_http())
                    }
                }
            }),
        }
    }
}

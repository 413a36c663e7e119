//! Who may call what: one table with a row for every RPC a replica serves. The access layer
//! refuses a call whose path has no row, so that an RPC added without one is refused to
//! everyone (and the test that reads the `.proto` files fails) rather than open to all. Rows of
//! our package name the service alone (`JobService`); rows of the ecosystem's standard services
//! (health, reflection) name it in full (`grpc.health.v1.Health`).

use super::Role;

/// The package of every service.
pub const PACKAGE: &str = "quartermaster.v1";

/// Which callers an RPC admits; the handler narrows a member to its teams and an agent to its
/// node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Admin tokens only.
    Admin,
    /// Admin and member tokens.
    Member,
    /// Admin and agent tokens.
    Agent,
    /// Any valid token.
    AnyToken,
    /// Raft peers: no token (a peer is known by its replica id and, with mutual TLS, by its
    /// certificate).
    Peer,
    /// Anyone, without a token: the health service, which probes and load balancers call.
    Open,
}

impl Rule {
    /// Whether a caller with `role` may call an RPC with this rule.
    pub fn admits(self, role: &Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin)
                | (Rule::Member, Role::Member { .. })
                | (Rule::Agent, Role::Agent { .. })
                | (Rule::AnyToken, _)
        )
    }
}

/// Every RPC: service, method, rule.
pub const RULES: &[(&str, &str, Rule)] = &[
    ("JobService", "Submit", Rule::Member),
    ("JobService", "Get", Rule::Member),
    ("JobService", "List", Rule::Member),
    ("JobService", "Cancel", Rule::Member),
    ("JobService", "Watch", Rule::Member),
    ("JobService", "Why", Rule::Member),
    ("AdminService", "SetTeam", Rule::Admin),
    ("AdminService", "ListTeams", Rule::Member),
    ("AdminService", "SetPriorityClass", Rule::Admin),
    ("AdminService", "ListPriorityClasses", Rule::Member),
    ("AdminService", "DeletePriorityClass", Rule::Admin),
    ("AdminService", "ListNodes", Rule::Member),
    ("AdminService", "Cordon", Rule::Admin),
    ("AdminService", "Uncordon", Rule::Admin),
    ("AdminService", "Drain", Rule::Admin),
    ("AdminService", "ClusterStatus", Rule::Member),
    ("AdminService", "AddMember", Rule::Admin),
    ("AdminService", "RemoveMember", Rule::Admin),
    ("AdminService", "SaveSnapshot", Rule::Admin),
    ("AdminService", "CreateToken", Rule::Admin),
    ("AdminService", "ListTokens", Rule::Admin),
    ("AdminService", "RevokeToken", Rule::Admin),
    ("AdminService", "WhoAmI", Rule::AnyToken),
    ("AdminService", "ListAudit", Rule::Admin),
    ("AdminService", "SetIdlePolicy", Rule::Admin),
    ("AgentService", "Session", Rule::Agent),
    ("RaftService", "Stream", Rule::Peer),
    ("RaftService", "Received", Rule::Peer),
    ("grpc.health.v1.Health", "Check", Rule::Open),
    ("grpc.health.v1.Health", "Watch", Rule::Open),
    ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo", Rule::AnyToken),
    ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", Rule::AnyToken),
];

/// The request path of a row's RPC.
pub fn path(service: &str, method: &str) -> String {
    if service.contains('.') {
        format!("/{service}/{method}")
    } else {
        format!("/{PACKAGE}.{service}/{method}")
    }
}

/// The rule of a request path (`/quartermaster.v1.JobService/Submit`), if it has one.
pub fn rule(path: &str) -> Option<(&'static str, &'static str, Rule)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ours = service.strip_prefix(PACKAGE).and_then(|s| s.strip_prefix('.'));
    let service = match ours {
        Some(name) if !name.contains('.') => name,
        Some(_) => return None,
        None if service.contains('.') => service,
        None => return None,
    };
    RULES.iter().find(|(s, m, _)| *s == service && *m == method).copied()
}

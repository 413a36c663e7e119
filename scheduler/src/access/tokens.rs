//! Bearer tokens in the replicated state: each one's name, role and SHA-256 (never the secret),
//! and the commands that create and revoke them. Every replica applies them in log order, so a
//! revoked token is refused by a replica as soon as it has applied the revocation.

use super::Role;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A token's SHA-256.
pub type Digest = [u8; 32];

/// Tokens held at most: far above any fleet's teams and nodes, low enough that a caller with
/// an admin token cannot grow every replica's memory without bound.
pub const MAX_TOKENS: usize = 100_000;

/// Bytes of a token's name at most.
pub const MAX_TOKEN_NAME: usize = 64;

/// Teams of one member token at most.
pub const MAX_TOKEN_TEAMS: usize = 1_000;

/// The name the bootstrap token gets.
pub const BOOTSTRAP_NAME: &str = "bootstrap";

/// The prefix of every secret, so that a leaked one is recognisable (secret scanners, logs).
pub const SECRET_PREFIX: &str = "qm_";

/// A token as the replicas keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret.
    pub hash: Digest,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
    /// The token that created it; empty for the bootstrap token.
    pub created_by: String,
}

/// A change to the tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessCommand {
    /// Adds a token.
    Create(TokenRecord),
    /// Removes a token by name.
    Revoke {
        /// Its name.
        name: String,
    },
    /// Adds the first admin token, once in a cluster's life: refused when one was added.
    Bootstrap {
        /// SHA-256 of its secret.
        hash: Digest,
        /// When, ms since the Unix epoch.
        at_ms: u64,
    },
}

/// Why a change to the tokens was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// A field breaks a rule.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The name is taken.
    #[error("name: a token named {0:?} exists")]
    NameTaken(String),
    /// No token has the name.
    #[error("name: no token named {0:?}")]
    Unknown(String),
    /// The cluster's first admin token was already added.
    #[error("the cluster was bootstrapped already")]
    Bootstrapped,
    /// The token a change was asked with was revoked before the change applied.
    #[error("the token was revoked")]
    Revoked,
}

/// The tokens of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TokensWire", into = "TokensWire")]
pub struct Tokens {
    by_name: BTreeMap<String, Arc<TokenRecord>>,
    by_hash: HashMap<Digest, Arc<TokenRecord>>,
    bootstrap: Option<Digest>,
}

/// `Tokens` as encoded: the records by name; the hash index is rebuilt.
#[derive(Clone, Serialize, Deserialize)]
struct TokensWire {
    tokens: Vec<TokenRecord>,
    bootstrap: Option<Digest>,
}

impl From<TokensWire> for Tokens {
    fn from(w: TokensWire) -> Self {
        let mut t = Tokens { bootstrap: w.bootstrap, ..Tokens::default() };
        for r in w.tokens {
            t.insert(r);
        }
        t
    }
}

impl From<Tokens> for TokensWire {
    fn from(t: Tokens) -> Self {
        TokensWire { tokens: t.by_name.values().map(|r| (**r).clone()).collect(), bootstrap: t.bootstrap }
    }
}

impl Tokens {
    /// The token whose secret hashes to `hash`.
    pub fn find(&self, hash: &Digest) -> Option<&Arc<TokenRecord>> {
        self.by_hash.get(hash)
    }

    /// Every token, by name.
    pub fn list(&self) -> impl Iterator<Item = &TokenRecord> {
        self.by_name.values().map(|r| &**r)
    }

    /// The bootstrap token's hash, once the cluster was bootstrapped (even if it was revoked since).
    pub fn bootstrap(&self) -> Option<&Digest> {
        self.bootstrap.as_ref()
    }

    /// Applies a change; a refused one changes nothing.
    pub fn apply(&mut self, command: AccessCommand) -> Result<(), AccessError> {
        match command {
            AccessCommand::Create(record) => {
                check(&record)?;
                if self.by_name.contains_key(&record.name) {
                    return Err(AccessError::NameTaken(record.name));
                }
                self.room()?;
                self.insert(record);
            }
            AccessCommand::Revoke { name } => {
                let record = self.by_name.remove(&name).ok_or(AccessError::Unknown(name))?;
                self.by_hash.remove(&record.hash);
            }
            AccessCommand::Bootstrap { hash, at_ms } => {
                if self.bootstrap.is_some() {
                    return Err(AccessError::Bootstrapped);
                }
                let record = TokenRecord {
                    name: BOOTSTRAP_NAME.into(),
                    role: Role::Admin,
                    hash,
                    created_ms: at_ms,
                    created_by: String::new(),
                };
                if self.by_name.contains_key(BOOTSTRAP_NAME) {
                    return Err(AccessError::NameTaken(BOOTSTRAP_NAME.into()));
                }
                self.room()?;
                self.bootstrap = Some(hash);
                self.insert(record);
            }
        }
        Ok(())
    }

    fn room(&self) -> Result<(), AccessError> {
        if self.by_name.len() >= MAX_TOKENS {
            return Err(AccessError::Invalid {
                field: "name",
                reason: format!("the cluster holds {MAX_TOKENS} tokens, the most it keeps"),
            });
        }
        Ok(())
    }

    fn insert(&mut self, record: TokenRecord) {
        let record = Arc::new(record);
        self.by_hash.insert(record.hash, record.clone());
        self.by_name.insert(record.name.clone(), record);
    }
}

/// Checks a new token's fields.
fn check(r: &TokenRecord) -> Result<(), AccessError> {
    check_name(&r.name)?;
    match &r.role {
        Role::Admin => Ok(()),
        Role::Member { teams } if teams.is_empty() => {
            Err(AccessError::Invalid { field: "teams", reason: "a member token needs at least one team".into() })
        }
        Role::Member { teams } if teams.len() > MAX_TOKEN_TEAMS => Err(AccessError::Invalid {
            field: "teams",
            reason: format!("{} teams, more than {MAX_TOKEN_TEAMS}", teams.len()),
        }),
        Role::Member { teams } => {
            for team in teams {
                qm_core::limits::name("teams", team)
                    .map_err(|e| AccessError::Invalid { field: "teams", reason: e.reason })?;
            }
            Ok(())
        }
        Role::Agent { node } => qm_core::limits::name("node", node)
            .map(|_| ())
            .map_err(|e| AccessError::Invalid { field: "node", reason: e.reason }),
    }
}

/// Checks a token's name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), AccessError> {
    let bad = |reason: &str| Err(AccessError::Invalid { field: "name", reason: reason.into() });
    if name.is_empty() {
        return bad("required");
    }
    if name.len() > MAX_TOKEN_NAME {
        return bad(&format!("longer than {MAX_TOKEN_NAME} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return bad("only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// A new secret: 256 bits from the operating system's generator, as `qm_` and 64 hex digits.
pub fn new_secret() -> Result<String, rand::rand_core::OsError> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
    let mut s = String::with_capacity(SECRET_PREFIX.len() + 64);
    s.push_str(SECRET_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// The SHA-256 of a secret. A plain hash suffices: secrets are 256 random bits, so there is
/// nothing to guess that a slow hash would protect.
pub fn digest(secret: &str) -> Digest {
    Sha256::digest(secret.trim().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, role: Role) -> TokenRecord {
        TokenRecord { name: name.into(), role, hash: digest(name), created_ms: 1, created_by: "bootstrap".into() }
    }

    fn member(teams: &[&str]) -> Role {
        Role::Member { teams: teams.iter().map(|t| (*t).to_owned()).collect() }
    }

    #[test]
    fn tokens_are_found_by_hash_until_revoked_and_refusals_change_nothing() {
        let mut t = Tokens::default();
        t.apply(AccessCommand::Create(record("ci", member(&["research"])))).unwrap();
        assert_eq!(t.find(&digest("ci")).unwrap().name, "ci");
        let before = t.clone();
        let taken = t.apply(AccessCommand::Create(record("ci", Role::Admin)));
        assert_eq!(taken, Err(AccessError::NameTaken("ci".into())));
        assert_eq!(t, before);
        assert_eq!(t.apply(AccessCommand::Revoke { name: "nope".into() }), Err(AccessError::Unknown("nope".into())));
        t.apply(AccessCommand::Revoke { name: "ci".into() }).unwrap();
        assert!(t.find(&digest("ci")).is_none());
        assert_eq!(t.list().count(), 0);
    }

    #[test]
    fn the_cluster_is_bootstrapped_once_even_after_the_token_is_revoked() {
        let mut t = Tokens::default();
        t.apply(AccessCommand::Bootstrap { hash: digest("a"), at_ms: 1 }).unwrap();
        assert_eq!(t.find(&digest("a")).unwrap().role, Role::Admin);
        assert_eq!(t.apply(AccessCommand::Bootstrap { hash: digest("b"), at_ms: 2 }), Err(AccessError::Bootstrapped));
        t.apply(AccessCommand::Revoke { name: BOOTSTRAP_NAME.into() }).unwrap();
        assert_eq!(t.apply(AccessCommand::Bootstrap { hash: digest("b"), at_ms: 3 }), Err(AccessError::Bootstrapped));
        assert_eq!(t.bootstrap(), Some(&digest("a")));
        assert!(t.find(&digest("b")).is_none());
    }

    #[test]
    fn bad_fields_are_refused_naming_the_field() {
        let mut t = Tokens::default();
        let field = |r: Result<(), AccessError>| match r {
            Err(AccessError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(t.apply(AccessCommand::Create(record("", Role::Admin)))), "name");
        assert_eq!(field(t.apply(AccessCommand::Create(record("a b", Role::Admin)))), "name");
        assert_eq!(field(t.apply(AccessCommand::Create(record(&"x".repeat(65), Role::Admin)))), "name");
        assert_eq!(field(t.apply(AccessCommand::Create(record("m", member(&[]))))), "teams");
        assert_eq!(field(t.apply(AccessCommand::Create(record("m", member(&[" "]))))), "teams");
        let many: Vec<String> = (0..=MAX_TOKEN_TEAMS).map(|i| format!("t{i}")).collect();
        let many = Role::Member { teams: many.into_iter().collect() };
        assert_eq!(field(t.apply(AccessCommand::Create(record("m", many)))), "teams");
        assert_eq!(field(t.apply(AccessCommand::Create(record("a", Role::Agent { node: String::new() })))), "node");
        assert_eq!(t, Tokens::default());
    }

    #[test]
    fn secrets_are_distinct_and_hash_without_surrounding_space() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64, "{a}");
        assert_eq!(digest(&format!("{a}\n")), digest(&a), "a token file's newline does not count");
    }
}

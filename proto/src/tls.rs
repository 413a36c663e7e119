//! TLS on every link: the certificate files a replica or an agent is given, the identity a
//! certificate names, and how a process dials another (plaintext, or TLS trusting a CA and
//! presenting its own certificate).
//!
//! A replica's certificate names it with the URI `qm://replica/ID` in its subject alternative
//! names, an agent's with `qm://node/NAME`; both also name the host names and addresses others
//! dial them at. One certificate serves both ends of a link (server and client authentication).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, ServerTlsConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// How long a TLS handshake may take: a peer that accepts the connection and then says nothing
/// (a paused process) fails the dial instead of holding it forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The URI scheme of identities in certificates.
const SCHEME: &str = "qm://";

/// Who a certificate names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Identity {
    /// A scheduler replica, by its Raft id.
    Replica(u64),
    /// The agent of one node, by the node's name.
    Node(String),
}

impl Identity {
    /// The identity as the URI a certificate carries.
    pub fn uri(&self) -> String {
        match self {
            Identity::Replica(id) => format!("{SCHEME}replica/{id}"),
            Identity::Node(name) => format!("{SCHEME}node/{name}"),
        }
    }

    /// The identity of a `qm://` URI; `None` for any other.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(SCHEME)?;
        match rest.split_once('/')? {
            ("replica", id) => id.parse().ok().filter(|id| *id > 0).map(Identity::Replica),
            ("node", name) if !name.is_empty() && !name.contains('/') => Some(Identity::Node(name.to_owned())),
            _ => None,
        }
    }

    /// The identity a DER certificate names (its first `qm://` URI); `None` when it names none
    /// or does not parse.
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let names = cert.subject_alternative_name().ok()??;
        names.value.general_names.iter().find_map(|n| match n {
            GeneralName::URI(uri) => Identity::parse(uri),
            _ => None,
        })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Replica(id) => write!(f, "replica {id}"),
            Identity::Node(name) => write!(f, "node {name:?}"),
        }
    }
}

/// A bad certificate, key or CA file, naming the flag and the file.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {path}: {why}")]
pub struct TlsError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub why: String,
}

/// The certificate files of a replica or an agent: `--tls-cert`, `--tls-key`, `--tls-ca`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Its certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs the cluster's certificates (PEM).
    pub ca: PathBuf,
}

/// Certificate files read and checked.
#[derive(Clone, Debug)]
pub struct Loaded {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
    identity: Option<Identity>,
    expires_in: Duration,
}

impl TlsFiles {
    /// Reads the three files and checks them: each parses, the certificate and the CA are
    /// valid now.
    pub fn load(&self) -> Result<Loaded, TlsError> {
        let cert = read("--tls-cert", &self.cert)?;
        let key = read("--tls-key", &self.key)?;
        let ca = read("--tls-ca", &self.ca)?;
        let bad = |flag, path: &Path, why: String| TlsError { flag, path: path.display().to_string(), why };
        let (identity, expires_in) = check_certificate(&cert).map_err(|why| bad("--tls-cert", &self.cert, why))?;
        check_certificate(&ca).map_err(|why| bad("--tls-ca", &self.ca, why))?;
        PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| bad("--tls-key", &self.key, format!("not a PEM private key ({e})")))?;
        Ok(Loaded { cert, key, ca, identity, expires_in })
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError { flag, path: path.display().to_string(), why: e.to_string() })
}

/// The identity the first certificate of a PEM file names, and how long it stays valid.
fn check_certificate(pem: &[u8]) -> Result<(Option<Identity>, Duration), String> {
    let first = Pem::iter_from_buffer(pem).next().ok_or("no PEM certificate in the file")?;
    let first = first.map_err(|e| format!("not a PEM certificate ({e})"))?;
    let cert = first.parse_x509().map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(format!("valid only from {} to {}", validity.not_before, validity.not_after));
    }
    let left = validity.time_to_expiration().map_or(Duration::ZERO, |d| d.unsigned_abs());
    Ok((Identity::of_certificate(&first.contents), left))
}

impl Loaded {
    /// The identity this process's certificate names, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// How long this process's certificate stays valid.
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// The server side: this certificate, and client certificates checked against the CA when
    /// presented (agents and peers present one; users' clients need not).
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .timeout(HANDSHAKE_TIMEOUT)
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(true)
    }

    /// The client side: servers checked against the CA, this certificate presented.
    pub fn dialer(&self) -> Dialer {
        let config = ClientTlsConfig::new()
            .timeout(HANDSHAKE_TIMEOUT)
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key));
        Dialer { tls: Some(config) }
    }
}

/// A replica's address that cannot be dialled.
#[derive(Debug, thiserror::Error)]
#[error("{addr:?}: {why}")]
pub struct AddressError {
    /// The address given.
    pub addr: String,
    /// Why it cannot be dialled.
    pub why: String,
}

/// How a process dials the others: plaintext, or TLS.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
}

impl Dialer {
    /// Plaintext (`http://`), for replicas started `--insecure`.
    pub fn plain() -> Self {
        Self::default()
    }

    /// With `tls`'s CA and certificate when given (a secure replica or agent), else plaintext.
    pub fn of(tls: Option<&Loaded>) -> Self {
        tls.map_or_else(Self::plain, Loaded::dialer)
    }

    /// TLS trusting the CA in `ca_pem`, or the system's roots without one; no certificate of
    /// its own (a user's client, which a token identifies).
    pub fn trusting(ca_pem: Option<&[u8]>) -> Self {
        let config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
        let config = match ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        Self { tls: Some(config) }
    }

    /// Whether it dials with TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The endpoint of `addr`: `HOST:PORT`, or with the scheme this dialer speaks
    /// (`https://` with TLS, `http://` without).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, AddressError> {
        let bad = |why: &str| AddressError { addr: addr.to_owned(), why: why.to_owned() };
        let trimmed = addr.trim().trim_end_matches('/');
        let (scheme, hostport) = match trimmed.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, trimmed),
        };
        match (scheme, self.is_tls()) {
            (None | Some("https"), true) | (None | Some("http"), false) => {}
            (Some("http"), true) => return Err(bad("an http:// address, but TLS is configured: use https://")),
            (Some("https"), false) => {
                return Err(bad("an https:// address, but TLS is not configured (no CA given)"));
            }
            _ => return Err(bad("not HOST:PORT, http://HOST:PORT or https://HOST:PORT")),
        }
        if hostport.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
            return Err(bad("not HOST:PORT, http://HOST:PORT or https://HOST:PORT"));
        }
        let url = format!("{}://{hostport}", if self.is_tls() { "https" } else { "http" });
        let endpoint = Endpoint::from_shared(url).map_err(|e| bad(&e.to_string()))?;
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()).map_err(|e| bad(&e.to_string())),
            None => Ok(endpoint),
        }
    }
}

/// An error with its causes, joined by colons: a TLS failure's reason ("certificate expired",
/// "UnknownIssuer") is in an inner source that `Display` of the outer error leaves out.
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;

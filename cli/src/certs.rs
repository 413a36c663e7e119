//! `qm admin certs` (a cluster's CA and its replicas' and agents' certificates, with `rcgen`),
//! and the certificate flags of `qm server` and `qm agent`.

use crate::out::{say, Failure};
use anyhow::Result;
use clap::Args;
use qm_proto::certs::{Authority, Validity, CA_CERT, CA_KEY};
use qm_proto::tls::{Identity, Loaded, TlsFiles};
use std::path::{Path, PathBuf};

/// The CA's name in the certificates `qm admin certs` makes.
const CA_NAME: &str = "Quartermaster cluster CA";

/// Certificate flags of `qm server` and `qm agent`: all three, or none with `--insecure`.
#[derive(Debug, Args, Clone, Default)]
pub struct TlsArgs {
    /// This process's certificate (PEM), signed by the cluster's CA and naming this replica
    /// (`qm://replica/ID`) or node (`qm://node/NAME`); `qm admin certs` makes them.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): peers', agents' and replicas' certificates are
    /// checked against it.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The three files, when given.
    pub fn files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
            }
            _ => None,
        }
    }

    /// The files loaded and checked; none with `insecure`, which must then be said.
    pub fn load(&self, insecure: bool) -> Result<Option<Loaded>> {
        match (self.files(), insecure) {
            (Some(_), true) => Err(Failure::usage("--insecure: plaintext; it cannot be given with --tls-cert")),
            (None, true) => Ok(None),
            (None, false) => Err(Failure::usage(
                "--tls-cert, --tls-key and --tls-ca: required unless --insecure (`qm admin certs` makes them)",
            )),
            (Some(files), false) => Ok(Some(files.load().map_err(|e| Failure::usage(e.to_string()))?)),
        }
    }
}

/// Flags of `qm admin certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The directory to write to. Its CA (ca.pem, ca.key) is used when it has one, else made.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// A replica's certificate: its id and the host names or addresses it is dialled at
    /// (`1=10.0.0.1,qm-1.example.org`); repeat for each.
    #[arg(long = "replica", value_name = "ID=HOST[,HOST...]")]
    replicas: Vec<String>,
    /// An agent's certificate: its node's name and the host names or addresses its log
    /// service is dialled at (the node's name when none are given); repeat for each.
    #[arg(long = "agent", value_name = "NODE[=HOST,...]")]
    agents: Vec<String>,
    /// Days the certificates made now stay valid (a new CA too).
    #[arg(long, default_value_t = 365)]
    days: u32,
}

/// One certificate to make.
fn wanted(args: &CertsArgs) -> Result<Vec<(Identity, Vec<String>)>> {
    let hosts = |flag: &str, raw: &str, list: &str| -> Result<Vec<String>> {
        let hosts: Vec<String> = list.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect();
        if hosts.is_empty() {
            return Err(Failure::usage(format!("{flag} {raw:?}: name at least one host or address")));
        }
        Ok(hosts)
    };
    let mut out = Vec::new();
    for raw in &args.replicas {
        let (id, list) = raw
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--replica {raw:?}: expected ID=HOST[,HOST...]")))?;
        let id: u64 = id
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| Failure::usage(format!("--replica {raw:?}: the id is not a replica id (1, 2, ...)")))?;
        out.push((Identity::Replica(id), hosts("--replica", raw, list)?));
    }
    for raw in &args.agents {
        let (node, list) = raw.split_once('=').unwrap_or((raw, raw));
        let ok = !node.is_empty() && node.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        if !ok {
            return Err(Failure::usage(format!("--agent {raw:?}: a node name of printable ASCII without '/'")));
        }
        out.push((Identity::Node(node.to_owned()), hosts("--agent", raw, list)?));
    }
    if out.is_empty() {
        return Err(Failure::usage("--replica or --agent: name at least one certificate to make"));
    }
    Ok(out)
}

/// Runs `qm admin certs`.
pub fn certs(args: &CertsArgs) -> Result<()> {
    let wanted = wanted(args)?;
    let fresh = !args.dir.join(CA_CERT).exists();
    let ca = Authority::open_or_create(&args.dir, CA_NAME, Validity::days(args.days)).map_err(failure)?;
    if fresh {
        let (cert, key) = (args.dir.join(CA_CERT), args.dir.join(CA_KEY));
        say!("made a CA: {} (its key {} stays here, mode 0600)", cert.display(), key.display());
    }
    for (who, hosts) in &wanted {
        let files = ca.issue_to(&args.dir, who, hosts, Validity::days(args.days)).map_err(failure)?;
        say!("{who}: {} and {} (for {})", files.cert.display(), files.key.display(), hosts.join(", "));
    }
    say!("Give each replica and agent its own files: --tls-cert X.pem --tls-key X.key --tls-ca {}", ca_path(&args.dir));
    say!("and clients the CA: export QM_TLS_CA={}", ca_path(&args.dir));
    Ok(())
}

fn ca_path(dir: &Path) -> String {
    dir.join(CA_CERT).display().to_string()
}

fn failure(e: qm_proto::certs::CertError) -> anyhow::Error {
    Failure::usage(e.to_string())
}

/// The certificates of `qm dev`, in `dir`: a CA, the replica's (id 1, for the loopback
/// addresses and `localhost`) and the local agent's (node `node`).
pub fn dev(dir: &Path, node: &str) -> Result<(TlsFiles, TlsFiles)> {
    let ca = Authority::open_or_create(dir, "qm dev CA", Validity::days(365)).map_err(failure)?;
    let local: Vec<String> = ["127.0.0.1", "::1", "localhost"].map(str::to_owned).to_vec();
    let replica = ca.issue_to(dir, &Identity::Replica(1), &local, Validity::days(365)).map_err(failure)?;
    let agent = ca.issue_to(dir, &Identity::Node(node.to_owned()), &local, Validity::days(365)).map_err(failure)?;
    Ok((replica, agent))
}

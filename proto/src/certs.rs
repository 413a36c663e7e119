//! A certificate authority for a cluster, made with `rcgen`: `qm admin certs` and `qm dev`
//! create one and issue each replica and agent its certificate. Keys are ECDSA P-256; private
//! keys are written with mode 0600. A production cluster may use its own CA instead: what a
//! replica or agent needs of a certificate is in `docs/security.md`.

use crate::tls::{Identity, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The CA's file names in a certificate directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("{0}")]
    Make(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A name cannot go in a certificate.
    #[error("{0}")]
    Name(String),
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// From.
    pub from: SystemTime,
    /// Until.
    pub until: SystemTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = SystemTime::now();
        Self { from: now - Duration::from_secs(3600), until: now + Duration::from_secs(u64::from(days) * 86_400) }
    }
}

/// A CA that issues a cluster's certificates.
#[derive(Debug)]
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl Authority {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str, validity: Validity) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, validity);
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self { issuer: Issuer::new(params, key), cert_pem })
    }

    /// The CA in `dir` (`ca.pem`, `ca.key`), made and written there when it has none.
    pub fn open_or_create(dir: &Path, name: &str, validity: Validity) -> Result<Self, CertError> {
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if cert.exists() {
            let cert_pem = read(&cert)?;
            let key = KeyPair::from_pem(&read(&key)?)?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
            return Ok(Self { issuer, cert_pem });
        }
        let ca = Self::new(name, validity)?;
        write_pair(dir, "ca", &ca.cert_pem, &ca.issuer.key().serialize_pem())?;
        Ok(ca)
    }

    /// The CA's certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate and key for `who`, valid for the host names and addresses `hosts`.
    pub fn issue(&self, who: &Identity, hosts: &[String], validity: Validity) -> Result<(String, String), CertError> {
        let uri = who.uri();
        if !uri.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CertError::Name(format!("{who}: a certificate names printable ASCII only")));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        params.distinguished_name.push(DnType::CommonName, who.to_string());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues `who` a certificate and writes it to `dir` as `STEM.pem` and `STEM.key`, next to
    /// the CA's `ca.pem` (`replica-ID` or `agent-NODE`).
    pub fn issue_to(
        &self,
        dir: &Path,
        who: &Identity,
        hosts: &[String],
        validity: Validity,
    ) -> Result<TlsFiles, CertError> {
        let (cert, key) = self.issue(who, hosts, validity)?;
        let (cert, key) = write_pair(dir, &stem(who), &cert, &key)?;
        let ca = dir.join(CA_CERT);
        if !ca.exists() {
            write_file(&ca, self.cert_pem.as_bytes(), 0o644)?;
        }
        Ok(TlsFiles { cert, key, ca })
    }
}

/// The file stem of `who`'s certificate.
pub fn stem(who: &Identity) -> String {
    match who {
        Identity::Replica(id) => format!("replica-{id}"),
        Identity::Node(name) => format!("agent-{name}"),
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = validity.from.into();
    params.not_after = validity.until.into();
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io { path: path.display().to_string(), source })
}

/// Writes `STEM.pem` (0644) and `STEM.key` (0600) under `dir`.
fn write_pair(dir: &Path, stem: &str, cert: &str, key: &str) -> Result<(PathBuf, PathBuf), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.display().to_string(), source })?;
    let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    write_file(&key_path, key.as_bytes(), 0o600)?;
    write_file(&cert_path, cert.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| CertError::Io { path: path.display().to_string(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
    file.write_all(bytes).map_err(io)
}

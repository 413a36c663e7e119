//! The first admin token of a cluster. A replica that leads a cluster whose state holds no
//! bootstrap token yet writes a new secret to `admin.token` in its data directory (mode 0600,
//! created new) and proposes its hash; the first such proposal applied wins. A replica whose
//! file holds a secret that lost (two leaders in a row before the first commit) removes it. The
//! secret is never logged: the log names the file.

use super::tokens::{digest, new_secret, AccessCommand, AccessError};
use crate::node::{Handle, NodeError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The bootstrap token's file in a replica's data directory.
pub const TOKEN_FILE: &str = "admin.token";

/// Between two looks at whether this replica should bootstrap.
const RETRY: Duration = Duration::from_millis(200);

/// Runs until the cluster's state holds a bootstrap token (and this replica's file, if any,
/// holds it or is removed).
pub async fn run(handle: Handle, data_dir: PathBuf) {
    let path = data_dir.join(TOKEN_FILE);
    loop {
        match step(&handle, &path).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(file = %path.display(), "bootstrap token: {e}"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One look; true when done.
async fn step(handle: &Handle, path: &Path) -> Result<bool, String> {
    let status = handle.status();
    if status.leader == 0 || handle.read_barrier().await.is_err() {
        return Ok(false);
    }
    let bootstrapped = handle.fsm().tokens.bootstrap().copied();
    let ours = match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.to_string()),
    };
    if let Some(hash) = bootstrapped {
        if ours.is_some_and(|s| digest(&s) != hash) {
            std::fs::remove_file(path).map_err(|e| e.to_string())?;
            tracing::info!(file = %path.display(), "removed a bootstrap token that another replica's replaced");
        }
        return Ok(true);
    }
    if status.leader != status.id {
        return Ok(false);
    }
    let secret = match ours {
        Some(s) => s,
        None => write_new(path).map_err(|e| e.to_string())?,
    };
    let command = AccessCommand::Bootstrap { hash: digest(&secret), at_ms: crate::service::now_ms() };
    match handle.propose_access(command).await {
        Ok(()) => {
            tracing::info!(file = %path.display(), "bootstrapped the cluster: the admin token is in the file (mode 0600)");
            Ok(true)
        }
        Err(NodeError::Access(AccessError::Bootstrapped)) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes a new secret to `path`, readable by its owner only, whole or not at all: it is
/// written to a file of its own first and then linked as `path` (which fails if `path`
/// exists), so that whoever reads `path` never sees it empty or cut short.
fn write_new(path: &Path) -> std::io::Result<String> {
    let secret = new_secret().map_err(std::io::Error::other)?;
    let partial = path.with_extension(format!("token.{}.partial", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    let linked = std::fs::hard_link(&partial, path);
    std::fs::remove_file(&partial)?;
    linked?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_token_file_appears_whole_private_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let secret = write_new(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{secret}\n"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = write_new(&path).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{secret}\n"), "the first stays");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from(TOKEN_FILE)], "no partial file is left behind");
    }
}

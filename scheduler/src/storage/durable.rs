//! What makes a sled flush durable. sled syncs its log file with `sync_file_range`, which on
//! Linux neither flushes the drive's write cache nor the file's metadata, and writes each large
//! value (a blob: a large entry, a snapshot) to a file of its own that it never syncs. So after
//! each flush of the store, a barrier: `fdatasync` of the log file, `fdatasync` of the blob
//! files that appeared since the last barrier, and `fsync` of the blob directory when one did.
//! An entry is acknowledged only after it.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The files of one sled directory to sync, and the blobs already synced.
#[derive(Debug)]
pub(super) struct Durable {
    log: File,
    blobs: PathBuf,
    synced: Mutex<BTreeSet<OsString>>,
}

impl Durable {
    /// The barrier for the sled database in `dir` (open already).
    pub fn open(dir: &Path) -> io::Result<Self> {
        Ok(Self { log: File::open(dir.join("db"))?, blobs: dir.join("blobs"), synced: Mutex::new(BTreeSet::new()) })
    }

    /// Makes everything sled has flushed durable.
    pub fn barrier(&self) -> io::Result<()> {
        self.log.sync_data()?;
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = BTreeSet::new();
        let mut appeared = false;
        for blob in std::fs::read_dir(&self.blobs)? {
            let blob = blob?;
            let name = blob.file_name();
            if !synced.contains(&name) {
                match File::open(blob.path()) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                appeared = true;
            }
            present.insert(name);
        }
        if appeared {
            File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value large enough to be a blob is synced once, with its directory; a blob that sled
    /// collected is forgotten.
    #[test]
    fn new_blobs_are_synced_once_and_collected_ones_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let durable = Durable::open(dir.path()).unwrap();
        durable.barrier().unwrap();
        assert!(durable.synced.lock().unwrap().is_empty(), "small state: no blob");
        db.insert(b"big", vec![7u8; 4 << 20]).unwrap();
        db.flush().unwrap();
        durable.barrier().unwrap();
        let blobs = durable.synced.lock().unwrap().clone();
        assert_eq!(blobs.len(), 1, "the 4 MiB value is a blob file, synced");
        std::fs::remove_file(dir.path().join("blobs").join(blobs.first().unwrap())).unwrap();
        durable.barrier().unwrap();
        assert!(durable.synced.lock().unwrap().is_empty(), "a removed blob is forgotten");
    }
}

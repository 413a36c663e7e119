//! The node's writer: stores the log and makes it durable (sled's batch, its flush and the
//! barrier) off the Raft thread, so that writing tens of MB does not stop the ticks, heartbeats
//! and votes of the replica (raft-rs's asynchronous ready). The Raft thread stages each Ready's
//! entries and hard state in the store's memory, readable at once, and hands the batch and the
//! Ready's number here; the writer stores the batches in order and answers
//! `Input::Persisted(n)` once everything up to Ready `n` is durable. Batches queued during a
//! flush share the next one.

use super::{Inbox, Input};
use crate::storage::{LogStore, Staged};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// What the writer is asked.
enum Job {
    /// Store Ready `number`'s batch; `sync` when it must be durable before it counts.
    Write { number: u64, staged: Staged, sync: bool },
    /// Answer once everything asked before is stored and durable.
    Drain(mpsc::SyncSender<()>),
}

/// The writer thread and the way to it; dropping it stores what was handed over first.
pub(super) struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer of replica `id` over `store`, answering into `inbox`.
    pub fn start<S: LogStore>(id: u64, store: S, inbox: Inbox) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name(format!("qm-writer-{id}")).spawn(move || {
            while let Ok(first) = rx.recv() {
                let jobs: Vec<Job> = std::iter::once(first).chain(rx.try_iter()).collect();
                if let Err(e) = serve(&store, jobs, &inbox) {
                    let _ = inbox.send(Input::WriteFailed(e.to_string()));
                    return;
                }
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    /// Ready `number` is staged as `staged`; `sync` when it holds what must be durable before
    /// it counts (entries, a vote, a term), not only a commit index.
    pub fn staged(&self, number: u64, staged: Staged, sync: bool) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Write { number, staged, sync });
        }
    }

    /// Waits until everything handed over is stored and durable.
    pub fn drain(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if let Some(tx) = &self.tx {
            if tx.send(Job::Drain(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

/// Stores the batches of `jobs` in order, flushes once if any must be durable, then says so.
fn serve<S: LogStore>(store: &S, jobs: Vec<Job>, inbox: &Inbox) -> Result<(), crate::storage::StorageError> {
    let (mut last, mut sync, mut drains) = (None, false, Vec::new());
    for job in jobs {
        match job {
            Job::Write { number, staged, sync: must } => {
                store.write(&staged)?;
                last = Some(number);
                sync |= must;
            }
            Job::Drain(done) => {
                drains.push(done);
                sync = true;
            }
        }
    }
    if sync {
        store.sync()?;
    }
    if let Some(number) = last {
        let _ = inbox.send(Input::Persisted(number));
    }
    for done in drains {
        let _ = done.send(());
    }
    Ok(())
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

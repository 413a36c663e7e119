//! The node's writer: stores the log and makes it durable (sled's batch, its flush and the
//! barrier) off the Raft thread, so that writing tens of MB does not stop the ticks, heartbeats
//! and votes of the replica (raft-rs's asynchronous ready). The Raft thread stages each Ready's
//! entries and hard state in the store's memory, readable at once, and hands the batch and the
//! Ready's number here; the writer stores the batches in order and answers
//! `Input::Persisted(n)` once everything up to Ready `n` is durable. Batches queued during a
//! flush share the next one. A stepped node (the deterministic simulation, `crate::dst`) has
//! no thread: its batches wait until the driver says the disk finished them.

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

/// Stores the jobs handed to it, in order.
type Serve = Box<dyn Fn(Vec<Job>) + Send>;

/// The writer: a thread and the way to it, or a stepped node's batches waiting for the driver.
/// Dropping a thread's writer stores what was handed over first; dropping a stepped one loses
/// its waiting batches (a crash, in the simulation).
pub(super) struct Writer(Kind);

enum Kind {
    /// A thread of its own.
    Thread { tx: Option<mpsc::Sender<Job>>, thread: Option<JoinHandle<()>> },
    /// No thread: the batches not yet stored, and how to store them.
    Stepped { jobs: Vec<Job>, serve: Serve },
}

impl Writer {
    /// Starts the writer of replica `id` over `store`, answering into `inbox`.
    pub fn start<S: LogStore>(id: u64, store: S, inbox: Inbox) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name(format!("qm-writer-{id}")).spawn(move || {
            while let Ok(first) = rx.recv() {
                let jobs: Vec<Job> = std::iter::once(first).chain(rx.try_iter()).collect();
                if !serve_or_fail(&store, jobs, &inbox) {
                    return;
                }
            }
        })?;
        Ok(Self(Kind::Thread { tx: Some(tx), thread: Some(thread) }))
    }

    /// A writer without a thread: batches wait until `complete` stores them.
    pub fn stepped<S: LogStore>(store: S, inbox: Inbox) -> Self {
        let serve: Serve = Box::new(move |jobs| {
            serve_or_fail(&store, jobs, &inbox);
        });
        Self(Kind::Stepped { jobs: Vec::new(), serve })
    }

    /// A stepped writer's batches not yet stored.
    pub fn pending(&self) -> usize {
        match &self.0 {
            Kind::Thread { .. } => 0,
            Kind::Stepped { jobs, .. } => jobs.len(),
        }
    }

    /// Stores a stepped writer's first `n` pending batches, made durable with one flush if any
    /// asks for it, as a thread would have (its disk finished them).
    pub fn complete(&mut self, n: usize) {
        if let Kind::Stepped { jobs, serve } = &mut self.0 {
            let done: Vec<Job> = jobs.drain(..n.min(jobs.len())).collect();
            if !done.is_empty() {
                serve(done);
            }
        }
    }

    /// Ready `number` is staged as `staged`; `sync` when it holds what must be durable before
    /// it counts (entries, a vote, a term), not only a commit index.
    pub fn staged(&mut self, number: u64, staged: Staged, sync: bool) {
        let job = Job::Write { number, staged, sync };
        match &mut self.0 {
            Kind::Thread { tx, .. } => {
                if let Some(tx) = tx {
                    let _ = tx.send(job);
                }
            }
            Kind::Stepped { jobs, .. } => jobs.push(job),
        }
    }

    /// Waits until everything handed over is stored and durable (a stepped writer stores it
    /// at once).
    pub fn drain(&mut self) {
        let (done, wait) = mpsc::sync_channel(1);
        match &mut self.0 {
            Kind::Thread { tx: Some(tx), .. } => {
                if tx.send(Job::Drain(done)).is_ok() {
                    let _ = wait.recv();
                }
            }
            Kind::Thread { tx: None, .. } => {}
            Kind::Stepped { jobs, serve } => {
                jobs.push(Job::Drain(done));
                serve(std::mem::take(jobs));
            }
        }
    }
}

/// `serve`, telling the node when the store failed; false then.
fn serve_or_fail<S: LogStore>(store: &S, jobs: Vec<Job>, inbox: &Inbox) -> bool {
    match serve(store, jobs, inbox) {
        Ok(()) => true,
        Err(e) => {
            let _ = inbox.send(Input::WriteFailed(e.to_string()));
            false
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
        if let Kind::Thread { tx, thread } = &mut self.0 {
            tx.take();
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

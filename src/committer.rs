//! The committer: one thread per writable [`crate::Database`] that runs every commit. Writers
//! queue their batch and await a oneshot; the thread takes whatever is queued (up to
//! [`GROUP_MAX`] batches) and commits it as one group with
//! [`hadal_engine::Database::apply_group`]. Under load a group forms from every client's
//! writes, with one thread wake-up for the whole group instead of a blocking-pool hand-off and
//! a contended engine lock per write; alone, a write costs one wake-up.
//!
//! Invariants:
//! 1. Every queued batch is answered exactly once, in the order of its group's results; a batch
//!    whose caller went away is still committed (as with the engine's own group commit,
//!    dropping a write's future does not undo it).
//! 2. A job holds its caller's share of the facade's `writes` lock until its commit returned,
//!    so `close` (which takes that lock exclusively) sees every queued write finished.
//! 3. [`Committer::stop`] returns only after the thread ended and dropped its engine handle, so
//!    the folder is released when `close` returns.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use hadal_engine::{Batch, Database as Engine, Lsn};
use parking_lot::Mutex;
use tokio::sync::{OwnedRwLockReadGuard, oneshot};

use crate::error::{Error, Result};

/// The most batches committed as one group (bounds one transaction's size and the latency of
/// the group's first writer).
pub const GROUP_MAX: usize = 1024;

/// One queued write.
struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<Lsn>>,
    /// The caller's share of the facade's `writes` lock (invariant 2).
    writing: OwnedRwLockReadGuard<()>,
}

/// The committer thread of one database and the queue into it.
#[derive(Debug)]
pub struct Committer {
    /// `None` once stopped.
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    /// Starts the thread, committing into `engine`.
    pub fn start(engine: Engine) -> Result<Committer> {
        let (jobs, queue) = channel();
        let thread = std::thread::Builder::new()
            .name("hadal-committer".into())
            .spawn(move || run(&engine, &queue))
            .map_err(|e| Error::Closed(format!("starting the committer thread: {e}")))?;
        Ok(Committer {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `batch` and returns its LSN once committed (locally).
    pub async fn commit(&self, batch: Batch, writing: OwnedRwLockReadGuard<()>) -> Result<Lsn> {
        let (done, answer) = oneshot::channel();
        let job = Job {
            batch,
            done,
            writing,
        };
        let queued = match &*self.jobs.lock() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !queued {
            return Err(Error::Closed("the database is closing".into()));
        }
        answer.await.map_err(|_| {
            Error::Closed("the committer thread stopped before answering this write".into())
        })?
    }

    /// Stops the thread once the queue is drained and waits for it (invariant 3).
    pub async fn stop(&self) {
        drop(self.jobs.lock().take());
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Moves every job queued now into `group`, up to [`GROUP_MAX`].
fn drain(queue: &Receiver<Job>, group: &mut Vec<Job>) {
    while group.len() < GROUP_MAX {
        match queue.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

fn run(engine: &Engine, queue: &Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        drain(queue, &mut group);
        let mut batches = Vec::with_capacity(group.len());
        let mut waiting = Vec::with_capacity(group.len());
        for job in group {
            batches.push(job.batch);
            waiting.push((job.done, job.writing));
        }
        let results = engine.apply_group(batches);
        // Invariant 1: one answer per job; invariant 2: its lock share goes after it.
        for ((done, writing), result) in waiting.into_iter().zip(results) {
            let _ = done.send(result.map_err(Error::from));
            drop(writing);
        }
    }
}

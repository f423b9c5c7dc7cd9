//! The thread that makes the log durable, so that the Raft thread never
//! waits on an fsync (raft-rs's asynchronous ready).
//!
//! A write (one record and one `fdatasync`, `wal.rs`) takes from a fraction
//! of a millisecond to several on a busy disk; on the Raft thread it was
//! most of every turn, during which followers' acknowledgements and new
//! proposals waited. Here the Raft thread hands over each ready's log change
//! and goes on: the leader's appends are already on their way to the
//! followers, whose acknowledgements can commit an entry before the
//! leader's own write is done. Whatever is queued when a write ends goes
//! into the next one together, so the write rate follows the load.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::handle::Input;
use super::log_write::{LogWrite, LogWriter};
use super::storage::StorageError;
use crate::metrics::ServerMetrics;

/// One ready's log change and the ready's number, which Raft is told once
/// it is durable.
struct Job {
    number: u64,
    write: LogWrite,
}

/// How far the writes have got, shared with the Raft thread.
#[derive(Default)]
struct Progress {
    durable: Mutex<Durable>,
    /// Signalled whenever `durable` changes, for a Raft thread that must
    /// wait for every write (before it installs or takes a snapshot).
    changed: Condvar,
}

#[derive(Default)]
struct Durable {
    /// The number of the latest ready whose change is durable.
    number: u64,
    /// Why a write failed; nothing after it is written.
    failed: Option<StorageError>,
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, Durable> {
        self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) struct Persister {
    /// Closed (taken) on shutdown, which ends the thread once it has
    /// written what was queued.
    jobs: Option<Sender<Job>>,
    progress: Arc<Progress>,
    thread: Option<JoinHandle<()>>,
    writer: LogWriter,
    /// The number of the latest ready handed over.
    submitted: u64,
}

impl Persister {
    /// Starts the thread; it wakes the Raft thread through `wake` after
    /// each write.
    pub(super) fn start(
        writer: LogWriter,
        wake: Sender<Input>,
        metrics: Arc<ServerMetrics>,
    ) -> Result<Self, StorageError> {
        let (jobs, queue) = mpsc::channel();
        let progress = Arc::new(Progress::default());
        let shared = Arc::clone(&progress);
        let thread_writer = writer.clone();
        let thread = std::thread::Builder::new()
            .name("raft-persist".into())
            .spawn(move || write_all(&thread_writer, &queue, &shared, &wake, &metrics))
            .map_err(|e| writer.error(format!("cannot start the persist thread: {e}")))?;
        Ok(Persister { jobs: Some(jobs), progress, thread: Some(thread), writer, submitted: 0 })
    }

    /// Hands a ready's change over to be written.
    pub(super) fn submit(&mut self, number: u64, write: LogWrite) -> Result<(), StorageError> {
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(Job { number, write }).is_ok());
        if !sent {
            return Err(self.stopped());
        }
        self.submitted = number;
        Ok(())
    }

    /// The number of the latest ready handed over.
    pub(super) fn submitted(&self) -> u64 {
        self.submitted
    }

    /// The number of the latest ready whose change is durable, or why the
    /// writes stopped.
    pub(super) fn durable(&self) -> Result<u64, StorageError> {
        let durable = self.progress.lock();
        match &durable.failed {
            Some(error) => Err(error.clone()),
            None => Ok(durable.number),
        }
    }

    /// Waits until everything handed over is durable.
    pub(super) fn wait_for_all(&self) -> Result<u64, StorageError> {
        let mut durable = self.progress.lock();
        loop {
            if let Some(error) = &durable.failed {
                return Err(error.clone());
            }
            if durable.number >= self.submitted {
                return Ok(durable.number);
            }
            if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                return Err(self.stopped());
            }
            durable = self.progress.changed.wait(durable).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stopped(&self) -> StorageError {
        self.writer.error("the persist thread stopped")
    }

    /// Writes what is queued, then ends the thread.
    pub(super) fn stop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the persist thread panicked");
        }
    }
}

fn write_all(
    writer: &LogWriter,
    queue: &Receiver<Job>,
    progress: &Progress,
    wake: &Sender<Input>,
    metrics: &ServerMetrics,
) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        jobs.extend(queue.try_iter());
        let started = Instant::now();
        let written = writer.write(jobs.iter().map(|job| &job.write));
        ServerMetrics::observe(&metrics.raft_persist_seconds, started.elapsed());
        let failed = written.is_err();
        {
            let mut durable = progress.lock();
            match written {
                Ok(()) => durable.number = jobs.last().map_or(durable.number, |job| job.number),
                Err(error) => durable.failed = Some(error),
            }
        }
        progress.changed.notify_all();
        let _ = wake.send(Input::Persisted);
        if failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{Entry, HardState};

    use super::*;
    use crate::raft::RaftStorage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: format!("entry {index}").into_bytes().into(), ..Entry::default() }
    }

    /// Storage in `dir` with a persister writing it, and where it wakes the Raft thread.
    fn started(dir: &std::path::Path) -> (RaftStorage, Persister, Receiver<Input>) {
        let (wake, woken) = mpsc::channel();
        let storage = RaftStorage::open(dir).expect("open");
        let persister = Persister::start(storage.log_writer(), wake, Arc::default()).expect("start");
        (storage, persister, woken)
    }

    #[test]
    fn changes_handed_over_are_durable_in_order_after_waiting() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (mut storage, mut persister, woken) = started(dir.path());
            let hs = HardState { term: 2, vote: 1, commit: 0, ..HardState::default() };
            let first = storage.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], Some(&hs));
            persister.submit(1, first).expect("submit");
            // A new leader's log replaces entries 2 and 3.
            let second = storage.append(&[entry(2, 2)], None);
            persister.submit(2, second).expect("submit");
            assert_eq!(persister.wait_for_all().expect("written"), 2);
            // The wake follows the condvar's signal: waited for, not peeked at.
            let wake =
                woken.recv_timeout(std::time::Duration::from_secs(5)).expect("the Raft thread is woken");
            assert!(matches!(wake, Input::Persisted));
            persister.stop();
        }
        let reopened = RaftStorage::open(dir.path()).expect("reopen");
        use raft::Storage as _;
        assert_eq!(reopened.last_index().expect("last"), 2);
        assert_eq!(reopened.term(2).expect("term"), 2, "the replaced entry is gone from disk");
        assert_eq!(reopened.initial_state().expect("state").hard_state.vote, 1);
    }

    #[test]
    fn a_stopped_persister_refuses_changes_instead_of_dropping_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut storage, mut persister, _woken) = started(dir.path());
        persister.stop();
        let write = storage.append(&[entry(1, 1)], None);
        let error = persister.submit(1, write).expect_err("nothing writes any more");
        assert!(error.to_string().contains("persist thread stopped"), "{error}");
        assert_eq!(persister.submitted(), 0, "what was refused is not counted as handed over");
    }
}

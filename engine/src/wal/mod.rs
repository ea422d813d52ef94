//! The write-ahead log: raft entries and hard state, durable before they are
//! acknowledged.
//!
//! - Segment files `<dir>/{seq:016x}-{first_index:016x}.wal`, fixed size,
//!   zero-filled (or recycled) ahead of use, off the write path.
//! - Written with O_DIRECT through glommio's DMA files (io_uring).
//! - **Group commit**: appenders enqueue and return; one writer task takes
//!   everything queued, writes it as one aligned batch, issues one
//!   `fdatasync`, then completes every appender in the batch.
//! - Recovery verifies every record; a torn tail is cut, anything else that
//!   does not verify is reported as corruption naming the file and offset.
//! - After a failed write or `fdatasync` the log refuses further writes until
//!   reopened.
//!
//! The API mirrors openraft's `RaftLogStorage`: [`Wal::append_with`] takes a
//! completion called only once the entries are durable; vote, committed log
//! id and purge point are opaque bytes to this module. Format and crash
//! argument: `docs/wal.md`.
//!
//! Correctness rules the caller relies on:
//! - Appended entries must carry consecutive indexes continuing the log
//!   (truncate first to overwrite).
//! - Operations are durable in the order they were issued: when an
//!   operation's completion fires, every earlier operation is durable too.
//! - Reads ([`Wal::entry`], [`Wal::entries`]) see every issued operation at
//!   once, durable or not, as openraft expects.

mod format;
mod io;
mod recovery;
mod sim;
mod state;
mod writer;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;

pub use self::format::BLOCK;
pub use self::io::{decline_poll_ring, DmaIo, DmaIoFile, WalFile, WalIo, POLL_PROBE_NAME};
pub use self::sim::{SimFile, SimIo, SimStats};

use self::state::LogState;
use self::writer::{Item, Rec};

/// Largest vote, committed or purge blob: they are re-written at the start of
/// every segment, so their size is bounded to keep that header small.
pub const MAX_META_BYTES: usize = 4096;
/// Smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u64 = 128 * 1024;

/// Errors from the WAL. Cloneable: one failed batch fails many appenders.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("WAL I/O error while {context}: {source}")]
    Io { context: String, source: Arc<std::io::Error> },
    #[error(
        "WAL is corrupt: {file} at offset {offset}: {reason} (refusing to open; nothing was truncated or overwritten)",
        file = file.display()
    )]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    #[error("WAL refuses writes after an earlier I/O failure ({0}); reopen it to recover")]
    Poisoned(String),
    #[error("invalid WAL operation: {0}")]
    Invalid(String),
    #[error("WAL is closed")]
    Closed,
}

impl WalError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> WalError {
        WalError::Io { context: context.into(), source: Arc::new(source) }
    }
}

/// Tuning of a WAL.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size of each segment file; a multiple of [`BLOCK`], at least
    /// [`MIN_SEGMENT_SIZE`]. An entry may be at most half of it.
    pub segment_size: u64,
    /// Upper bound of one batch (one write, one `fdatasync`).
    pub max_batch_bytes: usize,
    /// An `fdatasync` slower than this is logged as `slow fdatasync`.
    pub slow_sync: Duration,
    /// Fault injection: extra time spent before every batch's `fdatasync`
    /// while `sync_delay_armed` is set, to test a member whose disk turns
    /// slow (zero / unset in production).
    pub sync_delay: Duration,
    pub sync_delay_armed: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for WalOptions {
    fn default() -> Self {
        // 64 MiB: etcd's segment size. 8 MiB batches: far above what 1,000
        // concurrent writers queue during one sync, small enough to bound memory.
        WalOptions {
            segment_size: 64 << 20,
            max_batch_bytes: 8 << 20,
            slow_sync: Duration::from_secs(1),
            sync_delay: Duration::ZERO,
            sync_delay_armed: None,
        }
    }
}

/// Counters, for benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batches written (each one durable write: `O_DSYNC` on the real disk,
    /// write + `fdatasync` through other backends).
    pub batches: u64,
    /// Every point where the WAL waits for durability (a batch, a segment
    /// header at rollover).
    pub syncs: u64,
    /// Entries written.
    pub entries: u64,
    /// Bytes written in batches, padding included.
    pub bytes: u64,
    /// Segments started after open.
    pub rollovers: u64,
    /// Time spent writing batches until durable, in nanoseconds.
    pub sync_nanos: u64,
}

type Done = Box<dyn FnOnce(Result<(), WalError>)>;

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// The committed id of [`Wal::set_committed`], not yet queued: it rides
    /// at the end of the next batch instead of costing a write of its own.
    lazy_committed: Option<Bytes>,
    waker: Option<Waker>,
    /// Set once a write failed; every later operation fails with it.
    failed: Option<String>,
    closing: bool,
}

struct Inner<I: WalIo> {
    io: I,
    dir: PathBuf,
    opts: WalOptions,
    state: RefCell<LogState>,
    queue: RefCell<Queue>,
    stats: Cell<WalStats>,
    /// Fired by the writer task when it exits; `close()` waits for it.
    writer_done: RefCell<Option<oneshot::Sender<()>>>,
    writer_exited: RefCell<Option<oneshot::Receiver<()>>>,
}

impl<I: WalIo> Drop for Inner<I> {
    fn drop(&mut self) {
        // The last handle is gone: let the parked writer notice and exit.
        if let Some(w) = self.queue.get_mut().waker.take() {
            w.wake();
        }
    }
}

/// A write-ahead log directory, open. Cloning gives another handle to the
/// same log. Lives on one glommio executor.
pub struct Wal<I: WalIo = DmaIo> {
    inner: Rc<Inner<I>>,
}

impl<I: WalIo> Clone for Wal<I> {
    fn clone(&self) -> Self {
        Wal { inner: self.inner.clone() }
    }
}

impl Wal<DmaIo> {
    /// Opens (or creates) the WAL in `dir` on the real disk.
    pub async fn open_dir(dir: impl AsRef<Path>, opts: WalOptions) -> Result<Wal<DmaIo>, WalError> {
        Wal::open(DmaIo, dir, opts).await
    }
}

impl<I: WalIo> Wal<I> {
    /// Opens (or creates) the WAL in `dir`: verifies and replays every
    /// segment, then starts the writer task on the current executor.
    pub async fn open(io: I, dir: impl AsRef<Path>, opts: WalOptions) -> Result<Wal<I>, WalError> {
        if opts.segment_size < MIN_SEGMENT_SIZE || !opts.segment_size.is_multiple_of(BLOCK) {
            return Err(WalError::Invalid(format!(
                "segment size {} must be a multiple of {BLOCK} and at least {MIN_SEGMENT_SIZE}",
                opts.segment_size
            )));
        }
        let dir = dir.as_ref().to_path_buf();
        let rec = recovery::recover(&io, &dir).await?;
        let state = rec.state.clone();
        let (done_tx, done_rx) = oneshot::channel();
        let inner = Rc::new(Inner {
            io,
            dir,
            opts,
            state: RefCell::new(rec.state),
            queue: RefCell::new(Queue::default()),
            stats: Cell::new(WalStats::default()),
            writer_done: RefCell::new(Some(done_tx)),
            writer_exited: RefCell::new(Some(done_rx)),
        });
        let writer = writer::Writer::start(inner.clone(), &state, rec.segments, rec.tail).await?;
        glommio::spawn_local(writer.run()).detach();
        Ok(Wal { inner })
    }

    /// Appends entries `(index, data)`, which must continue the log with
    /// consecutive indexes. They are readable at once; `done` runs once they
    /// are durable (or with the error that prevented it). Returns an error
    /// without calling `done` if the entries are refused up front.
    pub fn append_with(
        &self,
        entries: impl IntoIterator<Item = (u64, Bytes)>,
        done: impl FnOnce(Result<(), WalError>) + 'static,
    ) -> Result<(), WalError> {
        let entries: Vec<(u64, Bytes)> = entries.into_iter().collect();
        let max = (self.inner.opts.segment_size / 2) as usize;
        {
            let st = self.inner.state.borrow();
            if let Some((first, _)) = entries.first() {
                st.check_append(*first).map_err(WalError::Invalid)?;
            }
            for (i, (idx, data)) in entries.iter().enumerate() {
                if i > 0 && *idx != entries[i - 1].0 + 1 {
                    return Err(WalError::Invalid(format!("entry indexes are not consecutive at {idx}")));
                }
                if data.len() > max {
                    return Err(WalError::Invalid(format!(
                        "entry {idx} of {} bytes exceeds the limit of {max} (half a WAL segment)",
                        data.len()
                    )));
                }
            }
        }
        self.check_open()?;
        {
            let mut st = self.inner.state.borrow_mut();
            for (idx, data) in &entries {
                st.append(*idx, data.clone()).map_err(WalError::Invalid)?;
            }
        }
        let recs: Vec<Rec> = entries.into_iter().map(|(i, d)| Rec::Entry(i, d)).collect();
        self.enqueue(recs, Box::new(done));
        Ok(())
    }

    /// [`Self::append_with`], resolved when the entries are durable.
    pub fn append(&self, entries: impl IntoIterator<Item = (u64, Bytes)>) -> impl Future<Output = Result<(), WalError>> {
        let (tx, rx) = oneshot::channel();
        let res = self.append_with(entries, move |r| {
            let _ = tx.send(r);
        });
        async move {
            res?;
            rx.await.unwrap_or(Err(WalError::Closed))
        }
    }

    /// Persists the vote (raft hard state); resolved once durable.
    pub async fn save_vote(&self, vote: Bytes) -> Result<(), WalError> {
        check_meta(&vote)?;
        self.check_open()?;
        self.inner.state.borrow_mut().vote = Some(vote.clone());
        self.submit(vec![Rec::Vote(vote)]).await
    }

    /// Persists the committed log id; resolved once durable.
    pub async fn save_committed(&self, committed: Bytes) -> Result<(), WalError> {
        check_meta(&committed)?;
        self.check_open()?;
        self.inner.state.borrow_mut().committed = Some(committed.clone());
        // Newer than any id `set_committed` kept aside: that one must not be
        // written after this.
        self.inner.queue.borrow_mut().lazy_committed = None;
        self.submit(vec![Rec::Committed(committed)]).await
    }

    /// Records the committed log id without waiting and without a write of
    /// its own: it is written at the end of the next batch that something
    /// else causes (an append, a vote, `sync`, `close`), after every record
    /// queued before it. openraft calls this after every commit and awaits it
    /// before applying, so waiting, or a write per call, would add a second
    /// durable write to every commit (with one client, the next entry's write
    /// queued behind it). A committed id that is lost in a crash is only
    /// older than the truth, and openraft re-learns the rest.
    pub fn set_committed(&self, committed: Bytes) -> Result<(), WalError> {
        check_meta(&committed)?;
        self.check_open()?;
        self.inner.state.borrow_mut().committed = Some(committed.clone());
        self.inner.queue.borrow_mut().lazy_committed = Some(committed);
        Ok(())
    }

    /// Removes every entry with index ≥ `from`; resolved once durable.
    pub async fn truncate(&self, from: u64) -> Result<(), WalError> {
        self.check_open()?;
        self.inner.state.borrow_mut().truncate(from).map_err(WalError::Invalid)?;
        self.submit(vec![Rec::Truncate(from)]).await
    }

    /// Removes every entry with index ≤ `upto`, remembering `log_id` as the
    /// last purged log id; segments holding only purged entries are
    /// recycled or deleted. Resolved once the purge record is durable.
    pub async fn purge(&self, upto: u64, log_id: Bytes) -> Result<(), WalError> {
        check_meta(&log_id)?;
        self.check_open()?;
        self.inner.state.borrow_mut().purge(upto, log_id.clone()).map_err(WalError::Invalid)?;
        self.submit(vec![Rec::Purge(upto, log_id)]).await
    }

    /// Resolved once every operation issued before it is durable.
    pub async fn sync(&self) -> Result<(), WalError> {
        self.check_open()?;
        self.submit(Vec::new()).await
    }

    /// Waits for every queued operation, then stops the writer task.
    pub async fn close(&self) -> Result<(), WalError> {
        let barrier = self.sync().await;
        {
            let mut q = self.inner.queue.borrow_mut();
            q.closing = true;
            if let Some(w) = q.waker.take() {
                w.wake();
            }
        }
        let exited = self.inner.writer_exited.borrow_mut().take();
        if let Some(rx) = exited {
            let _ = rx.await;
        }
        match barrier {
            Err(WalError::Closed) => Ok(()),
            other => other,
        }
    }

    pub fn vote(&self) -> Option<Bytes> {
        self.inner.state.borrow().vote.clone()
    }

    pub fn committed(&self) -> Option<Bytes> {
        self.inner.state.borrow().committed.clone()
    }

    /// The last purged index and its log id.
    pub fn purged(&self) -> Option<(u64, Bytes)> {
        self.inner.state.borrow().purged.clone()
    }

    pub fn first_index(&self) -> Option<u64> {
        self.inner.state.borrow().first_index()
    }

    pub fn last_index(&self) -> Option<u64> {
        self.inner.state.borrow().last_index()
    }

    pub fn entry(&self, index: u64) -> Option<Bytes> {
        self.inner.state.borrow().get(index).cloned()
    }

    /// Entries with indexes in `[from, to)` that exist.
    pub fn entries(&self, from: u64, to: u64) -> Vec<(u64, Bytes)> {
        self.inner.state.borrow().range(from, to).map(|(i, e)| (i, e.clone())).collect()
    }

    pub fn stats(&self) -> WalStats {
        self.inner.stats.get()
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn check_open(&self) -> Result<(), WalError> {
        let q = self.inner.queue.borrow();
        if let Some(e) = &q.failed {
            return Err(WalError::Poisoned(e.clone()));
        }
        if q.closing {
            return Err(WalError::Closed);
        }
        Ok(())
    }

    fn enqueue(&self, mut recs: Vec<Rec>, done: Done) {
        if recs.is_empty() {
            recs.push(Rec::Barrier);
        }
        let last = recs.len() - 1;
        let mut q = self.inner.queue.borrow_mut();
        let mut done = Some(done);
        for (i, rec) in recs.into_iter().enumerate() {
            q.items.push_back(Item { rec, done: if i == last { done.take() } else { None } });
        }
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }

    async fn submit(&self, recs: Vec<Rec>) -> Result<(), WalError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            recs,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.unwrap_or(Err(WalError::Closed))
    }
}

fn check_meta(b: &Bytes) -> Result<(), WalError> {
    if b.len() > MAX_META_BYTES {
        return Err(WalError::Invalid(format!("{} bytes of hard state exceed {MAX_META_BYTES}", b.len())));
    }
    Ok(())
}

/// Decodes a segment file's bytes the way recovery does, without touching any
/// file; returns the number of batches that verify. For fuzzing the decoder.
pub fn verify_segment_bytes(buf: &[u8]) -> Result<u64, WalError> {
    recovery::verify_bytes(buf)
}

/// Decodes `body` as the contents of a segment (after its header block)
/// whose salt is `salt`; for fuzzing the batch and record decoders.
pub fn verify_segment_body(salt: u64, body: &[u8]) -> Result<u64, WalError> {
    let size = format::align_up(body.len() as u64).max(BLOCK) + BLOCK;
    let mut buf = vec![0u8; size as usize];
    format::SegmentHeader { seq: 0, first_index: 0, start_batch: 0, salt, segment_size: size }.encode(&mut buf);
    buf[BLOCK as usize..BLOCK as usize + body.len()].copy_from_slice(body);
    recovery::verify_bytes(&buf)
}

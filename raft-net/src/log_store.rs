//! openraft's log storage on ironcd's WAL ([`ironcd_engine::wal::Wal`]).
//!
//! | openraft                         | WAL                                             |
//! |----------------------------------|-------------------------------------------------|
//! | `append(entries, IOFlushed)`     | `append_with(entries, done)`: readable at once, `done` → `io_completed` after the group-commit `fdatasync` |
//! | `save_vote`                      | `save_vote`, awaited until durable              |
//! | `save_committed`                 | `set_committed`, **with the next batch, not awaited** (see below) |
//! | `truncate_after(last)`           | `truncate(last.index + 1)` (or `truncate(0)`)   |
//! | `purge(log_id)`                  | `purge(log_id.index, encoded log id)`           |
//! | `get_log_state`                  | `purged()` + log id of entry `last_index()` (or the purged one) |
//! | `try_get_log_entries(range)`     | `entries(from, to)`, decoded                    |
//! | `read_vote` / `read_committed`   | `vote()` / `committed()`, decoded               |
//!
//! The committed log id is optional for openraft and only ever a lower bound
//! of what is really committed, so `save_committed` hands it to the WAL,
//! which writes it at the end of the next batch (behind every operation
//! queued before it), and returns without waiting: openraft awaits
//! `save_committed` on the raft core before applying, and waiting there (or
//! a write of its own) would add a second durable write to every commit.
//! After a crash the recovered committed id may be older than the last one
//! saved; it is still committed, and openraft re-applies the rest once it
//! learns the cluster's commit again. Entries and the vote are always
//! durable before openraft is told so.
//!
//! Encodings: [`crate::codec`].

use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;

use bytes::Bytes;
use ironcd_engine::wal::{DmaIo, Wal, WalError, WalIo, WalOptions};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec::{self, CodecError};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// openraft's `RaftLogStorage` and `RaftLogReader` over a [`Wal`]. Cloning
/// gives another handle to the same log (openraft's log readers are clones).
pub struct LogStore<I: WalIo = DmaIo> {
    wal: Wal<I>,
    on_append: Option<AppendHook>,
}

/// Called by [`RaftLogStorage::append`] with the entries right after they
/// were queued for the WAL (readable, not yet durable); see
/// [`LogStore::with_append_hook`]. What it returns, if anything, is called
/// once those entries are durable, right before openraft is told so.
pub type AppendHook = std::rc::Rc<dyn Fn(&[Entry]) -> Option<OnDurable>>;

/// See [`AppendHook`].
pub type OnDurable = Box<dyn FnOnce()>;

impl<I: WalIo> Clone for LogStore<I> {
    fn clone(&self) -> Self {
        LogStore { wal: self.wal.clone(), on_append: self.on_append.clone() }
    }
}

/// Upper bound of the bytes [`RaftLogReader::limited_get_log_entries`]
/// returns in one call (at least one entry is always returned).
pub const MAX_READ_BYTES: usize = 8 << 20;

fn wal_err(e: WalError) -> io::Error {
    io::Error::other(e)
}

fn log_id_mismatch(what: &str, wal_index: u64, decoded: &LogId) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("WAL holds {what} at index {wal_index} whose encoded log id is {decoded}"),
    )
}

impl LogStore<DmaIo> {
    /// Opens (or creates) the WAL in `dir` on the real disk; see [`LogStore::open`].
    pub async fn open_dir(dir: impl AsRef<Path>, opts: WalOptions) -> io::Result<LogStore<DmaIo>> {
        LogStore::open(DmaIo, dir, opts).await
    }
}

impl<I: WalIo> LogStore<I> {
    /// Opens (or creates) the WAL and checks that its hard state and last
    /// entry decode, so a bad record is reported at start-up.
    pub async fn open(io: I, dir: impl AsRef<Path>, opts: WalOptions) -> io::Result<LogStore<I>> {
        let wal = Wal::open(io, dir, opts).await.map_err(wal_err)?;
        let mut store = LogStore::new(wal);
        store.validate()?;
        Ok(store)
    }

    /// Wraps an open WAL.
    pub fn new(wal: Wal<I>) -> LogStore<I> {
        LogStore { wal, on_append: None }
    }

    /// Shows every appended batch to `hook` once it is queued for the WAL
    /// (the server applies a lone member's entries ahead while their write
    /// is in flight). The hook must not block; it sees entries that may
    /// still be truncated, so it may only prepare work whose result is
    /// checked against the committed entries later. The closure it may
    /// return runs when the batch is durable (not if the write fails),
    /// before openraft's callback: a member that knows the entries are then
    /// committed (the only voter) can publish them at once.
    pub fn with_append_hook(mut self, hook: AppendHook) -> LogStore<I> {
        self.on_append = Some(hook);
        self
    }

    /// The WAL underneath.
    pub fn wal(&self) -> &Wal<I> {
        &self.wal
    }

    /// Waits until every operation issued so far is durable, then stops the
    /// WAL's writer task.
    pub async fn close(&self) -> io::Result<()> {
        self.wal.close().await.map_err(wal_err)
    }

    fn validate(&mut self) -> io::Result<()> {
        self.vote()?;
        self.committed()?;
        self.log_state()?;
        Ok(())
    }

    fn vote(&self) -> Result<Option<Vote>, CodecError> {
        self.wal.vote().map(|b| codec::decode_vote(&b)).transpose()
    }

    fn committed(&self) -> Result<Option<LogId>, CodecError> {
        Ok(self.wal.committed().map(|b| codec::decode_committed(&b)).transpose()?.flatten())
    }

    fn log_state(&self) -> io::Result<LogState<TypeConfig>> {
        let purged = match self.wal.purged() {
            None => None,
            Some((index, b)) => {
                let id = codec::decode_log_id(&b)?;
                if id.index != index {
                    return Err(log_id_mismatch("a purge point", index, &id));
                }
                Some(id)
            }
        };
        let last = match self.wal.last_index() {
            None => purged,
            Some(index) => {
                let data = self.wal.entry(index).ok_or_else(|| {
                    io::Error::other(format!("WAL reports last index {index} but holds no entry there"))
                })?;
                let id = codec::decode_entry_log_id(&data)?;
                if id.index != index {
                    return Err(log_id_mismatch("an entry", index, &id));
                }
                Some(id)
            }
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    fn decode(index: u64, data: &Bytes) -> io::Result<Entry> {
        let e = codec::decode_entry(data)?;
        if e.log_id.index != index {
            return Err(log_id_mismatch("an entry", index, &e.log_id));
        }
        Ok(e)
    }
}

/// `[from, to)` of a range of log indexes.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl<I: WalIo> RaftLogReader<TypeConfig> for LogStore<I> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (from, to) = bounds(&range);
        // One borrow of the WAL's state: the read is atomic, as required.
        self.wal.entries(from, to).iter().map(|(i, d)| Self::decode(*i, d)).collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.vote()?)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for i in start..end {
            let Some(d) = self.wal.entry(i) else { break };
            if !out.is_empty() && bytes + d.len() > MAX_READ_BYTES {
                break;
            }
            bytes += d.len();
            out.push(Self::decode(i, &d)?);
        }
        Ok(out)
    }
}

impl<I: WalIo> RaftLogStorage<TypeConfig> for LogStore<I> {
    type LogReader = LogStore<I>;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        self.log_state()
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.wal.save_vote(codec::encode_vote(vote)).await.map_err(wal_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Queued in order with everything else, durable with the next batch;
        // not awaited (see the module docs).
        self.wal.set_committed(codec::encode_committed(committed.as_ref())).map_err(wal_err)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.committed()?)
    }

    async fn append<It>(&mut self, entries: It, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        It: IntoIterator<Item = Entry> + OptionalSend,
        It::IntoIter: OptionalSend,
    {
        let Some(hook) = &self.on_append else {
            let recs = entries.into_iter().map(|e| (e.log_id.index, codec::encode_entry(&e)));
            return self.wal.append_with(recs, move |r| callback.io_completed(r.map_err(wal_err))).map_err(wal_err);
        };
        let entries: Vec<Entry> = entries.into_iter().collect();
        let recs = entries.iter().map(|e| (e.log_id.index, codec::encode_entry(e)));
        // Filled by the hook, which runs after the write is queued.
        let on_durable: std::rc::Rc<std::cell::Cell<Option<OnDurable>>> = Default::default();
        let slot = on_durable.clone();
        self.wal
            .append_with(recs, move |r| {
                if let (Ok(()), Some(f)) = (&r, slot.take()) {
                    f();
                }
                callback.io_completed(r.map_err(wal_err))
            })
            .map_err(wal_err)?;
        let ahead = hook(&entries);
        let yield_to_writer = ahead.is_some();
        on_durable.set(ahead);
        if yield_to_writer {
            // Applying ahead means a lone voter, whose write is the whole of
            // a put's wait: let the WAL writer (woken above) queue and submit
            // the write before the rest of openraft's turn runs. A leader
            // with followers does not yield: its sends to them come first.
            glommio::executor().yield_now().await;
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.wal.truncate(from).await.map_err(wal_err)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.wal.purge(log_id.index, codec::encode_log_id(&log_id)).await.map_err(wal_err)
    }
}

//! The writer task: group commit, segment rollover, spare preparation and
//! purging. It is the only code that writes segment files after open.
//!
//! Invariant: at most one batch is ever unsynced — the next batch is written
//! only after the previous one was durable (its `O_DSYNC` write completed, or its `fdatasync` returned). Recovery's torn-tail
//! rule depends on it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;

use super::format::{align_up, encode_record, record_len, BatchHeader, RecordType, SegmentHeader, BATCH_HEADER_LEN, BLOCK};
use super::io::{WalFile, WalIo};
use super::recovery::{segment_path, SegmentInfo, Tail};
use super::state::LogState;
use super::{Done, Inner, WalError};

/// One queued operation.
pub(crate) enum Rec {
    Entry(u64, Bytes),
    Vote(Bytes),
    Committed(Bytes),
    Truncate(u64),
    Purge(u64, Bytes),
    /// Writes nothing; completes once everything before it is durable.
    Barrier,
}

impl Rec {
    fn encoded_len(&self) -> usize {
        match self {
            Rec::Entry(_, d) => record_len(8 + d.len()),
            Rec::Vote(b) | Rec::Committed(b) => record_len(b.len()),
            Rec::Truncate(_) => record_len(8),
            Rec::Purge(_, b) => record_len(8 + b.len()),
            Rec::Barrier => 0,
        }
    }

    /// Encodes the record at the start of `out`; returns its length.
    fn encode(&self, salt: u64, out: &mut [u8]) -> usize {
        match self {
            Rec::Entry(i, d) => encode_record(salt, RecordType::Entry, &[&i.to_le_bytes(), d], out),
            Rec::Vote(b) => encode_record(salt, RecordType::Vote, &[b], out),
            Rec::Committed(b) => encode_record(salt, RecordType::Committed, &[b], out),
            Rec::Truncate(i) => encode_record(salt, RecordType::Truncate, &[&i.to_le_bytes()], out),
            Rec::Purge(i, b) => encode_record(salt, RecordType::Purge, &[&i.to_le_bytes(), b], out),
            Rec::Barrier => 0,
        }
    }
}

pub(crate) struct Item {
    pub rec: Rec,
    pub done: Option<Done>,
}

/// The log as written so far (the writer's view, behind the live state).
#[derive(Default)]
struct Written {
    next: Option<u64>,
    vote: Option<Bytes>,
    committed: Option<Bytes>,
    purged: Option<(u64, Bytes)>,
}

impl Written {
    fn note(&mut self, rec: &Rec) {
        match rec {
            Rec::Entry(i, _) => self.next = Some(i + 1),
            Rec::Vote(b) => self.vote = Some(b.clone()),
            Rec::Committed(b) => self.committed = Some(b.clone()),
            Rec::Truncate(from) => self.next = Some(self.next.map_or(*from, |n| n.min(*from))),
            Rec::Purge(i, b) => {
                if self.purged.as_ref().is_none_or(|(p, _)| p < i) {
                    self.purged = Some((*i, b.clone()));
                    self.next = Some(self.next.map_or(i + 1, |n| n.max(i + 1)));
                }
            }
            Rec::Barrier => {}
        }
    }

    /// Records that restate the hard state at the start of a new segment,
    /// so that older segments can be deleted.
    fn restatement(&self) -> Vec<Rec> {
        let mut out = Vec::new();
        if let Some(v) = &self.vote {
            out.push(Rec::Vote(v.clone()));
        }
        if let Some(c) = &self.committed {
            out.push(Rec::Committed(c.clone()));
        }
        if let Some((i, b)) = &self.purged {
            out.push(Rec::Purge(*i, b.clone()));
        }
        out
    }
}

/// A spare segment file: its temporary path and the open file.
type Spare<I> = (PathBuf, <I as WalIo>::File);

pub(crate) struct Writer<I: WalIo> {
    /// Weak, so a log dropped without `close()` frees its state; the writer
    /// then finds nothing to upgrade and exits (Inner's drop wakes it).
    inner: Weak<Inner<I>>,
    file: I::File,
    /// Every live segment, oldest first; the last is `file`.
    segments: VecDeque<SegmentInfo>,
    salt: u64,
    pos: u64,
    next_batch: u64,
    written: Written,
    /// Records to put first in the next batch (after a rollover).
    restate: Vec<Rec>,
    /// Spare files ready for reuse: purged segments renamed `*.tmp`.
    recycled: Vec<PathBuf>,
    zeroing: Option<glommio::Task<std::io::Result<Spare<I>>>>,
    spare_counter: u64,
}

impl<I: WalIo> Writer<I> {
    /// Opens the last segment for writing, or creates the first one.
    pub async fn start(
        inner: Rc<Inner<I>>,
        state: &LogState,
        segments: Vec<SegmentInfo>,
        tail: Option<Tail>,
    ) -> Result<Writer<I>, WalError> {
        let written = Written {
            next: state.next_index(),
            vote: state.vote.clone(),
            committed: state.committed.clone(),
            purged: state.purged.clone(),
        };
        match (segments.last(), tail) {
            (Some(last), Some(tail)) => {
                let file =
                    inner.io.open(&last.path).await.map_err(|e| WalError::io(format!("opening {}", last.path.display()), e))?;
                Ok(Writer {
                    inner: Rc::downgrade(&inner),
                    file,
                    segments: segments.into(),
                    salt: tail.salt,
                    pos: tail.pos,
                    next_batch: tail.next_batch,
                    written,
                    restate: Vec::new(),
                    recycled: Vec::new(),
                    zeroing: None,
                    spare_counter: 0,
                })
            }
            _ => {
                let mut spare_counter = 0;
                let (tmp, file) = make_spare(&inner, &mut spare_counter).await?;
                let first = written.next.unwrap_or(0);
                let (info, salt) = install(&inner, tmp, &file, 0, first, 0).await?;
                Ok(Writer {
                    inner: Rc::downgrade(&inner),
                    file,
                    segments: VecDeque::from([info]),
                    salt,
                    pos: BLOCK,
                    next_batch: 0,
                    written,
                    restate: Vec::new(),
                    recycled: Vec::new(),
                    zeroing: None,
                    spare_counter,
                })
            }
        }
    }

    pub async fn run(mut self) {
        loop {
            let weak = self.inner.clone();
            let work = poll_fn(|cx| {
                let Some(inner) = weak.upgrade() else { return Poll::Ready(false) };
                let mut q = inner.queue.borrow_mut();
                if !q.items.is_empty() {
                    Poll::Ready(true)
                } else if q.closing {
                    Poll::Ready(false)
                } else {
                    q.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            let Some(inner) = self.inner.upgrade().filter(|_| work) else { break };
            if let Err(e) = self.flush_once(&inner).await {
                self.poison(&inner, e);
                break;
            }
        }
        if let Some(t) = self.zeroing.take() {
            // Let an in-flight zero-fill finish rather than leave the file half-written.
            let _ = t.await;
        }
        if let Some(inner) = self.inner.upgrade() {
            if let Some(tx) = inner.writer_done.borrow_mut().take() {
                let _ = tx.send(());
            }
        }
    }

    /// Fails everything queued and refuses later operations.
    fn poison(&mut self, inner: &Inner<I>, err: WalError) {
        tracing::error!(error = %err, "WAL write failed; refusing further writes until reopened");
        let items: Vec<Item> = {
            let mut q = inner.queue.borrow_mut();
            q.failed = Some(err.to_string());
            q.items.drain(..).collect()
        };
        for item in items {
            if let Some(done) = item.done {
                done(Err(WalError::Poisoned(err.to_string())));
            }
        }
    }

    /// Writes and syncs one batch (or rolls over to a new segment).
    async fn flush_once(&mut self, inner: &Rc<Inner<I>>) -> Result<(), WalError> {
        {
            let mut q = inner.queue.borrow_mut();
            if let Some(c) = q.lazy_committed.take() {
                // Behind everything queued so far (see `Wal::set_committed`).
                q.items.push_back(Item { rec: Rec::Committed(c), done: None });
            }
        }
        let size = self.segments.back().map_or(0, |s| s.size);
        let room = size - self.pos;
        let max = inner.opts.max_batch_bytes;
        let mut len = BATCH_HEADER_LEN + self.restate.iter().map(Rec::encoded_len).sum::<usize>();
        let mut n = 0;
        for item in inner.queue.borrow().items.iter() {
            let l = item.rec.encoded_len();
            let fits = align_up((len + l) as u64) <= room;
            if !fits || (n > 0 && len + l > max) {
                break;
            }
            len += l;
            n += 1;
        }
        if n == 0 {
            // The first queued record does not fit: entries are at most half
            // a segment, so it fits in the next one.
            return self.rollover(inner).await;
        }
        let items: Vec<Item> = inner.queue.borrow_mut().items.drain(..n).collect();
        let padded = align_up(len as u64) as usize;
        let mut buf = self.file.alloc(padded);
        let out = buf.as_mut();
        let restate = std::mem::take(&mut self.restate);
        let mut at = BATCH_HEADER_LEN;
        let mut records = 0u32;
        let mut entries = 0u64;
        let mut purged = false;
        for rec in restate.iter().chain(items.iter().map(|i| &i.rec)) {
            if matches!(rec, Rec::Barrier) {
                continue;
            }
            at += rec.encode(self.salt, &mut out[at..]);
            records += 1;
            entries += u64::from(matches!(rec, Rec::Entry(..)));
            purged |= matches!(rec, Rec::Purge(..));
            self.written.note(rec);
        }
        debug_assert_eq!(at, len);
        BatchHeader { len: len as u32, seq: self.next_batch, records }.encode(self.salt, out);
        out[len..].fill(0);

        let path = || self.segments.back().map(|s| s.path.display().to_string()).unwrap_or_default();
        let t = Instant::now();
        let armed = inner.opts.sync_delay_armed.as_ref().is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed));
        if armed && !inner.opts.sync_delay.is_zero() {
            glommio::timer::sleep(inner.opts.sync_delay).await;
        }
        // The write reaches the kernel as soon as it is queued, not at the
        // end of the executor's turn, after whatever else runs in it.
        let res = match submit_early(&inner.io, self.file.write_at(buf, self.pos)).await {
            Ok(()) => self.file.fdatasync().await.map_err(|e| WalError::io(format!("syncing {}", path()), e)),
            Err(e) => Err(WalError::io(format!("writing {}", path()), e)),
        };
        if let Err(e) = res {
            for item in items {
                if let Some(done) = item.done {
                    done(Err(e.clone()));
                }
            }
            return Err(e);
        }
        let took = t.elapsed();
        if took > inner.opts.slow_sync {
            tracing::warn!(took = ?took, expected_duration = ?inner.opts.slow_sync, "slow fdatasync");
        }
        self.pos += padded as u64;
        self.next_batch += 1;
        let mut st = inner.stats.get();
        st.batches += 1;
        st.syncs += 1;
        st.entries += entries;
        st.bytes += padded as u64;
        st.sync_nanos += took.as_nanos() as u64;
        inner.stats.set(st);

        for item in items {
            if let Some(done) = item.done {
                done(Ok(()));
            }
        }
        if purged {
            self.delete_purged(inner).await;
        }
        if self.pos >= size / 2 && self.recycled.is_empty() && self.zeroing.is_none() {
            self.start_zeroing(inner);
        }
        Ok(())
    }

    /// Starts the next segment: a spare gets its header (synced), then its
    /// final name (directory synced). Only then is anything written into it.
    async fn rollover(&mut self, inner: &Inner<I>) -> Result<(), WalError> {
        let (tmp, file) = match self.recycled.pop() {
            Some(tmp) => {
                let f = inner.io.open(&tmp).await.map_err(|e| WalError::io(format!("opening {}", tmp.display()), e))?;
                (tmp, f)
            }
            None => match self.zeroing.take() {
                Some(task) => task.await.map_err(|e| WalError::io("zero-filling a spare segment", e))?,
                None => make_spare(inner, &mut self.spare_counter).await?,
            },
        };
        let seq = self.segments.back().map_or(0, |s| s.seq + 1);
        let first = self.written.next.unwrap_or(0);
        let (info, salt) = install(inner, tmp, &file, seq, first, self.next_batch).await?;
        self.file = file;
        self.salt = salt;
        self.pos = BLOCK;
        self.segments.push_back(info);
        self.restate = self.written.restatement();
        let mut st = inner.stats.get();
        st.syncs += 1;
        st.rollovers += 1;
        inner.stats.set(st);
        Ok(())
    }

    fn start_zeroing(&mut self, inner: &Rc<Inner<I>>) {
        let inner = inner.clone();
        let n = self.spare_counter;
        self.spare_counter += 1;
        self.zeroing = Some(glommio::spawn_local(async move {
            let path = inner.dir.join(format!("spare-{n}.tmp"));
            let file = inner.io.create_zeroed(&path, inner.opts.segment_size).await?;
            Ok((path, file))
        }));
    }

    /// Recycles or deletes the oldest segments once every entry in them is
    /// purged. Runs after the purge record is durable; the hard state is
    /// restated at the start of each later segment, so nothing needed is lost.
    async fn delete_purged(&mut self, inner: &Inner<I>) {
        let Some((p, _)) = self.written.purged.clone() else { return };
        let mut changed = false;
        while self.segments.len() >= 2 && self.segments[1].first_index <= p.saturating_add(1) {
            let Some(seg) = self.segments.pop_front() else { break };
            changed = true;
            let io = &inner.io;
            let res = if seg.size == inner.opts.segment_size && self.recycled.is_empty() && self.zeroing.is_none() {
                let tmp = inner.dir.join(format!("spare-{}.tmp", self.spare_counter));
                self.spare_counter += 1;
                let r = io.rename(&seg.path, &tmp).await;
                if r.is_ok() {
                    self.recycled.push(tmp);
                }
                r
            } else {
                io.remove(&seg.path).await
            };
            if let Err(e) = res {
                // Harmless for durability: the file still verifies and is
                // skipped by the purge point on the next open.
                tracing::warn!(file = %seg.path.display(), error = %e, "could not remove a purged WAL segment");
            }
        }
        if changed {
            if let Err(e) = inner.io.sync_dir(&inner.dir).await {
                tracing::warn!(error = %e, "could not sync the WAL directory after purging");
            }
        }
    }
}

async fn make_spare<I: WalIo>(inner: &Inner<I>, counter: &mut u64) -> Result<(PathBuf, I::File), WalError> {
    let path = inner.dir.join(format!("spare-{counter}.tmp"));
    *counter += 1;
    let file = inner
        .io
        .create_zeroed(&path, inner.opts.segment_size)
        .await
        .map_err(|e| WalError::io(format!("creating {}", path.display()), e))?;
    Ok((path, file))
}

/// Writes a segment header into the spare at `tmp`, syncs it, gives the file
/// its segment name and syncs the directory.
async fn install<I: WalIo>(
    inner: &Inner<I>,
    tmp: PathBuf,
    file: &I::File,
    seq: u64,
    first_index: u64,
    start_batch: u64,
) -> Result<(SegmentInfo, u64), WalError> {
    let salt: u64 = rand::random();
    let size = inner.opts.segment_size;
    let hdr = SegmentHeader { seq, first_index, start_batch, salt, segment_size: size };
    let mut buf = file.alloc(BLOCK as usize);
    hdr.encode(buf.as_mut());
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    file.write_at(buf, 0).await.map_err(|e| WalError::io(ctx("writing the header of"), e))?;
    file.fdatasync().await.map_err(|e| WalError::io(ctx("syncing"), e))?;
    let path = segment_path(&inner.dir, seq, first_index);
    inner.io.rename(&tmp, &path).await.map_err(|e| WalError::io(ctx("renaming"), e))?;
    inner.io.sync_dir(&inner.dir).await.map_err(|e| WalError::io(format!("syncing {}", inner.dir.display()), e))?;
    Ok((SegmentInfo { seq, first_index, size, path }, salt))
}

/// Polls `fut` once, which queues its I/O; then has `io` hand that to the
/// kernel at once; then waits for `fut` as usual.
async fn submit_early<I: WalIo, F: std::future::Future>(io: &I, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut first = true;
    std::future::poll_fn(|cx| {
        let r = fut.as_mut().poll(cx);
        if first && r.is_pending() {
            first = false;
            io.submit_now();
        }
        r
    })
    .await
}

//! Compaction (etcd's `Compact` + `scheduleCompaction`), incremental.
//!
//! `compact(rev)` only records the revision (readers below it get
//! "compacted" at once); [`KvWriter::compact_step`] then removes history in
//! bounded batches the server interleaves with writes. Removed: every change
//! with main <= rev except, per key, the newest one <= rev when it is a put
//! (tombstones <= rev go entirely). Changes > rev and the head index are
//! never touched, so reads at >= rev are unaffected at every step.
//!
//! Progress lives in `Tree::Meta` (scheduled / finished revision and a
//! cursor), so a restart resumes the compaction. A new `compact` while one
//! is running restarts the scan from the first revision with the new target:
//! the rule for a larger revision removes a superset.

use std::ops::Bound;

use crate::kv::{ReadView, Tree, WriteView};

use super::error::{MvccError, MvccResult};
use super::key_index::{history_key, Record};
use super::kv_store::{
    KvReader, KvWriter, ReadCtx, META_COMPACT_CURSOR, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT,
};
use super::revision::Revision;
use super::types::*;

/// Result of one [`KvWriter::compact_step`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CompactStep {
    /// No compaction is pending.
    Done,
    /// More batches remain.
    More,
}

/// Whether the change at `rev` survives a compaction at `at`: it is a put and
/// the key's newest change with main <= `at`.
pub(crate) fn survives<V: ReadView + ?Sized>(
    ctx: &ReadCtx<'_, V>,
    rev: Revision,
    rec: &Record<'_>,
    at: i64,
) -> MvccResult<bool> {
    if rec.tombstone {
        return Ok(false);
    }
    Ok(match ctx.history_next(rec.key, rev)? {
        Some(next) => next.main > at,
        None => true,
    })
}

impl<R: ReadView> KvReader<R> {
    /// True while a compaction still has history to remove.
    pub fn compaction_pending(&self) -> bool {
        self.state.finished_compact < self.state.compact
    }
}

impl<W: WriteView> KvWriter<W> {
    /// etcd's Compaction: records `rev` as the compact revision. Errors:
    /// `rev` <= the compact revision -> compacted; `rev` > current -> future.
    /// The history goes in later [`KvWriter::compact_step`] calls.
    pub fn compact(&mut self, index: u64, r: &CompactionRequest) -> MvccResult<CompactionResponse> {
        self.begin(index);
        let rev = r.revision;
        if rev <= self.state.compact {
            return Err(MvccError::Compacted);
        }
        if rev > self.state.current {
            return Err(MvccError::FutureRev);
        }
        self.state.compact = rev;
        self.view
            .put(Tree::Meta, META_SCHEDULED_COMPACT, &rev.to_le_bytes())?;
        self.view.delete(Tree::Meta, META_COMPACT_CURSOR)?;
        Ok(CompactionResponse {
            header: ResponseHeader::at(self.state.current),
        })
    }

    /// True while a compaction still has history to remove.
    pub fn compaction_pending(&self) -> bool {
        self.state.finished_compact < self.state.compact
    }

    /// Examines up to `max_keys` history entries of the pending compaction
    /// and removes those that do not survive. Does not touch the applied index.
    pub fn compact_step(&mut self, max_keys: usize) -> MvccResult<CompactStep> {
        if !self.compaction_pending() {
            return Ok(CompactStep::Done);
        }
        let at = self.state.compact;
        let cursor = match self.view.get(Tree::Meta, META_COMPACT_CURSOR)? {
            Some(b) => Revision::from_bytes(b)?,
            None => Revision::new(0, 0),
        };
        let end = Revision::new(at + 1, 0).to_bytes();
        let max = max_keys.max(1);
        let mut batch: Vec<(Revision, Vec<u8>, bool)> = Vec::with_capacity(max.min(4096));
        let mut err = None;
        self.view.scan(
            Tree::Kv,
            Bound::Included(&cursor.to_bytes()),
            Bound::Excluded(&end),
            false,
            &mut |k, v| {
                let r = Revision::from_bytes(k).and_then(|rev| {
                    let rec = Record::decode(v)?;
                    Ok((rev, rec.key.to_vec(), rec.tombstone))
                });
                match r {
                    Ok(e) => batch.push(e),
                    Err(e) => {
                        err = Some(e);
                        return false;
                    }
                }
                batch.len() < max
            },
        )?;
        if let Some(e) = err {
            return Err(e);
        }
        for (rev, key, tombstone) in &batch {
            let keep = !*tombstone
                && match self.ctx().history_next(key, *rev)? {
                    Some(next) => next.main > at,
                    None => true,
                };
            if !keep {
                self.view.delete(Tree::Kv, &rev.to_bytes())?;
                self.view
                    .delete(Tree::KeyHistory, &history_key(key, *rev))?;
            }
        }
        if batch.len() < max {
            self.state.finished_compact = at;
            self.view
                .put(Tree::Meta, META_FINISHED_COMPACT, &at.to_le_bytes())?;
            self.view.delete(Tree::Meta, META_COMPACT_CURSOR)?;
            return Ok(CompactStep::Done);
        }
        let last = batch.last().map(|b| b.0).unwrap_or_default();
        let next = Revision::new(last.main, last.sub + 1);
        self.view
            .put(Tree::Meta, META_COMPACT_CURSOR, &next.to_bytes())?;
        Ok(CompactStep::More)
    }
}

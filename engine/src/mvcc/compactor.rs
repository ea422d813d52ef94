//! Compaction (etcd's `Compact` + `scheduleCompaction`), incremental.
//!
//! `compact(rev)` only records the revision (readers below it get
//! "compacted" at once); [`KvWriter::compact_step`] then removes history in
//! bounded batches the server interleaves with writes. Removed: every change
//! with main <= rev except, per key, the newest one <= rev when it is a put
//! (tombstones <= rev go entirely). Changes > rev and the head index are
//! never touched, so reads at >= rev are unaffected at every step.
//!
//! The steps walk `Tree::KeyHistory`, which holds exactly the superseded
//! changes (every change but each live key's head), in key then revision
//! order: a change's successor is the next entry of its key, or its head.
//! So a compaction costs O(history written since the last one), not O(keys).
//!
//! Progress lives in `Tree::Meta` (scheduled / finished revision and a
//! cursor: the next `Tree::KeyHistory` key), so a restart resumes the
//! compaction. A new `compact` while one is running restarts the walk from
//! the first entry with the new target: the rule for a larger revision
//! removes a superset.

use std::ops::Bound;

use crate::kv::{ReadView, Tree, WriteView};

use super::error::{MvccError, MvccResult};
use super::key_index::{decode_history_key, Record, KIND_PUT, KIND_TOMBSTONE, REV_TAIL};
use super::kv_store::{
    KvReader, KvWriter, ReadCtx, META_COMPACT_CURSOR, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT,
};
use super::revision::{Revision, REV_BYTES_LEN};
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

    /// Examines up to `max_keys` superseded changes (`Tree::KeyHistory`
    /// entries) of the pending compaction and removes those that do not
    /// survive, with their `Tree::Kv` records. Heads are never superseded
    /// changes, so they are never examined: the work is proportional to the
    /// history written since the last compaction, not to the number of keys.
    /// Does not touch the applied index.
    pub fn compact_step(&mut self, max_keys: usize) -> MvccResult<CompactStep> {
        if !self.compaction_pending() {
            return Ok(CompactStep::Done);
        }
        let at = self.state.compact;
        let cursor = self
            .view
            .get(Tree::Meta, META_COMPACT_CURSOR)?
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let max = max_keys.max(1);
        // One entry more than the batch: the successor of the batch's last
        // change when it is the same key's.
        let mut batch: Vec<(Vec<u8>, bool)> = Vec::with_capacity(max.min(4096) + 1);
        let mut err = None;
        self.view.scan(
            Tree::KeyHistory,
            Bound::Included(&cursor),
            Bound::Unbounded,
            false,
            &mut |k, v| {
                match v {
                    [KIND_PUT] => batch.push((k.to_vec(), false)),
                    [KIND_TOMBSTONE] => batch.push((k.to_vec(), true)),
                    _ => {
                        err = Some(MvccError::corrupt("bad key history value"));
                        return false;
                    }
                }
                batch.len() <= max
            },
        )?;
        if let Some(e) = err {
            return Err(e);
        }
        let more = batch.len() > max;
        let n = batch.len().min(max);
        for i in 0..n {
            let (hk, tombstone) = &batch[i];
            if hk.len() < REV_TAIL {
                return Err(MvccError::corrupt("short key history entry"));
            }
            let (prefix, rev) = hk.split_at(hk.len() - REV_BYTES_LEN);
            let rev = Revision::from_bytes(rev)?;
            if rev.main > at {
                continue;
            }
            let remove = *tombstone || {
                // A superseded put is removed when the change that superseded
                // it (the next entry of its key, else its head) is <= at.
                let next = match batch.get(i + 1) {
                    Some((nk, _)) if nk.len() == hk.len() && nk.starts_with(prefix) => {
                        Some(Revision::from_bytes(&nk[prefix.len()..])?)
                    }
                    _ => {
                        let (key, _) = decode_history_key(hk)?;
                        self.ctx().head(&key)?.map(|h| h.modified)
                    }
                };
                next.is_some_and(|n| n.main <= at)
            };
            if remove {
                self.view.delete(Tree::Kv, &rev.to_bytes())?;
                self.view.delete(Tree::KeyHistory, hk)?;
            }
        }
        if !more {
            self.state.finished_compact = at;
            self.view
                .put(Tree::Meta, META_FINISHED_COMPACT, &at.to_le_bytes())?;
            self.view.delete(Tree::Meta, META_COMPACT_CURSOR)?;
            return Ok(CompactStep::Done);
        }
        let next = &batch[max].0;
        self.view.put(Tree::Meta, META_COMPACT_CURSOR, next)?;
        Ok(CompactStep::More)
    }
}

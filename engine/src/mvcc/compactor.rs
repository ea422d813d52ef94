//! Compaction (etcd's `Compact` + `scheduleCompaction`), incremental.
//!
//! `compact(rev)` only records the revision (readers below it get
//! "compacted" at once); [`KvWriter::compact_step`] then removes history in
//! bounded batches the server interleaves with writes. Removed: every change
//! with main <= rev except, per key, the newest one <= rev when it is a put
//! (tombstones <= rev go entirely). Changes > rev and the head index are
//! never touched, so reads at >= rev are unaffected at every step.
//!
//! Two phases, so that each tree is edited in its own order and a step frees
//! whole leaves instead of copying scattered ones:
//!
//! 1. Walk `Tree::KeyHistory`, which holds exactly the superseded changes
//!    (every change but each live key's head), in key then revision order:
//!    a change's successor is the next entry of its key, or its head. Remove
//!    the entries of changes that go, and mark the *chunk* of their revision
//!    (`main >> CHUNK_BITS`) in `Tree::Meta`. Their `Tree::Kv` records stay:
//!    such a record is *orphaned* (neither a head nor in `Tree::KeyHistory`).
//! 2. Walk the marked chunks of `Tree::Kv` in revision order and delete the
//!    orphaned records (up to the compact revision), then the marks.
//!
//! So a compaction costs O(history written since the last one), not
//! O(keys), and its `Tree::Kv` deletes are contiguous. Readers never meet an
//! orphan through the indexes; `survives` (hash_kv, watch at the compact
//! revision) treats one as removed while a compaction is unfinished.
//! Per key, the removed entries are always a prefix (in revision order) of
//! its history, so a present entry's successor is still its successor.
//!
//! Progress lives in `Tree::Meta` (scheduled / finished revision, the phase-1
//! cursor (the next `Tree::KeyHistory` key), the revision whose walk ended,
//! the chunk marks and the phase-2 cursor), so a restart resumes the
//! compaction. A new `compact` while one is running restarts phase 1 from
//! the first entry with the new target (its rule removes a superset) and
//! phase 2 from the first mark.

use std::collections::BTreeSet;
use std::ops::Bound;

use crate::kv::{ReadView, Tree, WriteView};

use super::error::{MvccError, MvccResult};
use super::key_index::{decode_history_key, split_history_key, Record, KIND_PUT, KIND_TOMBSTONE};
use super::kv_store::{
    KvReader, KvWriter, ReadCtx, META_COMPACT_CHUNK, META_COMPACT_CURSOR, META_COMPACT_KV_CURSOR,
    META_COMPACT_WALKED, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT,
};
use super::revision::{le_i64, Revision};
use super::types::*;

/// A phase-2 chunk spans `1 << CHUNK_BITS` main revisions of `Tree::Kv`.
pub(crate) const CHUNK_BITS: u32 = 10;

fn chunk_key(chunk: u64) -> Vec<u8> {
    let mut k = META_COMPACT_CHUNK.to_vec();
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

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
    if ctx.compacting && rev.main <= ctx.compact && !ctx.indexed(rec.key, rev)? {
        return Ok(false); // removed by phase 1, its record not yet by phase 2
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
        self.view.delete(Tree::Meta, META_COMPACT_KV_CURSOR)?;
        Ok(CompactionResponse {
            header: ResponseHeader::at(self.state.current),
        })
    }

    /// True while a compaction still has history to remove.
    pub fn compaction_pending(&self) -> bool {
        self.state.finished_compact < self.state.compact
    }

    /// Does up to `max_keys` units of the pending compaction: in phase 1,
    /// examines that many superseded changes (`Tree::KeyHistory` entries)
    /// and removes the entries of those that do not survive; in phase 2,
    /// examines that many `Tree::Kv` records of marked chunks and deletes
    /// the orphaned ones. Heads are never superseded changes, so they are
    /// never examined in phase 1: the work is proportional to the history
    /// written since the last compaction, not to the number of keys.
    /// Does not touch the applied index.
    pub fn compact_step(&mut self, max_keys: usize) -> MvccResult<CompactStep> {
        if !self.compaction_pending() {
            return Ok(CompactStep::Done);
        }
        let at = self.state.compact;
        let walked = match self.view.get(Tree::Meta, META_COMPACT_WALKED)? {
            Some(b) if b.len() == 8 => le_i64(b),
            Some(_) => return Err(MvccError::corrupt("bad compact walked mark")),
            None => -1,
        };
        if walked != at {
            self.compact_walk_history(at, max_keys.max(1))?;
            return Ok(CompactStep::More);
        }
        if self.compact_sweep_kv(at, max_keys.max(1))? {
            return Ok(CompactStep::More);
        }
        self.state.finished_compact = at;
        self.view
            .put(Tree::Meta, META_FINISHED_COMPACT, &at.to_le_bytes())?;
        self.view.delete(Tree::Meta, META_COMPACT_WALKED)?;
        self.view.delete(Tree::Meta, META_COMPACT_KV_CURSOR)?;
        Ok(CompactStep::Done)
    }

    /// Phase 1: one batch of the `Tree::KeyHistory` walk.
    fn compact_walk_history(&mut self, at: i64, max: usize) -> MvccResult<()> {
        let cursor = self
            .view
            .get(Tree::Meta, META_COMPACT_CURSOR)?
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
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
        let mut chunks = BTreeSet::new();
        for i in 0..n {
            let (hk, tombstone) = &batch[i];
            let (plen, rev) = split_history_key(hk)?;
            let prefix = &hk[..plen];
            if rev.main > at {
                continue;
            }
            let remove = *tombstone || {
                // A superseded put is removed when the change that superseded
                // it (the next entry of its key, else its head) is <= at.
                let next = match batch.get(i + 1) {
                    Some((nk, _)) if nk.starts_with(prefix) => Some(split_history_key(nk)?.1),
                    _ => {
                        let (key, _) = decode_history_key(hk)?;
                        self.ctx().head(&key)?.map(|h| h.modified)
                    }
                };
                next.is_some_and(|n| n.main <= at)
            };
            if remove {
                self.view.delete(Tree::KeyHistory, hk)?;
                chunks.insert((rev.main as u64) >> CHUNK_BITS);
            }
        }
        for c in chunks {
            let k = chunk_key(c);
            if self.view.get(Tree::Meta, &k)?.is_none() {
                self.view.put(Tree::Meta, &k, &[])?;
            }
        }
        if more {
            let next = &batch[max].0;
            self.view.put(Tree::Meta, META_COMPACT_CURSOR, next)?;
        } else {
            self.view.delete(Tree::Meta, META_COMPACT_CURSOR)?;
            self.view
                .put(Tree::Meta, META_COMPACT_WALKED, &at.to_le_bytes())?;
        }
        Ok(())
    }

    /// Phase 2: deletes the orphaned `Tree::Kv` records of the marked chunks,
    /// in revision order, examining at most `max` records. False when no
    /// marked chunk is left.
    fn compact_sweep_kv(&mut self, at: i64, max: usize) -> MvccResult<bool> {
        let mut cursor = match self.view.get(Tree::Meta, META_COMPACT_KV_CURSOR)? {
            Some(b) => Revision::from_bytes(b)?,
            None => Revision::new(0, 0),
        };
        let mut examined = 0usize;
        let end = Revision::new(at.saturating_add(1), 0);
        while examined < max {
            // The first marked chunk at or after the cursor's.
            let from = chunk_key((cursor.main as u64) >> CHUNK_BITS);
            let mut found = None;
            self.view.scan(
                Tree::Meta,
                Bound::Included(&from),
                Bound::Unbounded,
                false,
                &mut |k, _| {
                    if let Some(c) = k.strip_prefix(META_COMPACT_CHUNK) {
                        if c.len() == 8 {
                            found = Some(u64::from_be_bytes(c.try_into().unwrap_or_default()));
                        }
                    }
                    false
                },
            )?;
            let Some(chunk) = found else {
                return Ok(false);
            };
            let lo = Revision::new((chunk << CHUNK_BITS) as i64, 0).max(cursor);
            let hi = Revision::new(((chunk + 1) << CHUNK_BITS) as i64, 0).min(end);
            // Up to the rest of the budget, plus one to know whether the
            // chunk is done.
            let want = max - examined;
            let mut recs: Vec<(Revision, Vec<u8>, bool)> = Vec::new();
            let mut err = None;
            if lo < hi {
                self.view.scan(
                    Tree::Kv,
                    Bound::Included(&lo.kv_key()),
                    Bound::Excluded(&hi.kv_key()),
                    false,
                    &mut |k, v| {
                        if recs.len() == want {
                            recs.push((Revision::default(), Vec::new(), false));
                            return false;
                        }
                        match Revision::from_kv_key(k).and_then(|r| Ok((r, Record::decode(v)?))) {
                            Ok((r, rec)) => recs.push((r, rec.key.to_vec(), rec.tombstone)),
                            Err(e) => {
                                err = Some(e);
                                return false;
                            }
                        }
                        true
                    },
                )?;
            }
            if let Some(e) = err {
                return Err(e);
            }
            let chunk_done = recs.len() <= want;
            recs.truncate(want);
            examined += recs.len();
            for (rev, key, _) in &recs {
                if !self.ctx().indexed(key, *rev)? {
                    self.view.delete(Tree::Kv, &rev.kv_key())?;
                }
            }
            if chunk_done {
                self.view.delete(Tree::Meta, &chunk_key(chunk))?;
                cursor = Revision::new(((chunk + 1) << CHUNK_BITS) as i64, 0);
            } else {
                let last = recs.last().map(|r| r.0).unwrap_or(lo);
                cursor = Revision::new(last.main, last.sub.saturating_add(1));
                break;
            }
            // An empty chunk costs one unit, so a step stays bounded.
            examined += usize::from(recs.is_empty());
        }
        self.view
            .put(Tree::Meta, META_COMPACT_KV_CURSOR, &cursor.to_bytes())?;
        Ok(true)
    }
}

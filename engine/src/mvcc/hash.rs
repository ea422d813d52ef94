//! Hash and HashKV (etcd's `Hash` / `HashByRev`), for corruption checks.
//!
//! `hash_kv(rev)` is a CRC-32 (crc32fast, IEEE) over the `Tree::Kv` entries
//! (key bytes then value bytes) with main <= rev, in revision order, where
//! entries at or below the compact revision count only if they survive a
//! compaction at `rev`. It therefore depends only on the writes applied and
//! the compact revision, not on how far physical compaction has got: two
//! stores that applied the same entries agree. (Not etcd's number: etcd
//! hashes its own bolt encoding with Castagnoli.)

use std::ops::Bound;

use crate::kv::{ReadView, Tree};

use super::compactor::survives;
use super::error::{MvccError, MvccResult};
use super::key_index::Record;
use super::kv_store::{KvReader, META_COMPACT_PROGRESS};
use super::revision::Revision;
use super::types::*;

impl<R: ReadView> KvReader<R> {
    /// etcd's HashKV. `rev` 0 = current. Errors: 0 < rev <= compact
    /// revision -> compacted; rev > current -> future.
    pub fn hash_kv(&self, rev: i64) -> MvccResult<HashKvResponse> {
        let (cur, compact) = (self.state.current, self.state.compact);
        if rev > 0 && rev <= compact {
            return Err(MvccError::Compacted);
        }
        if rev > 0 && rev > cur {
            return Err(MvccError::FutureRev);
        }
        let at = if rev <= 0 { cur } else { rev };
        let ctx = self.ctx();
        let mut h = crc32fast::Hasher::new();
        h.update(b"kv");
        let end = Revision::new(at + 1, 0).kv_key();
        let mut err = None;
        self.view.scan(
            Tree::Kv,
            Bound::Unbounded,
            Bound::Excluded(&end),
            false,
            &mut |k, v| {
                let keep = Revision::from_kv_key(k).and_then(|r| {
                    if r.main > compact {
                        return Ok(true);
                    }
                    survives(&ctx, r, &Record::decode(v)?, at)
                });
                match keep {
                    Ok(true) => {
                        h.update(k);
                        h.update(v);
                        true
                    }
                    Ok(false) => true,
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            },
        )?;
        if let Some(e) = err {
            return Err(e);
        }
        Ok(HashKvResponse {
            header: ResponseHeader::at(cur),
            hash: h.finalize(),
            compact_revision: compact,
        })
    }

    /// etcd's Hash: a CRC-32 over every entry of the MVCC and lease trees
    /// and the MVCC meta keys (not the compaction's progress keys or the
    /// applied index).
    /// Like etcd's, it depends on how far physical compaction has got.
    pub fn hash(&self) -> MvccResult<HashResponse> {
        let mut h = crc32fast::Hasher::new();
        for tree in [
            Tree::Kv,
            Tree::KeyIndex,
            Tree::KeyHistory,
            Tree::Lease,
            Tree::Meta,
        ] {
            h.update(&[tree as u8]);
            self.view.scan(
                tree,
                Bound::Unbounded,
                Bound::Unbounded,
                false,
                &mut |k, v| {
                    if tree == Tree::Meta && (!k.starts_with(b"mvcc/") || k.starts_with(META_COMPACT_PROGRESS))
                    {
                        return true;
                    }
                    h.update(&(k.len() as u32).to_le_bytes());
                    h.update(k);
                    h.update(&(v.len() as u32).to_le_bytes());
                    h.update(v);
                    true
                },
            )?;
        }
        Ok(HashResponse {
            header: ResponseHeader::at(self.state.current),
            hash: h.finalize(),
        })
    }
}

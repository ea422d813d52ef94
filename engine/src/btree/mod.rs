//! The memory-mapped copy-on-write B-tree file (LMDB/bbolt/redb style).
//!
//! One file of 4 KiB pages holds every [`crate::kv::Tree`]; two meta pages
//! name the newest durable root set. A write transaction copies the nodes it
//! changes; `commit` publishes them (written into the map, no fsync) and `sync` makes them
//! durable (fdatasync, alternate meta page, fdatasync). Readers pin a
//! snapshot and read straight from the map, lock-free and zero-copy.
//! Format, commit protocol and crash analysis: `docs/btree.md`.
//!
//! Layers, bottom up:
//! - `io`: the only code that touches the file ([`PageIo`], [`FileIo`],
//!   [`FaultIo`]).
//! - `page`: byte layouts of every page kind; pure encode/decode.
//! - `pager`: verified page reads from the map.
//! - `tree`: B-tree search, copy-on-write mutation, rebalance and spill.
//! - `db`: open, snapshots, write transactions, publish, sync, free pages.
//! - `check`: the consistency check.

mod check;
mod db;
mod io;
mod page;
mod pager;
mod tree;

pub use check::CheckReport;
pub use db::{Db, DbOptions, DbStats, ParkedTxn, Snapshot, WriteTxn};
pub use io::{CrashMode, FaultIo, FileIo, PageIo, PageMap};
pub use page::{MAX_KEY_LEN, MAX_VALUE_LEN, PAGE_SIZE};

/// Page-level decoding, exposed for the fuzz target only.
#[doc(hidden)]
pub mod fuzzing {
    use crate::kv::StoreResult;

    /// Decodes `data` as a meta page, a freelist page and a node page (and
    /// every cell in it); must return, never panic, for any input.
    pub fn decode_page(data: &[u8]) -> StoreResult<()> {
        let _ = super::page::decode_meta(data);
        let _ = super::page::decode_freelist(2, data);
        let _ = super::page::overflow_header(2, data);
        let node = super::page::NodePage::parse(2, data)?;
        for i in 0..node.count {
            if node.leaf {
                let _ = node.leaf_entry(i);
            } else {
                let _ = node.key(i);
                let _ = node.child(i + 1);
            }
        }
        let _ = node.child(0);
        Ok(())
    }
}

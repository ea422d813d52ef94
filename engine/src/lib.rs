//! ironcd's storage engine.
//!
//! - [`wal`]: the write-ahead log (io_uring, O_DIRECT, group commit) that makes
//!   every acknowledged write durable; it holds the raft log and hard state.
//! - [`btree`]: the memory-mapped copy-on-write B-tree file (pager, pages,
//!   meta pages, free pages) holding every named tree.
//! - [`mvcc`]: etcd's multi-version key-value model on top of the B-tree.
//! - [`kv`]: the seam between the two: what MVCC needs from a store file.
//!
//! On-disk formats and crash arguments live in `docs/FORMAT.md`.

pub mod kv;
pub mod wal;
pub mod btree;
pub mod mvcc;
pub mod workload;

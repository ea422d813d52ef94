//! etcd's multi-version key-value model (etcd 3.4 semantics) over the
//! [`crate::kv`] store seam. Layout and encodings: `docs/mvcc.md`.
//!
//! - [`KvStore`] opens the state; [`KvReader`] reads one snapshot (range at
//!   any uncompacted revision, watch catch-up, hashes, lease lookups);
//!   [`KvWriter`] applies raft entries (put, delete range, txn, compaction,
//!   leases) and collects live watch events.
//! - [`validate`] holds the checks etcd makes before proposing.
//! - [`testing::MemStore`] is an in-memory store for tests and benches.

mod compactor;
mod error;
mod hash;
mod key_index;
mod kv_store;
mod lease;
mod mem_store;
mod revision;
mod types;
pub mod validate;
mod watchable_store;

pub use compactor::CompactStep;
pub use error::{GrpcCode, MvccError, MvccResult};
pub use kv_store::{Config, EventMode, KvReader, KvStore, KvWriter};
pub use lease::MAX_LEASE_TTL;
pub use revision::{KvKey, Revision};
pub use types::*;

/// Test fixtures (not for production use).
pub mod testing {
    pub use super::mem_store::{MemSnapshot, MemStore, MemWrite};
}

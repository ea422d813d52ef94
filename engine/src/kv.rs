//! The seam between the MVCC layer and the B-tree file.
//!
//! The store file holds several named trees committed atomically together.
//! One writer at a time builds a [`WriteView`]; any number of readers on any
//! thread hold a [`ReadView`] snapshot that never changes and never blocks
//! the writer.
//!
//! Visibility and durability are separate steps (see `docs/FORMAT.md`):
//! - [`WriteView::commit`] *publishes*: snapshots taken afterwards see the
//!   writes. It does not `fdatasync`; the WAL already made the writes durable.
//! - [`Store::sync`] makes the newest published state durable (pages,
//!   `fdatasync`, meta page, `fdatasync`). After a crash the store reopens at
//!   the last synced state and [`ReadView::applied_index`] tells the server
//!   where to resume replaying the WAL.

use std::ops::Bound;

/// The named trees in one store file.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Tree {
    /// MVCC history: revision -> key/value record (etcd's `key` bucket).
    Kv = 0,
    /// Latest state per user key, so reads at the head revision never walk history.
    KeyIndex = 1,
    /// Leases: id -> ttl and metadata.
    Lease = 2,
    /// Users, roles, auth revision.
    Auth = 3,
    /// Cluster members.
    Members = 4,
    /// Store-level metadata: consistent index, compacted revision, alarms, ...
    Meta = 5,
    /// Per-key revision history, so a read at an old revision is O(log n) per key.
    KeyHistory = 6,
}

impl Tree {
    /// Number of trees; tree ids are `0..COUNT`.
    pub const COUNT: usize = 7;
    /// Every tree, in id order.
    pub const ALL: [Tree; Tree::COUNT] =
        [
        Tree::Kv,
        Tree::KeyIndex,
        Tree::Lease,
        Tree::Auth,
        Tree::Members,
        Tree::Meta,
        Tree::KeyHistory,
    ];
}

/// Errors from the store file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O call failed; `context` names the file and operation.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The file's contents are not what this code wrote (bad checksum, bad
    /// magic, broken invariant). Never returned for a clean crash.
    #[error("store file is corrupt: {0}")]
    Corrupt(String),
    /// A write or sync failed earlier; the store refuses writes until reopened.
    #[error("store refuses writes after an earlier I/O failure ({0}); reopen it to recover")]
    Poisoned(String),
    /// A key or value is larger than the store accepts.
    #[error("{0}")]
    TooLarge(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A consistent, immutable view of every tree.
pub trait ReadView {
    /// The value stored under `key` in `tree`, borrowed from the view.
    fn get(&self, tree: Tree, key: &[u8]) -> StoreResult<Option<&[u8]>>;

    /// Visits the entries of `tree` whose keys lie between `start` and `end`,
    /// in ascending key order (descending when `reverse`), until `visit`
    /// returns `false`.
    fn scan(
        &self,
        tree: Tree,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()>;

    /// The last raft index whose effects this view includes.
    fn applied_index(&self) -> u64;
}

/// The one write transaction; reads see its own writes.
pub trait WriteView: ReadView {
    fn put(&mut self, tree: Tree, key: &[u8], value: &[u8]) -> StoreResult<()>;
    /// Puts under `key` the value `f` writes into its (empty) buffer given
    /// the current value (`None` when absent); `f` returning `false` leaves
    /// the value as it is. Returns what `f` returned. A store may do this
    /// with one lookup where [`ReadView::get`] and [`WriteView::put`] take two.
    fn update(
        &mut self,
        tree: Tree,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>, &mut Vec<u8>) -> bool,
    ) -> StoreResult<bool> {
        let mut value = Vec::new();
        if !f(self.get(tree, key)?, &mut value) {
            return Ok(false);
        }
        self.put(tree, key, &value)?;
        Ok(true)
    }
    /// Removes `key`; returns whether it was present.
    fn delete(&mut self, tree: Tree, key: &[u8]) -> StoreResult<bool>;
    /// Records the last raft index applied by this transaction.
    fn set_applied_index(&mut self, index: u64);
    /// Publishes the transaction to new snapshots (no `fdatasync`).
    fn commit(self) -> StoreResult<()>
    where
        Self: Sized;
}

/// A store file.
pub trait Store: Send + Sync + 'static {
    type Snapshot: ReadView + Clone + Send + Sync + 'static;
    type Write<'a>: WriteView
    where
        Self: 'a;

    /// The newest published state. Cheap; holding it pins its pages.
    fn snapshot(&self) -> Self::Snapshot;
    /// Starts the write transaction; a second concurrent call waits or fails.
    fn begin_write(&self) -> StoreResult<Self::Write<'_>>;
    /// Makes the newest published state durable.
    fn sync(&self) -> StoreResult<()>;
}

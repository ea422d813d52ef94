//! etcd's Watch service core (etcd 3.4's `mvcc/watchable_store.go` and
//! `v3rpc/watch.go` semantics): the [`WatchHub`] fans applied events out to
//! synced watchers through a key index, catches unsynced watchers up from
//! the store's history, and keeps each stream's outbound queue bounded.
//! [`stream::WatchOut`] is one gRPC stream's response side. Design:
//! `docs/watch.md`.

mod hub;
mod index;
pub mod stream;

pub use hub::{Limits, WatchHub};

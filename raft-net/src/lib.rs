//! openraft glue for ironcd, and (later) the peer transport.
//!
//! - [`runtime`]: [`GlommioRuntime`], openraft's `AsyncRuntime` on glommio
//!   (tasks, timers, MPSC / watch / oneshot channels, mutex).
//! - [`types`]: [`TypeConfig`], ironcd's openraft type configuration, and the
//!   types it names: [`Member`] (a node's name and URLs), [`Request`] /
//!   [`Response`] (opaque request bytes; type-erased apply results), log id, vote and entry aliases.
//! - [`codec`]: the byte encodings of entries, vote and log ids in the WAL.
//! - [`log_store`]: [`LogStore`], openraft's `RaftLogStorage` and
//!   `RaftLogReader` on the WAL.
//!
//! Still to come (server and clustering issues): the state machine on the
//! MVCC store, the peer transport (`RaftNetworkFactory`), membership and
//! bootstrap. Design and rules: `docs/raft.md`.

pub mod codec;
pub mod log_store;
pub mod network;
pub mod peer;
pub mod runtime;
pub mod types;

pub use log_store::{AppendHook, LogStore, OnDurable};
pub use network::NoPeers;
pub use runtime::GlommioRuntime;
pub use types::{Entry, EntryPayload, LogId, Member, Membership, Raft, Request, Response, TypeConfig, Vote};

/// Re-exported so users name the same openraft as this crate.
pub use openraft;

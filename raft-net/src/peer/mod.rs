//! The peer transport: members talk to each other over TCP on their peer
//! URLs with a small framed binary protocol (`wire`), glommio-native.
//!
//! - [`client::Peers`]: one multiplexed rpc connection per peer (lazy,
//!   reconnected with backoff, bounded queue), for openraft's votes,
//!   appends, leadership transfer and snapshots and for the server's own
//!   calls (forwarded proposals, read index, lease renewals, member lists).
//! - [`network`]: openraft's `RaftNetworkFactory`/`RaftNetworkV2` on it;
//!   replication runs as a pipelined append stream on its own connection;
//!   snapshots go in chunks through [`SnapshotTransfer`].
//! - [`server`]: the accept loop; checks the handshake's cluster and member
//!   IDs and hands requests to openraft or to the server's [`AppHandler`].
//!
//! Protocol and rules: `docs/raft.md` ("Peer transport").

pub mod client;
pub mod network;
pub mod server;
pub mod wire;

pub use client::{CallError, PeerConfig, Peers};
pub use network::{PeerNetwork, PeerNetworkFactory, SnapshotSink, SnapshotSource, SnapshotTransfer};
pub use server::{serve, AppHandler, LocalFuture, PeerServer};
pub use wire::Msg;

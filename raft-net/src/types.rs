//! ironcd's openraft type configuration and the types it names.

use std::fmt;

use bytes::Bytes;

use crate::runtime::GlommioRuntime;

openraft::declare_raft_types!(
    /// openraft types for ironcd: etcd's `u64` member IDs, standard Raft
    /// (one leader per term, so a log id is `(term, index)` as in etcd's
    /// raft), opaque request/response payloads, the glommio runtime.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        AsyncRuntime = GlommioRuntime,
);

/// The log id of ironcd's raft: term (of the leader that proposed it) and index.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// The raft vote: leader id (term, voted for) and whether it is committed.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A raft log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// The payload of a log entry (blank, normal request, or membership).
pub type EntryPayload = openraft::type_config::alias::EntryPayloadOf<TypeConfig>;
/// A cluster membership: joint configs of voter IDs, plus every node (voters and learners).
pub type Membership = openraft::Membership<u64, Member>;
/// The committed leader id inside a [`LogId`] (just the term, in standard Raft).
pub type CommittedLeaderId = openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>;
/// openraft's `Raft` handle for ironcd, generic over the state machine.
pub type Raft<SM> = openraft::Raft<TypeConfig, SM>;

/// A member's attributes as etcd's `Member` message has them (its ID is the
/// raft node id; learner status is part of the raft membership).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Member {
    /// `--name` of the member; empty until it has started (etcd's convention).
    pub name: String,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.name, self.peer_urls)
    }
}

/// Shows at most this many payload bytes in `Debug`/`Display`.
const SHOWN: usize = 16;

fn fmt_bytes(f: &mut fmt::Formatter<'_>, kind: &str, b: &Bytes) -> fmt::Result {
    write!(f, "{kind}({} bytes", b.len())?;
    if !b.is_empty() {
        f.write_str(": ")?;
        for x in b.iter().take(SHOWN) {
            write!(f, "{x:02x}")?;
        }
        if b.len() > SHOWN {
            f.write_str("..")?;
        }
    }
    f.write_str(")")
}

/// An opaque client request carried by a normal log entry (the server puts
/// encoded etcd requests in it). Decoding a log entry slices the WAL's
/// buffer, so reading it back copies nothing.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Request(pub Bytes);

/// The state machine's opaque answer to a [`Request`].
/// What applying a request produced, handed back to the proposer unencoded
/// (it never leaves the member): the state machine puts its own result type
/// in, the proposer takes it out with [`Response::take`].
pub struct Response(Box<dyn std::any::Any>);

impl Response {
    pub fn new<T: 'static>(value: T) -> Response {
        Response(Box::new(value))
    }

    /// The value, if it is a `T`.
    pub fn take<T: 'static>(self) -> Option<T> {
        self.0.downcast::<T>().ok().map(|b| *b)
    }
}

impl Default for Response {
    fn default() -> Self {
        Response::new(())
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_bytes(f, "Request", &self.0)
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_bytes(f, "Request", &self.0)
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Response(..)")
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Response(..)")
    }
}

impl From<Bytes> for Request {
    fn from(b: Bytes) -> Self {
        Request(b)
    }
}

impl From<Vec<u8>> for Request {
    fn from(b: Vec<u8>) -> Self {
        Request(Bytes::from(b))
    }
}


//! The peer network of a member that has no peers yet. A single-member
//! cluster never calls it (openraft only replicates to other voters and
//! learners); if it were called, every RPC reports the peer unreachable.
//! The peer transport of the clustering issue replaces it.

use std::future::Future;
use std::marker::PhantomData;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::storage::Snapshot;
use openraft::{OptionalSend, RaftNetworkV2};

use crate::types::{CommittedLeaderId, Member, TypeConfig, Vote};

/// See the module docs. `S` is the state machine's snapshot data type.
pub struct NoPeers<S>(PhantomData<fn() -> S>);

impl<S> Default for NoPeers<S> {
    fn default() -> Self {
        NoPeers(PhantomData)
    }
}

fn unreachable(target: &str) -> Unreachable<TypeConfig> {
    Unreachable::from_string(format!("no peer transport yet: cannot reach {target}"))
}

impl<S: OptionalSend + 'static> RaftNetworkFactory<TypeConfig> for NoPeers<S> {
    type Network = NoPeers<S>;

    async fn new_client(&mut self, _target: u64, _node: &Member) -> NoPeers<S> {
        NoPeers::default()
    }
}

impl<S: OptionalSend + 'static> RaftNetworkV2<TypeConfig> for NoPeers<S> {
    type SnapshotData = S;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable("append_entries")))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable("vote")))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot<CommittedLeaderId, u64, Member, S>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable("snapshot")))
    }
}

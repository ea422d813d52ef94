//! openraft's network traits on the peer transport: votes, appends,
//! leadership transfer and snapshots as calls on the shared rpc
//! connection; replication as a pipelined append stream on a connection of
//! its own.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::io::BufReader;
use futures_util::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::RaftNetworkV2;

use super::client::{self, CallError, Peers};
use super::wire::{self, Msg};
use crate::types::{CommittedLeaderId, Member, TypeConfig, Vote};

/// Snapshot bytes for sending: the chunks of one snapshot, in order.
pub trait SnapshotSource {
    /// The next chunk, or `None` at the end.
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>>;
}

/// Snapshot bytes being received.
pub trait SnapshotSink<S> {
    fn write(&mut self, chunk: &[u8]) -> io::Result<()>;
    /// All bytes arrived: the snapshot data to install.
    fn finish(self: Box<Self>) -> io::Result<S>;
}

/// How the state machine's snapshot data `S` turns into bytes and back.
pub trait SnapshotTransfer<S>: 'static {
    fn source(&self, s: &S) -> io::Result<Box<dyn SnapshotSource>>;
    fn sink(&self) -> io::Result<Box<dyn SnapshotSink<S>>>;
}

/// openraft's network factory: one [`PeerNetwork`] per target member.
pub struct PeerNetworkFactory<S> {
    peers: Rc<Peers>,
    snapshots: Rc<dyn SnapshotTransfer<S>>,
}

impl<S> PeerNetworkFactory<S> {
    pub fn new(peers: Rc<Peers>, snapshots: Rc<dyn SnapshotTransfer<S>>) -> Self {
        PeerNetworkFactory { peers, snapshots }
    }
}

impl<S: 'static> RaftNetworkFactory<TypeConfig> for PeerNetworkFactory<S> {
    type Network = PeerNetwork<S>;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerNetwork<S> {
        self.peers.set_urls(target, &node.peer_urls);
        PeerNetwork { target, peers: self.peers.clone(), snapshots: self.snapshots.clone(), _s: PhantomData }
    }
}

/// The network to one target member.
pub struct PeerNetwork<S> {
    target: u64,
    peers: Rc<Peers>,
    snapshots: Rc<dyn SnapshotTransfer<S>>,
    _s: PhantomData<fn() -> S>,
}

fn rpc_err(e: CallError) -> RPCError<TypeConfig> {
    match e {
        CallError::Unreachable(..) | CallError::NotSent(..) => RPCError::Unreachable(Unreachable::from_string(e)),
        CallError::Timeout(..) | CallError::Remote(_) => RPCError::Network(NetworkError::from_string(e)),
    }
}

fn stream_err(e: CallError) -> StreamingError<TypeConfig> {
    match e {
        CallError::Unreachable(..) | CallError::NotSent(..) => StreamingError::Unreachable(Unreachable::from_string(e)),
        CallError::Timeout(..) | CallError::Remote(_) => StreamingError::Network(NetworkError::from_string(e)),
    }
}

fn decode_err(e: wire::WireError) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(e))
}

impl<S: 'static> PeerNetwork<S> {
    async fn call(&self, ty: u8, payload: &[u8], ttl: Duration) -> Result<Bytes, CallError> {
        self.peers.call(self.target, ty, payload, ttl).await
    }
}

impl<S: 'static> RaftNetworkV2<TypeConfig> for PeerNetwork<S> {
    type SnapshotData = S;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let p = self.call(Msg::APPEND, &wire::encode_append_request(&rpc), option.hard_ttl()).await.map_err(rpc_err)?;
        wire::decode_append_response(&p).map_err(decode_err)
    }

    fn stream_append<'s, St>(
        &'s mut self,
        input: St,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>>
    where
        St: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin + 'static,
    {
        let peers = self.peers.clone();
        let target = self.target;
        Box::pin(async move {
            let urls = peers.urls(target).unwrap_or_default();
            let addr = client::resolve(&urls).map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
            let stream = match client::connect(&peers.cfg, addr, wire::KIND_STREAM, target).await {
                Ok(s) => s,
                Err(e) => {
                    // openraft retries at once: pace reconnects to a down peer.
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    return Err(RPCError::Unreachable(Unreachable::from_string(e)));
                }
            };
            let s: BoxStream<'s, _> = Box::pin(append_stream(stream, input, option.hard_ttl()));
            Ok(s)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let p = self.call(Msg::VOTE, &wire::encode_vote_request(&rpc), option.hard_ttl()).await.map_err(rpc_err)?;
        wire::decode_vote_response(&p).map_err(decode_err)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let p = self.call(Msg::PRE_VOTE, &wire::encode_vote_request(&rpc), option.hard_ttl()).await.map_err(rpc_err)?;
        wire::decode_vote_response(&p).map_err(decode_err)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Msg::TRANSFER_LEADER, &wire::encode_transfer_leader(&req), option.hard_ttl())
            .await
            .map_err(rpc_err)?;
        Ok(Ok(()))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<CommittedLeaderId, u64, Member, S>,
        cancel: impl Future<Output = ReplicationClosed> + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let cancelled = Rc::new(Cell::new(None::<ReplicationClosed>));
        let flag = cancelled.clone();
        let watcher = glommio::spawn_local(async move {
            flag.set(Some(cancel.await));
        });
        let per_chunk = Duration::from_secs(10);
        let res = async {
            self.call(Msg::SNAPSHOT_BEGIN, &wire::encode_snapshot_begin(&vote, &snapshot.meta), per_chunk)
                .await
                .map_err(stream_err)?;
            let mut src = self.snapshots.source(&snapshot.snapshot).map_err(|e| {
                StreamingError::Network(NetworkError::from_string(format!("reading the snapshot: {e}")))
            })?;
            let mut offset = 0u64;
            let mut sent_chunks = 0u64;
            loop {
                if let Some(c) = cancelled.take() {
                    return Err(StreamingError::Closed(c));
                }
                let chunk = src.next_chunk().map_err(|e| {
                    StreamingError::Network(NetworkError::from_string(format!("reading the snapshot: {e}")))
                })?;
                let Some(chunk) = chunk else { break };
                let mut p = BytesMut::with_capacity(8 + chunk.len());
                p.extend_from_slice(&offset.to_le_bytes());
                p.extend_from_slice(&chunk);
                self.call(Msg::SNAPSHOT_CHUNK, &p, per_chunk).await.map_err(stream_err)?;
                offset += chunk.len() as u64;
                sent_chunks += 1;
                if sent_chunks % 8 == 0 {
                    glommio::yield_if_needed().await;
                }
            }
            // Installing may take a while on the follower (it rewrites its store).
            let p = self
                .call(Msg::SNAPSHOT_END, &offset.to_le_bytes(), Duration::from_secs(600))
                .await
                .map_err(stream_err)?;
            tracing::info!(peer = %format!("{:x}", self.target), bytes = offset, "sent a snapshot");
            wire::decode_snapshot_response(&p).map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
        }
        .await;
        drop(watcher);
        res
    }
}

/// Pipelined replication: requests are written as they come (many in
/// flight), results are read back in the same order.
fn append_stream<St>(
    stream: glommio::net::TcpStream,
    input: St,
    ttl: Duration,
) -> impl Stream<Item = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>
where
    St: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin + 'static,
{
    let (r, w) = futures_lite::io::split(stream);
    let sent = Rc::new(Cell::new(0u64));
    let input_done = Rc::new(Cell::new(false));
    let failed = Rc::new(Cell::new(false));
    // The writer pings the reader after each write and when it stops.
    let (ping, pings) = futures_channel::mpsc::unbounded::<()>();
    let writer = {
        let (sent, input_done, failed) = (sent.clone(), input_done.clone(), failed.clone());
        glommio::spawn_local(async move {
            let mut w = w;
            let mut input = input.ready_chunks(64);
            let mut buf = BytesMut::with_capacity(64 << 10);
            while let Some(batch) = input.next().await {
                buf.clear();
                for req in batch {
                    let seq = sent.get();
                    wire::put_frame(&mut buf, Msg::APPEND, seq, &wire::encode_append_request(&req));
                    sent.set(seq + 1);
                }
                if wire::write_all(&mut w, &buf).await.is_err() {
                    failed.set(true);
                    let _ = ping.unbounded_send(());
                    return;
                }
                let _ = ping.unbounded_send(());
            }
            input_done.set(true);
            let _ = ping.unbounded_send(());
        })
    };
    let state = (BufReader::with_capacity(64 << 10, r), 0u64, writer, pings);
    futures_util::stream::unfold(Some(state), move |st| {
        let (sent, input_done, failed) = (sent.clone(), input_done.clone(), failed.clone());
        async move {
            let (mut r, received, writer, mut pings) = st?;
            // Wait until there is something outstanding or the input ended.
            while received >= sent.get() {
                if input_done.get() || failed.get() {
                    return None;
                }
                // Nothing in flight: the next frame can only follow a write.
                pings.next().await?;
            }
            let frame = crate::runtime::timeout(ttl, wire::read_frame(&mut r)).await;
            let item = match frame {
                Err(_) => Err(RPCError::Network(NetworkError::from_string("append stream: no answer in time"))),
                Ok(Err(e)) => Err(RPCError::Unreachable(Unreachable::from_string(format!("append stream: {e}")))),
                Ok(Ok(None)) => Err(RPCError::Unreachable(Unreachable::from_string("append stream closed by the peer"))),
                Ok(Ok(Some(f))) if f.id != received => Err(RPCError::Network(NetworkError::from_string(format!(
                    "append stream out of order: got {}, expected {received}",
                    f.id
                )))),
                Ok(Ok(Some(f))) => match wire::decode_stream_item(&f.payload) {
                    Ok(Ok(res)) => Ok(res),
                    Ok(Err(fatal)) => {
                        Err(RPCError::Unreachable(Unreachable::from_string(format!("peer stopped: {fatal}"))))
                    }
                    Err(e) => Err(decode_err(e)),
                },
            };
            let next = match &item {
                Ok(Ok(_)) => Some((r, received + 1, writer, pings)),
                _ => None,
            };
            Some((item, next))
        }
    })
}

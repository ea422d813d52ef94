//! The member: its raft group, its store, its identity, and the operations
//! the gRPC services are built from (propose, linearizable read, status).
//! Lives on the raft core's executor.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use ironcd_engine::btree::{Db, Snapshot, PAGE_SIZE};
use ironcd_engine::mvcc::{KvReader, KvStore};
use ironcd_raft_net::peer::{CallError, Peers};
use ironcd_raft_net::{runtime, Raft, Request};
use bytes::Bytes;
use futures_channel::oneshot;
use futures_util::future::Either;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ReadPolicy;
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::alarm;
use crate::config::Config;
use crate::convert::HeaderInfo;
use crate::error;
use crate::lessor::Lessor;
use crate::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use crate::pb::ironcdpb::{raft_request, RaftRequest};
use crate::peer_service::{self, PeerMsg};
use crate::state_machine::{Ahead, Applied, StateMachine, Waiters};

/// Whether a call asks, with etcd's `hasleader` metadata (a header), to fail
/// fast when the member has no leader.
pub fn wants_leader(headers: &http::HeaderMap) -> bool {
    headers.get("hasleader").is_some_and(|v| v == "true")
}

pub type MemberRaft = Raft<StateMachine>;

/// Keys a compaction step removes at most (bounds the pause it causes).
const COMPACTION_BATCH: usize = 1000;
/// How often an idle compactor looks for scheduled work.
const COMPACTOR_IDLE: Duration = Duration::from_millis(50);
/// Compaction steps between two store syncs (measured in the space bench:
/// syncing every 10 steps cut the file's growth during a compaction ~16×).
const COMPACTION_SYNC_STEPS: u64 = 10;

pub struct EtcdServer {
    pub raft: MemberRaft,
    pub kv: Arc<KvStore<Db>>,
    pub member_id: u64,
    pub cluster_id: u64,
    pub cfg: Config,
    pub lessor: Rc<Lessor>,
    next_id: Cell<u64>,
    /// Bytes of the store in use (pages not free), refreshed by
    /// [`Self::start_space_monitor`].
    pub space_in_use: Cell<u64>,
    /// Connections to the other members.
    pub peers: Rc<Peers>,
    /// Proposals forwarded to the leader, waiting for their local apply,
    /// and a lone voter's own proposals, waiting to be published when their
    /// write is durable (`Ahead::publish_at_durability`).
    pub waiters: Waiters,
    ahead: Rc<Ahead>,
    /// Linearizable reads waiting for the next read index (one leadership
    /// confirmation serves every read that arrived before it started).
    reads: RefCell<Vec<oneshot::Sender<Result<u64, Status>>>>,
    reading: Cell<bool>,
    me: RefCell<Weak<EtcdServer>>,
    /// The request timeout of proposals and linearizable reads, shared at
    /// a grain of [`DEADLINE_GRAIN`].
    deadlines: runtime::Deadlines,
}

/// How late a request may time out, at most, past its request timeout:
/// requests that start within this much of each other share one timer.
const DEADLINE_GRAIN: Duration = Duration::from_millis(100);

/// etcd's request timeout for an election timeout in ms: 5 s plus two
/// election timeouts.
fn request_timeout(election_timeout_ms: u64) -> Duration {
    Duration::from_millis(5000 + 2 * election_timeout_ms)
}

/// Removes a forwarded proposal's waiter however the wait ends.
struct WaiterGuard<'a>(&'a Waiters, u64);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.borrow_mut().remove(&self.1);
    }
}

impl EtcdServer {
    pub fn new(
        raft: MemberRaft,
        kv: Arc<KvStore<Db>>,
        member_id: u64,
        cluster_id: u64,
        cfg: Config,
        lessor: Rc<Lessor>,
        peers: Rc<Peers>,
        waiters: Waiters,
        ahead: Rc<Ahead>,
    ) -> Self {
        // Proposal ids: member id in the high bits, like etcd's idutil.
        let first = (member_id << 48)
            | (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64 & ((1 << 40) - 1))
                .unwrap_or(0)
                << 8);
        EtcdServer {
            raft,
            kv,
            member_id,
            cluster_id,
            lessor,
            next_id: Cell::new(first),
            space_in_use: Cell::new(0),
            peers,
            waiters,
            ahead,
            reads: RefCell::default(),
            reading: Cell::new(false),
            me: RefCell::default(),
            deadlines: runtime::Deadlines::new(request_timeout(cfg.election_timeout), DEADLINE_GRAIN),
            cfg,
        }
    }

    /// Records the server's own `Rc` (for tasks it spawns).
    pub fn set_self(self: &Rc<Self>) {
        *self.me.borrow_mut() = Rc::downgrade(self);
    }

    /// Tells the peer transport where `id` listens, from the membership.
    pub fn locate(&self, id: u64) {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        if let Some(node) = m.membership().get_node(&id) {
            self.peers.set_urls(id, &node.peer_urls);
        }
    }

    /// Calls the leader with one of the server's peer requests; `Ok(None)`
    /// when this member is (or just became) the leader: serve it locally.
    pub async fn call_leader(&self, msg: PeerMsg, payload: &[u8]) -> Result<Option<Bytes>, Status> {
        let deadline = std::time::Instant::now() + self.request_timeout();
        loop {
            let leader = self.wait_leader(deadline).await?;
            if leader == self.member_id {
                return Ok(None);
            }
            self.locate(leader);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.peers.call(leader, msg as u8, payload, left).await {
                Ok(b) => return Ok(Some(b)),
                Err(CallError::Remote(m)) if m == error::NOT_LEADER => {}
                Err(CallError::Remote(m)) => return Err(peer_service::status_from_remote(&m)),
                Err(CallError::Timeout(..)) => return Err(error::timeout()),
                Err(CallError::Unreachable(_, e) | CallError::NotSent(_, e)) => {
                    tracing::debug!(leader = %format!("{leader:x}"), error = %e, "leader unreachable");
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(error::timeout());
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The current leader, waiting (until `deadline`) while there is none.
    pub async fn wait_leader(&self, deadline: std::time::Instant) -> Result<u64, Status> {
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if std::time::Instant::now() >= deadline {
                return Err(error::timeout());
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// etcd's request timeout: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        request_timeout(self.cfg.election_timeout)
    }

    pub fn header_info(&self) -> HeaderInfo {
        let term = self.raft.metrics().borrow_watched().current_term;
        HeaderInfo {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            raft_term: term,
        }
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// etcd's `hasleader` metadata: fail fast when the member has no leader.
    pub fn check_has_leader(&self, md: &MetadataMap) -> Result<(), Status> {
        self.check_leader(wants_leader(md.as_ref()))
    }

    /// [`EtcdServer::check_has_leader`] with the metadata already read.
    pub fn check_leader(&self, wanted: bool) -> Result<(), Status> {
        if wanted && self.leader().is_none() {
            return Err(error::no_leader());
        }
        Ok(())
    }

    /// etcd's space quota, checked before proposing a write that adds data:
    /// fails while NOSPACE is raised, and raises it (through raft) when the
    /// store would grow past `--quota-backend-bytes`.
    pub async fn check_space(&self, request_bytes: usize) -> Result<(), Status> {
        // The raw store snapshot: no MVCC state to load on every write.
        if alarm::no_space(&ironcd_engine::kv::Store::snapshot(self.kv.store())) {
            return Err(alarm::no_space_error());
        }
        let quota = match self.cfg.quota_backend_bytes {
            q if q <= 0 => alarm::DEFAULT_QUOTA,
            q => q as u64,
        };
        if self.space_in_use.get() + request_bytes as u64 > quota {
            let raise = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.member_id,
                alarm: AlarmType::Nospace as i32,
            };
            tracing::warn!(quota_bytes = quota, in_use_bytes = self.space_in_use.get(), "database space exceeded");
            let _ = self.propose(raft_request::Request::Alarm(raise)).await;
            return Err(alarm::no_space_error());
        }
        Ok(())
    }

    /// Keeps [`Self::space_in_use`] current (every 100 ms).
    pub fn start_space_monitor(self: &Rc<Self>) {
        let srv = Rc::downgrade(self);
        glommio::spawn_local(async move {
            loop {
                let Some(s) = srv.upgrade() else { return };
                if let Ok(st) = s.kv.store().stats() {
                    let free = st.free_pages + st.pending_pages;
                    s.space_in_use.set(st.high_water.saturating_sub(free) * PAGE_SIZE as u64);
                }
                drop(s);
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        })
        .detach();
    }

    /// Refuses requests larger than `--max-request-bytes`, as etcd does.
    pub fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        let grpc_max = self.cfg.max_request_bytes as usize + crate::v3rpc::GRPC_OVERHEAD;
        if encoded_len > grpc_max {
            // What grpc-go's server answers before etcd sees the request.
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({encoded_len} vs. {grpc_max})"
            )));
        }
        if encoded_len > self.cfg.max_request_bytes as usize {
            return Err(error::request_too_large());
        }
        Ok(())
    }

    /// Proposes one request through raft and waits for its applied result.
    /// On a follower the request is forwarded to the leader and the result
    /// is this member's own apply of it (so the follower reads its write next).
    pub async fn propose(&self, req: raft_request::Request) -> Result<Applied, Status> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let msg = RaftRequest {
            id,
            request: Some(req),
        };
        self.check_size(msg.encoded_len())?;
        let bytes = Bytes::from(msg.encode_to_vec());
        match self.deadlines.bound(self.propose_bytes(id, bytes)).await {
            Err(_) => Err(error::timeout()),
            Ok(r) => r,
        }
    }

    async fn propose_bytes(&self, id: u64, bytes: Bytes) -> Result<Applied, Status> {
        let deadline = std::time::Instant::now() + self.request_timeout();
        loop {
            let leader = self.wait_leader(deadline).await?;
            if leader != self.member_id {
                // Boxed: the peer call's future is large and a leader never
                // runs it; unboxed, every proposal's future carried it
                // (docs/server.md, "Future sizes").
                match Box::pin(self.forward(leader, id, &bytes)).await {
                    // Not sent (the leader is down or unknown): wait for
                    // the next leader, like a proposal on a leaderless member.
                    Err(None) => {
                        if std::time::Instant::now() >= deadline {
                            return Err(error::timeout());
                        }
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(Some(s)) => return Err(s),
                    Ok(a) => return Ok(a),
                }
            }
            let written = if self.ahead.answers_at_durability() {
                // The only voter: the result may come when the entry is
                // durable, before openraft's core has seen it committed.
                let (tx, rx) = oneshot::channel();
                self.waiters.borrow_mut().insert(id, tx);
                let _guard = WaiterGuard(&self.waiters, id);
                let write = std::pin::pin!(self.raft.client_write(Request(bytes.clone())));
                match futures_util::future::select(write, rx).await {
                    Either::Right((Ok(applied), _)) => return Ok(applied),
                    Either::Right((Err(_), write)) => write.await,
                    Either::Left((r, _)) => r,
                }
            } else {
                self.raft.client_write(Request(bytes.clone())).await
            };
            match written {
                Ok(r) => {
                    return r.data.take::<Applied>().ok_or_else(|| Status::internal("apply returned no result"));
                }
                // Leadership moved before the entry was appended: go again.
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                Err(RaftError::APIError(e)) => return Err(Status::unavailable(format!("etcdserver: {e}"))),
                Err(RaftError::Fatal(e)) => {
                    tracing::error!(error = %e, "raft stopped");
                    return Err(error::stopped());
                }
            }
        }
    }

    /// Forwards a proposal to the leader; `Err(None)` when it was not sent.
    async fn forward(&self, leader: u64, id: u64, bytes: &Bytes) -> Result<Applied, Option<Status>> {
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(id, tx);
        let _guard = WaiterGuard(&self.waiters, id);
        self.locate(leader);
        match self.peers.call(leader, PeerMsg::Propose as u8, bytes, self.request_timeout()).await {
            Ok(_) => {}
            // The leader refused it before proposing: safe to send again.
            Err(CallError::Remote(m)) if m == error::NOT_LEADER => return Err(None),
            Err(CallError::NotSent(..)) => return Err(None),
            Err(CallError::Remote(m)) => return Err(Some(peer_service::status_from_remote(&m))),
            Err(CallError::Timeout(..)) => return Err(Some(error::timeout())),
            Err(CallError::Unreachable(..)) => return Err(Some(Status::unavailable(error::LEADER_CHANGED))),
        }
        // Committed and applied on the leader: wait for the local apply.
        rx.await.map_err(|_| Some(error::stopped()))
    }

    /// Waits until a read here reflects every write acknowledged before the
    /// call (etcd's linearizable read: a read index from the leader, then
    /// this member's apply catching up to it).
    pub async fn linearize(&self) -> Result<(), Status> {
        let fut = async {
            let index = self.read_index().await?;
            let applied = self.raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index);
            if index > applied {
                // Boxed, and only when the apply lags: openraft's wait
                // future is large (docs/server.md, "Future sizes").
                Box::pin(
                    self.raft
                        .wait(Some(self.request_timeout()))
                        .applied_index_at_least(Some(index), "linearizable read"),
                )
                .await
                .map_err(|_| error::timeout())?;
            }
            Ok::<(), Status>(())
        };
        match self.deadlines.bound(fut).await {
            Ok(r) => r,
            Err(_) => Err(error::timeout()),
        }
    }

    /// A read index, shared by every caller that arrives while the previous
    /// one is being obtained.
    async fn read_index(&self) -> Result<u64, Status> {
        let (tx, rx) = oneshot::channel();
        self.reads.borrow_mut().push(tx);
        if !self.reading.get() {
            if let Some(me) = self.me.borrow().upgrade() {
                self.reading.set(true);
                glommio::spawn_local(async move {
                    loop {
                        let batch = std::mem::take(&mut *me.reads.borrow_mut());
                        if batch.is_empty() {
                            break;
                        }
                        let r = me.obtain_read_index().await;
                        for w in batch {
                            let _ = w.send(r.clone());
                        }
                    }
                    me.reading.set(false);
                })
                .detach();
            }
        }
        rx.await.map_err(|_| error::stopped())?
    }

    /// One read index: from openraft on the leader (leadership confirmed by
    /// a quorum), from the leader over the peer transport on a follower.
    pub async fn obtain_read_index(&self) -> Result<u64, Status> {
        if let Some(b) = self.call_leader(PeerMsg::ReadIndex, &[]).await? {
            return b
                .get(..8)
                .map(|x| u64::from_le_bytes(x.try_into().unwrap_or_default()))
                .ok_or_else(|| Status::internal("malformed read index from the leader"));
        }
        let lin = self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await.map_err(|e| match e {
            RaftError::APIError(_) => Status::unavailable(error::LEADER_CHANGED),
            RaftError::Fatal(_) => error::stopped(),
        })?;
        let index = lin.read_log_id().index();
        lin.try_await_ready(&self.raft, None)
            .await
            .map_err(|_| error::stopped())?
            .map_err(|_| error::timeout())?;
        Ok(index)
    }

    /// Runs scheduled compactions in bounded steps on this executor, so
    /// writes never stall behind a large compaction.
    pub fn start_compactor(self: &Rc<Self>) {
        let kv = self.kv.clone();
        glommio::spawn_local(async move {
            let mut steps = 0u64;
            loop {
                let pending = kv.read().map(|r| r.compaction_pending()).unwrap_or(false);
                if !pending {
                    glommio::timer::sleep(COMPACTOR_IDLE).await;
                    continue;
                }
                let step = kv.write().and_then(|mut w| {
                    let s = w.compact_step(COMPACTION_BATCH)?;
                    w.commit()?;
                    Ok(s)
                });
                steps += 1;
                let done = matches!(step, Ok(ironcd_engine::mvcc::CompactStep::Done));
                match step {
                    // The pages the compaction copied stay pinned by the last
                    // durable state until the next sync: sync at the end and
                    // every few steps (off the raft core) so they can be
                    // reused while the compaction goes on.
                    Err(e) => {
                        tracing::error!(error = %e, "compaction step failed");
                        glommio::timer::sleep(COMPACTOR_IDLE).await;
                    }
                    Ok(_) if done || steps % COMPACTION_SYNC_STEPS == 0 => {
                        let kv = kv.clone();
                        let synced = glommio::executor().spawn_blocking(move || ironcd_engine::kv::Store::sync(kv.store())).await;
                        if let Err(e) = synced {
                            tracing::error!(error = %e, "syncing the store after a compaction failed");
                        }
                    }
                    Ok(_) => {}
                }
                // Let requests run between steps.
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }

    /// Waits (bounded) until no scheduled compaction is left, for `physical` compactions.
    pub async fn wait_compacted(&self) -> Result<(), Status> {
        let deadline = std::time::Instant::now() + self.request_timeout();
        while self.reader()?.compaction_pending() {
            if std::time::Instant::now() > deadline {
                return Err(error::timeout());
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// A reader over the newest published state.
    pub fn reader(&self) -> Result<KvReader<Snapshot>, Status> {
        self.kv.read().map_err(error::mvcc)
    }
}

//! The member: its raft group, its store, its identity, and the operations
//! the gRPC services are built from (propose, linearizable read, status).
//! Lives on the raft core's executor.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ironcd_engine::btree::{Db, Snapshot, PAGE_SIZE};
use ironcd_engine::mvcc::{KvReader, KvStore};
use ironcd_raft_net::{Raft, Request};
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
use crate::state_machine::{Applied, StateMachine};

pub type MemberRaft = Raft<StateMachine>;

/// Keys a compaction step removes at most (bounds the pause it causes).
const COMPACTION_BATCH: usize = 1000;
/// How often an idle compactor looks for scheduled work.
const COMPACTOR_IDLE: Duration = Duration::from_millis(50);

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
}

impl EtcdServer {
    pub fn new(
        raft: MemberRaft,
        kv: Arc<KvStore<Db>>,
        member_id: u64,
        cluster_id: u64,
        cfg: Config,
        lessor: Rc<Lessor>,
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
            cfg,
            lessor,
            next_id: Cell::new(first),
            space_in_use: Cell::new(0),
        }
    }

    /// etcd's request timeout: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(5000 + 2 * self.cfg.election_timeout)
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
        if md.get("hasleader").is_some_and(|v| v == "true") && self.leader().is_none() {
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
    pub async fn propose(&self, req: raft_request::Request) -> Result<Applied, Status> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let msg = RaftRequest {
            id,
            request: Some(req),
        };
        self.check_size(msg.encoded_len())?;
        let bytes = msg.encode_to_vec();
        let write = self.raft.client_write(Request(bytes.into()));
        let resp = match glommio::timer::timeout(self.request_timeout(), async { Ok(write.await) })
            .await
        {
            Err(_) => return Err(error::timeout()),
            Ok(r) => r,
        };
        match resp {
            Ok(r) => r
                .data
                .take::<Applied>()
                .ok_or_else(|| Status::internal("apply returned no result")),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                if f.leader_id.is_none() {
                    Err(error::no_leader())
                } else {
                    Err(Status::failed_precondition(error::NOT_LEADER))
                }
            }
            Err(RaftError::APIError(e)) => Err(Status::unavailable(format!("etcdserver: {e}"))),
            Err(RaftError::Fatal(e)) => {
                tracing::error!(error = %e, "raft stopped");
                Err(error::stopped())
            }
        }
    }

    /// Waits until a read here reflects every write acknowledged before the
    /// call (etcd's linearizable read: a read index from the leader).
    pub async fn linearize(&self) -> Result<(), Status> {
        let raft = self.raft.clone();
        let fut = async move {
            let lin = raft
                .get_read_linearizer(ReadPolicy::ReadIndex)
                .await
                .map_err(|e| match e {
                    RaftError::APIError(_) => error::no_leader(),
                    RaftError::Fatal(_) => error::stopped(),
                })?;
            lin.try_await_ready(&raft, None)
                .await
                .map_err(|_| error::stopped())?
                .map_err(|_| error::timeout())?;
            Ok::<(), Status>(())
        };
        match glommio::timer::timeout(self.request_timeout(), async { Ok(fut.await) }).await {
            Ok(r) => r,
            Err(_) => Err(error::timeout()),
        }
    }

    /// Runs scheduled compactions in bounded steps on this executor, so
    /// writes never stall behind a large compaction.
    pub fn start_compactor(self: &Rc<Self>) {
        let kv = self.kv.clone();
        glommio::spawn_local(async move {
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
                match step {
                    // The pages the compaction copied stay pinned by the last
                    // durable state until the next sync: sync now (off the
                    // raft core) so they can be reused.
                    Ok(ironcd_engine::mvcc::CompactStep::Done) => {
                        let kv = kv.clone();
                        let synced = glommio::executor().spawn_blocking(move || ironcd_engine::kv::Store::sync(kv.store())).await;
                        if let Err(e) = synced {
                            tracing::error!(error = %e, "syncing the store after a compaction failed");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "compaction step failed");
                        glommio::timer::sleep(COMPACTOR_IDLE).await;
                    }
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

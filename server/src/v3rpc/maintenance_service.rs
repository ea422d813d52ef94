//! etcd's Maintenance service. Built: Status, Hash, HashKV, Defragment,
//! Alarm (with the space quota, `alarm.rs`), Snapshot, MoveLeader.

use std::rc::Rc;

use ironcd_engine::btree::PAGE_SIZE;
use ironcd_engine::kv::Store;
use openraft::async_runtime::WatchReceiver;
use send_wrapper::SendWrapper;
use tonic::{Request, Response, Status};

use crate::alarm;
use crate::config::ETCD_VERSION;
use crate::error;
use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::ironcdpb::raft_request::Request as Req;
use crate::snapshot::SnapshotWriter;
use crate::state_machine::Applied;

/// tonic's boxed server stream (what its generated default methods use).
type SnapshotStream = tonic::codegen::BoxStream<pb::SnapshotResponse>;

enum SnapState {
    Streaming(Box<SnapshotWriter>),
    Done,
}

#[derive(Clone)]
pub struct MaintenanceService {
    srv: SendWrapper<Rc<EtcdServer>>,
}

impl MaintenanceService {
    pub fn new(srv: Rc<EtcdServer>) -> Self {
        MaintenanceService {
            srv: SendWrapper::new(srv),
        }
    }
}

impl EtcdServer {
    fn status(&self) -> Result<pb::StatusResponse, Status> {
        let m = self.raft.metrics().borrow_watched().clone();
        let stats = self
            .kv
            .store()
            .stats()
            .map_err(|e| Status::unknown(e.to_string()))?;
        let free = stats.free_pages + stats.pending_pages;
        let revision = self.reader()?.revision();
        let info = self.header_info();
        Ok(pb::StatusResponse {
            header: info.header(revision),
            version: ETCD_VERSION.to_string(),
            db_size: stats.file_len as i64,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: alarm::list(self.reader()?.view()).iter().map(alarm::describe).collect(),
            db_size_in_use: (stats.high_water.saturating_sub(free) * PAGE_SIZE as u64) as i64,
            is_learner: self.is_learner(),
        })
    }

    /// etcd's MoveLeader: only the leader may move leadership, and only to a
    /// voting member; waits (bounded) until the target leads.
    async fn move_leader(&self, target: u64) -> Result<pb::MoveLeaderResponse, Status> {
        if self.leader() != Some(self.member_id) {
            return Err(Status::failed_precondition(crate::error::NOT_LEADER));
        }
        let is_voter = self.members().iter().any(|m| m.id == target && !m.is_learner);
        if !is_voter {
            return Err(Status::failed_precondition("etcdserver: bad leader transferee"));
        }
        if target != self.member_id {
            self.raft.trigger().transfer_leader(target).await.map_err(|_| crate::error::stopped())?;
            let deadline = std::time::Instant::now() + self.request_timeout();
            while self.leader() != Some(target) {
                if std::time::Instant::now() > deadline {
                    return Err(Status::unavailable("etcdserver: request timed out, leader transfer took too long"));
                }
                glommio::timer::sleep(std::time::Duration::from_millis(self.cfg.heartbeat_interval)).await;
            }
        }
        Ok(pb::MoveLeaderResponse { header: self.header_info().header(self.reader()?.revision()) })
    }

    /// GET lists every raised alarm; ACTIVATE and DEACTIVATE go through raft.
    async fn alarm(&self, r: pb::AlarmRequest) -> Result<pb::AlarmResponse, Status> {
        let mut resp = if r.action == pb::alarm_request::AlarmAction::Get as i32 {
            let reader = self.reader()?;
            pb::AlarmResponse { header: None, alarms: alarm::list(reader.view()) }
        } else {
            match self.propose(Req::Alarm(r)).await? {
                Applied::Alarm(res) => res.map_err(error::mvcc)?,
                other => return Err(Status::internal(format!("unexpected apply result {other:?}"))),
            }
        };
        resp.header = self.header_info().header(self.reader()?.revision());
        Ok(resp)
    }

    fn hash(&self) -> Result<pb::HashResponse, Status> {
        let r = self.reader()?;
        let h = r.hash().map_err(error::mvcc)?;
        Ok(pb::HashResponse {
            header: self.header_info().header(r.revision()),
            hash: h.hash,
        })
    }

    fn hash_kv(&self, rev: i64) -> Result<pb::HashKvResponse, Status> {
        let r = self.reader()?;
        let h = r.hash_kv(rev).map_err(error::mvcc)?;
        Ok(pb::HashKvResponse {
            header: self.header_info().header(h.header.revision),
            hash: h.hash,
            compact_revision: h.compact_revision,
        })
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// A consistent copy of the store, then its SHA-256 (`snapshot.rs`).
    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let srv = self.srv.clone();
        let writer = SendWrapper::new(async move {
            let snap = srv.kv.store().snapshot();
            SnapshotWriter::new(snap).map_err(Status::internal)
        })
        .await?;
        tracing::info!(
            total_bytes = writer.total(),
            "sending database snapshot to client"
        );
        let stream = futures_util::stream::unfold(
            SnapState::Streaming(Box::new(writer)),
            |state| async move {
                let SnapState::Streaming(mut w) = state else {
                    return None;
                };
                match w.next_chunk() {
                    Ok(Some((blob, remaining))) => Some((
                        Ok(pb::SnapshotResponse {
                            header: None,
                            remaining_bytes: remaining,
                            blob,
                        }),
                        SnapState::Streaming(w),
                    )),
                    Ok(None) => {
                        let sha = w.checksum();
                        Some((
                            Ok(pb::SnapshotResponse {
                                header: None,
                                remaining_bytes: 0,
                                blob: sha.to_vec(),
                            }),
                            SnapState::Done,
                        ))
                    }
                    Err(e) => Some((Err(Status::internal(e)), SnapState::Done)),
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move { srv.status().map(Response::new) }).await
    }

    async fn hash(
        &self,
        _req: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move { srv.hash().map(Response::new) }).await
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let srv = self.srv.clone();
        let rev = req.into_inner().revision;
        SendWrapper::new(async move { srv.hash_kv(rev).map(Response::new) }).await
    }

    /// The store reuses freed pages online and never needs an offline
    /// defragmentation; this makes the store durable and succeeds.
    async fn defragment(
        &self,
        _req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            srv.kv
                .store()
                .sync()
                .map_err(|e| Status::unknown(e.to_string()))?;
            let rev = srv.reader()?.revision();
            Ok(Response::new(pb::DefragmentResponse {
                header: srv.header_info().header(rev),
            }))
        })
        .await
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let srv = self.srv.clone();
        let target = req.into_inner().target_id;
        SendWrapper::new(async move { srv.move_leader(target).await.map(Response::new) }).await
    }

    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let srv = self.srv.clone();
        let r = req.into_inner();
        SendWrapper::new(async move { srv.alarm(r).await.map(Response::new) }).await
    }
}

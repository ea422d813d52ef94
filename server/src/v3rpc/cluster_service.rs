//! etcd's Cluster service: MemberList, MemberAdd (voters and learners),
//! MemberRemove, MemberUpdate, MemberPromote. Membership changes run on
//! the leader (a follower forwards them) as openraft membership changes;
//! a member's name and client URLs are its published attributes
//! (`MemberAttributes` in the store's members tree), as etcd publishes them.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ironcd_engine::kv::{ReadView, Store, Tree};
use ironcd_raft_net::Member;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use prost::Message;
use send_wrapper::SendWrapper;
use tonic::{Request, Response, Status};

use crate::error;
use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::ironcdpb::MemberAttributes;
use crate::peer_service::PeerMsg;

pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
pub const BAD_URLS: &str = "etcdserver: given member URLs are invalid";
pub const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const NOT_ENOUGH_STARTED: &str = "etcdserver: re-configuration failed due to not enough started members";
pub const LEARNER_NOT_READY: &str = "etcdserver: can only promote a learner member which is in sync with leader";

#[derive(Clone)]
pub struct ClusterService {
    srv: SendWrapper<Rc<EtcdServer>>,
}

impl ClusterService {
    pub fn new(srv: Rc<EtcdServer>) -> Self {
        ClusterService {
            srv: SendWrapper::new(srv),
        }
    }
}

fn change_err(e: RaftError<ironcd_raft_net::TypeConfig, ClientWriteError<ironcd_raft_net::TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Status::unavailable(error::LEADER_CHANGED),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!("etcdserver: {e}"))
        }
        RaftError::APIError(e) => Status::unavailable(format!("etcdserver: {e}")),
        RaftError::Fatal(_) => error::stopped(),
    }
}

impl EtcdServer {
    /// The members of the membership in force, in member-id order, with
    /// their published attributes.
    pub fn members(&self) -> Vec<pb::Member> {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let voters: BTreeSet<u64> = m.membership().voter_ids().collect();
        let snap = self.kv.store().snapshot();
        m.membership()
            .nodes()
            .map(|(id, node)| {
                let attrs = snap
                    .get(Tree::Members, &id.to_be_bytes())
                    .ok()
                    .flatten()
                    .and_then(|b| MemberAttributes::decode(b).ok())
                    .unwrap_or_default();
                pb::Member {
                    id: *id,
                    name: attrs.name,
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: attrs.client_urls,
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    /// Publishes this member's name and client URLs through raft (etcd's
    /// `publish`), retrying until it succeeds or `stop` says so.
    pub async fn publish(&self, name: &str, client_urls: &[String]) -> Result<(), Status> {
        let current = self.members().into_iter().find(|m| m.id == self.member_id);
        if current.is_some_and(|m| m.name == name && m.client_ur_ls == client_urls) {
            return Ok(());
        }
        let req = MemberAttributes { id: self.member_id, name: name.to_string(), client_urls: client_urls.to_vec() };
        match self.propose(crate::pb::ironcdpb::raft_request::Request::MemberAttributes(req)).await? {
            crate::state_machine::Applied::MemberAttributes(Err(e)) => Err(error::mvcc(e)),
            _ => Ok(()),
        }
    }

    /// Whether this member is a learner in the membership in force.
    pub fn is_learner(&self) -> bool {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        m.membership().get_node(&self.member_id).is_some() && !m.membership().voter_ids().any(|v| v == self.member_id)
    }

    fn leads(&self) -> bool {
        self.leader() == Some(self.member_id)
    }

    /// Voters that acked the leader's heartbeat within an election timeout
    /// (itself included): etcd's "started" members for its strict reconfig
    /// check.
    fn active_voters(&self) -> BTreeSet<u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        let window = Duration::from_millis(self.cfg.election_timeout.max(3 * self.cfg.heartbeat_interval));
        let now = Instant::now();
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|id| {
                *id == self.member_id
                    || m.heartbeat.as_ref().and_then(|h| h.get(id).cloned().flatten()).is_some_and(|t| {
                        let t: Instant = t.into_inner();
                        now.saturating_duration_since(t) < window
                    })
            })
            .collect()
    }

    fn list_response(&self) -> Vec<pb::Member> {
        self.members()
    }

    pub async fn member_add_local(&self, r: pb::MemberAddRequest) -> Result<pb::MemberAddResponse, Status> {
        if !self.leads() {
            return Err(Status::failed_precondition(error::NOT_LEADER));
        }
        if r.peer_ur_ls.is_empty() || r.peer_ur_ls.iter().any(|u| crate::transport::parse_url(u).is_err()) {
            return Err(Status::invalid_argument(BAD_URLS));
        }
        let existing = self.members();
        if existing.iter().any(|m| m.peer_ur_ls.iter().any(|u| r.peer_ur_ls.contains(u))) {
            return Err(Status::failed_precondition(PEER_URL_EXISTS));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let id = crate::membership::member_id(&r.peer_ur_ls, &self.cfg.initial_cluster_token, Some(now));
        if !r.is_learner {
            // etcd's strict reconfig check: the started voters must form a
            // quorum of the grown cluster (the new member has not started).
            let voters = existing.iter().filter(|m| !m.is_learner).count() + 1;
            if self.active_voters().len() < voters / 2 + 1 {
                return Err(Status::failed_precondition(NOT_ENOUGH_STARTED));
            }
        }
        let node = Member { name: String::new(), peer_urls: r.peer_ur_ls.clone(), client_urls: Vec::new() };
        self.raft.add_learner(id, node, false).await.map_err(change_err)?;
        if !r.is_learner {
            let voter = self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true).await;
            if let Err(e) = voter {
                // Keep `member add` all or nothing: drop the learner again.
                let undo = self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await;
                if let Err(u) = undo {
                    tracing::warn!(member = %format!("{id:x}"), error = %u, "could not undo a failed member add");
                }
                return Err(change_err(e));
            }
        }
        tracing::info!(member = %format!("{id:x}"), peer_urls = ?r.peer_ur_ls, learner = r.is_learner, "added member");
        Ok(pb::MemberAddResponse {
            header: self.header_info().header(0),
            member: Some(pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: r.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: r.is_learner,
            }),
            members: self.list_response(),
        })
    }

    pub async fn member_remove_local(&self, r: pb::MemberRemoveRequest) -> Result<pb::MemberRemoveResponse, Status> {
        if !self.leads() {
            return Err(Status::failed_precondition(error::NOT_LEADER));
        }
        let Some(m) = self.members().into_iter().find(|m| m.id == r.id) else {
            return Err(Status::not_found(MEMBER_NOT_FOUND));
        };
        if !m.is_learner {
            // etcd's check: the started voters left must form a quorum.
            let left = self.members().iter().filter(|x| !x.is_learner && x.id != r.id).count();
            let active = self.active_voters().into_iter().filter(|x| *x != r.id).count();
            if active < left / 2 + 1 {
                return Err(Status::failed_precondition(NOT_ENOUGH_STARTED));
            }
        }
        let change = if m.is_learner {
            ChangeMembers::RemoveNodes(BTreeSet::from([r.id]))
        } else {
            ChangeMembers::RemoveVoters(BTreeSet::from([r.id]))
        };
        self.raft.change_membership(change, false).await.map_err(change_err)?;
        self.peers.forget(r.id);
        tracing::info!(member = %format!("{:x}", r.id), "removed member");
        Ok(pb::MemberRemoveResponse { header: self.header_info().header(0), members: self.list_response() })
    }

    pub async fn member_update_local(&self, r: pb::MemberUpdateRequest) -> Result<pb::MemberUpdateResponse, Status> {
        if !self.leads() {
            return Err(Status::failed_precondition(error::NOT_LEADER));
        }
        if r.peer_ur_ls.is_empty() || r.peer_ur_ls.iter().any(|u| crate::transport::parse_url(u).is_err()) {
            return Err(Status::invalid_argument(BAD_URLS));
        }
        let members = self.members();
        if !members.iter().any(|m| m.id == r.id) {
            return Err(Status::not_found(MEMBER_NOT_FOUND));
        }
        if members.iter().any(|m| m.id != r.id && m.peer_ur_ls.iter().any(|u| r.peer_ur_ls.contains(u))) {
            return Err(Status::failed_precondition(PEER_URL_EXISTS));
        }
        let node = Member { name: String::new(), peer_urls: r.peer_ur_ls.clone(), client_urls: Vec::new() };
        self.raft
            .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(r.id, node)])), true)
            .await
            .map_err(change_err)?;
        self.peers.set_urls(r.id, &r.peer_ur_ls);
        Ok(pb::MemberUpdateResponse { header: self.header_info().header(0), members: self.list_response() })
    }

    pub async fn member_promote_local(
        &self,
        r: pb::MemberPromoteRequest,
    ) -> Result<pb::MemberPromoteResponse, Status> {
        if !self.leads() {
            return Err(Status::failed_precondition(error::NOT_LEADER));
        }
        let Some(m) = self.members().into_iter().find(|m| m.id == r.id) else {
            return Err(Status::not_found(MEMBER_NOT_FOUND));
        };
        if !m.is_learner {
            return Err(Status::failed_precondition(NOT_LEARNER));
        }
        // etcd: the learner's match index must be at least 90% of the leader's.
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader_last = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&m.id).cloned().flatten())
            .map_or(0, |l| l.index);
        if (matched as f64) < leader_last as f64 * 0.9 {
            return Err(Status::failed_precondition(LEARNER_NOT_READY));
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([r.id])), true)
            .await
            .map_err(change_err)?;
        Ok(pb::MemberPromoteResponse { header: self.header_info().header(0), members: self.list_response() })
    }

    /// Runs a membership change on the leader (forwarding it from a follower).
    async fn on_leader<Q: Message, R: Message + Default>(
        &self,
        msg: PeerMsg,
        req: Q,
        local: impl std::future::Future<Output = Result<R, Status>>,
    ) -> Result<R, Status> {
        match self.call_leader(msg, &req.encode_to_vec()).await? {
            None => local.await,
            Some(b) => R::decode(b).map_err(|e| Status::internal(format!("malformed answer from the leader: {e}"))),
        }
    }
}

/// Waits (bounded) until this member's membership shows `check`, so a
/// client that changed the membership here sees the change in `member list`.
async fn settle(srv: &EtcdServer, check: impl Fn(&[pb::Member]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check(&srv.members()) && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            // etcd's cluster service headers carry no revision.
            Ok(Response::new(pb::MemberListResponse {
                header: srv.header_info().header(0),
                members: srv.members(),
            }))
        })
        .await
    }

    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let r = req.into_inner();
            let mut resp = srv.on_leader(PeerMsg::MemberAdd, r.clone(), srv.member_add_local(r)).await?;
            let id = resp.member.as_ref().map_or(0, |m| m.id);
            settle(&srv, |ms| ms.iter().any(|m| m.id == id)).await;
            resp.members = srv.members();
            Ok(Response::new(resp))
        })
        .await
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let r = req.into_inner();
            let id = r.id;
            let mut resp = srv.on_leader(PeerMsg::MemberRemove, r.clone(), srv.member_remove_local(r)).await?;
            settle(&srv, |ms| !ms.iter().any(|m| m.id == id)).await;
            resp.members = srv.members();
            Ok(Response::new(resp))
        })
        .await
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let r = req.into_inner();
            let resp = srv.on_leader(PeerMsg::MemberUpdate, r.clone(), srv.member_update_local(r)).await?;
            Ok(Response::new(resp))
        })
        .await
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let r = req.into_inner();
            let id = r.id;
            let mut resp = srv.on_leader(PeerMsg::MemberPromote, r.clone(), srv.member_promote_local(r)).await?;
            settle(&srv, |ms| ms.iter().any(|m| m.id == id && !m.is_learner)).await;
            resp.members = srv.members();
            Ok(Response::new(resp))
        })
        .await
    }
}

//! The server's own requests between members, on the peer transport next
//! to raft's: followers forward proposals, read-index requests, lease
//! renewals and membership changes to the leader; a member joining a
//! running cluster asks a peer for the member list.
//!
//! Errors travel as text: `NOT_LEADER` exactly (the caller retries with
//! the new leader), or `<gRPC code>:<message>` so the caller answers its
//! client with the code and text the leader chose.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use bytes::Bytes;
use ironcd_raft_net::peer::{AppHandler, LocalFuture, Msg};
use ironcd_raft_net::Request;
use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use tonic::{Code, Status};

use crate::error;
use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb as pb;

/// Request types of the server's peer calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PeerMsg {
    /// An encoded `RaftRequest` to propose; answered once applied on the leader.
    Propose = Msg::APP_FIRST,
    /// A read index (u64) after the leader confirmed its leadership.
    ReadIndex,
    /// Lease id (i64) → new TTL (i64), or empty when the lease is unknown.
    LeaseRenew,
    /// Lease id (i64) → granted TTL and remaining TTL (2 × i64), or empty.
    LeaseTimeToLive,
    /// → an encoded `MemberListResponse` (its header has the cluster ID).
    Members,
    MemberAdd,
    MemberRemove,
    MemberUpdate,
    MemberPromote,
}

impl PeerMsg {
    fn from_u8(t: u8) -> Option<PeerMsg> {
        use PeerMsg::*;
        [Propose, ReadIndex, LeaseRenew, LeaseTimeToLive, Members, MemberAdd, MemberRemove, MemberUpdate, MemberPromote]
            .into_iter()
            .find(|m| *m as u8 == t)
    }
}

/// A leader's error as sent back to the caller.
pub fn remote_error(s: &Status) -> String {
    if s.message() == error::NOT_LEADER {
        return error::NOT_LEADER.to_string();
    }
    format!("{}:{}", s.code() as i32, s.message())
}

/// The caller's side of [`remote_error`].
pub fn status_from_remote(m: &str) -> Status {
    if let Some((code, msg)) = m.split_once(':') {
        if let Ok(c) = code.parse::<i32>() {
            return Status::new(Code::from(c), msg.to_string());
        }
    }
    Status::unavailable(m.to_string())
}

/// The [`AppHandler`] of a member; answers once the server exists.
#[derive(Default)]
pub struct PeerService {
    srv: RefCell<Weak<EtcdServer>>,
}

impl PeerService {
    pub fn set(&self, srv: &Rc<EtcdServer>) {
        *self.srv.borrow_mut() = Rc::downgrade(srv);
    }
}

fn decode<M: Message + Default>(p: &[u8]) -> Result<M, String> {
    M::decode(p).map_err(|e| format!("{}:malformed peer request: {e}", Code::InvalidArgument as i32))
}

fn i64_at(p: &[u8], at: usize) -> Result<i64, String> {
    p.get(at..at + 8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
        .ok_or_else(|| "malformed peer request".to_string())
}

impl AppHandler for PeerService {
    fn handle(&self, _from: u64, ty: u8, payload: Bytes) -> LocalFuture<Result<Bytes, String>> {
        let srv = self.srv.borrow().upgrade();
        Box::pin(async move {
            let srv = srv.ok_or_else(|| remote_error(&Status::unavailable("etcdserver: not capable")))?;
            let msg = PeerMsg::from_u8(ty).ok_or_else(|| format!("unknown peer request type {ty}"))?;
            let st = |s: Status| remote_error(&s);
            match msg {
                PeerMsg::Propose => {
                    if srv.leader() != Some(srv.member_id) {
                        return Err(error::NOT_LEADER.into());
                    }
                    match srv.raft.client_write(Request(payload)).await {
                        Ok(_) => Ok(Bytes::new()),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(error::NOT_LEADER.into()),
                        Err(RaftError::APIError(e)) => Err(st(Status::unavailable(format!("etcdserver: {e}")))),
                        Err(RaftError::Fatal(_)) => Err(st(error::stopped())),
                    }
                }
                PeerMsg::ReadIndex => {
                    if srv.leader() != Some(srv.member_id) {
                        return Err(error::NOT_LEADER.into());
                    }
                    let i = srv.obtain_read_index().await.map_err(st)?;
                    Ok(Bytes::copy_from_slice(&i.to_le_bytes()))
                }
                PeerMsg::LeaseRenew => {
                    let id = i64_at(&payload, 0)?;
                    match srv.lease_renew_local(id).await.map_err(st)? {
                        Some(ttl) => Ok(Bytes::copy_from_slice(&ttl.to_le_bytes())),
                        None => Ok(Bytes::new()),
                    }
                }
                PeerMsg::LeaseTimeToLive => {
                    let id = i64_at(&payload, 0)?;
                    match srv.lease_time_to_live_local(id).await.map_err(st)? {
                        Some((granted, left)) => {
                            let mut b = granted.to_le_bytes().to_vec();
                            b.extend_from_slice(&left.to_le_bytes());
                            Ok(Bytes::from(b))
                        }
                        None => Ok(Bytes::new()),
                    }
                }
                PeerMsg::Members => Ok(Bytes::from(
                    pb::MemberListResponse { header: srv.header_info().header(0), members: srv.members() }
                        .encode_to_vec(),
                )),
                PeerMsg::MemberAdd => {
                    let r: pb::MemberAddRequest = decode(&payload)?;
                    Ok(Bytes::from(srv.member_add_local(r).await.map_err(st)?.encode_to_vec()))
                }
                PeerMsg::MemberRemove => {
                    let r: pb::MemberRemoveRequest = decode(&payload)?;
                    Ok(Bytes::from(srv.member_remove_local(r).await.map_err(st)?.encode_to_vec()))
                }
                PeerMsg::MemberUpdate => {
                    let r: pb::MemberUpdateRequest = decode(&payload)?;
                    Ok(Bytes::from(srv.member_update_local(r).await.map_err(st)?.encode_to_vec()))
                }
                PeerMsg::MemberPromote => {
                    let r: pb::MemberPromoteRequest = decode(&payload)?;
                    Ok(Bytes::from(srv.member_promote_local(r).await.map_err(st)?.encode_to_vec()))
                }
            }
        })
    }
}

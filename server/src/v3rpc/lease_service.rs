//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive,
//! LeaseTimeToLive, LeaseLeases (`etcdserver/api/v3rpc/lease.go` and the
//! lease half of `etcdserver/v3_server.go`). Grants and revokes go through
//! raft; renewals and TTL queries are answered by the primary lessor
//! (`crate::lessor`) and never touch the log.

use std::rc::Rc;

use futures_channel::mpsc;
use send_wrapper::SendWrapper;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::error;
use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::ironcdpb::raft_request::Request as Req;
use crate::state_machine::Applied;
use tonic::codegen::BoxStream;

/// Responses buffered per keep-alive stream before the reader waits.
const KEEPALIVE_BUFFER: usize = 16;

/// Sends one item, waiting while the buffer is full; fails once the receiver is gone.
async fn send<T>(out: &mut mpsc::Sender<T>, item: T) -> Result<(), mpsc::SendError> {
    std::future::poll_fn(|cx| out.poll_ready(cx)).await?;
    out.start_send(item)
}

#[derive(Clone)]
pub struct LeaseService {
    srv: SendWrapper<Rc<EtcdServer>>,
}

impl LeaseService {
    pub fn new(srv: Rc<EtcdServer>) -> Self {
        LeaseService {
            srv: SendWrapper::new(srv),
        }
    }
}

fn unexpected(a: Applied) -> Status {
    match a {
        Applied::Unsupported(why) => Status::unimplemented(why),
        other => Status::internal(format!("unexpected apply result {other:?}")),
    }
}

impl EtcdServer {
    fn current_header(&self) -> Result<Option<pb::ResponseHeader>, Status> {
        Ok(self.header_info().header(self.reader()?.revision()))
    }

    async fn lease_grant(
        &self,
        md: &MetadataMap,
        r: pb::LeaseGrantRequest,
    ) -> Result<pb::LeaseGrantResponse, Status> {
        self.check_has_leader(md)?;
        self.check_space(0).await?;
        // id 0: the apply step picks a free id from the raft index, the same on every member.
        match self.propose(Req::LeaseGrant(r)).await? {
            Applied::LeaseGrant(res) => {
                let g = res.map_err(error::mvcc)?;
                Ok(pb::LeaseGrantResponse {
                    header: self.header_info().header(g.header.revision),
                    id: g.id,
                    ttl: g.ttl,
                    error: String::new(),
                })
            }
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        md: &MetadataMap,
        r: pb::LeaseRevokeRequest,
    ) -> Result<pb::LeaseRevokeResponse, Status> {
        self.check_has_leader(md)?;
        match self.propose(Req::LeaseRevoke(r)).await? {
            Applied::LeaseRevoke(res) => {
                let h = res.map_err(error::mvcc)?.header;
                Ok(pb::LeaseRevokeResponse {
                    header: self.header_info().header(h.revision),
                })
            }
            other => Err(unexpected(other)),
        }
    }

    async fn lease_ttl(
        &self,
        md: &MetadataMap,
        r: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        self.check_has_leader(md)?;
        let Some((granted, ttl)) = self.lease_time_to_live(r.id).await? else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(pb::LeaseTimeToLiveResponse {
                header: self.current_header()?,
                id: r.id,
                ttl: -1,
                ..Default::default()
            });
        };
        let keys = if r.keys {
            self.reader()?
                .lease_lookup(r.id)
                .map_err(error::mvcc)?
                .map(|l| l.keys)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(pb::LeaseTimeToLiveResponse {
            header: self.current_header()?,
            id: r.id,
            ttl,
            granted_ttl: granted,
            keys,
        })
    }

    fn lease_leases(&self, md: &MetadataMap) -> Result<pb::LeaseLeasesResponse, Status> {
        self.check_has_leader(md)?;
        let leases = self
            .lessor
            .ids_by_expiry()
            .into_iter()
            .map(|id| pb::LeaseStatus { id })
            .collect();
        Ok(pb::LeaseLeasesResponse {
            header: self.current_header()?,
            leases,
        })
    }

    /// One keep-alive stream: each request renews its lease on the primary
    /// lessor and is answered with the TTL (0 for an unknown lease, as etcd).
    async fn keep_alive_loop(
        &self,
        mut reqs: Streaming<pb::LeaseKeepAliveRequest>,
        mut out: mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>,
    ) {
        loop {
            let req = match reqs.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "failed to receive lease keepalive request from gRPC stream");
                    return;
                }
            };
            // The header is taken before renewing, as etcd does: its
            // revision is never past the point the renewal happened at.
            let header = match self.current_header() {
                Ok(h) => h,
                Err(e) => {
                    let _ = send(&mut out, Err(e)).await;
                    return;
                }
            };
            let resp = match self.lease_renew(req.id).await {
                Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                    header,
                    id: req.id,
                    ttl: ttl.unwrap_or(0),
                }),
                Err(e) => Err(e),
            };
            let failed = resp.is_err();
            if send(&mut out, resp).await.is_err() || failed {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, r) = req.into_parts();
            srv.lease_grant(&md, r).await.map(Response::new)
        })
        .await
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, r) = req.into_parts();
            srv.lease_revoke(&md, r).await.map(Response::new)
        })
        .await
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<pb::LeaseKeepAliveResponse>>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, reqs) = req.into_parts();
            srv.check_has_leader(&md)?;
            let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
            let srv: Rc<EtcdServer> = (*srv).clone();
            // Ends when the client closes its side or stops reading.
            glommio::spawn_local(async move { srv.keep_alive_loop(reqs, tx).await }).detach();
            Ok(Response::new(
                Box::pin(rx) as BoxStream<pb::LeaseKeepAliveResponse>
            ))
        })
        .await
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, r) = req.into_parts();
            srv.lease_ttl(&md, r).await.map(Response::new)
        })
        .await
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, _) = req.into_parts();
            srv.lease_leases(&md).map(Response::new)
        })
        .await
    }
}

//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use std::rc::Rc;

use ironcd_engine::mvcc::{self, validate};
use prost::Message;
use send_wrapper::SendWrapper;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error;
use crate::etcd_server::{wants_leader, EtcdServer};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::ironcdpb::raft_request::Request as Req;
use crate::state_machine::Applied;

#[derive(Clone)]
pub struct KvService {
    srv: SendWrapper<Rc<EtcdServer>>,
}

impl KvService {
    pub fn new(srv: Rc<EtcdServer>) -> Self {
        KvService {
            srv: SendWrapper::new(srv),
        }
    }

    /// The server behind the service (on the raft core only).
    pub(super) fn server(&self) -> &Rc<EtcdServer> {
        &self.srv
    }
}

/// Whether a txn may add data (has a put in any branch, at any depth).
fn txn_puts(t: &mvcc::TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(mvcc::Request::RequestPut(_)) => true,
        Some(mvcc::Request::RequestTxn(inner)) => txn_puts(inner),
        _ => false,
    })
}

fn unexpected(a: Applied) -> Status {
    match a {
        Applied::Unsupported(why) => Status::unimplemented(why),
        other => Status::internal(format!("unexpected apply result {other:?}")),
    }
}

impl EtcdServer {
    pub(super) async fn range(
        &self,
        wants_leader: bool,
        r: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, Status> {
        self.check_leader(wants_leader)?;
        self.check_size(r.encoded_len())?;
        let r = convert::range_req(r)?;
        validate::check_range_request(&r).map_err(error::mvcc)?;
        if !r.serializable {
            if self.is_learner() {
                return Err(Status::unavailable(super::NOT_FOR_LEARNER));
            }
            self.linearize().await?;
        }
        let resp = self.reader()?.range(&r).map_err(error::mvcc)?;
        Ok(convert::range_resp(resp, &self.header_info()))
    }

    pub(super) async fn put(
        &self,
        wants_leader: bool,
        r: pb::PutRequest,
    ) -> Result<pb::PutResponse, Status> {
        self.check_leader(wants_leader)?;
        self.check_size(r.encoded_len())?;
        let r = convert::put_req(r);
        validate::check_put_request(&r).map_err(error::mvcc)?;
        self.check_space(r.key.len() + r.value.len()).await?;
        match self.propose(Req::Put(convert::put_req_pb(r))).await? {
            Applied::Put(res) => Ok(convert::put_resp(
                res.map_err(error::mvcc)?,
                &self.header_info(),
            )),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn delete_range(
        &self,
        wants_leader: bool,
        r: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, Status> {
        self.check_leader(wants_leader)?;
        self.check_size(r.encoded_len())?;
        let r = convert::delete_req(r);
        validate::check_delete_request(&r).map_err(error::mvcc)?;
        match self
            .propose(Req::DeleteRange(convert::delete_req_pb(r)))
            .await?
        {
            Applied::DeleteRange(res) => Ok(convert::delete_resp(
                res.map_err(error::mvcc)?,
                &self.header_info(),
            )),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn txn(
        &self,
        wants_leader: bool,
        r: pb::TxnRequest,
    ) -> Result<pb::TxnResponse, Status> {
        self.check_leader(wants_leader)?;
        self.check_size(r.encoded_len())?;
        let t = convert::txn_req(r.clone())?;
        validate::check_txn_request(&t, self.cfg.max_txn_ops as usize).map_err(error::mvcc)?;
        if txn_puts(&t) {
            self.check_space(r.encoded_len()).await?;
        }
        match self.propose(Req::Txn(r)).await? {
            Applied::Txn(res) => Ok(convert::txn_resp(
                res.map_err(error::mvcc)?,
                &self.header_info(),
            )),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn compact(
        &self,
        wants_leader: bool,
        r: pb::CompactionRequest,
    ) -> Result<pb::CompactionResponse, Status> {
        self.check_leader(wants_leader)?;
        let physical = r.physical;
        let resp = match self.propose(Req::Compaction(r)).await? {
            Applied::Compaction(res) => res.map_err(error::mvcc)?,
            other => return Err(unexpected(other)),
        };
        if physical {
            self.wait_compacted().await?;
        }
        Ok(convert::compaction_resp(resp, &self.header_info()))
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, r) = req.into_parts();
            srv.range(wants_leader(md.as_ref()), r).await.map(Response::new)
        })
        .await
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, r) = req.into_parts();
            srv.put(wants_leader(md.as_ref()), r).await.map(Response::new)
        })
        .await
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, r) = req.into_parts();
            srv.delete_range(wants_leader(md.as_ref()), r).await.map(Response::new)
        })
        .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, r) = req.into_parts();
            srv.txn(wants_leader(md.as_ref()), r).await.map(Response::new)
        })
        .await
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let srv = self.srv.clone();
        SendWrapper::new(async move {
            let (md, _, r) = req.into_parts();
            srv.compact(wants_leader(md.as_ref()), r).await.map(Response::new)
        })
        .await
    }
}

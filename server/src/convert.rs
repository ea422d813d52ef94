//! Protobuf messages (etcd's wire types) to and from the MVCC store's plain
//! Rust mirrors. Field by field, moving bytes rather than copying them.
//! Enum numbers etcd does not define are refused with InvalidArgument.

use ironcd_engine::mvcc;
use tonic::Status;

use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;

fn bad_enum(what: &str, v: i32) -> Status {
    Status::invalid_argument(format!("etcdserver: unknown {what} {v}"))
}

// ------------------------------------------------------------- requests

pub fn range_req(r: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    Ok(mvcc::RangeRequest {
        sort_order: match r.sort_order {
            0 => mvcc::SortOrder::None,
            1 => mvcc::SortOrder::Ascend,
            2 => mvcc::SortOrder::Descend,
            v => return Err(bad_enum("sort order", v)),
        },
        sort_target: match r.sort_target {
            0 => mvcc::SortTarget::Key,
            1 => mvcc::SortTarget::Version,
            2 => mvcc::SortTarget::Create,
            3 => mvcc::SortTarget::Mod,
            4 => mvcc::SortTarget::Value,
            v => return Err(bad_enum("sort target", v)),
        },
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn put_req(r: pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_req(r: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

pub fn compaction_req(r: pb::CompactionRequest) -> mvcc::CompactionRequest {
    mvcc::CompactionRequest {
        revision: r.revision,
        physical: r.physical,
    }
}

fn compare(c: pb::Compare) -> Result<mvcc::Compare, Status> {
    use pb::compare::TargetUnion as T;
    Ok(mvcc::Compare {
        result: match c.result {
            0 => mvcc::CompareResult::Equal,
            1 => mvcc::CompareResult::Greater,
            2 => mvcc::CompareResult::Less,
            3 => mvcc::CompareResult::NotEqual,
            v => return Err(bad_enum("compare result", v)),
        },
        target: match c.target {
            0 => mvcc::CompareTarget::Version,
            1 => mvcc::CompareTarget::Create,
            2 => mvcc::CompareTarget::Mod,
            3 => mvcc::CompareTarget::Value,
            4 => mvcc::CompareTarget::Lease,
            v => return Err(bad_enum("compare target", v)),
        },
        key: c.key,
        range_end: c.range_end,
        target_union: c.target_union.map(|t| match t {
            T::Version(v) => mvcc::TargetUnion::Version(v),
            T::CreateRevision(v) => mvcc::TargetUnion::CreateRevision(v),
            T::ModRevision(v) => mvcc::TargetUnion::ModRevision(v),
            T::Value(v) => mvcc::TargetUnion::Value(v),
            T::Lease(v) => mvcc::TargetUnion::Lease(v),
        }),
    })
}

fn request_op(op: pb::RequestOp) -> Result<mvcc::RequestOp, Status> {
    use pb::request_op::Request as R;
    Ok(mvcc::RequestOp {
        request: match op.request {
            None => None,
            Some(R::RequestRange(r)) => Some(mvcc::Request::RequestRange(range_req(r)?)),
            Some(R::RequestPut(r)) => Some(mvcc::Request::RequestPut(put_req(r))),
            Some(R::RequestDeleteRange(r)) => {
                Some(mvcc::Request::RequestDeleteRange(delete_req(r)))
            }
            Some(R::RequestTxn(r)) => Some(mvcc::Request::RequestTxn(txn_req(r)?)),
        },
    })
}

pub fn txn_req(t: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    Ok(mvcc::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

// ------------------------------------------------------------ responses

/// What the serving member adds to every top-level response header.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderInfo {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft_term: u64,
}

impl HeaderInfo {
    pub fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term,
        })
    }
}

/// A nested header (inside a txn) as the store produced it.
fn inner_header(h: mvcc::ResponseHeader) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    })
}

pub fn kv(k: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: k.key,
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        value: k.value,
        lease: k.lease,
    }
}

/// A watch event (moves the bytes).
pub fn event(e: mvcc::Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: e.r#type as i32,
        kv: Some(kv(e.kv)),
        prev_kv: e.prev_kv.map(kv),
    }
}

fn range_body(r: mvcc::RangeResponse, header: Option<pb::ResponseHeader>) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count,
    }
}

fn put_body(r: mvcc::PutResponse, header: Option<pb::ResponseHeader>) -> pb::PutResponse {
    pb::PutResponse {
        header,
        prev_kv: r.prev_kv.map(kv),
    }
}

fn delete_body(
    r: mvcc::DeleteRangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
    }
}

fn txn_body(r: mvcc::TxnResponse, header: Option<pb::ResponseHeader>) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    pb::TxnResponse {
        header,
        succeeded: r.succeeded,
        responses: r
            .responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: op.response.map(|resp| match resp {
                    mvcc::Response::ResponseRange(x) => {
                        let h = inner_header(x.header.clone());
                        R::ResponseRange(range_body(x, h))
                    }
                    mvcc::Response::ResponsePut(x) => {
                        let h = inner_header(x.header.clone());
                        R::ResponsePut(put_body(x, h))
                    }
                    mvcc::Response::ResponseDeleteRange(x) => {
                        let h = inner_header(x.header.clone());
                        R::ResponseDeleteRange(delete_body(x, h))
                    }
                    mvcc::Response::ResponseTxn(x) => {
                        let h = inner_header(x.header.clone());
                        R::ResponseTxn(txn_body(x, h))
                    }
                }),
            })
            .collect(),
    }
}

pub fn range_resp(r: mvcc::RangeResponse, info: &HeaderInfo) -> pb::RangeResponse {
    let h = info.header(r.header.revision);
    range_body(r, h)
}

pub fn put_resp(r: mvcc::PutResponse, info: &HeaderInfo) -> pb::PutResponse {
    let h = info.header(r.header.revision);
    put_body(r, h)
}

pub fn delete_resp(r: mvcc::DeleteRangeResponse, info: &HeaderInfo) -> pb::DeleteRangeResponse {
    let h = info.header(r.header.revision);
    delete_body(r, h)
}

pub fn txn_resp(r: mvcc::TxnResponse, info: &HeaderInfo) -> pb::TxnResponse {
    let h = info.header(r.header.revision);
    txn_body(r, h)
}

pub fn compaction_resp(r: mvcc::CompactionResponse, info: &HeaderInfo) -> pb::CompactionResponse {
    pb::CompactionResponse {
        header: info.header(r.header.revision),
    }
}

/// Back to the wire type (moves the bytes), for proposing after validation.
pub fn put_req_pb(r: mvcc::PutRequest) -> pb::PutRequest {
    pb::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// Back to the wire type (moves the bytes), for proposing after validation.
pub fn delete_req_pb(r: mvcc::DeleteRangeRequest) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

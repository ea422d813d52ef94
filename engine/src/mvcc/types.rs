//! Plain Rust mirrors of etcd's `etcdserverpb` / `mvccpb` messages used by
//! the KV service, with etcd's field names and enum numbering, so the server
//! maps protobuf <-> these types 1:1.
//!
//! `range_end` follows etcd: empty = the single key `key`; `[0]` ("\0") = every
//! key >= `key`; otherwise the half-open range `[key, range_end)`.

/// `etcdserverpb.ResponseHeader`. MVCC fills `revision` only; the server
/// fills the rest (etcd fills only the top-level header, so headers nested
/// in a txn response keep zeros, and a nested txn's `revision` stays 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

impl ResponseHeader {
    pub(crate) fn at(revision: i64) -> Self {
        ResponseHeader {
            revision,
            ..Default::default()
        }
    }
}

/// `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

/// `mvccpb.Event.EventType`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum EventType {
    Put = 0,
    Delete = 1,
}

/// `mvccpb.Event`. A DELETE carries only `kv.key` and `kv.mod_revision` (the
/// deleting revision), as etcd sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub r#type: EventType,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// `RangeRequest.SortOrder`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum SortOrder {
    #[default]
    None = 0,
    Ascend = 1,
    Descend = 2,
}

/// `RangeRequest.SortTarget`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum SortTarget {
    #[default]
    Key = 0,
    Version = 1,
    Create = 2,
    Mod = 3,
    Value = 4,
}

/// `etcdserverpb.RangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub header: ResponseHeader,
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

/// `etcdserverpb.PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

/// `etcdserverpb.PutResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub header: ResponseHeader,
    pub prev_kv: Option<KeyValue>,
}

/// `etcdserverpb.DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

/// `etcdserverpb.DeleteRangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub header: ResponseHeader,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// `etcdserverpb.RequestOp` (the `request` oneof; `None` = the empty oneof,
/// which etcd rejects with "key not found").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestOp {
    pub request: Option<Request>,
}

/// The `RequestOp.request` oneof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    RequestRange(RangeRequest),
    RequestPut(PutRequest),
    RequestDeleteRange(DeleteRangeRequest),
    RequestTxn(TxnRequest),
}

impl From<Request> for RequestOp {
    fn from(r: Request) -> Self {
        RequestOp { request: Some(r) }
    }
}

/// `etcdserverpb.ResponseOp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseOp {
    pub response: Option<Response>,
}

/// The `ResponseOp.response` oneof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    ResponseRange(RangeResponse),
    ResponsePut(PutResponse),
    ResponseDeleteRange(DeleteRangeResponse),
    ResponseTxn(TxnResponse),
}

/// `Compare.CompareResult`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum CompareResult {
    #[default]
    Equal = 0,
    Greater = 1,
    Less = 2,
    NotEqual = 3,
}

/// `Compare.CompareTarget`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum CompareTarget {
    #[default]
    Version = 0,
    Create = 1,
    Mod = 2,
    Value = 3,
    Lease = 4,
}

/// The `Compare.target_union` oneof. A union that does not match `target`
/// compares against 0 / the empty value, as in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetUnion {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// `etcdserverpb.Compare`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Vec<u8>,
    pub target_union: Option<TargetUnion>,
    pub range_end: Vec<u8>,
}

/// `etcdserverpb.TxnRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

/// `etcdserverpb.TxnResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub header: ResponseHeader,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

/// `etcdserverpb.CompactionRequest`. `physical` is the server's business
/// (wait until [`crate::mvcc::KvWriter::compact_step`] reports done).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionRequest {
    pub revision: i64,
    pub physical: bool,
}

/// `etcdserverpb.CompactionResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionResponse {
    pub header: ResponseHeader,
}

/// `etcdserverpb.HashKVResponse` (without the request wrapper).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashKvResponse {
    pub header: ResponseHeader,
    pub hash: u32,
    pub compact_revision: i64,
}

/// `etcdserverpb.HashResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashResponse {
    pub header: ResponseHeader,
    pub hash: u32,
}

/// `etcdserverpb.LeaseGrantRequest` (`ttl` is etcd's `TTL`, `id` its `ID`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrantRequest {
    pub ttl: i64,
    pub id: i64,
}

/// `etcdserverpb.LeaseGrantResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    pub header: ResponseHeader,
    pub id: i64,
    pub ttl: i64,
    pub error: String,
}

/// `etcdserverpb.LeaseRevokeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRevokeRequest {
    pub id: i64,
}

/// `etcdserverpb.LeaseRevokeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRevokeResponse {
    pub header: ResponseHeader,
}

/// `etcdserverpb.LeaseCheckpoint`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseCheckpoint {
    pub id: i64,
    pub remaining_ttl: i64,
}

/// A lease as persisted (etcd's `leasepb.Lease`) plus, for lookups, the keys
/// attached to it in byte order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL in seconds (after raising to the minimum).
    pub ttl: i64,
    /// Last checkpointed remaining TTL (0 = none).
    pub remaining_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// Which revisions of history a watcher wants (the catch-up half of etcd's
/// watchable store; live events come from [`crate::mvcc::KvWriter::take_events`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchEventsRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// First revision wanted (inclusive). Must be >= the compact revision.
    pub start_revision: i64,
    /// Last revision wanted (inclusive); <= 0 or beyond the current revision
    /// means the current revision.
    pub end_revision: i64,
    pub prev_kv: bool,
    /// Bound on the number of revisions (with matching events) returned; 0 = no bound.
    pub max_revisions: usize,
}

/// One batch of history events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchEventsResponse {
    pub header: ResponseHeader,
    pub events: Vec<Event>,
    /// Where to resume (`start_revision` of the next call) when the batch
    /// bound cut the answer short; `None` when every event up to the end
    /// revision was returned.
    pub next_revision: Option<i64>,
}

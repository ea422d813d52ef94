//! The etcd v3 gRPC services (etcd's `v3rpc` package). RPCs not built yet
//! answer `Unimplemented` (tonic's generated default), never a wrong answer:
//! Auth, Lock and Election entirely; see each service. Connections on client
//! executors forward every call to the raft core ([`remote`]).

/// Calls `$m!` with KV's unary calls, one per line: the call's name, its
/// gRPC path, tonic's method, `Remote`'s method, request, answer (the front
/// and the forwarding both generate their code from this one list).
macro_rules! with_kv_calls {
    ($m:ident) => {
        $m! {
            Range, "/etcdserverpb.KV/Range", range, kv_range(pb::RangeRequest) -> pb::RangeResponse;
            Put, "/etcdserverpb.KV/Put", put, kv_put(pb::PutRequest) -> pb::PutResponse;
            DeleteRange, "/etcdserverpb.KV/DeleteRange", delete_range,
                kv_delete_range(pb::DeleteRangeRequest) -> pb::DeleteRangeResponse;
            Txn, "/etcdserverpb.KV/Txn", txn, kv_txn(pb::TxnRequest) -> pb::TxnResponse;
            Compact, "/etcdserverpb.KV/Compact", compact,
                kv_compact(pb::CompactionRequest) -> pb::CompactionResponse;
        }
    };
}

mod cluster_service;
pub mod front;
mod kv_service;
mod lease_service;
mod maintenance_service;
pub mod remote;
mod watch_service;

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tonic::codegen::Service;
use tonic::service::Routes;

use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb::auth_server::{Auth, AuthServer};
use crate::pb::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use crate::pb::etcdserverpb::kv_server::{Kv, KvServer};
use crate::pb::etcdserverpb::lease_server::{Lease, LeaseServer};
use crate::pb::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use crate::pb::etcdserverpb::watch_server::{Watch, WatchServer};
use crate::pb::v3electionpb::election_server::{Election, ElectionServer};
use crate::pb::v3lockpb::lock_server::{Lock, LockServer};
use crate::watch::WatchHub;

pub use cluster_service::ClusterService;
pub use front::{Front, KvCalls};
pub use kv_service::KvService;
pub use lease_service::LeaseService;
pub use maintenance_service::MaintenanceService;
pub use watch_service::WatchService;

/// Services with nothing built yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct NotYet;

impl Auth for NotYet {}
impl Lock for NotYet {}
impl Election for NotYet {}

/// gRPC's own overhead allowed on top of `--max-request-bytes` (etcd's
/// `grpcOverheadBytes`).
pub const GRPC_OVERHEAD: usize = 512 * 1024;

/// What tonic may buffer for one KV message. Larger than etcd's gRPC limit
/// (`--max-request-bytes` + [`GRPC_OVERHEAD`]) so the handlers can answer
/// with grpc-go's own code and text (`EtcdServer::check_size`).
const KV_DECODE_LIMIT: usize = 64 << 20;

/// The largest KV message decoded, for `--max-request-bytes`.
fn kv_decode_limit(max_request_bytes: u32) -> usize {
    KV_DECODE_LIMIT.max(max_request_bytes as usize + GRPC_OVERHEAD)
}

/// The services that run on the raft core, for its own connections and for
/// the calls client executors forward ([`remote`]).
pub fn local_services(srv: Rc<EtcdServer>, watch_hub: Rc<WatchHub>) -> remote::Local {
    remote::Local {
        kv: KvService::new(srv.clone()),
        watch: WatchService::new(srv.clone(), watch_hub),
        lease: LeaseService::new(srv.clone()),
        cluster: ClusterService::new(srv.clone()),
        maintenance: MaintenanceService::new(srv),
    }
}

/// Every etcd v3 service on one router, for connections on the raft core.
pub fn routes(local: &remote::Local, max_request_bytes: u32) -> Routes {
    let l = local.clone();
    router(max_request_bytes, l.kv, l.watch, l.lease, l.cluster, l.maintenance)
}

/// Every etcd v3 service on one router, for connections on a client
/// executor: each call runs on the raft core ([`remote`]).
pub fn remote_routes(remote: remote::Remote, max_request_bytes: u32) -> Routes {
    router(max_request_bytes, remote.clone(), remote.clone(), remote.clone(), remote.clone(), remote)
}

fn router<K: Kv, W: Watch, L: Lease, C: Cluster, M: Maintenance>(
    max_request_bytes: u32,
    kv: K,
    watch: W,
    lease: L,
    cluster: C,
    maintenance: M,
) -> Routes {
    let max = max_request_bytes as usize + GRPC_OVERHEAD;
    Routes::new(KvServer::new(kv).max_decoding_message_size(kv_decode_limit(max_request_bytes)))
        .add_service(WatchServer::new(watch).max_decoding_message_size(max))
        .add_service(LeaseServer::new(lease))
        .add_service(ClusterServer::new(cluster))
        .add_service(MaintenanceServer::new(maintenance).max_encoding_message_size(usize::MAX))
        .add_service(AuthServer::new(NotYet))
        .add_service(LockServer::new(NotYet))
        .add_service(ElectionServer::new(NotYet))
}

/// etcd 3.4's answer to a learner asked for anything but `Status` or a
/// serializable `Range`.
pub const NOT_FOR_LEARNER: &str = "etcdserver: rpc not supported for learner";

/// The router behind etcd's learner check: while this member is a learner
/// (`learner`, kept current by the server), every RPC except
/// `Maintenance/Status` and `KV/Range` answers [`NOT_FOR_LEARNER`]; `Range`
/// itself refuses linearizable reads on a learner (`kv_service.rs`).
#[derive(Clone)]
pub struct LearnerGuard {
    pub routes: Routes,
    pub learner: Arc<AtomicBool>,
}

impl<B> Service<http::Request<B>> for LearnerGuard
where
    Routes: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Either<
        std::future::Ready<Result<Self::Response, Infallible>>,
        <Routes as Service<http::Request<B>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<B>>::poll_ready(&mut self.routes, cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let allowed = path == "/etcdserverpb.KV/Range" || path == "/etcdserverpb.Maintenance/Status";
        if self.learner.load(Ordering::Relaxed) && !allowed {
            return Either::Left(std::future::ready(Ok(tonic::Status::unavailable(NOT_FOR_LEARNER).into_http())));
        }
        Either::Right(self.routes.call(req))
    }
}

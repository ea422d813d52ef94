//! Serving clients from executors other than the raft core
//! (`docs/server.md`, "Threading").
//!
//! A *client executor* runs the HTTP/2 connections the raft core hands it:
//! TCP, h2 framing, protobuf decoding and encoding, tonic's per-call work.
//! Each decoded call crosses to the raft core as a [`Job`], a closure that
//! runs the same service code a connection on the raft core would run, and
//! its answer comes back on a oneshot channel. The channels are lock-free
//! queues; a parked executor is woken through its eventfd, a busy one finds
//! the call on its next turn, so calls cross in batches under load.
//!
//! Streams (Watch, LeaseKeepAlive, Snapshot) cross once: the request stream
//! is read by the raft core, and the answers are relayed through a bounded
//! channel that the client executor drains into the connection. A client that
//! goes away drops its end, which stops the relay and drops the stream on
//! the raft core, exactly as when the connection lives there.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use futures_channel::{mpsc, oneshot};
use futures_util::{SinkExt, StreamExt};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error;
use crate::etcd_server::wants_leader;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::watch_server::Watch;

use super::{ClusterService, KvService, LeaseService, MaintenanceService, WatchService};

/// One call, run on the raft core: it builds the call's future there.
pub type Job = Box<dyn FnOnce(&Rc<Local>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Answers relayed per stream before the raft core waits for the client
/// executor to drain them (the stream's own buffer is behind this).
const RELAY_BUFFER: usize = 16;

/// The services as they run on the raft core (the same values its own
/// connections use).
#[derive(Clone)]
pub struct Local {
    pub kv: KvService,
    pub watch: WatchService,
    pub lease: LeaseService,
    pub cluster: ClusterService,
    pub maintenance: MaintenanceService,
}

/// Runs the jobs sent by client executors, each as its own task, until
/// every sender is gone.
pub async fn run_jobs(local: Local, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let local = Rc::new(local);
    while let Some(job) = jobs.next().await {
        glommio::spawn_local(job(&local)).detach();
    }
}

/// The etcd services on a client executor: every call is forwarded to the
/// raft core.
#[derive(Clone)]
pub struct Remote {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Remote {
    pub fn new(jobs: mpsc::UnboundedSender<Job>) -> Remote {
        Remote { jobs }
    }

    /// Runs `f` on the raft core and returns its answer.
    async fn call<R, F, Fut>(&self, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Local>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, Status>> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |local: &Rc<Local>| {
            let fut = f(local.clone());
            Box::pin(async move {
                // The caller may be gone (client cancelled); the call still
                // ran to completion, as it would on the raft core.
                let _ = tx.send(fut.await);
            })
        });
        self.jobs
            .unbounded_send(job)
            .map_err(|_| Status::unavailable(error::STOPPED))?;
        rx.await.map_err(|_| Status::unavailable(error::STOPPED))?
    }
}

/// On the raft core: moves a stream's answers into a channel the client
/// executor reads. The stream is polled and dropped on the raft core only.
fn relay<T: Send + 'static>(resp: Response<BoxStream<T>>) -> Response<BoxStream<T>> {
    let (md, stream, ext) = resp.into_parts();
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(RELAY_BUFFER);
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    glommio::spawn_local(async move {
        let pump = async move {
            let (mut stream, mut tx) = (stream, tx);
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        };
        // Ends when the stream ends, or when the client executor drops its
        // end (`gone_tx` lives in the stream it returns).
        futures_util::future::select(Box::pin(pump), gone_rx).await;
    })
    .detach();
    let out = rx.map(move |item| {
        let _alive = &gone_tx;
        item
    });
    Response::from_parts(md, Box::pin(out) as BoxStream<T>, ext)
}

/// Forwards the listed unary calls of one service; `$extra` are the
/// service's streaming calls, written out.
macro_rules! forward {
    ($trait:ident, $field:ident, [$($method:ident($req:ty) -> $resp:ty;)*] $($extra:item)*) => {
        #[tonic::async_trait]
        impl $trait for Remote {
            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.call(move |l: Rc<Local>| async move { $trait::$method(&l.$field, req).await }).await
                }
            )*
            $($extra)*
        }
    };
}

/// KV calls skip tonic's service layer on the raft core: only the message
/// and the `hasleader` flag cross, and only the answer comes back (no
/// metadata maps allocated on one thread and freed on the other). The
/// connection front ([`super::front`]) calls the `kv_*` methods straight.
macro_rules! forward_kv {
    ($($call:ident, $path:literal, $method:ident, $inherent:ident($req:ty) -> $resp:ty;)*) => {
        impl Remote {
            $(
                pub async fn $inherent(&self, wants: bool, r: $req) -> Result<$resp, Status> {
                    self.call(move |l: Rc<Local>| async move { l.kv.server().$method(wants, r).await })
                        .await
                }
            )*
        }

        #[tonic::async_trait]
        impl Kv for Remote {
            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let (md, _, r) = req.into_parts();
                    let wants = wants_leader(md.as_ref());
                    drop(md);
                    Ok(Response::new(self.$inherent(wants, r).await?))
                }
            )*
        }
    };
}

with_kv_calls!(forward_kv);

forward!(Watch, watch, []
    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<BoxStream<pb::WatchResponse>>, Status> {
        self.call(move |l: Rc<Local>| async move { Watch::watch(&l.watch, req).await.map(relay) }).await
    }
);

forward!(Lease, lease, [
    lease_grant(pb::LeaseGrantRequest) -> pb::LeaseGrantResponse;
    lease_revoke(pb::LeaseRevokeRequest) -> pb::LeaseRevokeResponse;
    lease_time_to_live(pb::LeaseTimeToLiveRequest) -> pb::LeaseTimeToLiveResponse;
    lease_leases(pb::LeaseLeasesRequest) -> pb::LeaseLeasesResponse;
]
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<pb::LeaseKeepAliveResponse>>, Status> {
        self.call(move |l: Rc<Local>| async move { Lease::lease_keep_alive(&l.lease, req).await.map(relay) })
            .await
    }
);

forward!(Cluster, cluster, [
    member_add(pb::MemberAddRequest) -> pb::MemberAddResponse;
    member_remove(pb::MemberRemoveRequest) -> pb::MemberRemoveResponse;
    member_update(pb::MemberUpdateRequest) -> pb::MemberUpdateResponse;
    member_list(pb::MemberListRequest) -> pb::MemberListResponse;
    member_promote(pb::MemberPromoteRequest) -> pb::MemberPromoteResponse;
]);

forward!(Maintenance, maintenance, [
    alarm(pb::AlarmRequest) -> pb::AlarmResponse;
    status(pb::StatusRequest) -> pb::StatusResponse;
    defragment(pb::DefragmentRequest) -> pb::DefragmentResponse;
    hash(pb::HashRequest) -> pb::HashResponse;
    hash_kv(pb::HashKvRequest) -> pb::HashKvResponse;
    move_leader(pb::MoveLeaderRequest) -> pb::MoveLeaderResponse;
]
    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<BoxStream<pb::SnapshotResponse>>, Status> {
        self.call(move |l: Rc<Local>| async move { Maintenance::snapshot(&l.maintenance, req).await.map(relay) })
            .await
    }
);

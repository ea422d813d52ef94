//! The etcd v3 gRPC services. Each RPC not built yet answers
//! `Unimplemented` (tonic's generated default), never a wrong answer.

use tonic::service::Routes;

use crate::pb::etcdserverpb::auth_server::{Auth, AuthServer};
use crate::pb::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use crate::pb::etcdserverpb::kv_server::{Kv, KvServer};
use crate::pb::etcdserverpb::lease_server::{Lease, LeaseServer};
use crate::pb::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use crate::pb::etcdserverpb::watch_server::{Watch, WatchServer};
use crate::pb::v3electionpb::election_server::{Election, ElectionServer};
use crate::pb::v3lockpb::lock_server::{Lock, LockServer};

/// Services with nothing implemented yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct NotYet;

impl Kv for NotYet {}
impl Watch for NotYet {}
impl Lease for NotYet {}
impl Cluster for NotYet {}
impl Maintenance for NotYet {}
impl Auth for NotYet {}
impl Lock for NotYet {}
impl Election for NotYet {}

/// Every etcd v3 service on one router.
pub fn routes() -> Routes {
    Routes::new(KvServer::new(NotYet))
        .add_service(WatchServer::new(NotYet))
        .add_service(LeaseServer::new(NotYet))
        .add_service(ClusterServer::new(NotYet))
        .add_service(MaintenanceServer::new(NotYet))
        .add_service(AuthServer::new(NotYet))
        .add_service(LockServer::new(NotYet))
        .add_service(ElectionServer::new(NotYet))
}

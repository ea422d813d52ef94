//! etcd's Cluster service. Built: MemberList. Membership changes answer
//! `Unimplemented` until the clustering issue.

use std::rc::Rc;

use openraft::async_runtime::WatchReceiver;
use send_wrapper::SendWrapper;
use tonic::{Request, Response, Status};

use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::cluster_server::Cluster;

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

impl EtcdServer {
    /// The members of the membership in force, in member-id order.
    pub fn members(&self) -> Vec<pb::Member> {
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let voters: std::collections::BTreeSet<u64> = m.membership().voter_ids().collect();
        m.membership()
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                name: node.name.clone(),
                peer_ur_ls: node.peer_urls.clone(),
                client_ur_ls: node.client_urls.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
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
}

//! etcd's Watch service: one bidirectional stream carrying many watchers.
//! The work is in [`crate::watch`].

use std::rc::Rc;

use send_wrapper::SendWrapper;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::WatchRequest;
use crate::watch::stream::WatchOut;
use crate::watch::WatchHub;

#[derive(Clone)]
pub struct WatchService {
    srv: SendWrapper<Rc<EtcdServer>>,
    hub: SendWrapper<Rc<WatchHub>>,
}

impl WatchService {
    pub fn new(srv: Rc<EtcdServer>, hub: Rc<WatchHub>) -> Self {
        WatchService {
            srv: SendWrapper::new(srv),
            hub: SendWrapper::new(hub),
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<BoxStream<crate::pb::etcdserverpb::WatchResponse>>, Status> {
        let (srv, hub) = (self.srv.clone(), self.hub.clone());
        SendWrapper::new(async move {
            let (md, _, requests) = req.into_parts();
            // etcd's stream interceptor: `hasleader` streams need a leader.
            srv.check_has_leader(&md)?;
            let out: BoxStream<_> =
                Box::pin(SendWrapper::new(WatchOut::open((*hub).clone(), requests)));
            Ok(Response::new(out))
        })
        .await
    }
}

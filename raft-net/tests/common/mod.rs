//! Test fixture: a minimal in-memory state machine for openraft's storage
//! suite and the end-to-end test. Not the real state machine (that applies
//! requests to the MVCC store and comes with the server issue): it records
//! every applied request and answers each with the request's own bytes.

#![allow(dead_code)]

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ironcd_raft_net::types::LogId;
use ironcd_raft_net::{EntryPayload, Member, Response, TypeConfig};
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{RaftSnapshotBuilder, StoredMembership};

pub type Membership = StoredMembership<ironcd_raft_net::types::CommittedLeaderId, u64, Member>;
pub type Snap = Snapshot<ironcd_raft_net::types::CommittedLeaderId, u64, Member, SnapData>;

/// What a snapshot carries: every request applied so far, by index.
pub type SnapData = Vec<(u64, Bytes)>;

#[derive(Default)]
pub struct SmState {
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    /// Applied normal requests: (log index, request bytes).
    pub applied: Vec<(u64, Bytes)>,
    pub snapshot: Option<(SnapshotMeta<ironcd_raft_net::types::CommittedLeaderId, u64, Member>, SnapData)>,
}

/// Cloning shares the state (the snapshot builder is a clone).
#[derive(Clone, Default)]
pub struct MemStateMachine {
    pub state: Rc<RefCell<SmState>>,
}

impl MemStateMachine {
    pub fn applied(&self) -> Vec<(u64, Bytes)> {
        self.state.borrow().applied.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    type SnapshotData = SnapData;

    async fn build_snapshot(&mut self) -> io::Result<Snap> {
        let mut st = self.state.borrow_mut();
        let meta = SnapshotMeta { last_log_id: st.last_applied, last_membership: st.membership.clone() };
        let data = st.applied.clone();
        st.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotData = SnapData;
    type SnapshotBuilder = MemStateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, Membership)> {
        let st = self.state.borrow();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let resp = {
                let mut st = self.state.borrow_mut();
                st.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Response::default(),
                    EntryPayload::Normal(req) => {
                        st.applied.push((entry.log_id.index, req.0.clone()));
                        Response::new(req.0)
                    }
                    EntryPayload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::default()
                    }
                }
            };
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<ironcd_raft_net::types::CommittedLeaderId, u64, Member>,
        snapshot: SnapData,
    ) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.applied = snapshot.clone();
        st.snapshot = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snap>> {
        let st = self.state.borrow();
        Ok(st.snapshot.as_ref().map(|(m, d)| Snapshot { meta: m.clone(), snapshot: d.clone() }))
    }
}

/// openraft's config for the single-member groups of these tests: short
/// heartbeats and elections, so a member leads within ~300 ms.
pub fn single_member_config(cluster_name: &str) -> std::sync::Arc<openraft::Config> {
    let c = openraft::Config {
        cluster_name: cluster_name.into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    std::sync::Arc::new(c.validate().unwrap())
}

//! The raft state machine: committed entries applied to the MVCC store.
//!
//! - Each `apply` call applies its whole batch of entries in **one** B-tree
//!   write transaction and publishes it once; responses go back only after
//!   the publish, so a client that got a write's response reads it next.
//! - The B-tree is made durable (`sync`, on a blocking thread so the raft
//!   core never waits for its fdatasyncs) every `sync_every` entries, when a
//!   snapshot is built, and at shutdown. Between syncs the WAL holds what the
//!   B-tree lacks: the store records the last applied log id next to the
//!   data, and on restart openraft re-applies the log after it.
//! - The raft bookkeeping (last applied log id, membership) lives in the same
//!   transaction as the data it describes, under `raft/applied_state` in the
//!   store's meta tree.
//! - **Applying ahead.** A member that is the only voter commits an entry
//!   the moment its WAL write is durable, and nothing else runs on the raft
//!   core meanwhile. So when a batch of requests is appended and the state
//!   machine has applied everything before it, [`Ahead::hook`] applies the
//!   batch while its write is in flight, in a write transaction that it
//!   parks unpublished ([`ironcd_engine::btree::ParkedTxn`]). When openraft
//!   then hands over the committed entries, `apply` checks that they begin
//!   with exactly the log ids applied ahead and that no other transaction
//!   was committed since; it then resumes the parked transaction, applies
//!   whatever else came with the batch, and commits. Otherwise the parked
//!   work is dropped and the entries are applied as usual. Responses, watch
//!   events and lease changes still go out only after the commit, so what
//!   clients see is unchanged; the work just moved off the critical path
//!   (docs/server.md, "Applying ahead").
//! - **Publishing when durable.** For the only voter a durable entry is a
//!   committed one, so the hook also hands the log store a closure that runs
//!   when the batch's write is durable: it commits and publishes the parked
//!   work right there ([`Ahead::publish_at_durability`]) and answers the
//!   proposers waiting on [`Waiters`]; `apply` later skips those entries and
//!   gives their remaining results to openraft's responders.

use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use ironcd_engine::btree::{Db, ParkedTxn, WriteTxn};
use ironcd_engine::kv::{ReadView, Store, Tree, WriteView};
use ironcd_engine::mvcc::{self, KvStore, KvWriter, MvccError, MvccResult};
use ironcd_raft_net::types::{CommittedLeaderId, LogId};
use ironcd_raft_net::{codec, Entry, EntryPayload, Member, OnDurable, Response, TypeConfig};
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{RaftSnapshotBuilder, StoredMembership};
use prost::Message;

use crate::convert;
use crate::pb::ironcdpb::{raft_request::Request as Req, RaftRequest};

/// Meta-tree key of the raft bookkeeping.
pub const APPLIED_STATE_KEY: &[u8] = b"raft/applied_state";
/// An apply batch slower than this is logged, like etcd's warning.
const SLOW_APPLY: Duration = Duration::from_millis(100);

pub type Membership = StoredMembership<CommittedLeaderId, u64, Member>;
pub type Meta = SnapshotMeta<CommittedLeaderId, u64, Member>;

/// A snapshot of the state machine, as openraft hands it around.
pub enum StoreSnapshot {
    /// The local store pinned at one published state (to send to a peer):
    /// its raft meta is read from that same state, so data and meta agree.
    Pinned(ironcd_engine::btree::Snapshot),
    /// A snapshot received from the leader, in a file of the data dir
    /// (`crate::raft_snapshot` format), checked and ready to install.
    Received(std::path::PathBuf),
}

/// Followers' proposals wait here, by request id, for their entry to be
/// applied locally (a leader's own proposals get openraft's responder).
pub type Waiters = Rc<std::cell::RefCell<std::collections::HashMap<u64, futures_channel::oneshot::Sender<Applied>>>>;

/// Called after a snapshot was installed with the revision before it.
pub type OnRestore = Rc<dyn Fn(i64)>;

/// What applying one request produced, returned to its proposer.
#[derive(Debug)]
pub enum Applied {
    Put(MvccResult<mvcc::PutResponse>),
    DeleteRange(MvccResult<mvcc::DeleteRangeResponse>),
    Txn(MvccResult<mvcc::TxnResponse>),
    Compaction(MvccResult<mvcc::CompactionResponse>),
    LeaseGrant(MvccResult<mvcc::LeaseGrantResponse>),
    LeaseRevoke(MvccResult<mvcc::LeaseRevokeResponse>),
    LeaseCheckpoint(MvccResult<mvcc::ResponseHeader>),
    Alarm(MvccResult<crate::pb::etcdserverpb::AlarmResponse>),
    MemberAttributes(MvccResult<()>),
    /// A request this build cannot apply (undecodable, or a kind not built yet).
    Unsupported(String),
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Loads the raft bookkeeping stored with the data.
pub fn load_applied_state(view: &impl ReadView) -> io::Result<(Option<LogId>, Membership)> {
    match view.get(Tree::Meta, APPLIED_STATE_KEY).map_err(io_err)? {
        None => Ok((None, Membership::default())),
        Some(b) => {
            let (applied, mlog, m) = codec::decode_applied_state(b).map_err(io::Error::from)?;
            Ok((applied, StoredMembership::new(mlog, m)))
        }
    }
}

/// See [`StateMachine::new`].
pub type OnApply = Rc<dyn Fn(&mut Vec<mvcc::Event>, i64)>;

pub struct StateMachine {
    kv: Arc<KvStore<Db>>,
    applied: Option<LogId>,
    membership: Membership,
    unsynced: u64,
    sync_every: u64,
    /// A background sync is running (on a blocking thread: the store's sync
    /// holds its writer lock only to prepare, not during the fdatasyncs).
    sync_running: Rc<std::cell::Cell<bool>>,
    /// A background sync failed: the store is poisoned, applying must stop.
    sync_failed: Rc<std::cell::RefCell<Option<String>>>,
    /// Commits and publishes batches; shared with [`Ahead`].
    publish: Rc<Publish>,
    on_restore: Option<OnRestore>,
    ahead: Rc<Ahead>,
}

/// See [`StateMachine::with_lease_hook`].
pub type LeaseHook = Rc<dyn Fn(&[crate::lessor::LeaseChange])>;

/// The lease change an applied request made, if any.
fn lease_change(revoke_id: Option<i64>, a: &Applied) -> Option<crate::lessor::LeaseChange> {
    use crate::lessor::LeaseChange;
    match a {
        Applied::LeaseGrant(Ok(g)) => Some(LeaseChange::Granted {
            id: g.id,
            ttl: g.ttl,
        }),
        Applied::LeaseRevoke(Ok(_)) => revoke_id.map(|id| LeaseChange::Revoked { id }),
        _ => None,
    }
}

impl StateMachine {
    pub fn new(
        kv: Arc<KvStore<Db>>,
        sync_every: u64,
        on_apply: OnApply,
        waiters: Waiters,
    ) -> io::Result<Self> {
        let snap = kv.store().snapshot();
        let (applied, membership) = load_applied_state(&snap)?;
        let publish = Rc::new(Publish { on_apply, on_lease: Default::default(), waiters });
        Ok(StateMachine {
            kv,
            applied,
            membership,
            unsynced: 0,
            sync_every: sync_every.max(1),
            sync_running: Rc::default(),
            sync_failed: Rc::default(),
            on_restore: None,
            ahead: Rc::new(Ahead::new(publish.clone())),
            publish,
        }
        .with_ahead_state())
    }

    /// This member's id ([`Ahead`] publishes at durability only on the
    /// only voter).
    pub fn with_member_id(self, member_id: u64) -> Self {
        self.ahead.member_id.set(member_id);
        self.with_ahead_state()
    }

    /// The state shared with the log store's append hook ([`Ahead::hook`]).
    pub fn ahead(&self) -> Rc<Ahead> {
        self.ahead.clone()
    }

    /// Tells [`Ahead`] what the next entry to apply is and whether this
    /// member is the only voter.
    fn with_ahead_state(self) -> Self {
        self.ahead.note_applied(self.applied.as_ref(), &self.membership);
        self
    }

    /// Reports installed snapshots to `hook` (watch hub, lessor).
    pub fn with_restore_hook(mut self, hook: OnRestore) -> Self {
        self.on_restore = Some(hook);
        self
    }

    /// Reports applied lease grants, revokes and checkpoints to `hook`.
    pub fn with_lease_hook(self, hook: LeaseHook) -> Self {
        *self.publish.on_lease.borrow_mut() = Some(hook);
        self
    }

    /// Counts `n` applied entries towards the next background sync.
    fn count_unsynced(&mut self, n: u64) {
        self.unsynced += n;
        if self.unsynced >= self.sync_every {
            self.sync_in_background();
        }
    }

    /// Starts a sync on a blocking thread unless one is running, so the
    /// raft core never waits for the store's fdatasyncs.
    fn sync_in_background(&mut self) {
        if self.sync_running.get() {
            return;
        }
        self.sync_running.set(true);
        self.unsynced = 0;
        let (kv, running, failed) = (self.kv.clone(), self.sync_running.clone(), self.sync_failed.clone());
        glommio::spawn_local(async move {
            let started = Instant::now();
            let res = glommio::executor().spawn_blocking(move || kv.store().sync()).await;
            running.set(false);
            match res {
                Ok(()) => {
                    let took = started.elapsed();
                    if took > SLOW_APPLY {
                        tracing::warn!(took = ?took, "slow store sync");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "syncing the store failed; the member stops applying");
                    *failed.borrow_mut() = Some(e.to_string());
                }
            }
        })
        .detach();
    }

    /// Applies `batch` in one write transaction on top of `done` (what a
    /// parked transaction already applied, with the transaction itself), then
    /// records the raft bookkeeping, commits and publishes: watch events and
    /// lease changes go out after the commit.
    fn apply_batch(&mut self, batch: Vec<(u64, Req)>, done: Option<(WriteTxn<'_>, Done)>) -> MvccResult<Vec<Applied>> {
        let (view, done) = match done {
            // The batch is what was applied ahead: the transaction already
            // records it (same last log id, same membership).
            Some((txn, done)) if batch.is_empty() && txn.applied_index() == self.applied.map_or(0, |a| a.index) => {
                (txn, done)
            }
            done => {
                let (w, mut done) = match done {
                    Some((txn, done)) => (KvWriter::new(txn, *self.kv.config())?, done),
                    None => (self.kv.write()?, Done::default()),
                };
                let mut view = run_batch(w, batch, &mut done)?;
                record_applied(&mut view, self.applied.as_ref(), &self.membership)?;
                (view, done)
            }
        };
        self.publish.commit(view, done)
    }
}

/// Where applied batches are committed and published; the state machine
/// and [`Ahead`] (publishing when durable) share it.
struct Publish {
    /// Called after each published batch with its events (revision order)
    /// and the store's revision after the batch (watch hub).
    on_apply: OnApply,
    /// Called after each published batch with its lease changes (lessor).
    on_lease: std::cell::RefCell<Option<LeaseHook>>,
    /// Proposers waiting for their request's result by id (forwarded
    /// proposals; a lone voter's own proposals when published at durability).
    waiters: Waiters,
}

impl Publish {
    /// Commits `view` and publishes what `done` holds: watch events and
    /// lease changes go out after the commit. Gives back the results.
    fn commit(&self, view: WriteTxn<'_>, done: Done) -> MvccResult<Vec<Applied>> {
        view.commit().map_err(MvccError::Store)?;
        let Done { results, mut events, leases, revision } = done;
        (self.on_apply)(&mut events, revision);
        if let (Some(hook), false) = (&*self.on_lease.borrow(), leases.is_empty()) {
            hook(&leases);
        }
        Ok(results)
    }
}

/// What applying requests produced, to hand out once they are published.
#[derive(Default)]
struct Done {
    /// One per applied request, in order.
    results: Vec<Applied>,
    events: Vec<mvcc::Event>,
    leases: Vec<crate::lessor::LeaseChange>,
    /// The store's revision after the last request.
    revision: i64,
}

/// Applies `batch` with `w`, adding what it produced to `done`; gives back
/// the write view (revision key written) for the raft bookkeeping.
fn run_batch<'a>(
    mut w: KvWriter<WriteTxn<'a>>,
    batch: Vec<(u64, Req)>,
    done: &mut Done,
) -> MvccResult<WriteTxn<'a>> {
    for (index, req) in batch {
        let (revoke_id, checkpoints) = match &req {
            Req::LeaseRevoke(r) => (Some(r.id), None),
            Req::LeaseCheckpoint(c) => (None, Some(c.checkpoints.clone())),
            _ => (None, None),
        };
        let a = apply_one(&mut w, index, req);
        done.leases.extend(lease_change(revoke_id, &a));
        if let (Some(cps), Applied::LeaseCheckpoint(Ok(_))) = (checkpoints, &a) {
            done.leases.extend(cps.into_iter().map(|c| crate::lessor::LeaseChange::Checkpointed {
                id: c.id,
                remaining_ttl: c.remaining_ttl,
            }));
        }
        done.results.push(a);
    }
    done.events.append(&mut w.take_events());
    done.revision = w.revision();
    w.into_view()
}

/// Writes the raft bookkeeping into the transaction that applied up to it.
fn record_applied(view: &mut WriteTxn<'_>, applied: Option<&LogId>, membership: &Membership) -> MvccResult<()> {
    let state = codec::encode_applied_state(applied, membership.log_id().as_ref(), membership.membership());
    view.put(Tree::Meta, APPLIED_STATE_KEY, &state).map_err(MvccError::Store)?;
    if let Some(a) = applied {
        view.set_applied_index(a.index);
    }
    Ok(())
}

/// Applying ahead (see the module docs): the state shared by the log
/// store's append hook, which prepares, and the state machine, which
/// publishes or drops.
pub struct Ahead {
    /// The work applied ahead, waiting for its entries to be committed.
    parked: std::cell::RefCell<Option<Parked>>,
    /// A task applying ahead is spawned and has not finished.
    running: std::cell::Cell<bool>,
    /// The index of the next entry the state machine will apply.
    next_index: std::cell::Cell<u64>,
    /// The membership has one voter, so an appended entry is committed once
    /// it is durable here (other members would make the parked work wait a
    /// round trip, holding up nothing but likely to be dropped).
    sole_voter: std::cell::Cell<bool>,
    /// Batches applied ahead and then published / dropped (tests and logs).
    used: std::cell::Cell<u64>,
    dropped: std::cell::Cell<u64>,
    /// Of `used`, the batches published when their write became durable.
    early: std::cell::Cell<u64>,
    /// This member's id: publishing at durability needs this member to be
    /// the only voter (a learner's durable entries are not committed).
    member_id: std::cell::Cell<u64>,
    /// The last log index appended (the log store's hook sees every batch).
    appended: std::cell::Cell<u64>,
    /// A batch published when its write became durable, before openraft saw
    /// it committed: `apply` skips its entries and hands their results to
    /// openraft's responders.
    published: std::cell::RefCell<Option<Published>>,
    /// Commits and publishes (shared with the state machine).
    publish: Rc<Publish>,
    /// Committing at durability failed: the store is unusable, and the next
    /// `apply` reports it to openraft.
    failed: std::cell::RefCell<Option<String>>,
}

/// See [`Ahead::published`].
struct Published {
    ids: Vec<LogId>,
    /// `None` where the result went to the proposer's waiter.
    results: Vec<Option<Applied>>,
}

struct Parked {
    /// The log ids applied, in order; every one a normal entry.
    ids: Vec<LogId>,
    /// Their proposals' request ids (waiters of forwarded proposals).
    req_ids: Vec<u64>,
    txn: ParkedTxn,
    done: Done,
}

impl Ahead {
    fn new(publish: Rc<Publish>) -> Ahead {
        Ahead {
            parked: Default::default(),
            running: Default::default(),
            next_index: Default::default(),
            sole_voter: Default::default(),
            used: Default::default(),
            dropped: Default::default(),
            early: Default::default(),
            member_id: Default::default(),
            appended: Default::default(),
            published: Default::default(),
            publish,
            failed: Default::default(),
        }
    }

    fn note_applied(&self, applied: Option<&LogId>, membership: &Membership) {
        self.next_index.set(applied.map_or(0, |a| a.index + 1));
        let mut voters = membership.membership().voter_ids();
        let me = self.member_id.get();
        self.sole_voter.set(me != 0 && voters.next() == Some(me) && voters.next().is_none());
    }

    /// Whether a proposal here can be answered when its write is durable
    /// ([`Ahead::publish_at_durability`]): this member is the only voter.
    /// The proposer then waits on [`Waiters`] as well as on openraft.
    pub fn answers_at_durability(&self) -> bool {
        self.sole_voter.get()
    }

    /// Batches whose parked work was published, of those the ones
    /// published at durability, and batches whose parked work was dropped.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.used.get(), self.early.get(), self.dropped.get())
    }

    /// The log store's append hook: when the state machine will apply
    /// these entries next and nothing else is applied ahead, spawns a task
    /// that applies them in a parked transaction. The task runs after the
    /// WAL's write has reached the kernel, so the work overlaps the write.
    pub fn hook(self: &Rc<Self>, kv: &Arc<KvStore<Db>>, entries: &[Entry]) -> Option<OnDurable> {
        let (first, last) = (entries.first()?.log_id, entries.last()?.log_id);
        self.appended.set(last.index);
        if !self.sole_voter.get()
            || self.running.get()
            || self.parked.borrow().is_some()
            || first.index != self.next_index.get()
            || !entries.iter().all(|e| matches!(e.payload, EntryPayload::Normal(_)))
        {
            return None;
        }
        let batch: Vec<(LogId, bytes::Bytes)> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(r) => Some((e.log_id, r.0.clone())),
                _ => None,
            })
            .collect();
        self.running.set(true);
        let kv_durable = kv.clone();
        let (this, kv) = (self.clone(), kv.clone());
        glommio::spawn_local(async move {
            // Behind the WAL writer (the log store yields to it, and it hands
            // its write to the kernel as soon as it is queued) and the rest
            // of openraft's turn: the work below overlaps the write.
            glommio::executor().yield_now().await;
            let parked = prepare_ahead(&kv, batch);
            this.running.set(false);
            if let Some(p) = parked {
                // The state machine may have applied these entries in the
                // meantime (then the parked base is stale and is dropped).
                *this.parked.borrow_mut() = Some(p);
            }
        })
        .detach();
        let (this, kv) = (self.clone(), kv_durable);
        Some(Box::new(move || this.publish_at_durability(&kv, last)))
    }

    /// Called when the batch ending at `last` is durable: if this member is
    /// still the only voter, nothing was appended after the batch, and its
    /// parked work is ready and still current, the batch is committed by
    /// that durability alone (a quorum of one), so it is committed and
    /// published now, without waiting for openraft's core to see the write
    /// durable and hand the entries to `apply`. Proposers waiting on
    /// [`Waiters`] get their results at once; the others' results wait for
    /// `apply` and openraft's responders.
    fn publish_at_durability(&self, kv: &KvStore<Db>, last: LogId) {
        if !self.sole_voter.get() || self.appended.get() != last.index || self.published.borrow().is_some() {
            return;
        }
        let Some(p) = self.parked.borrow_mut().take_if(|p| p.ids.last() == Some(&last)) else { return };
        let Parked { ids, req_ids, txn, done } = p;
        let txn = match kv.store().resume(txn) {
            Ok(Some(txn)) => txn,
            // Something else was committed meanwhile: `apply` applies anew.
            Ok(None) | Err(_) => {
                self.dropped.set(self.dropped.get() + 1);
                return;
            }
        };
        let results = match self.publish.commit(txn, done) {
            Ok(results) => results,
            Err(e) => {
                tracing::error!(error = %e, "committing entries at durability failed");
                *self.failed.borrow_mut() = Some(e.to_string());
                return;
            }
        };
        let mut waiters = self.publish.waiters.borrow_mut();
        let out = req_ids
            .iter()
            .zip(results)
            .map(|(id, r)| match waiters.remove(id) {
                Some(w) => {
                    let _ = w.send(r);
                    None
                }
                None => Some(r),
            })
            .collect();
        drop(waiters);
        self.next_index.set(last.index + 1);
        self.used.set(self.used.get() + 1);
        self.early.set(self.early.get() + 1);
        *self.published.borrow_mut() = Some(Published { ids, results: out });
    }
}

/// Applies `batch` on top of the published state in a transaction that is
/// parked, not committed; `None` when the state machine has not applied
/// everything before the batch, a request does not decode, or the store
/// fails (the entries are then applied as usual, and fail there visibly).
fn prepare_ahead(kv: &KvStore<Db>, batch: Vec<(LogId, bytes::Bytes)>) -> Option<Parked> {
    let w = kv.write().ok()?;
    let (applied, membership) = load_applied_state(w.view()).ok()?;
    let first = batch.first()?.0;
    if first.index != applied.map_or(0, |a| a.index + 1) {
        return None;
    }
    let mut ids = Vec::with_capacity(batch.len());
    let mut req_ids = Vec::with_capacity(batch.len());
    let mut reqs = Vec::with_capacity(batch.len());
    for (id, data) in batch {
        let r = RaftRequest::decode(data).ok()?;
        reqs.push((id.index, r.request?));
        ids.push(id);
        req_ids.push(r.id);
    }
    let mut done = Done::default();
    let mut view = run_batch(w, reqs, &mut done).ok()?;
    record_applied(&mut view, ids.last(), &membership).ok()?;
    Some(Parked { ids, req_ids, txn: view.park(), done })
}

fn apply_one(w: &mut KvWriter<<Db as Store>::Write<'_>>, index: u64, req: Req) -> Applied {
    match req {
        // By value: the watch event takes the decoded key and value buffers.
        Req::Put(p) => Applied::Put(w.put_owned(index, convert::put_req(p))),
        Req::DeleteRange(d) => Applied::DeleteRange(w.delete_range(index, &convert::delete_req(d))),
        Req::Txn(t) => match convert::txn_req(t) {
            Ok(t) => Applied::Txn(w.txn(index, &t)),
            Err(e) => Applied::Unsupported(e.message().to_string()),
        },
        Req::Compaction(c) => Applied::Compaction(w.compact(index, &convert::compaction_req(c))),
        Req::LeaseGrant(g) => Applied::LeaseGrant(w.lease_grant(
            index,
            &mvcc::LeaseGrantRequest {
                ttl: g.ttl,
                id: g.id,
            },
        )),
        Req::LeaseRevoke(r) => {
            Applied::LeaseRevoke(w.lease_revoke(index, &mvcc::LeaseRevokeRequest { id: r.id }))
        }
        Req::LeaseCheckpoint(c) => {
            let cps: Vec<mvcc::LeaseCheckpoint> = c
                .checkpoints
                .into_iter()
                .map(|c| mvcc::LeaseCheckpoint {
                    id: c.id,
                    remaining_ttl: c.remaining_ttl,
                })
                .collect();
            Applied::LeaseCheckpoint(w.lease_checkpoint(index, &cps))
        }
        Req::Alarm(a) => Applied::Alarm(crate::alarm::apply(w.view_mut(), &a)),
        Req::MemberAttributes(m) => Applied::MemberAttributes(
            w.view_mut()
                .put(Tree::Members, &m.id.to_be_bytes(), &m.encode_to_vec())
                .map_err(MvccError::Store),
        ),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineSnapshotBuilder {
    type SnapshotData = StoreSnapshot;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<Snapshot<CommittedLeaderId, u64, Member, StoreSnapshot>> {
        // The store is synced before openraft may purge the log behind the
        // snapshot (on a blocking thread: two fdatasyncs). The snapshot is
        // the synced state, its meta read from that same state.
        let kv = self.kv.clone();
        glommio::executor().spawn_blocking(move || kv.store().sync()).await.map_err(io_err)?;
        pinned(&self.kv)
    }
}

/// The current published store state as a raft snapshot.
fn pinned(kv: &KvStore<Db>) -> io::Result<Snapshot<CommittedLeaderId, u64, Member, StoreSnapshot>> {
    let snap = kv.store().snapshot();
    let (last_log_id, last_membership) = load_applied_state(&snap)?;
    Ok(Snapshot {
        meta: Meta { last_log_id, last_membership },
        snapshot: StoreSnapshot::Pinned(snap),
    })
}

/// Builds a snapshot of the state at the time it was created.
pub struct StateMachineSnapshotBuilder {
    kv: Arc<KvStore<Db>>,
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = StoreSnapshot;
    type SnapshotBuilder = StateMachineSnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, Membership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin,
    {
        if let Some(e) = self.sync_failed.borrow().as_ref() {
            return Err(io::Error::other(format!("the store is poisoned by a failed sync: {e}")));
        }
        if let Some(e) = self.ahead.failed.borrow().as_ref() {
            return Err(io::Error::other(format!("committing entries at durability failed: {e}")));
        }
        // Collect first: the write transaction is never held across an await.
        let mut items = Vec::new();
        while let Some(item) = entries.next().await {
            items.push(item?);
        }
        // Entries published at durability: already in the store; their
        // results go to openraft's responders.
        let mut n = 0;
        let published = self.ahead.published.borrow_mut().take();
        if let Some(mut p) = published {
            // openraft may hand them over in more than one batch.
            let k = p.ids.len().min(items.len());
            if p.ids[..k].iter().zip(&items).any(|(id, (e, _))| *id != e.log_id) {
                return Err(io::Error::other(format!(
                    "entries published when durable ({:?}..={:?}) are not the committed entries",
                    p.ids.first(),
                    p.ids.last()
                )));
            }
            let rest = items.split_off(k);
            for ((_, responder), result) in items.into_iter().zip(p.results.drain(..k)) {
                // No result: its proposer was answered when it was durable
                // (and no longer listens here).
                if let Some(r) = responder {
                    r.send(result.map_or_else(Response::default, Response::new));
                }
            }
            self.applied = p.ids.drain(..k).last().or(self.applied);
            if !p.ids.is_empty() {
                *self.ahead.published.borrow_mut() = Some(p);
            }
            items = rest;
            n += k as u64;
            if items.is_empty() {
                self.ahead.note_applied(self.applied.as_ref(), &self.membership);
                self.count_unsynced(n);
                return Ok(());
            }
        }
        // Work applied ahead counts if the batch begins with exactly its
        // entries and nothing was committed since it began.
        let parked = self.ahead.parked.borrow_mut().take();
        let kv = self.kv.clone();
        let mut resumed = None;
        let mut skip = 0;
        if let Some(p) = parked {
            let matches = p.ids.len() <= items.len() && p.ids.iter().zip(&items).all(|(id, (e, _))| *id == e.log_id);
            let txn = if matches { kv.store().resume(p.txn).map_err(io_err)? } else { None };
            match txn {
                Some(txn) => {
                    skip = p.ids.len();
                    self.applied = p.ids.last().copied();
                    self.ahead.used.set(self.ahead.used.get() + 1);
                    resumed = Some((txn, p.done, p.req_ids));
                }
                None => self.ahead.dropped.set(self.ahead.dropped.get() + 1),
            }
        }
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        let mut items = items.into_iter();
        if let Some((_, _, req_ids)) = &resumed {
            for ((_, responder), id) in items.by_ref().take(skip).zip(req_ids) {
                responders.push((responder, *id));
            }
        }
        for (entry, responder) in items {
            self.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {
                    if let Some(r) = responder {
                        r.send(Response::default());
                    }
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    if let Some(r) = responder {
                        r.send(Response::default());
                    }
                }
                EntryPayload::Normal(req) => {
                    let decoded = RaftRequest::decode(req.0).ok().and_then(|r| Some((r.id, r.request?)));
                    match decoded {
                        Some((id, r)) => {
                            batch.push((entry.log_id.index, r));
                            responders.push((responder, id));
                        }
                        None => {
                            tracing::error!(
                                index = entry.log_id.index,
                                "undecodable request in the raft log"
                            );
                            if let Some(r) = responder {
                                r.send(Response::new(Applied::Unsupported(
                                    "undecodable request".into(),
                                )));
                            }
                        }
                    }
                }
            }
        }
        let n = n + (batch.len() + skip) as u64;
        let started = Instant::now();
        let results = self
            .apply_batch(batch, resumed.map(|(txn, done, _)| (txn, done)))
            .map_err(io_err)?;
        let took = started.elapsed();
        if took > SLOW_APPLY {
            tracing::warn!(took = ?took, expected_duration = ?SLOW_APPLY, entries = n, "apply request took too long");
        }
        self.ahead.note_applied(self.applied.as_ref(), &self.membership);
        let mut waiters = self.publish.waiters.borrow_mut();
        for ((responder, id), result) in responders.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(Response::new(result));
            } else if let Some(w) = waiters.remove(&id) {
                let _ = w.send(result);
            }
        }
        drop(waiters);
        self.count_unsynced(n.max(1));
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineSnapshotBuilder {
        StateMachineSnapshotBuilder { kv: self.kv.clone() }
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: StoreSnapshot) -> io::Result<()> {
        let StoreSnapshot::Received(path) = snapshot else {
            return Err(io::Error::other("only a received snapshot can be installed"));
        };
        let prev_revision = self.kv.read().map(|r| r.revision()).unwrap_or(0);
        let started = Instant::now();
        let res = crate::raft_snapshot::install(&self.kv, &path, meta.last_log_id.as_ref());
        let _ = std::fs::remove_file(&path);
        let records = res?;
        // Durable before openraft records the snapshot and purges its log.
        let kv = self.kv.clone();
        glommio::executor().spawn_blocking(move || kv.store().sync()).await.map_err(io_err)?;
        let (applied, membership) = load_applied_state(&self.kv.store().snapshot())?;
        self.applied = applied;
        self.membership = membership;
        self.ahead.note_applied(self.applied.as_ref(), &self.membership);
        self.unsynced = 0;
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            records,
            took = ?started.elapsed(),
            "installed a snapshot from the leader"
        );
        if let Some(h) = &self.on_restore {
            h(prev_revision);
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<Snapshot<CommittedLeaderId, u64, Member, StoreSnapshot>>> {
        if self.applied.is_none() {
            return Ok(None);
        }
        pinned(&self.kv).map(Some)
    }
}

//! etcd's lessor (`lease/lessor.go`), the timing side: which leases exist,
//! when each expires by this member's clock, and the loop that revokes
//! expired leases through raft. The data side (lease records and attached
//! keys) lives in the MVCC store (`engine/src/mvcc/lease.rs`).
//!
//! - The lease set mirrors the store: loaded from it at start, then kept in
//!   step by the state machine, which reports every applied grant, revoke
//!   and checkpoint ([`LeaseChange`]) after the batch is published.
//! - Only the *primary* lessor (the raft leader, once it has applied every
//!   entry of earlier terms) runs clocks. Promotion gives every lease its
//!   full TTL plus one election timeout, exactly as etcd 3.4's
//!   `Promote(electionTimeout)`; demotion sets every expiry to "forever".
//! - Expiries sit in a min-heap with lazy invalidation: a renewal pushes a
//!   new entry and the old one is skipped when it surfaces; the heap is
//!   rebuilt when stale entries outnumber live leases. O(log n) per
//!   grant/renew, so 100k leases cost a few MB and no scans.
//! - Every 500 ms the primary takes at most 500 expired leases (etcd's
//!   `leaseRevokeRate` of 1000/s) and proposes a `LeaseRevoke` for each, at
//!   most 16 in flight (etcd's `maxPendingRevokes`). A lease handed to revoke
//!   is re-checked 3 s later (etcd's `expiredLeaseRetryInterval`), so a lost
//!   proposal is retried.
//! - Renewals (keep-alives) never touch the raft log.
//!
//! Everything runs on the raft core's executor: `RefCell`, no locks.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ironcd_engine::btree::Db;
use ironcd_engine::mvcc::{self, KvStore};
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tonic::Status;

use crate::error;
use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb as pb;
use crate::pb::ironcdpb::raft_request::Request as Req;
use crate::state_machine::Applied;

/// etcd's `leaseRevokeRate`: expired leases revoked per second at most.
pub const LEASE_REVOKE_RATE: usize = 1000;
/// etcd's lessor loop period.
const TICK: Duration = Duration::from_millis(500);
/// etcd's `defaultExpiredleaseRetryInterval`.
const EXPIRED_RETRY: Duration = Duration::from_secs(3);
/// etcd's `maxPendingRevokes`.
const MAX_PENDING_REVOKES: usize = 16;
/// How often a request waiting for the lessor (promotion, a pending revoke) looks again.
const POLL: Duration = Duration::from_millis(10);

/// A lease change the state machine applied (and published).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
    Checkpointed { id: i64, remaining_ttl: i64 },
}

/// What [`Lessor::renew`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renew {
    /// Renewed; the lease's granted TTL.
    Renewed(i64),
    NotFound,
    /// Past its expiry, its revoke pending: etcd makes the renewal wait for it.
    Expired,
    /// This lessor does not run clocks (not the leader, or not promoted yet).
    NotPrimary,
}

#[derive(Debug)]
struct Entry {
    /// Granted TTL in seconds (raised to the minimum).
    ttl: i64,
    /// Last checkpointed remaining TTL (0 = none).
    remaining_ttl: i64,
    /// `None` = forever (not primary).
    expiry: Option<Instant>,
    /// The heap entry of this lease that is current; any other is stale.
    check_at: Option<Instant>,
}

impl Entry {
    /// etcd's `Lease.RemainingTTL()`: the checkpointed remainder if any, else the TTL.
    fn effective_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    leases: HashMap<i64, Entry>,
    heap: BinaryHeap<Reverse<(Instant, i64)>>,
    primary: bool,
}

impl Inner {
    fn schedule(&mut self, id: i64, at: Instant) {
        if let Some(e) = self.leases.get_mut(&id) {
            e.check_at = Some(at);
            self.heap.push(Reverse((at, id)));
        }
        self.maybe_rebuild();
    }

    /// Drops stale heap entries once they outnumber live ones.
    fn maybe_rebuild(&mut self) {
        if self.heap.len() > 2 * self.leases.len() + 1024 {
            let heap: Vec<_> = self
                .leases
                .iter()
                .filter_map(|(id, e)| e.check_at.map(|t| Reverse((t, *id))))
                .collect();
            self.heap = BinaryHeap::from(heap);
        }
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

pub struct Lessor {
    inner: RefCell<Inner>,
    min_ttl: i64,
    /// A batch of revokes is in flight.
    revoking: Cell<bool>,
}

impl Lessor {
    /// A lessor over `leases` (as stored), none primary yet. TTLs below
    /// `min_ttl` are raised, as etcd's recovery does.
    pub fn new(leases: impl IntoIterator<Item = mvcc::Lease>, min_ttl: i64) -> Lessor {
        let mut inner = Inner::default();
        for l in leases {
            let e = Entry {
                ttl: l.ttl.max(min_ttl),
                remaining_ttl: l.remaining_ttl,
                expiry: None,
                check_at: None,
            };
            inner.leases.insert(l.id, e);
        }
        Lessor {
            inner: RefCell::new(inner),
            min_ttl,
            revoking: Cell::new(false),
        }
    }

    /// Loads the leases of the store's current (applied) state.
    pub fn load(kv: &KvStore<Db>, min_ttl: i64) -> Result<Lessor, String> {
        let leases = kv
            .read()
            .and_then(|r| r.lease_list())
            .map_err(|e| format!("loading leases: {e}"))?;
        Ok(Lessor::new(leases, min_ttl))
    }

    /// Replaces every lease with those of the store's current state (after
    /// a snapshot from the leader was installed); the lessor is not primary.
    pub fn reload(&self, kv: &KvStore<Db>) -> Result<(), String> {
        let fresh = Lessor::load(kv, self.min_ttl)?;
        *self.inner.borrow_mut() = fresh.inner.into_inner();
        Ok(())
    }

    /// How many leases exist.
    pub fn count(&self) -> usize {
        self.inner.borrow().leases.len()
    }

    pub fn is_primary(&self) -> bool {
        self.inner.borrow().primary
    }

    /// The state machine's hook: applied (and published) lease changes.
    pub fn applied(&self, changes: &[LeaseChange]) {
        self.applied_at(changes, Instant::now())
    }

    pub fn applied_at(&self, changes: &[LeaseChange], now: Instant) {
        let mut g = self.inner.borrow_mut();
        for c in changes {
            match *c {
                LeaseChange::Granted { id, ttl } => {
                    let ttl = ttl.max(self.min_ttl);
                    let expiry = g.primary.then(|| now + secs(ttl));
                    g.leases.insert(
                        id,
                        Entry {
                            ttl,
                            remaining_ttl: 0,
                            expiry,
                            check_at: None,
                        },
                    );
                    if let Some(t) = expiry {
                        g.schedule(id, t);
                    }
                }
                LeaseChange::Revoked { id } => {
                    g.leases.remove(&id);
                }
                LeaseChange::Checkpointed { id, remaining_ttl } => {
                    if let Some(e) = g.leases.get_mut(&id) {
                        e.remaining_ttl = remaining_ttl;
                    }
                }
            }
        }
    }

    /// Makes this lessor primary: every lease expires `extend` plus its
    /// (checkpointed) TTL from now; with 1000 leases or more, expiries that
    /// pile up are spread so that no second holds more than 3/4 of the
    /// revoke rate (etcd's `Promote`).
    pub fn promote(&self, extend: Duration, now: Instant) {
        let mut g = self.inner.borrow_mut();
        g.primary = true;
        g.heap.clear();
        let ids: Vec<i64> = g.leases.keys().copied().collect();
        for &id in &ids {
            let e = g.leases.get_mut(&id).expect("listed");
            let t = now + extend + secs(e.effective_ttl());
            e.expiry = Some(t);
            g.schedule(id, t);
        }
        if ids.len() < LEASE_REVOKE_RATE {
            return;
        }
        let remaining = |g: &Inner, id: i64| -> f64 {
            g.leases[&id]
                .expiry
                .map_or(f64::MAX, |t| t.saturating_duration_since(now).as_secs_f64())
        };
        let mut order: Vec<(f64, i64)> = ids.iter().map(|&id| (remaining(&g, id), id)).collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut base = order[0].0;
        let mut next = base + 1.0;
        let mut expires = 0usize;
        let target = (3 * LEASE_REVOKE_RATE) / 4;
        for (rem, id) in order {
            if rem > next {
                base = rem;
                next = base + 1.0;
                expires = 1;
                continue;
            }
            expires += 1;
            if expires <= target {
                continue;
            }
            let delay = (expires as f64 / target as f64 - (rem - base)).max(0.0);
            next = base + delay;
            let e = g.leases.get_mut(&id).expect("listed");
            let t = now + Duration::from_secs_f64(delay) + extend + secs(e.effective_ttl());
            e.expiry = Some(t);
            g.schedule(id, t);
        }
    }

    /// Stops the clocks: every lease lives forever until promoted again.
    pub fn demote(&self) {
        let mut g = self.inner.borrow_mut();
        g.primary = false;
        g.heap.clear();
        for e in g.leases.values_mut() {
            e.expiry = None;
            e.check_at = None;
        }
    }

    /// etcd's `Renew`: a live lease's expiry moves to now plus its TTL.
    pub fn renew(&self, id: i64, now: Instant) -> Renew {
        let mut g = self.inner.borrow_mut();
        if !g.primary {
            return Renew::NotPrimary;
        }
        let Some(e) = g.leases.get_mut(&id) else {
            return Renew::NotFound;
        };
        if e.expiry.is_some_and(|t| t <= now) {
            return Renew::Expired;
        }
        let ttl = e.ttl;
        let t = now + secs(ttl);
        e.expiry = Some(t);
        g.schedule(id, t);
        Renew::Renewed(ttl)
    }

    /// `(granted TTL, remaining seconds)`, remaining as etcd computes it:
    /// the time to expiry truncated toward zero (negative once expired,
    /// about 9.2e9 for "forever").
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let g = self.inner.borrow();
        let e = g.leases.get(&id)?;
        let remaining = match e.expiry {
            None => i64::MAX / 1_000_000_000,
            Some(t) if t >= now => (t - now).as_secs() as i64,
            Some(t) => -((now - t).as_secs() as i64),
        };
        Some((e.ttl, remaining))
    }

    /// Every lease id, soonest expiry first (etcd's `Leases()` order; ties by id).
    pub fn ids_by_expiry(&self) -> Vec<i64> {
        let g = self.inner.borrow();
        let mut v: Vec<(Option<Instant>, i64)> =
            g.leases.iter().map(|(id, e)| (e.expiry, *id)).collect();
        // None (forever) sorts last.
        v.sort_by(|a, b| {
            match (a.0, b.0) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
            .then(a.1.cmp(&b.1))
        });
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// etcd's `findExpiredLeases`: at most `limit` leases past their expiry;
    /// each is looked at again `EXPIRED_RETRY` later in case its revoke is lost.
    pub fn take_expired(&self, now: Instant, limit: usize) -> Vec<i64> {
        let mut g = self.inner.borrow_mut();
        let mut out = Vec::new();
        if !g.primary {
            return out;
        }
        while out.len() < limit {
            let Some(&Reverse((t, id))) = g.heap.peek() else {
                break;
            };
            let current = g.leases.get(&id).is_some_and(|e| e.check_at == Some(t));
            if !current {
                g.heap.pop();
                continue;
            }
            if t > now {
                break;
            }
            g.heap.pop();
            let expired = g.leases[&id].expiry.is_some_and(|x| x <= now);
            g.schedule(id, now + EXPIRED_RETRY);
            if expired {
                out.push(id);
            }
        }
        out
    }

    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.inner.borrow().heap.len()
    }
}

// ------------------------------------------------------------ the runtime

/// Starts the lessor's two tasks on this executor: leadership tracking
/// (promote/demote) and the expiry loop. Both end when the server is dropped.
pub fn start(srv: &Rc<EtcdServer>) {
    let weak = Rc::downgrade(srv);
    glommio::spawn_local(track_leadership(weak.clone())).detach();
    glommio::spawn_local(expire_loop(weak)).detach();
}

/// Promotes the lessor once this member leads and has applied every entry
/// of earlier terms (a read index proves it), as etcd promotes on applying
/// the leader's first entry; demotes it when leadership is lost.
async fn track_leadership(weak: Weak<EtcdServer>) {
    let Some(mut rx) = weak.upgrade().map(|s| s.raft.server_metrics()) else {
        return;
    };
    let mut promoted_term = None;
    loop {
        let leads = {
            let m = rx.borrow_watched();
            m.state == ServerState::Leader && m.current_leader == Some(m.id)
        };
        let Some(srv) = weak.upgrade() else { return };
        let term = srv.header_info().raft_term;
        if promoted_term.is_some() && (!leads || promoted_term != Some(term)) {
            srv.lessor.demote();
            promoted_term = None;
            tracing::info!("lessor demoted");
        }
        if leads && promoted_term.is_none() {
            match srv.linearize().await {
                Ok(()) => {
                    let still = rx.borrow_watched().state == ServerState::Leader
                        && srv.header_info().raft_term == term;
                    if still {
                        let extend = Duration::from_millis(srv.cfg.election_timeout);
                        srv.lessor.promote(extend, Instant::now());
                        promoted_term = Some(term);
                        tracing::info!(leases = srv.lessor.count(), term, "lessor promoted");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "lessor promotion waits for the leader's first entry")
                }
            }
            if promoted_term.is_none() {
                drop(srv);
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        drop(srv);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Revokes expired leases through raft, rate-limited like etcd's lessor.
async fn expire_loop(weak: Weak<EtcdServer>) {
    loop {
        glommio::timer::sleep(TICK).await;
        let Some(srv) = weak.upgrade() else { return };
        if srv.lessor.revoking.get() {
            continue;
        }
        let ids = srv
            .lessor
            .take_expired(Instant::now(), LEASE_REVOKE_RATE / 2);
        if ids.is_empty() {
            continue;
        }
        srv.lessor.revoking.set(true);
        glommio::spawn_local(async move {
            futures_util::stream::iter(ids)
                .for_each_concurrent(MAX_PENDING_REVOKES, |id| {
                    let srv = srv.clone();
                    async move {
                        match srv.propose(Req::LeaseRevoke(pb::LeaseRevokeRequest { id })).await {
                            Ok(Applied::LeaseRevoke(Ok(_))) => tracing::debug!(lease = %format!("{id:016x}"), "expired lease revoked"),
                            Ok(Applied::LeaseRevoke(Err(mvcc::MvccError::LeaseNotFound))) => {}
                            Ok(other) => tracing::warn!(lease = id, result = ?other, "revoking an expired lease"),
                            Err(e) => tracing::warn!(lease = id, error = %e, "failed to revoke an expired lease"),
                        }
                    }
                })
                .await;
            srv.lessor.revoking.set(false);
        })
        .detach();
    }
}

impl EtcdServer {
    /// Waits (bounded by the request timeout) until this member's lessor is
    /// primary. Another member leading: forwarding renewals to it is not
    /// built yet, so the request fails with `not leader`.
    async fn lessor_ready<T>(&self, mut f: impl FnMut(&Lessor) -> Option<T>) -> Result<T, Status> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            if let Some(v) = f(&self.lessor) {
                return Ok(v);
            }
            match self.leader() {
                Some(l) if l != self.member_id => {
                    return Err(Status::failed_precondition(error::NOT_LEADER))
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(error::timeout());
            }
            glommio::timer::sleep(POLL).await;
        }
    }

    /// etcd's `LeaseRenew`: on the leader, or forwarded to it. `Ok(None)`
    /// when the lease does not exist.
    pub async fn lease_renew(&self, id: i64) -> Result<Option<i64>, Status> {
        // Wait for a leader first (an election may be under way), then
        // renew here or on it.
        let leader = self.wait_leader(Instant::now() + self.request_timeout()).await?;
        if leader != self.member_id {
            if let Some(b) = self.call_leader(crate::peer_service::PeerMsg::LeaseRenew, &id.to_le_bytes()).await? {
                return Ok(b.get(..8).map(|x| i64::from_le_bytes(x.try_into().unwrap_or_default())));
            }
        }
        self.lease_renew_local(id).await
    }

    /// [`Self::lease_renew`] on this member's lessor (the leader's).
    pub async fn lease_renew_local(&self, id: i64) -> Result<Option<i64>, Status> {
        self.lessor_ready(|l| match l.renew(id, Instant::now()) {
            Renew::Renewed(ttl) => Some(Some(ttl)),
            Renew::NotFound => Some(None),
            Renew::Expired | Renew::NotPrimary => None,
        })
        .await
    }

    /// `(granted TTL, remaining)` from the primary lessor (the leader's,
    /// asked over the peer transport on a follower), `None` for an unknown lease.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>, Status> {
        let leader = self.wait_leader(Instant::now() + self.request_timeout()).await?;
        if leader != self.member_id {
            if let Some(b) = self.call_leader(crate::peer_service::PeerMsg::LeaseTimeToLive, &id.to_le_bytes()).await? {
                if b.len() < 16 {
                    return Ok(None);
                }
                let g = i64::from_le_bytes(b[..8].try_into().unwrap_or_default());
                let r = i64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
                return Ok(Some((g, r)));
            }
        }
        self.lease_time_to_live_local(id).await
    }

    /// [`Self::lease_time_to_live`] on this member's lessor.
    pub async fn lease_time_to_live_local(&self, id: i64) -> Result<Option<(i64, i64)>, Status> {
        self.lessor_ready(|l| l.is_primary().then(|| l.time_to_live(id, Instant::now())))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: i64, ttl: i64) -> mvcc::Lease {
        mvcc::Lease {
            id,
            ttl,
            remaining_ttl: 0,
            keys: Vec::new(),
        }
    }

    #[test]
    fn not_primary_means_forever() {
        let l = Lessor::new([lease(1, 1)], 2);
        let now = Instant::now();
        assert_eq!(l.time_to_live(1, now), Some((2, i64::MAX / 1_000_000_000)));
        assert_eq!(l.renew(1, now), Renew::NotPrimary);
        assert!(l
            .take_expired(now + Duration::from_secs(100), 10)
            .is_empty());
    }

    #[test]
    fn promote_extends_by_election_timeout_then_expires() {
        let l = Lessor::new([lease(1, 10), lease(2, 5)], 2);
        let t0 = Instant::now();
        l.promote(Duration::from_secs(1), t0);
        assert_eq!(l.time_to_live(1, t0), Some((10, 11)));
        assert_eq!(l.ids_by_expiry(), vec![2, 1]);
        assert!(l.take_expired(t0 + Duration::from_secs(5), 10).is_empty());
        assert_eq!(l.take_expired(t0 + Duration::from_secs(6), 10), vec![2]);
        // Handed to revoke: not again before the retry interval...
        assert!(l.take_expired(t0 + Duration::from_secs(7), 10).is_empty());
        assert_eq!(l.renew(2, t0 + Duration::from_secs(7)), Renew::Expired);
        // ...then again if the revoke was lost.
        assert_eq!(l.take_expired(t0 + Duration::from_secs(9), 10), vec![2]);
        l.applied_at(&[LeaseChange::Revoked { id: 2 }], t0);
        assert_eq!(l.renew(2, t0), Renew::NotFound);
        assert_eq!(l.take_expired(t0 + Duration::from_secs(20), 10), vec![1]);
    }

    #[test]
    fn renew_moves_expiry_and_stale_entries_are_skipped() {
        let l = Lessor::new([], 2);
        let t0 = Instant::now();
        l.promote(Duration::from_secs(1), t0);
        l.applied_at(&[LeaseChange::Granted { id: 7, ttl: 1 }], t0);
        assert_eq!(l.time_to_live(7, t0), Some((2, 2)));
        for i in 1..=5 {
            assert_eq!(l.renew(7, t0 + Duration::from_secs(i)), Renew::Renewed(2));
        }
        // Expiry is now t0+7.
        assert!(l
            .take_expired(t0 + Duration::from_millis(6900), 10)
            .is_empty());
        assert_eq!(l.take_expired(t0 + Duration::from_secs(7), 10), vec![7]);
    }

    #[test]
    fn demote_stops_clocks() {
        let l = Lessor::new([lease(1, 5)], 2);
        let t0 = Instant::now();
        l.promote(Duration::ZERO, t0);
        l.demote();
        assert!(l.take_expired(t0 + Duration::from_secs(60), 10).is_empty());
        assert_eq!(l.renew(1, t0), Renew::NotPrimary);
        l.applied_at(&[LeaseChange::Granted { id: 2, ttl: 5 }], t0);
        assert_eq!(l.ids_by_expiry(), vec![1, 2]);
    }

    #[test]
    fn rate_limit_and_heap_stays_bounded() {
        let n = 100_000;
        let l = Lessor::new((1..=n).map(|i| lease(i, 10)), 2);
        let t0 = Instant::now();
        l.promote(Duration::from_secs(1), t0);
        // Promotion spread the pile-up: no more than 3/4 of the rate expire in the first second.
        let first = l.take_expired(t0 + Duration::from_secs(12), usize::MAX);
        assert!(
            first.len() <= 3 * LEASE_REVOKE_RATE / 4 + 1,
            "{}",
            first.len()
        );
        // Renewing every lease many times does not grow the heap without bound.
        for round in 0..10 {
            for i in 1..=n {
                l.renew(i, t0 + Duration::from_millis(round));
            }
        }
        assert!(
            l.heap_len() <= 2 * n as usize + 1024 + 1,
            "{}",
            l.heap_len()
        );
        let got = l.take_expired(t0 + Duration::from_secs(3600), LEASE_REVOKE_RATE / 2);
        assert_eq!(got.len(), LEASE_REVOKE_RATE / 2);
    }

    #[test]
    fn checkpointed_remaining_ttl_used_at_promotion() {
        let mut l0 = lease(1, 100);
        l0.remaining_ttl = 30;
        let l = Lessor::new([l0], 2);
        let t0 = Instant::now();
        l.promote(Duration::from_secs(1), t0);
        assert_eq!(l.time_to_live(1, t0), Some((100, 31)));
        assert_eq!(l.renew(1, t0), Renew::Renewed(100));
    }
}

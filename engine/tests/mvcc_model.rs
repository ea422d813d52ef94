//! A plain reference model of etcd 3.4's MVCC semantics (a Vec of every
//! change, obvious code) and a proptest comparing it, response by response,
//! with `mvcc::KvStore` on the in-memory store: one copy compacting eagerly,
//! one in small steps (their HashKV must agree).

use std::collections::BTreeMap;

use std::ops::Bound;
use std::path::PathBuf;

use ironcd_engine::btree::{Db, DbOptions};

use ironcd_engine::kv::{ReadView, Store, Tree};
use ironcd_engine::mvcc::testing::MemStore;
use ironcd_engine::mvcc::validate;
use ironcd_engine::mvcc::*;
use proptest::prelude::*;

// ---------------------------------------------------------------- model

#[derive(Clone, Debug)]
struct Change {
    main: i64,
    key: Vec<u8>,
    /// `None` = tombstone.
    kv: Option<KeyValue>,
}

#[derive(Clone, Debug)]
pub struct Model {
    hist: Vec<Change>,
    current: i64,
    compact: i64,
    leases: BTreeMap<i64, (i64, i64)>,
    min_ttl: i64,
    /// Changes of the request being applied.
    changes: usize,
    events: Vec<Event>,
}

fn in_range(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    if range_end.is_empty() {
        k == key
    } else if range_end == [0] {
        k >= key
    } else {
        k >= key && k < range_end
    }
}

type R<T> = Result<T, String>;

fn err<T>(e: MvccError) -> R<T> {
    Err(e.to_string())
}

impl Model {
    pub fn new(min_ttl: i64) -> Self {
        Model {
            hist: Vec::new(),
            current: 1,
            compact: -1,
            leases: BTreeMap::new(),
            min_ttl,
            changes: 0,
            events: Vec::new(),
        }
    }

    fn state_at(&self, rev: i64) -> BTreeMap<Vec<u8>, KeyValue> {
        let mut m = BTreeMap::new();
        for c in self.hist.iter().filter(|c| c.main <= rev) {
            match &c.kv {
                Some(kv) => {
                    m.insert(c.key.clone(), kv.clone());
                }
                None => {
                    m.remove(&c.key);
                }
            }
        }
        m
    }

    fn get(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        self.state_at(rev).remove(key)
    }

    /// Revision reads inside the request see.
    fn read_rev(&self) -> i64 {
        self.current + i64::from(self.changes > 0)
    }

    fn end(&mut self) {
        if self.changes > 0 {
            self.current += 1;
        }
        self.changes = 0;
    }

    fn push(&mut self, key: &[u8], kv: Option<KeyValue>) {
        let main = self.current + 1;
        let prev = match &kv {
            Some(kv) if kv.create_revision == kv.mod_revision => None,
            _ => self.get(key, main - 1),
        };
        let event = match &kv {
            Some(kv) => Event {
                r#type: EventType::Put,
                kv: kv.clone(),
                prev_kv: prev,
            },
            None => Event {
                r#type: EventType::Delete,
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: main,
                    ..Default::default()
                },
                prev_kv: prev,
            },
        };
        self.events.push(event);
        self.hist.push(Change {
            main,
            key: key.to_vec(),
            kv,
        });
        self.changes += 1;
    }

    pub fn range(&self, r: &RangeRequest, cur: i64) -> R<RangeResponse> {
        if r.revision > cur {
            return err(MvccError::FutureRev);
        }
        let at = if r.revision <= 0 { cur } else { r.revision };
        if at < self.compact {
            return err(MvccError::Compacted);
        }
        let all: Vec<KeyValue> = self
            .state_at(at)
            .into_values()
            .filter(|kv| in_range(&r.key, &r.range_end, &kv.key))
            .collect();
        let count = all.len() as i64;
        let header = ResponseHeader {
            revision: cur,
            ..Default::default()
        };
        if r.count_only {
            return Ok(RangeResponse {
                header,
                kvs: vec![],
                more: false,
                count,
            });
        }
        let mut kvs: Vec<KeyValue> = all
            .into_iter()
            .filter(|kv| r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            .filter(|kv| r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            .filter(|kv| r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            .filter(|kv| r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
            .collect();
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        if r.sort_order == SortOrder::None && !filtered && r.limit > 0 {
            // etcd fetches limit+1 keys (key order) before its default
            // ascending sort of a non-key target (checked against etcd 3.4).
            kvs.truncate(r.limit as usize + 1);
        }
        let order = if r.sort_order == SortOrder::None && r.sort_target != SortTarget::Key {
            SortOrder::Ascend
        } else {
            r.sort_order
        };
        let key = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match r.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, vec![]),
                SortTarget::Create => (kv.create_revision, vec![]),
                SortTarget::Mod => (kv.mod_revision, vec![]),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        match order {
            SortOrder::None => {}
            SortOrder::Ascend => kvs.sort_by_key(key),
            SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(key(kv))),
        }
        let more = r.limit > 0 && kvs.len() as i64 > r.limit;
        if more {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header,
            kvs,
            more,
            count,
        })
    }

    fn put_op(&mut self, p: &PutRequest) -> R<PutResponse> {
        let prev = self.get(&p.key, self.read_rev());
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return err(MvccError::KeyNotFound);
        }
        let value = if p.ignore_value {
            prev.as_ref().unwrap().value.clone()
        } else {
            p.value.clone()
        };
        let lease = if p.ignore_lease {
            prev.as_ref().unwrap().lease
        } else {
            p.lease
        };
        let main = self.current + 1;
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(main, |kv| kv.create_revision),
            mod_revision: main,
            version: prev.as_ref().map_or(1, |kv| kv.version + 1),
            value,
            lease,
        };
        self.push(&p.key, Some(kv));
        Ok(PutResponse {
            header: ResponseHeader {
                revision: main,
                ..Default::default()
            },
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete_op(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let kvs: Vec<KeyValue> = self
            .state_at(self.read_rev())
            .into_values()
            .filter(|kv| in_range(&d.key, &d.range_end, &kv.key))
            .collect();
        for kv in &kvs {
            self.push(&kv.key, None);
        }
        let revision = if !kvs.is_empty() || self.changes > 0 {
            self.current + 1
        } else {
            self.current
        };
        DeleteRangeResponse {
            header: ResponseHeader {
                revision,
                ..Default::default()
            },
            deleted: kvs.len() as i64,
            prev_kvs: if d.prev_kv { kvs } else { vec![] },
        }
    }

    pub fn put(&mut self, p: &PutRequest) -> R<PutResponse> {
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return err(MvccError::LeaseNotFound);
        }
        let r = self.put_op(p);
        self.end();
        r
    }

    pub fn delete(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let r = self.delete_op(d);
        self.end();
        r
    }

    fn compare(&self, c: &Compare) -> bool {
        let kvs: Vec<KeyValue> = self
            .state_at(self.current)
            .into_values()
            .filter(|kv| in_range(&c.key, &c.range_end, &kv.key))
            .collect();
        let check = |kv: &KeyValue| -> bool {
            use std::cmp::Ordering;
            let o: Ordering = match (c.target, &c.target_union) {
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => kv.version.cmp(v),
                (CompareTarget::Version, _) => kv.version.cmp(&0),
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => {
                    kv.create_revision.cmp(v)
                }
                (CompareTarget::Create, _) => kv.create_revision.cmp(&0),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
                (CompareTarget::Mod, _) => kv.mod_revision.cmp(&0),
                (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => kv.lease.cmp(v),
                (CompareTarget::Lease, _) => kv.lease.cmp(&0),
                (CompareTarget::Value, Some(TargetUnion::Value(v))) => {
                    kv.value.as_slice().cmp(v.as_slice())
                }
                (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[][..]),
            };
            match c.result {
                CompareResult::Equal => o.is_eq(),
                CompareResult::NotEqual => o.is_ne(),
                CompareResult::Greater => o.is_gt(),
                CompareResult::Less => o.is_lt(),
            }
        };
        if kvs.is_empty() {
            return c.target != CompareTarget::Value && check(&KeyValue::default());
        }
        kvs.iter().all(check)
    }

    /// The ops each (nested) txn runs, decided before anything is applied.
    fn decide(&self, t: &TxnRequest, out: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        out.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Some(Request::RequestTxn(inner)) = &op.request {
                self.decide(inner, out);
            }
        }
    }

    /// `gte`: starts of earlier deletes with range end "\0" (ironcd rejects
    /// an ignore_* put they cover, where etcd 3.4 would panic mid-apply).
    fn check(
        &self,
        t: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
        puts: bool,
        gte: &mut Vec<Vec<u8>>,
    ) -> R<()> {
        let ok = *path.next().unwrap();
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(Request::RequestTxn(inner)) => self.check(inner, path, puts, gte)?,
                Some(Request::RequestDeleteRange(d)) if d.range_end == [0] => {
                    gte.push(d.key.clone())
                }
                Some(Request::RequestPut(p)) if puts => {
                    let deleted = gte.iter().any(|k| &p.key >= k);
                    if (p.ignore_value || p.ignore_lease)
                        && (deleted || self.get(&p.key, self.current).is_none())
                    {
                        return err(MvccError::KeyNotFound);
                    }
                    if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                        return err(MvccError::LeaseNotFound);
                    }
                }
                Some(Request::RequestRange(r)) if !puts && r.revision != 0 => {
                    if r.revision > self.current {
                        return err(MvccError::FutureRev);
                    }
                    if r.revision < self.compact {
                        return err(MvccError::Compacted);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn apply(&mut self, t: &TxnRequest, path: &mut std::slice::Iter<'_, bool>) -> TxnResponse {
        let ok = *path.next().unwrap();
        let mut responses = vec![];
        for op in if ok { &t.success } else { &t.failure } {
            let response = match &op.request {
                None => None,
                Some(Request::RequestRange(r)) => Some(Response::ResponseRange(
                    self.range(r, self.read_rev()).unwrap(),
                )),
                Some(Request::RequestPut(p)) => {
                    Some(Response::ResponsePut(self.put_op(p).unwrap()))
                }
                Some(Request::RequestDeleteRange(d)) => {
                    Some(Response::ResponseDeleteRange(self.delete_op(d)))
                }
                Some(Request::RequestTxn(inner)) => {
                    Some(Response::ResponseTxn(self.apply(inner, path)))
                }
            };
            responses.push(ResponseOp { response });
        }
        TxnResponse {
            header: ResponseHeader::default(),
            succeeded: ok,
            responses,
        }
    }

    pub fn txn(&mut self, t: &TxnRequest) -> R<TxnResponse> {
        let mut path = vec![];
        self.decide(t, &mut path);
        let readonly = t
            .success
            .iter()
            .chain(&t.failure)
            .all(|op| matches!(op.request, Some(Request::RequestRange(_))));
        if !readonly {
            self.check(t, &mut path.iter(), true, &mut vec![])?;
        }
        self.check(t, &mut path.iter(), false, &mut vec![])?;
        let mut resp = self.apply(t, &mut path.iter());
        resp.header.revision = self.read_rev();
        self.end();
        Ok(resp)
    }

    pub fn compact(&mut self, rev: i64) -> R<CompactionResponse> {
        if rev <= self.compact {
            return err(MvccError::Compacted);
        }
        if rev > self.current {
            return err(MvccError::FutureRev);
        }
        self.compact = rev;
        Ok(CompactionResponse {
            header: ResponseHeader {
                revision: self.current,
                ..Default::default()
            },
        })
    }

    pub fn grant(&mut self, id: i64, ttl: i64) -> R<LeaseGrantResponse> {
        if ttl > MAX_LEASE_TTL {
            return err(MvccError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return err(MvccError::LeaseExists);
        }
        let ttl = ttl.max(self.min_ttl);
        self.leases.insert(id, (ttl, 0));
        Ok(LeaseGrantResponse {
            header: ResponseHeader {
                revision: self.current,
                ..Default::default()
            },
            id,
            ttl,
            error: String::new(),
        })
    }

    fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.state_at(self.current)
            .into_values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key)
            .collect()
    }

    pub fn revoke(&mut self, id: i64) -> R<LeaseRevokeResponse> {
        if !self.leases.contains_key(&id) {
            return err(MvccError::LeaseNotFound);
        }
        for k in self.lease_keys(id) {
            self.push(&k, None);
        }
        self.leases.remove(&id);
        self.end();
        Ok(LeaseRevokeResponse {
            header: ResponseHeader {
                revision: self.current,
                ..Default::default()
            },
        })
    }

    pub fn checkpoint(&mut self, id: i64, remaining: i64) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.1 = remaining;
        }
    }

    pub fn lookup(&self, id: i64) -> Option<Lease> {
        self.leases.get(&id).map(|&(ttl, remaining_ttl)| Lease {
            id,
            ttl,
            remaining_ttl,
            keys: self.lease_keys(id),
        })
    }

    pub fn list(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|(&id, &(ttl, remaining_ttl))| Lease {
                id,
                ttl,
                remaining_ttl,
                keys: vec![],
            })
            .collect()
    }

    /// Does change `i` survive a compaction at `at`?
    fn survives(&self, i: usize, at: i64) -> bool {
        let c = &self.hist[i];
        c.kv.is_some()
            && !self.hist[i + 1..]
                .iter()
                .any(|d| d.key == c.key && d.main <= at)
    }

    pub fn watch(&self, w: &WatchEventsRequest) -> R<WatchEventsResponse> {
        if w.start_revision < self.compact {
            return err(MvccError::Compacted);
        }
        let end = if w.end_revision <= 0 || w.end_revision > self.current {
            self.current
        } else {
            w.end_revision
        };
        let mut events = vec![];
        let mut revs = vec![];
        let mut next_revision = None;
        for (i, c) in self.hist.iter().enumerate() {
            if c.main < w.start_revision || c.main > end || !in_range(&w.key, &w.range_end, &c.key)
            {
                continue;
            }
            if c.main <= self.compact && !self.survives(i, self.compact) {
                continue;
            }
            if revs.last() != Some(&c.main) {
                if w.max_revisions > 0 && revs.len() == w.max_revisions {
                    next_revision = Some(c.main);
                    break;
                }
                revs.push(c.main);
            }
            let (r#type, kv) = match &c.kv {
                Some(kv) => (EventType::Put, kv.clone()),
                None => (
                    EventType::Delete,
                    KeyValue {
                        key: c.key.clone(),
                        mod_revision: c.main,
                        ..Default::default()
                    },
                ),
            };
            let create = r#type == EventType::Put && kv.create_revision == kv.mod_revision;
            let prev_kv = if w.prev_kv && !create && c.main > self.compact {
                self.get(&c.key, c.main - 1)
            } else {
                None
            };
            events.push(Event {
                r#type,
                kv,
                prev_kv,
            });
        }
        Ok(WatchEventsResponse {
            header: ResponseHeader {
                revision: self.current,
                ..Default::default()
            },
            events,
            next_revision,
        })
    }
}

// ---------------------------------------------------------------- ops

#[derive(Clone, Debug)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Range(RangeRequest),
    Compact(i64),
    CompactStep(usize),
    Grant(i64, i64),
    Revoke(i64),
    Checkpoint(i64, i64),
    Lookup(i64),
    Watch(WatchEventsRequest),
    HashKv(i64),
    Reopen,
    /// Several writes (and reads through the writer) in one write transaction.
    Batch(Vec<Op>),
}

const KEYS: &[&[u8]] = &[b"a", b"a\0", b"ab", b"b", b"\0", b"c", b"\xff"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(|k| k.to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => Just(vec![]), 1 => Just(vec![0]), 2 => key()]
}

fn rev() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 1 => -2i64..0, 4 => 1i64..30]
}

fn lease_id() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 1 => 1i64..4]
}

fn put_req() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        prop::collection::vec(0u8..3, 0..3),
        lease_id(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutRequest {
                key,
                value: if ignore_value { vec![] } else { value },
                lease: if ignore_lease { 0 } else { lease },
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn delete_req() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn sort_order() -> impl Strategy<Value = SortOrder> {
    prop::sample::select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend])
}

fn sort_target() -> impl Strategy<Value = SortTarget> {
    prop::sample::select(vec![
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ])
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    let filt = || prop_oneof![3 => Just(0i64), 1 => 1i64..25];
    (
        (
            key(),
            range_end(),
            0i64..4,
            rev(),
            sort_order(),
            sort_target(),
        ),
        (
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
            filt(),
            filt(),
            filt(),
            filt(),
        ),
    )
        .prop_map(
            |(
                (key, range_end, limit, revision, sort_order, sort_target),
                (keys_only, count_only, a, b, c, d),
            )| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    serializable: false,
                    keys_only,
                    count_only,
                    min_mod_revision: a,
                    max_mod_revision: b,
                    min_create_revision: c,
                    max_create_revision: d,
                }
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    let result = prop::sample::select(vec![
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ]);
    let target = prop::sample::select(vec![
        CompareTarget::Version,
        CompareTarget::Create,
        CompareTarget::Mod,
        CompareTarget::Value,
        CompareTarget::Lease,
    ]);
    let union = prop_oneof![
        (0i64..4).prop_map(TargetUnion::Version),
        (0i64..20).prop_map(TargetUnion::CreateRevision),
        (0i64..20).prop_map(TargetUnion::ModRevision),
        prop::collection::vec(0u8..3, 0..3).prop_map(TargetUnion::Value),
        (0i64..4).prop_map(TargetUnion::Lease),
    ];
    (
        result,
        target,
        key(),
        range_end(),
        prop::option::weighted(0.9, union),
    )
        .prop_map(|(result, target, key, range_end, u)| {
            // Mostly a union matching the target, sometimes a mismatched one.
            let target_union = u.map(|u| match (target, u) {
                (_, u) if rand_mismatch(&u) => u,
                (CompareTarget::Version, TargetUnion::Version(v)) => TargetUnion::Version(v),
                (CompareTarget::Version, _) => TargetUnion::Version(1),
                (CompareTarget::Create, TargetUnion::CreateRevision(v)) => {
                    TargetUnion::CreateRevision(v)
                }
                (CompareTarget::Create, _) => TargetUnion::CreateRevision(0),
                (CompareTarget::Mod, TargetUnion::ModRevision(v)) => TargetUnion::ModRevision(v),
                (CompareTarget::Mod, _) => TargetUnion::ModRevision(5),
                (CompareTarget::Value, TargetUnion::Value(v)) => TargetUnion::Value(v),
                (CompareTarget::Value, _) => TargetUnion::Value(vec![1]),
                (CompareTarget::Lease, TargetUnion::Lease(v)) => TargetUnion::Lease(v),
                (CompareTarget::Lease, _) => TargetUnion::Lease(0),
            });
            Compare {
                result,
                target,
                key,
                target_union,
                range_end,
            }
        })
}

/// Keep a mismatched union now and then (etcd compares against zero then).
fn rand_mismatch(u: &TargetUnion) -> bool {
    matches!(u, TargetUnion::Lease(3))
}

fn request_op(depth: u32) -> BoxedStrategy<RequestOp> {
    let leaf = prop_oneof![
        3 => range_req().prop_map(|r| RequestOp { request: Some(Request::RequestRange(RangeRequest { revision: 0, ..r })) }),
        1 => range_req().prop_map(|r| Request::RequestRange(r).into()),
        4 => put_req().prop_map(|p| Request::RequestPut(p).into()),
        3 => delete_req().prop_map(|d| Request::RequestDeleteRange(d).into()),
    ];
    if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![6 => leaf, 1 => txn_req(depth - 1).prop_map(|t| Request::RequestTxn(t).into())]
            .boxed()
    }
}

fn txn_req(depth: u32) -> impl Strategy<Value = TxnRequest> {
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(request_op(depth), 0..4),
        prop::collection::vec(request_op(depth), 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

fn write_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => put_req().prop_map(Op::Put),
        3 => delete_req().prop_map(Op::Delete),
        4 => txn_req(2).prop_map(Op::Txn),
        2 => range_req().prop_map(Op::Range),
        1 => (1i64..5, -3i64..20).prop_map(|(id, ttl)| Op::Grant(id, ttl)),
        1 => (1i64..5).prop_map(Op::Revoke),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => write_op(),
        3 => range_req().prop_map(Op::Range),
        2 => (-2i64..25).prop_map(Op::Compact),
        2 => (1usize..4).prop_map(Op::CompactStep),
        1 => (1i64..5, 0i64..9).prop_map(|(id, r)| Op::Checkpoint(id, r)),
        1 => (1i64..5).prop_map(Op::Lookup),
        3 => (key(), range_end(), -1i64..25, 0i64..25, any::<bool>(), 0usize..3).prop_map(
            |(key, range_end, start_revision, end_revision, prev_kv, max_revisions)| Op::Watch(WatchEventsRequest {
                key, range_end, start_revision, end_revision, prev_kv, max_revisions
            })
        ),
        1 => (-1i64..25).prop_map(Op::HashKv),
        1 => Just(Op::Reopen),
        2 => prop::collection::vec(write_op(), 1..5).prop_map(Op::Batch),
    ]
}

// ---------------------------------------------------------------- harness

const MIN_TTL: i64 = 5;

fn cfg() -> Config {
    Config {
        max_txn_ops: 4,
        min_lease_ttl: MIN_TTL,
        events: EventMode::EventsWithPrevKv,
    }
}

fn e<T>(r: MvccResult<T>) -> R<T> {
    r.map_err(|e| e.to_string())
}

/// Applies a write op through `w` (validating first, as the server does).
fn store_write<W: ironcd_engine::kv::WriteView>(
    w: &mut KvWriter<W>,
    index: u64,
    op: &Op,
) -> String {
    match op {
        Op::Put(p) => format!(
            "{:?}",
            e(validate::check_put_request(p).and_then(|_| w.put(index, p)))
        ),
        Op::Delete(d) => format!(
            "{:?}",
            e(validate::check_delete_request(d).and_then(|_| w.delete_range(index, d)))
        ),
        Op::Txn(t) => format!(
            "{:?}",
            e(validate::check_txn_request(t, cfg().max_txn_ops).and_then(|_| w.txn(index, t)))
        ),
        Op::Range(r) => format!(
            "{:?}",
            e(validate::check_range_request(r).and_then(|_| w.range(r)))
        ),
        Op::Grant(id, ttl) => format!(
            "{:?}",
            e(w.lease_grant(index, &LeaseGrantRequest { id: *id, ttl: *ttl }))
        ),
        Op::Revoke(id) => format!(
            "{:?}",
            e(w.lease_revoke(index, &LeaseRevokeRequest { id: *id }))
        ),
        other => panic!("not a write op: {other:?}"),
    }
}

fn model_write(m: &mut Model, op: &Op) -> String {
    match op {
        Op::Put(p) => format!(
            "{:?}",
            e(validate::check_put_request(p)).and_then(|_| m.put(p))
        ),
        Op::Delete(d) => format!(
            "{:?}",
            e(validate::check_delete_request(d)).map(|_| m.delete(d))
        ),
        Op::Txn(t) => format!(
            "{:?}",
            e(validate::check_txn_request(t, cfg().max_txn_ops)).and_then(|_| m.txn(t))
        ),
        Op::Range(r) => format!(
            "{:?}",
            e(validate::check_range_request(r)).and_then(|_| m.range(r, m.current))
        ),
        Op::Grant(id, ttl) => format!("{:?}", m.grant(*id, *ttl)),
        Op::Revoke(id) => format!("{:?}", m.revoke(*id)),
        other => panic!("not a write op: {other:?}"),
    }
}

/// One system under test: the MVCC store on some `kv::Store`.
pub struct Sut<S: Store, Ro: Fn(S) -> S> {
    pub kv: Option<KvStore<S>>,
    /// Steps per compaction batch; `None` = finish compaction at once.
    pub eager: bool,
    pub index: u64,
    pub reopen: Ro,
}

impl<S: Store, Ro: Fn(S) -> S> Sut<S, Ro> {
    fn kv(&self) -> &KvStore<S> {
        self.kv.as_ref().unwrap()
    }

    fn finish_compaction(&mut self) {
        if self.eager {
            let mut w = self.kv().write().unwrap();
            while w.compact_step(1000).unwrap() == CompactStep::More {}
            w.commit().unwrap();
        }
    }

    /// Returns the debug text of the response (and the events for writes).
    fn apply(&mut self, op: &Op) -> (String, Vec<Event>) {
        self.index += 1;
        let index = self.index;
        match op {
            Op::Put(_) | Op::Delete(_) | Op::Txn(_) | Op::Grant(..) | Op::Revoke(_) => {
                let mut w = self.kv().write().unwrap();
                let out = store_write(&mut w, index, op);
                let ev = w.take_events();
                w.commit().unwrap();
                (out, ev)
            }
            Op::Batch(ops) => {
                let mut w = self.kv().write().unwrap();
                let mut out = String::new();
                for op in ops {
                    out += &store_write(&mut w, index, op);
                    out.push('\n');
                }
                let ev = w.take_events();
                w.commit().unwrap();
                (out, ev)
            }
            Op::Range(r) => {
                let rd = self.kv().read().unwrap();
                (
                    format!(
                        "{:?}",
                        e(validate::check_range_request(r).and_then(|_| rd.range(r)))
                    ),
                    vec![],
                )
            }
            Op::Compact(rev) => {
                let mut w = self.kv().write().unwrap();
                let out = format!(
                    "{:?}",
                    e(w.compact(
                        index,
                        &CompactionRequest {
                            revision: *rev,
                            physical: false
                        }
                    ))
                );
                w.commit().unwrap();
                self.finish_compaction();
                (out, vec![])
            }
            Op::CompactStep(n) => {
                let mut w = self.kv().write().unwrap();
                w.compact_step(*n).unwrap();
                w.commit().unwrap();
                (String::new(), vec![])
            }
            Op::Checkpoint(id, r) => {
                let mut w = self.kv().write().unwrap();
                w.lease_checkpoint(
                    index,
                    &[LeaseCheckpoint {
                        id: *id,
                        remaining_ttl: *r,
                    }],
                )
                .unwrap();
                w.commit().unwrap();
                (String::new(), vec![])
            }
            Op::Lookup(id) => {
                let rd = self.kv().read().unwrap();
                (
                    format!(
                        "{:?} {:?}",
                        rd.lease_lookup(*id).unwrap(),
                        rd.lease_list().unwrap()
                    ),
                    vec![],
                )
            }
            Op::Watch(w) => {
                let rd = self.kv().read().unwrap();
                let c = rd.compact_revision();
                let mut out = format!("{:?}", e(rd.watch_events(w)));
                // Also from the compaction boundary, where prev_kv and survivors matter.
                for start in [c, c + 1] {
                    let w = WatchEventsRequest {
                        start_revision: start,
                        prev_kv: true,
                        ..w.clone()
                    };
                    out += &format!("{:?}", e(rd.watch_events(&w)));
                }
                (out, vec![])
            }
            Op::HashKv(_) => (String::new(), vec![]),
            Op::Reopen => {
                let s = (self.reopen)(self.kv.take().unwrap().into_store());
                self.kv = Some(KvStore::open(s, cfg()).unwrap());
                (String::new(), vec![])
            }
        }
    }
}

fn model_apply(m: &mut Model, op: &Op) -> (String, Vec<Event>) {
    let out = match op {
        Op::Put(_) | Op::Delete(_) | Op::Txn(_) | Op::Grant(..) | Op::Revoke(_) => {
            model_write(m, op)
        }
        Op::Batch(ops) => {
            let mut out = String::new();
            for op in ops {
                out += &model_write(m, op);
                out.push('\n');
            }
            out
        }
        Op::Range(r) => format!(
            "{:?}",
            e(validate::check_range_request(r)).and_then(|_| m.range(r, m.current))
        ),
        Op::Compact(rev) => format!("{:?}", m.compact(*rev)),
        Op::CompactStep(_) | Op::HashKv(_) | Op::Reopen => String::new(),
        Op::Checkpoint(id, r) => {
            m.checkpoint(*id, *r);
            String::new()
        }
        Op::Lookup(id) => format!("{:?} {:?}", m.lookup(*id), m.list()),
        Op::Watch(w) => {
            let mut out = format!("{:?}", m.watch(w));
            for start in [m.compact, m.compact + 1] {
                let w = WatchEventsRequest {
                    start_revision: start,
                    prev_kv: true,
                    ..w.clone()
                };
                out += &format!("{:?}", m.watch(&w));
            }
            out
        }
    };
    (out, std::mem::take(&mut m.events))
}

/// Runs `ops` against the model and two stores built by `make` (one
/// compacting eagerly, one lazily), comparing every answer.
fn run<S: Store>(
    ops: &[Op],
    make: impl Fn() -> S,
    reopen: impl Fn(S) -> S + Copy,
) -> Result<(), TestCaseError> {
    let mut m = Model::new(MIN_TTL);
    let mut a = Sut {
        kv: Some(KvStore::open(make(), cfg()).unwrap()),
        eager: true,
        index: 0,
        reopen,
    };
    let mut b = Sut {
        kv: Some(KvStore::open(make(), cfg()).unwrap()),
        eager: false,
        index: 0,
        reopen,
    };
    for (i, op) in ops.iter().enumerate() {
        let want = model_apply(&mut m, op);
        let got_a = a.apply(op);
        let got_b = b.apply(op);
        prop_assert_eq!(&got_a.0, &want.0, "op {} {:?}", i, op);
        prop_assert_eq!(&got_a.1, &want.1, "events of op {} {:?}", i, op);
        prop_assert_eq!(&got_b.0, &want.0, "lazy store, op {} {:?}", i, op);
        prop_assert_eq!(&got_b.1, &want.1, "lazy store events, op {} {:?}", i, op);
        let (ra, rb) = (a.kv().read().unwrap(), b.kv().read().unwrap());
        if !ra.compaction_pending() {
            // Physically, the eager store holds exactly what survives.
            let want = (0..m.hist.len())
                .filter(|&i| m.hist[i].main > m.compact || m.survives(i, m.compact))
                .count();
            // Every surviving change is in `Tree::Kv`; `Tree::KeyHistory`
            // holds them all but the head of each live key.
            let mut last = std::collections::BTreeMap::new();
            for c in &m.hist {
                last.insert(&c.key, c.kv.is_some());
            }
            let live = last.values().filter(|&&l| l).count();
            for (tree, want) in [(Tree::Kv, want), (Tree::KeyHistory, want - live)] {
                let mut n = 0;
                ra.view()
                    .scan(
                        tree,
                        Bound::Unbounded,
                        Bound::Unbounded,
                        false,
                        &mut |_, _| {
                            n += 1;
                            true
                        },
                    )
                    .unwrap();
                prop_assert_eq!(
                    n,
                    want,
                    "entries in {:?} after compaction at {}",
                    tree,
                    m.compact
                );
            }
        }
        prop_assert_eq!(ra.revision(), m.current);
        prop_assert_eq!(ra.compact_revision(), m.compact);
        if let Op::HashKv(rev) = op {
            let (ha, hb) = (e(ra.hash_kv(*rev)), e(rb.hash_kv(*rev)));
            prop_assert_eq!(
                &ha,
                &hb,
                "hash_kv({}) differs between eager and lazy compaction",
                rev
            );
            if *rev > 0 && *rev <= m.compact {
                prop_assert_eq!(ha, err::<HashKvResponse>(MvccError::Compacted));
            } else if *rev > m.current {
                prop_assert_eq!(ha, err::<HashKvResponse>(MvccError::FutureRev));
            }
        }
    }
    // Finally every revision still readable reads the same as the model.
    let rd = b.kv().read().unwrap();
    for rev in m.compact.max(1)..=m.current {
        let r = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        };
        prop_assert_eq!(
            e(rd.range(&r)),
            m.range(&r, m.current),
            "full range at {}",
            rev
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, max_shrink_iters: 4000, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_model_on_mem_store(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, MemStore::new, |s: MemStore| s.reopen())?;
    }
}

// ---------------------------------------------------------------- the B-tree file

/// `btree::Db` plus its path, so the harness can close and reopen it.
struct FileDb {
    db: Db,
    path: PathBuf,
}

impl Store for FileDb {
    type Snapshot = <Db as Store>::Snapshot;
    type Write<'a> = <Db as Store>::Write<'a>;

    fn snapshot(&self) -> Self::Snapshot {
        self.db.snapshot()
    }

    fn begin_write(&self) -> ironcd_engine::kv::StoreResult<Self::Write<'_>> {
        self.db.begin_write()
    }

    fn sync(&self) -> ironcd_engine::kv::StoreResult<()> {
        self.db.sync()
    }
}

fn open_db(path: PathBuf) -> FileDb {
    FileDb {
        db: Db::open(&path, DbOptions::default()).unwrap(),
        path,
    }
}

/// Restart: make the published state durable, close, reopen the file.
fn reopen_db(s: FileDb) -> FileDb {
    s.db.sync().unwrap();
    let path = s.path.clone();
    drop(s);
    open_db(path)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 500, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_model_on_btree_db(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let n = std::cell::Cell::new(0);
        let make = || {
            n.set(n.get() + 1);
            open_db(dir.path().join(format!("kv{}.db", n.get())))
        };
        run(&ops, make, reopen_db)?;
    }
}

//! etcd's MVCC store over a [`kv::Store`]: the reader (snapshot reads at any
//! uncompacted revision) and the writer (apply of put / delete / txn, with
//! etcd's revision rules). Compaction, leases, hashes and watch catch-up are
//! in their own files and extend [`KvReader`] / [`KvWriter`].
//!
//! Revision rules (etcd 3.4 `mvcc/kvstore_txn.go`, `etcdserver/apply.go`):
//! - an empty store is at revision 1; a request that changes anything takes
//!   `current + 1` as its main revision, its changes take sub 0, 1, 2, ...;
//!   a request that changes nothing leaves the revision alone;
//! - inside a request, reads see the request's own earlier changes.

use std::cmp::Ordering;
use std::ops::Bound;

use crate::kv::{ReadView, Store, Tree, WriteView};

use super::error::{MvccError, MvccResult};
use super::key_index::{
    history_after, history_key, history_key_into, history_lower, history_prefix, HeadEntry, Record, KIND_PUT,
    KIND_TOMBSTONE,
};
use super::revision::{le_i64, Revision};
use super::types::*;

/// Tuning of the MVCC layer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// etcd's `--max-txn-ops` (used by [`super::validate::check_txn_request`]).
    pub max_txn_ops: usize,
    /// Minimum lease TTL in seconds; smaller grants are raised to it
    /// (etcd: ceil(1.5 x election timeout), 2 s by default).
    pub min_lease_ttl: i64,
    /// What the writer collects for [`KvWriter::take_events`].
    pub events: EventMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_txn_ops: 128,
            min_lease_ttl: 2,
            events: EventMode::Events,
        }
    }
}

/// Whether the writer records watch events, and whether with `prev_kv`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventMode {
    None,
    Events,
    /// Events carry `prev_kv` (the key at `mod_revision - 1`, none for creations).
    EventsWithPrevKv,
}

/// `Tree::Meta` keys owned by MVCC (values: i64 little-endian, or a 16-byte revision).
pub(crate) const META_CURRENT_REV: &[u8] = b"mvcc/current_revision";
pub(crate) const META_SCHEDULED_COMPACT: &[u8] = b"mvcc/scheduled_compact_revision";
pub(crate) const META_FINISHED_COMPACT: &[u8] = b"mvcc/finished_compact_revision";
pub(crate) const META_COMPACT_CURSOR: &[u8] = b"mvcc/compact_cursor";
/// The compact revision whose `Tree::KeyHistory` walk (phase 1) finished.
pub(crate) const META_COMPACT_WALKED: &[u8] = b"mvcc/compact_walked";
/// Prefix of the phase-2 chunk marks: `| chunk (8, BE)` -> empty.
pub(crate) const META_COMPACT_CHUNK: &[u8] = b"mvcc/compact_kv/";
/// Phase 2's position: the `Tree::Kv` key it resumes at.
pub(crate) const META_COMPACT_KV_CURSOR: &[u8] = b"mvcc/compact_kv_cursor";
/// Every `Tree::Meta` key of a running compaction's progress starts so
/// (cursors, walked mark, chunk marks); `hash` skips them.
pub(crate) const META_COMPACT_PROGRESS: &[u8] = b"mvcc/compact_";

/// Revision bookkeeping kept in `Tree::Meta`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct RevState {
    /// Main revision of the newest applied change (1 on an empty store).
    pub current: i64,
    /// Compaction revision readers honour (etcd's `compactMainRev`; -1 = none).
    pub compact: i64,
    /// Revision the last finished physical compaction reached (-1 = none).
    pub finished_compact: i64,
}

fn meta_i64(v: &(impl ReadView + ?Sized), key: &[u8], default: i64) -> MvccResult<i64> {
    match v.get(Tree::Meta, key)? {
        None => Ok(default),
        Some(b) if b.len() == 8 => Ok(le_i64(b)),
        Some(b) => Err(MvccError::corrupt(format!(
            "meta value of {} bytes",
            b.len()
        ))),
    }
}

pub(crate) fn load_state(v: &(impl ReadView + ?Sized)) -> MvccResult<RevState> {
    Ok(RevState {
        current: meta_i64(v, META_CURRENT_REV, 1)?,
        compact: meta_i64(v, META_SCHEDULED_COMPACT, -1)?,
        finished_compact: meta_i64(v, META_FINISHED_COMPACT, -1)?,
    })
}

/// The keys a request covers, from etcd's `key` / `range_end` pair.
#[derive(Copy, Clone, Debug)]
pub(crate) enum KeyRange<'a> {
    Single(&'a [u8]),
    /// `[start, end)`; `end == None` means no upper bound ("\0").
    Range {
        start: &'a [u8],
        end: Option<&'a [u8]>,
    },
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::Range {
                start: key,
                end: None,
            },
            end => KeyRange::Range {
                start: key,
                end: Some(end),
            },
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::Range { start, end } => k >= start && end.is_none_or(|e| k < e),
        }
    }

    /// True when no key can be inside (etcd stops at once when end <= key).
    pub fn is_empty(&self) -> bool {
        matches!(*self, KeyRange::Range { start, end: Some(e) } if e <= start)
    }
}

/// A key found by a range: its user key, the revision of the version read,
/// and, on the head path, its index entry.
pub(crate) struct Found {
    pub key: Vec<u8>,
    pub rev: Revision,
    pub head: Option<HeadEntry>,
}

/// Read logic shared by the reader and the writer. `head_rev` is the
/// revision `Tree::KeyIndex` reflects.
pub(crate) struct ReadCtx<'v, V: ReadView + ?Sized> {
    pub view: &'v V,
    pub head_rev: i64,
    pub compact: i64,
    /// A compaction is unfinished: `Tree::Kv` may hold records it already
    /// removed from `Tree::KeyHistory` (see `compactor.rs`).
    pub compacting: bool,
}

impl<'v, V: ReadView + ?Sized> ReadCtx<'v, V> {
    pub fn head(&self, key: &[u8]) -> MvccResult<Option<HeadEntry>> {
        match self.view.get(Tree::KeyIndex, key)? {
            None => Ok(None),
            Some(b) => Ok(Some(HeadEntry::from_bytes(b)?)),
        }
    }

    /// Visits the record stored at `rev`.
    pub fn with_record<T>(&self, rev: Revision, f: impl FnOnce(Record<'_>) -> T) -> MvccResult<T> {
        match self.view.get(Tree::Kv, &rev.kv_key_buf())? {
            Some(b) => Ok(f(Record::decode(b)?)),
            None => Err(MvccError::corrupt(format!(
                "missing kv record at {}.{}",
                rev.main, rev.sub
            ))),
        }
    }

    pub fn key_value(&self, rev: Revision) -> MvccResult<KeyValue> {
        self.with_record(rev, |r| r.to_key_value(rev))
    }

    /// The newest change of `key` with main revision <= `at`: (revision, kind).
    /// The head (`Tree::KeyIndex`) is newer than every `Tree::KeyHistory`
    /// entry of its key, so it answers first when it is old enough.
    pub fn history_at(&self, key: &[u8], at: i64) -> MvccResult<Option<(Revision, u8)>> {
        if let Some(h) = self.head(key)? {
            if h.modified.main <= at {
                return Ok(Some((h.modified, KIND_PUT)));
            }
        }
        self.superseded_at(key, at)
    }

    /// The newest superseded change (`Tree::KeyHistory`) of `key` with main
    /// revision <= `at`.
    fn superseded_at(&self, key: &[u8], at: i64) -> MvccResult<Option<(Revision, u8)>> {
        let prefix = history_prefix(key);
        let upper = history_key(key, Revision::new(at.saturating_add(1), 0));
        let mut out: MvccResult<Option<(Revision, u8)>> = Ok(None);
        self.view.scan(
            Tree::KeyHistory,
            Bound::Included(&prefix),
            Bound::Excluded(&upper),
            true,
            &mut |k, v| {
                out = history_entry(k, v).map(Some);
                false
            },
        )?;
        out
    }

    /// The first change of `key` after `rev` (any later main), if any: the
    /// next superseded change, else the head if it is newer.
    pub fn history_next(&self, key: &[u8], rev: Revision) -> MvccResult<Option<Revision>> {
        if let Some(r) = self.superseded_next(key, rev)? {
            return Ok(Some(r));
        }
        Ok(self.head(key)?.map(|h| h.modified).filter(|m| *m > rev))
    }

    /// Whether the change of `key` at `rev` is still indexed: it is the head
    /// or has its `Tree::KeyHistory` entry. A `Tree::Kv` record that is
    /// neither was removed by a compaction's first phase and waits for its
    /// second (`compactor.rs`).
    pub fn indexed(&self, key: &[u8], rev: Revision) -> MvccResult<bool> {
        if self.head(key)?.is_some_and(|h| h.modified == rev) {
            return Ok(true);
        }
        Ok(self.view.get(Tree::KeyHistory, &history_key(key, rev))?.is_some())
    }

    /// The first superseded change (`Tree::KeyHistory`) of `key` after `rev`.
    fn superseded_next(&self, key: &[u8], rev: Revision) -> MvccResult<Option<Revision>> {
        let from = history_key(key, rev);
        let to = history_after(key);
        let mut out: MvccResult<Option<Revision>> = Ok(None);
        self.view.scan(
            Tree::KeyHistory,
            Bound::Excluded(&from),
            Bound::Excluded(&to),
            false,
            &mut |k, v| {
                out = history_entry(k, v).map(|(r, _)| Some(r));
                false
            },
        )?;
        out
    }

    /// The live version of `key` at `at` (no compaction check).
    pub fn get_at(&self, key: &[u8], at: i64) -> MvccResult<Option<KeyValue>> {
        if at >= self.head_rev {
            return match self.head(key)? {
                Some(h) => Ok(Some(self.key_value(h.modified)?)),
                None => Ok(None),
            };
        }
        match self.history_at(key, at)? {
            Some((rev, KIND_PUT)) => Ok(Some(self.key_value(rev)?)),
            _ => Ok(None),
        }
    }

    /// Every live key in `range` at revision `at` (etcd's `kvindex.Revisions`),
    /// in key order. Head reads scan `Tree::KeyIndex` only; older reads seek
    /// `Tree::KeyHistory` twice per key.
    pub fn range_keys(&self, range: KeyRange<'_>, at: i64) -> MvccResult<Vec<Found>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        if at >= self.head_rev {
            return self.range_head(range);
        }
        let (start, end) = match range {
            KeyRange::Single(key) => {
                return Ok(match self.history_at(key, at)? {
                    Some((rev, KIND_PUT)) => vec![Found {
                        key: key.to_vec(),
                        rev,
                        head: None,
                    }],
                    _ => Vec::new(),
                });
            }
            KeyRange::Range { start, end } => (start, end),
        };
        // A key live at `at` has its change there either as its head
        // (`Tree::KeyIndex`) or among its superseded changes
        // (`Tree::KeyHistory`): walk the union of both trees' keys in order.
        let heads = self.range_head(range)?;
        let mut heads = heads.into_iter().peekable();
        let end_bound = end.map(history_lower);
        let end_b = match &end_bound {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut from = Some(history_lower(start));
        loop {
            // The next user key with superseded changes.
            let mut next: MvccResult<Option<Vec<u8>>> = Ok(None);
            if let Some(f) = &from {
                self.view.scan(
                    Tree::KeyHistory,
                    Bound::Included(f),
                    end_b,
                    false,
                    &mut |k, _| {
                        next = super::key_index::decode_history_key(k).map(|(key, _)| Some(key));
                        false
                    },
                )?;
            }
            let hist_key = next?;
            // Heads of keys before it have no superseded changes.
            while let Some(h) = heads.next_if(|h| hist_key.as_ref().is_none_or(|k| h.key < *k)) {
                if h.rev.main <= at {
                    out.push(h);
                }
            }
            let Some(key) = hist_key else { break };
            match heads.next_if(|h| h.key == key) {
                Some(h) if h.rev.main <= at => out.push(h),
                _ => {
                    if let Some((rev, KIND_PUT)) = self.superseded_at(&key, at)? {
                        out.push(Found {
                            key: key.clone(),
                            rev,
                            head: None,
                        });
                    }
                }
            }
            from = Some(history_after(&key));
        }
        Ok(out)
    }

    fn range_head(&self, range: KeyRange<'_>) -> MvccResult<Vec<Found>> {
        let (start, end) = match range {
            KeyRange::Single(key) => {
                return Ok(match self.head(key)? {
                    Some(h) => vec![Found {
                        key: key.to_vec(),
                        rev: h.modified,
                        head: Some(h),
                    }],
                    None => Vec::new(),
                });
            }
            KeyRange::Range { start, end } => (start, end),
        };
        let mut out = Vec::new();
        let mut err = None;
        let end_b = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        self.view.scan(
            Tree::KeyIndex,
            Bound::Included(start),
            end_b,
            false,
            &mut |k, v| match HeadEntry::from_bytes(v) {
                Ok(h) => {
                    out.push(Found {
                        key: k.to_vec(),
                        rev: h.modified,
                        head: Some(h),
                    });
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            },
        )?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Every live key-value in `range` at `at`, values included.
    pub fn range_kvs(&self, range: KeyRange<'_>, at: i64) -> MvccResult<Vec<KeyValue>> {
        self.range_keys(range, at)?
            .into_iter()
            .map(|f| self.key_value(f.rev))
            .collect()
    }

    /// etcd's `Range` (`applierV3backend.Range` + `storeTxnRead.rangeKeys`),
    /// where `cur` is the revision the read runs at.
    pub fn range(&self, r: &RangeRequest, cur: i64) -> MvccResult<RangeResponse> {
        if r.revision > cur {
            return Err(MvccError::FutureRev);
        }
        let at = if r.revision <= 0 { cur } else { r.revision };
        if at < self.compact {
            return Err(MvccError::Compacted);
        }
        let mut found = self.range_keys(KeyRange::new(&r.key, &r.range_end), at)?;
        let count = found.len() as i64;
        let header = ResponseHeader::at(cur);
        if r.count_only {
            return Ok(RangeResponse {
                header,
                kvs: Vec::new(),
                more: false,
                count,
            });
        }
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        // Fetch everything when sorting or filtering; else one extra for `more`.
        if r.sort_order == SortOrder::None && !filtered && r.limit > 0 {
            found.truncate(
                usize::try_from(r.limit)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            );
        }
        let mut items = found
            .into_iter()
            .map(|f| self.item(f))
            .collect::<MvccResult<Vec<_>>>()?;
        items.retain(|it| {
            !(r.max_mod_revision != 0 && it.rev.main > r.max_mod_revision
                || r.min_mod_revision != 0 && it.rev.main < r.min_mod_revision
                || r.max_create_revision != 0 && it.create_revision > r.max_create_revision
                || r.min_create_revision != 0 && it.create_revision < r.min_create_revision)
        });
        let mut order = r.sort_order;
        if r.sort_target != SortTarget::Key && order == SortOrder::None {
            // etcd sorts ascending by default when the target is not the key.
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            if r.sort_target == SortTarget::Value {
                for it in items.iter_mut() {
                    self.fill_value(it)?;
                }
            }
            sort_items(&mut items, r.sort_target, order);
        }
        let mut more = false;
        if r.limit > 0 && items.len() as i64 > r.limit {
            items.truncate(r.limit as usize);
            more = true;
        }
        let mut kvs = Vec::with_capacity(items.len());
        for mut it in items {
            if !r.keys_only {
                self.fill_value(&mut it)?;
            }
            kvs.push(KeyValue {
                key: it.key,
                create_revision: it.create_revision,
                mod_revision: it.rev.main,
                version: it.version,
                value: if r.keys_only {
                    Vec::new()
                } else {
                    it.value.unwrap_or_default()
                },
                lease: it.lease,
            });
        }
        Ok(RangeResponse {
            header,
            kvs,
            more,
            count,
        })
    }

    fn item(&self, f: Found) -> MvccResult<Item> {
        match f.head {
            Some(h) => Ok(Item {
                key: f.key,
                rev: f.rev,
                create_revision: h.create_revision,
                version: h.version,
                lease: h.lease,
                value: None,
            }),
            None => self.with_record(f.rev, |rec| Item {
                key: f.key,
                rev: f.rev,
                create_revision: rec.create_revision,
                version: rec.version,
                lease: rec.lease,
                value: Some(rec.value.to_vec()),
            }),
        }
    }

    fn fill_value(&self, it: &mut Item) -> MvccResult<()> {
        if it.value.is_none() {
            it.value = Some(self.with_record(it.rev, |rec| rec.value.to_vec())?);
        }
        Ok(())
    }

    /// etcd's `applyCompare`: every key in the range must satisfy; no key
    /// compares as the zero key-value, except that a value compare fails.
    pub fn compare(&self, c: &Compare, cur: i64) -> MvccResult<bool> {
        let kvs = self.range_kvs(KeyRange::new(&c.key, &c.range_end), cur)?;
        if kvs.is_empty() {
            if c.target == CompareTarget::Value {
                return Ok(false);
            }
            return Ok(compare_kv(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }
}

fn history_entry(k: &[u8], v: &[u8]) -> MvccResult<(Revision, u8)> {
    let (_, rev) = super::key_index::split_history_key(k)?;
    match v {
        [KIND_PUT] => Ok((rev, KIND_PUT)),
        [KIND_TOMBSTONE] => Ok((rev, KIND_TOMBSTONE)),
        _ => Err(MvccError::corrupt("bad key history value")),
    }
}

/// A range result row before its value is (maybe) fetched.
struct Item {
    key: Vec<u8>,
    rev: Revision,
    create_revision: i64,
    version: i64,
    lease: i64,
    value: Option<Vec<u8>>,
}

/// Stable sort, so ties keep key order (what etcd's sort.Sort does for the
/// small slices where it uses insertion sort).
fn sort_items(items: &mut [Item], target: SortTarget, order: SortOrder) {
    let cmp = |a: &Item, b: &Item| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.rev.main.cmp(&b.rev.main),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::Descend => items.sort_by(|a, b| cmp(b, a)),
        _ => items.sort_by(cmp),
    }
}

/// etcd's `compareKV`.
pub(crate) fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match c.target {
        CompareTarget::Value => {
            let empty = Vec::new();
            let v = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &empty,
            };
            kv.value.cmp(v)
        }
        CompareTarget::Create => kv.create_revision.cmp(&match c.target_union {
            Some(TargetUnion::CreateRevision(r)) => r,
            _ => 0,
        }),
        CompareTarget::Mod => kv.mod_revision.cmp(&match c.target_union {
            Some(TargetUnion::ModRevision(r)) => r,
            _ => 0,
        }),
        CompareTarget::Version => kv.version.cmp(&match c.target_union {
            Some(TargetUnion::Version(r)) => r,
            _ => 0,
        }),
        CompareTarget::Lease => kv.lease.cmp(&match c.target_union {
            Some(TargetUnion::Lease(r)) => r,
            _ => 0,
        }),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// The MVCC store: opens the state kept in the store file and hands out
/// readers (snapshots) and the writer.
pub struct KvStore<S: Store> {
    store: S,
    cfg: Config,
}

impl<S: Store> KvStore<S> {
    /// Opens the MVCC state in `store` (an empty store is at revision 1).
    /// Reads `Tree::Meta` only: no history scan.
    pub fn open(store: S, cfg: Config) -> MvccResult<Self> {
        load_state(&store.snapshot())?;
        Ok(KvStore { store, cfg })
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back (e.g. to close and reopen it).
    pub fn into_store(self) -> S {
        self.store
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// A reader over the newest published state.
    pub fn read(&self) -> MvccResult<KvReader<S::Snapshot>> {
        KvReader::new(self.store.snapshot())
    }

    /// Starts the (single) write transaction.
    pub fn write(&self) -> MvccResult<KvWriter<S::Write<'_>>> {
        KvWriter::new(self.store.begin_write()?, self.cfg)
    }
}

/// Reads against one immutable view (etcd's `TxnRead`).
pub struct KvReader<R: ReadView> {
    pub(crate) view: R,
    pub(crate) state: RevState,
}

impl<R: ReadView> KvReader<R> {
    pub fn new(view: R) -> MvccResult<Self> {
        let state = load_state(&view)?;
        Ok(KvReader { view, state })
    }

    pub(crate) fn ctx(&self) -> ReadCtx<'_, R> {
        ReadCtx {
            view: &self.view,
            head_rev: self.state.current,
            compact: self.state.compact,
            compacting: self.state.finished_compact < self.state.compact,
        }
    }

    /// The current revision (etcd's `Rev()`).
    pub fn revision(&self) -> i64 {
        self.state.current
    }

    /// The compaction revision (etcd's `compactMainRev`; -1 = never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.state.compact
    }

    pub fn view(&self) -> &R {
        &self.view
    }

    /// etcd's Range at this view's revision.
    pub fn range(&self, r: &RangeRequest) -> MvccResult<RangeResponse> {
        self.ctx().range(r, self.state.current)
    }
}

/// The write transaction: applies raft entries, in order, to one
/// [`WriteView`]; `commit` publishes them (no fsync).
pub struct KvWriter<W: WriteView> {
    pub(crate) view: W,
    pub(crate) cfg: Config,
    /// `state.current` is the revision before the request being applied.
    pub(crate) state: RevState,
    /// Changes made by the request being applied (the next sub revision).
    pub(crate) changes: i64,
    pub(crate) events: Vec<Event>,
    /// Encoded `Tree::Kv` record, reused from change to change.
    scratch: Vec<u8>,
    /// Encoded `Tree::KeyHistory` keys, reused likewise.
    hscratch: Vec<u8>,
    /// `state.current` moved since `META_CURRENT_REV` was last written:
    /// the key is written once per transaction (see [`KvWriter::end`]).
    rev_dirty: bool,
}

impl<W: WriteView> KvWriter<W> {
    pub fn new(view: W, cfg: Config) -> MvccResult<Self> {
        let state = load_state(&view)?;
        Ok(KvWriter {
            view,
            cfg,
            state,
            changes: 0,
            events: Vec::new(),
            scratch: Vec::new(),
            hscratch: Vec::new(),
            rev_dirty: false,
        })
    }

    /// The revision reads see: the request's own changes included.
    fn read_rev(&self) -> i64 {
        self.state.current + i64::from(self.changes > 0)
    }

    pub(crate) fn ctx(&self) -> ReadCtx<'_, W> {
        ReadCtx {
            view: &self.view,
            head_rev: self.read_rev(),
            compact: self.state.compact,
            compacting: self.state.finished_compact < self.state.compact,
        }
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.state.current
    }

    pub fn compact_revision(&self) -> i64 {
        self.state.compact
    }

    pub fn view(&self) -> &W {
        &self.view
    }

    /// A read through the write transaction (sees every write applied so far).
    pub fn range(&self, r: &RangeRequest) -> MvccResult<RangeResponse> {
        self.ctx().range(r, self.read_rev())
    }

    /// Watch events of the changes applied since the last call, in revision order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Publishes everything applied (no fsync).
    pub fn commit(mut self) -> MvccResult<()> {
        self.flush_rev()?;
        self.view.commit()?;
        Ok(())
    }

    /// The write view, for trees MVCC does not own (the server's alarms and
    /// raft bookkeeping in `Tree::Meta` under their own key prefixes). The
    /// MVCC revision key in `Tree::Meta` may lag behind [`Self::revision`]
    /// until [`Self::commit`] or [`Self::into_view`].
    pub fn view_mut(&mut self) -> &mut W {
        &mut self.view
    }

    /// Gives back the write view with every request's state in it (the
    /// revision key written).
    pub fn into_view(mut self) -> MvccResult<W> {
        self.flush_rev()?;
        Ok(self.view)
    }

    /// Writes `META_CURRENT_REV` if a request moved the revision since it
    /// was last written.
    fn flush_rev(&mut self) -> MvccResult<()> {
        if self.rev_dirty {
            self.view.put(Tree::Meta, META_CURRENT_REV, &self.state.current.to_le_bytes())?;
            self.rev_dirty = false;
        }
        Ok(())
    }

    pub(crate) fn begin(&mut self, index: u64) {
        self.view.set_applied_index(index);
        self.changes = 0;
    }

    /// Ends a request: a request with changes takes the next revision.
    /// The revision is kept in `state`; `Tree::Meta` gets it once, when the
    /// transaction is handed back ([`Self::commit`], [`Self::into_view`]),
    /// not once per request: nothing reads it through the writer.
    pub(crate) fn end(&mut self) -> MvccResult<()> {
        if self.changes > 0 {
            self.state.current += 1;
            self.changes = 0;
            self.rev_dirty = true;
        }
        Ok(())
    }

    /// Runs `f` as one request: on error the changes made so far still end
    /// the request (never happens for validated requests, as in etcd).
    fn request<T>(
        &mut self,
        index: u64,
        f: impl FnOnce(&mut Self) -> MvccResult<T>,
    ) -> MvccResult<T> {
        self.begin(index);
        let out = f(self);
        self.end()?;
        out
    }

    /// etcd's Put (raft entry at `index`). The server validates first
    /// ([`super::validate::check_put_request`]).
    pub fn put(&mut self, index: u64, p: &PutRequest) -> MvccResult<PutResponse> {
        self.request(index, |w| {
            if p.lease != 0 && !w.lease_exists(p.lease)? {
                return Err(MvccError::LeaseNotFound);
            }
            w.put_op(p)
        })
    }

    /// [`Self::put`] taking the request by value: the watch event gets the
    /// request's key and value buffers instead of copies of them (the
    /// server's apply path, where the request was just decoded from the log
    /// entry and is not needed afterwards).
    pub fn put_owned(&mut self, index: u64, p: PutRequest) -> MvccResult<PutResponse> {
        if p.ignore_value || p.ignore_lease || p.prev_kv {
            return self.put(index, &p);
        }
        self.request(index, |w| {
            if p.lease != 0 && !w.lease_exists(p.lease)? {
                return Err(MvccError::LeaseNotFound);
            }
            if let Some(ev) = w.put_key_core(&p.key, &p.value, p.lease)? {
                w.events.push(ev.event(p.key, p.value));
            }
            Ok(PutResponse {
                header: ResponseHeader::at(w.state.current + 1),
                prev_kv: None,
            })
        })
    }

    /// etcd's DeleteRange.
    pub fn delete_range(
        &mut self,
        index: u64,
        d: &DeleteRangeRequest,
    ) -> MvccResult<DeleteRangeResponse> {
        self.request(index, |w| w.delete_range_op(d))
    }

    /// etcd's Txn. The server validates first ([`super::validate::check_txn_request`]).
    pub fn txn(&mut self, index: u64, t: &TxnRequest) -> MvccResult<TxnResponse> {
        self.request(index, |w| {
            let cur = w.state.current;
            // Every compare, nested ones too, sees the state before the txn.
            let path = TxnPath::compute(&w.ctx(), t, cur)?;
            if !is_txn_readonly(t) {
                w.check_puts(t, &path, &mut Vec::new())?;
            }
            w.check_ranges(t, &path)?;
            let mut resp = w.apply_txn(t, &path)?;
            resp.header.revision = w.read_rev();
            Ok(resp)
        })
    }

    fn put_op(&mut self, p: &PutRequest) -> MvccResult<PutResponse> {
        let mut value: &[u8] = &p.value;
        let mut lease = p.lease;
        let mut prev = None;
        let stored;
        if p.ignore_value || p.ignore_lease || p.prev_kv {
            let cur = self.read_rev();
            prev = self.ctx().get_at(&p.key, cur)?;
            match &prev {
                None if p.ignore_value || p.ignore_lease => return Err(MvccError::KeyNotFound),
                Some(kv) => {
                    if p.ignore_lease {
                        lease = kv.lease;
                    }
                    if p.ignore_value {
                        stored = kv.value.clone();
                        value = &stored;
                    }
                }
                None => {}
            }
        }
        self.put_key(&p.key, value, lease)?;
        Ok(PutResponse {
            header: ResponseHeader::at(self.state.current + 1),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete_range_op(&mut self, d: &DeleteRangeRequest) -> MvccResult<DeleteRangeResponse> {
        let range = KeyRange::new(&d.key, &d.range_end);
        let cur = self.read_rev();
        let found = self.ctx().range_keys(range, cur)?;
        let mut prev_kvs = Vec::new();
        if d.prev_kv {
            for f in &found {
                prev_kvs.push(self.ctx().key_value(f.rev)?);
            }
        }
        let deleted = found.len() as i64;
        for f in found {
            if let Some(h) = f.head {
                self.delete_key(&f.key, h)?;
            }
        }
        let rev = if deleted != 0 || self.changes > 0 {
            self.state.current + 1
        } else {
            self.state.current
        };
        Ok(DeleteRangeResponse {
            header: ResponseHeader::at(rev),
            deleted,
            prev_kvs,
        })
    }

    /// The previous state of `key` for an event at the request's revision:
    /// the key as of `current` (before this request).
    fn event_prev(&self, key: &[u8], head: Option<&HeadEntry>) -> MvccResult<Option<KeyValue>> {
        match head {
            None => Ok(None),
            Some(h) if h.modified.main <= self.state.current => {
                Ok(Some(self.ctx().key_value(h.modified)?))
            }
            // Changed earlier in this request: look up the state before it.
            Some(_) => self.ctx().get_at(key, self.state.current),
        }
    }

    /// Writes a new version of `key`. Invariant: `Tree::Kv`, `Tree::KeyHistory`
    /// and `Tree::KeyIndex` change together, and the lease index follows the head.
    pub(crate) fn put_key(&mut self, key: &[u8], value: &[u8], lease: i64) -> MvccResult<()> {
        if let Some(ev) = self.put_key_core(key, value, lease)? {
            self.events.push(ev.event(key.to_vec(), value.to_vec()));
        }
        Ok(())
    }

    /// [`Self::put_key`] without the event's copies of key and value: the
    /// caller builds the event (from bytes it owns, or copies) when one is
    /// returned.
    fn put_key_core(&mut self, key: &[u8], value: &[u8], lease: i64) -> MvccResult<Option<PutEvent>> {
        let rev = Revision::new(self.state.current + 1, self.changes);
        let next = |h: &Option<HeadEntry>| match h {
            Some(h) => HeadEntry { modified: rev, create_revision: h.create_revision, version: h.version + 1, lease },
            None => HeadEntry { modified: rev, create_revision: rev.main, version: 1, lease },
        };
        // The new head first: with one lookup of the key index (`update`)
        // where a get and a put take two. `prev_kv` events read the state
        // before this change, so that mode reads it before writing.
        let mut prev = None;
        let head = if self.cfg.events == EventMode::EventsWithPrevKv {
            let head = self.ctx().head(key)?;
            if head.is_some() {
                prev = self.event_prev(key, head.as_ref())?;
            }
            let (b, n) = next(&head).encode_buf();
            self.view.put(Tree::KeyIndex, key, &b[..n])?;
            head
        } else {
            let mut old: MvccResult<Option<HeadEntry>> = Ok(None);
            self.view.update(Tree::KeyIndex, key, &mut |bytes, out| {
                match bytes.map(HeadEntry::from_bytes).transpose() {
                    Ok(h) => {
                        let (b, n) = next(&h).encode_buf();
                        out.extend_from_slice(&b[..n]);
                        old = Ok(h);
                        true
                    }
                    Err(e) => {
                        old = Err(e);
                        false
                    }
                }
            })?;
            old?
        };
        let entry = next(&head);
        let old_lease = head.as_ref().map_or(0, |h| h.lease);
        let mut rec = std::mem::take(&mut self.scratch);
        rec.clear();
        Record {
            tombstone: false,
            create_revision: entry.create_revision,
            version: entry.version,
            lease,
            key,
            value,
        }
        .encode(&mut rec);
        let res = self.view.put(Tree::Kv, &rev.kv_key_buf(), &rec);
        self.scratch = rec;
        res?;
        if let Some(h) = &head {
            // The old head becomes a superseded change.
            self.put_history(key, h.modified, KIND_PUT)?;
        }
        if old_lease != lease {
            if old_lease != 0 {
                self.lease_detach(old_lease, key)?;
            }
            if lease != 0 {
                self.lease_attach(lease, key)?;
            }
        }
        self.changes += 1;
        if self.cfg.events == EventMode::None {
            return Ok(None);
        }
        Ok(Some(PutEvent {
            create_revision: entry.create_revision,
            mod_revision: rev.main,
            version: entry.version,
            lease,
            prev,
        }))
    }

    /// Writes the `Tree::KeyHistory` entry of `key`'s change at `rev`.
    fn put_history(&mut self, key: &[u8], rev: Revision, kind: u8) -> MvccResult<()> {
        let mut hk = std::mem::take(&mut self.hscratch);
        history_key_into(key, rev, &mut hk);
        let res = self.view.put(Tree::KeyHistory, &hk, &[kind]);
        self.hscratch = hk;
        Ok(res?)
    }

    /// Writes a tombstone for the live `key` whose head entry is `head`.
    pub(crate) fn delete_key(&mut self, key: &[u8], head: HeadEntry) -> MvccResult<()> {
        let rev = Revision::new(self.state.current + 1, self.changes);
        let prev = if self.cfg.events == EventMode::EventsWithPrevKv {
            self.event_prev(key, Some(&head))?
        } else {
            None
        };
        let mut rec = std::mem::take(&mut self.scratch);
        rec.clear();
        Record {
            tombstone: true,
            create_revision: 0,
            version: 0,
            lease: 0,
            key,
            value: &[],
        }
        .encode(&mut rec);
        let res = self.view.put(Tree::Kv, &rev.kv_key_buf(), &rec);
        self.scratch = rec;
        res?;
        // The head and the tombstone are both superseded changes (a deleted
        // key has no head).
        self.put_history(key, head.modified, KIND_PUT)?;
        self.put_history(key, rev, KIND_TOMBSTONE)?;
        self.view.delete(Tree::KeyIndex, key)?;
        if head.lease != 0 {
            self.lease_detach(head.lease, key)?;
        }
        self.changes += 1;
        if self.cfg.events != EventMode::None {
            self.events.push(Event {
                r#type: EventType::Delete,
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: rev.main,
                    ..Default::default()
                },
                prev_kv: prev,
            });
        }
        Ok(())
    }

    /// etcd's `checkRequestPut` over the chosen branches, in execution order.
    ///
    /// Deviation: a put with `ignore_value`/`ignore_lease` after a delete
    /// with range end "\0" covering its key (which etcd's interval check lets
    /// through) would find no key mid-apply, where etcd 3.4 panics; it is
    /// rejected here with "key not found" before anything is applied.
    fn check_puts<'t>(
        &self,
        t: &'t TxnRequest,
        path: &TxnPath,
        gte_dels: &mut Vec<&'t [u8]>,
    ) -> MvccResult<()> {
        let mut nested = path.children.iter();
        for op in path.ops(t) {
            match &op.request {
                Some(Request::RequestTxn(inner)) => {
                    if let Some(p) = nested.next() {
                        self.check_puts(inner, p, gte_dels)?;
                    }
                }
                Some(Request::RequestDeleteRange(d)) if d.range_end == [0] => gte_dels.push(&d.key),
                Some(Request::RequestPut(p)) => {
                    if (p.ignore_value || p.ignore_lease)
                        && (self.ctx().head(&p.key)?.is_none()
                            || gte_dels.iter().any(|k| p.key.as_slice() >= *k))
                    {
                        return Err(MvccError::KeyNotFound);
                    }
                    if p.lease != 0 && !self.lease_exists(p.lease)? {
                        return Err(MvccError::LeaseNotFound);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// etcd's `checkRequestRange`: revisions checked against the state before
    /// the txn, with etcd's "first revision" = the compact revision (-1 if none).
    fn check_ranges(&self, t: &TxnRequest, path: &TxnPath) -> MvccResult<()> {
        let mut nested = path.children.iter();
        for op in path.ops(t) {
            match &op.request {
                Some(Request::RequestTxn(inner)) => {
                    if let Some(p) = nested.next() {
                        self.check_ranges(inner, p)?;
                    }
                }
                Some(Request::RequestRange(r)) => {
                    if r.revision == 0 {
                        continue;
                    }
                    if r.revision > self.state.current {
                        return Err(MvccError::FutureRev);
                    }
                    if r.revision < self.state.compact {
                        return Err(MvccError::Compacted);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_txn(&mut self, t: &TxnRequest, path: &TxnPath) -> MvccResult<TxnResponse> {
        let mut nested = path.children.iter();
        let mut responses = Vec::new();
        for op in path.ops(t) {
            let response = match &op.request {
                None => None,
                Some(Request::RequestRange(r)) => Some(Response::ResponseRange(self.range(r)?)),
                Some(Request::RequestPut(p)) => Some(Response::ResponsePut(self.put_op(p)?)),
                Some(Request::RequestDeleteRange(d)) => {
                    Some(Response::ResponseDeleteRange(self.delete_range_op(d)?))
                }
                Some(Request::RequestTxn(inner)) => {
                    let p = nested
                        .next()
                        .ok_or_else(|| MvccError::corrupt("txn path"))?;
                    // Nested responses keep a zero header, as in etcd.
                    Some(Response::ResponseTxn(self.apply_txn(inner, p)?))
                }
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: ResponseHeader::default(),
            succeeded: path.succeeded,
            responses,
        })
    }
}

/// What a put's watch event needs besides the key and value.
struct PutEvent {
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
    prev: Option<KeyValue>,
}

impl PutEvent {
    fn event(self, key: Vec<u8>, value: Vec<u8>) -> Event {
        Event {
            r#type: EventType::Put,
            kv: KeyValue {
                key,
                create_revision: self.create_revision,
                mod_revision: self.mod_revision,
                version: self.version,
                value,
                lease: self.lease,
            },
            prev_kv: self.prev,
        }
    }
}

/// etcd's `isTxnReadonly`: only ranges at the top level of both branches.
pub(crate) fn is_txn_readonly(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// The branch taken by a txn and, in order, by each nested txn of that branch
/// (etcd's `compareToPath`).
pub(crate) struct TxnPath {
    pub succeeded: bool,
    pub children: Vec<TxnPath>,
}

impl TxnPath {
    pub fn compute<V: ReadView + ?Sized>(
        ctx: &ReadCtx<'_, V>,
        t: &TxnRequest,
        cur: i64,
    ) -> MvccResult<Self> {
        let mut succeeded = true;
        for c in &t.compare {
            if !ctx.compare(c, cur)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut children = Vec::new();
        for op in ops {
            if let Some(Request::RequestTxn(inner)) = &op.request {
                children.push(TxnPath::compute(ctx, inner, cur)?);
            }
        }
        Ok(TxnPath {
            succeeded,
            children,
        })
    }

    pub fn ops<'t>(&self, t: &'t TxnRequest) -> &'t [RequestOp] {
        if self.succeeded {
            &t.success
        } else {
            &t.failure
        }
    }
}

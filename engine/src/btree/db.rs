//! The store file: open, snapshots, the write transaction, publish and sync,
//! and free-page reuse.
//!
//! Commit protocol (`docs/btree.md`, "Commit protocol"):
//! - [`WriteView::commit`] *publishes*: it writes every new page of the
//!   transaction (`PageIo::write_at`) into pages no live version and no durable meta
//!   can reach, then swaps the in-memory current version. No `fdatasync`.
//! - [`Store::sync`] makes the newest published version durable: write the
//!   freelist pages, `fdatasync`, write the meta page into the slot *not*
//!   holding the durable meta, `fdatasync`.
//!
//! Reuse rule: pages freed by transaction T are reused only once every live
//! snapshot has a txid >= T and either a meta with txid >= T is durable or
//! the page was allocated after the newest durable meta (which therefore
//! cannot reach it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::check::{self, CheckReport};
use super::io::{FileIo, PageIo};
use super::page::{
    decode_freelist, decode_meta, encode_freelist, encode_meta, Meta, MetaError, FREELIST_RUNS_PER_PAGE,
    MAX_KEY_LEN, MAX_VALUE_LEN, PAGE_SIZE, PS,
};
use super::pager::Mapped;
use super::tree::{Alloc, Child, Ctx, Spare, TxnTrees};
use crate::kv::{ReadView, Store, StoreError, StoreResult, Tree, WriteView};

/// Options for [`Db::open`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DbOptions {
    /// Verify a page's checksum on every read, not only on the first read
    /// of that page by this process. Costs about 0.3 µs per page visited.
    pub verify_every_read: bool,
    /// In debug builds, run [`Db::check`] after every Nth successful `sync`
    /// (0: never). Files above 128 MiB are checked 16 times less often.
    pub debug_check_every: u32,
    /// Size a new file starts with (it grows by 1/16 of its size per step, 1 MiB..128 MiB).
    pub initial_size: u64,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions { verify_every_read: false, debug_check_every: 1, initial_size: 256 << 10 }
    }
}

/// Counters for tests and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DbStats {
    /// Newest published transaction.
    pub txid: u64,
    /// Newest durable transaction.
    pub durable_txid: u64,
    pub file_len: u64,
    /// Pages `0..high_water` are in use or free; the rest of the file is unused.
    pub high_water: u64,
    /// Pages ready for reuse.
    pub free_pages: u64,
    /// Freed pages still visible to a snapshot or to the durable meta.
    pub pending_pages: u64,
}

/// One published state of every tree.
pub(crate) struct Version {
    pub txid: u64,
    pub applied: u64,
    pub roots: [u64; Tree::COUNT],
    pub map: Arc<Mapped>,
}

fn root_of(r: u64) -> Option<Child> {
    (r != 0).then_some(Child::Page(r))
}

/// A consistent read-only view of every tree: a root set plus the map it
/// reads from. Holding it pins its pages; it never blocks the writer.
#[derive(Clone)]
pub struct Snapshot {
    v: Arc<Version>,
}

impl Snapshot {
    /// The transaction this snapshot shows.
    pub fn txid(&self) -> u64 {
        self.v.txid
    }
    fn ctx(&self) -> Ctx<'_> {
        Ctx { map: &self.v.map, nodes: &[], arena: &[] }
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("txid", &self.v.txid).finish()
    }
}

impl ReadView for Snapshot {
    fn get(&self, tree: Tree, key: &[u8]) -> StoreResult<Option<&[u8]>> {
        self.ctx().get(root_of(self.v.roots[tree as usize]), key)
    }
    fn scan(
        &self,
        tree: Tree,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        self.ctx().scan(root_of(self.v.roots[tree as usize]), start, end, reverse, visit)
    }
    fn applied_index(&self) -> u64 {
        self.v.applied
    }
}

/// Everything the single writer owns; behind `Db::writer`.
struct WriterState {
    poisoned: Option<String>,
    /// The newest map; every published version uses it.
    map: Arc<Mapped>,
    file_len: u64,
    hwm: u64,
    /// Loaded lazily (first write, sync or check) so open stays O(1).
    free_loaded: bool,
    /// Pages ready for reuse.
    free: BTreeSet<u64>,
    /// Pages freed by each transaction, not yet reusable, that the durable
    /// meta may reach: they wait for readers and for a newer durable meta.
    pending: BTreeMap<u64, Vec<u64>>,
    /// Pages freed by each transaction that were allocated after the durable
    /// meta: they wait for readers only.
    pending_fresh: BTreeMap<u64, Vec<u64>>,
    /// Pages allocated since the newest durable meta.
    fresh: PageBits,
    /// Page buffers of the last commit and its transaction's other
    /// buffers, reused by the next transaction.
    spare: Spare,
    /// [`TxAlloc::taken`], emptied, and emptied lists of pending pages
    /// (see `pending_list`), reused likewise.
    taken_buf: Vec<(u64, u64)>,
    page_lists: Vec<Vec<u64>>,
    /// The newest durable meta, its slot (page 0 or 1) and its freelist pages.
    durable: Meta,
    durable_slot: u64,
    freelist_pages: Vec<u64>,
    /// The freelist pages of a `sync` in flight, not yet named by a durable meta.
    incoming_freelist: Vec<u64>,
    /// Published versions, oldest first, to find the oldest live snapshot.
    versions: VecDeque<(u64, Weak<Version>)>,
    #[cfg(debug_assertions)]
    syncs: u64,
}

/// A set of page ids as a bitmap (one bit per page below the highest id
/// inserted): O(1) insert, remove and test without hashing.
#[derive(Default)]
struct PageBits(Vec<u64>);

impl PageBits {
    fn insert(&mut self, p: u64) {
        let w = (p / 64) as usize;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (p % 64);
    }
    /// Removes `p`; returns whether it was present.
    fn remove(&mut self, p: u64) -> bool {
        match self.0.get_mut((p / 64) as usize) {
            Some(w) if *w & (1 << (p % 64)) != 0 => {
                *w &= !(1 << (p % 64));
                true
            }
            _ => false,
        }
    }
    fn clear(&mut self) {
        self.0.fill(0);
    }
}

/// Page buffers kept between transactions (8 MiB); a larger commit
/// allocates the rest.
const POOL_PAGES: usize = 2048;
/// Emptied lists of pending pages kept for reuse.
const PAGE_LISTS: usize = 16;

impl WriterState {
    fn alloc_pages(&mut self, n: u64) -> u64 {
        if n == 1 {
            if let Some(p) = self.free.pop_first() {
                return p;
            }
        } else if let Some(p) = self.find_run(n) {
            for i in p..p + n {
                self.free.remove(&i);
            }
            return p;
        }
        let p = self.hwm;
        self.hwm += n;
        p
    }

    fn find_run(&self, n: u64) -> Option<u64> {
        let (mut start, mut len, mut prev) = (0, 0, u64::MAX);
        for &p in &self.free {
            if prev != u64::MAX && p == prev + 1 {
                len += 1;
            } else {
                start = p;
                len = 1;
            }
            if len == n {
                return Some(start);
            }
            prev = p;
        }
        None
    }

    /// Moves pending pages that became reusable into `free`.
    fn promote(&mut self) {
        while let Some((_, w)) = self.versions.front() {
            if w.strong_count() > 0 {
                break;
            }
            self.versions.pop_front();
        }
        let oldest = self.versions.front().map_or(u64::MAX, |(t, _)| *t);
        for (map, limit) in [(&mut self.pending, oldest.min(self.durable.txid)), (&mut self.pending_fresh, oldest)] {
            while let Some(e) = map.first_entry() {
                if *e.key() > limit {
                    break;
                }
                let mut pages = e.remove();
                self.free.extend(pages.iter().copied());
                if self.page_lists.len() < PAGE_LISTS && pages.capacity() <= POOL_PAGES {
                    pages.clear();
                    self.page_lists.push(pages);
                }
            }
        }
    }

    /// An empty list for pages freed by a transaction, reused if one is kept.
    fn pending_list(&mut self) -> Vec<u64> {
        self.page_lists.pop().unwrap_or_default()
    }

    /// Every freed page not yet reusable.
    fn all_pending(&self) -> impl Iterator<Item = &u64> {
        self.pending.values().flatten().chain(self.pending_fresh.values().flatten())
    }
}

/// Records `pages` as freed by transaction `txid` in `map` (an empty list
/// is not entered; it goes back to `lists` for reuse).
fn add_pending(map: &mut BTreeMap<u64, Vec<u64>>, txid: u64, mut pages: Vec<u64>, lists: &mut Vec<Vec<u64>>) {
    if pages.is_empty() {
        if lists.len() < PAGE_LISTS {
            lists.push(pages);
        }
        return;
    }
    match map.entry(txid) {
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(pages);
        }
        std::collections::btree_map::Entry::Occupied(mut e) => {
            e.get_mut().extend_from_slice(&pages);
            pages.clear();
            if lists.len() < PAGE_LISTS {
                lists.push(pages);
            }
        }
    }
}

/// Records the pages a commit takes, so a failed commit can give them back.
struct TxAlloc<'s> {
    g: &'s mut WriterState,
    taken: Vec<(u64, u64)>,
}

impl Alloc for TxAlloc<'_> {
    fn alloc(&mut self, n: u64) -> u64 {
        let p = self.g.alloc_pages(n);
        self.taken.push((p, n));
        p
    }
}

/// The memory-mapped copy-on-write B-tree file holding every [`Tree`].
pub struct Db {
    io: Arc<dyn PageIo>,
    name: String,
    opts: DbOptions,
    current: Mutex<Arc<Version>>,
    writer: Mutex<WriterState>,
    /// One `sync` at a time; it holds `writer` only to prepare and to finish.
    sync_lock: Mutex<()>,
}

/// Maps an I/O error, building the context only on failure.
fn io_err(context: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context: context(), source }
}

impl Db {
    /// Opens or creates the store file at `path` (e.g. `<data-dir>/member/kv.db`).
    pub fn open(path: impl AsRef<Path>, opts: DbOptions) -> StoreResult<Db> {
        let path = path.as_ref();
        let io = FileIo::open(path).map_err(io_err(|| format!("opening {}", path.display())))?;
        Self::open_with_io(Arc::new(io), opts)
    }

    /// Opens or creates a store on any backend (tests use [`super::FaultIo`]).
    /// O(1): reads the two meta pages, nothing else.
    pub fn open_with_io(io: Arc<dyn PageIo>, opts: DbOptions) -> StoreResult<Db> {
        let name = io.describe();
        let mut len = io.file_len().map_err(io_err(|| format!("reading the size of {name}")))?;
        if len < 2 * PS {
            if len > 0 {
                let m = io.map().map_err(io_err(|| format!("mapping {name}")))?;
                let mapped = Mapped::new(m, len, None, false);
                let blank = mapped.bytes(0, len as usize).is_some_and(|b| b.iter().all(|&x| x == 0));
                if !blank {
                    return Err(StoreError::Corrupt(format!("{name}: {len} bytes, too short for a store file")));
                }
            }
            Self::init(&*io, &opts, &name)?;
            len = io.file_len().map_err(io_err(|| format!("reading the size of {name}")))?;
        }
        let mut map = Mapped::new(io.map().map_err(io_err(|| format!("mapping {name}")))?, len, None, opts.verify_every_read);
        let (meta, slot) = match Self::pick_meta(&map, &name)? {
            Some(x) => x,
            None => {
                Self::init(&*io, &opts, &name)?;
                len = io.file_len().map_err(io_err(|| format!("reading the size of {name}")))?;
                map = Mapped::new(io.map().map_err(io_err(|| format!("mapping {name}")))?, len, None, opts.verify_every_read);
                Self::pick_meta(&map, &name)?.ok_or_else(|| StoreError::Corrupt(format!("{name}: meta pages unreadable after initialisation")))?
            }
        };
        if meta.hwm.checked_mul(PS).is_none_or(|b| b > len) {
            return Err(StoreError::Corrupt(format!(
                "{name}: file of {len} bytes is shorter than its high-water mark of {} pages (truncated?)",
                meta.hwm
            )));
        }
        let map = Arc::new(map);
        let v = Arc::new(Version { txid: meta.txid, applied: meta.applied, roots: meta.roots, map: map.clone() });
        let g = WriterState {
            poisoned: None,
            map,
            file_len: len,
            hwm: meta.hwm,
            free_loaded: false,
            free: BTreeSet::new(),
            pending: BTreeMap::new(),
            pending_fresh: BTreeMap::new(),
            fresh: PageBits::default(),
            spare: Spare::default(),
            taken_buf: Vec::new(),
            page_lists: Vec::new(),
            durable: meta,
            durable_slot: slot,
            freelist_pages: Vec::new(),
            incoming_freelist: Vec::new(),
            versions: VecDeque::from([(v.txid, Arc::downgrade(&v))]),
            #[cfg(debug_assertions)]
            syncs: 0,
        };
        Ok(Db { io, name, opts, current: Mutex::new(v), writer: Mutex::new(g), sync_lock: Mutex::new(()) })
    }

    /// Writes the two initial meta pages of an empty store.
    fn init(io: &dyn PageIo, opts: &DbOptions, name: &str) -> StoreResult<()> {
        let size = opts.initial_size.max(2 * PS).div_ceil(PS) * PS;
        io.grow(size).map_err(io_err(|| format!("growing {name}")))?;
        let meta = Meta { txid: 0, applied: 0, hwm: 2, freelist: 0, free_count: 0, roots: [0; Tree::COUNT] };
        let buf = encode_meta(&meta);
        io.write_at(0, &buf).map_err(io_err(|| format!("writing meta page 0 of {name}")))?;
        io.write_at(PS, &buf).map_err(io_err(|| format!("writing meta page 1 of {name}")))?;
        io.sync_data().map_err(io_err(|| format!("fdatasync of {name}")))
    }

    /// The newest valid meta and its slot; `None` if both are blank.
    fn pick_meta(map: &Mapped, name: &str) -> StoreResult<Option<(Meta, u64)>> {
        let read = |slot: u64| match map.page(slot) {
            Ok(b) => decode_meta(b),
            Err(e) => Err(MetaError::Invalid(e.to_string())),
        };
        match (read(0), read(1)) {
            (Ok(a), Ok(b)) => Ok(Some(if b.txid > a.txid { (b, 1) } else { (a, 0) })),
            (Ok(a), Err(_)) => Ok(Some((a, 0))),
            (Err(_), Ok(b)) => Ok(Some((b, 1))),
            (Err(MetaError::Blank), Err(MetaError::Blank)) => Ok(None),
            (Err(MetaError::Bbolt), _) | (_, Err(MetaError::Bbolt)) => Err(StoreError::Corrupt(format!(
                "{name} is a bbolt database (an etcd `db` file?), not an ironcd store file"
            ))),
            (Err(MetaError::Version(v)), _) | (_, Err(MetaError::Version(v))) => Err(StoreError::Corrupt(format!(
                "{name} is an ironcd store file of format version {v}; this build reads only version {} \
                 and cannot upgrade it (start from an empty data directory or restore a snapshot)",
                super::page::FORMAT_VERSION
            ))),
            (Err(a), Err(b)) => Err(StoreError::Corrupt(format!(
                "{name}: no valid meta page (page 0: {a:?}; page 1: {b:?})"
            ))),
        }
    }

    fn current(&self) -> Arc<Version> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lock_writer(&self) -> StoreResult<MutexGuard<'_, WriterState>> {
        let g = self
            .writer
            .lock()
            .map_err(|_| StoreError::Poisoned("a writer panicked mid-transaction".into()))?;
        if let Some(p) = &g.poisoned {
            return Err(StoreError::Poisoned(p.clone()));
        }
        Ok(g)
    }

    fn load_freelist(&self, g: &mut WriterState) -> StoreResult<()> {
        if g.free_loaded {
            return Ok(());
        }
        let (mut free, mut pages, mut next) = (BTreeSet::new(), Vec::new(), g.durable.freelist);
        let hwm = g.durable.hwm;
        while next != 0 {
            if next < 2 || next >= hwm || pages.len() as u64 >= hwm {
                return Err(StoreError::Corrupt(format!("{}: freelist chain reaches page {next}", self.name)));
            }
            let (n, runs) = decode_freelist(next, g.map.page(next)?)?;
            for (s, len) in runs {
                if s < 2 || len == 0 || s.checked_add(len).is_none_or(|e| e > hwm) {
                    return Err(StoreError::Corrupt(format!("page {next}: free run {s}+{len} out of range")));
                }
                free.extend(s..s + len);
            }
            pages.push(next);
            next = n;
        }
        if free.len() as u64 != g.durable.free_count {
            return Err(StoreError::Corrupt(format!(
                "{}: freelist holds {} pages, the meta page says {}",
                self.name,
                free.len(),
                g.durable.free_count
            )));
        }
        g.free = free;
        g.freelist_pages = pages;
        g.free_loaded = true;
        Ok(())
    }

    /// Makes the file at least `need` bytes long and the map cover it.
    fn ensure_len(&self, g: &mut WriterState, need: u64) -> StoreResult<()> {
        if need > g.file_len {
            // A sixteenth of the file (1 MiB..128 MiB): few remaps, and an
            // unused tail of at most 1/16 (doubling left up to 1/2 unused).
            let step = (g.file_len / 16).clamp(1 << 20, 128 << 20);
            let new_len = need.max(g.file_len + step).div_ceil(PS) * PS;
            self.io.grow(new_len).map_err(io_err(|| format!("growing {} to {new_len} bytes", self.name)))?;
            g.file_len = new_len;
        }
        if g.file_len > g.map.len() {
            // The map reserves address space past the end of the file, so a
            // longer file is usually served by the same mapping (no new map
            // whose pages all fault again on first touch).
            let m = if g.map.map().len() as u64 >= g.file_len {
                g.map.map().clone()
            } else {
                self.io.map().map_err(io_err(|| format!("mapping {}", self.name)))?
            };
            g.map = Arc::new(Mapped::new(m, g.file_len, Some(&g.map), self.opts.verify_every_read));
        }
        Ok(())
    }

    /// Writes encoded pages (each a page or an overflow run) in file order.
    fn write_pages(&self, g: &mut WriterState, out: &mut [(u64, Vec<u8>)]) -> StoreResult<()> {
        self.ensure_len(g, g.hwm * PS)?;
        out.sort_unstable_by_key(|(p, _)| *p);
        self.io
            .write_all_at(&mut out.iter().map(|(p, data)| (p * PS, &data[..])))
            .map_err(|(off, e)| io_err(|| format!("writing page {} of {}", off / PS, self.name))(e))?;
        // Only once every page is written (after a failed write the store
        // is poisoned; an unmarked page is merely verified on its next read).
        for (p, _) in out.iter() {
            g.map.mark_verified(*p);
        }
        Ok(())
    }

    /// Sync steps S1-S2 (under the writer lock): writes the freelist of
    /// `cur` and returns the meta page to write and its slot.
    fn sync_prepare(&self, g: &mut WriterState, cur: &Version) -> StoreResult<(Meta, u64)> {
        // Every page free in state `cur`: reusable, pending (whatever their
        // readers: after a crash there are none) and the superseded freelist.
        let mut list: Vec<u64> = g
            .free
            .iter()
            .chain(g.all_pending())
            .chain(&g.freelist_pages)
            .copied()
            .collect();
        list.sort_unstable();
        // Pages for the new freelist come out of the list they store.
        let mut fl_pages: Vec<u64> = Vec::new();
        let runs = loop {
            let mut taken = fl_pages.clone();
            taken.sort_unstable();
            let rest: Vec<u64> = list.iter().copied().filter(|p| taken.binary_search(p).is_err()).collect();
            let runs = to_runs(&rest);
            let need = runs.len().div_ceil(FREELIST_RUNS_PER_PAGE);
            if need <= fl_pages.len() {
                list = rest;
                break runs;
            }
            for _ in fl_pages.len()..need {
                fl_pages.push(g.alloc_pages(1));
            }
        };
        let mut out: Vec<(u64, Vec<u8>)> = fl_pages
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let chunk = runs
                    .get(i * FREELIST_RUNS_PER_PAGE..((i + 1) * FREELIST_RUNS_PER_PAGE).min(runs.len()))
                    .unwrap_or(&[]);
                let next = fl_pages.get(i + 1).copied().unwrap_or(0);
                (p, encode_freelist(p, cur.txid, next, chunk))
            })
            .collect();
        self.write_pages(g, &mut out)?;
        g.incoming_freelist = fl_pages.clone();
        // Pages allocated from here on are unreachable from both the durable
        // meta and the one being written; earlier ones are treated as
        // reachable (conservatively) until the next sync.
        g.fresh.clear();
        let meta = Meta {
            txid: cur.txid,
            applied: cur.applied,
            hwm: g.hwm,
            freelist: fl_pages.first().copied().unwrap_or(0),
            free_count: list.len() as u64,
            roots: cur.roots,
        };
        Ok((meta, 1 - g.durable_slot))
    }

    /// Sync steps S3-S5, without the writer lock: commits may run meanwhile,
    /// writing only pages that neither the durable meta nor `meta` reaches.
    fn sync_flush(&self, meta: &Meta, slot: u64) -> StoreResult<()> {
        self.io.sync_data().map_err(io_err(|| format!("fdatasync of {} (pages)", self.name)))?;
        self.io
            .write_at(slot * PS, &encode_meta(meta))
            .map_err(io_err(|| format!("writing meta page {slot} of {}", self.name)))?;
        self.io.sync_data().map_err(io_err(|| format!("fdatasync of {} (meta)", self.name)))
    }

    /// Verifies the whole file: every page below the high-water mark is
    /// exactly one of meta, free, pending-free, freelist or reachable from
    /// the newest published version; every reachable page has a valid
    /// checksum; keys are ordered within and across nodes; leaves share one
    /// depth. O(file size).
    pub fn check(&self) -> StoreResult<CheckReport> {
        let mut g = self.lock_writer()?;
        self.check_locked(&mut g)
    }

    fn check_locked(&self, g: &mut WriterState) -> StoreResult<CheckReport> {
        self.load_freelist(g)?;
        let cur = self.current();
        check::check(
            &g.map,
            check::Input {
                txid: cur.txid,
                durable_txid: g.durable.txid,
                roots: &cur.roots,
                hwm: g.hwm,
                free: &g.free,
                pending: &g.all_pending().copied().collect::<Vec<_>>(),
                freelist_pages: &[&g.freelist_pages[..], &g.incoming_freelist[..]].concat(),
            },
        )
    }

    /// Sizes and counters.
    pub fn stats(&self) -> StoreResult<DbStats> {
        let mut g = self.lock_writer()?;
        self.load_freelist(&mut g)?;
        g.promote();
        Ok(DbStats {
            txid: self.current().txid,
            durable_txid: g.durable.txid,
            file_len: g.file_len,
            high_water: g.hwm,
            free_pages: g.free.len() as u64,
            pending_pages: g.all_pending().count() as u64,
        })
    }

    #[cfg(debug_assertions)]
    fn debug_check(&self, g: &mut WriterState) -> StoreResult<()> {
        g.syncs += 1;
        let every = u64::from(self.opts.debug_check_every);
        if every == 0 {
            return Ok(());
        }
        let every = if g.hwm > (128 << 20) / PS { every * 16 } else { every };
        if g.syncs.checked_rem(every) == Some(0) {
            self.check_locked(g)?;
        }
        Ok(())
    }
}

fn to_runs(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &p in sorted {
        match runs.last_mut() {
            Some((s, n)) if *s + *n == p => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

impl Store for Db {
    type Snapshot = Snapshot;
    type Write<'a> = WriteTxn<'a>;

    fn snapshot(&self) -> Snapshot {
        Snapshot { v: self.current() }
    }

    /// Waits for the previous writer, or for a `sync` preparing or finishing.
    fn begin_write(&self) -> StoreResult<WriteTxn<'_>> {
        let mut g = self.lock_writer()?;
        self.load_freelist(&mut g)?;
        g.promote();
        let base = self.current();
        let spare = std::mem::take(&mut g.spare);
        let trees = TxnTrees::new(base.map.clone(), &base.roots, spare);
        Ok(WriteTxn { db: self, applied: base.applied, g, base, trees })
    }

    /// Holds the writer lock only to prepare (S1-S2) and to finish (S6); a
    /// writer can commit while the two `fdatasync`s run.
    fn sync(&self) -> StoreResult<()> {
        let _one = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (meta, slot) = {
            let mut g = self.lock_writer()?;
            self.load_freelist(&mut g)?;
            let cur = self.current();
            if cur.txid == g.durable.txid {
                return Ok(());
            }
            match self.sync_prepare(&mut g, &cur) {
                Ok(x) => x,
                Err(e) => {
                    g.poisoned = Some(e.to_string());
                    return Err(e);
                }
            }
        };
        let flushed = self.sync_flush(&meta, slot);
        let mut g = self
            .writer
            .lock()
            .map_err(|_| StoreError::Poisoned("a writer panicked mid-transaction".into()))?;
        if let Err(e) = flushed {
            g.poisoned = Some(e.to_string());
            return Err(e);
        }
        // S6. Only the superseded meta reached the old freelist pages.
        let incoming = std::mem::take(&mut g.incoming_freelist);
        let old = std::mem::replace(&mut g.freelist_pages, incoming);
        g.free.extend(old);
        g.durable = meta;
        g.durable_slot = slot;
        g.promote();
        #[cfg(debug_assertions)]
        if g.poisoned.is_none() {
            self.debug_check(&mut g)?;
        }
        drop(g);
        // Outside the writer lock: unmapping takes time in proportion to
        // the pages mapped since the last sync.
        self.io.release_resident();
        Ok(())
    }
}

/// A write transaction set aside without holding the writer lock
/// ([`WriteTxn::park`]): its changes, made on top of one published state,
/// kept in memory. [`Db::resume`] takes it up again if nothing was
/// committed since; dropping it discards it.
///
/// The state machine uses it to apply a log entry while the entry's WAL
/// write is in flight and to publish it once the entry is committed
/// (docs/server.md, "Applying ahead"). Nothing is allocated in the file and
/// no lock is held while parked, so any other writer (a compaction step, a
/// snapshot install) goes ahead and only makes the parked changes stale.
pub struct ParkedTxn {
    base: Arc<Version>,
    trees: TxnTrees,
    applied: u64,
}

impl ParkedTxn {
    /// The applied index the transaction will record.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }
}

impl Db {
    /// Takes a parked transaction up again, holding the writer lock as
    /// [`Store::begin_write`] does. `Ok(None)` when another transaction
    /// was committed since it began: its changes rest on a state that is no
    /// longer the newest, so they are dropped (its buffers are kept for the
    /// next writer) and the caller starts over.
    pub fn resume(&self, p: ParkedTxn) -> StoreResult<Option<WriteTxn<'_>>> {
        let mut g = self.lock_writer()?;
        let ParkedTxn { base, mut trees, applied } = p;
        if !Arc::ptr_eq(&base, &self.current()) {
            let pool = std::mem::take(&mut trees.pool);
            g.spare = trees.into_spare(pool);
            return Ok(None);
        }
        self.load_freelist(&mut g)?;
        g.promote();
        Ok(Some(WriteTxn { db: self, applied, g, base, trees }))
    }
}

impl<'a> WriteTxn<'a> {
    /// Sets the transaction aside and releases the writer lock; see
    /// [`ParkedTxn`].
    pub fn park(self) -> ParkedTxn {
        let WriteTxn { db: _, g, base, trees, applied } = self;
        drop(g);
        ParkedTxn { base, trees, applied }
    }
}

/// The one write transaction. Dropping it without `commit` discards it.
pub struct WriteTxn<'a> {
    db: &'a Db,
    g: MutexGuard<'a, WriterState>,
    base: Arc<Version>,
    trees: TxnTrees,
    applied: u64,
}

impl ReadView for WriteTxn<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> StoreResult<Option<&[u8]>> {
        self.trees.ctx().get(self.trees.roots[tree as usize], key)
    }
    fn scan(
        &self,
        tree: Tree,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        self.trees.ctx().scan(self.trees.roots[tree as usize], start, end, reverse, visit)
    }
    fn applied_index(&self) -> u64 {
        self.applied
    }
}

impl WriteView for WriteTxn<'_> {
    fn put(&mut self, tree: Tree, key: &[u8], value: &[u8]) -> StoreResult<()> {
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::TooLarge(format!("key of {} bytes exceeds the limit of {MAX_KEY_LEN}", key.len())));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(StoreError::TooLarge(format!(
                "value of {} bytes exceeds the limit of {MAX_VALUE_LEN}",
                value.len()
            )));
        }
        self.trees.put(tree as usize, key, value)
    }

    fn update(
        &mut self,
        tree: Tree,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>, &mut Vec<u8>) -> bool,
    ) -> StoreResult<bool> {
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::TooLarge(format!("key of {} bytes exceeds the limit of {MAX_KEY_LEN}", key.len())));
        }
        let mut too_large = 0;
        let mut checked = |old: Option<&[u8]>, out: &mut Vec<u8>| {
            if !f(old, out) {
                return false;
            }
            if out.len() > MAX_VALUE_LEN {
                too_large = out.len();
                return false;
            }
            true
        };
        let done = self.trees.update(tree as usize, key, &mut checked)?;
        if too_large > 0 {
            return Err(StoreError::TooLarge(format!(
                "value of {too_large} bytes exceeds the limit of {MAX_VALUE_LEN}"
            )));
        }
        Ok(done)
    }

    fn delete(&mut self, tree: Tree, key: &[u8]) -> StoreResult<bool> {
        self.trees.delete(tree as usize, key)
    }

    fn set_applied_index(&mut self, index: u64) {
        self.applied = index;
    }

    fn commit(self) -> StoreResult<()> {
        let WriteTxn { db, mut g, base, mut trees, applied } = self;
        if !trees.changed && applied == base.applied {
            let pool = std::mem::take(&mut trees.pool);
            g.spare = trees.into_spare(pool);
            return Ok(());
        }
        let txid = base.txid + 1;
        let hwm0 = g.hwm;
        let mut out = std::mem::take(&mut trees.scratch.out);
        out.clear();
        let taken = std::mem::take(&mut g.taken_buf);
        let mut alloc = TxAlloc { g: &mut g, taken };
        let roots = match trees.finish(&mut alloc, txid, &mut out) {
            Ok(r) => {
                let mut taken = std::mem::take(&mut alloc.taken);
                for &(p, n) in &taken {
                    for i in p..p + n {
                        g.fresh.insert(i);
                    }
                }
                taken.clear();
                g.taken_buf = taken;
                r
            }
            Err(e) => {
                // Nothing was written: hand the pages back.
                let taken = std::mem::take(&mut alloc.taken);
                for (p, n) in taken {
                    g.free.extend((p..p + n).filter(|&i| i < hwm0));
                }
                g.hwm = hwm0;
                return Err(e);
            }
        };
        if let Err(e) = db.write_pages(&mut g, &mut out) {
            g.poisoned = Some(e.to_string());
            return Err(e);
        }
        let mut pool = std::mem::take(&mut trees.pool);
        let room = POOL_PAGES.saturating_sub(pool.len());
        pool.extend(out.drain(..).map(|(_, b)| b).filter(|b| b.capacity() == PAGE_SIZE).take(room));
        trees.scratch.out = out;
        let g = &mut *g;
        let (mut fresh, mut old) = (g.pending_list(), g.pending_list());
        for &p in &trees.freed {
            if g.fresh.remove(p) {
                fresh.push(p);
            } else {
                old.push(p);
            }
        }
        add_pending(&mut g.pending, txid, old, &mut g.page_lists);
        add_pending(&mut g.pending_fresh, txid, fresh, &mut g.page_lists);
        g.spare = trees.into_spare(pool);
        let v = Arc::new(Version { txid, applied, roots, map: g.map.clone() });
        g.versions.push_back((txid, Arc::downgrade(&v)));
        *db.current.lock().unwrap_or_else(|e| e.into_inner()) = v;
        Ok(())
    }
}

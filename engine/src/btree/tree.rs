//! B-tree algorithms over verified pages and in-memory dirty nodes. No I/O:
//! a commit hands back encoded pages for the caller to write.
//!
//! A write transaction copies every node it changes (and the path to it)
//! into memory ([`Node`]), leaving the pages of the base version untouched.
//! A leaf starts as a private copy of its page ([`LeafBuf`]) that takes
//! inline puts and deletes in place; it becomes an entry list ([`Leaf`]) when
//! it needs an overflow run, a split or a merge. A branch starts as a page
//! copy too ([`BranchBuf`]): a dirty child's pointer holds its node index
//! (the copy lists which children are dirty), separators are inserted and
//! removed as cells, and it becomes an entry list ([`Branch`]) only when a
//! cell does not fit.
//! Dirty nodes split while the transaction runs once they reach two pages;
//! at commit, underfull dirty nodes merge with a sibling (`rebalance`), then
//! every dirty node is encoded into one or more fresh pages bottom-up
//! (`spill`). Separator rule: branch key `k[i]` sits between children `i` and
//! `i + 1`; every key in child `i + 1` is `>= k[i]`, every key in child `i` is
//! `< k[i]`.

use std::ops::Bound;
use std::sync::Arc;

use super::pager::Mapped;
use super::page::{
    branch_entry_len, corrupt, encode_branch_into, encode_leaf_into, encode_overflow, key_inline, leaf_entry_len,
    ovf_pages, value_inline, BranchBuf, EncRef, LeafBuf, NodePage, Ref, NODE_CAP, PAGE_SIZE,
};
use crate::kv::{StoreError, StoreResult, Tree};

/// Deepest tree walked before a cycle in the page graph is assumed.
pub(crate) const MAX_DEPTH: usize = 48;
/// A dirty node this large splits while the transaction runs, keeping the
/// work per put proportional to a page, not to the transaction.
const SPLIT_AT: usize = 2 * NODE_CAP;
/// At commit a dirty node smaller than this merges with a sibling.
const MIN_FILL: usize = NODE_CAP / 4;
/// At commit a dirty node under half a page or over a page also merges with
/// a sibling when the two then fit in fewer pages, each with this much room
/// to spare (so a merged page does not split again at the next few inserts).
const MERGE_SLACK: usize = NODE_CAP / 8;

fn internal(what: &str) -> StoreError {
    StoreError::Corrupt(format!("internal B-tree invariant broken: {what}"))
}

/// Where a key or value of a dirty entry lives.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Val {
    /// Bytes this transaction wrote: `arena[off..off + len]`.
    Arena { off: usize, len: u32 },
    /// An overflow run of the base version, owned by the cell holding this.
    Ovf { page: u64, len: u32 },
}

impl Val {
    #[inline]
    pub(crate) fn len(&self) -> usize {
        match *self {
            Val::Arena { len, .. } | Val::Ovf { len, .. } => len as usize,
        }
    }
}

/// Child `i` of a branch copy.
#[inline]
fn buf_child(b: &BranchBuf, i: usize) -> StoreResult<Child> {
    let raw = b.child(i)?;
    Ok(if b.is_dirty(i) { Child::Node(raw as usize) } else { Child::Page(raw) })
}

/// Sizes are page bytes as [`leaf_entry_len`] / [`branch_entry_len`] count them.
pub(crate) struct Leaf {
    entries: Vec<(Val, Val)>,
    size: usize,
}

pub(crate) struct Branch {
    keys: Vec<Val>,
    children: Vec<Child>,
    /// 8 (first child) + the entries.
    size: usize,
}

pub(crate) enum Node {
    /// A leaf as a patched copy of its page.
    Page(LeafBuf),
    Leaf(Leaf),
    /// A branch as a patched copy of its page.
    BPage(BranchBuf),
    Branch(Branch),
    /// Merged away or already written.
    Dead,
}

impl Node {
    fn size(&self) -> usize {
        match self {
            Node::Page(l) => l.size(),
            Node::Leaf(l) => l.size,
            Node::BPage(b) => b.size(),
            Node::Branch(b) => b.size,
            Node::Dead => 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Child {
    Page(u64),
    Node(usize),
}

/// `(branch node, child index)` from the root down to a leaf.
type PathStack = Vec<(usize, usize)>;

/// Hands out page runs for a commit.
pub(crate) trait Alloc {
    /// `n` contiguous fresh pages; returns the first.
    fn alloc(&mut self, n: u64) -> u64;
}

/// Everything a read needs: the map plus this transaction's dirty state.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub map: &'a Mapped,
    pub nodes: &'a [Node],
    pub arena: &'a [u8],
}

enum View<'a> {
    P(NodePage<'a>),
    /// A [`BranchBuf`]: reads like a page, but some children are dirty nodes.
    B(NodePage<'a>, &'a BranchBuf),
    M(&'a Node),
}

/// The view of a dirty node (a [`LeafBuf`] or [`BranchBuf`] reads like a page).
#[inline]
fn mview(n: &Node) -> View<'_> {
    match n {
        Node::Page(l) => View::P(l.view()),
        Node::BPage(b) => View::B(b.view(), b),
        other => View::M(other),
    }
}

/// Child index for `key` given the binary-search result over branch keys.
#[inline]
fn child_pos(r: Result<usize, usize>) -> usize {
    match r {
        Ok(i) => i + 1,
        Err(i) => i,
    }
}

impl<'a> Ctx<'a> {
    #[inline]
    pub(crate) fn val(&self, v: Val) -> StoreResult<&'a [u8]> {
        match v {
            Val::Arena { off, len } => self.arena.get(off..off + len as usize).ok_or_else(|| internal("arena range")),
            Val::Ovf { page, len } => self.map.overflow(page, len),
        }
    }

    #[inline]
    fn view(&self, c: Child) -> StoreResult<View<'a>> {
        match c {
            Child::Page(p) => Ok(View::P(self.map.node(p)?)),
            Child::Node(n) => self.nodes.get(n).map(mview).ok_or_else(|| internal("node index")),
        }
    }

    #[inline]
    fn is_leaf(v: &View<'a>) -> bool {
        match v {
            View::P(p) => p.leaf,
            View::B(..) => false,
            View::M(n) => matches!(n, Node::Leaf(_) | Node::Page(_)),
        }
    }

    /// Number of keys.
    #[inline]
    fn count(v: &View<'a>) -> usize {
        match v {
            View::P(p) | View::B(p, _) => p.count,
            View::M(Node::Leaf(l)) => l.entries.len(),
            View::M(Node::Branch(b)) => b.keys.len(),
            View::M(Node::Page(l)) => l.count(),
            View::M(Node::BPage(b)) => b.count(),
            View::M(Node::Dead) => 0,
        }
    }

    #[inline]
    fn key(&self, v: &View<'a>, i: usize) -> StoreResult<&'a [u8]> {
        match v {
            View::P(p) | View::B(p, _) => self.map.resolve(p, p.key(i)?),
            View::M(Node::Leaf(l)) => self.val(l.entries.get(i).ok_or_else(|| internal("leaf index"))?.0),
            View::M(Node::Branch(b)) => self.val(*b.keys.get(i).ok_or_else(|| internal("key index"))?),
            View::M(Node::Page(_)) | View::M(Node::BPage(_)) | View::M(Node::Dead) => {
                Err(internal("read of a dead node"))
            }
        }
    }

    #[inline]
    fn entry(&self, v: &View<'a>, i: usize) -> StoreResult<(&'a [u8], &'a [u8])> {
        match v {
            View::P(p) => {
                let (k, val) = p.leaf_entry(i)?;
                Ok((self.map.resolve(p, k)?, self.map.resolve(p, val)?))
            }
            View::M(Node::Leaf(l)) => {
                let (k, val) = *l.entries.get(i).ok_or_else(|| internal("leaf index"))?;
                Ok((self.val(k)?, self.val(val)?))
            }
            _ => Err(internal("entry of a non-leaf")),
        }
    }

    #[inline]
    fn child(&self, v: &View<'a>, i: usize) -> StoreResult<Child> {
        match v {
            View::P(p) => Ok(Child::Page(p.child(i)?)),
            View::B(_, b) => buf_child(b, i),
            View::M(Node::Branch(b)) => b.children.get(i).copied().ok_or_else(|| internal("child index")),
            _ => Err(internal("child of a non-branch")),
        }
    }

    /// Binary search of `key` among the keys of `v`.
    fn search(&self, v: &View<'a>, key: &[u8]) -> StoreResult<Result<usize, usize>> {
        let (mut lo, mut hi) = (0, Self::count(v));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let k = match v {
                View::P(p) | View::B(p, _) => match p.inline_key(mid) {
                    Some(k) => k,
                    None => self.key(v, mid)?,
                },
                View::M(_) => self.key(v, mid)?,
            };
            match k.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Ok(mid)),
            }
        }
        Ok(Err(lo))
    }

    /// The value under `key` in the tree rooted at `root`.
    pub(crate) fn get(&self, root: Option<Child>, key: &[u8]) -> StoreResult<Option<&'a [u8]>> {
        let Some(mut c) = root else { return Ok(None) };
        for _ in 0..MAX_DEPTH {
            let v = self.view(c)?;
            if Self::is_leaf(&v) {
                return match self.search(&v, key)? {
                    Ok(i) => Ok(Some(self.entry(&v, i)?.1)),
                    Err(_) => Ok(None),
                };
            }
            c = self.child(&v, child_pos(self.search(&v, key)?))?;
        }
        Err(too_deep(c))
    }

    /// Visits entries between `start` and `end` in order (reversed if `reverse`).
    pub(crate) fn scan(
        &self,
        root: Option<Child>,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        if let Some(c) = root {
            self.scan_rec(c, start, end, reverse, visit, 0)?;
        }
        Ok(())
    }

    /// Returns `false` once `visit` asked to stop.
    fn scan_rec(
        &self,
        c: Child,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        depth: usize,
    ) -> StoreResult<bool> {
        if depth >= MAX_DEPTH {
            return Err(too_deep(c));
        }
        let v = self.view(c)?;
        let n = Self::count(&v);
        if Self::is_leaf(&v) {
            // Half-open index range lo..hi of matching entries.
            let lo = match start {
                Bound::Unbounded => 0,
                Bound::Included(s) => self.search(&v, s)?.unwrap_or_else(|i| i),
                Bound::Excluded(s) => child_pos(self.search(&v, s)?),
            };
            let hi = match end {
                Bound::Unbounded => n,
                Bound::Included(e) => child_pos(self.search(&v, e)?),
                Bound::Excluded(e) => self.search(&v, e)?.unwrap_or_else(|i| i),
            };
            if lo >= hi {
                return Ok(true);
            }
            let mut go = |i| -> StoreResult<bool> {
                let (k, val) = self.entry(&v, i)?;
                Ok(visit(k, val))
            };
            if reverse {
                for i in (lo..hi).rev() {
                    if !go(i)? {
                        return Ok(false);
                    }
                }
            } else {
                for i in lo..hi {
                    if !go(i)? {
                        return Ok(false);
                    }
                }
            }
            return Ok(true);
        }
        // Inclusive child index range lo..=hi that may hold matches.
        let lo = match start {
            Bound::Unbounded => 0,
            Bound::Included(s) | Bound::Excluded(s) => child_pos(self.search(&v, s)?),
        };
        let hi = match end {
            Bound::Unbounded => n,
            Bound::Included(e) | Bound::Excluded(e) => child_pos(self.search(&v, e)?),
        };
        if lo > hi {
            return Ok(true);
        }
        if reverse {
            for i in (lo..=hi).rev() {
                if !self.scan_rec(self.child(&v, i)?, start, end, reverse, visit, depth + 1)? {
                    return Ok(false);
                }
            }
        } else {
            for i in lo..=hi {
                if !self.scan_rec(self.child(&v, i)?, start, end, reverse, visit, depth + 1)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

fn too_deep(c: Child) -> StoreError {
    match c {
        Child::Page(p) => corrupt(p, format_args!("tree deeper than {MAX_DEPTH} levels (a cycle?)")),
        Child::Node(_) => internal("dirty tree too deep"),
    }
}

fn push_arena(arena: &mut Vec<u8>, b: &[u8]) -> Val {
    let off = arena.len();
    arena.extend_from_slice(b);
    Val::Arena { off, len: b.len() as u32 }
}

/// Start indices of parts no bigger than `cap`, each about `total / parts`.
/// `first` is the fixed cost of each part (a branch's first child).
fn split_points(sizes: &[usize], first: usize, cap: usize) -> Vec<usize> {
    let total: usize = first + sizes.iter().sum::<usize>();
    let parts = total.div_ceil(cap).max(1);
    let target = total.div_ceil(parts);
    let mut starts = vec![0];
    let mut acc = first;
    for (i, &s) in sizes.iter().enumerate() {
        if acc > first && (acc + s > cap || acc >= target) {
            starts.push(i);
            acc = first;
        }
        acc += s;
    }
    starts
}

/// A cell part to encode: inline bytes, the existing run, or a new run.
fn enc_part<'b>(
    v: Val,
    bytes: &'b [u8],
    inline: bool,
    a: &mut dyn Alloc,
    txid: u64,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> EncRef<'b> {
    if inline {
        return EncRef::Inline(bytes);
    }
    match v {
        Val::Ovf { page, len } => EncRef::Ovf { page, len },
        _ => {
            let first = a.alloc(ovf_pages(bytes.len()));
            out.push((first, encode_overflow(first, txid, bytes)));
            EncRef::Ovf { page: first, len: bytes.len() as u32 }
        }
    }
}

/// The dirty state of one write transaction over every tree.
pub(crate) struct TxnTrees {
    pub map: Arc<Mapped>,
    pub roots: [Option<Child>; Tree::COUNT],
    nodes: Vec<Node>,
    arena: Vec<u8>,
    /// Pages this transaction unlinked (copied nodes, dropped overflow runs).
    pub freed: Vec<u64>,
    pub changed: bool,
    /// Page-sized buffers to reuse (the writer hands back what it wrote).
    pub pool: Vec<Vec<u8>>,
    /// [`TxnTrees::descend`]'s path, kept between puts.
    path_buf: PathStack,
    /// The value [`TxnTrees::update`] builds, kept likewise.
    val_buf: Vec<u8>,
    /// Work vectors of commit, kept between transactions.
    pub scratch: Scratch,
}

/// Vectors a commit fills and empties again; kept from transaction to
/// transaction (in [`Spare`]) so that a small commit allocates nothing
/// for them.
#[derive(Default)]
pub(crate) struct Scratch {
    /// The encoded pages of a commit (`WriteTxn::commit` takes it, hands it
    /// to [`TxnTrees::finish`], writes the pages and puts it back empty).
    pub out: Vec<(u64, Vec<u8>)>,
    /// [`TxnTrees::freed`], emptied.
    freed: Vec<u64>,
    /// [`TxnTrees::finish`]'s pages and separators of one root.
    pages: Vec<u64>,
    seps: Vec<Val>,
    /// One set per level of [`TxnTrees::spill_branch_page`] in progress.
    spill: Vec<SpillBufs>,
    /// Dirty-child lists for [`BranchBuf`] copies.
    dirty: Vec<Vec<u16>>,
}

/// [`TxnTrees::spill_branch_page`]'s work vectors.
#[derive(Default)]
struct SpillBufs {
    split: Vec<(usize, usize, usize)>,
    more: Vec<u64>,
    more_seps: Vec<Val>,
}

/// Most dirty-child lists kept between transactions.
const SPARE_DIRTY_LISTS: usize = 64;

/// Buffers one write transaction hands to the next (see
/// [`TxnTrees::into_spare`]), so a commit of a few hundred puts does not
/// grow its arena and node list from nothing every time.
#[derive(Default)]
pub(crate) struct Spare {
    /// Page-sized buffers.
    pub pool: Vec<Vec<u8>>,
    arena: Vec<u8>,
    nodes: Vec<Node>,
    path: PathStack,
    val: Vec<u8>,
    pub scratch: Scratch,
}

/// Largest arena (bytes) and node list (entries) kept between transactions.
const SPARE_ARENA: usize = 4 << 20;
const SPARE_NODES: usize = 1 << 14;

/// A page buffer from `pool`, or a new one; its contents are unspecified.
fn take_buf(pool: &mut Vec<Vec<u8>>) -> Vec<u8> {
    pool.pop().unwrap_or_else(|| Vec::with_capacity(PAGE_SIZE))
}

impl TxnTrees {
    pub(crate) fn new(map: Arc<Mapped>, roots: &[u64; Tree::COUNT], spare: Spare) -> TxnTrees {
        let roots = roots.map(|r| (r != 0).then_some(Child::Page(r)));
        let Spare { pool, mut arena, mut nodes, path, val, mut scratch } = spare;
        arena.clear();
        nodes.clear();
        let mut freed = std::mem::take(&mut scratch.freed);
        freed.clear();
        TxnTrees {
            map,
            roots,
            nodes,
            arena,
            freed,
            changed: false,
            pool,
            path_buf: path,
            val_buf: val,
            scratch,
        }
    }

    /// The buffers worth keeping for the next transaction: `pool` (the page
    /// buffers) and this one's arena, node list and path, unless they grew
    /// large (a big transaction does not pin its memory for good).
    pub(crate) fn into_spare(mut self, pool: Vec<Vec<u8>>) -> Spare {
        let keep = |cap: usize, limit: usize| cap <= limit;
        let mut scratch = std::mem::take(&mut self.scratch);
        if keep(self.freed.capacity(), SPARE_NODES) {
            self.freed.clear();
            scratch.freed = std::mem::take(&mut self.freed);
        }
        if !keep(scratch.out.capacity(), SPARE_NODES) {
            scratch.out = Vec::new();
        }
        scratch.out.clear();
        scratch.dirty.truncate(SPARE_DIRTY_LISTS);
        Spare {
            pool,
            arena: if keep(self.arena.capacity(), SPARE_ARENA) { std::mem::take(&mut self.arena) } else { Vec::new() },
            nodes: if keep(self.nodes.capacity(), SPARE_NODES) { std::mem::take(&mut self.nodes) } else { Vec::new() },
            path: std::mem::take(&mut self.path_buf),
            val: if keep(self.val_buf.capacity(), SPARE_ARENA) { std::mem::take(&mut self.val_buf) } else { Vec::new() },
            scratch,
        }
    }

    pub(crate) fn ctx(&self) -> Ctx<'_> {
        Ctx { map: &self.map, nodes: &self.nodes, arena: &self.arena }
    }

    fn push_node(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// Copies page `pid` into a dirty node and frees the page.
    fn load(&mut self, pid: u64) -> StoreResult<usize> {
        let page = self.map.node(pid)?;
        let node = if page.leaf {
            Node::Page(LeafBuf::from_page(&page, take_buf(&mut self.pool))?)
        } else {
            let dirty = self.scratch.dirty.pop().unwrap_or_default();
            Node::BPage(BranchBuf::from_page(&page, take_buf(&mut self.pool), dirty)?)
        };
        self.freed.push(pid);
        Ok(self.push_node(node))
    }

    /// Number of children of dirty branch `n` (0 for anything else).
    fn kid_count(&self, n: usize) -> usize {
        match &self.nodes[n] {
            Node::Branch(b) => b.children.len(),
            Node::BPage(b) => b.count() + 1,
            _ => 0,
        }
    }

    /// Child `i` of dirty branch `n`.
    fn kid(&self, n: usize, i: usize) -> StoreResult<Child> {
        match &self.nodes[n] {
            Node::Branch(b) => b.children.get(i).copied().ok_or_else(|| internal("child index")),
            Node::BPage(b) if i <= b.count() => buf_child(b, i),
            _ => Err(internal("child of a non-branch")),
        }
    }

    fn set_kid(&mut self, n: usize, i: usize, c: Child) -> StoreResult<()> {
        match &mut self.nodes[n] {
            Node::Branch(b) => {
                *b.children.get_mut(i).ok_or_else(|| internal("child index"))? = c;
                Ok(())
            }
            Node::BPage(b) if i <= b.count() => match c {
                Child::Page(p) => b.set_child(i, p, false),
                Child::Node(x) => b.set_child(i, x as u64, true),
            },
            _ => Err(internal("child of a non-branch")),
        }
    }

    /// Makes child `i` of dirty branch `n` dirty; returns its node index.
    fn ensure_child(&mut self, n: usize, i: usize) -> StoreResult<usize> {
        match self.kid(n, i)? {
            Child::Node(x) => Ok(x),
            Child::Page(p) => {
                let x = self.load(p)?;
                self.set_kid(n, i, Child::Node(x))?;
                Ok(x)
            }
        }
    }

    /// Makes the path to `key` dirty; returns the leaf, with the `(branch,
    /// child index)` path above it in `path` (cleared first), or `None` for
    /// an empty tree.
    fn descend(&mut self, t: usize, key: &[u8], path: &mut PathStack) -> StoreResult<Option<usize>> {
        path.clear();
        let root = match self.roots[t] {
            None => return Ok(None),
            Some(Child::Node(n)) => n,
            Some(Child::Page(p)) => {
                let n = self.load(p)?;
                self.roots[t] = Some(Child::Node(n));
                n
            }
        };
        let mut cur = root;
        for _ in 0..MAX_DEPTH {
            let ci = {
                let ctx = self.ctx();
                let v = mview(&self.nodes[cur]);
                if Ctx::is_leaf(&v) {
                    return Ok(Some(cur));
                }
                child_pos(ctx.search(&v, key)?)
            };
            let next = self.ensure_child(cur, ci)?;
            path.push((cur, ci));
            cur = next;
        }
        Err(internal("dirty path too deep"))
    }

    fn free_val(&mut self, v: Val) {
        if let Val::Ovf { page, len } = v {
            // Saturating: `page` may come from a damaged cell.
            self.freed.extend(page..page.saturating_add(ovf_pages(len as usize)));
        }
    }

    /// A separator equal to key `v` that no other cell owns.
    fn sep_copy(&mut self, v: Val) -> StoreResult<Val> {
        match v {
            Val::Ovf { page, len } => {
                let bytes = self.map.overflow(page, len)?;
                Ok(push_arena(&mut self.arena, bytes))
            }
            other => Ok(other),
        }
    }

    /// Turns a page-copy node into an entry list (inline bytes move to the arena).
    fn make_entry_list(&mut self, n: usize) -> StoreResult<()> {
        if let Node::BPage(bb) = &self.nodes[n] {
            let page = bb.view();
            let mut keys = Vec::with_capacity(page.count + 4);
            let mut children = Vec::with_capacity(page.count + 5);
            children.push(buf_child(bb, 0)?);
            for i in 0..page.count {
                keys.push(match page.key(i)? {
                    Ref::Inline { off, len } => push_arena(&mut self.arena, page.inline(off, len)?),
                    Ref::Ovf { page, len } => Val::Ovf { page, len },
                });
                children.push(buf_child(bb, i + 1)?);
            }
            let size = bb.size();
            if let Node::BPage(bb) = std::mem::replace(&mut self.nodes[n], Node::Branch(Branch { keys, children, size })) {
                self.pool.push(bb.into_buf());
            }
            return Ok(());
        }
        let Node::Page(lb) = &self.nodes[n] else { return Ok(()) };
        let page = lb.view();
        let mut entries = Vec::with_capacity(page.count + 8);
        let mut size = 0;
        for i in 0..page.count {
            let (k, v) = page.leaf_entry(i)?;
            size += leaf_entry_len(k.len(), v.len());
            let mut own = |r: Ref| -> StoreResult<Val> {
                Ok(match r {
                    Ref::Inline { off, len } => push_arena(&mut self.arena, page.inline(off, len)?),
                    Ref::Ovf { page, len } => Val::Ovf { page, len },
                })
            };
            entries.push((own(k)?, own(v)?));
        }
        if let Node::Page(lb) = std::mem::replace(&mut self.nodes[n], Node::Leaf(Leaf { entries, size })) {
            // The entries own copies of their bytes: the page buffer is free.
            self.pool.push(lb.into_buf());
        }
        Ok(())
    }

    fn free_ref(&mut self, r: Ref) {
        if let Ref::Ovf { page, len } = r {
            self.free_val(Val::Ovf { page, len });
        }
    }

    pub(crate) fn put(&mut self, t: usize, key: &[u8], value: &[u8]) -> StoreResult<()> {
        // The path buffer is kept from put to put (no allocation per put).
        let mut path = std::mem::take(&mut self.path_buf);
        let res = self.put_at(t, key, value, &mut path);
        self.path_buf = path;
        res
    }

    fn put_at(&mut self, t: usize, key: &[u8], value: &[u8], path: &mut PathStack) -> StoreResult<()> {
        self.changed = true;
        let Some(leaf) = self.descend(t, key, path)? else {
            return self.put_root(t, key, value);
        };
        let pos = self.ctx().search(&mview(&self.nodes[leaf]), key)?;
        self.put_found(t, leaf, pos, key, value, path)
    }

    /// The first entry of an empty tree.
    fn put_root(&mut self, t: usize, key: &[u8], value: &[u8]) -> StoreResult<()> {
        let kv = push_arena(&mut self.arena, key);
        let vv = push_arena(&mut self.arena, value);
        let size = leaf_entry_len(key.len(), value.len());
        let n = self.push_node(Node::Leaf(Leaf { entries: vec![(kv, vv)], size }));
        self.roots[t] = Some(Child::Node(n));
        Ok(())
    }

    /// Puts `key` into dirty `leaf` (reached by `path`), where a search
    /// found it at / would insert it at `pos`.
    fn put_found(
        &mut self,
        t: usize,
        leaf: usize,
        mut pos: Result<usize, usize>,
        key: &[u8],
        value: &[u8],
        path: &mut PathStack,
    ) -> StoreResult<()> {
        if let Node::Page(lb) = &mut self.nodes[leaf] {
            if key_inline(key.len()) && value_inline(key.len(), value.len()) {
                // A value of the same length overwrites the old one in place.
                if let Ok(i) = pos {
                    if lb.replace_same_len(i, value)? {
                        return Ok(());
                    }
                }
                // In place: drop the old entry (its key is inline too: same
                // length), then insert the new one if it fits.
                let old = match pos {
                    Ok(i) => {
                        pos = Err(i);
                        Some(lb.remove(i)?.1)
                    }
                    Err(_) => None,
                };
                let Err(i) = pos else { return Err(internal("position")) };
                let fits = lb.insert(i, key, value)?;
                if let Some(r) = old {
                    self.free_ref(r);
                }
                if fits {
                    return Ok(());
                }
            }
            self.make_entry_list(leaf)?;
        }
        let vv = push_arena(&mut self.arena, value);
        let Node::Leaf(l) = &mut self.nodes[leaf] else { return Err(internal("descend ended off a leaf")) };
        match pos {
            Ok(i) => {
                let (k, old) = l.entries[i];
                l.size = l.size - leaf_entry_len(k.len(), old.len()) + leaf_entry_len(k.len(), value.len());
                l.entries[i].1 = vv;
                self.free_val(old);
            }
            Err(i) => {
                let kv = push_arena(&mut self.arena, key);
                l.entries.insert(i, (kv, vv));
                l.size += leaf_entry_len(key.len(), value.len());
            }
        }
        self.split_up(t, leaf, path)
    }

    /// Puts under `key` the value `f` writes into its (empty) buffer given
    /// the current value (`None` when absent), with one descent where a get
    /// and a put take two. `f` returning `false` leaves the value as it is
    /// (the path to it may have been copied); returns what `f` returned.
    pub(crate) fn update(
        &mut self,
        t: usize,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>, &mut Vec<u8>) -> bool,
    ) -> StoreResult<bool> {
        let mut path = std::mem::take(&mut self.path_buf);
        let mut val = std::mem::take(&mut self.val_buf);
        val.clear();
        let res = self.update_at(t, key, f, &mut path, &mut val);
        self.path_buf = path;
        self.val_buf = val;
        res
    }

    fn update_at(
        &mut self,
        t: usize,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>, &mut Vec<u8>) -> bool,
        path: &mut PathStack,
        val: &mut Vec<u8>,
    ) -> StoreResult<bool> {
        let Some(leaf) = self.descend(t, key, path)? else {
            if !f(None, val) {
                return Ok(false);
            }
            self.changed = true;
            self.put_root(t, key, val)?;
            return Ok(true);
        };
        let pos = {
            let ctx = self.ctx();
            let v = mview(&self.nodes[leaf]);
            let pos = ctx.search(&v, key)?;
            let old = match pos {
                Ok(i) => Some(ctx.entry(&v, i)?.1),
                Err(_) => None,
            };
            if !f(old, val) {
                return Ok(false);
            }
            pos
        };
        self.changed = true;
        self.put_found(t, leaf, pos, key, val, path)?;
        Ok(true)
    }

    pub(crate) fn delete(&mut self, t: usize, key: &[u8]) -> StoreResult<bool> {
        // Look first, so deleting an absent key copies nothing.
        if self.ctx().get(self.roots[t], key)?.is_none() {
            return Ok(false);
        }
        let mut path = std::mem::take(&mut self.path_buf);
        let found = self.descend(t, key, &mut path);
        self.path_buf = path;
        let Some(leaf) = found? else { return Ok(false) };
        let pos = self.ctx().search(&mview(&self.nodes[leaf]), key)?;
        let Ok(i) = pos else { return Ok(false) };
        match &mut self.nodes[leaf] {
            Node::Page(lb) => {
                let (k, v) = lb.remove(i)?;
                self.free_ref(k);
                self.free_ref(v);
            }
            Node::Leaf(l) => {
                let (k, v) = l.entries.remove(i);
                l.size -= leaf_entry_len(k.len(), v.len());
                self.free_val(k);
                self.free_val(v);
            }
            _ => return Err(internal("descend ended off a leaf")),
        }
        self.changed = true;
        Ok(true)
    }

    /// Splits overgrown nodes from `cur` up the path.
    fn split_up(&mut self, t: usize, mut cur: usize, path: &mut PathStack) -> StoreResult<()> {
        while self.nodes[cur].size() > SPLIT_AT {
            let (sep, right) = self.split_node(cur)?;
            let right = self.push_node(right);
            match path.pop() {
                Some((parent, ci)) => {
                    if let Node::BPage(bb) = &mut self.nodes[parent] {
                        let kb = Ctx { map: &self.map, nodes: &[], arena: &self.arena }.val(sep)?;
                        if bb.insert(ci, kb, right as u64, true)? {
                            return Ok(());
                        }
                        self.make_entry_list(parent)?;
                    }
                    let Node::Branch(b) = &mut self.nodes[parent] else { return Err(internal("parent not a branch")) };
                    b.keys.insert(ci, sep);
                    b.children.insert(ci + 1, Child::Node(right));
                    b.size += branch_entry_len(sep.len());
                    cur = parent;
                }
                None => {
                    let size = 8 + branch_entry_len(sep.len());
                    let children = vec![Child::Node(cur), Child::Node(right)];
                    let r = self.push_node(Node::Branch(Branch { keys: vec![sep], children, size }));
                    self.roots[t] = Some(Child::Node(r));
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Splits dirty node `cur` in two by size; `cur` keeps the left half.
    fn split_node(&mut self, cur: usize) -> StoreResult<(Val, Node)> {
        match &mut self.nodes[cur] {
            Node::Leaf(l) => {
                let n = l.entries.len();
                let (mut acc, mut m) = (0, n / 2);
                for (i, (k, v)) in l.entries.iter().enumerate() {
                    let len = leaf_entry_len(k.len(), v.len());
                    if acc >= l.size / 2 || acc + len > NODE_CAP {
                        m = i;
                        break;
                    }
                    acc += len;
                }
                let m = m.clamp(1, n.saturating_sub(1).max(1));
                let right = l.entries.split_off(m);
                let rsize: usize = right.iter().map(|(k, v)| leaf_entry_len(k.len(), v.len())).sum();
                l.size -= rsize;
                let first = right.first().ok_or_else(|| internal("split of a tiny leaf"))?.0;
                let sep = self.sep_copy(first)?;
                Ok((sep, Node::Leaf(Leaf { entries: right, size: rsize })))
            }
            Node::Branch(b) => {
                let n = b.keys.len();
                let (mut acc, mut m) = (8, n / 2);
                for (i, k) in b.keys.iter().enumerate() {
                    if acc >= b.size / 2 {
                        m = i;
                        break;
                    }
                    acc += branch_entry_len(k.len());
                }
                let m = m.min(n.saturating_sub(1));
                let rkeys = b.keys.split_off(m + 1);
                let sep = b.keys.pop().ok_or_else(|| internal("split of a tiny branch"))?;
                let rchildren = b.children.split_off(m + 1);
                let rsize = 8 + rkeys.iter().map(|k| branch_entry_len(k.len())).sum::<usize>();
                b.size -= rsize - 8 + branch_entry_len(sep.len());
                Ok((sep, Node::Branch(Branch { keys: rkeys, children: rchildren, size: rsize })))
            }
            Node::Page(_) | Node::BPage(_) | Node::Dead => Err(internal("split of a page copy or dead node")),
        }
    }

    /// Rebalances, then encodes every dirty node as pages appended to `out`;
    /// returns the new root page of every tree (0 for empty).
    pub(crate) fn finish(
        &mut self,
        a: &mut dyn Alloc,
        txid: u64,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> StoreResult<[u64; Tree::COUNT]> {
        let mut roots = [0u64; Tree::COUNT];
        for (t, root_out) in roots.iter_mut().enumerate() {
            if let Some(Child::Node(r)) = self.roots[t] {
                self.rebalance(r)?;
            }
            // Collapse single-child roots and an empty root leaf.
            while let Some(Child::Node(r)) = self.roots[t] {
                match &self.nodes[r] {
                    Node::Branch(b) if b.children.len() == 1 => self.roots[t] = Some(b.children[0]),
                    Node::BPage(b) if b.count() == 0 => self.roots[t] = Some(buf_child(b, 0)?),
                    Node::Leaf(l) if l.entries.is_empty() => self.roots[t] = None,
                    Node::Page(l) if l.count() == 0 => self.roots[t] = None,
                    _ => break,
                }
            }
            let mut c = self.roots[t];
            loop {
                match c {
                    None => break,
                    Some(Child::Page(p)) => {
                        *root_out = p;
                        break;
                    }
                    Some(node) => {
                        let (mut pages, mut seps) =
                            (std::mem::take(&mut self.scratch.pages), std::mem::take(&mut self.scratch.seps));
                        pages.clear();
                        seps.clear();
                        self.spill(node, a, txid, out, &mut pages, &mut seps)?;
                        if let [only] = pages[..] {
                            *root_out = only;
                            self.scratch.pages = pages;
                            self.scratch.seps = seps;
                            break;
                        }
                        // The root split: a new root above the parts.
                        let size = 8 + seps.iter().map(|s| branch_entry_len(s.len())).sum::<usize>();
                        let children = pages.iter().copied().map(Child::Page).collect();
                        self.scratch.pages = pages;
                        c = Some(Child::Node(self.push_node(Node::Branch(Branch { keys: seps, children, size }))));
                    }
                }
            }
        }
        Ok(roots)
    }

    fn rebalance(&mut self, n: usize) -> StoreResult<()> {
        // Rebalancing a child changes only that child's subtree, never the
        // children of `n`, so they are walked by index (no list of them).
        let mut j = 0;
        loop {
            let k = match &self.nodes[n] {
                Node::BPage(b) => match b.dirty().get(j) {
                    Some(&i) => b.child(usize::from(i))? as usize,
                    None => break,
                },
                _ => {
                    if j >= self.kid_count(n) {
                        break;
                    }
                    match self.kid(n, j)? {
                        Child::Node(k) => k,
                        Child::Page(_) => {
                            j += 1;
                            continue;
                        }
                    }
                }
            };
            self.rebalance(k)?;
            j += 1;
        }
        self.merge_children(n)
    }

    /// Merges underfull dirty children of branch `n` into a neighbour.
    fn merge_children(&mut self, n: usize) -> StoreResult<()> {
        let mut i = 0;
        loop {
            let len = self.kid_count(n);
            if let Node::BPage(b) = &self.nodes[n] {
                // Only dirty children can merge: skip to the next one.
                match b.dirty().iter().find(|&&d| usize::from(d) >= i) {
                    Some(&d) => i = usize::from(d),
                    None => return Ok(()),
                }
            }
            if len < 2 || i >= len {
                return Ok(());
            }
            let child = self.kid(n, i)?;
            let size = match child {
                Child::Node(c) => self.nodes[c].size(),
                Child::Page(_) => {
                    i += 1;
                    continue;
                }
            };
            let l = if size < MIN_FILL {
                if i + 1 < len {
                    i
                } else {
                    i - 1
                }
            } else if size < NODE_CAP / 2 || size > NODE_CAP {
                // Underfilled, or about to split: merge with a neighbour when
                // the two then take fewer pages (spill splits evenly). For
                // random inserts this spreads a split over two pages' worth
                // (as a B*-tree does) instead of leaving two half pages.
                let pages = |x: usize| x.div_ceil(NODE_CAP).max(1);
                let mut with = None;
                for j in [i + 1, i.wrapping_sub(1)] {
                    if j >= len {
                        continue;
                    }
                    let other = self.child_size(n, j)?;
                    let merged = size + other + self.merged_extra(n, i.min(j))?;
                    if merged.div_ceil(NODE_CAP - MERGE_SLACK) < pages(size) + pages(other) {
                        with = Some(i.min(j));
                        break;
                    }
                }
                match with {
                    Some(l) => l,
                    None => {
                        i += 1;
                        continue;
                    }
                }
            } else {
                i += 1;
                continue;
            };
            let ln = self.ensure_child(n, l)?;
            let rn = self.ensure_child(n, l + 1)?;
            self.make_entry_list(ln)?;
            self.make_entry_list(rn)?;
            let sep = match &mut self.nodes[n] {
                Node::Branch(b) => {
                    b.children.remove(l + 1);
                    let sep = b.keys.remove(l);
                    b.size -= branch_entry_len(sep.len());
                    sep
                }
                Node::BPage(bb) => {
                    // Key `l` and child `l + 1` share cell `l`.
                    let page = bb.view();
                    let sep = match page.key(l)? {
                        Ref::Inline { off, len } => push_arena(&mut self.arena, page.inline(off, len)?),
                        Ref::Ovf { page, len } => Val::Ovf { page, len },
                    };
                    bb.remove(l)?;
                    sep
                }
                _ => return Err(internal("merge parent")),
            };
            let right = std::mem::replace(&mut self.nodes[rn], Node::Dead);
            let drop_sep = match (&mut self.nodes[ln], right) {
                (Node::Leaf(a), Node::Leaf(b)) => {
                    a.size += b.size;
                    a.entries.extend(b.entries);
                    true
                }
                (Node::Branch(a), Node::Branch(b)) => {
                    a.size += branch_entry_len(sep.len()) + b.size - 8;
                    a.keys.push(sep);
                    a.keys.extend(b.keys);
                    a.children.extend(b.children);
                    false
                }
                _ => return Err(StoreError::Corrupt("sibling nodes at different depths".into())),
            };
            if drop_sep {
                self.free_val(sep);
            } else {
                self.merge_children(ln)?;
            }
            i = l;
        }
    }

    /// Bytes merging children `l` and `l + 1` of branch `n` adds beyond
    /// their sizes: nothing for leaves; for branches the separator moving
    /// down (an upper bound: the right node's first child, already in its
    /// size, moves into that entry).
    fn merged_extra(&self, n: usize, l: usize) -> StoreResult<usize> {
        let sep_len = match &self.nodes[n] {
            Node::Branch(b) => b.keys.get(l).ok_or_else(|| internal("merge separator"))?.len(),
            Node::BPage(b) => b.view().key(l)?.len(),
            _ => return Err(internal("merge parent")),
        };
        let leaf = match self.kid(n, l)? {
            Child::Node(c) => !matches!(self.nodes[c], Node::Branch(_) | Node::BPage(_)),
            Child::Page(p) => self.map.node(p)?.leaf,
        };
        Ok(if leaf { 0 } else { branch_entry_len(sep_len) })
    }

    /// Size (page bytes, as [`Node::size`] counts them) of child `i` of
    /// branch `n`, read from its page when it is not dirty.
    fn child_size(&self, n: usize, i: usize) -> StoreResult<usize> {
        match self.kid(n, i)? {
            Child::Node(c) => Ok(self.nodes[c].size()),
            Child::Page(p) => {
                // From the slot array and the lowest cell, as a page copy
                // is sized ([`LeafBuf::size`], [`BranchBuf::size`]), not by
                // decoding every cell: exact for the packed pages this
                // build writes, an upper bound (merging less eagerly) for
                // a page an older build left holes in.
                let page = self.map.node(p)?;
                let first = if page.leaf { 0 } else { 8 };
                Ok(first + (PAGE_SIZE - page.cells_start()?) + 2 * page.count)
            }
        }
    }

    /// Encodes dirty node `c` (children first) into pages; appends the pages
    /// to `pages` and the separators between them to `seps` (one fewer).
    fn spill(
        &mut self,
        c: Child,
        a: &mut dyn Alloc,
        txid: u64,
        out: &mut Vec<(u64, Vec<u8>)>,
        pages: &mut Vec<u64>,
        seps: &mut Vec<Val>,
    ) -> StoreResult<()> {
        let n = match c {
            Child::Page(p) => {
                pages.push(p);
                return Ok(());
            }
            Child::Node(n) => n,
        };
        match std::mem::replace(&mut self.nodes[n], Node::Dead) {
            Node::Dead => Err(internal("spill of a dead node")),
            Node::Page(lb) => {
                let id = a.alloc(1);
                out.push((id, lb.into_page(id, txid)?));
                pages.push(id);
                Ok(())
            }
            Node::Leaf(l) => {
                let sizes: Vec<usize> = l.entries.iter().map(|(k, v)| leaf_entry_len(k.len(), v.len())).collect();
                let mut starts = split_points(&sizes, 0, NODE_CAP);
                starts.push(l.entries.len());
                {
                    let ctx = Ctx { map: &self.map, nodes: &[], arena: &self.arena };
                    let mut enc = Vec::new();
                    for w in starts.windows(2) {
                        enc.clear();
                        for &(k, v) in &l.entries[w[0]..w[1]] {
                            let (kb, vb) = (ctx.val(k)?, ctx.val(v)?);
                            let ke = enc_part(k, kb, key_inline(kb.len()), a, txid, out);
                            let ve = enc_part(v, vb, value_inline(kb.len(), vb.len()), a, txid, out);
                            enc.push((ke, ve));
                        }
                        let id = a.alloc(1);
                        out.push((id, encode_leaf_into(take_buf(&mut self.pool), id, txid, &enc)));
                        pages.push(id);
                    }
                }
                for &s in &starts[1..starts.len() - 1] {
                    seps.push(self.sep_copy(l.entries[s].0)?);
                }
                Ok(())
            }
            Node::BPage(bb) => self.spill_branch_page(bb, a, txid, out, pages, seps),
            Node::Branch(b) => {
                let mut keys = Vec::with_capacity(b.keys.len() + 4);
                let mut kids = Vec::with_capacity(b.children.len() + 4);
                for (i, ch) in b.children.iter().enumerate() {
                    if i > 0 {
                        keys.push(b.keys[i - 1]);
                    }
                    self.spill(*ch, a, txid, out, &mut kids, &mut keys)?;
                }
                self.encode_branch_parts(&keys, &kids, a, txid, out, pages, seps)
            }
        }
    }

    /// Spills the dirty children of a page-copy branch and patches their
    /// new page ids into it; a child that spilled into several pages adds
    /// its separators as cells. Written as one page when they fit, else
    /// split through the entry-list encoder.
    fn spill_branch_page(
        &mut self,
        bb: BranchBuf,
        a: &mut dyn Alloc,
        txid: u64,
        out: &mut Vec<(u64, Vec<u8>)>,
        pages: &mut Vec<u64>,
        seps: &mut Vec<Val>,
    ) -> StoreResult<()> {
        // Children that spilled into more than one page: (child index, index
        // of its second page in `more`, of its first separator in `more_seps`).
        // The vectors are reused (one set per level of spill in progress).
        let mut bufs = self.scratch.spill.pop().unwrap_or_default();
        let res = self.spill_branch_page_with(bb, a, txid, out, pages, seps, &mut bufs);
        bufs.split.clear();
        bufs.more.clear();
        bufs.more_seps.clear();
        self.scratch.spill.push(bufs);
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn spill_branch_page_with(
        &mut self,
        mut bb: BranchBuf,
        a: &mut dyn Alloc,
        txid: u64,
        out: &mut Vec<(u64, Vec<u8>)>,
        pages: &mut Vec<u64>,
        seps: &mut Vec<Val>,
        bufs: &mut SpillBufs,
    ) -> StoreResult<()> {
        let SpillBufs { split, more, more_seps } = bufs;
        let mut need = 0;
        let mut inline = true;
        // Patching a child to its page id takes it off the dirty list, so
        // the first dirty child is always the next one to spill.
        while let Some(&d) = bb.dirty().first() {
            let i = usize::from(d);
            let node = bb.child(i)? as usize;
            let (p0, s0) = (more.len(), more_seps.len());
            self.spill(Child::Node(node), a, txid, out, more, more_seps)?;
            if more.len() <= p0 {
                return Err(internal("a child spilled into no page"));
            }
            bb.set_child(i, more.remove(p0), false)?;
            if more.len() > p0 {
                split.push((i, p0, s0));
                for s in &more_seps[s0..] {
                    need += branch_entry_len(s.len());
                    inline &= key_inline(s.len());
                }
            }
        }
        if split.is_empty() || (inline && need <= bb.room()) {
            let ctx = Ctx { map: &self.map, nodes: &[], arena: &self.arena };
            // Back to front, so the child indices still to come stay valid.
            for (w, &(i, p, s)) in split.iter().enumerate().rev() {
                let (pe, se) = split.get(w + 1).map_or((more.len(), more_seps.len()), |&(_, p, s)| (p, s));
                debug_assert_eq!(pe - p, se - s);
                for j in (0..pe - p).rev() {
                    if !bb.insert(i, ctx.val(more_seps[s + j])?, more[p + j], false)? {
                        return Err(internal("separator did not fit a sized branch copy"));
                    }
                }
            }
            let id = a.alloc(1);
            let dirty = bb.take_dirty_list();
            if self.scratch.dirty.len() < SPARE_DIRTY_LISTS {
                self.scratch.dirty.push(dirty);
            }
            out.push((id, bb.into_page(id, txid)?));
            pages.push(id);
            return Ok(());
        }
        // Too many new separators for one page: encode the entry list.
        let page = bb.view();
        let (mut keys, mut kids) = (Vec::with_capacity(page.count + more_seps.len()), Vec::with_capacity(page.count + 1 + more.len()));
        let mut next = split.iter().peekable();
        for i in 0..=page.count {
            if i > 0 {
                keys.push(match page.key(i - 1)? {
                    Ref::Inline { off, len } => push_arena(&mut self.arena, page.inline(off, len)?),
                    Ref::Ovf { page, len } => Val::Ovf { page, len },
                });
            }
            kids.push(bb.child(i)?);
            if let Some(&&(ci, p, s)) = next.peek() {
                if ci == i {
                    next.next();
                    let pe = next.peek().map_or(more.len(), |&&(_, p, _)| p);
                    for j in 0..pe - p {
                        keys.push(more_seps[s + j]);
                        kids.push(more[p + j]);
                    }
                }
            }
        }
        self.pool.push(bb.into_buf());
        self.encode_branch_parts(&keys, &kids, a, txid, out, pages, seps)
    }

    /// Encodes a branch of `kids` (page ids) and `keys` (one fewer) into as
    /// many pages as it needs; appends them to `pages` and the separators
    /// between them to `seps`.
    #[allow(clippy::too_many_arguments)]
    fn encode_branch_parts(
        &mut self,
        keys: &[Val],
        kids: &[u64],
        a: &mut dyn Alloc,
        txid: u64,
        out: &mut Vec<(u64, Vec<u8>)>,
        pages: &mut Vec<u64>,
        seps: &mut Vec<Val>,
    ) -> StoreResult<()> {
        let sizes: Vec<usize> = keys.iter().map(|k| branch_entry_len(k.len())).collect();
        // A split before entry i (key i, child i + 1) moves key i up
        // and starts the next part at child i + 1.
        let mut starts: Vec<usize> =
            split_points(&sizes, 8, NODE_CAP).into_iter().map(|i| if i == 0 { 0 } else { i + 1 }).collect();
        starts.push(kids.len());
        let ctx = Ctx { map: &self.map, nodes: &[], arena: &self.arena };
        let mut enc = Vec::new();
        for w in starts.windows(2) {
            let (s, e) = (w[0], w[1]); // children s..e, keys s..e-1
            if s > 0 {
                seps.push(keys[s - 1]);
            }
            enc.clear();
            for &k in &keys[s..e - 1] {
                let kb = ctx.val(k)?;
                enc.push(enc_part(k, kb, key_inline(kb.len()), a, txid, out));
            }
            let id = a.alloc(1);
            out.push((id, encode_branch_into(take_buf(&mut self.pool), id, txid, &enc, &kids[s..e])));
            pages.push(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_points_respect_cap() {
        let sizes = vec![100; 100];
        let s = split_points(&sizes, 0, NODE_CAP);
        assert_eq!(s.len(), 3);
        let s = split_points(&[10, 10], 0, NODE_CAP);
        assert_eq!(s, vec![0]);
        let s = split_points(&[1000; 9], 8, NODE_CAP);
        assert!(s.len() >= 3);
    }

    #[test]
    fn page_constants_agree() {
        assert_eq!(super::super::page::PAGE_SIZE as u64, super::super::page::PS);
    }
}

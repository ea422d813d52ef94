//! On-disk page formats: node pages (branch, leaf), overflow runs, freelist
//! pages and meta pages. Pure encoding and decoding, no I/O. Byte tables:
//! `docs/btree.md` ("On-disk format").
//!
//! Every decoder bounds-checks what it reads and returns
//! [`StoreError::Corrupt`] naming the page: nothing here panics on arbitrary
//! bytes. All integers on disk are little-endian and fixed-width.

use std::fmt::Display;

use crate::kv::{StoreError, StoreResult, Tree};

/// Bytes per page. 4 KiB matches the page cache and the usual atomic-write
/// unit of SSDs; the meta page records it so a mismatch is refused.
pub const PAGE_SIZE: usize = 4096;
pub(crate) const PS: u64 = PAGE_SIZE as u64;

/// Common header of node, overflow and freelist pages:
/// `crc u32 | kind u8 | reserved u8 | count u16 | page id u64 | txid u64`.
pub(crate) const HEADER_LEN: usize = 24;

pub(crate) const KIND_BRANCH: u8 = 1;
pub(crate) const KIND_LEAF: u8 = 2;
pub(crate) const KIND_OVERFLOW: u8 = 3;
pub(crate) const KIND_FREELIST: u8 = 4;

/// Keys longer than this live in an overflow run, so a branch cell is at most
/// 1 + 514 + 8 bytes and a branch page always holds at least 7 of them.
pub(crate) const MAX_INLINE_KEY: usize = 512;
/// A leaf cell stays at most this long (longer values move to an overflow
/// run), so a leaf page always holds at least 4 cells and a split of an
/// overfull node always yields parts that fit.
pub(crate) const MAX_LEAF_CELL: usize = 1000;

/// Largest key accepted (etcd's default request limit is 1.5 MiB).
pub const MAX_KEY_LEN: usize = 16 << 20;
/// Largest value accepted; it is stored as one contiguous overflow run.
pub const MAX_VALUE_LEN: usize = 512 << 20;

/// Room for slots and cells in a node page (a branch also spends 8 of it on
/// its first child).
pub(crate) const NODE_CAP: usize = PAGE_SIZE - HEADER_LEN;

/// Overflow run: header, then `npages u32 | len u32`, then the data.
pub(crate) const OVF_DATA_OFF: usize = 32;
/// Freelist page: header, then `next u64`, then `(start u64, len u64)` runs.
pub(crate) const FREELIST_RUNS_OFF: usize = 32;
pub(crate) const FREELIST_RUNS_PER_PAGE: usize = (PAGE_SIZE - FREELIST_RUNS_OFF) / 16;

const FLAG_KEY_OVF: u8 = 1;
const FLAG_VAL_OVF: u8 = 2;

pub(crate) fn corrupt(page: u64, what: impl Display) -> StoreError {
    StoreError::Corrupt(format!("page {page}: {what}"))
}

#[inline]
pub(crate) fn rd_u16(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off.checked_add(2)?)?.try_into().ok()?))
}
#[inline]
pub(crate) fn rd_u32(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off.checked_add(4)?)?.try_into().ok()?))
}
#[inline]
pub(crate) fn rd_u64(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

// ---- sizes (the encoder and the tree code must agree on these) ----

#[inline]
pub(crate) fn key_inline(klen: usize) -> bool {
    klen <= MAX_INLINE_KEY
}
#[inline]
fn key_part(klen: usize) -> usize {
    if key_inline(klen) {
        2 + klen
    } else {
        12
    }
}
#[inline]
pub(crate) fn value_inline(klen: usize, vlen: usize) -> bool {
    1 + key_part(klen) + 2 + vlen <= MAX_LEAF_CELL
}
/// Bytes a leaf entry takes in a page, slot included.
#[inline]
pub(crate) fn leaf_entry_len(klen: usize, vlen: usize) -> usize {
    let v = if value_inline(klen, vlen) { 2 + vlen } else { 12 };
    2 + 1 + key_part(klen) + v
}
/// Bytes a branch key with its right child takes in a page, slot included.
#[inline]
pub(crate) fn branch_entry_len(klen: usize) -> usize {
    2 + 1 + key_part(klen) + 8
}
/// Pages in the overflow run holding `len` bytes.
#[inline]
pub(crate) fn ovf_pages(len: usize) -> u64 {
    (OVF_DATA_OFF + len).div_ceil(PAGE_SIZE) as u64
}

// ---- checksums ----

/// Stores the crc of `buf[4..]` in `buf[0..4]`.
pub(crate) fn seal(buf: &mut [u8]) {
    let crc = crc32fast::hash(&buf[4..]);
    buf[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Checks the crc of a page (or overflow run) read from the file.
pub(crate) fn verify_crc(id: u64, buf: &[u8]) -> StoreResult<()> {
    let stored = rd_u32(buf, 0).ok_or_else(|| corrupt(id, "short page"))?;
    let body = buf.get(4..).ok_or_else(|| corrupt(id, "short page"))?;
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(corrupt(
            id,
            format_args!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x}): torn or damaged page"),
        ));
    }
    Ok(())
}

fn header(buf: &mut [u8], kind: u8, count: u16, id: u64, txid: u64) {
    buf[4] = kind;
    buf[5] = 0;
    buf[6..8].copy_from_slice(&count.to_le_bytes());
    buf[8..16].copy_from_slice(&id.to_le_bytes());
    buf[16..24].copy_from_slice(&txid.to_le_bytes());
}

/// Checks kind and self-id of a page whose crc has been verified; returns the count.
pub(crate) fn check_header(id: u64, buf: &[u8], kind: u8) -> StoreResult<u16> {
    let k = *buf.get(4).ok_or_else(|| corrupt(id, "short page"))?;
    if k != kind {
        return Err(corrupt(id, format_args!("expected page kind {kind}, found {k}")));
    }
    let stored = rd_u64(buf, 8).ok_or_else(|| corrupt(id, "short page"))?;
    if stored != id {
        return Err(corrupt(id, format_args!("page header names page {stored} (misdirected write?)")));
    }
    rd_u16(buf, 6).ok_or_else(|| corrupt(id, "short page"))
}

// ---- node pages ----

/// Where a key or value of a cell lives.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ref {
    /// `len` bytes at `off` within the node page.
    Inline { off: usize, len: usize },
    /// In the overflow run starting at `page`.
    Ovf { page: u64, len: u32 },
}

impl Ref {
    pub(crate) fn len(&self) -> usize {
        match *self {
            Ref::Inline { len, .. } => len,
            Ref::Ovf { len, .. } => len as usize,
        }
    }
}

/// A key or value to encode.
#[derive(Clone, Copy)]
pub(crate) enum EncRef<'b> {
    Inline(&'b [u8]),
    Ovf { page: u64, len: u32 },
}

/// A decoded view of a verified branch or leaf page.
///
/// Layout: header; a branch then has `child0 u64`; then `count` u16 slots
/// (cell offsets within the page, in key order); free space; then the cells
/// (packed at the end of the page when written, so a copy of the page can
/// take an insert in place):
/// `flags u8 | key | value` (leaf) or `flags u8 | key | child u64` (branch),
/// where key/value is `len u16 | bytes` inline or `len u32 | first page u64`
/// when the flag bit says overflow.
#[derive(Clone, Copy)]
pub(crate) struct NodePage<'a> {
    pub id: u64,
    pub data: &'a [u8],
    pub leaf: bool,
    pub count: usize,
}

impl<'a> NodePage<'a> {
    /// A view of a dirty leaf buffer (see [`LeafBuf`]).
    pub(crate) fn dirty(data: &'a [u8], count: usize) -> Self {
        NodePage { id: rd_u64(data, 8).unwrap_or(0), data, leaf: true, count }
    }

    /// Parses the header of a page whose checksum the caller verified.
    pub(crate) fn parse(id: u64, data: &'a [u8]) -> StoreResult<Self> {
        if data.len() != PAGE_SIZE {
            return Err(corrupt(id, "short page"));
        }
        let kind = *data.get(4).ok_or_else(|| corrupt(id, "short page"))?;
        let leaf = match kind {
            KIND_LEAF => true,
            KIND_BRANCH => false,
            k => return Err(corrupt(id, format_args!("not a tree node (kind {k})"))),
        };
        let stored = rd_u64(data, 8).ok_or_else(|| corrupt(id, "short page"))?;
        if stored != id {
            return Err(corrupt(id, format_args!("page header names page {stored} (misdirected write?)")));
        }
        let count = rd_u16(data, 6).ok_or_else(|| corrupt(id, "short page"))? as usize;
        let page = NodePage { id, data, leaf, count };
        if page.slots_off() + 2 * count > PAGE_SIZE {
            return Err(corrupt(id, format_args!("{count} cells do not fit in a page")));
        }
        Ok(page)
    }

    #[inline]
    fn slots_off(&self) -> usize {
        if self.leaf {
            HEADER_LEN
        } else {
            HEADER_LEN + 8
        }
    }

    #[inline]
    pub(crate) fn cell(&self, i: usize) -> StoreResult<usize> {
        if i >= self.count {
            return Err(corrupt(self.id, format_args!("cell {i} out of range")));
        }
        let off = rd_u16(self.data, self.slots_off() + 2 * i)
            .ok_or_else(|| corrupt(self.id, "slot out of bounds"))? as usize;
        if off < self.slots_off() + 2 * self.count {
            return Err(corrupt(self.id, format_args!("cell {i} overlaps the slot array")));
        }
        if off >= PAGE_SIZE {
            return Err(corrupt(self.id, format_args!("cell {i} starts past the end of the page")));
        }
        Ok(off)
    }

    /// Decodes a key or value part at `off`; returns it and the next offset.
    #[inline]
    fn part(&self, off: usize, ovf: bool) -> StoreResult<(Ref, usize)> {
        let bad = || corrupt(self.id, "cell runs past the end of the page");
        if ovf {
            let len = rd_u32(self.data, off).ok_or_else(bad)?;
            let page = rd_u64(self.data, off + 4).ok_or_else(bad)?;
            Ok((Ref::Ovf { page, len }, off + 12))
        } else {
            let len = rd_u16(self.data, off).ok_or_else(bad)? as usize;
            let start = off + 2;
            if start + len > PAGE_SIZE {
                return Err(bad());
            }
            Ok((Ref::Inline { off: start, len }, start + len))
        }
    }

    /// Key `i` (leaf or branch) and the offset just after it.
    #[inline]
    fn key_at(&self, i: usize) -> StoreResult<(Ref, u8, usize)> {
        let off = self.cell(i)?;
        let flags = *self.data.get(off).ok_or_else(|| corrupt(self.id, "cell out of bounds"))?;
        let (k, next) = self.part(off + 1, flags & FLAG_KEY_OVF != 0)?;
        if key_inline(k.len()) != matches!(k, Ref::Inline { .. }) {
            return Err(corrupt(self.id, format_args!("cell {i}: key of {} bytes stored the wrong way", k.len())));
        }
        Ok((k, flags, next))
    }

    /// Key `i` if it is stored inline and well-formed; `None` sends the
    /// caller to the checked path ([`Self::key`]), which reports what is wrong.
    #[inline(always)]
    pub(crate) fn inline_key(&self, i: usize) -> Option<&'a [u8]> {
        let slots = self.slots_off();
        if i >= self.count {
            return None;
        }
        let off = rd_u16(self.data, slots + 2 * i)? as usize;
        if off < slots + 2 * self.count || *self.data.get(off)? & FLAG_KEY_OVF != 0 {
            return None;
        }
        let len = rd_u16(self.data, off + 1)? as usize;
        if len > MAX_INLINE_KEY {
            return None;
        }
        self.data.get(off + 3..off + 3 + len)
    }

    #[inline]
    pub(crate) fn key(&self, i: usize) -> StoreResult<Ref> {
        Ok(self.key_at(i)?.0)
    }

    /// Key and value of leaf entry `i`.
    pub(crate) fn leaf_entry(&self, i: usize) -> StoreResult<(Ref, Ref)> {
        let (k, flags, next) = self.key_at(i)?;
        let (v, _) = self.part(next, flags & FLAG_VAL_OVF != 0)?;
        if value_inline(k.len(), v.len()) != matches!(v, Ref::Inline { .. }) {
            return Err(corrupt(self.id, format_args!("cell {i}: value of {} bytes stored the wrong way", v.len())));
        }
        Ok((k, v))
    }

    /// Offset of the lowest cell (`PAGE_SIZE` for no cells): a leaf's
    /// entries take `PAGE_SIZE - cells_start + 2 * count` bytes when its
    /// cells are packed, as every page this build writes has them.
    pub(crate) fn cells_start(&self) -> StoreResult<usize> {
        // One pass over the slot array (a min and a max the compiler
        // vectorises); only a page that fails the bounds goes through
        // `cell`, which names the bad slot. Every page copied into a write
        // transaction takes this path, so it is worth the fast loop.
        let slots = self.slots_off();
        let Some(raw) = self.data.get(slots..slots + 2 * self.count) else {
            return Err(corrupt(self.id, "slot out of bounds"));
        };
        // Sixteen lanes of min and max over 32-byte blocks, then the tail:
        // the fixed-width inner loop is what the compiler turns into SIMD
        // (a single running min/max over `chunks_exact(2)` stayed scalar,
        // and was 6 % of a single put's CPU).
        let (mut lo, mut hi) = ([u16::MAX; 16], [0u16; 16]);
        let blocks = raw.chunks_exact(32);
        let tail = blocks.remainder();
        for b in blocks {
            for j in 0..16 {
                let off = u16::from_le_bytes([b[2 * j], b[2 * j + 1]]);
                lo[j] = lo[j].min(off);
                hi[j] = hi[j].max(off);
            }
        }
        let (mut tlo, mut thi) = (u16::MAX, 0u16);
        for s in tail.chunks_exact(2) {
            let off = u16::from_le_bytes([s[0], s[1]]);
            tlo = tlo.min(off);
            thi = thi.max(off);
        }
        let lo = lo.into_iter().fold(tlo, u16::min);
        let hi = hi.into_iter().fold(thi, u16::max);
        if self.count == 0 {
            return Ok(PAGE_SIZE);
        }
        if (lo as usize) < slots + 2 * self.count || hi as usize >= PAGE_SIZE {
            for i in 0..self.count {
                self.cell(i)?;
            }
            return Err(corrupt(self.id, "cell offsets out of range"));
        }
        Ok(lo as usize)
    }

    /// Page bytes leaf entry `i` takes ([`leaf_entry_len`]). A cell with an
    /// inline key and value is sized from its two length fields; anything
    /// else goes through [`Self::leaf_entry`], which reports what is wrong.
    #[cfg(test)]
    pub(crate) fn leaf_entry_size(&self, i: usize) -> StoreResult<usize> {
        let fast = || -> Option<usize> {
            let slots = self.slots_off();
            if i >= self.count {
                return None;
            }
            let off = rd_u16(self.data, slots + 2 * i)? as usize;
            if off < slots + 2 * self.count || *self.data.get(off)? != 0 {
                return None;
            }
            let klen = rd_u16(self.data, off + 1)? as usize;
            let vlen = rd_u16(self.data, off + 3 + klen)? as usize;
            let ok = key_inline(klen) && value_inline(klen, vlen) && off + 5 + klen + vlen <= PAGE_SIZE;
            ok.then(|| leaf_entry_len(klen, vlen))
        };
        match fast() {
            Some(n) => Ok(n),
            None => {
                let (k, v) = self.leaf_entry(i)?;
                Ok(leaf_entry_len(k.len(), v.len()))
            }
        }
    }

    /// Child `i` of a branch, `0..=count`.
    pub(crate) fn child(&self, i: usize) -> StoreResult<u64> {
        let bad = || corrupt(self.id, "child pointer out of bounds");
        if i == 0 {
            return rd_u64(self.data, HEADER_LEN).ok_or_else(bad);
        }
        let (_, _, next) = self.key_at(i - 1)?;
        rd_u64(self.data, next).ok_or_else(bad)
    }

    /// The bytes of an inline part.
    #[inline]
    pub(crate) fn inline(&self, off: usize, len: usize) -> StoreResult<&'a [u8]> {
        self.data
            .get(off..off + len)
            .ok_or_else(|| corrupt(self.id, "cell out of bounds"))
    }
}

fn flag(r: &EncRef<'_>, bit: u8) -> u8 {
    if matches!(r, EncRef::Ovf { .. }) {
        bit
    } else {
        0
    }
}

fn part_len(r: &EncRef<'_>) -> usize {
    match r {
        EncRef::Inline(b) => 2 + b.len(),
        EncRef::Ovf { .. } => 12,
    }
}

/// A zeroed page with its header, and the offset where `cells_len` bytes of
/// cells start when packed at the end of the page.
/// `buf` is a recycled buffer (any contents) or empty.
fn layout(mut buf: Vec<u8>, kind: u8, id: u64, txid: u64, slots_at: usize, n: usize, cells_len: usize) -> (Vec<u8>, usize) {
    assert!(slots_at + 2 * n + cells_len <= PAGE_SIZE, "node encoding overflowed its page: a sizing bug");
    buf.clear();
    buf.resize(PAGE_SIZE, 0);
    header(&mut buf, kind, n as u16, id, txid);
    (buf, PAGE_SIZE - cells_len)
}

fn put_part_at(buf: &mut [u8], at: usize, r: EncRef<'_>) -> usize {
    match r {
        EncRef::Inline(b) => {
            buf[at..at + 2].copy_from_slice(&(b.len() as u16).to_le_bytes());
            buf[at + 2..at + 2 + b.len()].copy_from_slice(b);
            at + 2 + b.len()
        }
        EncRef::Ovf { page, len } => {
            buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
            buf[at + 4..at + 12].copy_from_slice(&page.to_le_bytes());
            at + 12
        }
    }
}

/// Encodes a leaf page. The caller sized `entries` to fit (see [`leaf_entry_len`]).
#[cfg(test)]
pub(crate) fn encode_leaf(id: u64, txid: u64, entries: &[(EncRef<'_>, EncRef<'_>)]) -> Vec<u8> {
    encode_leaf_into(Vec::new(), id, txid, entries)
}

/// [`encode_leaf`] into a recycled buffer.
pub(crate) fn encode_leaf_into(buf: Vec<u8>, id: u64, txid: u64, entries: &[(EncRef<'_>, EncRef<'_>)]) -> Vec<u8> {
    let cells: usize = entries.iter().map(|(k, v)| 1 + part_len(k) + part_len(v)).sum();
    let (mut buf, mut at) = layout(buf, KIND_LEAF, id, txid, HEADER_LEN, entries.len(), cells);
    for (i, (k, v)) in entries.iter().enumerate() {
        buf[HEADER_LEN + 2 * i..HEADER_LEN + 2 * i + 2].copy_from_slice(&(at as u16).to_le_bytes());
        buf[at] = flag(k, FLAG_KEY_OVF) | flag(v, FLAG_VAL_OVF);
        at = put_part_at(&mut buf, at + 1, *k);
        at = put_part_at(&mut buf, at, *v);
    }
    seal(&mut buf);
    buf
}

/// Encodes a branch page: `children.len() == keys.len() + 1`.
#[cfg(test)]
pub(crate) fn encode_branch(id: u64, txid: u64, keys: &[EncRef<'_>], children: &[u64]) -> Vec<u8> {
    encode_branch_into(Vec::new(), id, txid, keys, children)
}

/// [`encode_branch`] into a recycled buffer.
pub(crate) fn encode_branch_into(buf: Vec<u8>, id: u64, txid: u64, keys: &[EncRef<'_>], children: &[u64]) -> Vec<u8> {
    assert_eq!(children.len(), keys.len() + 1);
    let cells: usize = keys.iter().map(|k| 1 + part_len(k) + 8).sum();
    let (mut buf, mut at) = layout(buf, KIND_BRANCH, id, txid, HEADER_LEN + 8, keys.len(), cells);
    buf[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&children[0].to_le_bytes());
    for (i, (k, c)) in keys.iter().zip(&children[1..]).enumerate() {
        let s = HEADER_LEN + 8 + 2 * i;
        buf[s..s + 2].copy_from_slice(&(at as u16).to_le_bytes());
        buf[at] = flag(k, FLAG_KEY_OVF);
        at = put_part_at(&mut buf, at + 1, *k);
        buf[at..at + 8].copy_from_slice(&c.to_le_bytes());
        at += 8;
    }
    seal(&mut buf);
    buf
}

/// A leaf being changed in place: a private copy of its page. Inserts go
/// into the free gap between slots and cells; removed cells leave garbage
/// that [`LeafBuf::compact`] squeezes out. Only inline entries are inserted
/// here; anything else turns the leaf into an entry list (`tree::Leaf`).
pub(crate) struct LeafBuf {
    buf: Vec<u8>,
    count: usize,
    /// Lowest cell offset: the free gap is `slots_end()..cell_lo`.
    cell_lo: usize,
    /// Bytes of cells removed since the last compaction. A page is written
    /// compacted when this is non-zero, so the cells of a page this build
    /// wrote are packed and [`LeafBuf::size`] is exact; a page written by an
    /// older build may hold more garbage, and then it is an upper bound.
    garbage: usize,
}

impl LeafBuf {
    /// Copies a verified leaf page into `buf` (a recycled buffer or empty):
    /// the header and slots, and the cell area; the free gap between them
    /// keeps whatever `buf` held (it is zeroed when the page is written).
    /// Reads only the slots: cells are checked when they are read.
    pub(crate) fn from_page(page: &NodePage<'_>, mut buf: Vec<u8>) -> StoreResult<LeafBuf> {
        let cell_lo = page.cells_start()?;
        let slots_end = HEADER_LEN + 2 * page.count;
        if buf.len() != PAGE_SIZE {
            buf.clear();
            buf.resize(PAGE_SIZE, 0);
        }
        buf[..slots_end].copy_from_slice(&page.data[..slots_end]);
        buf[cell_lo..].copy_from_slice(&page.data[cell_lo..]);
        Ok(LeafBuf { buf, count: page.count, cell_lo, garbage: 0 })
    }

    pub(crate) fn view(&self) -> NodePage<'_> {
        NodePage::dirty(&self.buf, self.count)
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Bytes in use as a node size: slots plus live cells (see `garbage`).
    pub(crate) fn size(&self) -> usize {
        (PAGE_SIZE - self.cell_lo - self.garbage) + 2 * self.count
    }

    fn slots_end(&self) -> usize {
        HEADER_LEN + 2 * self.count
    }

    fn set_count(&mut self, n: usize) {
        self.count = n;
        self.buf[6..8].copy_from_slice(&(n as u16).to_le_bytes());
    }

    /// Removes entry `i`; returns its refs (to free overflow runs).
    pub(crate) fn remove(&mut self, i: usize) -> StoreResult<(Ref, Ref)> {
        let (k, v) = self.view().leaf_entry(i)?;
        let (s, end) = (HEADER_LEN + 2 * i, self.slots_end());
        self.buf.copy_within(s + 2..end, s);
        self.set_count(self.count - 1);
        self.garbage += leaf_entry_len(k.len(), v.len()) - 2;
        Ok((k, v))
    }

    /// Overwrites the value of entry `i` in place when it is inline and
    /// exactly `value.len()` bytes long (no garbage, nothing moves); `false`
    /// otherwise, changing nothing.
    pub(crate) fn replace_same_len(&mut self, i: usize, value: &[u8]) -> StoreResult<bool> {
        let view = self.view();
        let id = view.id;
        match view.leaf_entry(i)?.1 {
            Ref::Inline { off, len } if len == value.len() => {
                let dst = self.buf.get_mut(off..off + len).ok_or_else(|| corrupt(id, "cell out of bounds"))?;
                dst.copy_from_slice(value);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Inserts an inline entry as entry `i`; `false` if it does not fit.
    pub(crate) fn insert(&mut self, i: usize, key: &[u8], value: &[u8]) -> StoreResult<bool> {
        debug_assert!(key_inline(key.len()) && value_inline(key.len(), value.len()));
        let need = leaf_entry_len(key.len(), value.len());
        if self.cell_lo < self.slots_end() + need {
            // Compact only when the removed cells make room: a full page
            // with no garbage (the common case, a page filling up) would
            // be repacked for nothing. Garbage this copy does not know of
            // (a page from an older build) is left: the caller then turns
            // the node into an entry list, which is written packed.
            if self.cell_lo + self.garbage < self.slots_end() + need {
                return Ok(false);
            }
            self.compact()?;
            if self.cell_lo < self.slots_end() + need {
                return Ok(false);
            }
        }
        let at = self.cell_lo - (need - 2);
        self.buf[at] = 0;
        let end = put_part_at(&mut self.buf, at + 1, EncRef::Inline(key));
        put_part_at(&mut self.buf, end, EncRef::Inline(value));
        self.cell_lo = at;
        let s = HEADER_LEN + 2 * i;
        let old_end = self.slots_end();
        self.buf.copy_within(s..old_end, s + 2);
        self.buf[s..s + 2].copy_from_slice(&(at as u16).to_le_bytes());
        self.set_count(self.count + 1);
        Ok(true)
    }

    /// Repacks the live cells at the end of the page.
    fn compact(&mut self) -> StoreResult<()> {
        let view = self.view();
        let (out, at) = packed(&self.buf, view.id, HEADER_LEN, self.count, |i| {
            let (k, v) = view.leaf_entry(i)?;
            Ok((view.cell(i)?, leaf_entry_len(k.len(), v.len()) - 2))
        })?;
        self.buf = out;
        self.cell_lo = at;
        self.garbage = 0;
        Ok(())
    }

    /// The buffer, for reuse.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// The finished page: compacted if cells were removed, header for page
    /// `id`, gap zeroed, sealed.
    pub(crate) fn into_page(mut self, id: u64, txid: u64) -> StoreResult<Vec<u8>> {
        if self.garbage > 0 {
            self.compact()?;
        }
        let count = self.count as u16;
        let (lo, hi) = (self.slots_end(), self.cell_lo);
        self.buf[lo..hi].fill(0);
        header(&mut self.buf, KIND_LEAF, count, id, txid);
        seal(&mut self.buf);
        Ok(self.buf)
    }
}

/// A branch being changed in place: a private copy of its page, like
/// [`LeafBuf`]. While the transaction runs a child pointer may hold a
/// dirty-node index instead of a page id: `dirty` lists those children
/// (so a pointer read from the page is never mistaken for one), and every
/// one is patched to a page id before the page is written. Cells inserted
/// here have inline keys; removed cells leave garbage until
/// [`BranchBuf::compact`].
pub(crate) struct BranchBuf {
    buf: Vec<u8>,
    count: usize,
    /// Lowest cell offset: the free gap is `slots_end()..cell_lo`.
    cell_lo: usize,
    /// Bytes of cells removed since the last compaction (see [`LeafBuf`]).
    garbage: usize,
    /// Ascending indices of the children that name a dirty node.
    dirty: Vec<u16>,
}

/// Start of a branch page's slot array (after the header and child 0).
const BRANCH_SLOTS: usize = HEADER_LEN + 8;

impl BranchBuf {
    /// Copies a verified branch page into `buf` (a recycled buffer or
    /// empty): header, child 0, slots and cell area. Reads only the slots:
    /// cells are checked when they are read. `dirty` is a recycled list
    /// (emptied here) for the dirty children.
    pub(crate) fn from_page(page: &NodePage<'_>, mut buf: Vec<u8>, mut dirty: Vec<u16>) -> StoreResult<BranchBuf> {
        if page.leaf {
            return Err(corrupt(page.id, "expected a branch page"));
        }
        let slots_end = BRANCH_SLOTS + 2 * page.count;
        let cell_lo = page.cells_start()?;
        if buf.len() != PAGE_SIZE {
            buf.clear();
            buf.resize(PAGE_SIZE, 0);
        }
        buf[..slots_end].copy_from_slice(&page.data[..slots_end]);
        buf[cell_lo..].copy_from_slice(&page.data[cell_lo..]);
        dirty.clear();
        Ok(BranchBuf { buf, count: page.count, cell_lo, garbage: 0, dirty })
    }

    pub(crate) fn view(&self) -> NodePage<'_> {
        NodePage { id: rd_u64(&self.buf, 8).unwrap_or(0), data: &self.buf, leaf: false, count: self.count }
    }

    /// Number of keys (one fewer than children).
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Bytes in use as a node size: child 0, slots and live cells.
    pub(crate) fn size(&self) -> usize {
        8 + (PAGE_SIZE - self.cell_lo - self.garbage) + 2 * self.count
    }

    /// Room an insert may use once the garbage is compacted away.
    pub(crate) fn room(&self) -> usize {
        NODE_CAP - self.size()
    }

    fn slots_end(&self) -> usize {
        BRANCH_SLOTS + 2 * self.count
    }

    fn set_count(&mut self, n: usize) {
        self.count = n;
        self.buf[6..8].copy_from_slice(&(n as u16).to_le_bytes());
    }

    /// Offset of child pointer `i` (`0..=count`).
    #[inline]
    fn child_off(&self, i: usize) -> StoreResult<usize> {
        if i == 0 {
            return Ok(HEADER_LEN);
        }
        let view = self.view();
        let next = view.key_at(i - 1)?.2;
        if next + 8 > PAGE_SIZE {
            return Err(corrupt(view.id, "child pointer out of bounds"));
        }
        Ok(next)
    }

    /// Child pointer `i`: a page id, or a dirty-node index if [`Self::is_dirty`].
    #[inline]
    pub(crate) fn child(&self, i: usize) -> StoreResult<u64> {
        let at = self.child_off(i)?;
        rd_u64(&self.buf, at).ok_or_else(|| corrupt(self.view().id, "child pointer out of bounds"))
    }

    /// Whether child `i` names a dirty node.
    #[inline]
    pub(crate) fn is_dirty(&self, i: usize) -> bool {
        self.dirty.binary_search(&(i as u16)).is_ok()
    }

    /// Ascending indices of the children that name a dirty node.
    pub(crate) fn dirty(&self) -> &[u16] {
        &self.dirty
    }

    /// Sets child `i` to page `c`, or to dirty node `c` if `dirty`.
    #[inline]
    pub(crate) fn set_child(&mut self, i: usize, c: u64, dirty: bool) -> StoreResult<()> {
        let at = self.child_off(i)?;
        self.buf[at..at + 8].copy_from_slice(&c.to_le_bytes());
        match (self.dirty.binary_search(&(i as u16)), dirty) {
            (Err(p), true) => self.dirty.insert(p, i as u16),
            (Ok(p), false) => {
                self.dirty.remove(p);
            }
            _ => {}
        }
        Ok(())
    }

    /// Inserts key `i` (inline) with child `i + 1` (page `child`, or dirty
    /// node `child` if `dirty`); `false` if it does not fit.
    pub(crate) fn insert(&mut self, i: usize, key: &[u8], child: u64, dirty: bool) -> StoreResult<bool> {
        if !key_inline(key.len()) || i > self.count {
            return Ok(false);
        }
        let need = branch_entry_len(key.len());
        if self.cell_lo < self.slots_end() + need {
            // As in `LeafBuf::insert`: only when compacting makes room.
            if self.cell_lo + self.garbage < self.slots_end() + need {
                return Ok(false);
            }
            self.compact()?;
            if self.cell_lo < self.slots_end() + need {
                return Ok(false);
            }
        }
        let at = self.cell_lo - (need - 2);
        self.buf[at] = 0;
        let end = put_part_at(&mut self.buf, at + 1, EncRef::Inline(key));
        self.buf[end..end + 8].copy_from_slice(&child.to_le_bytes());
        self.cell_lo = at;
        let s = BRANCH_SLOTS + 2 * i;
        let old_end = self.slots_end();
        self.buf.copy_within(s..old_end, s + 2);
        self.buf[s..s + 2].copy_from_slice(&(at as u16).to_le_bytes());
        self.set_count(self.count + 1);
        // Children after the new one move up by one.
        for d in self.dirty.iter_mut().filter(|d| usize::from(**d) > i) {
            *d += 1;
        }
        if dirty {
            let p = self.dirty.partition_point(|&d| usize::from(d) <= i);
            self.dirty.insert(p, (i + 1) as u16);
        }
        Ok(true)
    }

    /// Removes key `i` and child `i + 1`; returns the key (inline bytes
    /// stay readable until the next insert or compaction).
    pub(crate) fn remove(&mut self, i: usize) -> StoreResult<Ref> {
        let k = self.view().key(i)?;
        self.dirty.retain(|&d| usize::from(d) != i + 1);
        for d in self.dirty.iter_mut().filter(|d| usize::from(**d) > i + 1) {
            *d -= 1;
        }
        let (s, end) = (BRANCH_SLOTS + 2 * i, self.slots_end());
        self.buf.copy_within(s + 2..end, s);
        self.set_count(self.count - 1);
        self.garbage += branch_entry_len(k.len()) - 2;
        Ok(k)
    }

    /// Repacks the live cells at the end of the page.
    fn compact(&mut self) -> StoreResult<()> {
        let view = self.view();
        let (out, at) = packed(&self.buf, view.id, BRANCH_SLOTS, self.count, |i| {
            Ok((view.cell(i)?, branch_entry_len(view.key(i)?.len()) - 2))
        })?;
        self.buf = out;
        self.cell_lo = at;
        self.garbage = 0;
        Ok(())
    }

    /// The dirty-child list, for reuse (this copy keeps an empty one).
    pub(crate) fn take_dirty_list(&mut self) -> Vec<u16> {
        let mut d = std::mem::take(&mut self.dirty);
        if !d.is_empty() {
            // Still naming dirty children: keep it, so `into_page` refuses.
            std::mem::swap(&mut d, &mut self.dirty);
            return Vec::new();
        }
        d
    }

    /// The buffer, for reuse.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// The finished page (every child pointer a page id by now): compacted
    /// if cells were removed, header for page `id`, gap zeroed, sealed.
    pub(crate) fn into_page(mut self, id: u64, txid: u64) -> StoreResult<Vec<u8>> {
        if !self.dirty.is_empty() {
            return Err(StoreError::Corrupt("internal B-tree invariant broken: a branch copy still names a dirty child".into()));
        }
        if self.garbage > 0 {
            self.compact()?;
        }
        let count = self.count as u16;
        let (lo, hi) = (self.slots_end(), self.cell_lo);
        self.buf[lo..hi].fill(0);
        header(&mut self.buf, KIND_BRANCH, count, id, txid);
        seal(&mut self.buf);
        Ok(self.buf)
    }
}

// ---- overflow runs ----

/// Encodes `data` as an overflow run starting at page `first`; the crc covers
/// the whole run.
pub(crate) fn encode_overflow(first: u64, txid: u64, data: &[u8]) -> Vec<u8> {
    let npages = ovf_pages(data.len());
    let mut buf = vec![0u8; npages as usize * PAGE_SIZE];
    header(&mut buf, KIND_OVERFLOW, 0, first, txid);
    buf[24..28].copy_from_slice(&(npages as u32).to_le_bytes());
    buf[28..32].copy_from_slice(&(data.len() as u32).to_le_bytes());
    buf[OVF_DATA_OFF..OVF_DATA_OFF + data.len()].copy_from_slice(data);
    seal(&mut buf);
    buf
}

/// Reads the `npages | len` fields of an overflow run's first page.
pub(crate) fn overflow_header(id: u64, first_page: &[u8]) -> StoreResult<(u64, u32)> {
    let k = *first_page.get(4).ok_or_else(|| corrupt(id, "short page"))?;
    if k != KIND_OVERFLOW {
        return Err(corrupt(id, format_args!("expected an overflow page, found kind {k}")));
    }
    let n = rd_u32(first_page, 24).ok_or_else(|| corrupt(id, "short page"))?;
    let len = rd_u32(first_page, 28).ok_or_else(|| corrupt(id, "short page"))?;
    Ok((n as u64, len))
}

// ---- freelist pages ----

pub(crate) fn encode_freelist(id: u64, txid: u64, next: u64, runs: &[(u64, u64)]) -> Vec<u8> {
    assert!(runs.len() <= FREELIST_RUNS_PER_PAGE);
    let mut buf = vec![0u8; PAGE_SIZE];
    header(&mut buf, KIND_FREELIST, runs.len() as u16, id, txid);
    buf[24..32].copy_from_slice(&next.to_le_bytes());
    for (i, (s, n)) in runs.iter().enumerate() {
        let o = FREELIST_RUNS_OFF + 16 * i;
        buf[o..o + 8].copy_from_slice(&s.to_le_bytes());
        buf[o + 8..o + 16].copy_from_slice(&n.to_le_bytes());
    }
    seal(&mut buf);
    buf
}

/// Decodes a freelist page: `(next page, runs)`.
pub(crate) fn decode_freelist(id: u64, buf: &[u8]) -> StoreResult<(u64, Vec<(u64, u64)>)> {
    verify_crc(id, buf)?;
    let count = check_header(id, buf, KIND_FREELIST)? as usize;
    if count > FREELIST_RUNS_PER_PAGE {
        return Err(corrupt(id, format_args!("freelist page claims {count} runs")));
    }
    let bad = || corrupt(id, "short freelist page");
    let next = rd_u64(buf, 24).ok_or_else(bad)?;
    let mut runs = Vec::with_capacity(count);
    for i in 0..count {
        let o = FREELIST_RUNS_OFF + 16 * i;
        runs.push((rd_u64(buf, o).ok_or_else(bad)?, rd_u64(buf, o + 8).ok_or_else(bad)?));
    }
    Ok((next, runs))
}

// ---- meta pages ----

/// Identifies an ironcd store file; distinct from bbolt's so an etcd `db`
/// file is never mistaken for ours.
pub(crate) const MAGIC: [u8; 8] = *b"IRCDKVB1";
/// 1: first format. 2: `Tree::KeyHistory` holds superseded changes only
/// (the MVCC layer's layout changed, the pages did not). 3: the MVCC layer
/// again: revisions in `Tree::Kv` and `Tree::KeyHistory` keys take 2-18
/// bytes instead of 16, and a compaction removes `Tree::KeyHistory` entries
/// first and their `Tree::Kv` records in a second pass (orphaned records and
/// chunk marks in `Tree::Meta` between the two). Older versions are refused,
/// there is no upgrade path.
pub(crate) const FORMAT_VERSION: u32 = 3;
/// bbolt's meta magic, found at byte 16 of an etcd `db` file.
const BBOLT_MAGIC: u32 = 0xED0C_DAED;
const META_CRC_OFF: usize = 64 + 8 * Tree::COUNT;
pub(crate) const META_LEN: usize = META_CRC_OFF + 4;

/// The state a meta page names (layout in `docs/btree.md`, "Meta page").
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub txid: u64,
    pub applied: u64,
    /// Pages `0..hwm` are in use (meta, tree, free or freelist pages).
    pub hwm: u64,
    /// First freelist page, 0 if the free set is empty.
    pub freelist: u64,
    /// Number of free pages the freelist lists.
    pub free_count: u64,
    /// Root page per tree, 0 for an empty tree.
    pub roots: [u64; Tree::COUNT],
}

pub(crate) fn encode_meta(m: &Meta) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE_SIZE];
    buf[0..8].copy_from_slice(&MAGIC);
    buf[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    buf[16..24].copy_from_slice(&m.txid.to_le_bytes());
    buf[24..32].copy_from_slice(&m.applied.to_le_bytes());
    buf[32..40].copy_from_slice(&m.hwm.to_le_bytes());
    buf[40..48].copy_from_slice(&m.freelist.to_le_bytes());
    buf[48..56].copy_from_slice(&m.free_count.to_le_bytes());
    buf[56..60].copy_from_slice(&(Tree::COUNT as u32).to_le_bytes());
    for (i, r) in m.roots.iter().enumerate() {
        buf[64 + 8 * i..72 + 8 * i].copy_from_slice(&r.to_le_bytes());
    }
    let crc = crc32fast::hash(&buf[..META_CRC_OFF]);
    buf[META_CRC_OFF..META_LEN].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Why a meta page was not usable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MetaError {
    /// All zero: never written.
    Blank,
    /// A bbolt (etcd) database file.
    Bbolt,
    /// A valid meta page of another format version.
    Version(u32),
    /// Anything else, with the reason.
    Invalid(String),
}

pub(crate) fn decode_meta(buf: &[u8]) -> Result<Meta, MetaError> {
    let bad = |s: &str| MetaError::Invalid(s.to_string());
    if buf.iter().all(|&b| b == 0) {
        return Err(MetaError::Blank);
    }
    if rd_u32(buf, 16) == Some(BBOLT_MAGIC) {
        return Err(MetaError::Bbolt);
    }
    if buf.get(0..8) != Some(&MAGIC[..]) {
        return Err(bad("bad magic (not an ironcd store file)"));
    }
    let crc = rd_u32(buf, META_CRC_OFF).ok_or_else(|| bad("short meta page"))?;
    let body = buf.get(..META_CRC_OFF).ok_or_else(|| bad("short meta page"))?;
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch (torn or damaged meta page)"));
    }
    let u32_at = |o| rd_u32(buf, o).ok_or_else(|| bad("short meta page"));
    let u64_at = |o| rd_u64(buf, o).ok_or_else(|| bad("short meta page"));
    let version = u32_at(8)?;
    if version != FORMAT_VERSION {
        return Err(MetaError::Version(version));
    }
    let ps = u32_at(12)?;
    if ps as usize != PAGE_SIZE {
        return Err(MetaError::Invalid(format!("page size {ps}, this build uses {PAGE_SIZE}")));
    }
    let ntrees = u32_at(56)?;
    if ntrees as usize != Tree::COUNT {
        return Err(MetaError::Invalid(format!("{ntrees} trees, this build knows {}", Tree::COUNT)));
    }
    let mut roots = [0u64; Tree::COUNT];
    for (i, r) in roots.iter_mut().enumerate() {
        *r = u64_at(64 + 8 * i)?;
    }
    let m = Meta {
        txid: u64_at(16)?,
        applied: u64_at(24)?,
        hwm: u64_at(32)?,
        freelist: u64_at(40)?,
        free_count: u64_at(48)?,
        roots,
    };
    if m.hwm < 2 {
        return Err(bad("high-water mark below the meta pages"));
    }
    if roots.iter().chain([&m.freelist]).any(|&r| r == 1 || (r != 0 && r >= m.hwm)) {
        return Err(bad("a root or freelist page lies outside the used pages"));
    }
    Ok(m)
}

/// A fresh page holding `buf`'s first `slots` bytes (header, and for a
/// branch its first child) and its `count` cells packed at the end in slot
/// order; `cell(i)` gives cell `i`'s offset and length. Returns the page and
/// its lowest cell offset. Used to drop the gaps removed cells left.
fn packed(
    buf: &[u8],
    id: u64,
    slots: usize,
    count: usize,
    cell: impl Fn(usize) -> StoreResult<(usize, usize)>,
) -> StoreResult<(Vec<u8>, usize)> {
    let mut out = vec![0u8; PAGE_SIZE];
    out[..slots].copy_from_slice(&buf[..slots]);
    let mut at = PAGE_SIZE;
    for i in 0..count {
        let (off, len) = cell(i)?;
        let bytes = buf.get(off..off + len).ok_or_else(|| corrupt(id, "cell out of bounds"))?;
        if at < slots + 2 * count + len {
            return Err(corrupt(id, "cells overlap"));
        }
        at -= len;
        out[at..at + len].copy_from_slice(bytes);
        out[slots + 2 * i..slots + 2 * i + 2].copy_from_slice(&(at as u16).to_le_bytes());
    }
    Ok((out, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_round_trip() {
        let e = [
            (EncRef::Inline(b"a"), EncRef::Inline(b"1")),
            (EncRef::Inline(b"bb"), EncRef::Ovf { page: 9, len: 5000 }),
        ];
        let buf = encode_leaf(7, 3, &e);
        verify_crc(7, &buf).unwrap();
        let p = NodePage::parse(7, &buf).unwrap();
        assert!(p.leaf);
        assert_eq!(p.count, 2);
        let (k, v) = p.leaf_entry(1).unwrap();
        assert!(matches!(k, Ref::Inline { len: 2, .. }));
        assert!(matches!(v, Ref::Ovf { page: 9, len: 5000 }));
    }

    #[test]
    fn leaf_buf_replaces_compacts_and_fills() {
        let page = encode_leaf(9, 1, &[(EncRef::Inline(b"a"), EncRef::Inline(b"1")), (EncRef::Inline(b"c"), EncRef::Inline(b"3"))]);
        let mut lb = LeafBuf::from_page(&NodePage::parse(9, &page).unwrap(), Vec::new()).unwrap();
        // Replacing one entry many times leaves garbage that compaction reclaims.
        for round in 0..40u8 {
            lb.remove(1).unwrap();
            assert!(lb.insert(1, b"c", &[round; 900]).unwrap(), "round {round}");
        }
        assert!(lb.size() <= NODE_CAP);
        // Fill up: inserts succeed until the page is full, then refuse.
        let mut n = 0;
        while lb.insert(2 + n, &[b'd', n as u8], &[0; 500]).unwrap() {
            n += 1;
        }
        assert!(n >= 4, "{n}");
        let out = lb.into_page(12, 2).unwrap();
        verify_crc(12, &out).unwrap();
        let p = NodePage::parse(12, &out).unwrap();
        assert_eq!(p.count, 2 + n);
        let (k, v) = p.leaf_entry(1).unwrap();
        assert_eq!(p.inline(match k { Ref::Inline { off, .. } => off, _ => 0 }, 1).unwrap(), b"c");
        assert_eq!(v.len(), 900);
    }

    #[test]
    fn leaf_buf_writes_packed_pages_so_size_is_exact() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..20u8).map(|i| (vec![i; 8], vec![i; 40 + i as usize])).collect();
        let enc: Vec<_> = entries.iter().map(|(k, v)| (EncRef::Inline(k), EncRef::Inline(v))).collect();
        let page = encode_leaf(9, 1, &enc);
        let mut lb = LeafBuf::from_page(&NodePage::parse(9, &page).unwrap(), vec![0xAB; PAGE_SIZE]).unwrap();
        let live = |p: &NodePage<'_>| (0..p.count).map(|i| p.leaf_entry_size(i).unwrap()).sum::<usize>();
        assert_eq!(lb.size(), live(&lb.view()));
        // Same-length overwrite: in place, no garbage.
        assert!(lb.replace_same_len(3, &[7; 43]).unwrap());
        assert!(!lb.replace_same_len(3, &[7; 44]).unwrap());
        assert_eq!(lb.size(), live(&lb.view()));
        // Removals leave garbage; the written page is packed again.
        lb.remove(5).unwrap();
        lb.remove(0).unwrap();
        assert!(lb.insert(0, &[0; 8], &[1; 90]).unwrap());
        let out = lb.into_page(12, 2).unwrap();
        let p = NodePage::parse(12, &out).unwrap();
        let again = LeafBuf::from_page(&p, Vec::new()).unwrap();
        assert_eq!(again.size(), live(&p));
        assert_eq!(p.count, 19);
        let (_, v) = p.leaf_entry(3).unwrap(); // removed 0 and 5, inserted a new 0
        let Ref::Inline { off, len } = v else { panic!("inline value expected") };
        assert_eq!(p.inline(off, len).unwrap(), &[7; 43][..]);
        // The gap (stale bytes of the recycled buffer) is zeroed.
        let lo = HEADER_LEN + 2 * p.count;
        assert!(out[lo..p.cells_start().unwrap()].iter().all(|&b| b == 0));
    }

    #[test]
    fn branch_buf_patches_inserts_removes_and_compacts() {
        let keys: Vec<Vec<u8>> = (0..50u8).map(|i| vec![b'k', 2 * i]).collect();
        let enc: Vec<_> = keys.iter().map(|k| EncRef::Inline(k)).collect();
        let kids: Vec<u64> = (100..151).collect();
        let page = encode_branch(9, 1, &enc, &kids);
        let mut bb = BranchBuf::from_page(&NodePage::parse(9, &page).unwrap(), vec![0xAB; PAGE_SIZE], Vec::new()).unwrap();
        let full = 8 + keys.iter().map(|k| branch_entry_len(k.len())).sum::<usize>();
        assert_eq!(bb.size(), full);
        // Patch child pointers (dirty ones too), insert after key 3 and at
        // both ends: the dirty children move along.
        bb.set_child(0, 7, false).unwrap();
        bb.set_child(50, 5, true).unwrap();
        bb.set_child(12, 6, true).unwrap();
        assert!(bb.insert(4, &[b'k', 7], 200, false).unwrap());
        assert!(bb.insert(0, b"a", 201, false).unwrap());
        assert!(bb.insert(52, b"z", 9, true).unwrap());
        assert_eq!(bb.dirty(), &[14, 52, 53]);
        assert_eq!(bb.child(52).unwrap(), 5);
        bb.set_child(52, 150, false).unwrap();
        bb.set_child(53, 202, false).unwrap();
        // Remove key 10 (and child 11): leaves garbage, size drops; the
        // dirty child 14 becomes 13. Then key 12 and the dirty child 13.
        let before = bb.size();
        let k = bb.remove(10).unwrap();
        assert_eq!(bb.size(), before - branch_entry_len(k.len()));
        assert_eq!(bb.dirty(), &[13]);
        bb.remove(12).unwrap();
        assert_eq!(bb.dirty(), &[] as &[u16]);
        // Fill up until it refuses; compaction reclaims the removed cells.
        let mut n = 0u16;
        while bb.insert(bb.count(), &[b'z', (n >> 8) as u8, n as u8], 300 + u64::from(n), false).unwrap() {
            n += 1;
        }
        assert!(bb.size() <= NODE_CAP && bb.room() < branch_entry_len(3));
        let count = bb.count();
        let out = bb.into_page(12, 2).unwrap();
        verify_crc(12, &out).unwrap();
        let p = NodePage::parse(12, &out).unwrap();
        assert_eq!(p.count, count);
        assert_eq!(p.child(0).unwrap(), 7);
        assert_eq!(p.child(1).unwrap(), 201);
        let key = |i: usize| match p.key(i).unwrap() {
            Ref::Inline { off, len } => p.inline(off, len).unwrap().to_vec(),
            Ref::Ovf { .. } => panic!("inline key expected"),
        };
        assert_eq!(key(0), b"a");
        assert_eq!(key(5), [b'k', 7]);
        assert_eq!(p.child(6).unwrap(), 200);
        for i in 1..p.count {
            assert!(key(i - 1) < key(i), "keys out of order at {i}");
        }
        // Packed: a copy of the written page is sized exactly.
        let again = BranchBuf::from_page(&p, Vec::new(), Vec::new()).unwrap();
        assert_eq!(again.size(), 8 + (0..p.count).map(|i| branch_entry_len(p.key(i).unwrap().len())).sum::<usize>());
    }

    /// A sealed page (valid checksum) whose slot points past the page end:
    /// copies for a write are refused with an error, never a panic.
    #[test]
    fn a_slot_past_the_page_end_is_corrupt() {
        let mut leaf = encode_leaf(9, 1, &[(EncRef::Inline(b"a"), EncRef::Inline(b"1"))]);
        leaf[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&5000u16.to_le_bytes());
        seal(&mut leaf);
        let p = NodePage::parse(9, &leaf).unwrap();
        assert!(matches!(LeafBuf::from_page(&p, Vec::new()), Err(StoreError::Corrupt(_))));
        let mut branch = encode_branch(5, 1, &[EncRef::Inline(b"m")], &[10, 11]);
        branch[HEADER_LEN + 8..HEADER_LEN + 10].copy_from_slice(&4096u16.to_le_bytes());
        seal(&mut branch);
        let p = NodePage::parse(5, &branch).unwrap();
        assert!(matches!(BranchBuf::from_page(&p, Vec::new(), Vec::new()), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn branch_buf_refuses_a_leaf_and_an_unpatched_child() {
        let leaf = encode_leaf(6, 1, &[]);
        assert!(BranchBuf::from_page(&NodePage::parse(6, &leaf).unwrap(), Vec::new(), Vec::new()).is_err());
        let page = encode_branch(5, 1, &[EncRef::Inline(b"m")], &[10, 11]);
        let mut bb = BranchBuf::from_page(&NodePage::parse(5, &page).unwrap(), Vec::new(), Vec::new()).unwrap();
        bb.set_child(1, 3, true).unwrap();
        assert!(matches!(bb.into_page(5, 2), Err(StoreError::Corrupt(_))));
    }

    /// The blocked min/max of `cells_start` agrees with a plain minimum
    /// for every slot count (whole 16-slot blocks and every tail length).
    #[test]
    fn cells_start_is_the_lowest_slot() {
        for n in 0..=120usize {
            let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i:04}").into_bytes()).collect();
            // Values of varying length so cells are not in slot order by size.
            let vals: Vec<Vec<u8>> = (0..n).map(|i| vec![7; (i * 37) % 23]).collect();
            let enc: Vec<_> = keys.iter().zip(&vals).map(|(k, v)| (EncRef::Inline(k), EncRef::Inline(v))).collect();
            let mut page = encode_leaf(9, 1, &enc);
            // Rotate the slots: the lowest cell moves away from the end.
            let mut slots: Vec<u16> = (0..n).map(|i| rd_u16(&page, HEADER_LEN + 2 * i).unwrap()).collect();
            slots.rotate_left(n / 3);
            for (i, s) in slots.iter().enumerate() {
                page[HEADER_LEN + 2 * i..HEADER_LEN + 2 * i + 2].copy_from_slice(&s.to_le_bytes());
            }
            let p = NodePage::parse(9, &page).unwrap();
            let naive = slots.iter().copied().min().map_or(PAGE_SIZE, usize::from);
            assert_eq!(p.cells_start().unwrap(), naive, "{n} slots");
            // A slot past the page end is caught whatever its position.
            if n > 0 {
                let at = HEADER_LEN + 2 * (n - 1);
                page[at..at + 2].copy_from_slice(&(PAGE_SIZE as u16).to_le_bytes());
                assert!(NodePage::parse(9, &page).unwrap().cells_start().is_err(), "{n} slots");
            }
        }
    }

    #[test]
    fn branch_round_trip() {
        let buf = encode_branch(5, 1, &[EncRef::Inline(b"m")], &[10, 11]);
        let p = NodePage::parse(5, &buf).unwrap();
        assert_eq!(p.child(0).unwrap(), 10);
        assert_eq!(p.child(1).unwrap(), 11);
        assert!(p.child(2).is_err());
    }

    #[test]
    fn meta_round_trip_and_bbolt() {
        let m = Meta { txid: 5, applied: 9, hwm: 10, freelist: 3, free_count: 4, roots: [0, 2, 0, 0, 0, 0, 4] };
        assert_eq!(decode_meta(&encode_meta(&m)).unwrap(), m);
        let mut bolt = vec![0u8; PAGE_SIZE];
        bolt[16..20].copy_from_slice(&BBOLT_MAGIC.to_le_bytes());
        assert_eq!(decode_meta(&bolt), Err(MetaError::Bbolt));
        assert_eq!(decode_meta(&[0u8; PAGE_SIZE]), Err(MetaError::Blank));
    }

    #[test]
    fn sizes_guarantee_fanout() {
        // Worst leaf entry: 4 must fit; worst branch entry: 7 must fit.
        let worst_leaf = (0..5000)
            .flat_map(|k| [(k, 0), (k, 2000), (k, 1000 - k.min(1000))])
            .map(|(k, v)| leaf_entry_len(k, v))
            .max()
            .unwrap();
        assert!(4 * worst_leaf <= NODE_CAP, "{worst_leaf}");
        assert!(8 + 7 * branch_entry_len(MAX_INLINE_KEY) <= NODE_CAP);
    }
}

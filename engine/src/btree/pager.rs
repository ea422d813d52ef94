//! Reading pages straight from the map, with checksum verification.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::io::PageMap;
use super::page::{self, corrupt, NodePage, Ref, OVF_DATA_OFF, PAGE_SIZE, PS};
use crate::kv::StoreResult;

/// One mapping of the file plus a bitmap of pages whose checksum has been
/// verified through it (each page is verified on its first read, or on
/// every read with `DbOptions::verify_every_read`).
///
/// Invariant (what makes the `&[u8]` handed out sound): a page is written
/// only while no live version can reach it, and references are only formed
/// to pages reachable from the version the caller holds, so no slice
/// returned here is ever written while it is borrowed.
pub(crate) struct Mapped {
    map: Arc<dyn PageMap>,
    ptr: *const u8,
    len: usize,
    verified: Box<[AtomicU64]>,
    verify_every_read: bool,
}

// SAFETY: the raw pointer is just a cached `map.as_ptr()`; PageMap is
// Send + Sync and the memory stays valid while `map` lives.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Serves the first `len` bytes of `map` (the file's length: a map may
    /// reach past the end of the file, and those bytes must not be touched).
    pub(crate) fn new(map: Arc<dyn PageMap>, len: u64, prev: Option<&Mapped>, verify_every_read: bool) -> Mapped {
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(map.len());
        let pages = len / PAGE_SIZE;
        let words = pages.div_ceil(64);
        let verified: Box<[AtomicU64]> = (0..words)
            .map(|i| {
                let v = prev.and_then(|p| p.verified.get(i)).map_or(0, |w| w.load(Ordering::Relaxed));
                AtomicU64::new(v)
            })
            .collect();
        Mapped { ptr: map.as_ptr(), len, map, verified, verify_every_read }
    }

    /// The underlying map (to serve a longer file from the same mapping).
    pub(crate) fn map(&self) -> &Arc<dyn PageMap> {
        &self.map
    }

    /// Length served, in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }

    /// Bytes `off..off + n` of the file (see the type's invariant).
    #[inline]
    pub(crate) fn bytes(&self, off: u64, n: usize) -> Option<&[u8]> {
        let off = usize::try_from(off).ok()?;
        if off.checked_add(n)? > self.len {
            return None;
        }
        // SAFETY: in bounds of a live mapping; immutable while borrowed (type invariant).
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(off), n) })
    }

    /// One raw page, unverified.
    pub(crate) fn page(&self, id: u64) -> StoreResult<&[u8]> {
        id.checked_mul(PS)
            .and_then(|off| self.bytes(off, PAGE_SIZE))
            .ok_or_else(|| corrupt(id, format_args!("lies beyond the end of the file ({} bytes)", self.len)))
    }

    #[inline]
    fn is_verified(&self, id: u64) -> bool {
        !self.verify_every_read
            && self
                .verified
                .get((id / 64) as usize)
                .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (id % 64)) != 0)
    }

    /// Records that page `id` holds content with a valid checksum (after a
    /// verification, or because this process just wrote it).
    #[inline]
    pub(crate) fn mark_verified(&self, id: u64) {
        if let Some(w) = self.verified.get((id / 64) as usize) {
            w.fetch_or(1 << (id % 64), Ordering::Relaxed);
        }
    }

    /// A verified branch or leaf page.
    #[inline]
    pub(crate) fn node(&self, id: u64) -> StoreResult<NodePage<'_>> {
        if id < 2 {
            return Err(corrupt(id, "a tree points at a meta page"));
        }
        let data = self.page(id)?;
        if !self.is_verified(id) {
            page::verify_crc(id, data)?;
            self.mark_verified(id);
        }
        NodePage::parse(id, data)
    }

    /// The data of the overflow run starting at `first`, which a cell says
    /// holds `len` bytes.
    pub(crate) fn overflow(&self, first: u64, len: u32) -> StoreResult<&[u8]> {
        if first < 2 {
            return Err(corrupt(first, "an overflow reference points at a meta page"));
        }
        let head = self.page(first)?;
        let (npages, stored_len) = page::overflow_header(first, head)?;
        if stored_len != len || npages != page::ovf_pages(len as usize) {
            return Err(corrupt(first, format_args!(
                "overflow run holds {stored_len} bytes in {npages} pages, the cell expects {len} bytes"
            )));
        }
        let run = first
            .checked_mul(PS)
            .and_then(|off| self.bytes(off, npages as usize * PAGE_SIZE))
            .ok_or_else(|| corrupt(first, format_args!("overflow run of {npages} pages runs past the end of the file")))?;
        if !self.is_verified(first) {
            page::verify_crc(first, run)?;
            page::check_header(first, run, page::KIND_OVERFLOW)?;
            self.mark_verified(first);
        }
        run.get(OVF_DATA_OFF..OVF_DATA_OFF + len as usize)
            .ok_or_else(|| corrupt(first, "overflow data out of bounds"))
    }

    /// The bytes a cell part refers to.
    #[inline]
    pub(crate) fn resolve<'a>(&'a self, page: &NodePage<'a>, r: Ref) -> StoreResult<&'a [u8]> {
        match r {
            Ref::Inline { off, len } => page.inline(off, len),
            Ref::Ovf { page, len } => self.overflow(page, len),
        }
    }
}

//! The consistency check (`Db::check`): page accounting, checksums, key
//! order and uniform depth. Reads every reachable page; O(file size).

use std::collections::BTreeSet;

use super::page::{self, corrupt, NodePage, Ref, PS};
use super::pager::Mapped;
use super::tree::MAX_DEPTH;
use crate::kv::{StoreError, StoreResult, Tree};

/// What [`super::Db::check`] found in a consistent file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The published transaction checked.
    pub txid: u64,
    pub durable_txid: u64,
    /// Pages accounted for (`0..high_water`).
    pub high_water: u64,
    pub meta_pages: u64,
    pub branch_pages: u64,
    pub leaf_pages: u64,
    pub overflow_pages: u64,
    pub free_pages: u64,
    pub pending_pages: u64,
    pub freelist_pages: u64,
    /// Entries per tree, in [`Tree::ALL`] order.
    pub entries: [u64; Tree::COUNT],
    /// Height per tree (0 for an empty tree, 1 for a lone leaf).
    pub height: [u32; Tree::COUNT],
}

pub(crate) struct Input<'a> {
    pub txid: u64,
    pub durable_txid: u64,
    pub roots: &'a [u64; Tree::COUNT],
    pub hwm: u64,
    pub free: &'a BTreeSet<u64>,
    pub pending: &'a [u64],
    pub freelist_pages: &'a [u64],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Unknown,
    Meta,
    Free,
    Pending,
    Freelist,
    Tree,
}

struct Checker<'a> {
    map: &'a Mapped,
    owner: Vec<Use>,
    report: CheckReport,
}

impl Checker<'_> {
    fn claim(&mut self, p: u64, what: Use) -> StoreResult<()> {
        let slot = self
            .owner
            .get_mut(p as usize)
            .ok_or_else(|| corrupt(p, "lies beyond the high-water mark"))?;
        if *slot != Use::Unknown {
            let name = |u: Use| match u {
                Use::Unknown => "unknown",
                Use::Meta => "a meta page",
                Use::Free => "free",
                Use::Pending => "pending-free",
                Use::Freelist => "a freelist page",
                Use::Tree => "reachable",
            };
            return Err(corrupt(p, format_args!("is both {} and {}", name(*slot), name(what))));
        }
        *slot = what;
        Ok(())
    }

    /// Claims and verifies the overflow run a cell refers to; returns its data.
    fn overflow(&mut self, first: u64, len: u32) -> StoreResult<&[u8]> {
        let n = page::ovf_pages(len as usize);
        if first < 2 || first.checked_add(n).is_none_or(|e| e > self.owner.len() as u64) {
            return Err(corrupt(first, "overflow run outside the used pages"));
        }
        for p in first..first + n {
            self.claim(p, Use::Tree)?;
        }
        let run = first
            .checked_mul(PS)
            .and_then(|off| self.map.bytes(off, n as usize * page::PAGE_SIZE))
            .ok_or_else(|| corrupt(first, "overflow run beyond the end of the file"))?;
        page::verify_crc(first, run)?;
        page::check_header(first, run, page::KIND_OVERFLOW)?;
        self.report.overflow_pages += n;
        self.map.overflow(first, len)
    }

    fn bytes<'p>(&mut self, node: &NodePage<'p>, r: Ref) -> StoreResult<Vec<u8>> {
        match r {
            Ref::Inline { off, len } => Ok(node.inline(off, len)?.to_vec()),
            Ref::Ovf { page, len } => Ok(self.overflow(page, len)?.to_vec()),
        }
    }

    /// Walks the subtree at `p`, whose keys must lie in `[lo, hi)`.
    fn walk(
        &mut self,
        t: usize,
        p: u64,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        depth: u32,
        leaf_depth: &mut Option<u32>,
    ) -> StoreResult<()> {
        if depth as usize >= MAX_DEPTH {
            return Err(corrupt(p, "tree too deep (a cycle?)"));
        }
        if p < 2 {
            return Err(corrupt(p, "a tree points at a meta page"));
        }
        self.claim(p, Use::Tree)?;
        let data = self.map.page(p)?;
        page::verify_crc(p, data)?;
        let node = NodePage::parse(p, data)?;
        let mut keys = Vec::with_capacity(node.count);
        for i in 0..node.count {
            let k = if node.leaf {
                let (k, v) = node.leaf_entry(i)?;
                self.bytes(&node, v)?;
                k
            } else {
                node.key(i)?
            };
            keys.push(self.bytes(&node, k)?);
        }
        for (i, k) in keys.iter().enumerate() {
            if i > 0 && keys[i - 1] >= *k {
                return Err(corrupt(p, format_args!("keys {} and {i} out of order", i - 1)));
            }
            if lo.is_some_and(|lo| k.as_slice() < lo) || hi.is_some_and(|hi| k.as_slice() >= hi) {
                return Err(corrupt(p, format_args!("key {i} outside the range its parent assigns")));
            }
        }
        if node.leaf {
            self.report.leaf_pages += 1;
            self.report.entries[t] += node.count as u64;
            match *leaf_depth {
                None => *leaf_depth = Some(depth),
                Some(d) if d != depth => {
                    return Err(corrupt(p, format_args!("leaf at depth {depth}, other leaves at {d}")));
                }
                Some(_) => {}
            }
            return Ok(());
        }
        self.report.branch_pages += 1;
        for i in 0..=node.count {
            let c = node.child(i)?;
            let clo = if i == 0 { lo } else { keys.get(i - 1).map(|k| k.as_slice()) };
            let chi = if i == node.count { hi } else { keys.get(i).map(|k| k.as_slice()) };
            self.walk(t, c, clo, chi, depth + 1, leaf_depth)?;
        }
        Ok(())
    }
}

pub(crate) fn check(map: &Mapped, input: Input<'_>) -> StoreResult<CheckReport> {
    let hwm = input.hwm;
    if hwm.checked_mul(PS).is_none_or(|b| b > map.len()) {
        return Err(StoreError::Corrupt(format!("high-water mark {hwm} lies beyond the mapped file")));
    }
    let mut c = Checker {
        map,
        owner: vec![Use::Unknown; hwm as usize],
        report: CheckReport { txid: input.txid, durable_txid: input.durable_txid, high_water: hwm, ..Default::default() },
    };
    c.claim(0, Use::Meta)?;
    c.claim(1, Use::Meta)?;
    c.report.meta_pages = 2;
    for &p in input.free {
        c.claim(p, Use::Free)?;
        c.report.free_pages += 1;
    }
    for &p in input.pending {
        c.claim(p, Use::Pending)?;
        c.report.pending_pages += 1;
    }
    for &p in input.freelist_pages {
        c.claim(p, Use::Freelist)?;
        c.report.freelist_pages += 1;
    }
    for (t, &root) in input.roots.iter().enumerate() {
        if root != 0 {
            let mut leaf_depth = None;
            c.walk(t, root, None, None, 0, &mut leaf_depth)?;
            c.report.height[t] = leaf_depth.map_or(0, |d| d + 1);
        }
    }
    if let Some(p) = c.owner.iter().position(|u| *u == Use::Unknown) {
        return Err(corrupt(p as u64, "is leaked: neither meta, free, nor reachable"));
    }
    Ok(c.report)
}

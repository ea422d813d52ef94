//! An in-memory [`kv::Store`] — a **test fixture** for the MVCC tests and
//! benches until the B-tree file is ready; not for production use.
//!
//! Published state is an `Arc` of seven `BTreeMap`s; a snapshot clones the
//! `Arc`. A write transaction buffers its changes in an overlay (reads merge
//! overlay and base) and `commit` applies them copy-on-publish
//! (`Arc::make_mut`: clones only while snapshots still hold the old state).
//! `sync` does nothing; [`MemStore::reopen`] models a restart that keeps the
//! published state.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::kv::{ReadView, Store, StoreResult, Tree, WriteView};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;
type OverlayIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a>;
type BaseIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a>;

#[derive(Clone, Default)]
struct Trees {
    maps: [Map; Tree::COUNT],
    applied_index: u64,
}

/// The in-memory store (test fixture).
#[derive(Default)]
pub struct MemStore {
    published: Mutex<Arc<Trees>>,
    writer: Mutex<()>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new store holding this one's published state, as after a restart.
    pub fn reopen(&self) -> MemStore {
        let trees = lock(&self.published).clone();
        MemStore {
            published: Mutex::new(trees),
            writer: Mutex::new(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A published state (test fixture).
#[derive(Clone)]
pub struct MemSnapshot {
    trees: Arc<Trees>,
}

fn scan_map(
    map: &Map,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
    reverse: bool,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) {
    if empty_bounds(start, end) {
        return;
    }
    let range = map.range::<[u8], _>((start, end));
    if reverse {
        for (k, v) in range.rev() {
            if !visit(k, v) {
                return;
            }
        }
    } else {
        for (k, v) in range {
            if !visit(k, v) {
                return;
            }
        }
    }
}

/// `BTreeMap::range` panics on inverted bounds; such a range is empty.
fn empty_bounds(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

impl ReadView for MemSnapshot {
    fn get(&self, tree: Tree, key: &[u8]) -> StoreResult<Option<&[u8]>> {
        Ok(self.trees.maps[tree as usize].get(key).map(Vec::as_slice))
    }

    fn scan(
        &self,
        tree: Tree,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        scan_map(&self.trees.maps[tree as usize], start, end, reverse, visit);
        Ok(())
    }

    fn applied_index(&self) -> u64 {
        self.trees.applied_index
    }
}

/// The write transaction (test fixture).
pub struct MemWrite<'a> {
    store: &'a MemStore,
    base: Arc<Trees>,
    /// Pending changes: `None` = deleted.
    overlay: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; Tree::COUNT],
    applied_index: u64,
    _writer: MutexGuard<'a, ()>,
}

impl ReadView for MemWrite<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> StoreResult<Option<&[u8]>> {
        match self.overlay[tree as usize].get(key) {
            Some(v) => Ok(v.as_deref()),
            None => Ok(self.base.maps[tree as usize].get(key).map(Vec::as_slice)),
        }
    }

    fn scan(
        &self,
        tree: Tree,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        let over = &self.overlay[tree as usize];
        let base = &self.base.maps[tree as usize];
        if over.is_empty() {
            scan_map(base, start, end, reverse, visit);
            return Ok(());
        }
        if empty_bounds(start, end) {
            return Ok(());
        }
        let mut o: OverlayIter<'_> = if reverse {
            Box::new(over.range::<[u8], _>((start, end)).rev())
        } else {
            Box::new(over.range::<[u8], _>((start, end)))
        };
        let mut b: BaseIter<'_> = if reverse {
            Box::new(base.range::<[u8], _>((start, end)).rev())
        } else {
            Box::new(base.range::<[u8], _>((start, end)))
        };
        let (mut on, mut bn) = (o.next(), b.next());
        loop {
            // Which side comes first in scan order; the overlay wins ties.
            let take_overlay = match (&on, &bn) {
                (None, None) => return Ok(()),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ok, _)), Some((bk, _))) => {
                    if reverse {
                        ok >= bk
                    } else {
                        ok <= bk
                    }
                }
            };
            if take_overlay {
                let (k, v) = on.take().unwrap_or_else(|| unreachable!());
                if bn.as_ref().is_some_and(|(bk, _)| *bk == k) {
                    bn = b.next();
                }
                on = o.next();
                if let Some(v) = v {
                    if !visit(k, v) {
                        return Ok(());
                    }
                }
            } else {
                let (k, v) = bn.take().unwrap_or_else(|| unreachable!());
                bn = b.next();
                if !visit(k, v) {
                    return Ok(());
                }
            }
        }
    }

    fn applied_index(&self) -> u64 {
        self.applied_index
    }
}

impl WriteView for MemWrite<'_> {
    fn put(&mut self, tree: Tree, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.overlay[tree as usize].insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, tree: Tree, key: &[u8]) -> StoreResult<bool> {
        let present = self.get(tree, key)?.is_some();
        if present {
            if self.base.maps[tree as usize].contains_key(key) {
                self.overlay[tree as usize].insert(key.to_vec(), None);
            } else {
                self.overlay[tree as usize].remove(key);
            }
        }
        Ok(present)
    }

    fn set_applied_index(&mut self, index: u64) {
        self.applied_index = index;
    }

    fn commit(self) -> StoreResult<()> {
        let MemWrite {
            store,
            base,
            overlay,
            applied_index,
            _writer,
        } = self;
        drop(base);
        let mut published = lock(&store.published);
        let trees = Arc::make_mut(&mut published);
        for (map, over) in trees.maps.iter_mut().zip(overlay) {
            for (k, v) in over {
                match v {
                    Some(v) => {
                        map.insert(k, v);
                    }
                    None => {
                        map.remove(&k);
                    }
                }
            }
        }
        trees.applied_index = applied_index;
        Ok(())
    }
}

impl Store for MemStore {
    type Snapshot = MemSnapshot;
    type Write<'a> = MemWrite<'a>;

    fn snapshot(&self) -> MemSnapshot {
        MemSnapshot {
            trees: lock(&self.published).clone(),
        }
    }

    fn begin_write(&self) -> StoreResult<MemWrite<'_>> {
        let writer = lock(&self.writer);
        let base = lock(&self.published).clone();
        let applied_index = base.applied_index;
        Ok(MemWrite {
            store: self,
            base,
            overlay: Default::default(),
            applied_index,
            _writer: writer,
        })
    }

    fn sync(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(v: &impl ReadView, rev: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        v.scan(
            Tree::Kv,
            Bound::Unbounded,
            Bound::Unbounded,
            rev,
            &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                true
            },
        )
        .unwrap();
        out
    }

    proptest! {
        #[test]
        fn overlay_scan_matches_map(base in proptest::collection::btree_map(0u8..20, any::<u8>(), 0..10),
                                    ops in proptest::collection::vec((0u8..20, proptest::option::of(any::<u8>())), 0..20)) {
            let s = MemStore::new();
            let mut w = s.begin_write().unwrap();
            for (k, v) in &base { w.put(Tree::Kv, &[*k], &[*v]).unwrap(); }
            w.commit().unwrap();
            let mut expect: BTreeMap<Vec<u8>, Vec<u8>> = base.iter().map(|(k, v)| (vec![*k], vec![*v])).collect();
            let mut w = s.begin_write().unwrap();
            for (k, v) in &ops {
                match v {
                    Some(v) => { w.put(Tree::Kv, &[*k], &[*v]).unwrap(); expect.insert(vec![*k], vec![*v]); }
                    None => { prop_assert_eq!(w.delete(Tree::Kv, &[*k]).unwrap(), expect.remove(&vec![*k]).is_some()); }
                }
            }
            let fwd: Vec<_> = expect.clone().into_iter().collect();
            prop_assert_eq!(collect(&w, false), fwd.clone());
            let mut rev = fwd.clone(); rev.reverse();
            prop_assert_eq!(collect(&w, true), rev);
            let snap = s.snapshot();
            w.commit().unwrap();
            prop_assert_eq!(collect(&s.snapshot(), false), fwd);
            // The old snapshot is unchanged.
            let old: Vec<_> = base.iter().map(|(k, v)| (vec![*k], vec![*v])).collect();
            prop_assert_eq!(collect(&snap, false), old);
        }
    }
}

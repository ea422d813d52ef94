//! Which synced watchers an event's key concerns, without looking at every
//! watcher (etcd's `watcherGroup`). Three shapes, three structures:
//!
//! - a single key: a hash map from the key to its watchers;
//! - a prefix (`range_end` is etcd's prefix end of `key`, what
//!   `--prefix` sends): a hash map from the prefix to its watchers, probed
//!   with each prefix length in use (a length count map keeps the probes to
//!   the lengths some watcher has);
//! - any other range (`[key, range_end)`, from-key, all keys): a list
//!   scanned per event. Clients rarely watch such ranges; a key-ordered
//!   interval tree would replace the list if they start to.

use std::collections::{BTreeMap, HashMap};

/// A watcher's handle in the hub.
pub type WatcherKey = u64;

/// The keys a watcher covers, normalised as etcd's watch server does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Exactly `key`.
    Key,
    /// Every key starting with `key`.
    Prefix,
    /// `[key, end)`; `None` = no upper bound.
    Range(Option<Vec<u8>>),
}

impl Shape {
    /// The shape of etcd's `(key, range_end)` after the watch server's
    /// normalisation (`range_end` empty = one key, `"\0"` = from key).
    pub fn of(key: &[u8], range_end: &[u8]) -> Shape {
        match range_end {
            [] => Shape::Key,
            [0] => Shape::Range(None),
            end if prefix_end(key).as_deref() == Some(end) => Shape::Prefix,
            end => Shape::Range(Some(end.to_vec())),
        }
    }

    #[cfg(test)]
    pub fn contains(&self, start: &[u8], k: &[u8]) -> bool {
        match self {
            Shape::Key => k == start,
            Shape::Prefix => k.starts_with(start),
            Shape::Range(end) => k >= start && end.as_deref().is_none_or(|e| k < e),
        }
    }
}

/// etcd's prefix end (`clientv3.GetPrefixRangeEnd`): `None` when every
/// byte is 0xff (etcd then uses "\0", a from-key range).
pub fn prefix_end(key: &[u8]) -> Option<Vec<u8>> {
    let i = key.iter().rposition(|&b| b < 0xff)?;
    let mut end = key[..=i].to_vec();
    end[i] += 1;
    Some(end)
}

#[derive(Default)]
pub struct Index {
    keys: HashMap<Vec<u8>, Vec<WatcherKey>>,
    prefixes: HashMap<Vec<u8>, Vec<WatcherKey>>,
    /// Prefix length -> number of distinct prefixes of that length.
    prefix_lens: BTreeMap<usize, usize>,
    ranges: Vec<(Vec<u8>, Option<Vec<u8>>, WatcherKey)>,
    len: usize,
}

fn remove_from(v: &mut Vec<WatcherKey>, w: WatcherKey) -> bool {
    match v.iter().position(|&x| x == w) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    }
}

impl Index {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, key: &[u8], shape: &Shape, w: WatcherKey) {
        match shape {
            Shape::Key => self.keys.entry(key.to_vec()).or_default().push(w),
            Shape::Prefix => {
                let ws = self.prefixes.entry(key.to_vec()).or_default();
                if ws.is_empty() {
                    *self.prefix_lens.entry(key.len()).or_default() += 1;
                }
                ws.push(w);
            }
            Shape::Range(end) => self.ranges.push((key.to_vec(), end.clone(), w)),
        }
        self.len += 1;
    }

    pub fn remove(&mut self, key: &[u8], shape: &Shape, w: WatcherKey) -> bool {
        let removed = match shape {
            Shape::Key => match self.keys.get_mut(key) {
                Some(ws) => {
                    let r = remove_from(ws, w);
                    if ws.is_empty() {
                        self.keys.remove(key);
                    }
                    r
                }
                None => false,
            },
            Shape::Prefix => match self.prefixes.get_mut(key) {
                Some(ws) => {
                    let r = remove_from(ws, w);
                    if ws.is_empty() {
                        self.prefixes.remove(key);
                        if let Some(n) = self.prefix_lens.get_mut(&key.len()) {
                            *n -= 1;
                            if *n == 0 {
                                self.prefix_lens.remove(&key.len());
                            }
                        }
                    }
                    r
                }
                None => false,
            },
            Shape::Range(_) => match self.ranges.iter().position(|r| r.2 == w) {
                Some(i) => {
                    self.ranges.swap_remove(i);
                    true
                }
                None => false,
            },
        };
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` once for every watcher whose range holds `k`.
    pub fn stab(&self, k: &[u8], mut f: impl FnMut(WatcherKey)) {
        if let Some(ws) = self.keys.get(k) {
            ws.iter().for_each(|&w| f(w));
        }
        for &l in self.prefix_lens.keys() {
            if l > k.len() {
                break;
            }
            if let Some(ws) = self.prefixes.get(&k[..l]) {
                ws.iter().for_each(|&w| f(w));
            }
        }
        for (start, end, w) in &self.ranges {
            if k >= start.as_slice() && end.as_deref().is_none_or(|e| k < e) {
                f(*w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(ix: &Index, k: &[u8]) -> Vec<WatcherKey> {
        let mut v = Vec::new();
        ix.stab(k, |w| v.push(w));
        v.sort();
        v
    }

    #[test]
    fn shapes_and_stabbing() {
        assert_eq!(prefix_end(b"a"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(Shape::of(b"foo", b""), Shape::Key);
        assert_eq!(Shape::of(b"foo", b"fop"), Shape::Prefix);
        assert_eq!(Shape::of(b"a\xff", b"b"), Shape::Prefix);
        assert_eq!(Shape::of(b"a", b"c"), Shape::Range(Some(b"c".to_vec())));
        assert_eq!(Shape::of(b"a", b"\0"), Shape::Range(None));

        let mut ix = Index::default();
        let ws = [
            (b"foo".to_vec(), Shape::Key, 1),
            (b"fo".to_vec(), Shape::Prefix, 2),
            (b"f".to_vec(), Shape::Prefix, 3),
            (b"a".to_vec(), Shape::Range(Some(b"g".to_vec())), 4),
            (b"foo".to_vec(), Shape::Range(None), 5),
            (b"foo".to_vec(), Shape::Key, 6),
            (b"".to_vec(), Shape::Prefix, 7),
        ];
        for (k, s, w) in &ws {
            ix.insert(k, s, *w);
        }
        assert_eq!(ix.len(), 7);
        assert_eq!(hits(&ix, b"foo"), vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(hits(&ix, b"fo"), vec![2, 3, 4, 7]);
        assert_eq!(hits(&ix, b"g"), vec![5, 7]);
        assert_eq!(hits(&ix, b"b"), vec![4, 7]);
        for (k, s, w) in &ws {
            for probe in [&b"foo"[..], b"fo", b"f", b"a", b"zz", b"foo\0"] {
                assert_eq!(
                    hits(&ix, probe).contains(w),
                    s.contains(k, probe),
                    "{w} {probe:?}"
                );
            }
        }
        assert!(ix.remove(b"fo", &Shape::Prefix, 2));
        assert!(!ix.remove(b"fo", &Shape::Prefix, 2));
        assert!(ix.remove(b"foo", &Shape::Key, 1));
        assert!(ix.remove(b"foo", &Shape::Range(None), 5));
        assert_eq!(hits(&ix, b"foo"), vec![3, 4, 6, 7]);
        assert_eq!(ix.len(), 4);
    }
}

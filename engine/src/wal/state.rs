//! The log as the WAL's records describe it. Live operations and recovery
//! apply records through the same functions, so what recovery rebuilds is
//! what the live log held.

use std::collections::VecDeque;

use bytes::Bytes;

/// Entries plus the raft hard state kept beside them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    /// Entries with consecutive indexes ending at `next - 1`.
    entries: VecDeque<Bytes>,
    /// Index the next appended entry must carry; `None` until the log is
    /// anchored by its first entry or a purge.
    next: Option<u64>,
    pub(crate) vote: Option<Bytes>,
    pub(crate) committed: Option<Bytes>,
    /// Highest purged index and its opaque log id.
    pub(crate) purged: Option<(u64, Bytes)>,
}

impl LogState {
    pub fn first_index(&self) -> Option<u64> {
        let next = self.next?;
        (!self.entries.is_empty()).then(|| next - self.entries.len() as u64)
    }

    pub fn last_index(&self) -> Option<u64> {
        let next = self.next?;
        (!self.entries.is_empty()).then(|| next - 1)
    }

    pub fn next_index(&self) -> Option<u64> {
        self.next
    }

    pub fn get(&self, index: u64) -> Option<&Bytes> {
        let first = self.first_index()?;
        let at = index.checked_sub(first)?;
        self.entries.get(usize::try_from(at).ok()?)
    }

    /// Entries with indexes in `[from, to)`, clipped to what exists.
    pub fn range(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, &Bytes)> + '_ {
        let (skip, take, first) = match self.first_index() {
            Some(first) => {
                let lo = from.max(first);
                let hi = to.min(first + self.entries.len() as u64);
                if lo < hi {
                    ((lo - first) as usize, (hi - lo) as usize, lo)
                } else {
                    (0, 0, 0)
                }
            }
            None => (0, 0, 0),
        };
        self.entries.iter().skip(skip).take(take).enumerate().map(move |(i, e)| (first + i as u64, e))
    }

    fn purged_index(&self) -> Option<u64> {
        self.purged.as_ref().map(|(i, _)| *i)
    }

    /// Sets where the next entry must go when nothing anchors the log yet
    /// (recovery of a log whose oldest segments were deleted).
    pub(crate) fn anchor(&mut self, next: u64) {
        if self.next.is_none() {
            self.next = Some(next);
        }
    }

    /// Checks that entries `first..` may be appended next.
    pub fn check_append(&self, first: u64) -> Result<(), String> {
        match self.next {
            Some(n) if n != first => Err(format!(
                "entry index {first} does not follow the log (next index is {n}); truncate first"
            )),
            _ => Ok(()),
        }
    }

    pub fn append(&mut self, index: u64, data: Bytes) -> Result<(), String> {
        self.check_append(index)?;
        let next = index.checked_add(1).ok_or("entry index overflows")?;
        self.entries.push_back(data);
        self.next = Some(next);
        Ok(())
    }

    /// Removes every entry with index ≥ `from`.
    pub fn truncate(&mut self, from: u64) -> Result<(), String> {
        if let Some(p) = self.purged_index() {
            if from <= p {
                return Err(format!("cannot truncate from {from}: entries up to {p} are purged"));
            }
        }
        let Some(next) = self.next else { return Ok(()) };
        if from >= next {
            return Ok(());
        }
        let first = next - self.entries.len() as u64;
        if from <= first {
            self.entries.clear();
        } else {
            self.entries.truncate((from - first) as usize);
        }
        self.next = Some(from);
        Ok(())
    }

    /// Removes every entry with index ≤ `index`; purging past the last entry
    /// empties the log and makes `index + 1` the next index.
    pub fn purge(&mut self, index: u64, log_id: Bytes) -> Result<(), String> {
        if self.purged_index().is_some_and(|p| p >= index) {
            return Ok(());
        }
        let next = index.checked_add(1).ok_or("purge index overflows")?;
        match self.first_index() {
            Some(first) if index < first => {}
            Some(first) => {
                let drop = ((index - first + 1) as usize).min(self.entries.len());
                self.entries.drain(..drop);
                if self.entries.is_empty() {
                    self.next = Some(next);
                }
            }
            None => self.next = Some(self.next.map_or(next, |n| n.max(next))),
        }
        self.purged = Some((index, log_id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn append_truncate_purge() {
        let mut s = LogState::default();
        s.append(1, b("a")).unwrap();
        s.append(2, b("b")).unwrap();
        assert!(s.append(4, b("d")).is_err());
        s.append(3, b("c")).unwrap();
        s.truncate(3).unwrap();
        assert_eq!(s.last_index(), Some(2));
        s.append(3, b("C")).unwrap();
        s.purge(1, b("id1")).unwrap();
        assert_eq!(s.first_index(), Some(2));
        assert!(s.truncate(1).is_err());
        let got: Vec<_> = s.range(0, 10).map(|(i, e)| (i, e.clone())).collect();
        assert_eq!(got, vec![(2, b("b")), (3, b("C"))]);
        s.purge(10, b("id10")).unwrap();
        assert_eq!(s.last_index(), None);
        assert_eq!(s.next_index(), Some(11));
        s.append(11, b("k")).unwrap();
        assert_eq!(s.get(11), Some(&b("k")));
    }
}

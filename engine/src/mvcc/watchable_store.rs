//! Watch catch-up (the history half of etcd's watchable store): events for
//! a revision range read from `Tree::Kv` in revision order. Live events come
//! from [`super::KvWriter::take_events`]; the server's watchers switch from
//! catch-up to live once they reach the current revision.

use std::ops::Bound;

use crate::kv::{ReadView, Tree};

use super::compactor::survives;
use super::error::{MvccError, MvccResult};
use super::key_index::Record;
use super::kv_store::{KeyRange, KvReader};
use super::revision::Revision;
use super::types::*;

impl<R: ReadView> KvReader<R> {
    /// Events of keys in `[key, range_end)` with main revision in
    /// `[start_revision, end_revision]`, in revision order.
    ///
    /// As in etcd: `start_revision` < compact revision -> compacted (equal
    /// is allowed and yields the puts at that revision that survived the
    /// compaction); a DELETE event carries the key and the deleting revision
    /// only; `prev_kv` is the key at `mod_revision - 1`, absent for creations
    /// and when that revision is compacted.
    pub fn watch_events(&self, r: &WatchEventsRequest) -> MvccResult<WatchEventsResponse> {
        let (cur, compact) = (self.state.current, self.state.compact);
        if r.start_revision < compact {
            return Err(MvccError::Compacted);
        }
        let header = ResponseHeader::at(cur);
        let start = r.start_revision.max(1);
        let end = if r.end_revision <= 0 || r.end_revision > cur {
            cur
        } else {
            r.end_revision
        };
        let range = KeyRange::new(&r.key, &r.range_end);
        let mut events = Vec::new();
        if start > end || range.is_empty() {
            return Ok(WatchEventsResponse {
                header,
                events,
                next_revision: None,
            });
        }
        let ctx = self.ctx();
        let lo = Revision::new(start, 0).kv_key();
        let hi = Revision::new(end + 1, 0).kv_key();
        let mut revs_seen = 0usize;
        let mut last_main = 0i64;
        let mut next_revision = None;
        let mut err = None;
        self.view.scan(
            Tree::Kv,
            Bound::Included(&lo),
            Bound::Excluded(&hi),
            false,
            &mut |k, v| {
                let step = (|| -> MvccResult<bool> {
                    let rev = Revision::from_kv_key(k)?;
                    let rec = Record::decode(v)?;
                    if !range.contains(rec.key) {
                        return Ok(true);
                    }
                    if rev.main <= compact && !survives(&ctx, rev, &rec, compact)? {
                        return Ok(true);
                    }
                    if rev.main != last_main {
                        if r.max_revisions > 0 && revs_seen == r.max_revisions {
                            next_revision = Some(rev.main);
                            return Ok(false);
                        }
                        revs_seen += 1;
                        last_main = rev.main;
                    }
                    let (ty, kv) = if rec.tombstone {
                        (
                            EventType::Delete,
                            KeyValue {
                                key: rec.key.to_vec(),
                                mod_revision: rev.main,
                                ..Default::default()
                            },
                        )
                    } else {
                        (EventType::Put, rec.to_key_value(rev))
                    };
                    let is_create = ty == EventType::Put && kv.create_revision == kv.mod_revision;
                    let prev_kv = if r.prev_kv && !is_create && rev.main > compact {
                        ctx.get_at(rec.key, rev.main - 1)?
                    } else {
                        None
                    };
                    events.push(Event {
                        r#type: ty,
                        kv,
                        prev_kv,
                    });
                    Ok(true)
                })();
                match step {
                    Ok(go) => go,
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            },
        )?;
        if let Some(e) = err {
            return Err(e);
        }
        Ok(WatchEventsResponse {
            header,
            events,
            next_revision,
        })
    }
}

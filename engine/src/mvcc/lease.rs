//! The data side of etcd's lessor: leases and their attached keys in
//! `Tree::Lease` (timers and expiry are the server's job).
//!
//! `Tree::Lease` layout (docs/mvcc.md):
//! - `00 | id` -> `ttl i64 LE | remaining_ttl i64 LE` (etcd's `leasepb.Lease`);
//! - `01 | id | user key` -> empty: the keys attached to the lease, in key
//!   order, so a revoke never scans the key space.
//!
//! `id` is 8 bytes big-endian with the sign bit flipped (signed order).
//! Invariant: a live key with lease L has an attachment entry under L and L
//! exists; nothing else is attached.

use std::ops::Bound;

use crate::kv::{ReadView, Tree, WriteView};

use super::error::{MvccError, MvccResult};
use super::key_index::{lease_id_bytes, lease_id_from_bytes};
use super::kv_store::{KvReader, KvWriter};
use super::revision::le_i64;
use super::types::*;

/// etcd's `MaxLeaseTTL` (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

const LEASE_RECORD: u8 = 0;
const LEASE_ITEM: u8 = 1;

fn record_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LEASE_RECORD;
    k[1..].copy_from_slice(&lease_id_bytes(id));
    k
}

fn item_prefix(id: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LEASE_ITEM);
    k.extend_from_slice(&lease_id_bytes(id));
    k
}

fn item_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = item_prefix(id);
    k.extend_from_slice(key);
    k
}

/// The end bound of every key starting with `prefix` (`prefix` is never all 0xFF here).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            break;
        }
    }
    end
}

fn decode_record(id: i64, v: &[u8]) -> MvccResult<Lease> {
    if v.len() != 16 {
        return Err(MvccError::corrupt(format!(
            "lease record of {} bytes",
            v.len()
        )));
    }
    Ok(Lease {
        id,
        ttl: le_i64(&v[..8]),
        remaining_ttl: le_i64(&v[8..]),
        keys: Vec::new(),
    })
}

fn encode_record(l: &Lease) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&l.ttl.to_le_bytes());
    v[8..].copy_from_slice(&l.remaining_ttl.to_le_bytes());
    v
}

pub(crate) fn get_lease(view: &(impl ReadView + ?Sized), id: i64) -> MvccResult<Option<Lease>> {
    match view.get(Tree::Lease, &record_key(id))? {
        None => Ok(None),
        Some(v) => Ok(Some(decode_record(id, v)?)),
    }
}

/// The keys attached to lease `id`, in byte order.
pub(crate) fn lease_keys(view: &(impl ReadView + ?Sized), id: i64) -> MvccResult<Vec<Vec<u8>>> {
    let prefix = item_prefix(id);
    let end = prefix_end(&prefix);
    let mut keys = Vec::new();
    view.scan(
        Tree::Lease,
        Bound::Included(&prefix),
        Bound::Excluded(&end),
        false,
        &mut |k, _| {
            keys.push(k[prefix.len()..].to_vec());
            true
        },
    )?;
    Ok(keys)
}

pub(crate) fn list_leases(view: &(impl ReadView + ?Sized)) -> MvccResult<Vec<Lease>> {
    let mut out = Vec::new();
    let mut err = None;
    view.scan(
        Tree::Lease,
        Bound::Included(&[LEASE_RECORD][..]),
        Bound::Excluded(&[LEASE_ITEM][..]),
        false,
        &mut |k, v| {
            if k.len() != 9 {
                err = Some(MvccError::corrupt("lease key length"));
                return false;
            }
            match decode_record(lease_id_from_bytes(&k[1..]), v) {
                Ok(l) => {
                    out.push(l);
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        },
    )?;
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A deterministic id for `LeaseGrant` with id 0, so every replica applying
/// the same entry picks the same one (etcd picks it before proposing).
fn pick_id(seed: u64) -> i64 {
    // splitmix64
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) & (i64::MAX as u64)) as i64
}

impl<R: ReadView> KvReader<R> {
    /// The lease with its attached keys (the data of etcd's LeaseTimeToLive).
    pub fn lease_lookup(&self, id: i64) -> MvccResult<Option<Lease>> {
        match get_lease(&self.view, id)? {
            None => Ok(None),
            Some(mut l) => {
                l.keys = lease_keys(&self.view, id)?;
                Ok(Some(l))
            }
        }
    }

    /// Every lease in id order, without keys (etcd's LeaseLeases).
    pub fn lease_list(&self) -> MvccResult<Vec<Lease>> {
        list_leases(&self.view)
    }
}

impl<W: WriteView> KvWriter<W> {
    pub(crate) fn lease_exists(&self, id: i64) -> MvccResult<bool> {
        Ok(self.view.get(Tree::Lease, &record_key(id))?.is_some())
    }

    pub(crate) fn lease_attach(&mut self, id: i64, key: &[u8]) -> MvccResult<()> {
        self.view.put(Tree::Lease, &item_key(id, key), &[])?;
        Ok(())
    }

    pub(crate) fn lease_detach(&mut self, id: i64, key: &[u8]) -> MvccResult<()> {
        self.view.delete(Tree::Lease, &item_key(id, key))?;
        Ok(())
    }

    /// etcd's LeaseGrant. `id == 0` picks a free id deterministically from
    /// the raft index; the TTL is raised to the configured minimum.
    pub fn lease_grant(
        &mut self,
        index: u64,
        r: &LeaseGrantRequest,
    ) -> MvccResult<LeaseGrantResponse> {
        self.begin(index);
        if r.ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        let mut id = r.id;
        if id == 0 {
            let mut seed = index ^ (self.state.current as u64).rotate_left(32);
            loop {
                id = pick_id(seed);
                if id != 0 && !self.lease_exists(id)? {
                    break;
                }
                seed = seed.wrapping_add(1);
            }
        } else if self.lease_exists(id)? {
            return Err(MvccError::LeaseExists);
        }
        let ttl = r.ttl.max(self.cfg.min_lease_ttl);
        let l = Lease {
            id,
            ttl,
            remaining_ttl: 0,
            keys: Vec::new(),
        };
        self.view
            .put(Tree::Lease, &record_key(id), &encode_record(&l))?;
        Ok(LeaseGrantResponse {
            header: ResponseHeader::at(self.state.current),
            id,
            ttl,
            error: String::new(),
        })
    }

    /// etcd's LeaseRevoke: deletes every attached key, in key order, in one
    /// revision (none if no key is attached), then the lease.
    pub fn lease_revoke(
        &mut self,
        index: u64,
        r: &LeaseRevokeRequest,
    ) -> MvccResult<LeaseRevokeResponse> {
        self.begin(index);
        if !self.lease_exists(r.id)? {
            return Err(MvccError::LeaseNotFound);
        }
        for key in lease_keys(&self.view, r.id)? {
            if let Some(head) = self.ctx().head(&key)? {
                self.delete_key(&key, head)?;
            }
            // delete_key detached it; a stale entry (never expected) goes too.
            self.lease_detach(r.id, &key)?;
        }
        self.view.delete(Tree::Lease, &record_key(r.id))?;
        self.end()?;
        Ok(LeaseRevokeResponse {
            header: ResponseHeader::at(self.state.current),
        })
    }

    /// etcd's LeaseCheckpoint: records remaining TTLs of existing leases
    /// (unknown ids are ignored, as in etcd).
    pub fn lease_checkpoint(
        &mut self,
        index: u64,
        checkpoints: &[LeaseCheckpoint],
    ) -> MvccResult<ResponseHeader> {
        self.begin(index);
        for c in checkpoints {
            if let Some(mut l) = get_lease(&self.view, c.id)? {
                l.remaining_ttl = c.remaining_ttl;
                self.view
                    .put(Tree::Lease, &record_key(c.id), &encode_record(&l))?;
            }
        }
        Ok(ResponseHeader::at(self.state.current))
    }
}

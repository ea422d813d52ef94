//! Encodings of the two per-key trees (docs/mvcc.md):
//! - `Tree::KeyIndex`: user key -> [`HeadEntry`], the latest state of every
//!   *live* key (a delete removes the entry), so head reads never walk history.
//! - `Tree::KeyHistory`: `esc(user key) 00 01 | kv_key(rev)` -> kind byte, one
//!   entry per *superseded* change (every change but a live key's head, which
//!   `Tree::KeyIndex` holds; a deleted key's tombstone stays here), so "the
//!   version of k at revision r" is the head or one reverse seek, and a
//!   compaction to the head leaves this tree empty.
//! - `Tree::Kv`: revision -> [`Record`] (etcd's `key` bucket), the only place
//!   values are stored.

use super::error::{MvccError, MvccResult};
use super::revision::{be_i64, Revision, KV_KEY_MAX_LEN};
use super::types::KeyValue;

/// Longest encoded [`HeadEntry`] (five 10-byte varints).
pub const HEAD_ENTRY_MAX_LEN: usize = 50;

/// Appends `v` zigzag-encoded as a LEB128 varint (1 byte for -64..=63).
pub(crate) fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Decodes a varint written by [`put_varint`] at `*at`, advancing `*at`.
pub(crate) fn get_varint(b: &[u8], at: &mut usize, what: &str) -> MvccResult<i64> {
    let mut z = 0u64;
    for i in 0..10 {
        let Some(&byte) = b.get(*at) else {
            return Err(MvccError::corrupt(format!("{what} cut short")));
        };
        *at += 1;
        z |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    Err(MvccError::corrupt(format!("{what}: varint longer than 10 bytes")))
}

/// The latest state of a live key: varints (see [`put_varint`])
/// `mod.main | mod.sub | create_revision | version | lease`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HeadEntry {
    pub modified: Revision,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl HeadEntry {
    #[cfg(test)]
    pub fn encode(self, out: &mut Vec<u8>) {
        let (buf, n) = self.encode_buf();
        out.extend_from_slice(&buf[..n]);
    }

    /// The encoding in a fixed buffer: `(buf, len)`; `&buf[..len]` is what
    /// [`HeadEntry::encode`] appends.
    #[inline]
    pub fn encode_buf(self) -> ([u8; HEAD_ENTRY_MAX_LEN], usize) {
        let mut buf = [0u8; HEAD_ENTRY_MAX_LEN];
        let mut at = 0;
        for v in [self.modified.main, self.modified.sub, self.create_revision, self.version, self.lease] {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            while z >= 0x80 {
                buf[at] = z as u8 | 0x80;
                z >>= 7;
                at += 1;
            }
            buf[at] = z as u8;
            at += 1;
        }
        (buf, at)
    }

    pub fn from_bytes(b: &[u8]) -> MvccResult<Self> {
        let mut at = 0;
        let mut f = [0i64; 5];
        for x in f.iter_mut() {
            *x = get_varint(b, &mut at, "key index entry")?;
        }
        if at != b.len() {
            return Err(MvccError::corrupt(format!(
                "key index entry of {} bytes, {at} decoded",
                b.len()
            )));
        }
        Ok(HeadEntry {
            modified: Revision::new(f[0], f[1]),
            create_revision: f[2],
            version: f[3],
            lease: f[4],
        })
    }
}

/// Kind byte of a `Tree::KeyHistory` value and first byte of a [`Record`].
pub const KIND_PUT: u8 = 0;
pub const KIND_TOMBSTONE: u8 = 1;

/// Escapes `key` so that byte order of `esc(a) 00 01 ..` equals byte order
/// of `a`: 00 -> 00 FF, terminated by 00 01 (which sorts below 00 FF and
/// below every non-zero byte, so a prefix sorts first).
pub fn escape_key(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// `esc(key) 00 01`: the prefix every history entry of `key` starts with.
pub fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + KV_KEY_MAX_LEN);
    escape_key(key, &mut out);
    out.extend_from_slice(&[0x00, 0x01]);
    out
}

/// `esc(key) 00 01 | rev.kv_key()` (the revision as `Tree::Kv` keys it:
/// self-delimiting and order-preserving, so entries sort by key, then
/// revision).
pub fn history_key(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + KV_KEY_MAX_LEN);
    history_key_into(key, rev, &mut out);
    out
}

/// [`history_key`] written into `out` (cleared first), to reuse a buffer.
pub fn history_key_into(key: &[u8], rev: Revision, out: &mut Vec<u8>) {
    out.clear();
    escape_key(key, out);
    out.extend_from_slice(&[0x00, 0x01]);
    out.extend_from_slice(&rev.kv_key_buf());
}

/// Splits a history key into the length of its `esc(key) 00 01` prefix and
/// its revision. `esc` never yields `00 01`, so the first one ends the key.
pub fn split_history_key(b: &[u8]) -> MvccResult<(usize, Revision)> {
    let end = b
        .windows(2)
        .position(|w| w == [0x00, 0x01])
        .ok_or_else(|| MvccError::corrupt("key history entry without its terminator"))?
        + 2;
    Ok((end, Revision::from_kv_key(&b[end..])?))
}

/// A bound below every history key of user keys >= `key` and above every
/// history key of user keys < `key`.
pub fn history_lower(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_key(key, &mut out);
    out
}

/// `esc(key) 00 02`: above every history key of `key`, below every history
/// key of any user key > `key`.
pub fn history_after(key: &[u8]) -> Vec<u8> {
    let mut out = history_prefix(key);
    if let Some(last) = out.last_mut() {
        *last = 0x02;
    }
    out
}

/// Splits a history key into user key and revision.
pub fn decode_history_key(b: &[u8]) -> MvccResult<(Vec<u8>, Revision)> {
    let (end, rev) = split_history_key(b)?;
    let esc = &b[..end - 2];
    let mut key = Vec::with_capacity(esc.len());
    let mut i = 0;
    while i < esc.len() {
        key.push(esc[i]);
        if esc[i] == 0 {
            if esc.get(i + 1) != Some(&0xFF) {
                return Err(MvccError::corrupt("bad escape in key history entry"));
            }
            i += 1;
        }
        i += 1;
    }
    Ok((key, rev))
}

/// A `Tree::Kv` value: one change. Layout: `kind u8`, then varints (see
/// [`put_varint`]) `create_revision | version | lease | key_len`, then
/// `key | value`. `mod_revision` is the `Tree::Kv` key's main. A tombstone
/// has kind 1, zero create/version/lease and no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub tombstone: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(1 + 4 * 10 + self.key.len() + self.value.len());
        out.push(if self.tombstone {
            KIND_TOMBSTONE
        } else {
            KIND_PUT
        });
        put_varint(out, self.create_revision);
        put_varint(out, self.version);
        put_varint(out, self.lease);
        put_varint(out, self.key.len() as i64);
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value);
    }

    pub fn decode(b: &'a [u8]) -> MvccResult<Self> {
        let tombstone = match b.first() {
            Some(&KIND_PUT) => false,
            Some(&KIND_TOMBSTONE) => true,
            Some(k) => return Err(MvccError::corrupt(format!("kv record kind {k}"))),
            None => return Err(MvccError::corrupt("empty kv record")),
        };
        let mut at = 1;
        let create_revision = get_varint(b, &mut at, "kv record")?;
        let version = get_varint(b, &mut at, "kv record")?;
        let lease = get_varint(b, &mut at, "kv record")?;
        let key_len = get_varint(b, &mut at, "kv record")?;
        let rest = &b[at..];
        let key_len = usize::try_from(key_len)
            .ok()
            .filter(|&n| n <= rest.len())
            .ok_or_else(|| MvccError::corrupt("kv record key beyond its end"))?;
        let (key, value) = rest.split_at(key_len);
        Ok(Record {
            tombstone,
            create_revision,
            version,
            lease,
            key,
            value,
        })
    }

    /// The client-visible key-value of a put record at `rev`.
    pub fn to_key_value(&self, rev: Revision) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: rev.main,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }
}

/// Encodes a lease id so byte order is signed order: big-endian with the
/// sign bit flipped.
pub fn lease_id_bytes(id: i64) -> [u8; 8] {
    ((id as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn lease_id_from_bytes(b: &[u8]) -> i64 {
    (be_i64(b) as u64 ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn history_keys_sort_like_user_keys(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..6),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..6),
            ra in (1i64..1000, 0i64..3), rb in (1i64..1000, 0i64..3),
        ) {
            let ka = history_key(&a, Revision::new(ra.0, ra.1));
            let kb = history_key(&b, Revision::new(rb.0, rb.1));
            let expect = (a.as_slice(), ra).cmp(&(b.as_slice(), rb));
            prop_assert_eq!(ka.cmp(&kb), expect);
            // Bounds.
            prop_assert_eq!(ka.as_slice() < history_lower(&b).as_slice(), a < b);
            prop_assert_eq!(ka.as_slice() < history_after(&b).as_slice(), a <= b);
            prop_assert_eq!(decode_history_key(&ka).unwrap(), (a.clone(), Revision::new(ra.0, ra.1)));
        }

        #[test]
        fn record_round_trip(key in proptest::collection::vec(any::<u8>(), 0..8),
                             value in proptest::collection::vec(any::<u8>(), 0..8),
                             c in any::<i64>(), v in any::<i64>(), l in any::<i64>(), t in any::<bool>()) {
            let r = Record { tombstone: t, create_revision: c, version: v, lease: l, key: &key, value: &value };
            let mut buf = Vec::new();
            r.encode(&mut buf);
            prop_assert_eq!(Record::decode(&buf).unwrap(), r);
            for cut in 0..buf.len() - value.len() {
                prop_assert!(Record::decode(&buf[..cut]).is_err());
            }
        }

        #[test]
        fn head_entry_round_trip(m in any::<i64>(), sub in any::<i64>(), c in any::<i64>(), v in any::<i64>(), l in any::<i64>()) {
            let h = HeadEntry { modified: Revision::new(m, sub), create_revision: c, version: v, lease: l };
            let mut buf = Vec::new();
            h.encode(&mut buf);
            prop_assert!(buf.len() <= HEAD_ENTRY_MAX_LEN);
            prop_assert_eq!(HeadEntry::from_bytes(&buf).unwrap(), h);
            for cut in 0..buf.len() {
                prop_assert!(HeadEntry::from_bytes(&buf[..cut]).is_err());
            }
            buf.push(0);
            prop_assert!(HeadEntry::from_bytes(&buf).is_err());
        }

        #[test]
        fn varints_never_panic(b in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = HeadEntry::from_bytes(&b);
            let _ = Record::decode(&b);
        }

        #[test]
        fn lease_ids_sort_signed(a in any::<i64>(), b in any::<i64>()) {
            prop_assert_eq!(lease_id_bytes(a).cmp(&lease_id_bytes(b)), a.cmp(&b));
            prop_assert_eq!(lease_id_from_bytes(&lease_id_bytes(a)), a);
        }
    }
}

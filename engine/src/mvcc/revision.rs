//! Revisions and their on-disk encoding (docs/mvcc.md, "Tree::Kv").

use super::error::{MvccError, MvccResult};

/// Length of an encoded revision: main (8, big-endian) | sub (8, big-endian).
pub const REV_BYTES_LEN: usize = 16;

/// A point in the history: every write request takes the next `main`; the
/// changes inside it take increasing `sub` from 0. Ordered by (main, sub).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Big-endian so byte order is revision order. `main` and `sub` are never
    /// negative in stored revisions, so the two's-complement bits sort right.
    pub fn to_bytes(self) -> [u8; REV_BYTES_LEN] {
        let mut b = [0u8; REV_BYTES_LEN];
        b[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        b[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> MvccResult<Self> {
        if b.len() != REV_BYTES_LEN {
            return Err(MvccError::corrupt(format!("revision of {} bytes", b.len())));
        }
        Ok(Revision {
            main: be_i64(&b[..8]),
            sub: be_i64(&b[8..]),
        })
    }
}

/// Longest [`Revision::kv_key`]: two length bytes and two 8-byte integers.
pub const KV_KEY_MAX_LEN: usize = 18;

/// A [`Revision::kv_key`] in a fixed buffer; derefs to its bytes.
#[derive(Clone, Copy)]
pub struct KvKey {
    buf: [u8; KV_KEY_MAX_LEN],
    len: u8,
}

impl KvKey {
    /// Appends `len u8 | v` big-endian without leading zero bytes (0 -> `00`).
    #[inline]
    fn put_short(&mut self, v: u64) {
        let n = 8 - v.leading_zeros() as usize / 8;
        let at = self.len as usize;
        self.buf[at] = n as u8;
        self.buf[at + 1..at + 1 + n].copy_from_slice(&v.to_be_bytes()[8 - n..]);
        self.len += 1 + n as u8;
    }
}

impl std::ops::Deref for KvKey {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// Reads a [`put_short`] integer at `*at`; rejects a non-minimal one.
fn get_short(b: &[u8], at: &mut usize) -> MvccResult<u64> {
    let n = *b.get(*at).ok_or_else(|| MvccError::corrupt("kv key cut short"))? as usize;
    let bytes = b
        .get(*at + 1..*at + 1 + n)
        .filter(|_| n <= 8)
        .ok_or_else(|| MvccError::corrupt("kv key cut short"))?;
    if bytes.first() == Some(&0) {
        return Err(MvccError::corrupt("kv key with a leading zero byte"));
    }
    *at += 1 + n;
    Ok(bytes.iter().fold(0u64, |a, &x| a << 8 | u64::from(x)))
}

impl Revision {
    /// The `Tree::Kv` key of this revision (format version 3): `len u8 |
    /// main` big-endian without leading zeros, then, only when `sub` is not
    /// 0, `len u8 | sub` the same way. Byte order is revision order for
    /// non-negative revisions (a shorter integer is smaller; a missing sub
    /// sorts first), and a typical key is 4-5 bytes instead of 16.
    pub fn kv_key(self) -> Vec<u8> {
        self.kv_key_buf().to_vec()
    }

    /// [`Revision::kv_key`] on the stack (no allocation: the apply path
    /// builds one per change and the read path one per record fetched).
    #[inline]
    pub fn kv_key_buf(self) -> KvKey {
        let mut k = KvKey { buf: [0; KV_KEY_MAX_LEN], len: 0 };
        k.put_short(self.main as u64);
        if self.sub != 0 {
            k.put_short(self.sub as u64);
        }
        k
    }

    /// Decodes a [`Revision::kv_key`]; rejects any other spelling.
    pub fn from_kv_key(b: &[u8]) -> MvccResult<Self> {
        let mut at = 0;
        let main = get_short(b, &mut at)? as i64;
        let sub = if at == b.len() {
            0
        } else {
            let sub = get_short(b, &mut at)?;
            if sub == 0 || at != b.len() {
                return Err(MvccError::corrupt("malformed kv key"));
            }
            sub as i64
        };
        Ok(Revision { main, sub })
    }
}

pub(crate) fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a) as i64
}

pub(crate) fn le_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 3),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_bytes() < w[1].to_bytes());
        }
        for r in revs {
            assert_eq!(Revision::from_bytes(&r.to_bytes()).unwrap(), r);
        }
        assert!(Revision::from_bytes(&[0; 15]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn kv_keys_sort_like_revisions(a in (0i64..=i64::MAX, 0i64..=i64::MAX), b in (0i64..=i64::MAX, 0i64..=i64::MAX),
                                       small in (0i64..70_000, 0i64..300)) {
            let (ra, rb, rs) = (Revision::new(a.0, a.1), Revision::new(b.0, b.1), Revision::new(small.0, small.1));
            proptest::prop_assert_eq!(ra.kv_key().cmp(&rb.kv_key()), ra.cmp(&rb));
            proptest::prop_assert_eq!(ra.kv_key().cmp(&rs.kv_key()), ra.cmp(&rs));
            for r in [ra, rb, rs] {
                let k = r.kv_key();
                proptest::prop_assert!(k.len() <= KV_KEY_MAX_LEN);
                proptest::prop_assert_eq!(Revision::from_kv_key(&k).unwrap(), r);
                for cut in 0..k.len() {
                    // A cut key is either malformed or (cut after main) a
                    // different revision: never silently the same.
                    proptest::prop_assert!(Revision::from_kv_key(&k[..cut]).map_or(true, |x| x != r));
                }
            }
        }

        #[test]
        fn kv_keys_decode_only_their_own_spelling(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)) {
            if let Ok(r) = Revision::from_kv_key(&b) {
                proptest::prop_assert_eq!(r.kv_key(), b);
            }
        }
    }

    #[test]
    fn kv_key_examples() {
        assert_eq!(Revision::new(0, 0).kv_key(), [0]);
        assert_eq!(Revision::new(5, 0).kv_key(), [1, 5]);
        assert_eq!(Revision::new(256, 3).kv_key(), [2, 1, 0, 1, 3]);
        assert!(Revision::from_kv_key(&[1, 5, 1, 0]).is_err());
        assert!(Revision::from_kv_key(&[2, 0, 5]).is_err());
        assert!(Revision::from_kv_key(&[9, 1, 1, 1, 1, 1, 1, 1, 1, 1]).is_err());
    }
}

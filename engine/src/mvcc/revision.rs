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
}

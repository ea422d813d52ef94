//! The Maintenance `Snapshot` stream: a consistent copy of every tree of the
//! store at one point, in ironcd's snapshot format, followed by its SHA-256
//! as etcd clients expect (body padded to a multiple of 512 bytes, then a
//! final 32-byte message: `etcdctl snapshot save` checks exactly that).
//!
//! Format (all integers little-endian):
//!
//! | part | bytes | content |
//! |---|---|---|
//! | header | 512 | magic `ironcdSN`, version u32 (1), tree count u32, body length u64 (records + end marker), applied raft index u64, zero padding |
//! | record | 9 + k + v | tree u8, key length u32, value length u32, key, value |
//! | end | 1 | 0xFF |
//! | padding | to a multiple of 512 | zeros |
//!
//! The copy is logical (every entry of every tree in key order), so it is
//! compact and independent of the page layout. It is *not* etcd's bbolt
//! format: `etcdctl snapshot status/restore` cannot read it (a restore
//! subcommand of ironcd's own is future work).

use std::ops::Bound;

use ironcd_engine::btree::Snapshot;
use ironcd_engine::kv::{ReadView, Tree};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"ironcdSN";
pub const VERSION: u32 = 1;
const HEADER: usize = 512;
const END: u8 = 0xFF;
/// etcd's `snapshotSendBufferSize`.
pub const CHUNK: usize = 32 * 1024;

/// Produces the snapshot in chunks, lazily, from a pinned store snapshot.
pub struct SnapshotWriter {
    snap: Snapshot,
    tree: usize,
    /// Last key emitted in the current tree (resume point).
    after: Option<Vec<u8>>,
    header_sent: bool,
    end_sent: bool,
    body_len: u64,
    emitted: u64,
    hasher: Sha256,
    done: bool,
}

fn record_len(k: &[u8], v: &[u8]) -> u64 {
    9 + k.len() as u64 + v.len() as u64
}

impl SnapshotWriter {
    /// Measures the snapshot (one pass over every tree) and prepares to stream it.
    pub fn new(snap: Snapshot) -> Result<SnapshotWriter, String> {
        let mut body_len = 1u64;
        for tree in Tree::ALL {
            snap.scan(
                tree,
                Bound::Unbounded,
                Bound::Unbounded,
                false,
                &mut |k, v| {
                    body_len += record_len(k, v);
                    true
                },
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(SnapshotWriter {
            snap,
            tree: 0,
            after: None,
            header_sent: false,
            end_sent: false,
            body_len,
            emitted: 0,
            hasher: Sha256::new(),
            done: false,
        })
    }

    /// Bytes of the whole stream before the checksum (a multiple of 512).
    pub fn total(&self) -> u64 {
        (HEADER as u64 + self.body_len).div_ceil(512) * 512
    }

    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; HEADER];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(Tree::COUNT as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.body_len.to_le_bytes());
        h[24..32].copy_from_slice(&self.snap.applied_index().to_le_bytes());
        h
    }

    /// The next chunk and the bytes remaining after it, or `None` when only
    /// the checksum is left ([`Self::checksum`]).
    pub fn next_chunk(&mut self) -> Result<Option<(Vec<u8>, u64)>, String> {
        if self.done {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(CHUNK + 1024);
        if !self.header_sent {
            out.extend_from_slice(&self.header());
            self.header_sent = true;
        }
        while out.len() < CHUNK && self.tree < Tree::COUNT {
            let tree = Tree::ALL[self.tree];
            let start = match &self.after {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Unbounded,
            };
            let mut last: Option<Vec<u8>> = None;
            let mut exhausted = true;
            self.snap
                .scan(tree, start, Bound::Unbounded, false, &mut |k, v| {
                    if out.len() >= CHUNK {
                        exhausted = false;
                        return false;
                    }
                    out.push(tree as u8);
                    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    out.extend_from_slice(k);
                    out.extend_from_slice(v);
                    last = Some(k.to_vec());
                    true
                })
                .map_err(|e| e.to_string())?;
            if exhausted {
                self.tree += 1;
                self.after = None;
            } else if last.is_some() {
                self.after = last;
            }
        }
        if self.tree >= Tree::COUNT && !self.end_sent {
            out.push(END);
            self.end_sent = true;
            let so_far = self.emitted + out.len() as u64;
            let pad = so_far.div_ceil(512) * 512 - so_far;
            out.resize(out.len() + pad as usize, 0);
            self.done = true;
        }
        self.emitted += out.len() as u64;
        if self.emitted > self.total() {
            return Err("snapshot grew while being sent".into());
        }
        self.hasher.update(&out);
        Ok(Some((out, self.total() - self.emitted)))
    }

    /// SHA-256 of every byte sent, once every chunk was taken.
    pub fn checksum(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

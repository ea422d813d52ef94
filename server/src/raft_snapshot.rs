//! Raft snapshots between members: the leader streams its store (the same
//! logical copy as the Maintenance `Snapshot` RPC, `snapshot.rs`, ended by
//! its SHA-256) in chunks over the peer transport; the follower writes the
//! chunks to `member/snap.recv`, checks the checksum and the format, and
//! installs it in **one** store write transaction that replaces every tree.
//! The copy carries the raft bookkeeping (`raft/applied_state`) with the
//! data, so the installed state knows which log id it ends at; installing
//! refuses a copy whose log id is not the one openraft announced.
//!
//! Why a logical copy and not the B-tree file's pages: installing in place
//! through one write transaction keeps the store's memory map, its readers
//! and every handle to it valid (watchers, the lessor, open snapshots); a
//! page copy would have to swap the file under them. The copy holds only
//! live entries, so it is also smaller than the file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ironcd_engine::btree::Db;
use ironcd_engine::kv::{ReadView, Store, Tree, WriteView};
use ironcd_engine::mvcc::KvStore;
use ironcd_raft_net::peer::{SnapshotSink, SnapshotSource, SnapshotTransfer};
use ironcd_raft_net::types::LogId;
use sha2::{Digest, Sha256};

use crate::snapshot::{SnapshotWriter, MAGIC, VERSION};
use crate::state_machine::{load_applied_state, StoreSnapshot};

const HEADER: usize = 512;
/// Meta-tree keys that belong to this member, never replaced by a snapshot.
const LOCAL_KEYS: &[&[u8]] = &[crate::IDENTITY_KEY];
const END: u8 = 0xFF;

/// The server's [`SnapshotTransfer`]: sends pinned store states, receives
/// into a file of the member dir.
pub struct Transfer {
    pub member_dir: PathBuf,
}

/// The chunks of a snapshot, then its checksum; `None` once both were sent.
struct Source {
    writer: Option<SnapshotWriter>,
}

impl SnapshotSource for Source {
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(None);
        };
        if let Some((chunk, _)) = w.next_chunk().map_err(io::Error::other)? {
            return Ok(Some(Bytes::from(chunk)));
        }
        // Every chunk went out: the checksum comes last.
        Ok(self.writer.take().map(|w| Bytes::copy_from_slice(&w.checksum())))
    }
}

struct Sink {
    path: PathBuf,
    file: File,
    len: u64,
}

impl SnapshotSink<StoreSnapshot> for Sink {
    fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.len += chunk.len() as u64;
        self.file.write_all(chunk)
    }

    fn finish(self: Box<Self>) -> io::Result<StoreSnapshot> {
        self.file.sync_data()?;
        drop(self.file);
        verify_checksum(&self.path)?;
        Ok(StoreSnapshot::Received(self.path))
    }
}

impl SnapshotTransfer<StoreSnapshot> for Transfer {
    fn source(&self, s: &StoreSnapshot) -> io::Result<Box<dyn SnapshotSource>> {
        match s {
            StoreSnapshot::Pinned(snap) => {
                let writer = SnapshotWriter::new(snap.clone()).map_err(io::Error::other)?;
                Ok(Box::new(Source { writer: Some(writer) }))
            }
            StoreSnapshot::Received(_) => Err(io::Error::other("a received snapshot is not sent on")),
        }
    }

    fn sink(&self) -> io::Result<Box<dyn SnapshotSink<StoreSnapshot>>> {
        let path = self.member_dir.join("snap.recv");
        let file = File::create(&path)?;
        Ok(Box::new(Sink { path, file, len: 0 }))
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Checks the trailing SHA-256 of a received snapshot file.
fn verify_checksum(path: &Path) -> io::Result<()> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len < (HEADER + 32) as u64 {
        return Err(bad(format!("snapshot of {len} bytes is too short")));
    }
    let mut h = Sha256::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; 32];
    f.read_exact(&mut want)?;
    if h.finalize().as_slice() != want {
        return Err(bad("snapshot checksum mismatch"));
    }
    Ok(())
}

/// Replaces every tree of the store with the snapshot in `path`, in one
/// write transaction; returns the number of records. Refuses (changing
/// nothing) a file that is malformed or ends at another log id than `expect`.
pub fn install(kv: &Arc<KvStore<Db>>, path: &Path, expect: Option<&LogId>) -> io::Result<u64> {
    let data = std::fs::read(path)?;
    if data.len() < HEADER + 32 || &data[..8] != MAGIC {
        return Err(bad("not an ironcd snapshot"));
    }
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap_or_default());
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap_or_default());
    if u32_at(8) != VERSION || u32_at(12) as usize != Tree::COUNT {
        return Err(bad(format!("unsupported snapshot version {} with {} trees", u32_at(8), u32_at(12))));
    }
    let body_len = u64_at(16) as usize;
    let body = data
        .get(HEADER..HEADER.saturating_add(body_len))
        .ok_or_else(|| bad("snapshot body is truncated"))?;
    // Parse everything before touching the store.
    let mut records: Vec<(Tree, &[u8], &[u8])> = Vec::new();
    let mut pos = 0;
    loop {
        let tag = *body.get(pos).ok_or_else(|| bad("snapshot ends without its end marker"))?;
        if tag == END {
            if pos + 1 != body.len() {
                return Err(bad("bytes after the snapshot's end marker"));
            }
            break;
        }
        let tree = *Tree::ALL.get(tag as usize).ok_or_else(|| bad(format!("unknown tree {tag}")))?;
        let head = body.get(pos + 1..pos + 9).ok_or_else(|| bad("truncated record"))?;
        let kl = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
        let vl = u32::from_le_bytes(head[4..].try_into().unwrap_or_default()) as usize;
        let k = body.get(pos + 9..pos + 9 + kl).ok_or_else(|| bad("truncated record key"))?;
        let v = body.get(pos + 9 + kl..pos + 9 + kl + vl).ok_or_else(|| bad("truncated record value"))?;
        records.push((tree, k, v));
        pos += 9 + kl + vl;
    }
    let mut w = kv.store().begin_write().map_err(|e| io::Error::other(e.to_string()))?;
    for tree in Tree::ALL {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        w.scan(tree, Bound::Unbounded, Bound::Unbounded, false, &mut |k, _| {
            keys.push(k.to_vec());
            true
        })
        .map_err(|e| io::Error::other(e.to_string()))?;
        for k in keys.into_iter().filter(|k| tree != Tree::Meta || !LOCAL_KEYS.contains(&k.as_slice())) {
            w.delete(tree, &k).map_err(|e| io::Error::other(e.to_string()))?;
        }
    }
    for (tree, k, v) in records.iter().filter(|(t, k, _)| *t != Tree::Meta || !LOCAL_KEYS.contains(k)) {
        w.put(*tree, k, v).map_err(|e| io::Error::other(e.to_string()))?;
    }
    let (applied, _) = load_applied_state(&w)?;
    if applied.as_ref() != expect {
        return Err(bad(format!("snapshot holds state up to {applied:?}, but was announced as {expect:?}")));
    }
    if let Some(a) = &applied {
        w.set_applied_index(a.index);
    }
    w.commit().map_err(|e| io::Error::other(e.to_string()))?;
    Ok(records.len() as u64)
}

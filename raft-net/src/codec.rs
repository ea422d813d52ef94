//! Byte encodings of what the log store writes into the WAL: log entries,
//! the vote, the committed log id and the purged log id.
//!
//! A small hand-written binary codec rather than serde + postcard/bincode:
//! - a normal entry's request bytes are the tail of the record, so decoding
//!   slices the WAL's `Bytes` (no copy) and the last entry's log id is read
//!   from a fixed offset without decoding the payload;
//! - the layout is explicit, documented (`docs/raft.md`) and independent of
//!   how openraft's types happen to derive serde;
//! - every blob starts with a format version byte, so a later layout can be
//!   introduced while old WAL records stay readable.
//!
//! Integers are little-endian and fixed width, like the WAL's own framing.
//! Decoding never panics: truncated, trailing, unknown-version or otherwise
//! malformed input returns a [`CodecError`].
//!
//! ```text
//! entry      u8 version=1 | u8 kind | u64 term | u64 index | payload
//!            kind 0 blank:      (nothing)
//!            kind 1 normal:     the request bytes, to the end
//!            kind 2 membership: u32 n_configs, { u32 n_ids, u64 id * n_ids } * n_configs,
//!                               u32 n_nodes, { u64 id, str name, u32 n, str * n (peer URLs),
//!                                              u32 n, str * n (client URLs) } * n_nodes
//!            str = u32 length | UTF-8 bytes
//! vote       u8 version=1 | u64 term | u64 voted_for | u8 committed (0 or 1)
//! log id     u8 version=1 | u64 term | u64 index
//! committed  u8 version=1 | u8 0                            (none)
//!            u8 version=1 | u8 1 | u64 term | u64 index    (some)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use openraft::entry::RaftEntry;

use crate::types::{CommittedLeaderId, Entry, EntryPayload, LogId, Member, Membership, Request, Vote};

/// The only format version written so far.
pub const VERSION: u8 = 1;

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// Bytes before an entry's payload: version, kind, term, index.
pub const ENTRY_HEADER: usize = 18;

/// Bytes that do not decode as what they should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

impl CodecError {
    pub(crate) fn new(what: &'static str, reason: impl Into<String>) -> CodecError {
        CodecError { what, reason: reason.into() }
    }
}

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

// ---------------------------------------------------------------- encode

pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_u32_le(s.len() as u32);
    buf.put_slice(s.as_bytes());
}

fn put_strs(buf: &mut BytesMut, v: &[String]) {
    buf.put_u32_le(v.len() as u32);
    for s in v {
        put_str(buf, s);
    }
}

/// Bytes [`encode_entry`] will need, roughly (exact for blank and normal entries).
pub fn encoded_entry_len(entry: &Entry) -> usize {
    ENTRY_HEADER
        + match &entry.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(r) => r.0.len(),
            EntryPayload::Membership(_) => 64,
        }
}

/// Encodes a log entry.
pub fn encode_entry(entry: &Entry) -> Bytes {
    let mut buf = BytesMut::with_capacity(encoded_entry_len(entry));
    encode_entry_into(&mut buf, entry);
    buf.freeze()
}

/// Appends the encoding of a log entry to `buf` (the peer transport writes
/// entries straight into its frame this way).
pub fn encode_entry_into(buf: &mut BytesMut, entry: &Entry) {
    let kind = match &entry.payload {
        EntryPayload::Blank => KIND_BLANK,
        EntryPayload::Normal(_) => KIND_NORMAL,
        EntryPayload::Membership(_) => KIND_MEMBERSHIP,
    };
    buf.put_u8(VERSION);
    buf.put_u8(kind);
    buf.put_u64_le(entry.log_id.leader_id.term);
    buf.put_u64_le(entry.log_id.index);
    match &entry.payload {
        EntryPayload::Blank => {}
        EntryPayload::Normal(r) => buf.put_slice(&r.0),
        EntryPayload::Membership(m) => encode_membership(buf, m),
    }
}

pub(crate) fn encode_membership(buf: &mut BytesMut, m: &Membership) {
    let configs = m.get_joint_config();
    buf.put_u32_le(configs.len() as u32);
    for c in configs {
        buf.put_u32_le(c.len() as u32);
        for id in c {
            buf.put_u64_le(*id);
        }
    }
    let nodes: Vec<(&u64, &Member)> = m.nodes().collect();
    buf.put_u32_le(nodes.len() as u32);
    for (id, node) in nodes {
        buf.put_u64_le(*id);
        put_str(buf, &node.name);
        put_strs(buf, &node.peer_urls);
        put_strs(buf, &node.client_urls);
    }
}

/// Encodes the vote.
pub fn encode_vote(vote: &Vote) -> Bytes {
    let mut buf = BytesMut::with_capacity(18);
    buf.put_u8(VERSION);
    buf.put_u64_le(vote.leader_id.term);
    buf.put_u64_le(vote.leader_id.voted_for);
    buf.put_u8(vote.committed as u8);
    buf.freeze()
}

/// Encodes a log id (the purge point).
pub fn encode_log_id(log_id: &LogId) -> Bytes {
    let mut buf = BytesMut::with_capacity(17);
    buf.put_u8(VERSION);
    buf.put_u64_le(log_id.leader_id.term);
    buf.put_u64_le(log_id.index);
    buf.freeze()
}

/// Encodes the committed log id, which may be none.
pub fn encode_committed(committed: Option<&LogId>) -> Bytes {
    let mut buf = BytesMut::with_capacity(18);
    buf.put_u8(VERSION);
    match committed {
        None => buf.put_u8(0),
        Some(l) => {
            buf.put_u8(1);
            buf.put_u64_le(l.leader_id.term);
            buf.put_u64_le(l.index);
        }
    }
    buf.freeze()
}

// ---------------------------------------------------------------- decode

pub(crate) struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, buf: &'a [u8]) -> Reader<'a> {
        Reader { what, buf, pos: 0 }
    }

    pub(crate) fn err(&self, reason: impl Into<String>) -> CodecError {
        CodecError::new(self.what, reason)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(self.err(format!(
                "truncated at offset {} (need {n} bytes, {} left)",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items each at least `min_size` bytes long, checked
    /// against what is left so a corrupt count cannot make us allocate.
    pub(crate) fn count(&mut self, min_size: usize) -> Result<usize, CodecError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size) > self.remaining() {
            return Err(self.err(format!("count {n} at offset {} exceeds the remaining bytes", self.pos - 4)));
        }
        Ok(n)
    }

    pub(crate) fn str(&mut self) -> Result<String, CodecError> {
        let n = self.count(1)?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("invalid UTF-8 before offset {}", self.pos)))
    }

    pub(crate) fn strs(&mut self) -> Result<Vec<String>, CodecError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.str()).collect()
    }

    pub(crate) fn version(&mut self) -> Result<(), CodecError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(self.err(format!("unknown format version {v}"))),
        }
    }

    pub(crate) fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!("invalid flag byte {b} at offset {}", self.pos - 1))),
        }
    }

    pub(crate) fn end(&self) -> Result<(), CodecError> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{} trailing bytes at offset {}", self.remaining(), self.pos)));
        }
        Ok(())
    }
}

pub(crate) fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term), index)
}

/// Decodes only the log id of an encoded entry (its fixed-size header).
pub fn decode_entry_log_id(data: &[u8]) -> Result<LogId, CodecError> {
    let mut r = Reader::new("log entry", data);
    r.version()?;
    r.u8()?;
    let term = r.u64()?;
    let index = r.u64()?;
    Ok(log_id(term, index))
}

/// Decodes a log entry. A normal entry's request shares `data`'s buffer.
pub fn decode_entry(data: &Bytes) -> Result<Entry, CodecError> {
    let mut r = Reader::new("log entry", data);
    r.version()?;
    let kind = r.u8()?;
    let term = r.u64()?;
    let index = r.u64()?;
    let payload = match kind {
        KIND_BLANK => {
            r.end()?;
            EntryPayload::Blank
        }
        KIND_NORMAL => EntryPayload::Normal(Request(data.slice(ENTRY_HEADER..))),
        KIND_MEMBERSHIP => {
            let m = decode_membership(&mut r)?;
            r.end()?;
            EntryPayload::Membership(m)
        }
        k => return Err(r.err(format!("unknown payload kind {k}"))),
    };
    Ok(Entry::new(log_id(term, index), payload))
}

pub(crate) fn decode_membership(r: &mut Reader<'_>) -> Result<Membership, CodecError> {
    let n_configs = r.count(4)?;
    let mut configs = Vec::with_capacity(n_configs);
    for _ in 0..n_configs {
        let n = r.count(8)?;
        let mut set = BTreeSet::new();
        for _ in 0..n {
            set.insert(r.u64()?);
        }
        configs.push(set);
    }
    let n_nodes = r.count(8 + 4 + 4 + 4)?;
    let mut nodes = BTreeMap::new();
    for _ in 0..n_nodes {
        let id = r.u64()?;
        let name = r.str()?;
        let peer_urls = r.strs()?;
        let client_urls = r.strs()?;
        if nodes.insert(id, Member { name, peer_urls, client_urls }).is_some() {
            return Err(r.err(format!("node {id} appears twice in a membership")));
        }
    }
    Membership::new(configs, nodes).map_err(|e| r.err(format!("invalid membership: {e}")))
}

/// Encodes what a state machine must remember about raft: its last
/// applied log id and the membership in force with the log id that set it.
pub fn encode_applied_state(applied: Option<&LogId>, membership_log_id: Option<&LogId>, m: &Membership) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(VERSION);
    for l in [applied, membership_log_id] {
        match l {
            None => buf.put_u8(0),
            Some(l) => {
                buf.put_u8(1);
                buf.put_u64_le(l.leader_id.term);
                buf.put_u64_le(l.index);
            }
        }
    }
    encode_membership(&mut buf, m);
    buf.freeze()
}

/// The state machine's raft bookkeeping: (applied, membership log id, membership).
pub type AppliedState = (Option<LogId>, Option<LogId>, Membership);

/// Decodes [`encode_applied_state`]'s output.
pub fn decode_applied_state(data: &[u8]) -> Result<AppliedState, CodecError> {
    let mut r = Reader::new("applied state", data);
    r.version()?;
    let mut ids = [None, None];
    for id in &mut ids {
        if r.bool()? {
            let term = r.u64()?;
            let index = r.u64()?;
            *id = Some(log_id(term, index));
        }
    }
    let m = decode_membership(&mut r)?;
    r.end()?;
    Ok((ids[0], ids[1], m))
}

/// Decodes the vote.
pub fn decode_vote(data: &[u8]) -> Result<Vote, CodecError> {
    let mut r = Reader::new("vote", data);
    r.version()?;
    let term = r.u64()?;
    let voted_for = r.u64()?;
    let committed = r.bool()?;
    r.end()?;
    Ok(if committed { Vote::new_committed(term, voted_for) } else { Vote::new(term, voted_for) })
}

/// Decodes a log id (the purge point).
pub fn decode_log_id(data: &[u8]) -> Result<LogId, CodecError> {
    let mut r = Reader::new("log id", data);
    r.version()?;
    let term = r.u64()?;
    let index = r.u64()?;
    r.end()?;
    Ok(log_id(term, index))
}

/// Decodes the committed log id.
pub fn decode_committed(data: &[u8]) -> Result<Option<LogId>, CodecError> {
    let mut r = Reader::new("committed log id", data);
    r.version()?;
    let out = if r.bool()? {
        let term = r.u64()?;
        let index = r.u64()?;
        Some(log_id(term, index))
    } else {
        None
    };
    r.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            peer_urls: vec![format!("http://{name}:2380")],
            client_urls: vec![format!("http://{name}:2379"), "unix://x".into()],
        }
    }

    fn entries() -> Vec<Entry> {
        let m = Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([(1, member("a")), (2, member("b")), (3, member("c")), (9, Member::default())]),
        )
        .unwrap();
        vec![
            Entry::new(log_id(0, 0), EntryPayload::Blank),
            Entry::new(log_id(3, 7), EntryPayload::Normal(Request(Bytes::from_static(b"put k v")))),
            Entry::new(log_id(3, 8), EntryPayload::Normal(Request(Bytes::new()))),
            Entry::new(log_id(u64::MAX, u64::MAX), EntryPayload::Membership(m)),
        ]
    }

    #[test]
    fn entries_round_trip() {
        for e in entries() {
            let b = encode_entry(&e);
            assert_eq!(decode_entry(&b).unwrap(), e);
            assert_eq!(decode_entry_log_id(&b).unwrap(), e.log_id);
        }
    }

    #[test]
    fn normal_payload_is_not_copied() {
        let e = &entries()[1];
        let b = encode_entry(e);
        let EntryPayload::Normal(r) = decode_entry(&b).unwrap().payload else { panic!() };
        assert_eq!(r.0.as_ptr(), b[ENTRY_HEADER..].as_ptr());
    }

    #[test]
    fn hard_state_round_trips() {
        for v in [
            Vote::new(0, 0),
            Vote::new_committed(5, 3),
            Vote::new(u64::MAX, u64::MAX),
        ] {
            assert_eq!(decode_vote(&encode_vote(&v)).unwrap(), v);
        }
        let l = log_id(4, 100);
        assert_eq!(decode_log_id(&encode_log_id(&l)).unwrap(), l);
        assert_eq!(decode_committed(&encode_committed(Some(&l))).unwrap(), Some(l));
        assert_eq!(decode_committed(&encode_committed(None)).unwrap(), None);
        let EntryPayload::Membership(m) = entries()[3].payload.clone() else { panic!() };
        let b = encode_applied_state(Some(&l), None, &m);
        assert_eq!(decode_applied_state(&b).unwrap(), (Some(l), None, m.clone()));
        for n in 0..b.len() {
            assert!(decode_applied_state(&b[..n]).is_err());
        }
    }

    /// Every prefix and every single-byte corruption of every encoding
    /// decodes to an error or a value, never a panic.
    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut blobs: Vec<Bytes> = entries().iter().map(encode_entry).collect();
        blobs.push(encode_vote(&Vote::new_committed(5, 3)));
        blobs.push(encode_log_id(&log_id(1, 2)));
        blobs.push(encode_committed(Some(&log_id(1, 2))));
        for b in &blobs {
            for n in 0..b.len() {
                let p = b.slice(..n);
                let _ = decode_entry(&p);
                let _ = decode_vote(&p);
                let _ = decode_log_id(&p);
                let _ = decode_committed(&p);
                let _ = decode_entry_log_id(&p);
            }
            for i in 0..b.len() {
                for x in [0u8, 1, 2, 0x7f, 0xff] {
                    let mut v = b.to_vec();
                    v[i] = x;
                    let p = Bytes::from(v);
                    let _ = decode_entry(&p);
                    let _ = decode_vote(&p);
                    let _ = decode_committed(&p);
                }
            }
        }
        assert!(decode_entry(&Bytes::from_static(&[2, 0, 0])).unwrap_err().reason.contains("version"));
        let mut huge = vec![1, 2];
        huge.extend_from_slice(&[0; 16]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_entry(&Bytes::from(huge)).is_err());
        let mut trailing = encode_vote(&Vote::new(1, 1)).to_vec();
        trailing.push(0);
        assert!(decode_vote(&trailing).is_err());
    }
}

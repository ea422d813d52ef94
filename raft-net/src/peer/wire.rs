//! The peer protocol's bytes: the connection handshake, frames, and the
//! encodings of openraft's RPC messages. Layout (integers little-endian):
//!
//! ```text
//! hello      "ironcdP1" | u8 kind (1 rpc, 2 append stream) | u64 cluster id | u64 from member | u64 to member
//! hello ack  u8 status (0 accepted, 1 refused) | str reason
//! frame      u32 body length | u32 crc32(body) | body
//! body       u8 type | u64 request id | payload
//! ```
//! Request types: see [`Msg`]. A response frame carries the request's id and
//! type [`RESP_OK`] (payload: the answer) or [`RESP_ERR`] (payload: a
//! message). On an append stream, requests and results flow in order and the
//! id is a sequence number.
//!
//! Decoding never panics: a bad CRC, an oversized frame or a malformed
//! payload is an error that closes the connection (the peer is logged).

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::storage::SnapshotMeta;
use openraft::StoredMembership;

use crate::codec::{self, CodecError, Reader};
use crate::types::{CommittedLeaderId, LogId, Member, TypeConfig, Vote};

pub const MAGIC: &[u8; 8] = b"ironcdP1";
pub const HELLO_LEN: usize = 8 + 1 + 24;
/// The largest frame accepted. openraft's append batches are bounded by
/// `max_payload_entries` × `--max-request-bytes`, well below this.
pub const MAX_FRAME: usize = 256 << 20;

pub const KIND_RPC: u8 = 1;
pub const KIND_STREAM: u8 = 2;

pub const RESP_OK: u8 = 0;
pub const RESP_ERR: u8 = 1;

/// Request types of an rpc connection. Types from [`Msg::APP_FIRST`] up are
/// the server's own (forwarded proposals, read index, leases, members).
pub struct Msg;
impl Msg {
    pub const VOTE: u8 = 2;
    pub const PRE_VOTE: u8 = 3;
    pub const APPEND: u8 = 4;
    pub const TRANSFER_LEADER: u8 = 5;
    pub const SNAPSHOT_BEGIN: u8 = 6;
    pub const SNAPSHOT_CHUNK: u8 = 7;
    pub const SNAPSHOT_END: u8 = 8;
    pub const APP_FIRST: u8 = 32;
}

/// The first bytes of every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub kind: u8,
    pub cluster_id: u64,
    pub from: u64,
    pub to: u64,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8] = self.kind;
        b[9..17].copy_from_slice(&self.cluster_id.to_le_bytes());
        b[17..25].copy_from_slice(&self.from.to_le_bytes());
        b[25..33].copy_from_slice(&self.to.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        if &b[..8] != MAGIC {
            return Err(format!("not an ironcd peer (first bytes {:02x?})", &b[..8]));
        }
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().unwrap_or_default());
        Ok(Hello { kind: b[8], cluster_id: u(9..17), from: u(17..25), to: u(25..33) })
    }
}

/// One decoded frame body.
#[derive(Debug)]
pub struct Frame {
    pub ty: u8,
    pub id: u64,
    pub payload: Bytes,
}

/// Appends one frame to `out`.
pub fn put_frame(out: &mut BytesMut, ty: u8, id: u64, payload: &[u8]) {
    let len = 9 + payload.len();
    let mut h = crc32fast::Hasher::new();
    h.update(&[ty]);
    h.update(&id.to_le_bytes());
    h.update(payload);
    out.reserve(8 + len);
    out.put_u32_le(len as u32);
    out.put_u32_le(h.finalize());
    out.put_u8(ty);
    out.put_u64_le(id);
    out.put_slice(payload);
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed mid-frame"))
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
    if !(9..=MAX_FRAME).contains(&len) {
        return Err(bad(format!("frame length {len} out of range")));
    }
    let mut body = BytesMut::zeroed(len);
    r.read_exact(&mut body).await?;
    if crc32fast::hash(&body) != crc {
        return Err(bad("frame checksum mismatch".into()));
    }
    let mut body = body.freeze();
    let ty = body[0];
    let id = u64::from_le_bytes(body[1..9].try_into().unwrap_or_default());
    let payload = body.split_off(9);
    Ok(Some(Frame { ty, id, payload }))
}

pub fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl From<CodecError> for WireError {
    fn from(e: CodecError) -> Self {
        WireError(e.to_string())
    }
}

/// A payload that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed peer message: {0}")]
pub struct WireError(pub String);

pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b).await?;
    w.flush().await
}

// ------------------------------------------------------------ primitives

fn put_vote(b: &mut BytesMut, v: &Vote) {
    b.put_u64_le(v.leader_id.term);
    b.put_u64_le(v.leader_id.voted_for);
    b.put_u8(v.committed as u8);
}

fn get_vote(r: &mut Reader<'_>) -> Result<Vote, CodecError> {
    let term = r.u64()?;
    let voted_for = r.u64()?;
    Ok(if r.bool()? { Vote::new_committed(term, voted_for) } else { Vote::new(term, voted_for) })
}

fn put_log_id(b: &mut BytesMut, l: &LogId) {
    b.put_u64_le(l.leader_id.term);
    b.put_u64_le(l.index);
}

fn get_log_id(r: &mut Reader<'_>) -> Result<LogId, CodecError> {
    let term = r.u64()?;
    let index = r.u64()?;
    Ok(codec::log_id(term, index))
}

fn put_opt_log_id(b: &mut BytesMut, l: Option<&LogId>) {
    match l {
        None => b.put_u8(0),
        Some(l) => {
            b.put_u8(1);
            put_log_id(b, l);
        }
    }
}

fn get_opt_log_id(r: &mut Reader<'_>) -> Result<Option<LogId>, CodecError> {
    if r.bool()? {
        Ok(Some(get_log_id(r)?))
    } else {
        Ok(None)
    }
}

// ------------------------------------------------------------ messages

pub fn encode_vote_request(v: &VoteRequest<TypeConfig>) -> Bytes {
    let mut b = BytesMut::with_capacity(40);
    put_vote(&mut b, &v.vote);
    put_opt_log_id(&mut b, v.last_log_id.as_ref());
    b.put_u8(v.leadership_transfer as u8);
    b.freeze()
}

pub fn decode_vote_request(p: &[u8]) -> Result<VoteRequest<TypeConfig>, WireError> {
    let mut r = Reader::new("vote request", p);
    let vote = get_vote(&mut r)?;
    let last = get_opt_log_id(&mut r)?;
    let transfer = r.bool()?;
    r.end()?;
    let mut req = VoteRequest::new(vote, last);
    req.leadership_transfer = transfer;
    Ok(req)
}

pub fn encode_vote_response(v: &VoteResponse<TypeConfig>) -> Bytes {
    let mut b = BytesMut::with_capacity(40);
    put_vote(&mut b, &v.vote);
    b.put_u8(v.vote_granted as u8);
    put_opt_log_id(&mut b, v.last_log_id.as_ref());
    b.freeze()
}

pub fn decode_vote_response(p: &[u8]) -> Result<VoteResponse<TypeConfig>, WireError> {
    let mut r = Reader::new("vote response", p);
    let vote = get_vote(&mut r)?;
    let granted = r.bool()?;
    let last = get_opt_log_id(&mut r)?;
    r.end()?;
    Ok(VoteResponse::new(vote, last, granted))
}

pub fn encode_append_request(a: &AppendEntriesRequest<TypeConfig>) -> Bytes {
    let size: usize = a.entries.iter().map(|e| 4 + codec::encoded_entry_len(e)).sum();
    let mut b = BytesMut::with_capacity(64 + size);
    put_vote(&mut b, &a.vote);
    put_opt_log_id(&mut b, a.prev_log_id.as_ref());
    put_opt_log_id(&mut b, a.leader_commit.as_ref());
    b.put_u32_le(a.entries.len() as u32);
    for e in &a.entries {
        // Length prefix patched after encoding the entry in place.
        let at = b.len();
        b.put_u32_le(0);
        codec::encode_entry_into(&mut b, e);
        let len = (b.len() - at - 4) as u32;
        b[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    b.freeze()
}

/// Decodes an append request; entry payloads slice `p` (no copy).
pub fn decode_append_request(p: &Bytes) -> Result<AppendEntriesRequest<TypeConfig>, WireError> {
    let mut r = Reader::new("append request", p);
    let vote = get_vote(&mut r)?;
    let prev_log_id = get_opt_log_id(&mut r)?;
    let leader_commit = get_opt_log_id(&mut r)?;
    let n = r.count(4 + codec::ENTRY_HEADER)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.u32()? as usize;
        let start = p.len() - r.remaining();
        r.take(len)?;
        entries.push(codec::decode_entry(&p.slice(start..start + len))?);
    }
    r.end()?;
    Ok(AppendEntriesRequest { vote, prev_log_id, entries, leader_commit })
}

pub fn encode_append_response(a: &AppendEntriesResponse<TypeConfig>) -> Bytes {
    let mut b = BytesMut::with_capacity(24);
    match a {
        AppendEntriesResponse::Success => b.put_u8(0),
        AppendEntriesResponse::PartialSuccess(l) => {
            b.put_u8(1);
            put_opt_log_id(&mut b, l.as_ref());
        }
        AppendEntriesResponse::Conflict => b.put_u8(2),
        AppendEntriesResponse::HigherVote(v) => {
            b.put_u8(3);
            put_vote(&mut b, v);
        }
    }
    b.freeze()
}

pub fn decode_append_response(p: &[u8]) -> Result<AppendEntriesResponse<TypeConfig>, WireError> {
    let mut r = Reader::new("append response", p);
    let out = match r.u8()? {
        0 => AppendEntriesResponse::Success,
        1 => AppendEntriesResponse::PartialSuccess(get_opt_log_id(&mut r)?),
        2 => AppendEntriesResponse::Conflict,
        3 => AppendEntriesResponse::HigherVote(get_vote(&mut r)?),
        t => return Err(WireError(format!("unknown append response tag {t}"))),
    };
    r.end()?;
    Ok(out)
}

/// One result of an append stream: `Ok(Ok(matched))`, a raft rejection,
/// or (`Err`) a fatal error of the follower, which ends the stream.
pub type StreamItem = Result<Result<Option<LogId>, StreamAppendError<TypeConfig>>, String>;

pub fn encode_stream_item(item: &StreamItem) -> Bytes {
    let mut b = BytesMut::with_capacity(24);
    match item {
        Ok(Ok(l)) => {
            b.put_u8(0);
            put_opt_log_id(&mut b, l.as_ref());
        }
        Ok(Err(StreamAppendError::Conflict(l))) => {
            b.put_u8(1);
            put_log_id(&mut b, l);
        }
        Ok(Err(StreamAppendError::HigherVote(v))) => {
            b.put_u8(2);
            put_vote(&mut b, v);
        }
        Err(msg) => {
            b.put_u8(3);
            codec::put_str(&mut b, msg);
        }
    }
    b.freeze()
}

pub fn decode_stream_item(p: &[u8]) -> Result<StreamItem, WireError> {
    let mut r = Reader::new("append stream result", p);
    let out = match r.u8()? {
        0 => Ok(Ok(get_opt_log_id(&mut r)?)),
        1 => Ok(Err(StreamAppendError::Conflict(get_log_id(&mut r)?))),
        2 => Ok(Err(StreamAppendError::HigherVote(get_vote(&mut r)?))),
        3 => Err(r.str()?),
        t => return Err(WireError(format!("unknown stream result tag {t}"))),
    };
    r.end()?;
    Ok(out)
}

pub fn encode_transfer_leader(t: &TransferLeaderRequest<TypeConfig>) -> Bytes {
    let mut b = BytesMut::with_capacity(48);
    put_vote(&mut b, t.from_leader());
    b.put_u64_le(*t.to_node_id());
    put_opt_log_id(&mut b, t.last_log_id());
    b.freeze()
}

pub fn decode_transfer_leader(p: &[u8]) -> Result<TransferLeaderRequest<TypeConfig>, WireError> {
    let mut r = Reader::new("transfer leader request", p);
    let vote = get_vote(&mut r)?;
    let to = r.u64()?;
    let last = get_opt_log_id(&mut r)?;
    r.end()?;
    Ok(TransferLeaderRequest::new(vote, to, last))
}

pub type Meta = SnapshotMeta<CommittedLeaderId, u64, Member>;

/// Snapshot begin: the leader's vote and the snapshot's meta.
pub fn encode_snapshot_begin(vote: &Vote, meta: &Meta) -> Bytes {
    let mut b = BytesMut::with_capacity(256);
    put_vote(&mut b, vote);
    put_opt_log_id(&mut b, meta.last_log_id.as_ref());
    put_opt_log_id(&mut b, meta.last_membership.log_id().as_ref());
    codec::encode_membership(&mut b, meta.last_membership.membership());
    b.freeze()
}

pub fn decode_snapshot_begin(p: &[u8]) -> Result<(Vote, Meta), WireError> {
    let mut r = Reader::new("snapshot begin", p);
    let vote = get_vote(&mut r)?;
    let last_log_id = get_opt_log_id(&mut r)?;
    let mlog = get_opt_log_id(&mut r)?;
    let m = codec::decode_membership(&mut r)?;
    r.end()?;
    Ok((vote, Meta { last_log_id, last_membership: StoredMembership::new(mlog, m) }))
}

pub fn encode_snapshot_response(s: &SnapshotResponse<TypeConfig>) -> Bytes {
    let mut b = BytesMut::with_capacity(20);
    put_vote(&mut b, &s.vote);
    b.freeze()
}

pub fn decode_snapshot_response(p: &[u8]) -> Result<SnapshotResponse<TypeConfig>, WireError> {
    let mut r = Reader::new("snapshot response", p);
    let v = get_vote(&mut r)?;
    r.end()?;
    Ok(SnapshotResponse::new(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, Request};
    use std::collections::{BTreeMap, BTreeSet};

    fn lid(t: u64, i: u64) -> LogId {
        codec::log_id(t, i)
    }

    #[test]
    fn messages_round_trip() {
        let mut v = VoteRequest::new(Vote::new(3, 7), Some(lid(2, 10)));
        v.leadership_transfer = true;
        assert_eq!(decode_vote_request(&encode_vote_request(&v)).unwrap(), v);
        let vr = VoteResponse::new(Vote::new_committed(3, 7), None, true);
        assert_eq!(decode_vote_response(&encode_vote_response(&vr)).unwrap(), vr);

        let m = crate::Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([(1, Member::default()), (2, Member { name: "b".into(), ..Default::default() })]),
        )
        .unwrap();
        let entries = vec![
            Entry { log_id: lid(1, 1), payload: crate::EntryPayload::Blank },
            Entry { log_id: lid(1, 2), payload: crate::EntryPayload::Normal(Request(Bytes::from_static(b"xyz"))) },
            Entry { log_id: lid(1, 3), payload: crate::EntryPayload::Membership(m.clone()) },
        ];
        let a = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(lid(1, 0)),
            entries,
            leader_commit: Some(lid(1, 1)),
        };
        let enc = encode_append_request(&a);
        let dec = decode_append_request(&enc).unwrap();
        assert_eq!(format!("{dec:?}"), format!("{a:?}"));
        for resp in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(lid(1, 2))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(9, 2)),
        ] {
            assert_eq!(decode_append_response(&encode_append_response(&resp)).unwrap(), resp);
        }
        for item in [
            Ok(Ok(Some(lid(4, 4)))),
            Ok(Err(StreamAppendError::Conflict(lid(1, 1)))),
            Ok(Err(StreamAppendError::HigherVote(Vote::new(5, 5)))),
            Err("stopped".to_string()),
        ] {
            let enc = encode_stream_item(&item);
            assert_eq!(format!("{:?}", decode_stream_item(&enc).unwrap()), format!("{item:?}"));
        }
        let meta = Meta { last_log_id: Some(lid(2, 9)), last_membership: StoredMembership::new(Some(lid(1, 3)), m) };
        let (v2, meta2) = decode_snapshot_begin(&encode_snapshot_begin(&Vote::new(2, 1), &meta)).unwrap();
        assert_eq!(v2, Vote::new(2, 1));
        assert_eq!(meta2, meta);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let b = Bytes::from(junk.clone());
            let _ = decode_vote_request(&junk);
            let _ = decode_append_request(&b);
            let _ = decode_append_response(&junk);
            let _ = decode_stream_item(&junk);
            let _ = decode_snapshot_begin(&junk);
            let _ = decode_transfer_leader(&junk);
        }
        let mut h = [0u8; HELLO_LEN];
        h[..8].copy_from_slice(b"GET / HT");
        assert!(Hello::decode(&h).is_err());
    }

    #[test]
    fn frames_round_trip_and_reject_corruption() {
        let mut out = BytesMut::new();
        put_frame(&mut out, 4, 99, b"hello");
        let good = out.clone().freeze();
        let f = glommio::LocalExecutor::default().run(async move {
            let mut c = futures_lite::io::Cursor::new(good.to_vec());
            read_frame(&mut c).await
        });
        let f = f.unwrap().unwrap();
        assert_eq!((f.ty, f.id, &f.payload[..]), (4, 99, &b"hello"[..]));
        let mut bad_crc = out.to_vec();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        let r = glommio::LocalExecutor::default().run(async move {
            let mut c = futures_lite::io::Cursor::new(bad_crc);
            read_frame(&mut c).await
        });
        assert!(r.is_err());
        let mut huge = Vec::new();
        huge.extend_from_slice(&(u32::MAX).to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        let r = glommio::LocalExecutor::default().run(async move {
            let mut c = futures_lite::io::Cursor::new(huge);
            read_frame(&mut c).await
        });
        assert!(r.is_err());
    }
}

//! The WAL's on-disk format: segment header, batch header, records.
//!
//! Byte layouts and the crash argument are in `docs/wal.md`; this module is the
//! only code that encodes or decodes them. Every multi-byte field is
//! little-endian and fixed-width. Decoding never panics on arbitrary bytes.
//!
//! ```text
//! segment = header block | batch* | (zeros or stale bytes)
//! batch   = batch header (24 B, at a block boundary) | record* | padding to the block
//! record  = { len u32 | type u8 | 0u8 ×3 | crc u32 } payload[len]
//! ```
//! Every checksum is CRC-32 (crc32fast) seeded with the segment's random salt,
//! so bytes left over from an earlier use of a recycled file never verify.

/// Alignment of every write and of every batch start. 4 KiB is the logical
/// block size of every disk we target, and the O_DIRECT alignment unit.
pub const BLOCK: u64 = 4096;

/// "ironcdWL": distinct from etcd's WAL (which starts with a protobuf record).
pub const SEGMENT_MAGIC: [u8; 8] = *b"ironcdWL";
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header that carry data (the rest of block 0 is zero).
pub const SEGMENT_HEADER_LEN: usize = 60;

/// "IRBT" as a little-endian u32.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"IRBT");
pub const BATCH_HEADER_LEN: usize = 24;
pub const RECORD_HEADER_LEN: usize = 12;

/// Record types. Zero is never a valid type, so zeroed space never decodes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// `index u64 | data`: one raft log entry.
    Entry = 1,
    /// Opaque vote (raft hard state).
    Vote = 2,
    /// Opaque committed log id.
    Committed = 3,
    /// `index u64`: entries with index ≥ index are removed.
    Truncate = 4,
    /// `index u64 | opaque log id`: entries with index ≤ index are purged.
    Purge = 5,
}

impl RecordType {
    pub fn from_u8(v: u8) -> Option<RecordType> {
        Some(match v {
            1 => RecordType::Entry,
            2 => RecordType::Vote,
            3 => RecordType::Committed,
            4 => RecordType::Truncate,
            5 => RecordType::Purge,
            _ => return None,
        })
    }
}

pub fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK) * BLOCK
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn salted_crc(salt: u64, parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Block 0 of every segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment in the log; consecutive, never reused.
    pub seq: u64,
    /// The log's last index + 1 when the segment was started.
    pub first_index: u64,
    /// Sequence number of the first batch in this segment; equals the number
    /// of batches written before it, which lets recovery prove that a sealed
    /// segment lost nothing at its end.
    pub start_batch: u64,
    /// Random per use of the file; seeds every checksum in it.
    pub salt: u64,
    pub segment_size: u64,
}

impl SegmentHeader {
    pub fn encode(&self, out: &mut [u8]) {
        out[..BLOCK as usize].fill(0);
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_index.to_le_bytes());
        out[32..40].copy_from_slice(&self.start_batch.to_le_bytes());
        out[40..48].copy_from_slice(&self.salt.to_le_bytes());
        out[48..56].copy_from_slice(&self.segment_size.to_le_bytes());
        let crc = crc32fast::hash(&out[0..56]);
        out[56..60].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        let head = b.get(..SEGMENT_HEADER_LEN).ok_or("file shorter than a segment header")?;
        if head[0..8] != SEGMENT_MAGIC {
            return Err("bad magic: not an ironcd WAL segment".into());
        }
        let crc = u32_at(head, 56).ok_or("short header")?;
        if crc32fast::hash(&head[0..56]) != crc {
            return Err("segment header checksum mismatch".into());
        }
        let version = u32_at(head, 8).ok_or("short header")?;
        if version != FORMAT_VERSION {
            return Err(format!("unsupported WAL format version {version} (this build reads {FORMAT_VERSION})"));
        }
        let block = u32_at(head, 12).ok_or("short header")?;
        if u64::from(block) != BLOCK {
            return Err(format!("unsupported WAL block size {block}"));
        }
        Ok(SegmentHeader {
            seq: u64_at(head, 16).ok_or("short header")?,
            first_index: u64_at(head, 24).ok_or("short header")?,
            start_batch: u64_at(head, 32).ok_or("short header")?,
            salt: u64_at(head, 40).ok_or("short header")?,
            segment_size: u64_at(head, 48).ok_or("short header")?,
        })
    }
}

/// The header that starts every batch (one write + one `fdatasync`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Bytes from the batch start through its last record, padding excluded.
    pub len: u32,
    pub seq: u64,
    pub records: u32,
}

impl BatchHeader {
    pub fn encode(&self, salt: u64, out: &mut [u8]) {
        out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.records.to_le_bytes());
        let crc = salted_crc(salt, &[&out[0..20]]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
    }

    /// `None` unless `b` starts with a header written under `salt`.
    pub fn decode(salt: u64, b: &[u8]) -> Option<BatchHeader> {
        let head = b.get(..BATCH_HEADER_LEN)?;
        if u32_at(head, 0)? != BATCH_MAGIC || salted_crc(salt, &[&head[0..20]]) != u32_at(head, 20)? {
            return None;
        }
        let h = BatchHeader { len: u32_at(head, 4)?, seq: u64_at(head, 8)?, records: u32_at(head, 16)? };
        (h.len as usize >= BATCH_HEADER_LEN).then_some(h)
    }
}

/// Encoded size of a record with a payload of `payload` bytes.
pub fn record_len(payload: usize) -> usize {
    RECORD_HEADER_LEN + payload
}

/// Writes one record whose payload is the concatenation of `parts` at the
/// start of `out`; returns the bytes written. `out` must be large enough.
pub fn encode_record(salt: u64, ty: RecordType, parts: &[&[u8]], out: &mut [u8]) -> usize {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4] = ty as u8;
    out[5..8].fill(0);
    let mut at = RECORD_HEADER_LEN;
    for p in parts {
        out[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    let crc = salted_crc(salt, &[&out[0..8], &out[RECORD_HEADER_LEN..at]]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    at
}

/// One decoded record, borrowing its payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Entry { index: u64, data: &'a [u8] },
    Vote(&'a [u8]),
    Committed(&'a [u8]),
    Truncate { index: u64 },
    Purge { index: u64, log_id: &'a [u8] },
}

/// Decodes the record at the start of `b`; returns it and its encoded length,
/// or why it is not a valid record.
pub fn decode_record(salt: u64, b: &[u8]) -> Result<(Record<'_>, usize), &'static str> {
    let head = b.get(..RECORD_HEADER_LEN).ok_or("record header runs past the batch")?;
    let len = u32_at(head, 0).ok_or("short record header")? as usize;
    let payload = b.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len).ok_or("record runs past the batch")?;
    if salted_crc(salt, &[&head[0..8], payload]) != u32_at(head, 8).ok_or("short record header")? {
        return Err("record checksum mismatch");
    }
    if head[5..8] != [0, 0, 0] {
        return Err("reserved record bytes are not zero");
    }
    let ty = RecordType::from_u8(head[4]).ok_or("unknown record type")?;
    let rec = match ty {
        RecordType::Entry => {
            Record::Entry { index: u64_at(payload, 0).ok_or("short entry record")?, data: &payload[8..] }
        }
        RecordType::Vote => Record::Vote(payload),
        RecordType::Committed => Record::Committed(payload),
        RecordType::Truncate => {
            if len != 8 {
                return Err("truncate record of the wrong length");
            }
            Record::Truncate { index: u64_at(payload, 0).ok_or("short truncate record")? }
        }
        RecordType::Purge => {
            Record::Purge { index: u64_at(payload, 0).ok_or("short purge record")?, log_id: &payload[8..] }
        }
    };
    Ok((rec, RECORD_HEADER_LEN + len))
}

/// Decodes every record of the batch starting at `b[0]` (whose header is
/// `h`). On failure returns the offset within `b` of the first bad record.
pub fn decode_batch<'a>(salt: u64, h: &BatchHeader, b: &'a [u8]) -> Result<Vec<Record<'a>>, (usize, &'static str)> {
    let body = b.get(..h.len as usize).ok_or((0, "batch runs past the end of the segment"))?;
    let mut at = BATCH_HEADER_LEN;
    let mut out = Vec::with_capacity(h.records.min(4096) as usize);
    for _ in 0..h.records {
        let (rec, n) = decode_record(salt, &body[at..]).map_err(|e| (at, e))?;
        out.push(rec);
        at += n;
    }
    if at != body.len() {
        return Err((at, "batch length disagrees with its records"));
    }
    Ok(out)
}

/// File name of segment `seq` whose first index is `first_index`
/// (etcd's `%016x-%016x.wal` convention).
pub fn segment_file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// Parses a segment file name into `(seq, first_index)`.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_salt() {
        let mut buf = vec![0u8; 128];
        let n = encode_record(7, RecordType::Entry, &[&5u64.to_le_bytes(), b"hello"], &mut buf);
        assert_eq!(n, RECORD_HEADER_LEN + 13);
        let (rec, m) = decode_record(7, &buf).unwrap();
        assert_eq!(m, n);
        assert_eq!(rec, Record::Entry { index: 5, data: b"hello" });
        assert_eq!(decode_record(8, &buf).unwrap_err(), "record checksum mismatch");
        buf[14] ^= 1;
        assert!(decode_record(7, &buf).is_err());
    }

    #[test]
    fn zeroes_never_decode() {
        let zero = vec![0u8; 4096];
        assert!(BatchHeader::decode(0, &zero).is_none());
        assert!(decode_record(0, &zero).is_err());
        assert!(SegmentHeader::decode(&zero).is_err());
    }

    #[test]
    fn headers_round_trip() {
        let h = SegmentHeader { seq: 3, first_index: 99, start_batch: 17, salt: 0xdead, segment_size: 1 << 20 };
        let mut b = vec![0u8; BLOCK as usize];
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        let bh = BatchHeader { len: 100, seq: 17, records: 2 };
        bh.encode(0xdead, &mut b);
        assert_eq!(BatchHeader::decode(0xdead, &b), Some(bh));
        assert_eq!(BatchHeader::decode(0xbeef, &b), None);
    }

    #[test]
    fn file_names() {
        let n = segment_file_name(1, 0x20);
        assert_eq!(n, "0000000000000001-0000000000000020.wal");
        assert_eq!(parse_segment_file_name(&n), Some((1, 0x20)));
        assert_eq!(parse_segment_file_name("x.wal"), None);
    }
}

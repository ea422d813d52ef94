//! Opening a WAL directory: verify every segment, replay every record into a
//! [`LogState`], and find where the writer resumes. The rules (torn tail vs
//! corruption) are argued in `docs/wal.md`, "Recovery".

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::format::{
    align_up, decode_batch, parse_segment_file_name, segment_file_name, BatchHeader, Record, SegmentHeader, BLOCK,
    BATCH_HEADER_LEN,
};
use super::io::WalIo;
use super::state::LogState;
use super::WalError;

/// A segment the WAL knows about.
#[derive(Clone, Debug)]
pub(crate) struct SegmentInfo {
    pub seq: u64,
    pub first_index: u64,
    pub size: u64,
    pub path: PathBuf,
}

/// Where the writer resumes.
pub(crate) struct Tail {
    pub salt: u64,
    /// Offset of the next batch in the last segment.
    pub pos: u64,
    /// Sequence number of the next batch.
    pub next_batch: u64,
}

pub(crate) struct Recovered {
    pub state: LogState,
    /// Every live segment in order; the last one is written next.
    pub segments: Vec<SegmentInfo>,
    /// `None` when the directory held no segment.
    pub tail: Option<Tail>,
}

/// How the scan of one segment ended.
struct ScanEnd {
    pos: u64,
    next_batch: u64,
    /// Offset and reason of a discarded torn batch.
    torn: Option<(u64, String)>,
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corrupt { file: path.to_path_buf(), offset, reason: reason.into() }
}

fn apply(state: &mut LogState, rec: Record<'_>) -> Result<(), String> {
    match rec {
        Record::Entry { index, data } => state.append(index, Bytes::copy_from_slice(data)),
        Record::Vote(v) => {
            state.vote = Some(Bytes::copy_from_slice(v));
            Ok(())
        }
        Record::Committed(c) => {
            state.committed = Some(Bytes::copy_from_slice(c));
            Ok(())
        }
        Record::Truncate { index } => state.truncate(index),
        Record::Purge { index, log_id } => state.purge(index, Bytes::copy_from_slice(log_id)),
    }
}

/// Scans one segment, applying every complete batch to `state`.
fn scan_segment(
    path: &Path,
    buf: &[u8],
    hdr: &SegmentHeader,
    is_last: bool,
    state: &mut LogState,
) -> Result<ScanEnd, WalError> {
    let size = hdr.segment_size;
    let mut pos = BLOCK;
    let mut seq = hdr.start_batch;
    loop {
        if pos + BATCH_HEADER_LEN as u64 > size {
            return Ok(ScanEnd { pos, next_batch: seq, torn: None });
        }
        let at = &buf[pos as usize..size as usize];
        let (bad_at, reason) = match BatchHeader::decode(hdr.salt, at) {
            Some(h) if h.seq == seq && pos + u64::from(h.len) <= size => match decode_batch(hdr.salt, &h, at) {
                Ok(records) => {
                    for rec in records {
                        apply(state, rec).map_err(|e| corrupt(path, pos, e))?;
                    }
                    pos = align_up(pos + u64::from(h.len));
                    seq += 1;
                    continue;
                }
                Err((off, why)) => (pos + off as u64, why),
            },
            Some(h) if h.seq != seq => (pos, "batch out of sequence"),
            Some(_) => (pos, "batch runs past the end of the segment"),
            None if at.iter().take(BLOCK as usize).all(|&b| b == 0) => (pos, ""),
            None => (pos, "invalid batch header"),
        };
        // Only the last batch can be unsynced, and a batch is written only
        // after the previous one was synced: a valid later batch proves the
        // bad bytes were once durable, i.e. corruption.
        let mut probe = align_up(pos + 1);
        while probe + BATCH_HEADER_LEN as u64 <= size {
            if let Some(h) = BatchHeader::decode(hdr.salt, &buf[probe as usize..]) {
                if h.seq >= seq {
                    let why = if reason.is_empty() { "zeroed batch header" } else { reason };
                    return Err(corrupt(
                        path,
                        bad_at,
                        format!("{why}, followed by a valid batch (#{}) at offset {probe}", h.seq),
                    ));
                }
            }
            probe += BLOCK;
        }
        let torn = if reason.is_empty() {
            None
        } else if is_last {
            Some((bad_at, reason.to_string()))
        } else {
            return Err(corrupt(path, bad_at, format!("{reason} in a sealed segment")));
        };
        return Ok(ScanEnd { pos, next_batch: seq, torn });
    }
}

/// Opens `dir`: deletes leftover spare files, verifies and replays every segment.
pub(crate) async fn recover<I: WalIo>(io: &I, dir: &Path) -> Result<Recovered, WalError> {
    io.create_dir_all(dir).await.map_err(|e| WalError::io(format!("creating {}", dir.display()), e))?;
    let names = io.list_dir(dir).await.map_err(|e| WalError::io(format!("listing {}", dir.display()), e))?;
    let mut found = Vec::new();
    for name in names {
        let path = dir.join(&name);
        if name.ends_with(".tmp") {
            // A spare being prepared when the process stopped; never holds records.
            io.remove(&path).await.map_err(|e| WalError::io(format!("removing {}", path.display()), e))?;
        } else if name == super::io::POLL_PROBE_NAME {
            // Left by a stop between creating and removing it; never holds records.
        } else if let Some((seq, first)) = parse_segment_file_name(&name) {
            found.push((seq, first, path));
        } else {
            tracing::warn!(file = %path.display(), "ignoring unknown file in the WAL directory");
        }
    }
    found.sort_by_key(|(seq, _, _)| *seq);
    for w in found.windows(2) {
        if w[1].0 != w[0].0 + 1 {
            return Err(corrupt(&w[1].2, 0, format!("segment {:016x} is missing before it", w[0].0 + 1)));
        }
    }

    let mut state = LogState::default();
    let mut segments = Vec::new();
    let mut tail = None;
    let mut prev_end: Option<(PathBuf, u64, u64)> = None;
    let count = found.len();
    for (i, (seq, first, path)) in found.into_iter().enumerate() {
        let buf = io.read_file(&path).await.map_err(|e| WalError::io(format!("reading {}", path.display()), e))?;
        let hdr = SegmentHeader::decode(&buf).map_err(|e| corrupt(&path, 0, e))?;
        if hdr.seq != seq || hdr.first_index != first {
            return Err(corrupt(&path, 0, "segment header disagrees with the file name"));
        }
        if hdr.segment_size < 2 * BLOCK || hdr.segment_size % BLOCK != 0 || (buf.len() as u64) < hdr.segment_size {
            return Err(corrupt(
                &path,
                0,
                format!("file holds {} bytes, its header says {}", buf.len(), hdr.segment_size),
            ));
        }
        match &prev_end {
            Some((prev_path, prev_pos, prev_batch)) if *prev_batch != hdr.start_batch => {
                return Err(corrupt(
                    prev_path,
                    *prev_pos,
                    format!("segment ends at batch #{prev_batch} but the next one starts at #{}", hdr.start_batch),
                ));
            }
            Some(_) => {}
            // The oldest surviving segment: older ones were deleted after a
            // purge, so the log continues at its first index.
            None if seq > 0 => state.anchor(first),
            None => {}
        }
        let is_last = i + 1 == count;
        let end = scan_segment(&path, &buf, &hdr, is_last, &mut state)?;
        if let Some((offset, why)) = &end.torn {
            tracing::warn!(file = %path.display(), offset, reason = %why,
                "discarding the torn tail of the WAL (an unacknowledged write cut by a crash)");
        }
        segments.push(SegmentInfo { seq, first_index: first, size: hdr.segment_size, path: path.clone() });
        if is_last {
            tail = Some(Tail { salt: hdr.salt, pos: end.pos, next_batch: end.next_batch });
        }
        prev_end = Some((path, end.pos, end.next_batch));
    }
    if let Some(oldest) = segments.first() {
        if oldest.seq > 0 {
            let purged = state.purged.as_ref().map(|(p, _)| *p);
            if purged.is_none_or(|p| p + 1 < oldest.first_index) {
                return Err(corrupt(
                    &oldest.path,
                    0,
                    "older segments are missing: no purge record covers the entries before this segment",
                ));
            }
        }
    }
    Ok(Recovered { state, segments, tail })
}

/// Path of segment `seq` starting at `first_index` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64, first_index: u64) -> PathBuf {
    dir.join(segment_file_name(seq, first_index))
}

/// Decodes one segment image as the last segment of a log (for fuzzing).
pub(crate) fn verify_bytes(buf: &[u8]) -> Result<u64, WalError> {
    let path = Path::new("<bytes>");
    let hdr = SegmentHeader::decode(buf).map_err(|e| corrupt(path, 0, e))?;
    if hdr.segment_size < 2 * BLOCK || hdr.segment_size % BLOCK != 0 || (buf.len() as u64) < hdr.segment_size {
        return Err(corrupt(path, 0, "segment size disagrees with the bytes given"));
    }
    let mut state = LogState::default();
    let end = scan_segment(path, buf, &hdr, true, &mut state)?;
    Ok(end.next_batch - hdr.start_batch)
}

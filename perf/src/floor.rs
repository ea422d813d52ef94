//! The disk's floor for a durable write: what one 4 KiB `O_DIRECT` write
//! followed by `fdatasync` costs on the disk the servers write to, measured
//! next to the single-client put runs so that "p50 within 0.1 ms of one
//! fdatasync" (the server issue's goal) is read against the disk of that
//! minute, not of another day.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Size of the preallocated, zero-filled file written in turn (a write into
/// fresh blocks would also pay for allocating them).
const FILE_BYTES: u64 = 16 << 20;
const BLOCK: usize = 4096;

/// A 4 KiB buffer aligned for `O_DIRECT`.
struct Aligned(Box<[u8]>, usize);

impl Aligned {
    fn new() -> Aligned {
        let raw = vec![0x5au8; 2 * BLOCK].into_boxed_slice();
        let off = raw.as_ptr().align_offset(BLOCK);
        Aligned(raw, off)
    }
    fn block(&self) -> &[u8] {
        &self.0[self.1..self.1 + BLOCK]
    }
}

/// Median time of `n` (4 KiB `O_DIRECT` write + `fdatasync`) into a
/// zero-filled file in `dir`, each write at the next block. The file is
/// removed afterwards.
pub fn fdatasync_p50(dir: &Path, n: usize) -> io::Result<Duration> {
    let mut v = samples(dir, n)?;
    v.sort();
    Ok(v[v.len() / 2])
}

/// The `n` samples themselves, in order.
pub fn samples(dir: &Path, n: usize) -> io::Result<Vec<Duration>> {
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no samples asked for"));
    }
    fs::create_dir_all(dir)?;
    let path = dir.join("disk-floor.bin");
    let res = measure(&path, n);
    let _ = fs::remove_file(&path);
    res
}

fn measure(path: &Path, n: usize) -> io::Result<Vec<Duration>> {
    {
        let f = File::create(path)?;
        let zeros = vec![0u8; 1 << 20];
        for i in 0..FILE_BYTES / zeros.len() as u64 {
            f.write_all_at(&zeros, i * zeros.len() as u64)?;
        }
        f.sync_all()?;
    }
    let f = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path)?;
    let buf = Aligned::new();
    let blocks = FILE_BYTES / BLOCK as u64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        f.write_all_at(buf.block(), (i % blocks) * BLOCK as u64)?;
        f.sync_data()?;
        out.push(t.elapsed());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_every_sample_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let v = samples(dir.path(), 20).unwrap();
        assert_eq!(v.len(), 20);
        assert!(v.iter().all(|d| *d > Duration::ZERO));
        assert!(fdatasync_p50(dir.path(), 5).unwrap() > Duration::ZERO);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "the file is removed");
        assert!(samples(dir.path(), 0).is_err());
    }
}

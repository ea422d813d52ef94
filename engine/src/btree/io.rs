//! The I/O seam: every byte the B-tree writes goes through [`PageIo`], every
//! byte it reads comes from a [`PageMap`]. [`FileIo`] is the real backend
//! (writes through a shared writable memmap2 map, fdatasync); [`FaultIo`] keeps the file in memory,
//! remembers what was made durable, injects I/O errors and produces the file
//! a crash would leave behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, SeedableRng};

/// A read-only view of the file: `len()` bytes of address space, of which
/// only the part inside the file may be read (a map may reserve room past
/// the end of the file, where an access would fault; the file grows into it).
///
/// # Safety
/// Implementors guarantee that `as_ptr()..as_ptr() + len()` stays mapped for
/// as long as the object lives, that the part of it inside the file is
/// readable (the file never shrinks), and that a later [`PageIo::write_at`]
/// to a range inside the file made through the backend that produced the
/// newest map is visible through that map. The B-tree never
/// writes a range while a reference into it is alive (see `docs/btree.md`,
/// "Free-page reuse"), so shared slices into the map are never aliased by a
/// write.
pub unsafe trait PageMap: Send + Sync {
    fn as_ptr(&self) -> *const u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The file operations the B-tree needs. Offsets and lengths are in bytes.
pub trait PageIo: Send + Sync + 'static {
    /// Current file length.
    fn file_len(&self) -> io::Result<u64>;
    /// Extends the file (zero-filled) to `len`; never shrinks it.
    fn grow(&self, len: u64) -> io::Result<()>;
    /// Writes `data` at `offset`; `offset + data.len()` never exceeds `file_len()`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Writes each `(offset, data)` in turn, exactly as that many
    /// [`Self::write_at`] calls would; stops at the first error and returns
    /// it with the offset of the write that failed. A backend may override
    /// it to pay its per-call cost once (`FileIo` takes its lock once).
    fn write_all_at(&self, writes: &mut dyn Iterator<Item = (u64, &[u8])>) -> Result<(), (u64, io::Error)> {
        for (offset, data) in writes {
            self.write_at(offset, data).map_err(|e| (offset, e))?;
        }
        Ok(())
    }
    /// `fdatasync`: every earlier write and growth becomes durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Maps at least the whole current file. Earlier maps stay valid.
    fn map(&self) -> io::Result<Arc<dyn PageMap>>;
    /// Called after a sync: the backend may drop its mapping's page-table
    /// entries (never the data: the pages stay in the page cache and fault
    /// back in when touched). Default: nothing.
    fn release_resident(&self) {}
    /// Names the file in error messages.
    fn describe(&self) -> String;
}

// ---- the real backend ----

/// A store file on disk, mapped shared and writable: a page write is a
/// `memcpy` into the newest map (no syscall; the kernel's per-call cost of
/// `pwrite` dominated commits), `fdatasync` flushes it like any dirty page
/// cache page. The file grows with `fallocate`, so a first write to a page
/// never needs a block the disk lacks (which would be a SIGBUS, not an
/// error). Holds an exclusive `flock` so no other process writes under the map.
pub struct FileIo {
    file: File,
    path: PathBuf,
    /// The file's length (only `grow` changes it): `write_at` goes through
    /// the map only below it.
    len: AtomicU64,
    /// The newest writable map and its base pointer; writes go through it.
    map: Mutex<Option<Arc<MmapRw>>>,
}

impl FileIo {
    /// Opens (creating if missing, with its parent directory) the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileIo> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        // SAFETY: flock takes a valid open descriptor and no pointers.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("store file is locked by another process ({e})")));
        }
        let len = AtomicU64::new(file.metadata()?.len());
        Ok(FileIo { file, path, len, map: Mutex::new(None) })
    }
}

/// Least address space a map reserves (see [`FileIo::map`]).
const RESERVE_MIN: u64 = 1 << 30;

/// A shared writable mapping; `ptr` is the mapping's own address, written
/// only by [`FileIo::write_at`] into ranges no reader borrows.
struct MmapRw {
    _map: memmap2::MmapMut,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping stays valid until dropped; concurrent access follows
// the PageMap contract (writes never overlap borrowed ranges).
unsafe impl Send for MmapRw {}
unsafe impl Sync for MmapRw {}

// SAFETY: a MAP_SHARED mapping of the file stays valid until dropped and
// shows every write made through any mapping of the file or through pwrite.
unsafe impl PageMap for MmapRw {
    fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl FileIo {
    /// [`PageIo::write_at`] with the map lock held (`map` is what it guards).
    fn write_locked(&self, map: Option<&MmapRw>, offset: u64, data: &[u8]) -> io::Result<()> {
        if let Some(map) = map {
            let off = offset as usize;
            let end = (map.len as u64).min(self.len.load(Ordering::Acquire));
            if off.checked_add(data.len()).is_some_and(|e| e as u64 <= end) {
                // SAFETY: in bounds of a live writable mapping (the caller
                // holds the lock on `self.map`, so it is the newest one and
                // stays alive); the range is free (no reader holds a slice
                // into it) per the PageMap contract.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), map.ptr.add(off), data.len()) };
                return Ok(());
            }
        }
        self.file.write_all_at(data, offset)
    }
}

impl PageIo for FileIo {
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn grow(&self, len: u64) -> io::Result<()> {
        let cur = self.file.metadata()?.len();
        if len <= cur {
            self.len.store(cur, Ordering::Release);
            return Ok(());
        }
        let (off, n) = (cur as libc::off_t, (len - cur) as libc::off_t);
        // SAFETY: fallocate takes a valid descriptor and plain integers.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, off, n) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e);
            }
            // No fallocate here (a filesystem without it): a sparse file.
            self.file.set_len(len)?;
        }
        self.len.store(len, Ordering::Release);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        self.write_locked(m.as_deref(), offset, data)
    }
    /// One lock for the whole batch: unlocking is a full barrier that waits
    /// for the page's stores to drain, once per page when each write took
    /// the lock (most of a single put's page-write time).
    fn write_all_at(&self, writes: &mut dyn Iterator<Item = (u64, &[u8])>) -> Result<(), (u64, io::Error)> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (offset, data) in writes {
            self.write_locked(m.as_deref(), offset, data).map_err(|e| (offset, e))?;
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    /// `MADV_DONTNEED` over the file's part of the newest map. On a shared
    /// file mapping this only unmaps: the kernel keeps the pages (dirty ones
    /// stay dirty) in the page cache, and a later access maps them again
    /// with a minor fault, so readers holding slices into the map read the
    /// same bytes. Without it every page a commit ever wrote stays in the
    /// process's resident set (writes go through the map), where a store
    /// written with `pwrite`, like bbolt, keeps such pages only in the page
    /// cache. A failure only leaves the pages mapped.
    fn release_resident(&self) {
        // Not under the lock: writers go on meanwhile (a page they write
        // is simply mapped again).
        let Some(map) = self.map.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        let len = (map.len as u64).min(self.len.load(Ordering::Acquire)) as usize;
        if len == 0 {
            return;
        }
        // SAFETY: the range lies inside a live MAP_SHARED file mapping
        // (the Arc keeps it mapped); MADV_DONTNEED there discards no data.
        let rc = unsafe { libc::madvise(map.ptr.cast(), len, libc::MADV_DONTNEED) };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "madvise(MADV_DONTNEED) on the store map");
        }
    }
    fn map(&self) -> io::Result<Arc<dyn PageMap>> {
        // Reserve address space for the file to grow into (twice its
        // length, at least 1 GiB): growing it then needs no new map. Pages
        // past the end of the file are never touched (that would be a
        // SIGBUS): every read is bounded by the length the file was grown
        // to, every write by `self.len`.
        let file_len = self.file.metadata()?.len();
        let reserve = file_len.saturating_mul(2).max(RESERVE_MIN);
        let reserve = usize::try_from(reserve).map_err(|_| io::Error::other("file too large to map"))?;
        // SAFETY: the file is ours alone (exclusive flock); the B-tree only
        // writes ranges that no live reference covers, and never shrinks
        // the file, so the part of the mapping inside the file stays backed.
        let mut m = unsafe { memmap2::MmapOptions::new().len(reserve).map_mut(&self.file)? };
        let (ptr, len) = (m.as_mut_ptr(), m.len());
        let map = Arc::new(MmapRw { _map: m, ptr, len });
        *self.map.lock().unwrap_or_else(|e| e.into_inner()) = Some(map.clone());
        Ok(map)
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

// ---- the fault-injecting backend ----

/// A fixed-size heap buffer standing in for a mapping; written through raw
/// pointers only, so no `&mut` ever aliases a reader's slice.
struct MemBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is a plain heap allocation; concurrent access follows
// the PageMap contract (writes never overlap live reads).
unsafe impl Send for MemBuf {}
unsafe impl Sync for MemBuf {}

impl MemBuf {
    fn new(contents: &[u8], len: usize) -> MemBuf {
        let mut v = vec![0u8; len.max(1)];
        let n = contents.len().min(len);
        v[..n].copy_from_slice(&contents[..n]);
        let b: Box<[u8]> = v.into_boxed_slice();
        let ptr = Box::into_raw(b) as *mut u8;
        MemBuf { ptr, len }
    }
    fn read(&self, off: usize, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        // SAFETY: bounds checked by the callers; no writer runs concurrently
        // (the FaultIo mutex is held).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), n) };
        out
    }
    fn write(&self, off: usize, data: &[u8]) {
        // SAFETY: bounds checked by the callers; the range is not borrowed by
        // any reader (PageMap contract).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
    }
}

impl Drop for MemBuf {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from Box::into_raw of a boxed slice of len.max(1).
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len.max(1))));
        }
    }
}

// SAFETY: see MemBuf: valid until dropped, written in place by FaultIo.
unsafe impl PageMap for MemBuf {
    fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// What survives a simulated crash of unsynced writes.
#[derive(Clone, Copy, Debug)]
pub enum CrashMode {
    /// Only what was `fdatasync`ed.
    LoseUnsynced,
    /// Every write reached the medium.
    KeepUnsynced,
    /// Each unsynced write independently survives, vanishes, or is torn (a
    /// random subset of its 512-byte sectors lands), chosen by the seed.
    Random(u64),
}

const SECTOR: usize = 512;

struct FaultState {
    buf: Arc<MemBuf>,
    /// Bytes that survived the last `sync_data`.
    durable: Vec<u8>,
    /// Writes since the last `sync_data`, in order.
    unsynced: Vec<(u64, Vec<u8>)>,
    ops: u64,
    fail_at: Option<u64>,
}

/// An in-memory file that remembers what was durable and can crash.
pub struct FaultIo {
    st: Mutex<FaultState>,
}

impl Default for FaultIo {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultIo {
    /// An empty file.
    pub fn new() -> FaultIo {
        Self::from_image(Vec::new())
    }

    /// A file whose durable contents are `image`.
    pub fn from_image(image: Vec<u8>) -> FaultIo {
        let buf = Arc::new(MemBuf::new(&image, image.len()));
        FaultIo { st: Mutex::new(FaultState { buf, durable: image, unsynced: Vec::new(), ops: 0, fail_at: None }) }
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of mutating calls (`grow`, `write_at`, `sync_data`) so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Makes every mutating call after the next `n` fail, as a dead disk or a
    /// process killed mid-commit would; `None` heals the device.
    pub fn fail_after(&self, n: Option<u64>) {
        let mut st = self.lock();
        st.fail_at = n.map(|n| st.ops + n);
    }

    /// The file a crash right now would leave behind.
    pub fn crash(&self, mode: CrashMode) -> FaultIo {
        let st = self.lock();
        let mut img = st.durable.clone();
        img.resize(st.buf.len, 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(match mode {
            CrashMode::Random(s) => s,
            _ => 0,
        });
        for (off, data) in &st.unsynced {
            let off = *off as usize;
            match mode {
                CrashMode::LoseUnsynced => {}
                CrashMode::KeepUnsynced => img[off..off + data.len()].copy_from_slice(data),
                CrashMode::Random(_) => match rng.gen_range(0..3) {
                    0 => {}
                    1 => img[off..off + data.len()].copy_from_slice(data),
                    _ => {
                        for s in (0..data.len()).step_by(SECTOR) {
                            if rng.gen_bool(0.5) {
                                let e = (s + SECTOR).min(data.len());
                                img[off + s..off + e].copy_from_slice(&data[s..e]);
                            }
                        }
                    }
                },
            }
        }
        FaultIo::from_image(img)
    }

    /// The current contents (what the process sees).
    pub fn contents(&self) -> Vec<u8> {
        let st = self.lock();
        st.buf.read(0, st.buf.len)
    }

    /// Flips bits at `offset` in both the current and the durable contents,
    /// as a damaged medium would. Call it only while no Db uses this file.
    pub fn corrupt(&self, offset: u64, xor: u8) {
        let st = &mut *self.lock();
        let off = offset as usize;
        if off < st.buf.len {
            let b = st.buf.read(off, 1)[0] ^ xor;
            st.buf.write(off, &[b]);
        }
        if let Some(b) = st.durable.get_mut(off) {
            *b ^= xor;
        }
    }

    fn step(st: &mut FaultState, what: &str) -> io::Result<()> {
        st.ops += 1;
        match st.fail_at {
            Some(n) if st.ops > n => Err(io::Error::other(format!("injected I/O failure ({what})"))),
            _ => Ok(()),
        }
    }
}

impl PageIo for FaultIo {
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.lock().buf.len as u64)
    }
    fn grow(&self, len: u64) -> io::Result<()> {
        let st = &mut *self.lock();
        Self::step(st, "grow")?;
        let len = len as usize;
        if len > st.buf.len {
            // A new buffer, like a new mapping: earlier maps keep the old one.
            let old = st.buf.read(0, st.buf.len);
            st.buf = Arc::new(MemBuf::new(&old, len));
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let st = &mut *self.lock();
        Self::step(st, "write")?;
        let off = offset as usize;
        if off.checked_add(data.len()).is_none_or(|e| e > st.buf.len) {
            return Err(io::Error::other("write past the end of the file"));
        }
        st.buf.write(off, data);
        st.unsynced.push((offset, data.to_vec()));
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let st = &mut *self.lock();
        Self::step(st, "fdatasync")?;
        st.durable.resize(st.buf.len, 0);
        for (off, data) in std::mem::take(&mut st.unsynced) {
            let off = off as usize;
            st.durable[off..off + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
    fn map(&self) -> io::Result<Arc<dyn PageMap>> {
        Ok(self.lock().buf.clone())
    }
    fn describe(&self) -> String {
        "in-memory fault-injection file".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced() {
        let f = FaultIo::new();
        f.grow(8192).unwrap();
        f.write_at(0, &[1; 4096]).unwrap();
        f.sync_data().unwrap();
        f.write_at(4096, &[2; 4096]).unwrap();
        let lost = f.crash(CrashMode::LoseUnsynced).contents();
        assert_eq!(lost[0], 1);
        assert_eq!(lost[4096], 0);
        let kept = f.crash(CrashMode::KeepUnsynced).contents();
        assert_eq!(kept[4096], 2);
        f.fail_after(Some(0));
        assert!(f.sync_data().is_err());
    }

    /// The file grows inside the address space its map reserved: a write
    /// past the old end lands in the same mapping, and a write past the
    /// current end goes to the file (never into the unbacked reservation).
    #[test]
    fn file_grows_inside_the_reserved_map() {
        let dir = tempfile::tempdir().unwrap();
        let io = FileIo::open(dir.path().join("kv.db")).unwrap();
        io.grow(8192).unwrap();
        let m = io.map().unwrap();
        assert!(m.len() as u64 >= RESERVE_MIN);
        io.write_at(4096, &[1; 4096]).unwrap();
        io.grow(1 << 20).unwrap();
        io.write_at(512 << 10, &[2; 4096]).unwrap();
        // SAFETY: both ranges lie inside the file; nothing writes them now.
        let (a, b) = unsafe { (*m.as_ptr().add(4096), *m.as_ptr().add(512 << 10)) };
        assert_eq!((a, b), (1, 2));
        // A reader bounds its reads by the file's length, not the map's.
        let mapped = super::super::pager::Mapped::new(m.clone(), 1 << 20, None, false);
        assert!(mapped.page(255).is_ok());
        assert!(mapped.page(256).is_err());
        // Past the end of the file: extends it through the file, no fault.
        io.write_at(2 << 20, &[3; 4096]).unwrap();
        assert_eq!(io.file_len().unwrap(), (2 << 20) + 4096);
        let mut buf = [0u8; 1];
        io.file.read_exact_at(&mut buf, 2 << 20).unwrap();
        assert_eq!(buf[0], 3);
    }
}

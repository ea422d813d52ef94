//! The WAL's one I/O seam, and its real backend on glommio's DMA files.
//!
//! Everything the WAL does to the disk goes through [`WalIo`] and [`WalFile`],
//! so tests can substitute [`super::SimIo`], which remembers what was made
//! durable and can crash at any step.

use std::io;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

/// File-system operations the WAL needs. Implementations are single-threaded
/// (one executor owns the WAL).
#[allow(async_fn_in_trait)]
pub trait WalIo: Clone + 'static {
    type File: WalFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of `dir`.
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `path` (replacing any file there) holding `size` zero bytes
    /// that are *written and durable*, not merely allocated, and opens it for
    /// O_DIRECT writes. The name itself is durable only after [`Self::sync_dir`].
    async fn create_zeroed(&self, path: &Path, size: u64) -> io::Result<Self::File>;
    /// Opens an existing file for O_DIRECT writes.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    async fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Hands I/O that futures polled so far have queued to the kernel now,
    /// rather than when the executor's turn ends. Nothing by default.
    fn submit_now(&self) {}
}

/// An open WAL file.
#[allow(async_fn_in_trait)]
pub trait WalFile: 'static {
    type Buf: AsRef<[u8]> + AsMut<[u8]>;
    /// A write buffer of `len` bytes (a multiple of the block size); its
    /// contents are unspecified.
    fn alloc(&self, len: usize) -> Self::Buf;
    /// Writes all of `buf` at `pos` (block-aligned). Not durable until
    /// [`Self::fdatasync`] returns.
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<()>;
    async fn fdatasync(&self) -> io::Result<()>;
}

/// The real backend: glommio DMA files (O_DIRECT through io_uring).
/// Must be used inside a glommio executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaIo;

/// An open segment file of [`DmaIo`].
pub struct DmaIoFile(Rc<DmaFile>);

/// Zero-fill chunk: large enough to stream at disk speed, small enough not to
/// hold much memory.
const ZERO_CHUNK: usize = 1 << 20;

impl WalIo for DmaIo {
    type File = DmaIoFile;

    fn submit_now(&self) {
        if let Err(e) = glommio::executor().submit_io_now() {
            tracing::debug!(error = %e, "submitting queued I/O early");
        }
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    async fn create_zeroed(&self, path: &Path, size: u64) -> io::Result<DmaIoFile> {
        if let Some(dir) = path.parent() {
            decline_poll_ring(dir).await;
        }
        // Zero-filled through a plain handle (one sync at the end, not one
        // per chunk), then reopened for the log's O_DSYNC writes.
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).dma_open(path).await?;
        file.pre_allocate(size, false).await?;
        // fallocate alone leaves unwritten extents, and the first write into
        // one forces a journal commit on every sync: write real zeros.
        let mut at = 0u64;
        while at < size {
            let n = ZERO_CHUNK.min((size - at) as usize);
            let mut buf = file.alloc_dma_buffer(n);
            buf.as_bytes_mut().fill(0);
            let written = file.write_at(buf, at).await?;
            if written != n {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short write while zero-filling"));
            }
            at += n as u64;
        }
        file.fdatasync().await?;
        file.close().await?;
        self.open(path).await
    }

    /// Opens with `O_DSYNC`: a write completes only once its data is on
    /// stable storage (one io_uring operation, where write + `fdatasync` are
    /// two, the second always run by an io-wq worker thread).
    async fn open(&self, path: &Path) -> io::Result<DmaIoFile> {
        if let Some(dir) = path.parent() {
            decline_poll_ring(dir).await;
        }
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DSYNC).dma_open(path).await?;
        Ok(DmaIoFile(Rc::new(file)))
    }

    async fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

thread_local! {
    static POLL_RING_DECLINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Name of the scratch file [`decline_poll_ring`] opens (and removes) in the
/// WAL directory.
pub const POLL_PROBE_NAME: &str = ".iopoll-probe";

/// Makes this executor thread's glommio reactor send DMA reads and writes on
/// the WAL's device to its interrupt-driven main ring, not its poll ring.
///
/// glommio probes each block device once per thread, on the first `DmaFile`
/// opened there, with an `IOPOLL` read; where the read succeeds it puts every
/// later DMA I/O on that device on the poll ring, whose completions are found
/// only by polling. On this kind of machine (virtio disk without poll queues)
/// the probe succeeds, and while a WAL write and its `fdatasync` were in
/// flight the executor could not sleep: it entered io_uring 80-140 times per
/// single-client put and spent a third of its CPU doing so (docs/wal.md,
/// "Interrupts, not polling"). A write-only file fails that probe read
/// (glommio 0.9 then caches "no iopoll" for the device, as its issue #670
/// describes), so opening one first is how we choose interrupts. glommio logs
/// the failed probe at error level under `glommio::reactor`; the server
/// filters that target out. `wal::tests::dma_writes_use_the_main_ring`
/// checks the outcome, so a glommio upgrade that changes it is noticed.
pub async fn decline_poll_ring(dir: &Path) {
    if POLL_RING_DECLINED.with(|d| d.replace(true)) {
        return;
    }
    let probe = dir.join(POLL_PROBE_NAME);
    match OpenOptions::new().write(true).create(true).truncate(true).dma_open(&probe).await {
        Ok(f) => {
            let _ = f.close().await;
        }
        Err(e) => tracing::debug!(error = %e, "could not open the poll-ring probe file"),
    }
    let _ = std::fs::remove_file(&probe);
}

impl WalFile for DmaIoFile {
    type Buf = DmaBuffer;

    fn alloc(&self, len: usize) -> DmaBuffer {
        self.0.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<()> {
        let n = buf.len();
        let written = self.0.write_at(buf, pos).await?;
        if written != n {
            return Err(io::Error::new(io::ErrorKind::WriteZero, format!("short write: {written} of {n} bytes")));
        }
        Ok(())
    }

    /// Nothing to do: the file is open with `O_DSYNC`, so every write that
    /// completed is already durable (data and the metadata needed to read
    /// it back, as `fdatasync` would make them).
    async fn fdatasync(&self) -> io::Result<()> {
        Ok(())
    }
}

//! A fault-injecting, in-memory [`WalIo`] for tests: it remembers which bytes
//! and which directory entries were made durable, can stop ("crash") at any
//! I/O step or fail an `fdatasync`, and builds what a real disk could hold
//! after a power loss: the durable state plus any subset of the unsynced
//! writes, in any order, each possibly torn at 512-byte sector granularity.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rand::Rng;

use super::io::{WalFile, WalIo};

/// Granularity at which the simulated disk may tear a write.
const SECTOR: usize = 512;

#[derive(Default)]
struct Inode {
    /// What survives a crash for certain.
    durable: Vec<u8>,
    /// What reads see now.
    visible: Vec<u8>,
    /// Writes since the last `fdatasync`, in issue order.
    pending: Vec<(usize, Vec<u8>)>,
}

#[derive(Default)]
struct Fs {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    fail_sync_at: Option<u64>,
    syncs: u64,
    writes: u64,
}

/// See the module docs. Cloning shares the same simulated disk.
#[derive(Clone, Default)]
pub struct SimIo {
    fs: Rc<RefCell<Fs>>,
}

/// Counters of what reached the simulated disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub ops: u64,
    pub writes: u64,
    pub syncs: u64,
}

fn crashed_err() -> io::Error {
    io::Error::other("simulated crash: the process is gone")
}

impl SimIo {
    pub fn new() -> SimIo {
        SimIo::default()
    }

    /// The I/O operation numbered `op` (counting from 1 across every call)
    /// and everything after it fail as if the process had died; a write at
    /// that step is left half-done (pending, maybe torn).
    pub fn crash_at(&self, op: u64) {
        self.fs.borrow_mut().crash_at = Some(op);
    }

    /// The `n`-th `fdatasync` (counting from 1) fails with EIO; the
    /// process lives on.
    pub fn fail_sync_at(&self, n: u64) {
        self.fs.borrow_mut().fail_sync_at = Some(n);
    }

    pub fn stats(&self) -> SimStats {
        let fs = self.fs.borrow();
        SimStats { ops: fs.ops, writes: fs.writes, syncs: fs.syncs }
    }

    pub fn has_crashed(&self) -> bool {
        self.fs.borrow().crashed
    }

    /// What a disk could hold after power loss now: a new, healthy `SimIo`
    /// with every durable byte and directory entry, plus a random subset of
    /// unsynced writes (random order, some torn) and, at random, the
    /// unsynced directory changes.
    pub fn power_loss(&self, rng: &mut impl Rng) -> SimIo {
        let fs = self.fs.borrow();
        let names = if rng.gen_bool(0.5) { fs.durable_names.clone() } else { fs.names.clone() };
        let mut inodes = HashMap::new();
        for &ino in names.values() {
            if inodes.contains_key(&ino) {
                continue;
            }
            let Some(src) = fs.inodes.get(&ino) else { continue };
            let mut data = src.durable.clone();
            let mut pending: Vec<&(usize, Vec<u8>)> = src.pending.iter().collect();
            // Any order: later writes may land while earlier ones do not.
            for i in (1..pending.len()).rev() {
                let j = rng.gen_range(0..=i);
                pending.swap(i, j);
            }
            for (off, bytes) in pending {
                match rng.gen_range(0..3) {
                    0 => {}
                    1 => write_into(&mut data, *off, bytes),
                    _ => {
                        for (k, sector) in bytes.chunks(SECTOR).enumerate() {
                            if rng.gen_bool(0.5) {
                                write_into(&mut data, off + k * SECTOR, sector);
                            }
                        }
                    }
                }
            }
            inodes.insert(ino, Inode { durable: data.clone(), visible: data, pending: Vec::new() });
        }
        let next_inode = fs.next_inode;
        SimIo {
            fs: Rc::new(RefCell::new(Fs {
                inodes,
                next_inode,
                durable_names: names.clone(),
                names,
                ..Fs::default()
            })),
        }
    }

    /// Reads a file's current contents (for tests that corrupt files).
    pub fn file_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.fs.borrow();
        Some(fs.inodes.get(fs.names.get(path)?)?.visible.clone())
    }

    /// Overwrites bytes of a file durably, outside the WAL's knowledge (for
    /// tests that corrupt files).
    pub fn corrupt(&self, path: &Path, offset: usize, bytes: &[u8]) {
        let mut fs = self.fs.borrow_mut();
        let Some(&ino) = fs.names.get(path) else { return };
        if let Some(inode) = fs.inodes.get_mut(&ino) {
            write_into(&mut inode.visible, offset, bytes);
            write_into(&mut inode.durable, offset, bytes);
        }
    }

    /// Paths of every file, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.fs.borrow().names.keys().cloned().collect()
    }

    /// Counts one I/O step; fails if the simulated process has died.
    fn step(&self) -> io::Result<bool> {
        let mut fs = self.fs.borrow_mut();
        if fs.crashed {
            return Err(crashed_err());
        }
        fs.ops += 1;
        if fs.crash_at == Some(fs.ops) {
            fs.crashed = true;
            return Ok(true);
        }
        Ok(false)
    }
}

fn write_into(data: &mut Vec<u8>, off: usize, bytes: &[u8]) {
    if data.len() < off + bytes.len() {
        data.resize(off + bytes.len(), 0);
    }
    data[off..off + bytes.len()].copy_from_slice(bytes);
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

/// An open file of [`SimIo`].
pub struct SimFile {
    io: SimIo,
    inode: u64,
}

impl WalIo for SimIo {
    type File = SimFile;

    async fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        if self.step()? {
            return Err(crashed_err());
        }
        let fs = self.fs.borrow();
        Ok(fs
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    async fn create_zeroed(&self, path: &Path, size: u64) -> io::Result<SimFile> {
        if self.step()? {
            return Err(crashed_err());
        }
        let mut fs = self.fs.borrow_mut();
        let ino = fs.next_inode;
        fs.next_inode += 1;
        let zeros = vec![0u8; size as usize];
        fs.inodes.insert(ino, Inode { durable: zeros.clone(), visible: zeros, pending: Vec::new() });
        fs.names.insert(path.to_path_buf(), ino);
        Ok(SimFile { io: self.clone(), inode: ino })
    }

    async fn open(&self, path: &Path) -> io::Result<SimFile> {
        if self.step()? {
            return Err(crashed_err());
        }
        let fs = self.fs.borrow();
        let ino = *fs.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(SimFile { io: self.clone(), inode: ino })
    }

    async fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        if self.step()? {
            return Err(crashed_err());
        }
        self.file_contents(path).ok_or_else(|| not_found(path))
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.step()? {
            return Err(crashed_err());
        }
        let mut fs = self.fs.borrow_mut();
        let ino = fs.names.remove(from).ok_or_else(|| not_found(from))?;
        fs.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        if self.step()? {
            return Err(crashed_err());
        }
        let mut fs = self.fs.borrow_mut();
        fs.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.step()? {
            return Err(crashed_err());
        }
        let mut fs = self.fs.borrow_mut();
        fs.durable_names.retain(|p, _| p.parent() != Some(dir));
        let now: Vec<(PathBuf, u64)> =
            fs.names.iter().filter(|(p, _)| p.parent() == Some(dir)).map(|(p, i)| (p.clone(), *i)).collect();
        fs.durable_names.extend(now);
        Ok(())
    }
}

impl WalFile for SimFile {
    type Buf = Vec<u8>;

    fn alloc(&self, len: usize) -> Vec<u8> {
        vec![0xA5; len]
    }

    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        let dies = self.io.step()?;
        let mut fs = self.io.fs.borrow_mut();
        fs.writes += 1;
        let inode = fs.inodes.get_mut(&self.inode).ok_or_else(|| io::Error::other("stale file"))?;
        write_into(&mut inode.visible, pos as usize, &buf);
        inode.pending.push((pos as usize, buf));
        if dies {
            return Err(crashed_err());
        }
        Ok(())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        if self.io.step()? {
            return Err(crashed_err());
        }
        let mut fs = self.io.fs.borrow_mut();
        fs.syncs += 1;
        if fs.fail_sync_at == Some(fs.syncs) {
            return Err(io::Error::from_raw_os_error(5));
        }
        let inode = fs.inodes.get_mut(&self.inode).ok_or_else(|| io::Error::other("stale file"))?;
        for (off, bytes) in std::mem::take(&mut inode.pending) {
            write_into(&mut inode.durable, off, &bytes);
        }
        Ok(())
    }
}

//! Shared helpers for the criterion suites in `benches/benches/`.
//!
//! glommio futures are `!Send` and must run on a glommio executor, while
//! criterion measures from its own thread. [`Driver`] runs a benchmark's state
//! on a dedicated executor thread; criterion's `iter_custom` asks it for the
//! time `iters` iterations took, measured inside the executor.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A benchmark body living on its own glommio executor thread.
pub struct Driver {
    tx: Option<mpsc::Sender<u64>>,
    rx: mpsc::Receiver<Duration>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Driver {
    /// `setup` builds the state once on the executor; `run(state, iters)`
    /// performs `iters` iterations and returns how long they took.
    pub fn start<S: 'static>(
        setup: impl FnOnce() -> LocalFuture<S> + Send + 'static,
        run: impl Fn(Rc<S>, u64) -> LocalFuture<Duration> + Send + 'static,
    ) -> Driver {
        let (tx, job_rx) = mpsc::channel::<u64>();
        let (done_tx, rx) = mpsc::channel::<Duration>();
        let thread = std::thread::spawn(move || {
            let ex = LocalExecutorBuilder::new(Placement::Unbound).make().expect("glommio executor");
            ex.run(async move {
                let state = Rc::new(setup().await);
                while let Ok(iters) = job_rx.recv() {
                    let took = run(state.clone(), iters).await;
                    if done_tx.send(took).is_err() {
                        break;
                    }
                }
            });
        });
        Driver { tx: Some(tx), rx, thread: Some(thread) }
    }

    /// Runs `iters` iterations on the executor; returns their duration.
    pub fn measure(&self, iters: u64) -> Duration {
        self.tx.as_ref().expect("driver running").send(iters).expect("driver thread alive");
        self.rx.recv().expect("driver thread alive")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh directory for benchmark data on the disk under test:
/// `$IRONCD_BENCH_DIR` or `target/bench-data`, never tmpfs by default.
pub fn bench_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("IRONCD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"));
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

/// The B-tree workload shared by `benches/btree.rs` and
/// `examples/btree_batch.rs`: 16-byte scrambled keys, 100-byte values.
pub mod btree_workload {
    pub const VALUE_LEN: usize = 100;

    /// `BTREE_BENCH_KEYS`, default 1,000,000.
    pub fn key_count() -> u64 {
        std::env::var("BTREE_BENCH_KEYS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000)
    }

    /// 16-byte keys; `i` is scrambled so inserts and lookups hit the whole tree.
    pub fn key(i: u64) -> [u8; 16] {
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&h.to_be_bytes());
        k[8..].copy_from_slice(&i.to_be_bytes());
        k
    }

    pub fn value(i: u64) -> [u8; VALUE_LEN] {
        let mut v = [0x5Au8; VALUE_LEN];
        v[..8].copy_from_slice(&i.to_le_bytes());
        v
    }

    /// xorshift64: cheap, deterministic key choice.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }
}

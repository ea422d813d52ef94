//! WAL benchmarks: append+sync latency against the raw floor of the disk,
//! and group-commit throughput with many concurrent appenders.
//!
//! `cargo bench -p ironcd-benches --bench wal`. Figures: `docs/wal.md`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::io::{DmaFile, OpenOptions};
use ironcd_benches::{bench_dir, Driver};
use ironcd_engine::wal::{decline_poll_ring, Wal, WalOptions};

const ENTRY: usize = 300;
const FILE: u64 = 64 << 20;

/// The floors: one 4 KiB O_DIRECT write into a preallocated, zero-filled
/// file made durable (a) by an `fdatasync` after it, (b) by `O_DSYNC` (the
/// WAL's way), through the same io_uring stack and ring as the WAL (the
/// interrupt-driven main ring: see `decline_poll_ring`).
fn raw_floor(c: &mut Criterion) {
    for dsync in [false, true] {
        let driver = Driver::start(
            move || {
                Box::pin(async move {
                    let dir = bench_dir(if dsync { "raw-dsync" } else { "raw" });
                    decline_poll_ring(&dir).await;
                    let path = dir.join("floor");
                    let f = OpenOptions::new().read(true).write(true).create(true).dma_open(&path).await.unwrap();
                    f.pre_allocate(FILE, false).await.unwrap();
                    let mut at = 0;
                    while at < FILE {
                        let mut b = f.alloc_dma_buffer(1 << 20);
                        b.as_bytes_mut().fill(0);
                        f.write_at(b, at).await.unwrap();
                        at += 1 << 20;
                    }
                    f.fdatasync().await.unwrap();
                    f.close().await.unwrap();
                    let flags = if dsync { libc::O_DSYNC } else { 0 };
                    let f = OpenOptions::new().read(true).write(true).custom_flags(flags).dma_open(&path).await.unwrap();
                    (f, Cell::new(0u64))
                })
            },
            move |st: Rc<(DmaFile, Cell<u64>)>, iters| {
                Box::pin(async move {
                    let (f, pos) = &*st;
                    let t = Instant::now();
                    for _ in 0..iters {
                        let mut b = f.alloc_dma_buffer(4096);
                        b.as_bytes_mut().fill(7);
                        f.write_at(b, pos.get()).await.unwrap();
                        if !dsync {
                            f.fdatasync().await.unwrap();
                        }
                        pos.set((pos.get() + 4096) % FILE);
                    }
                    t.elapsed()
                })
            },
        );
        let name = if dsync { "disk_floor_4k_write_o_dsync" } else { "disk_floor_4k_write_fdatasync" };
        c.bench_function(name, |b| b.iter_custom(|n| driver.measure(n)));
    }
}

struct Log {
    wal: Wal,
    next: Cell<u64>,
}

fn open_log(name: String) -> impl FnOnce() -> ironcd_benches::LocalFuture<Log> + Send {
    move || {
        Box::pin(async move {
            let wal = Wal::open_dir(bench_dir(&name), WalOptions::default()).await.unwrap();
            Log { wal, next: Cell::new(1) }
        })
    }
}

impl Log {
    /// Drops what was measured, as raft does behind a snapshot, so memory
    /// and disk stay bounded across samples. Not timed.
    async fn purge(&self) {
        let last = self.next.get() - 1;
        self.wal.purge(last, Bytes::new()).await.unwrap();
    }
}

/// One appender: append one 300-byte entry and wait until it is durable.
fn append_sync_latency(c: &mut Criterion) {
    let driver = Driver::start(open_log("wal-latency".into()), |st: Rc<Log>, iters| {
        Box::pin(async move {
            let payload = Bytes::from(vec![0x5a; ENTRY]);
            let t = Instant::now();
            for _ in 0..iters {
                let i = st.next.get();
                st.next.set(i + 1);
                st.wal.append([(i, payload.clone())]).await.unwrap();
            }
            let took = t.elapsed();
            st.purge().await;
            took
        })
    });
    c.bench_function("wal_append_sync_300B", |b| b.iter_custom(|n| driver.measure(n)));
}

/// `n` appenders each with one entry in flight: every iteration enqueues `n`
/// entries and waits for all of them (a closed loop of `n` clients).
fn group_commit_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_group_commit_300B");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for n in [1u64, 16, 256, 1024] {
        let driver = Driver::start(open_log(format!("wal-throughput-{n}")), move |st: Rc<Log>, iters| {
            Box::pin(async move {
                let payload = Bytes::from(vec![0x5a; ENTRY]);
                let before = st.wal.stats();
                let t = Instant::now();
                for _ in 0..iters {
                    let pending = Rc::new(Cell::new(n));
                    let (tx, rx) = futures_channel::oneshot::channel::<()>();
                    let tx = Rc::new(Cell::new(Some(tx)));
                    for _ in 0..n {
                        let i = st.next.get();
                        st.next.set(i + 1);
                        let (pending, tx) = (pending.clone(), tx.clone());
                        st.wal
                            .append_with([(i, payload.clone())], move |r| {
                                r.unwrap();
                                pending.set(pending.get() - 1);
                                if pending.get() == 0 {
                                    if let Some(tx) = tx.take() {
                                        let _ = tx.send(());
                                    }
                                }
                            })
                            .unwrap();
                    }
                    rx.await.unwrap();
                }
                let took = t.elapsed();
                let after = st.wal.stats();
                let entries = after.entries - before.entries;
                if entries >= 10_000 {
                    eprintln!(
                        "  {n} appenders: {:.0} entries/s, {:.4} fdatasync per entry, {:.1} entries per batch",
                        entries as f64 / took.as_secs_f64(),
                        (after.syncs - before.syncs) as f64 / entries as f64,
                        entries as f64 / (after.batches - before.batches).max(1) as f64,
                    );
                }
                st.purge().await;
                took
            })
        });
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| b.iter_custom(|it| driver.measure(it)));
    }
    g.finish();
}

criterion_group!(benches, raw_floor, append_sync_latency, group_commit_throughput);
criterion_main!(benches);

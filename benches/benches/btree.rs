//! B-tree file benchmarks, ironcd against redb in the same run: point get
//! and 100-key range scan over `BTREE_BENCH_KEYS` keys (default 1,000,000),
//! batched puts (1,000 per commit), durable single puts, and opening a
//! populated store to serve the first read.
//!
//! `cargo bench -p ironcd-benches --bench btree`. Data lives in
//! `$IRONCD_BENCH_DIR` or `target/bench-data` (a real disk, not tmpfs).
//! Figures: `docs/btree.md`, "Measured".

use std::hint::black_box;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ironcd_benches::btree_workload::{key, key_count, value, Rng};
use ironcd_engine::btree::{Db, DbOptions};
use ironcd_engine::kv::{ReadView, Store, Tree, WriteView};
use redb::{ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const BUILD_BATCH: u64 = 20_000;




/// Runs `a` and `b` alternately `rounds` times (each timing `per` calls)
/// and prints both medians per call: on a shared, noisy machine the ratio
/// survives load changes that skew back-to-back criterion groups.
fn paired(name: &str, rounds: usize, per: u32, mut a: impl FnMut(), mut b: impl FnMut()) {
    let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per {
            a();
        }
        ta.push(t.elapsed() / per);
        let t = Instant::now();
        for _ in 0..per {
            b();
        }
        tb.push(t.elapsed() / per);
    }
    ta.sort();
    tb.sort();
    let (ma, mb) = (ta[rounds / 2], tb[rounds / 2]);
    eprintln!(
        "paired {name}: ironcd {ma:?}  redb {mb:?}  (ironcd/redb = {:.2})",
        ma.as_secs_f64() / mb.as_secs_f64()
    );
}


fn bench_dir() -> PathBuf {
    let base = std::env::var_os("IRONCD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"));
    let dir = base.join(format!("btree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

fn build_ironcd(path: &Path, n: u64) -> Db {
    let t = Instant::now();
    let db = Db::open(path, DbOptions::default()).unwrap();
    let mut i = 0;
    while i < n {
        let mut w = db.begin_write().unwrap();
        for j in i..(i + BUILD_BATCH).min(n) {
            w.put(Tree::Kv, &key(j), &value(j)).unwrap();
        }
        w.commit().unwrap();
        i += BUILD_BATCH;
    }
    db.sync().unwrap();
    eprintln!("ironcd: built {n} keys in {:?}", t.elapsed());
    db
}

fn build_redb(path: &Path, n: u64) -> redb::Database {
    let t = Instant::now();
    let db = redb::Database::create(path).unwrap();
    let mut i = 0;
    while i < n {
        let mut w = db.begin_write().unwrap();
        w.set_durability(redb::Durability::None).unwrap();
        {
            let mut tbl = w.open_table(TABLE).unwrap();
            for j in i..(i + BUILD_BATCH).min(n) {
                tbl.insert(&key(j)[..], &value(j)[..]).unwrap();
            }
        }
        w.commit().unwrap();
        i += BUILD_BATCH;
    }
    let w = db.begin_write().unwrap();
    w.open_table(TABLE).unwrap();
    w.commit().unwrap(); // Immediate: durable
    eprintln!("redb: built {n} keys in {:?}", t.elapsed());
    db
}

fn benches(c: &mut Criterion) {
    let n = key_count();
    let dir = bench_dir();
    let ipath = dir.join("kv.db");
    let rpath = dir.join("redb.db");
    let idb = build_ironcd(&ipath, n);
    let rdb = build_redb(&rpath, n);

    let mut g = c.benchmark_group("btree");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));

    // Point get at the latest state, on a snapshot / read txn held across gets.
    let snap = idb.snapshot();
    let mut rng = Rng(1);
    g.bench_function("get/ironcd", |b| {
        b.iter(|| {
            let i = rng.next(n);
            black_box(snap.get(Tree::Kv, &key(i)).unwrap().unwrap().len())
        })
    });
    let rtxn = rdb.begin_read().unwrap();
    let rtbl = rtxn.open_table(TABLE).unwrap();
    g.bench_function("get/redb", |b| {
        b.iter(|| {
            let i = rng.next(n);
            black_box(rtbl.get(&key(i)[..]).unwrap().unwrap().value().len())
        })
    });
    // A fresh snapshot / read transaction per get, as a request would take.
    g.bench_function("snapshot_get/ironcd", |b| {
        b.iter(|| {
            let s = idb.snapshot();
            black_box(s.get(Tree::Kv, &key(rng.next(n))).unwrap().unwrap().len())
        })
    });
    g.bench_function("snapshot_get/redb", |b| {
        b.iter(|| {
            let t = rdb.begin_read().unwrap();
            let tbl = t.open_table(TABLE).unwrap();
            black_box(tbl.get(&key(rng.next(n))[..]).unwrap().unwrap().value().len())
        })
    });

    // Range scan of 100 keys from a random start.
    g.throughput(Throughput::Elements(100));
    g.bench_function("range100/ironcd", |b| {
        b.iter(|| {
            let start = key(rng.next(n));
            let mut left = 100;
            let mut sum = 0;
            snap.scan(Tree::Kv, Bound::Included(&start[..]), Bound::Unbounded, false, &mut |k, v| {
                sum += k.len() + v.len();
                left -= 1;
                left > 0
            })
            .unwrap();
            black_box(sum)
        })
    });
    g.bench_function("range100/redb", |b| {
        b.iter(|| {
            let start = key(rng.next(n));
            let mut sum = 0;
            for e in rtbl.range(&start[..]..).unwrap().take(100) {
                let (k, v) = e.unwrap();
                sum += k.value().len() + v.value().len();
            }
            black_box(sum)
        })
    });
    drop(rtbl);
    drop(rtxn);
    drop(snap);

    // 1,000 random puts (overwrites and inserts) per commit, no fsync.
    g.throughput(Throughput::Elements(1000));
    let mut next_new = n;
    g.bench_function("put1000_commit/ironcd", |b| {
        b.iter(|| {
            let mut w = idb.begin_write().unwrap();
            for _ in 0..1000 {
                let i = if rng.next(2) == 0 { rng.next(n) } else { next_new += 1; next_new };
                w.put(Tree::Kv, &key(i), &value(i)).unwrap();
            }
            w.commit().unwrap();
        })
    });
    idb.sync().unwrap();
    let mut next_new = n;
    g.bench_function("put1000_commit/redb", |b| {
        b.iter(|| {
            let mut w = rdb.begin_write().unwrap();
            w.set_durability(redb::Durability::None).unwrap();
            {
                let mut tbl = w.open_table(TABLE).unwrap();
                for _ in 0..1000 {
                    let i = if rng.next(2) == 0 { rng.next(n) } else { next_new += 1; next_new };
                    tbl.insert(&key(i)[..], &value(i)[..]).unwrap();
                }
            }
            w.commit().unwrap();
        })
    });

    // 1,000 puts, commit and make durable.
    g.sample_size(10);
    g.bench_function("put1000_commit_sync/ironcd", |b| {
        b.iter(|| {
            let mut w = idb.begin_write().unwrap();
            for _ in 0..1000 {
                let i = rng.next(n);
                w.put(Tree::Kv, &key(i), &value(i)).unwrap();
            }
            w.commit().unwrap();
            idb.sync().unwrap();
        })
    });
    g.bench_function("put1000_commit_sync/redb", |b| {
        b.iter(|| {
            let w = rdb.begin_write().unwrap();
            {
                let mut tbl = w.open_table(TABLE).unwrap();
                for _ in 0..1000 {
                    let i = rng.next(n);
                    tbl.insert(&key(i)[..], &value(i)[..]).unwrap();
                }
            }
            w.commit().unwrap();
        })
    });

    // One put, commit and make durable.
    g.throughput(Throughput::Elements(1));
    g.bench_function("put_commit_sync/ironcd", |b| {
        b.iter(|| {
            let i = rng.next(n);
            let mut w = idb.begin_write().unwrap();
            w.put(Tree::Kv, &key(i), &value(i)).unwrap();
            w.commit().unwrap();
            idb.sync().unwrap();
        })
    });
    g.bench_function("put_commit_sync/redb", |b| {
        b.iter(|| {
            let i = rng.next(n);
            let w = rdb.begin_write().unwrap();
            w.open_table(TABLE).unwrap().insert(&key(i)[..], &value(i)[..]).unwrap();
            w.commit().unwrap();
        })
    });

    // Paired runs (see `paired`): same operations, alternating stores.
    {
        let (snap, rtxn) = (idb.snapshot(), rdb.begin_read().unwrap());
        let rtbl = rtxn.open_table(TABLE).unwrap();
        let mut ra = Rng(7);
        let mut rb = Rng(7);
        paired(
            "get",
            101,
            2000,
            || {
                black_box(snap.get(Tree::Kv, &key(ra.next(n))).unwrap().unwrap().len());
            },
            || {
                black_box(rtbl.get(&key(rb.next(n))[..]).unwrap().unwrap().value().len());
            },
        );
        paired(
            "range100",
            101,
            200,
            || {
                let start = key(ra.next(n));
                let mut left = 100;
                snap.scan(Tree::Kv, Bound::Included(&start[..]), Bound::Unbounded, false, &mut |_, v| {
                    black_box(v);
                    left -= 1;
                    left > 0
                })
                .unwrap();
            },
            || {
                let start = key(rb.next(n));
                for e in rtbl.range(&start[..]..).unwrap().take(100) {
                    black_box(e.unwrap().1.value().len());
                }
            },
        );
    }
    let (mut ra, mut rb) = (Rng(11), Rng(11));
    paired(
        "put1000_commit",
        21,
        1,
        || {
            let mut w = idb.begin_write().unwrap();
            for _ in 0..1000 {
                let i = ra.next(2 * n);
                w.put(Tree::Kv, &key(i), &value(i)).unwrap();
            }
            w.commit().unwrap();
        },
        || {
            let mut w = rdb.begin_write().unwrap();
            w.set_durability(redb::Durability::None).unwrap();
            {
                let mut tbl = w.open_table(TABLE).unwrap();
                for _ in 0..1000 {
                    let i = rb.next(2 * n);
                    tbl.insert(&key(i)[..], &value(i)[..]).unwrap();
                }
            }
            w.commit().unwrap();
        },
    );
    idb.sync().unwrap();
    paired(
        "put1000_commit_sync",
        11,
        1,
        || {
            let mut w = idb.begin_write().unwrap();
            for _ in 0..1000 {
                let i = ra.next(n);
                w.put(Tree::Kv, &key(i), &value(i)).unwrap();
            }
            w.commit().unwrap();
            idb.sync().unwrap();
        },
        || {
            let w = rdb.begin_write().unwrap();
            {
                let mut tbl = w.open_table(TABLE).unwrap();
                for _ in 0..1000 {
                    let i = rb.next(n);
                    tbl.insert(&key(i)[..], &value(i)[..]).unwrap();
                }
            }
            w.commit().unwrap();
        },
    );

    // Open a populated store and serve the first read (page cache warm).
    idb.sync().unwrap();
    drop(idb);
    drop(rdb);
    g.bench_function("open_first_get/ironcd", |b| {
        b.iter_batched(
            || (),
            |()| {
                let db = Db::open(&ipath, DbOptions::default()).unwrap();
                let len = db.snapshot().get(Tree::Kv, &key(rng.next(n))).unwrap().unwrap().len();
                (db, len) // dropped (closed) outside the timing
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("open_first_get/redb", |b| {
        b.iter_batched(
            || (),
            |()| {
                let db = redb::Database::open(&rpath).unwrap();
                let t = db.begin_read().unwrap();
                let len = t.open_table(TABLE).unwrap().get(&key(rng.next(n))[..]).unwrap().unwrap().value().len();
                drop(t);
                (db, len)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(btree, benches);
criterion_main!(btree);

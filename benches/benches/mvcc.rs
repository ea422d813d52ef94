//! MVCC apply and read costs (engine/src/mvcc), on the in-memory test store
//! and on the B-tree file (`btree::Db`, publish without fsync: durability
//! comes from the WAL). Figures and machine: docs/mvcc.md.
//!
//! - `put/single`: one put per write transaction, then publish.
//! - `put/txn1000`: one txn of 1000 puts, then publish.
//! - `range100/head`: a 100-key range at the head revision of a 10k-key store.
//! - `compaction`: physical compaction of 10k superseded revisions.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ironcd_engine::btree::{Db, DbOptions};
use ironcd_engine::kv::Store;
use ironcd_engine::mvcc::testing::MemStore;
use ironcd_engine::mvcc::*;
use std::time::Duration;

const KEYS: usize = 10_000;

fn key(i: usize) -> Vec<u8> {
    format!("key/{:08}", i % KEYS).into_bytes()
}

fn put_req(i: usize) -> PutRequest {
    PutRequest { key: key(i), value: vec![b'v'; 128], ..Default::default() }
}

fn fill<S: Store>(kv: &KvStore<S>, n: usize) {
    let mut w = kv.write().unwrap();
    for i in 0..n {
        w.put(i as u64, &put_req(i)).unwrap();
    }
    w.commit().unwrap();
}

fn cfg() -> Config {
    Config { events: EventMode::Events, ..Config::default() }
}

fn bench_store<S: Store>(c: &mut Criterion, name: &str, make: impl Fn() -> S) {
    let mut g = c.benchmark_group(format!("mvcc/{name}"));
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));

    let kv = KvStore::open(make(), cfg()).unwrap();
    fill(&kv, KEYS);
    let mut i = 0usize;
    g.throughput(Throughput::Elements(1));
    g.bench_function("put/single", |b| {
        b.iter(|| {
            i += 1;
            let mut w = kv.write().unwrap();
            w.put(i as u64, &put_req(i)).unwrap();
            w.take_events();
            w.commit().unwrap();
        })
    });

    g.throughput(Throughput::Elements(1000));
    g.bench_function("put/txn1000", |b| {
        b.iter(|| {
            i += 1000;
            let ops = (0..1000).map(|j| Request::RequestPut(put_req(i + j)).into()).collect();
            let t = TxnRequest { compare: vec![], success: ops, failure: vec![] };
            let mut w = kv.write().unwrap();
            w.txn(i as u64, &t).unwrap();
            w.take_events();
            w.commit().unwrap();
        })
    });

    g.throughput(Throughput::Elements(100));
    let mut start = 0usize;
    g.bench_function("range100/head", |b| {
        b.iter(|| {
            start = (start + 977) % (KEYS - 100);
            let r = RangeRequest { key: key(start), range_end: key(start + 100), ..Default::default() };
            let resp = kv.read().unwrap().range(&r).unwrap();
            assert_eq!(resp.kvs.len(), 100);
        })
    });
    g.bench_function("range100/old_rev", |b| {
        let rev = kv.read().unwrap().revision() - 5;
        b.iter(|| {
            start = (start + 977) % (KEYS - 100);
            let r = RangeRequest { key: key(start), range_end: key(start + 100), revision: rev, ..Default::default() };
            let resp = kv.read().unwrap().range(&r).unwrap();
            assert_eq!(resp.kvs.len(), 100);
        })
    });
    drop(kv);

    // 1000 keys x 11 versions; compaction at the head removes 10k revisions.
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("compaction", |b| {
        b.iter_batched(
            || {
                let kv = KvStore::open(make(), cfg()).unwrap();
                let mut w = kv.write().unwrap();
                for i in 0..11_000 {
                    w.put(i as u64, &PutRequest { key: key(i % 1000), value: vec![b'v'; 128], ..Default::default() }).unwrap();
                }
                let rev = w.revision();
                w.compact(0, &CompactionRequest { revision: rev, physical: false }).unwrap();
                w.commit().unwrap();
                kv
            },
            |kv| {
                let mut w = kv.write().unwrap();
                while w.compact_step(1000).unwrap() == CompactStep::More {}
                w.commit().unwrap();
                kv
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_store(c, "mem", MemStore::new);
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    bench_store(c, "btree", || {
        n.set(n.get() + 1);
        Db::open(dir.path().join(format!("kv{}.db", n.get())), DbOptions::default()).unwrap()
    });
}

criterion_group!(mvcc, benches);
criterion_main!(mvcc);

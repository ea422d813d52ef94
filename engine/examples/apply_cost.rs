//! CPU and allocations per put of the server's apply path, engine part:
//! batches of puts (8-byte keys, 256-byte values, distinct keys) applied in
//! one MVCC write transaction on the B-tree file, the raft bookkeeping put
//! into `Tree::Meta`, published; the store synced every 10,000 puts, as the
//! server does. `cargo run --release -p ironcd-engine --example apply_cost
//! -- [batch] [puts]`. Prints CPU ns/put (best of 5 rounds) and allocations/put.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ironcd_engine::btree::{Db, DbOptions};
use ironcd_engine::kv::{Store, Tree, WriteView};
use ironcd_engine::mvcc::{Config, EventMode, KvStore, PutRequest};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(l.size() as u64, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(n as u64, Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn key(i: u64) -> Vec<u8> {
    // etcd's benchmark: Go's PutVarint(i) at the front of 8 zero bytes.
    let mut k = vec![0u8; 8];
    let mut z = i << 1;
    let mut at = 0;
    while z >= 0x80 && at < 7 {
        k[at] = z as u8 | 0x80;
        z >>= 7;
        at += 1;
    }
    k[at] = z as u8;
    k
}

/// CPU time of this process in nanoseconds (the fdatasyncs' waits excluded).
fn cpu_now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let batch = args.first().copied().unwrap_or(50);
    let puts = args.get(1).copied().unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let mut best = f64::MAX;
    let mut allocs = 0.0;
    let mut bytes = 0.0;
    for round in 0..5 {
        let path = dir.path().join(format!("kv-{round}.db"));
        let db = Db::open(&path, DbOptions::default()).unwrap();
        let kv = KvStore::open(db, Config { events: EventMode::Events, ..Config::default() }).unwrap();
        let state = vec![7u8; 60];
        let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
        let t = cpu_now();
        let mut i = 0u64;
        let mut unsynced = 0;
        while i < puts {
            let reqs: Vec<PutRequest> = (i..i + batch)
                .map(|j| PutRequest { key: key(j), value: vec![b'v'; 256], ..Default::default() })
                .collect();
            let mut w = kv.write().unwrap();
            let mut out = Vec::with_capacity(reqs.len());
            for r in reqs {
                i += 1;
                out.push(w.put_owned(i, r).unwrap());
            }
            let events = w.take_events();
            let mut view = w.into_view().unwrap();
            view.put(Tree::Meta, b"raft/applied_state", &state).unwrap();
            view.set_applied_index(i);
            view.commit().unwrap();
            drop(events);
            drop(out);
            unsynced += batch;
            if unsynced >= 10_000 {
                kv.store().sync().unwrap();
                unsynced = 0;
            }
        }
        let ns = (cpu_now() - t) / puts as f64;
        allocs = (ALLOCS.load(Relaxed) - a0) as f64 / puts as f64;
        bytes = (BYTES.load(Relaxed) - b0) as f64 / puts as f64;
        best = best.min(ns);
    }
    println!("batch {batch}: {best:.0} ns/put, {allocs:.2} allocs/put, {bytes:.0} bytes allocated/put");
}

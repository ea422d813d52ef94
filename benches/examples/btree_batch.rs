//! Profiling driver for the batched-write path: builds `BTREE_BENCH_KEYS`
//! keys (default 1,000,000), then runs rounds of 1,000 random puts + commit
//! and prints the time spent in puts and in commit separately. With
//! `redb` as the first argument it runs the same workload on redb.
//!
//! `cargo run --release -p ironcd-benches --example btree_batch [redb] [rounds]`
//! (under `perf record -g -e cpu-clock` to see where a put goes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ironcd_benches::btree_workload::{key, value, Rng};
use ironcd_engine::btree::{Db, DbOptions};
use ironcd_engine::kv::{Store, Tree, WriteView};
use redb::TableDefinition;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");




/// User + system CPU time of this process so far, in clock ticks (from
/// `/proc/self/stat`; 0 where that is missing). Less disturbed than wall
/// time by other work on a shared machine.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let redb_mode = args.get(1).is_some_and(|a| a == "redb");
    let rounds: usize = args.iter().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200);
    let n: u64 = ironcd_benches::btree_workload::key_count();
    // `BTREE_BATCH_DIR` keeps the store between runs (built on first use),
    // so a profile of later runs shows only the batched writes.
    let keep = std::env::var_os("BTREE_BATCH_DIR").map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::var_os("IRONCD_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"))
            .join(format!("batch-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    // `BTREE_SYNC_EVERY`: sync after every Nth commit (0: only at the end).
    let sync_every: usize = std::env::var("BTREE_SYNC_EVERY").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let mut rng = Rng(11);
    let (mut tput, mut tcommit) = (Vec::new(), Vec::new());
    let (cpu0, cpu1);
    if redb_mode {
        let path = dir.join("redb.db");
        let mut i = if path.exists() { n } else { 0 };
        let db = redb::Database::create(path).unwrap();
        while i < n {
            let mut w = db.begin_write().unwrap();
            w.set_durability(redb::Durability::None).unwrap();
            {
                let mut t = w.open_table(TABLE).unwrap();
                for j in i..(i + 20_000).min(n) {
                    t.insert(&key(j)[..], &value(j)[..]).unwrap();
                }
            }
            w.commit().unwrap();
            i += 20_000;
        }
        eprintln!("ready in {:?}", t.elapsed());
        cpu0 = cpu_ticks();
        for _ in 0..rounds {
            let t0 = Instant::now();
            let mut w = db.begin_write().unwrap();
            w.set_durability(redb::Durability::None).unwrap();
            {
                let mut t = w.open_table(TABLE).unwrap();
                for _ in 0..1000 {
                    let i = rng.next(2 * n);
                    t.insert(&key(i)[..], &value(i)[..]).unwrap();
                }
            }
            let t1 = Instant::now();
            w.commit().unwrap();
            tput.push(t1 - t0);
            tcommit.push(t1.elapsed());
        }
        cpu1 = cpu_ticks();
    } else {
        let path = dir.join("kv.db");
        let mut i = if path.exists() { n } else { 0 };
        let db = Db::open(path, DbOptions::default()).unwrap();
        while i < n {
            let mut w = db.begin_write().unwrap();
            for j in i..(i + 20_000).min(n) {
                w.put(Tree::Kv, &key(j), &value(j)).unwrap();
            }
            w.commit().unwrap();
            i += 20_000;
        }
        db.sync().unwrap();
        eprintln!("ready in {:?}", t.elapsed());
        cpu0 = cpu_ticks();
        for r in 0..rounds {
            let t0 = Instant::now();
            let mut w = db.begin_write().unwrap();
            for _ in 0..1000 {
                let i = rng.next(2 * n);
                w.put(Tree::Kv, &key(i), &value(i)).unwrap();
            }
            let t1 = Instant::now();
            w.commit().unwrap();
            tput.push(t1 - t0);
            tcommit.push(t1.elapsed());
            if sync_every > 0 && r % sync_every == sync_every - 1 {
                db.sync().unwrap();
            }
        }
        cpu1 = cpu_ticks();
        db.sync().unwrap();
        eprintln!("{:?}", db.stats().unwrap());
    }
    // Ticks are 10 ms: CPU ms per round.
    let cpu = (cpu1 - cpu0) as f64 * 10.0 / rounds as f64;
    eprintln!(
        "{}: {rounds} rounds of 1,000 puts: puts median {:?}, commit median {:?}, cpu {cpu:.2} ms/round",
        if redb_mode { "redb" } else { "ironcd" },
        median(tput),
        median(tcommit)
    );
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

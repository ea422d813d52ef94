//! Space: `SPACE_KEYS` keys (default 1,000,000) of 64 bytes with 256-byte
//! values are loaded, then overwritten `SPACE_ROUNDS` times (default 10);
//! after each round the store is compacted to the head revision and synced.
//! Driven as the server drives it: 1,000 puts per write transaction, a sync
//! every 10,000 applied entries (`server/src/main.rs`), compaction steps of
//! 1,000 in their own transactions (`start_compactor`).
//!
//! Prints one row per round (file bytes, live bytes = Σ key + value of the
//! latest versions, their ratio, page counts) and, at the end, where the
//! pages go per tree, read from the file by its documented format
//! (`docs/btree.md`). `SPACE_COMPACT_EVERY=n` also compacts to the head
//! every `n` puts inside a round (etcd's revision-based auto-compaction);
//! `SPACE_COMPACT_SYNC_EVERY=n` syncs every `n` compaction steps (default
//! 10, as the server's compactor: `COMPACTION_SYNC_STEPS`; 0: only when the
//! compaction ends). `SPACE_TRACE=1` prints the page counts whenever the
//! high-water mark grows. Not a criterion bench: `cargo bench -p ironcd-benches
//! --bench space`. Data in `$IRONCD_BENCH_DIR` or `target/bench-data`.
//! Figures: `docs/mvcc.md`, "Space".

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ironcd_engine::btree::{Db, DbOptions};
use ironcd_engine::kv::{Store, Tree};
use ironcd_engine::mvcc::*;
use ironcd_engine::workload::{key, value, KEY_LEN, VALUE_LEN};

/// Puts per write transaction (one apply batch).
const BATCH: u64 = 1_000;
/// Applied entries between syncs, the server's `sync_every`.
const SYNC_EVERY: u64 = 10_000;
const PS: u64 = 4096;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}


/// Pages and bytes of one tree, from a walk of the file.
#[derive(Default, Clone, Copy)]
struct TreeSpace {
    branch: u64,
    leaf: u64,
    overflow: u64,
    entries: u64,
    /// Bytes of slots and cells in leaves (header and gap excluded).
    leaf_used: u64,
}

fn rd_u16(p: &[u8], off: usize) -> usize {
    u16::from_le_bytes([p[off], p[off + 1]]) as usize
}
fn rd_u32(p: &[u8], off: usize) -> u64 {
    u64::from(u32::from_le_bytes(p[off..off + 4].try_into().unwrap()))
}
fn rd_u64(p: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(p[off..off + 8].try_into().unwrap())
}

/// Length of a cell part at `off` (inline `len u16 · bytes`, or a 12-byte
/// overflow reference) and the overflow pages it names.
fn part(p: &[u8], off: usize, ovf: bool) -> (usize, u64) {
    if ovf {
        (12, (32 + rd_u32(p, off)).div_ceil(PS))
    } else {
        (2 + rd_u16(p, off), 0)
    }
}

/// Walks every tree of the newest meta of a synced, quiescent file.
fn walk(path: &Path) -> [TreeSpace; Tree::COUNT] {
    let f = File::open(path).unwrap();
    let page = |id: u64| {
        let mut b = vec![0u8; PS as usize];
        f.read_exact_at(&mut b, id * PS).unwrap();
        b
    };
    let metas = [page(0), page(1)];
    let meta = metas.iter().filter(|m| &m[..8] == b"IRCDKVB1").max_by_key(|m| rd_u64(m, 16)).unwrap();
    let mut out = [TreeSpace::default(); Tree::COUNT];
    for (t, ts) in out.iter_mut().enumerate() {
        let mut stack = vec![rd_u64(meta, 64 + 8 * t)];
        while let Some(id) = stack.pop() {
            if id == 0 {
                continue;
            }
            let p = page(id);
            let count = rd_u16(&p, 6);
            match p[4] {
                1 => {
                    ts.branch += 1;
                    stack.push(rd_u64(&p, 24));
                    for i in 0..count {
                        let c = rd_u16(&p, 32 + 2 * i);
                        let (k, o) = part(&p, c + 1, p[c] & 1 != 0);
                        ts.overflow += o;
                        stack.push(rd_u64(&p, c + 1 + k));
                    }
                }
                2 => {
                    ts.leaf += 1;
                    ts.entries += count as u64;
                    for i in 0..count {
                        let c = rd_u16(&p, 24 + 2 * i);
                        let (k, ko) = part(&p, c + 1, p[c] & 1 != 0);
                        let (v, vo) = part(&p, c + 1 + k, p[c] & 2 != 0);
                        ts.overflow += ko + vo;
                        ts.leaf_used += (2 + 1 + k + v) as u64;
                    }
                }
                k => panic!("page {id}: kind {k} in a tree"),
            }
        }
    }
    out
}

fn sync(kv: &KvStore<Db>) {
    kv.store().sync().unwrap();
    trace(kv, "sync");
}

/// With `SPACE_TRACE=1`: prints the page counts whenever the high-water
/// mark grew since the last call (where in the workload the file grows).
fn trace(kv: &KvStore<Db>, what: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    if std::env::var_os("SPACE_TRACE").is_none() {
        return;
    }
    let s = kv.store().stats().unwrap();
    let last = LAST.swap(s.high_water, Ordering::Relaxed);
    if s.high_water > last {
        println!("#   +{} pages after {what}: high water {}, free {}, pending {}", s.high_water - last, s.high_water, s.free_pages, s.pending_pages);
    }
}

/// Compacts to the head revision and runs the steps to completion, with a
/// sync every `sync_steps` steps (0: none until the caller's).
fn compact(kv: &KvStore<Db>, index: &mut u64, sync_steps: u64) {
    let mut w = kv.write().unwrap();
    let rev = w.revision();
    if rev <= w.compact_revision() {
        return; // compacted to the head inside the round already
    }
    *index += 1;
    w.compact(*index, &CompactionRequest { revision: rev, physical: false }).unwrap();
    w.commit().unwrap();
    let mut steps = 0;
    while kv.read().unwrap().compaction_pending() {
        let mut w = kv.write().unwrap();
        w.compact_step(1000).unwrap();
        w.commit().unwrap();
        trace(kv, "compact_step");
        steps += 1;
        if sync_steps > 0 && steps % sync_steps == 0 {
            sync(kv);
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let keys = env_u64("SPACE_KEYS", 1_000_000);
    let rounds = env_u64("SPACE_ROUNDS", 10);
    let compact_every = env_u64("SPACE_COMPACT_EVERY", 0);
    let compact_sync = env_u64("SPACE_COMPACT_SYNC_EVERY", 10);
    let base = std::env::var_os("IRONCD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"));
    let dir = base.join(format!("space-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let path = dir.join("kv.db");

    let kv = KvStore::open(Db::open(&path, DbOptions::default()).unwrap(), Config::default()).unwrap();
    let live = keys * (KEY_LEN + VALUE_LEN) as u64;
    let (mut index, mut unsynced) = (0u64, 0u64);
    println!("# {keys} keys x ({KEY_LEN} B key + {VALUE_LEN} B value) = {live} live bytes; {rounds} overwrite rounds; compact every {compact_every} puts (0: per round), sync every {compact_sync} compaction steps (0: at the end)");
    println!(
        "| round | file bytes | live bytes | file / live | in use / live | high water (pages) | peak high water (pages) | free pages | leaf | branch | round s | compact s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let t_all = Instant::now();
    for round in 0..=rounds {
        let t0 = Instant::now();
        for start in (0..keys).step_by(BATCH as usize) {
            let mut w = kv.write().unwrap();
            for i in start..(start + BATCH).min(keys) {
                index += 1;
                w.put(index, &PutRequest { key: key(i), value: value(round, i), ..Default::default() }).unwrap();
            }
            w.commit().unwrap();
            trace(&kv, "puts");
            unsynced += BATCH;
            if compact_every > 0 && round > 0 && (start + BATCH) % compact_every == 0 {
                compact(&kv, &mut index, compact_sync);
            }
            if unsynced >= SYNC_EVERY {
                sync(&kv);
                unsynced = 0;
            }
        }
        sync(&kv);
        unsynced = 0;
        let peak = kv.store().stats().unwrap().high_water;
        let t_round = t0.elapsed();

        let t1 = Instant::now();
        compact(&kv, &mut index, compact_sync);
        sync(&kv);
        let t_compact = t1.elapsed();

        let s = kv.store().stats().unwrap();
        let c = kv.store().check().unwrap();
        assert_eq!(c.entries[Tree::Kv as usize], keys, "one version per key after compaction");
        let in_use = s.high_water.saturating_sub(s.free_pages) * PS;
        println!(
            "| {round} | {} | {live} | {:.2} | {:.2} | {} | {peak} | {} | {} | {} | {:.0} | {:.0} |",
            s.file_len,
            s.file_len as f64 / live as f64,
            in_use as f64 / live as f64,
            s.high_water,
            s.free_pages,
            c.leaf_pages,
            c.branch_pages,
            t_round.as_secs_f64(),
            t_compact.as_secs_f64(),
        );
    }
    println!("# total {:.0} s", t_all.elapsed().as_secs_f64());

    let s = kv.store().stats().unwrap();
    let c = kv.store().check().unwrap();
    println!("# DbStats {s:?}");
    println!("# CheckReport {c:?}");
    drop(kv);

    let per_tree = walk(&path);
    println!("| tree | entries | leaf pages | branch pages | overflow pages | bytes / key | leaf fill |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut total = 0;
    for (t, ts) in Tree::ALL.iter().zip(per_tree) {
        if ts.entries == 0 {
            continue;
        }
        let pages = ts.leaf + ts.branch + ts.overflow;
        total += pages;
        println!(
            "| {t:?} | {} | {} | {} | {} | {:.0} | {:.0}% |",
            ts.entries,
            ts.leaf,
            ts.branch,
            ts.overflow,
            (pages * PS) as f64 / keys as f64,
            100.0 * ts.leaf_used as f64 / (ts.leaf * (PS - 24)) as f64,
        );
    }
    println!(
        "# reachable {total} pages = {:.0} B / key ({:.2} x live); file {} B = {:.0} B / key",
        (total * PS) as f64 / keys as f64,
        (total * PS) as f64 / live as f64,
        s.file_len,
        s.file_len as f64 / keys as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}

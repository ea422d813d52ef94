//! Space use of the MVCC store on the B-tree file under steady overwrites:
//! every key overwritten round after round, compacted to the head after each
//! round, must not grow the file once the history it holds stops growing.
//! Driven as the server drives it: 1,000 puts per write transaction, a sync
//! every 10,000 applied entries (`server/src/main.rs`), compaction in steps of
//! 1,000 in their own transactions with a sync every 10 steps
//! (`start_compactor`), then a sync.
//! The full-scale figures (1M keys) come from `benches/benches/space.rs` and
//! are recorded in `docs/mvcc.md` ("Space").

use ironcd_engine::btree::{CheckReport, Db, DbOptions, DbStats};
use ironcd_engine::kv::{Store, Tree};
use ironcd_engine::mvcc::*;
use ironcd_engine::workload::{key, value, KEY_LEN, VALUE_LEN};

const KEYS: u64 = 10_000;
const ROUNDS: u32 = 10;
/// Puts per write transaction (one apply batch).
const BATCH: u64 = 1_000;
/// Applied entries between syncs, the server's `sync_every`.
const SYNC_EVERY: u64 = 10_000;
/// Round after which the file must have stopped growing.
const SETTLED: u32 = 5;


struct Driver {
    kv: KvStore<Db>,
    index: u64,
    unsynced: u64,
    /// Also compact to the head every this many puts (0: per round only).
    compact_every: u64,
}

impl Driver {
    /// Puts every key once, `BATCH` puts per write transaction.
    fn round(&mut self, round: u32) {
        for start in (0..KEYS).step_by(BATCH as usize) {
            let mut w = self.kv.write().unwrap();
            for i in start..(start + BATCH).min(KEYS) {
                self.index += 1;
                w.put(self.index, &PutRequest { key: key(i), value: value(u64::from(round), i), ..Default::default() }).unwrap();
            }
            w.commit().unwrap();
            self.unsynced += BATCH;
            if self.compact_every > 0 && round > 0 && (start + BATCH) % self.compact_every == 0 {
                self.compact();
            }
            if self.unsynced >= SYNC_EVERY {
                self.kv.store().sync().unwrap();
                self.unsynced = 0;
            }
        }
    }

    /// Compacts to the head revision, runs the steps to completion (a sync
    /// every 10 steps, as the server's compactor), syncs.
    fn compact(&mut self) {
        let mut w = self.kv.write().unwrap();
        if w.revision() <= w.compact_revision() {
            return;
        }
        self.index += 1;
        let rev = w.revision();
        w.compact(self.index, &CompactionRequest { revision: rev, physical: false }).unwrap();
        w.commit().unwrap();
        let mut steps = 0;
        while self.kv.read().unwrap().compaction_pending() {
            let mut w = self.kv.write().unwrap();
            w.compact_step(1000).unwrap();
            w.commit().unwrap();
            steps += 1;
            if steps % 10 == 0 {
                self.kv.store().sync().unwrap();
            }
        }
        self.kv.store().sync().unwrap();
        self.unsynced = 0;
    }
}

/// How much `ensure_len` grows a file of `len` bytes in one step.
fn growth_step(len: u64) -> u64 {
    (len / 16).clamp(1 << 20, 128 << 20)
}

#[test]
fn overwritten_and_compacted_file_stops_growing() {
    // The requirement is file <= 2x live. Not met when compaction runs only
    // once per overwrite of the whole keyspace: measured 4.01 at this scale
    // (1.41 in reachable pages; the rest is the round's new versions and the
    // copy-on-write copies a sync interval pins). Before: 5.04 and 1.51
    // (one-pass compaction, 16-byte revision keys); 7.06 and 2.68 before
    // `Tree::KeyHistory` held superseded changes only and siblings merged.
    // docs/mvcc.md, "Space". The bounds pin what was measured so a
    // regression shows; tighten them when the gap closes.
    run(0, 4.3, 1.45);
}

/// Compaction to the head every 10 % of the keyspace (etcd's periodic
/// auto-compaction). Measured 2.05x at this scale, where one sync interval
/// (10,000 puts) rewrites every key-index leaf; 2.02x at 100k keys, 1.80x
/// at 1M (`benches/benches/space.rs`).
#[test]
fn compacting_every_tenth_of_the_keys_stays_near_2x() {
    run(KEYS / 10, 2.2, 1.45);
}

fn run(compact_every: u64, max_ratio: f64, max_in_use: f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = DbOptions::default();
    opts.debug_check_every = 0; // checked once per round below
    let db = Db::open(dir.path().join("kv.db"), opts).unwrap();
    let mut d = Driver { kv: KvStore::open(db, Config::default()).unwrap(), index: 0, unsynced: 0, compact_every };
    let live = KEYS * (KEY_LEN + VALUE_LEN) as u64;
    let mut rows: Vec<(DbStats, CheckReport)> = Vec::new();

    for round in 0..=ROUNDS {
        d.round(round);
        d.compact();
        let (stats, check) = (d.kv.store().stats().unwrap(), d.kv.store().check().unwrap());
        // Compaction to the head leaves exactly one version per key.
        assert_eq!(check.entries[Tree::Kv as usize], KEYS, "round {round}");
        assert_eq!(check.entries[Tree::KeyIndex as usize], KEYS, "round {round}");
        // `Tree::KeyHistory` holds superseded changes only: none are left.
        assert_eq!(check.entries[Tree::KeyHistory as usize], 0, "round {round}");
        println!(
            "round {round:2}: file {:>10} B, live {live} B, ratio {:.2}, high water {} pages, free {}, pending {}; \
             branch {} leaf {} overflow {} freelist {}",
            stats.file_len,
            stats.file_len as f64 / live as f64,
            stats.high_water,
            stats.free_pages,
            stats.pending_pages,
            check.branch_pages,
            check.leaf_pages,
            check.overflow_pages,
            check.freelist_pages,
        );
        rows.push((stats, check));
    }

    let r = d.kv.read().unwrap().range(&RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() }).unwrap();
    assert_eq!(r.count, KEYS as i64);

    // The file stops growing: after round SETTLED it grows by at most one
    // growth step (1/16 of the file) ...
    let settled = &rows[SETTLED as usize].0;
    for (round, (s, _)) in rows.iter().enumerate().skip(SETTLED as usize + 1) {
        assert!(
            s.file_len <= settled.file_len + growth_step(settled.file_len),
            "round {round}: file {} B, {} B after round {SETTLED}",
            s.file_len,
            settled.file_len
        );
    }
    // ... and the pages in use stop growing too (a doubling of the file
    // could hide steady growth of the high-water mark).
    let last = &rows[ROUNDS as usize].0;
    assert!(
        last.high_water * 100 <= settled.high_water * 105,
        "high water {} pages after round {ROUNDS}, {} after round {SETTLED}",
        last.high_water,
        settled.high_water
    );
    let ratio = last.file_len as f64 / live as f64;
    let in_use = (last.high_water - last.free_pages) * 4096;
    let in_use_ratio = in_use as f64 / live as f64;
    println!("after round {ROUNDS}: file / live {ratio:.2}, pages in use / live {in_use_ratio:.2} (requirement: file <= 2x live)");
    assert!(ratio <= max_ratio, "file / live {ratio:.2}");
    assert!(in_use_ratio <= max_in_use, "pages in use / live {in_use_ratio:.2}");
}

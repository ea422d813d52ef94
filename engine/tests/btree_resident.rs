//! The store writes its pages through a shared mapping, so every page a
//! commit wrote would stay in the process's resident set; after a sync the
//! mapping's page-table entries are dropped (`PageIo::release_resident`),
//! leaving the pages in the page cache only, as a store written with
//! `pwrite` keeps them. The data is unchanged: snapshots taken before and
//! after read the same bytes, through faults that map the pages again.
//! One test in this file, so nothing else in the process moves its RSS.

use std::ops::Bound;

use ironcd_engine::btree::{Db, DbOptions};
use ironcd_engine::kv::{ReadView, Store, Tree, WriteView};

/// File-backed resident memory of this process, in bytes (`RssFile`).
fn rss_file() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssFile:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssFile in /proc/self/status");
    kb << 10
}

fn value(i: u32) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; 1000];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

#[test]
fn a_sync_leaves_written_pages_in_the_page_cache_not_in_the_process() {
    const KEYS: u32 = 40_000; // ~40 MiB of values
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("kv.db"), DbOptions::default()).unwrap();
    let before = rss_file();
    for chunk in 0..KEYS / 1000 {
        let mut w = db.begin_write().unwrap();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            w.put(Tree::Kv, format!("k{i:08}").as_bytes(), &value(i)).unwrap();
        }
        w.commit().unwrap();
    }
    let held = db.snapshot();
    let written = rss_file().saturating_sub(before);
    assert!(written > 30 << 20, "the writes mapped only {written} bytes: the test measures nothing");
    db.sync().unwrap();
    let after = rss_file().saturating_sub(before);
    assert!(after < written / 4, "{after} bytes still mapped after the sync (were {written})");
    // Same bytes through the snapshot held across the sync and a new one.
    for snap in [&held, &db.snapshot()] {
        let mut n = 0u32;
        snap.scan(Tree::Kv, Bound::Unbounded, Bound::Unbounded, false, &mut |k, v| {
            assert_eq!(k, format!("k{n:08}").as_bytes());
            assert_eq!(v, &value(n)[..]);
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, KEYS);
    }
    db.check().unwrap();
}

//! Readers on other threads take snapshots while one writer commits, syncs
//! and grows the file (remapping): every snapshot is internally consistent
//! (all keys carry one generation), later snapshots never go back in time,
//! and a snapshot held across the whole run still returns its old data.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ironcd_engine::btree::{Db, DbOptions};
use ironcd_engine::kv::{ReadView, Store, Tree, WriteView};

const KEYS: u32 = 500;
const GENERATIONS: u64 = 150;

fn gen_of<V: ReadView>(s: &V) -> u64 {
    let mut gens = Vec::new();
    s.scan(Tree::Kv, Bound::Unbounded, Bound::Unbounded, false, &mut |k, v| {
        let g = u64::from_le_bytes(v[..8].try_into().unwrap());
        // The value also encodes its key, so a torn mix of pages would show.
        assert_eq!(&v[8..12], k, "value belongs to another key");
        gens.push(g);
        true
    })
    .unwrap();
    if gens.is_empty() {
        return 0;
    }
    assert_eq!(gens.len(), KEYS as usize, "snapshot lost or gained keys");
    assert!(gens.iter().all(|&g| g == gens[0]), "snapshot mixes generations");
    // The side tree is written in the same transactions.
    let side = s.get(Tree::KeyHistory, b"gen").unwrap().unwrap();
    assert_eq!(u64::from_le_bytes(side[..8].try_into().unwrap()), gens[0]);
    assert_eq!(s.applied_index(), gens[0]);
    gens[0]
}

#[test]
fn readers_see_consistent_snapshots_during_heavy_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = DbOptions::default();
    o.initial_size = 64 << 10; // start small so the writer remaps often
    let db = Arc::new(Db::open(dir.path().join("kv.db"), o).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let early = db.snapshot();

    let readers: Vec<_> = (0..2)
        .map(|r| {
            let db = db.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                let mut held = Vec::new();
                let mut n = 0u64;
                while !done.load(Ordering::Acquire) {
                    let s = db.snapshot();
                    let g = gen_of(&s);
                    assert!(g >= last, "reader {r}: generation went back from {last} to {g}");
                    last = g;
                    // Point reads agree with the scan's generation.
                    for k in [0u32, KEYS / 2, KEYS - 1] {
                        if let Some(v) = s.get(Tree::Kv, &k.to_be_bytes()).unwrap() {
                            assert_eq!(u64::from_le_bytes(v[..8].try_into().unwrap()), g);
                        }
                    }
                    // Hold some snapshots across many commits, re-verify later.
                    if n.checked_rem(7) == Some(0) {
                        held.push((g, s));
                    }
                    if held.len() > 4 {
                        let (g0, old) = held.remove(0);
                        assert_eq!(gen_of(&old), g0, "reader {r}: a held snapshot changed");
                    }
                    n += 1;
                }
                for (g0, old) in held {
                    assert_eq!(gen_of(&old), g0);
                }
                n
            })
        })
        .collect();

    for g in 1..=GENERATIONS {
        let mut w = db.begin_write().unwrap();
        for k in 0..KEYS {
            let mut v = g.to_le_bytes().to_vec();
            v.extend_from_slice(&k.to_be_bytes());
            v.resize(8 + 4 + (g as usize * 13 + k as usize) % 300, 0xAB);
            w.put(Tree::Kv, &k.to_be_bytes(), &v).unwrap();
        }
        // A growing large value forces file growth and remaps mid-run.
        let mut side = g.to_le_bytes().to_vec();
        side.resize(8 + (g as usize) * 4000, 1);
        w.put(Tree::KeyHistory, b"gen", &side).unwrap();
        w.set_applied_index(g);
        w.commit().unwrap();
        if g % 10 == 0 {
            db.sync().unwrap();
        }
    }
    done.store(true, Ordering::Release);
    let reads: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(reads > 0);
    assert_eq!(gen_of(&early), 0, "the snapshot from before any write still sees nothing");
    assert_eq!(gen_of(&db.snapshot()), GENERATIONS);
    db.sync().unwrap();
    db.check().unwrap();
}

/// `sync` runs on its own thread while the writer keeps committing (sync
/// holds the writer lock only to prepare and to finish). After a crash that
/// loses everything unsynced, the store reopens consistent, at least as new
/// as what was published before the last completed sync began.
#[test]
fn sync_on_another_thread_while_committing() {
    use ironcd_engine::btree::{CrashMode, FaultIo};
    let io = Arc::new(FaultIo::new());
    let mut o = DbOptions::default();
    o.initial_size = 64 << 10;
    let db = Arc::new(Db::open_with_io(io.clone(), o.clone()).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            let mut floor = 0;
            let mut syncs = 0;
            while !done.load(Ordering::Acquire) {
                let before = db.snapshot().applied_index();
                db.sync().unwrap();
                floor = before;
                syncs += 1;
            }
            (floor, syncs)
        })
    };
    let reader = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                gen_of(&db.snapshot());
            }
        })
    };
    for g in 1..=GENERATIONS {
        let mut w = db.begin_write().unwrap();
        for k in 0..KEYS {
            let mut v = g.to_le_bytes().to_vec();
            v.extend_from_slice(&k.to_be_bytes());
            w.put(Tree::Kv, &k.to_be_bytes(), &v).unwrap();
        }
        let mut side = g.to_le_bytes().to_vec();
        side.resize(8 + (g as usize % 7) * 3000, 2);
        w.put(Tree::KeyHistory, b"gen", &side).unwrap();
        w.set_applied_index(g);
        w.commit().unwrap();
    }
    done.store(true, Ordering::Release);
    let (floor, syncs) = syncer.join().unwrap();
    reader.join().unwrap();
    assert!(syncs > 0);
    db.check().unwrap();
    let after = Arc::new(io.crash(CrashMode::LoseUnsynced));
    drop(db);
    let db = Db::open_with_io(after, o).unwrap();
    let g = gen_of(&db.snapshot());
    assert!(g >= floor, "reopened at generation {g}, but {floor} was published before a completed sync");
    db.check().unwrap();
}

//! Crash consistency of the B-tree file through the fault-injecting backend:
//! a crash at every I/O step of a commit and sync reopens at the last synced
//! state (or the new one once its meta is durable); damaged pages and meta
//! pages are reported as `Corrupt`, never a panic; an I/O error poisons the
//! store until it is reopened.

use std::ops::Bound;
use std::sync::Arc;

use ironcd_engine::btree::{CrashMode, Db, DbOptions, FaultIo, PageIo, PAGE_SIZE};
use ironcd_engine::kv::{ReadView, Store, StoreError, StoreResult, Tree, WriteView};

type Dump = (u64, Vec<Vec<(Vec<u8>, Vec<u8>)>>);

fn dump<V: ReadView>(v: &V) -> StoreResult<Dump> {
    let mut trees = Vec::new();
    for t in Tree::ALL {
        let mut out = Vec::new();
        v.scan(t, Bound::Unbounded, Bound::Unbounded, false, &mut |k, val| {
            out.push((k.to_vec(), val.to_vec()));
            true
        })?;
        trees.push(out);
    }
    Ok((v.applied_index(), trees))
}

fn opts() -> DbOptions {
    let mut o = DbOptions::default();
    o.initial_size = 64 << 10;
    o
}

fn open(io: &Arc<FaultIo>) -> StoreResult<Db> {
    Db::open_with_io(io.clone(), opts())
}

fn val(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed as usize * 31 + i) as u8).collect()
}

/// A synced store with a few trees, overflow values and a freelist.
fn base_image() -> (Vec<u8>, Dump) {
    let io = Arc::new(FaultIo::new());
    let db = open(&io).unwrap();
    for round in 0..3u64 {
        let mut w = db.begin_write().unwrap();
        for i in 0..400u32 {
            w.put(Tree::Kv, format!("key{i:04}").as_bytes(), &val(round + u64::from(i), 40)).unwrap();
        }
        for i in 0..20u32 {
            w.put(Tree::Lease, &i.to_be_bytes(), &val(u64::from(i), 900)).unwrap();
        }
        w.put(Tree::Auth, b"large", &val(round, 30_000)).unwrap();
        w.set_applied_index(round + 1);
        w.commit().unwrap();
        db.sync().unwrap();
    }
    let d = dump(&db.snapshot()).unwrap();
    (io.crash(CrashMode::LoseUnsynced).contents(), d)
}

/// Two commits and a sync: overwrites, deletes, splits, a new large value.
fn mutate(db: &Db) -> StoreResult<()> {
    let mut w = db.begin_write()?;
    for i in (0..400u32).step_by(3) {
        w.put(Tree::Kv, format!("key{i:04}").as_bytes(), &val(1000 + u64::from(i), 60))?;
    }
    for i in (1..400u32).step_by(5) {
        w.delete(Tree::Kv, format!("key{i:04}").as_bytes())?;
    }
    for i in 0..300u32 {
        w.put(Tree::KeyIndex, format!("new{i:04}").as_bytes(), &val(u64::from(i), 100))?;
    }
    w.put(Tree::Auth, b"large", &val(77, 70_000))?;
    w.set_applied_index(10);
    w.commit()?;
    let mut w = db.begin_write()?;
    w.put(Tree::Members, b"m1", b"peer")?;
    w.delete(Tree::Lease, &3u32.to_be_bytes())?;
    w.set_applied_index(11);
    w.commit()?;
    db.sync()
}

#[test]
fn crash_at_every_io_step_of_commit_and_sync() {
    let (image, s0) = base_image();
    let clean = Arc::new(FaultIo::from_image(image.clone()));
    let db = open(&clean).unwrap();
    let ops0 = clean.ops();
    mutate(&db).unwrap();
    let steps = clean.ops() - ops0;
    let s1 = dump(&db.snapshot()).unwrap();
    assert_ne!(s0, s1);
    assert!(steps >= 5, "a commit and sync take several I/O calls, saw {steps}");

    let (mut saw_old, mut saw_new) = (0, 0);
    for k in 0..=steps {
        let io = Arc::new(FaultIo::from_image(image.clone()));
        let db = open(&io).unwrap();
        io.fail_after(Some(k));
        let r = mutate(&db);
        assert_eq!(r.is_ok(), k == steps, "step {k}: {r:?}");
        if let Err(e) = &r {
            assert!(matches!(e, StoreError::Io { .. }), "step {k}: {e}");
            // Poisoned until reopened, even once the device heals.
            io.fail_after(None);
            assert!(matches!(db.begin_write().err(), Some(StoreError::Poisoned(_))));
            assert!(matches!(db.sync(), Err(StoreError::Poisoned(_))));
            // Readers still see the last published state.
            let d = dump(&db.snapshot()).unwrap();
            assert!(d.0 == s0.0 || d.0 == 10 || d.0 == 11);
        }
        for (m, mode) in [CrashMode::LoseUnsynced, CrashMode::KeepUnsynced, CrashMode::Random(k), CrashMode::Random(k + 977)]
            .into_iter()
            .enumerate()
        {
            let after = Arc::new(io.crash(mode));
            let db2 = open(&after).unwrap_or_else(|e| panic!("step {k} mode {m}: reopen failed: {e}"));
            let d = dump(&db2.snapshot()).unwrap();
            if d == s0 {
                saw_old += 1;
                assert!(r.is_err(), "step {k} mode {m}: sync returned Ok but the old state came back");
            } else {
                assert!(d == s1, "step {k} mode {m}: reopened state is neither the old nor the new one");
                saw_new += 1;
                assert!(m != 0 || r.is_ok(), "step {k}: a lost meta write cannot surface the new state");
            }
            db2.check().unwrap_or_else(|e| panic!("step {k} mode {m}: {e}"));
            // The recovered store keeps working.
            let mut w = db2.begin_write().unwrap();
            w.put(Tree::Kv, b"after", b"crash").unwrap();
            w.commit().unwrap();
            db2.sync().unwrap();
            db2.check().unwrap();
        }
    }
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old}, new {saw_new}");
}

#[test]
fn damaged_meta_page_falls_back_to_the_other() {
    let (image, s0) = base_image();
    let io = Arc::new(FaultIo::from_image(image));
    let db = open(&io).unwrap();
    mutate(&db).unwrap();
    let s1 = dump(&db.snapshot()).unwrap();
    drop(db);
    let image = io.contents();
    let mut seen = Vec::new();
    for slot in 0..2 {
        let damaged = Arc::new(FaultIo::from_image(image.clone()));
        damaged.corrupt((slot * PAGE_SIZE + 20) as u64, 0x40);
        let db = open(&damaged).unwrap();
        let d = dump(&db.snapshot()).unwrap();
        // The surviving meta is either the newest or the one synced before it.
        assert!(d == s1 || d.0 < s1.0, "slot {slot}");
        seen.push(d == s1);
        db.check().unwrap();
    }
    assert_eq!(seen.iter().filter(|x| **x).count(), 1, "exactly one slot held the newest meta");
    let _ = s0;
    let both = Arc::new(FaultIo::from_image(image));
    both.corrupt(20, 0x40);
    both.corrupt(PAGE_SIZE as u64 + 20, 0x40);
    let err = open(&both).err().expect("no valid meta page");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

/// Flips one byte in every page of a store: reads and the check return the
/// right data or `Corrupt`, never wrong data, never a panic.
#[test]
fn flipped_bytes_are_detected() {
    let (image, s0) = base_image();
    let pages = image.len() / PAGE_SIZE;
    let (mut detected, mut harmless) = (0, 0);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for p in 2..pages {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let off = p * PAGE_SIZE + (rng as usize % PAGE_SIZE);
        let io = Arc::new(FaultIo::from_image(image.clone()));
        io.corrupt(off as u64, 1 << (rng % 8));
        let db = open(&io).unwrap();
        let read = dump(&db.snapshot());
        let checked = db.check();
        match (&read, &checked) {
            (Ok(d), Ok(_)) => {
                assert_eq!(*d, s0, "page {p}: wrong data read without an error");
                harmless += 1;
            }
            (Ok(d), Err(e)) => {
                assert_eq!(*d, s0, "page {p}");
                assert!(matches!(e, StoreError::Corrupt(_)), "page {p}: {e}");
                detected += 1;
            }
            (Err(e), Err(StoreError::Corrupt(m))) => {
                assert!(matches!(e, StoreError::Corrupt(_)), "page {p}: {e}");
                assert!(e.to_string().contains("page "), "the error names the page: {e}");
                assert!(m.contains("page"), "{m}");
                detected += 1;
            }
            (Err(e), c) => panic!("page {p}: read failed ({e}) but check said {c:?}"),
        }
    }
    assert!(detected > 10, "detected {detected}, harmless {harmless}");
}

/// Replaces pages with random bytes under a *valid* checksum and header, so
/// the decoders themselves face garbage: every call returns, none panics.
#[test]
fn garbage_pages_with_valid_checksums_never_panic() {
    let (image, _) = base_image();
    let pages = image.len() / PAGE_SIZE;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for p in 2..pages {
        for variant in 0..3u64 {
            let mut img = image.clone();
            let page = &mut img[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
            for b in page.iter_mut().skip(24) {
                let r = next();
                // Mostly small numbers so offsets and lengths look plausible.
                *b = if r % 4 == 0 { r as u8 } else { (r % 24) as u8 };
            }
            page[4] = 1 + (variant % 4) as u8;
            page[6..8].copy_from_slice(&((next() % 40) as u16).to_le_bytes());
            page[8..16].copy_from_slice(&(p as u64).to_le_bytes());
            let crc = crc32fast::hash(&page[4..]);
            page[0..4].copy_from_slice(&crc.to_le_bytes());
            let io = Arc::new(FaultIo::from_image(img));
            let Ok(db) = open(&io) else { continue };
            let snap = db.snapshot();
            let _ = dump(&snap);
            for k in ["key0001", "key0200", "key0399", "zzz"] {
                let _ = snap.get(Tree::Kv, k.as_bytes());
            }
            let _ = snap.scan(Tree::Kv, Bound::Excluded(b"key0100"), Bound::Included(b"key0300"), true, &mut |_, _| true);
            let _ = db.check();
            if let Ok(mut w) = db.begin_write() {
                let _ = w.put(Tree::Kv, b"key0150", b"x");
                let _ = w.delete(Tree::Kv, b"key0151");
                let _ = w.delete(Tree::Lease, &5u32.to_be_bytes());
                let _ = w.commit();
            }
            let _ = db.sync();
        }
    }
}

#[test]
fn sync_failure_poisons_until_reopen() {
    let io = Arc::new(FaultIo::new());
    let db = open(&io).unwrap();
    let mut w = db.begin_write().unwrap();
    w.put(Tree::Kv, b"a", b"1").unwrap();
    w.commit().unwrap();
    db.sync().unwrap();
    let mut w = db.begin_write().unwrap();
    w.put(Tree::Kv, b"b", b"2").unwrap();
    w.commit().unwrap();
    // The sync's first I/O call fails (the crash test above covers a
    // failure at each later call, fdatasync included).
    let before = io.ops();
    io.fail_after(Some(0));
    assert!(matches!(db.sync(), Err(StoreError::Io { .. })));
    assert!(io.ops() > before);
    io.fail_after(None);
    assert!(matches!(db.sync(), Err(StoreError::Poisoned(_))));
    assert!(matches!(db.begin_write().err(), Some(StoreError::Poisoned(_))));
    assert_eq!(db.snapshot().get(Tree::Kv, b"b").unwrap(), Some(&b"2"[..]));
    drop(db);
    let reopened = Arc::new(io.crash(CrashMode::LoseUnsynced));
    let db = open(&reopened).unwrap();
    assert_eq!(db.snapshot().get(Tree::Kv, b"a").unwrap(), Some(&b"1"[..]));
    assert_eq!(db.snapshot().get(Tree::Kv, b"b").unwrap(), None);
    db.check().unwrap();
    assert!(reopened.file_len().unwrap() >= 2 * PAGE_SIZE as u64);
}

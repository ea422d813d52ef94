//! A write transaction parked without the writer lock (`WriteTxn::park`)
//! and taken up again (`Db::resume`): what the state machine does to apply
//! a log entry while its WAL write is in flight. Its changes are invisible
//! until committed, other writers may commit meanwhile (the parked changes
//! are then dropped, never merged into the newer state), a sync may run
//! meanwhile, and the file's page accounting stays whole in every case.

use std::collections::BTreeMap;
use std::ops::Bound;

use ironcd_engine::btree::{Db, DbOptions};
use ironcd_engine::kv::{ReadView, Store, Tree, WriteView};

fn all<V: ReadView>(v: &V) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    v.scan(Tree::Kv, Bound::Unbounded, Bound::Unbounded, false, &mut |k, v| {
        m.insert(k.to_vec(), v.to_vec());
        true
    })
    .unwrap();
    m
}

fn open(dir: &tempfile::TempDir) -> Db {
    Db::open(dir.path().join("kv.db"), DbOptions::default()).unwrap()
}

#[test]
fn parked_changes_publish_only_when_resumed_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut w = db.begin_write().unwrap();
    w.put(Tree::Kv, b"a", b"1").unwrap();
    w.set_applied_index(7);
    let parked = w.park();
    assert_eq!(parked.applied_index(), 7);
    // Not visible, and the writer lock is free: a reader and a sync go ahead.
    assert!(all(&db.snapshot()).is_empty());
    db.sync().unwrap();
    let before = db.snapshot();
    let w = db.resume(parked).unwrap().expect("nothing was committed meanwhile");
    w.commit().unwrap();
    assert_eq!(all(&db.snapshot()).get(&b"a"[..]).map(|v| v.as_slice()), Some(&b"1"[..]));
    assert_eq!(db.snapshot().applied_index(), 7);
    assert!(all(&before).is_empty(), "an older snapshot changed");
    db.sync().unwrap();
    db.check().unwrap();
    drop((db, before));
    let db = open(&dir);
    assert_eq!(all(&db.snapshot()).len(), 1);
    assert_eq!(db.snapshot().applied_index(), 7);
}

#[test]
fn a_commit_while_parked_makes_the_parked_changes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut w = db.begin_write().unwrap();
    w.put(Tree::Kv, b"spec", b"x").unwrap();
    let parked = w.park();
    let mut w = db.begin_write().unwrap();
    w.put(Tree::Kv, b"other", b"y").unwrap();
    w.commit().unwrap();
    assert!(db.resume(parked).unwrap().is_none(), "resumed on top of a newer state");
    let m = all(&db.snapshot());
    assert_eq!(m.keys().cloned().collect::<Vec<_>>(), vec![b"other".to_vec()]);
    // The next writer works, and nothing leaked.
    let mut w = db.begin_write().unwrap();
    w.put(Tree::Kv, b"next", b"z").unwrap();
    w.commit().unwrap();
    db.sync().unwrap();
    db.check().unwrap();
}

#[test]
fn a_dropped_parked_transaction_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    for round in 0..50u32 {
        let mut w = db.begin_write().unwrap();
        for i in 0..40u32 {
            w.put(Tree::Kv, format!("k{round:03}-{i:03}").as_bytes(), &[b'v'; 300]).unwrap();
        }
        if round % 2 == 0 {
            drop(w.park());
        } else {
            w.commit().unwrap();
        }
        if round % 7 == 0 {
            db.sync().unwrap();
        }
    }
    db.sync().unwrap();
    db.check().unwrap();
    assert_eq!(all(&db.snapshot()).len(), 25 * 40);
}

/// A small deterministic generator (no dependency needed for a bounded mix).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn mixed_parking_commits_and_syncs_match_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut rng = Lcg(42);
    {
        let db = open(&dir);
        // (the parked transaction, the model it would produce)
        let mut parked: Option<(ironcd_engine::btree::ParkedTxn, BTreeMap<Vec<u8>, Vec<u8>>)> = None;
        for step in 0..2_000u32 {
            match rng.next(6) {
                // Park a transaction of a few changes on the published state.
                0 | 1 if parked.is_none() => {
                    let mut m = model.clone();
                    let mut w = db.begin_write().unwrap();
                    for _ in 0..=rng.next(4) {
                        let k = format!("key{:04}", rng.next(300)).into_bytes();
                        if rng.next(4) == 0 {
                            w.delete(Tree::Kv, &k).unwrap();
                            m.remove(&k);
                        } else {
                            let v = vec![b'a' + (step % 26) as u8; 1 + rng.next(600) as usize];
                            w.put(Tree::Kv, &k, &v).unwrap();
                            m.insert(k, v);
                        }
                    }
                    parked = Some((w.park(), m));
                }
                // Resume and commit it (it is stale if another commit came first).
                2 => {
                    if let Some((p, m)) = parked.take() {
                        if let Some(w) = db.resume(p).unwrap() {
                            w.commit().unwrap();
                            model = m;
                        }
                    }
                }
                // Another writer commits.
                3 => {
                    let mut w = db.begin_write().unwrap();
                    let k = format!("key{:04}", rng.next(300)).into_bytes();
                    let v = format!("other{step}").into_bytes();
                    w.put(Tree::Kv, &k, &v).unwrap();
                    w.commit().unwrap();
                    model.insert(k, v);
                }
                4 => db.sync().unwrap(),
                _ => {
                    if rng.next(3) == 0 {
                        parked = None;
                    }
                }
            }
            if step % 97 == 0 {
                assert_eq!(all(&db.snapshot()), model, "step {step}");
            }
        }
        drop(parked);
        assert_eq!(all(&db.snapshot()), model);
        db.sync().unwrap();
        db.check().unwrap();
    }
    let db = open(&dir);
    assert_eq!(all(&db.snapshot()), model, "after reopening");
    db.check().unwrap();
}

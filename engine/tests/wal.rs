//! WAL tests: behaviour on the real disk, a model-based property test, crash
//! and power-loss tests, corruption and I/O-failure tests.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use ironcd_engine::wal::{SimIo, Wal, WalError, WalIo, WalOptions, BLOCK};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn run<T>(f: impl Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("glommio executor")
        .run(f)
}

fn small() -> WalOptions {
    WalOptions { segment_size: 128 * 1024, ..WalOptions::default() }
}

fn data(i: u64, len: usize) -> Bytes {
    let mut v = vec![(i % 251) as u8; len];
    v[..8.min(len)].copy_from_slice(&i.to_le_bytes()[..8.min(len)]);
    Bytes::from(v)
}

fn dir() -> PathBuf {
    PathBuf::from("/wal")
}

fn segment_files(io: &SimIo) -> Vec<PathBuf> {
    io.paths().into_iter().filter(|p| p.extension().is_some_and(|e| e == "wal")).collect()
}

// ---------------------------------------------------------------- real disk

#[test]
fn real_disk_round_trip_rollover_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("member/wal");
    run(async {
        let wal = Wal::open_dir(&path, small()).await.unwrap();
        for i in 1..=600u64 {
            wal.append([(i, data(i, 700))]).await.unwrap();
        }
        wal.save_vote(Bytes::from_static(b"vote-3")).await.unwrap();
        wal.save_committed(Bytes::from_static(b"c-500")).await.unwrap();
        assert!(wal.stats().rollovers >= 2, "600 × 700 B must span several 128 KiB segments");
        wal.close().await.unwrap();

        let wal = Wal::open_dir(&path, small()).await.unwrap();
        assert_eq!(wal.first_index(), Some(1));
        assert_eq!(wal.last_index(), Some(600));
        for (i, e) in wal.entries(1, 601) {
            assert_eq!(e, data(i, 700));
        }
        assert_eq!(wal.vote().as_deref(), Some(&b"vote-3"[..]));
        assert_eq!(wal.committed().as_deref(), Some(&b"c-500"[..]));
        // Appends after reopen continue the log.
        wal.append([(601, data(601, 10))]).await.unwrap();
        wal.close().await.unwrap();
    });
    let names: Vec<String> =
        std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n == "0000000000000000-0000000000000000.wal"), "{names:?}");
}

/// WAL writes complete by interrupt on glommio's main ring, never on its
/// poll ring, where the executor would have to spin until each write and
/// `fdatasync` completes (see `decline_poll_ring`). Runs on the target
/// directory's disk, not /tmp, which may be tmpfs (no DMA at all there).
#[test]
fn dma_writes_use_the_main_ring() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = tmp.path().join("wal");
    run(async {
        let wal = Wal::open_dir(&path, small()).await.unwrap();
        let _ = glommio::executor().io_stats(); // reset the counters
        for i in 1..=20u64 {
            wal.append([(i, data(i, 300))]).await.unwrap();
        }
        let stats = glommio::executor().io_stats();
        wal.close().await.unwrap();
        assert_eq!(stats.poll_ring.file_writes().0, 0, "WAL writes went to the busy-polled ring");
        assert!(stats.main_ring.file_writes().0 >= 20, "main ring writes: {:?}", stats.main_ring.file_writes());
    });
    let names: Vec<String> =
        std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n == ironcd_engine::wal::POLL_PROBE_NAME), "{names:?}");
}

#[test]
fn real_disk_purge_recycles_segments_and_bounds_disk_use() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("wal");
    run(async {
        let wal = Wal::open_dir(&path, small()).await.unwrap();
        for i in 1..=3000u64 {
            wal.append([(i, data(i, 500))]).await.unwrap();
            if i % 200 == 0 {
                wal.purge(i - 50, Bytes::from(format!("id-{}", i - 50))).await.unwrap();
            }
        }
        let segs = std::fs::read_dir(&path).unwrap().count();
        // 3000 × ~520 B is ~12 segments of 128 KiB; purging keeps a few.
        assert!(segs <= 5, "purged segments must be removed or recycled, found {segs} files");
        wal.close().await.unwrap();
        let wal = Wal::open_dir(&path, small()).await.unwrap();
        assert_eq!(wal.purged().map(|p| p.0), Some(2950));
        assert_eq!(wal.first_index(), Some(2951));
        assert_eq!(wal.last_index(), Some(3000));
        assert_eq!(wal.entry(2999), Some(data(2999, 500)));
        wal.close().await.unwrap();
    });
}

#[test]
fn group_commit_shares_fdatasync_between_concurrent_appenders() {
    let tmp = tempfile::tempdir().unwrap();
    run(async {
        let wal = Wal::open_dir(tmp.path(), WalOptions::default()).await.unwrap();
        let acked = Rc::new(RefCell::new(0u64));
        for i in 1..=2000u64 {
            let acked = acked.clone();
            wal.append_with([(i, data(i, 300))], move |r| {
                r.unwrap();
                *acked.borrow_mut() += 1;
            })
            .unwrap();
        }
        wal.sync().await.unwrap();
        assert_eq!(*acked.borrow(), 2000);
        let st = wal.stats();
        assert_eq!(st.entries, 2000);
        assert!(st.batches < 2000, "2000 queued appends must share syncs, got {} batches", st.batches);
        wal.close().await.unwrap();
    });
}

#[test]
fn refuses_bad_operations_with_clear_errors() {
    run(async {
        let wal = Wal::open(SimIo::new(), dir(), small()).await.unwrap();
        wal.append([(5, data(5, 1))]).await.unwrap();
        let e = wal.append([(7, data(7, 1))]).await.unwrap_err();
        assert!(e.to_string().contains("does not follow the log"), "{e}");
        let e = wal.append([(6, data(6, 1)), (8, data(8, 1))]).await.unwrap_err();
        assert!(e.to_string().contains("not consecutive"), "{e}");
        let e = wal.append([(6, Bytes::from(vec![0u8; 100 * 1024]))]).await.unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        wal.purge(5, Bytes::from_static(b"p")).await.unwrap();
        let e = wal.truncate(3).await.unwrap_err();
        assert!(e.to_string().contains("purged"), "{e}");
        let e = Wal::open(SimIo::new(), dir(), WalOptions { segment_size: 4096, ..small() }).await.err().unwrap();
        assert!(matches!(e, WalError::Invalid(_)));
        wal.close().await.unwrap();
    });
}

// ----------------------------------------------------------- model testing

#[derive(Clone, Debug)]
enum Op {
    Append(u8, u16),
    Truncate(u8),
    Purge(u8),
    Vote(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..8, 0u16..3000).prop_map(|(n, len)| Op::Append(n, len)),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => any::<u8>().prop_map(Op::Purge),
        1 => any::<u8>().prop_map(Op::Vote),
        1 => Just(Op::Reopen),
    ]
}

/// The obvious log: a map from index to entry plus the hard state.
#[derive(Default, Debug)]
struct Model {
    entries: BTreeMap<u64, Bytes>,
    next: u64,
    purged: Option<u64>,
    vote: Option<Bytes>,
}

fn check(wal: &Wal<SimIo>, m: &Model) {
    assert_eq!(wal.first_index(), m.entries.keys().next().copied());
    assert_eq!(wal.last_index(), m.entries.keys().next_back().copied());
    let got: BTreeMap<u64, Bytes> = wal.entries(0, u64::MAX).into_iter().collect();
    assert_eq!(got, m.entries);
    assert_eq!(wal.purged().map(|p| p.0), m.purged);
    assert_eq!(wal.vote(), m.vote);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn wal_agrees_with_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(async {
            let io = SimIo::new();
            let mut wal = Wal::open(io.clone(), dir(), small()).await.unwrap();
            let mut m = Model { next: 1, ..Model::default() };
            let mut counter = 0u64;
            for op in ops {
                match op {
                    Op::Append(n, len) => {
                        let batch: Vec<(u64, Bytes)> = (0..u64::from(n)).map(|k| {
                            counter += 1;
                            (m.next + k, data(counter, len as usize))
                        }).collect();
                        wal.append(batch.clone()).await.unwrap();
                        for (i, d) in batch { m.entries.insert(i, d); }
                        m.next += u64::from(n);
                    }
                    Op::Truncate(k) => {
                        let from = m.purged.map_or(1, |p| p + 1) + u64::from(k) % 8;
                        wal.truncate(from).await.unwrap();
                        m.entries.retain(|i, _| *i < from);
                        m.next = m.next.min(from);
                    }
                    Op::Purge(k) => {
                        let upto = m.purged.unwrap_or(0) + u64::from(k) % 12;
                        if m.purged.is_some_and(|p| p >= upto) { continue; }
                        wal.purge(upto, Bytes::from(upto.to_string())).await.unwrap();
                        m.entries.retain(|i, _| *i > upto);
                        m.purged = Some(upto);
                        m.next = m.next.max(upto + 1);
                    }
                    Op::Vote(v) => {
                        let v = Bytes::from(vec![v; 3]);
                        wal.save_vote(v.clone()).await.unwrap();
                        m.vote = Some(v);
                    }
                    Op::Reopen => {
                        wal.close().await.unwrap();
                        wal = Wal::open(io.clone(), dir(), small()).await.unwrap();
                    }
                }
                check(&wal, &m);
            }
            wal.close().await.unwrap();
            let wal = Wal::open(io.clone(), dir(), small()).await.unwrap();
            check(&wal, &m);
            wal.close().await.unwrap();
        });
    }
}

// ------------------------------------------------------- crash and recovery

/// Concurrent appenders; a crash at I/O step `crash_at`; power loss with
/// torn and reordered unsynced writes; reopen. Every acknowledged entry must
/// be there, in order, with its bytes, and nothing that was never appended.
fn crash_round(seed: u64, crash_at: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let io = SimIo::new();
    io.crash_at(crash_at);
    let acked = Rc::new(RefCell::new(Vec::<u64>::new()));
    let appended = Rc::new(RefCell::new(BTreeMap::<u64, Bytes>::new()));
    let purged_ack = Rc::new(RefCell::new(None::<u64>));
    run({
        let io = io.clone();
        let acked = acked.clone();
        let appended = appended.clone();
        let purged_ack = purged_ack.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        async move {
            let Ok(wal) = Wal::open(io.clone(), dir(), small()).await else { return };
            let mut next = 1u64;
            'outer: for round in 0..40u64 {
                let n = rng.gen_range(1..40);
                for _ in 0..n {
                    let d = data(next * 31 + round, rng.gen_range(1..2000));
                    appended.borrow_mut().insert(next, d.clone());
                    let acked = acked.clone();
                    let idx = next;
                    if wal.append_with([(next, d)], move |r| if r.is_ok() { acked.borrow_mut().push(idx) }).is_err() {
                        break 'outer;
                    }
                    next += 1;
                }
                if round % 7 == 6 && next > 20 {
                    let upto = next - 15;
                    match wal.purge(upto, Bytes::from(upto.to_string())).await {
                        Ok(()) => *purged_ack.borrow_mut() = Some(upto),
                        Err(_) => break,
                    }
                }
                if wal.sync().await.is_err() {
                    break;
                }
            }
            let _ = wal.close().await;
        }
    });
    let acked = acked.borrow();
    // Completions fire in order.
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "completions out of order");
    let survived = io.power_loss(&mut rng);
    let appended = appended.borrow();
    run(async move {
        let wal = match Wal::open(survived.clone(), dir(), small()).await {
            Ok(w) => w,
            Err(e) => panic!("seed {seed} crash_at {crash_at}: reopen failed: {e}"),
        };
        let floor = purged_ack.borrow().unwrap_or(0);
        if let Some(&last_acked) = acked.last() {
            let last = wal.last_index().unwrap_or(0).max(wal.purged().map_or(0, |p| p.0));
            assert!(last >= last_acked, "seed {seed} crash_at {crash_at}: acked {last_acked} but log ends at {last}");
            for &i in acked.iter().filter(|&&i| i > floor.max(wal.purged().map_or(0, |p| p.0))) {
                assert_eq!(wal.entry(i).as_ref(), appended.get(&i), "seed {seed}: acked entry {i} lost or changed");
            }
        }
        for (i, e) in wal.entries(0, u64::MAX) {
            assert_eq!(Some(&e), appended.get(&i), "seed {seed}: entry {i} was never appended with these bytes");
        }
        // The recovered log accepts writes and survives another reopen.
        let next = wal.last_index().or(wal.purged().map(|p| p.0)).map_or(1, |l| l + 1);
        wal.append([(next, data(next, 10))]).await.unwrap();
        wal.close().await.unwrap();
        let wal = Wal::open(survived, dir(), small()).await.unwrap();
        assert_eq!(wal.last_index(), Some(next));
        wal.close().await.unwrap();
    });
    io.stats().ops
}

/// `set_committed` costs no write of its own: the id rides at the end of the
/// next batch (an append, `sync` or `close`), a later `save_committed` is not
/// overwritten by an older lazy id, and power loss before the next batch
/// leaves the previous committed id, never a newer one.
#[test]
fn set_committed_rides_with_the_next_batch() {
    run(async {
        let io = SimIo::new();
        let wal = Wal::open(io.clone(), dir(), small()).await.unwrap();
        wal.append([(1, data(1, 10))]).await.unwrap();
        wal.save_committed(Bytes::from_static(b"c-0")).await.unwrap();
        let batches = wal.stats().batches;
        wal.set_committed(Bytes::from_static(b"c-1")).unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(wal.stats().batches, batches, "set_committed alone must not write");
        assert_eq!(wal.committed().as_deref(), Some(&b"c-1"[..]), "readable at once");
        // Power loss now: the durable committed id is the one saved before.
        let mut rng = StdRng::seed_from_u64(7);
        let lost = Wal::open(io.power_loss(&mut rng), dir(), small()).await.unwrap();
        assert_eq!(lost.committed().as_deref(), Some(&b"c-0"[..]));
        lost.close().await.unwrap();
        // The next append carries it.
        wal.append([(2, data(2, 10))]).await.unwrap();
        assert_eq!(wal.stats().batches, batches + 1, "one batch for the append and the committed id");
        let after = Wal::open(io.power_loss(&mut rng), dir(), small()).await.unwrap();
        assert_eq!(after.committed().as_deref(), Some(&b"c-1"[..]));
        after.close().await.unwrap();
        // A lazy id older than a saved one is dropped, not written after it.
        wal.set_committed(Bytes::from_static(b"c-2")).unwrap();
        wal.save_committed(Bytes::from_static(b"c-3")).await.unwrap();
        wal.append([(3, data(3, 10))]).await.unwrap();
        let after = Wal::open(io.power_loss(&mut rng), dir(), small()).await.unwrap();
        assert_eq!(after.committed().as_deref(), Some(&b"c-3"[..]));
        after.close().await.unwrap();
        // And close writes a lazy one.
        wal.set_committed(Bytes::from_static(b"c-4")).unwrap();
        wal.close().await.unwrap();
        let after = Wal::open(io.power_loss(&mut rng), dir(), small()).await.unwrap();
        assert_eq!(after.committed().as_deref(), Some(&b"c-4"[..]));
        assert_eq!(after.last_index(), Some(3));
        after.close().await.unwrap();
    });
}

#[test]
fn acknowledged_entries_survive_crashes_at_every_step() {
    // Count the I/O steps of an uncrashed run, then crash at many of them.
    let total = crash_round(1, u64::MAX);
    assert!(total > 100, "the workload should take many I/O steps, took {total}");
    let mut rng = StdRng::seed_from_u64(42);
    for k in 0..160u64 {
        let at = if k < 60 { k + 1 } else { rng.gen_range(1..total) };
        crash_round(k, at);
    }
}

#[test]
fn torn_tail_is_cut_silently() {
    run(async {
        let io = SimIo::new();
        let wal = Wal::open(io.clone(), dir(), small()).await.unwrap();
        for i in 1..=10u64 {
            wal.append([(i, data(i, 100))]).await.unwrap();
        }
        wal.close().await.unwrap();
        // Garbage where the next batch would start: an interrupted write.
        let seg = segment_files(&io).pop().unwrap();
        let pos = (11 * BLOCK) as usize;
        io.corrupt(&seg, pos, &[0x42; 700]);
        let wal = Wal::open(io.clone(), dir(), small()).await.unwrap();
        assert_eq!(wal.last_index(), Some(10));
        wal.append([(11, data(11, 100))]).await.unwrap();
        wal.close().await.unwrap();
        let wal = Wal::open(io, dir(), small()).await.unwrap();
        assert_eq!(wal.last_index(), Some(11));
        wal.close().await.unwrap();
    });
}

// -------------------------------------------------------------- corruption

fn filled_log(io: &SimIo) {
    let io = io.clone();
    run(async move {
        let wal = Wal::open(io, dir(), small()).await.unwrap();
        for i in 1..=400u64 {
            wal.append([(i, data(i, 900))]).await.unwrap();
        }
        wal.close().await.unwrap();
    });
}

fn open_err(io: &SimIo) -> WalError {
    let io = io.clone();
    run(async move {
        match Wal::open(io, dir(), small()).await {
            Ok(w) => {
                let last = w.last_index();
                w.close().await.unwrap();
                panic!("corruption not detected; log ends at {last:?}")
            }
            Err(e) => e,
        }
    })
}

#[test]
fn flipped_bit_in_a_sealed_segment_is_reported_with_file_and_offset() {
    let io = SimIo::new();
    filled_log(&io);
    let segs = segment_files(&io);
    assert!(segs.len() >= 3);
    let victim = &segs[0];
    let content = io.file_contents(victim).unwrap();
    let at = 3 * BLOCK as usize + 500;
    io.corrupt(victim, at, &[content[at] ^ 0x10]);
    let e = open_err(&io);
    let WalError::Corrupt { file, offset, .. } = &e else { panic!("expected Corrupt, got {e}") };
    assert_eq!(file, victim);
    assert!(*offset >= 3 * BLOCK && *offset <= at as u64, "offset {offset} should point at the bad record");
    assert!(e.to_string().contains("nothing was truncated"), "{e}");
    // Nothing was changed by the failed open.
    assert_eq!(io.file_contents(victim).unwrap()[at], content[at] ^ 0x10);
}

#[test]
fn corruption_in_the_last_segment_before_valid_batches_is_reported() {
    let io = SimIo::new();
    filled_log(&io);
    let last = segment_files(&io).pop().unwrap();
    // A batch header in the middle of the last segment.
    io.corrupt(&last, 2 * BLOCK as usize + 4, &[0xff, 0xff]);
    let e = open_err(&io);
    assert!(matches!(&e, WalError::Corrupt { file, .. } if *file == last), "{e}");
}

#[test]
fn missing_tail_of_a_sealed_segment_is_reported() {
    let io = SimIo::new();
    filled_log(&io);
    let segs = segment_files(&io);
    let victim = &segs[0];
    let content = io.file_contents(victim).unwrap();
    // Zero the last batch written into the first segment.
    let mut last_batch = BLOCK as usize;
    for b in (BLOCK as usize..content.len()).step_by(BLOCK as usize) {
        if content[b..b + 4] == *b"IRBT" {
            last_batch = b;
        }
    }
    io.corrupt(victim, last_batch, &vec![0u8; BLOCK as usize]);
    let e = open_err(&io);
    assert!(e.to_string().contains("next one starts at"), "{e}");
}

#[test]
fn missing_segment_and_foreign_files_are_reported() {
    let io = SimIo::new();
    filled_log(&io);
    let segs = segment_files(&io);
    run({
        let io = io.clone();
        let s = segs[1].clone();
        async move { io.remove(&s).await.unwrap() }
    });
    let e = open_err(&io);
    assert!(e.to_string().contains("missing"), "{e}");

    let io = SimIo::new();
    filled_log(&io);
    let first = segment_files(&io)[0].clone();
    io.corrupt(&first, 0, b"not-a-wal");
    let e = open_err(&io);
    assert!(e.to_string().contains("bad magic"), "{e}");
}

#[test]
fn random_damage_never_panics_and_never_invents_entries() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..60 {
        let io = SimIo::new();
        filled_log(&io);
        let segs = segment_files(&io);
        for _ in 0..rng.gen_range(1..4) {
            let victim = &segs[rng.gen_range(0..segs.len())];
            let len = io.file_contents(victim).unwrap().len();
            let at = rng.gen_range(0..len);
            let n = rng.gen_range(1..64).min(len - at);
            let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            io.corrupt(victim, at, &junk);
        }
        let io2 = io.clone();
        run(async move {
            if let Ok(wal) = Wal::open(io2, dir(), small()).await {
                for (i, e) in wal.entries(0, u64::MAX) {
                    assert_eq!(e, data(i, 900), "entry {i} changed without an error");
                }
                wal.close().await.unwrap();
            }
        });
    }
}

// ------------------------------------------------------------ I/O failures

#[test]
fn failed_fdatasync_poisons_the_log_until_reopened() {
    run(async {
        let io = SimIo::new();
        let wal = Wal::open(io.clone(), dir(), small()).await.unwrap();
        wal.append([(1, data(1, 10))]).await.unwrap();
        let syncs = io.stats().syncs;
        io.fail_sync_at(syncs + 1);
        let e = wal.append([(2, data(2, 10))]).await.unwrap_err();
        assert!(matches!(e, WalError::Io { .. }) && e.to_string().contains("syncing"), "{e}");
        let e = wal.append([(3, data(3, 10))]).await.unwrap_err();
        assert!(matches!(e, WalError::Poisoned(_)), "{e}");
        assert!(e.to_string().contains("refuses writes") && e.to_string().contains("reopen"), "{e}");
        let e = wal.save_vote(Bytes::from_static(b"v")).await.unwrap_err();
        assert!(matches!(e, WalError::Poisoned(_)));
        let _ = wal.close().await;
        let wal = Wal::open(io.clone(), dir(), small()).await.unwrap();
        assert_eq!(wal.entry(1), Some(data(1, 10)));
        let next = wal.last_index().unwrap() + 1;
        wal.append([(next, data(next, 10))]).await.unwrap();
        wal.close().await.unwrap();
    });
}

#[test]
fn etcd_style_file_names() {
    let io = SimIo::new();
    filled_log(&io);
    for p in segment_files(&io) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let (a, b) = name.strip_suffix(".wal").unwrap().split_once('-').unwrap();
        assert_eq!((a.len(), b.len()), (16, 16), "{name}");
        assert!(Path::new(&p).starts_with(dir()));
    }
}

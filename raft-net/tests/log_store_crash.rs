//! The log store through crashes: a workload of votes, appends (acknowledged
//! through openraft's `IOFlushed`), committed ids and purges on the engine's
//! simulated disk, a crash at some I/O step, a power loss that keeps any
//! subset of unsynced writes (torn, reordered), then reopen. Everything
//! acknowledged must be there and decode, and the recovered committed log id
//! (saved without waiting, see docs/raft.md) must be one that was saved and
//! point into the recovered log.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use ironcd_engine::wal::{SimIo, WalOptions, MIN_SEGMENT_SIZE};
use ironcd_raft_net::types::CommittedLeaderId;
use ironcd_raft_net::{Entry, EntryPayload, GlommioRuntime, LogId, LogStore, Request, Vote};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::entry::RaftEntry;
use openraft::RaftLogReader;
use openraft_rt::{AsyncRuntime, Oneshot};
use rand08::{Rng, SeedableRng};

fn opts() -> WalOptions {
    WalOptions { segment_size: MIN_SEGMENT_SIZE, ..WalOptions::default() }
}

fn dir() -> PathBuf {
    PathBuf::from("/sim/member/wal")
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    GlommioRuntime::new(1).block_on(f)
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term), index)
}

fn entry(term: u64, index: u64, len: usize) -> Entry {
    let mut v = format!("{term}/{index}:").into_bytes();
    v.resize(len.max(v.len()), (index % 251) as u8);
    Entry::new(log_id(term, index), EntryPayload::Normal(Request(Bytes::from(v))))
}

#[derive(Default)]
struct Seen {
    appended: BTreeMap<u64, Entry>,
    acked: Vec<u64>,
    vote_acked: Option<Vote>,
    committed_saved: Vec<LogId>,
    purge_acked: Option<u64>,
}

fn crash_round(seed: u64, crash_at: u64) -> u64 {
    let io = SimIo::new();
    io.crash_at(crash_at);
    let seen = Rc::new(RefCell::new(Seen::default()));
    run({
        let io = io.clone();
        let seen = seen.clone();
        let mut rng = rand08::rngs::StdRng::seed_from_u64(seed);
        async move {
            let Ok(mut store) = LogStore::open(io, dir(), opts()).await else { return };
            let mut next = 0u64;
            'rounds: for term in 1..=25u64 {
                let vote = Vote::new_committed(term, 1);
                if store.save_vote(&vote).await.is_err() {
                    break;
                }
                seen.borrow_mut().vote_acked = Some(vote);
                let n = rng.gen_range(1..30);
                let batch: Vec<Entry> = (0..n).map(|i| entry(term, next + i, rng.gen_range(10..3000))).collect();
                for e in &batch {
                    seen.borrow_mut().appended.insert(e.log_id.index, e.clone());
                }
                let last = next + n - 1;
                let (tx, rx) = <GlommioRuntime as AsyncRuntime>::Oneshot::channel();
                if store.append(batch, IOFlushed::signal(tx)).await.is_err() {
                    break;
                }
                let s = seen.clone();
                glommio::spawn_local(async move {
                    if let Ok(Ok(())) = rx.await {
                        s.borrow_mut().acked.push(last);
                    }
                })
                .detach();
                next = last + 1;
                // Commit somewhere behind the tail, as a leader would.
                let c = rng.gen_range(next.saturating_sub(20)..next);
                let c = seen.borrow().appended[&c].log_id;
                if store.save_committed(Some(c)).await.is_err() {
                    break;
                }
                seen.borrow_mut().committed_saved.push(c);
                if term % 6 == 0 && next > 40 {
                    let upto = next - 30;
                    let id = seen.borrow().appended[&upto].log_id;
                    if store.purge(id).await.is_err() {
                        break 'rounds;
                    }
                    seen.borrow_mut().purge_acked = Some(upto);
                }
            }
            let _ = store.close().await;
            // Let the waiters of completions that already fired record them.
            GlommioRuntime::sleep(std::time::Duration::from_millis(1)).await;
        }
    });
    let seen = Rc::try_unwrap(seen).ok().unwrap().into_inner();
    let mut rng = rand08::rngs::StdRng::seed_from_u64(seed ^ 0xdead);
    let survived = io.power_loss(&mut rng);
    run(async move {
        let ctx = format!("seed {seed} crash_at {crash_at}");
        let mut store = match LogStore::open(survived, dir(), opts()).await {
            Ok(s) => s,
            Err(e) => panic!("{ctx}: reopen failed: {e}"),
        };
        let vote = store.read_vote().await.unwrap();
        if let Some(v) = seen.vote_acked {
            assert!(vote >= Some(v), "{ctx}: acknowledged vote {v} lost, have {vote:?}");
        }
        let state = store.get_log_state().await.unwrap();
        let last = state.last_log_id.map(|l| l.index);
        if let Some(&acked) = seen.acked.last() {
            assert!(last >= Some(acked), "{ctx}: acked up to {acked}, log ends at {last:?}");
        }
        let purged = state.last_purged_log_id.map(|l| l.index);
        assert!(purged >= seen.purge_acked, "{ctx}: acknowledged purge lost");
        let entries = store.try_get_log_entries(..).await.unwrap();
        for w in entries.windows(2) {
            assert_eq!(w[0].log_id.index + 1, w[1].log_id.index, "{ctx}: hole in the log");
        }
        for e in &entries {
            assert_eq!(Some(e), seen.appended.get(&e.log_id.index), "{ctx}: entry never appended");
        }
        if let Some(&acked) = seen.acked.last() {
            let from = purged.map_or(0, |p| p + 1);
            assert!(entries.len() as u64 >= (acked + 1).saturating_sub(from), "{ctx}: acked entries missing");
        }
        if let Some(c) = store.read_committed().await.unwrap() {
            assert!(seen.committed_saved.contains(&c), "{ctx}: committed {c} was never saved");
            assert!(Some(c.index) <= last, "{ctx}: committed {c} beyond the log's end {last:?}");
            if purged.is_none_or(|p| c.index > p) {
                let e = entries.iter().find(|e| e.log_id.index == c.index).expect("committed entry present");
                assert_eq!(e.log_id, c, "{ctx}: committed id differs from the entry's");
            }
        }
        store.close().await.unwrap();
    });
    io.stats().ops
}

#[test]
fn acknowledged_state_survives_crashes() {
    let total = crash_round(0, u64::MAX);
    println!("uncrashed workload: {total} I/O steps");
    assert!(total > 40, "workload too small: {total} I/O steps");
    let mut rng = rand08::rngs::StdRng::seed_from_u64(7);
    for k in 1..=80u64 {
        let at = if k <= 30 { k } else { rng.gen_range(1..total) };
        crash_round(k, at);
    }
}

//! No lost wakeups: a single-member raft group's short life (start,
//! election, a few writes, shutdown, WAL close), repeated on fresh glommio
//! executors, never stalls. A first version of the vendored glommio's timer
//! patch (vendor/glommio/IRONCD-PATCH.md, item 1) kept an armed latency
//! timer from one turn to the next; about one life in 100 then slept with
//! nothing armed to wake it and hung until a signal interrupted the sleep.
//! Each life is bounded by a watchdog, so a stall fails the test instead
//! of hanging it.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{MemStateMachine, SnapData};
use ironcd_engine::wal::WalOptions;
use ironcd_raft_net::types::Raft;
use ironcd_raft_net::{LogStore, Member, Request};
use openraft::{Config, ServerState};

const LIVES: usize = 300;
/// A life takes ~0.1 s (debug build); a stalled one is given far longer.
const WATCHDOG: Duration = Duration::from_secs(20);
const BUDGET: Duration = Duration::from_secs(150);

fn config() -> Arc<Config> {
    common::single_member_config("ironcd-wakeups-test")
}

async fn life(dir: std::path::PathBuf) {
    let opts = WalOptions { segment_size: 128 * 1024, ..WalOptions::default() };
    let store = LogStore::open_dir(&dir, opts).await.unwrap();
    let sm = MemStateMachine::default();
    let raft: Raft<MemStateMachine> =
        Raft::new(1, config(), ironcd_raft_net::NoPeers::<SnapData>::default(), store.clone(), sm).await.unwrap();
    let member = Member {
        name: "default".into(),
        peer_urls: vec!["http://localhost:2380".into()],
        client_urls: vec!["http://localhost:2379".into()],
    };
    raft.initialize(BTreeMap::from([(1u64, member)])).await.unwrap();
    raft.wait(Some(Duration::from_secs(10))).state(ServerState::Leader, "becomes leader").await.unwrap();
    for i in 0..5u8 {
        raft.client_write(Request(Bytes::from(vec![i; 100]))).await.unwrap();
    }
    raft.shutdown().await.unwrap();
    store.close().await.unwrap();
}

#[test]
fn repeated_single_member_lives_never_stall() {
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    for n in 0..LIVES {
        let dir = root.path().join(format!("life-{n}"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap().run(life(dir));
            let _ = tx.send(());
        });
        if rx.recv_timeout(WATCHDOG).is_err() {
            // The stalled thread is left behind; the process exits with the test.
            panic!("life {n} of {LIVES} stalled for {WATCHDOG:?} (a lost wakeup)");
        }
        if started.elapsed() > BUDGET {
            eprintln!("stopping after {} lives: the time budget is spent", n + 1);
            break;
        }
    }
}

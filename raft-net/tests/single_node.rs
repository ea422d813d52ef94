//! End to end: a single-node openraft `Raft` on the glommio runtime with the
//! WAL log store and the fixture state machine. Writes 100 requests, reads
//! them back from the state machine, then restarts from the same directory
//! and checks what the log recovered.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{MemStateMachine, SnapData};
use futures_util::future::join_all;
use ironcd_engine::wal::WalOptions;
use ironcd_raft_net::types::Raft;
use ironcd_raft_net::{EntryPayload, LogId, LogStore, Member, Request, Vote};
use openraft::storage::RaftLogStorage;
use openraft::{Config, RaftLogReader, ServerState};

type NoNetwork = ironcd_raft_net::NoPeers<SnapData>;

fn config() -> Arc<Config> {
    common::single_member_config("ironcd-single-node-test")
}

fn member() -> Member {
    Member {
        name: "default".into(),
        peer_urls: vec!["http://localhost:2380".into()],
        client_urls: vec!["http://localhost:2379".into()],
    }
}

fn opts() -> WalOptions {
    // Small segments so 100+ entries roll over a few times.
    WalOptions { segment_size: 128 * 1024, ..WalOptions::default() }
}

fn request(i: usize) -> Bytes {
    // ~1.5 KiB each, so the log spans several 128 KiB segments.
    let mut v = format!("put key-{i:04} ").into_bytes();
    v.resize(1500, b'a' + (i % 26) as u8);
    Bytes::from(v)
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap().run(f)
}

struct Before {
    vote: Vote,
    last: LogId,
}

async fn first_life(dir: &Path) -> Before {
    let store = LogStore::open_dir(dir, opts()).await.unwrap();
    let sm = MemStateMachine::default();
    let raft: Raft<MemStateMachine> = Raft::new(1, config(), NoNetwork::default(), store.clone(), sm.clone()).await.unwrap();
    raft.initialize(BTreeMap::from([(1u64, member())])).await.unwrap();
    raft.wait(Some(Duration::from_secs(10))).state(ServerState::Leader, "becomes leader").await.unwrap();

    // 60 one after another, then 40 at once (they share WAL batches).
    let mut last_index = 0;
    for i in 0..60 {
        let resp = raft.client_write(Request(request(i))).await.unwrap();
        assert_eq!(resp.data.take::<Bytes>(), Some(request(i)), "the fixture echoes the request");
        assert!(resp.log_id.index > last_index);
        last_index = resp.log_id.index;
    }
    let batches_before = store.wal().stats().batches;
    let resps = join_all((60..100).map(|i| raft.client_write(Request(request(i))))).await;
    for (i, r) in (60..100).zip(resps) {
        assert_eq!(r.unwrap().data.take::<Bytes>(), Some(request(i)));
    }
    let concurrent_batches = store.wal().stats().batches - batches_before;
    println!("40 concurrent writes: {concurrent_batches} WAL batches");
    assert!(concurrent_batches < 40, "40 concurrent writes took {concurrent_batches} WAL batches");
    assert!(store.wal().stats().rollovers >= 1, "the log spans several segments");

    // Read back from the state machine: every request once, in order.
    let applied: Vec<Bytes> = sm.applied().into_iter().map(|(_, b)| b).collect();
    assert_eq!(applied, (0..100).map(request).collect::<Vec<_>>());

    let mut st = store.clone();
    let log_state = st.get_log_state().await.unwrap();
    let last = log_state.last_log_id.unwrap();
    let vote = st.read_vote().await.unwrap().unwrap();
    assert!(vote.committed, "a leader's vote is committed");
    assert_eq!(vote.leader_id.voted_for, 1);

    raft.shutdown().await.unwrap();
    store.close().await.unwrap();
    Before { vote, last }
}

async fn second_life(dir: &Path, before: Before) {
    // The log as recovered from disk, before raft touches it.
    let mut store = LogStore::open_dir(dir, opts()).await.unwrap();
    let log_state = store.get_log_state().await.unwrap();
    assert_eq!(log_state.last_log_id, Some(before.last));
    assert_eq!(log_state.last_purged_log_id, None);
    assert_eq!(store.read_vote().await.unwrap(), Some(before.vote));
    let committed = store.read_committed().await.unwrap().expect("committed log id saved");
    assert!(committed <= before.last);
    let entries = store.try_get_log_entries(..).await.unwrap();
    assert_eq!(entries.first().unwrap().log_id.index, 0, "openraft initializes at index 0");
    assert_eq!(entries.last().unwrap().log_id, before.last);
    let requests: Vec<Bytes> = entries
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(r) => Some(r.0.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(requests, (0..100).map(request).collect::<Vec<_>>());
    assert!(store.wal().first_index().is_some());

    // Raft restarts on the recovered log with an empty state machine and
    // re-applies everything.
    let sm = MemStateMachine::default();
    let raft: Raft<MemStateMachine> = Raft::new(1, config(), NoNetwork::default(), store.clone(), sm.clone()).await.unwrap();
    raft.wait(Some(Duration::from_secs(10))).state(ServerState::Leader, "leader again").await.unwrap();
    let resp = raft.client_write(Request(request(100))).await.unwrap();
    assert!(resp.log_id.index > before.last.index);
    raft.wait(Some(Duration::from_secs(10))).applied_index_at_least(Some(resp.log_id.index), "applied").await.unwrap();
    let applied: Vec<Bytes> = sm.applied().into_iter().map(|(_, b)| b).collect();
    assert_eq!(applied, (0..=100).map(request).collect::<Vec<_>>());
    let vote = store.read_vote().await.unwrap().unwrap();
    // openraft may resume leadership of a single-voter cluster in the same
    // term (the vote is committed and nobody else can have voted).
    assert!(vote.leader_id.term >= before.vote.leader_id.term);
    assert!(vote.committed);

    raft.shutdown().await.unwrap();
    store.close().await.unwrap();
}

#[test]
fn single_node_writes_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("member").join("wal");
    let before = run(first_life(&wal_dir));
    // A new executor, as after a process restart.
    run(second_life(&wal_dir, before));
}

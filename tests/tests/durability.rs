//! Durability: concurrent writers, `kill -9` at a random moment, restart on
//! the same data dir; every acknowledged write is there with its value,
//! revisions never go backwards, and the store file passes its consistency
//! check. Repeated for several rounds within a bounded time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::Client;
use ironcd_engine::btree::{Db, DbOptions};
use ironcd_tests::{Kind, Scratch, Server};

const ROUNDS: usize = 6;
const WRITERS: usize = 16;
const TEST_BUDGET: Duration = Duration::from_secs(120);

/// Acknowledged writes: key -> (value, revision).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

async fn writer(endpoint: String, id: usize, round: usize, acked: Acked, stop: Arc<std::sync::atomic::AtomicBool>) {
    let Ok(mut c) = Client::connect([endpoint], None).await else { return };
    for seq in 0..100_000usize {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let key = format!("w{id}/r{round}/{seq:06}");
        let value = format!("value-{round}-{id}-{seq}");
        match tokio::time::timeout(Duration::from_secs(5), c.put(key.clone(), value.clone(), None)).await {
            Ok(Ok(resp)) => {
                let rev = resp.header().map_or(0, |h| h.revision());
                acked.lock().unwrap().insert(key, (value, rev));
            }
            _ => return,
        }
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let started = Instant::now();
    let dir = Scratch::new("durability");
    // Sync the store every 50 entries, so kills also land during and
    // between store syncs, not only between WAL batches.
    let mut srv = Server::start(Kind::Ironcd, dir.path(), &["--ironcd-store-sync-entries", "50"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let acked: Acked = Arc::default();
    let seed = std::process::id() as u64;
    let mut max_rev_seen = 0i64;
    for round in 0..ROUNDS {
        assert!(started.elapsed() < TEST_BUDGET, "durability test ran out of time at round {round}");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles: Vec<_> = (0..WRITERS)
            .map(|id| rt.spawn(writer(srv.endpoint(), id, round, acked.clone(), stop.clone())))
            .collect();
        // Kill at a pseudo-random moment 100..600 ms into the writes.
        let delay = 100 + (seed.wrapping_mul(2654435761).wrapping_add(round as u64 * 97) % 500);
        std::thread::sleep(Duration::from_millis(delay));
        srv.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(async {
            for h in handles {
                let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
            }
        });
        srv.launch();
        let acked_now = acked.lock().unwrap().clone();
        let round_max = acked_now.values().map(|(_, r)| *r).max().unwrap_or(0);
        let check = rt.block_on(async {
            let mut c = Client::connect([srv.endpoint()], None).await.expect("connect after restart");
            let all = c
                .get("w", Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .expect("range after restart");
            let rev = all.header().map_or(0, |h| h.revision());
            let got: BTreeMap<String, String> = all
                .kvs()
                .iter()
                .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
                .collect();
            (rev, got)
        });
        let (rev, got) = check;
        assert!(rev >= round_max, "round {round}: revision {rev} after restart is behind acknowledged revision {round_max}");
        assert!(rev >= max_rev_seen, "round {round}: revision went backwards: {rev} < {max_rev_seen}");
        max_rev_seen = rev;
        let lost: Vec<&String> = acked_now.iter().filter(|(k, (v, _))| got.get(*k) != Some(v)).map(|(k, _)| k).collect();
        assert!(lost.is_empty(), "round {round} (seed {seed}): {} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
        assert!(!acked_now.is_empty() || round > 0, "no write was acknowledged before the first kill");
    }
    assert!(srv.stop(), "clean shutdown after the last round");
    let db = Db::open(srv.data_dir.join("member/kv.db"), DbOptions::default()).expect("store opens");
    let report = db.check().expect("store passes its consistency check");
    println!("{} acknowledged writes survived {ROUNDS} kill -9 rounds; store check: {report:?}", acked.lock().unwrap().len());
}

//! Applying ahead (docs/server.md): a lone member applies a batch while its
//! WAL write is in flight and publishes it once the entries are committed
//! (for the only voter: as soon as the write is durable).
//! What clients see must not change: each answer comes after its write is
//! readable (read-your-writes on the same member), revisions are dense and
//! in order, a watcher sees every event once and in order, and everything
//! survives a restart. The member's stop line reports how many batches were
//! applied ahead and how many of those were published (and answered) the
//! moment their write was durable, so the test also shows both paths were
//! taken. A compaction
//! running on the raft core meanwhile makes parked work stale; such work is
//! dropped and the entries applied anew, with the same guarantees.

use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use ironcd_tests::{Kind, Scratch, Server};

const PUTS: usize = 400;
const BUDGET: Duration = Duration::from_secs(120);

/// `"applied_ahead":N,"published_when_durable":E,"dropped_ahead":M` from
/// the member's stop line.
fn ahead_counts(log: &str) -> (u64, u64, u64) {
    let line = log.lines().rev().find(|l| l.contains("\"applied_ahead\"")).unwrap_or_else(|| panic!("no stop line with the counts; log:\n{log}"));
    let num = |name: &str| {
        let at = line.find(name).unwrap() + name.len() + 2;
        line[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u64>().unwrap()
    };
    (num("\"applied_ahead"), num("\"published_when_durable"), num("\"dropped_ahead"))
}

/// One client, one request at a time: every put's answer is followed by a
/// serializable get of the same key on the same member, which must see it
/// at exactly the revision the put answered.
async fn lone_writes(c: &mut Client, prefix: &str, from_rev: i64, n: usize) -> i64 {
    let mut rev = from_rev;
    for i in 0..n {
        let key = format!("{prefix}/{i:04}");
        let value = format!("v{i}");
        let opts = (i % 3 == 0).then(|| PutOptions::new().with_prev_key());
        let put = c.put(key.as_str(), value.as_str(), opts).await.expect("put");
        let put_rev = put.header().unwrap().revision();
        assert_eq!(put_rev, rev + 1, "put {key}: revisions must be dense");
        rev = put_rev;
        let got = c.get(key.as_str(), Some(GetOptions::new().with_serializable())).await.expect("get");
        assert_eq!(got.kvs().len(), 1, "{key} not readable after its put was answered");
        assert_eq!(got.kvs()[0].value_str().unwrap(), value);
        assert_eq!(got.kvs()[0].mod_revision(), put_rev);
        assert_eq!(got.header().unwrap().revision(), put_rev, "a read saw a revision past the last answered write");
    }
    rev
}

#[test]
fn lone_writes_applied_ahead_read_back_watch_and_restart() {
    let started = Instant::now();
    let dir = Scratch::new("apply-ahead");
    let mut srv = Server::start(Kind::Ironcd, dir.path(), &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let endpoint = srv.endpoint();
    let last_rev = rt.block_on(async {
        let mut c = Client::connect([endpoint.clone()], None).await.expect("connect");
        let base = c.get("x", None).await.unwrap().header().unwrap().revision();
        // A watcher on its own connection, from the first revision written.
        let mut w = Client::connect([endpoint.clone()], None).await.expect("connect watcher");
        let mut stream = w
            .watch("lone/", Some(WatchOptions::new().with_prefix().with_start_revision(base + 1)))
            .await
            .expect("watch");
        let last = lone_writes(&mut c, "lone", base, PUTS).await;
        // A txn and a delete between puts take the same path.
        let txn = etcd_client::Txn::new().and_then([etcd_client::TxnOp::put("lone/txn", "t", None)]);
        let t = c.txn(txn).await.expect("txn");
        assert_eq!(t.header().unwrap().revision(), last + 1);
        let d = c.delete("lone/0000", None).await.expect("delete");
        assert_eq!(d.deleted(), 1);
        assert_eq!(d.header().unwrap().revision(), last + 2);
        let mut seen = Vec::new();
        while seen.len() < PUTS + 2 {
            let resp = tokio::time::timeout(Duration::from_secs(20), stream.message())
                .await
                .expect("watch events in time")
                .expect("watch stream")
                .expect("watch stream open");
            for e in resp.events() {
                let kv = e.kv().unwrap();
                seen.push((e.event_type(), kv.key_str().unwrap().to_string(), kv.mod_revision()));
            }
        }
        let revs: Vec<i64> = seen.iter().map(|s| s.2).collect();
        let want: Vec<i64> = (base + 1..=last + 2).collect();
        assert_eq!(revs, want, "watch events out of order, missing or repeated");
        assert_eq!(seen[PUTS].1, "lone/txn");
        assert_eq!((seen[PUTS + 1].0, seen[PUTS + 1].1.as_str()), (EventType::Delete, "lone/0000"));
        last + 2
    });
    assert!(srv.stop(), "unclean stop; log:\n{}", srv.log_text());
    let (applied, early, _dropped) = ahead_counts(&srv.log_text());
    // Nearly every lone write is applied ahead, and published (answered)
    // as soon as its write is durable; half is a generous floor that still
    // fails if either path is never taken.
    assert!(applied >= (PUTS / 2) as u64, "only {applied} of {PUTS} lone writes were applied ahead");
    assert!(early >= (PUTS / 2) as u64, "only {early} of {PUTS} lone writes were published when durable");
    srv.launch();
    rt.block_on(async {
        let mut c = Client::connect([srv.endpoint()], None).await.expect("connect after restart");
        let all = c.get("lone/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(all.header().unwrap().revision(), last_rev);
        assert_eq!(all.kvs().len(), PUTS, "keys after restart (one deleted, the txn's added)");
        for kv in all.kvs() {
            let k = kv.key_str().unwrap();
            if let Some(i) = k.strip_prefix("lone/").and_then(|s| s.parse::<usize>().ok()) {
                assert_eq!(kv.value_str().unwrap(), format!("v{i}"));
            }
        }
    });
    assert!(started.elapsed() < BUDGET, "took {:?}", started.elapsed());
}

#[test]
fn lone_writes_stay_correct_while_a_compaction_runs() {
    let started = Instant::now();
    let dir = Scratch::new("apply-ahead-compaction");
    let mut srv = Server::start(Kind::Ironcd, dir.path(), &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let endpoint = srv.endpoint();
    rt.block_on(async {
        let mut c = Client::connect([endpoint.clone()], None).await.expect("connect");
        // History to compact: 64 keys overwritten many times, by concurrent
        // writers so it is quick.
        let mut writers = Vec::new();
        for w in 0..16 {
            let ep = endpoint.clone();
            writers.push(tokio::spawn(async move {
                let mut c = Client::connect([ep], None).await.expect("connect writer");
                for i in 0..1500 {
                    c.put(format!("hist/{:02}", (w * 4 + i) % 64), vec![b'h'; 200], None).await.expect("history put");
                }
            }));
        }
        for h in writers {
            h.await.unwrap();
        }
        let head = c.get("x", None).await.unwrap().header().unwrap().revision();
        // Physical compaction runs in steps on the raft core, between the
        // lone writes below.
        c.compact(head, None).await.expect("compact");
        let last = lone_writes(&mut c, "during", head, PUTS / 2).await;
        let all = c.get("during/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(all.kvs().len(), PUTS / 2);
        assert_eq!(all.header().unwrap().revision(), last);
        let hist = c.get("hist/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
        assert_eq!(hist.count(), 64);
    });
    assert!(srv.stop(), "unclean stop; log:\n{}", srv.log_text());
    let (applied, early, dropped) = ahead_counts(&srv.log_text());
    eprintln!("applied ahead: {applied} (published when durable: {early}), dropped: {dropped}");
    assert!(started.elapsed() < BUDGET, "took {:?}", started.elapsed());
}

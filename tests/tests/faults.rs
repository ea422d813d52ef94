//! ironcd clusters under faults, on loopback with a fault-injecting proxy in
//! front of each member's peer port (`ironcd_tests::cluster`):
//!
//! - a partition: the minority side (even the old leader) stops taking
//!   writes and linearizable reads, the majority goes on, and after healing
//!   everything converges;
//! - a concurrent workload through a real client library while members are
//!   killed, paused and partitioned, its history checked for
//!   linearizability (`ironcd_tests::linearizability`). The fault schedule
//!   comes from a seed (printed; `IRONCD_FAULT_SEED=<n>` replays it);
//! - members added and the leader removed while clients write: no
//!   acknowledged write is lost;
//! - with `--pre-vote`, a member that rejoins after a partition leaves the
//!   leader alone;
//! - a leader whose disk turns slower than the election timeout (the hidden
//!   `--ironcd-fault-wal-sync-delay-ms`, armed by SIGUSR1) keeps its
//!   leadership: heartbeats never wait for the disk.
//!
//! Every wait and loop is bounded. `IRONCD_TEST_DEBUG_LOGS=1` starts the
//! members with `--log-level debug`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use ironcd_tests::cluster::{Cluster, ClusterOpts};
use ironcd_tests::linearizability::{check, Budget, Event, Op, Outcome};
use ironcd_tests::{etcdctl, ok, Kind, Scratch};

fn proxied() -> ClusterOpts {
    ClusterOpts { proxied: true, extra: std::env::var("IRONCD_TEST_DEBUG_LOGS").map(|_| vec!["--log-level".to_string(), "debug".to_string()]).unwrap_or_default(), ..ClusterOpts::default() }
}

/// `put` on `ep` with a short client timeout; whether it succeeded.
fn try_put(ep: &str, k: &str, v: &str) -> bool {
    etcdctl(ep, &["put", k, v, "--command-timeout=3s"]).status.success()
}

#[test]
fn a_partitioned_minority_stops_and_the_majority_goes_on() {
    let _serial = ironcd_tests::cluster::one_at_a_time();
    let dir = Scratch::new("partition");
    let c = Cluster::start(Kind::Ironcd, 3, dir.path(), proxied());
    let leader = c.wait_leader(Duration::from_secs(15)).expect("a leader");
    ok(&c.member(0).endpoint(), &["put", "before", "1"]);

    // Cut the leader off: it can neither commit nor confirm its leadership.
    c.isolate(leader);
    let old = c.member(leader).endpoint();
    let put = etcdctl(&old, &["put", "minority", "x", "--command-timeout=4s"]);
    assert!(!put.status.success(), "the isolated old leader accepted a write");
    let get = etcdctl(&old, &["get", "before", "--command-timeout=4s"]);
    assert!(!get.status.success(), "the isolated member served a linearizable read");
    // A serializable read is local and still works.
    let local = ok(&old, &["get", "before", "--consistency=s", "--print-value-only"]);
    assert_eq!(local.trim(), "1");

    // The majority elects a new leader and takes writes.
    let other = (leader + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !try_put(&c.member(other).endpoint(), "majority", "y") {
        assert!(Instant::now() < deadline, "the majority did not take writes:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Heal: the old leader follows and converges.
    c.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = etcdctl(&old, &["get", "majority", "--print-value-only", "--command-timeout=3s"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "y" {
            break;
        }
        assert!(Instant::now() < deadline, "the old leader did not converge:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let minority = ok(&old, &["get", "minority"]);
    assert!(minority.trim().is_empty(), "a write refused on the minority side appeared: {minority}");
    let revs: Vec<u64> = (0..3)
        .map(|i| {
            let out = ok(&c.member(i).endpoint(), &["get", "majority", "-w", "json"]);
            ironcd_tests::cluster::json_u64(&out, "revision").unwrap_or(0)
        })
        .collect();
    assert!(revs.iter().all(|r| *r == revs[0] && *r > 0), "revisions differ: {revs:?}");
}

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const KEYS: [&str; 3] = ["lin/a", "lin/b", "lin/c"];
const CLIENTS: usize = 6;
const RUN: Duration = Duration::from_secs(12);
const OP_TIMEOUT: Duration = Duration::from_secs(2);

async fn client_loop(
    id: usize,
    endpoint: String,
    seed: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Event>>>,
) {
    let opts = ConnectOptions::new().with_connect_timeout(OP_TIMEOUT).with_timeout(OP_TIMEOUT);
    let mut client = None;
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            match tokio::time::timeout(OP_TIMEOUT, Client::connect([endpoint.clone()], Some(opts.clone()))).await {
                Ok(Ok(c)) => client = Some(c),
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected");
        let key = KEYS[rng.below(KEYS.len() as u64) as usize].to_string();
        let pick = rng.below(100);
        n += 1;
        let call = start.elapsed().as_nanos() as u64;
        let (op, outcome) = if pick < 45 {
            let value = format!("c{id}-{n}");
            let r = tokio::time::timeout(OP_TIMEOUT, c.put(key.clone(), value.clone(), None)).await;
            let outcome = match r {
                Ok(Ok(_)) => Outcome::Put,
                _ => Outcome::Unknown,
            };
            (Op::Put { key, value }, outcome)
        } else if pick < 90 {
            let r = tokio::time::timeout(OP_TIMEOUT, c.get(key.clone(), Some(GetOptions::new()))).await;
            let outcome = match r {
                Ok(Ok(resp)) => {
                    Outcome::Get(resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
                }
                _ => Outcome::Unknown,
            };
            (Op::Get { key }, outcome)
        } else {
            let r = tokio::time::timeout(OP_TIMEOUT, c.delete(key.clone(), None)).await;
            let outcome = match r {
                Ok(Ok(resp)) => Outcome::Delete { deleted: resp.deleted() > 0 },
                _ => Outcome::Unknown,
            };
            (Op::Delete { key }, outcome)
        };
        let ret = start.elapsed().as_nanos() as u64;
        let failed = outcome == Outcome::Unknown;
        history.lock().expect("history").push(Event { client: id, op, outcome, call, ret });
        if failed {
            // Reconnect after a failure (the member may have restarted).
            client = None;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[test]
fn histories_stay_linearizable_while_members_are_killed_paused_and_partitioned() {
    let _serial = ironcd_tests::cluster::one_at_a_time();
    let seed: u64 = std::env::var("IRONCD_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    }) | 1;
    println!("fault schedule seed: {seed} (IRONCD_FAULT_SEED={seed} replays it)");
    let dir = Scratch::new("linearizable");
    let mut c = Cluster::start(Kind::Ironcd, 3, dir.path(), proxied());
    c.wait_leader(Duration::from_secs(15)).expect("a leader");

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let ep = c.member(i % 3).endpoint();
            rt.spawn(client_loop(i, ep, seed, start, stop.clone(), history.clone()))
        })
        .collect();

    // One fault at a time (so a majority stays up), each undone before the next.
    let mut rng = Rng(seed);
    let mut faults = Vec::new();
    while start.elapsed() < RUN {
        let victim = rng.below(3) as usize;
        let kind = rng.below(3);
        let hold = Duration::from_millis(600 + rng.below(1200));
        match kind {
            0 => {
                faults.push(format!("kill -9 m{victim}"));
                c.kill9(victim);
                std::thread::sleep(hold);
                c.respawn(victim);
            }
            1 => {
                faults.push(format!("isolate m{victim}"));
                c.isolate(victim);
                std::thread::sleep(hold);
                c.heal();
            }
            _ => {
                faults.push(format!("SIGSTOP m{victim}"));
                c.sigstop(victim);
                std::thread::sleep(hold);
                c.sigcont(victim);
            }
        }
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    drop(rt);
    println!("faults: {}", faults.join(", "));

    let history = history.lock().expect("history").clone();
    let done = |f: fn(&Outcome) -> bool| history.iter().filter(|e| f(&e.outcome)).count();
    let puts = done(|o| *o == Outcome::Put);
    let gets = done(|o| matches!(o, Outcome::Get(_)));
    let unknown = done(|o| *o == Outcome::Unknown);
    println!("history: {} operations, {puts} puts and {gets} gets succeeded, {unknown} unknown", history.len());
    assert!(puts >= 30 && gets >= 30, "too little succeeded to mean anything (seed {seed}):\n{}", c.logs());

    let result = check(&history, Budget::default());
    if !result.is_ok() {
        // The whole history and the members' logs, to study the failure.
        let path = std::env::temp_dir().join(format!("ironcd-lin-history-{seed}.txt"));
        let mut text: String = history.iter().map(|e| format!("{e:?}\n")).collect();
        text.push_str(&c.logs());
        let _ = std::fs::write(&path, text);
        println!("history and member logs: {}", path.display());
    }
    assert!(result.is_ok(), "seed {seed}, faults [{}]: {result}", faults.join(", "));

    // Afterwards every member is up, healthy and agrees on every key.
    c.heal();
    assert!(c.wait_healthy(Duration::from_secs(30)), "members did not recover:\n{}", c.logs());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let views: Vec<String> = (0..3)
            .map(|i| {
                let out = etcdctl(&c.member(i).endpoint(), &["get", "--prefix", "lin/", "-w", "json"]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                // Compare the key-values only (headers carry member IDs).
                text.split("\"kvs\":").nth(1).unwrap_or("").to_string()
            })
            .collect();
        if views.iter().all(|v| *v == views[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "members disagree after the run: {views:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn with_pre_vote_a_rejoining_member_does_not_disturb_the_leader() {
    let _serial = ironcd_tests::cluster::one_at_a_time();
    let dir = Scratch::new("prevote");
    let opts = ClusterOpts { proxied: true, extra: vec!["--pre-vote".into()], ..ClusterOpts::default() };
    let c = Cluster::start(Kind::Ironcd, 3, dir.path(), opts);
    let leader = c.wait_leader(Duration::from_secs(15)).expect("a leader");
    let term = c.member(leader).status().expect("leader status").raft_term;
    // Cut a follower off for several election timeouts: it keeps asking for
    // pre-votes, which nobody grants, so nobody's term moves.
    let follower = (leader + 1) % 3;
    c.isolate(follower);
    std::thread::sleep(Duration::from_secs(3));
    c.heal();
    std::thread::sleep(Duration::from_secs(2));
    ok(&c.member(follower).endpoint(), &["put", "after-heal", "1"]);
    assert_eq!(c.leader_now(), Some(leader), "leadership changed:\n{}", c.logs());
    let now = c.member(leader).status().expect("leader status").raft_term;
    assert_eq!(now, term, "the leader's term moved from {term} to {now}");
}

#[test]
fn members_join_and_leave_under_load_without_losing_writes() {
    let _serial = ironcd_tests::cluster::one_at_a_time();
    let dir = Scratch::new("reconfig-load");
    let mut c = Cluster::start(Kind::Ironcd, 3, dir.path(), ClusterOpts::default());
    let leader = c.wait_leader(Duration::from_secs(15)).expect("a leader");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // Writers on the two members that stay.
    let stay: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let ep = c.member(stay[w % 2]).endpoint();
            let (stop, acked) = (stop.clone(), acked.clone());
            rt.spawn(async move {
                let opts = ConnectOptions::new().with_timeout(OP_TIMEOUT);
                let Ok(mut client) = Client::connect([ep], Some(opts)).await else { return };
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 100_000 {
                    n += 1;
                    let k = format!("load/{w}/{n}");
                    if let Ok(Ok(_)) = tokio::time::timeout(OP_TIMEOUT, client.put(k.clone(), "v", None)).await {
                        acked.lock().expect("acked").push(k);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // A new member joins (catching up while writes go on), then the leader
    // itself is removed.
    let n = c.add_member("m3");
    let leader_id = c.member_id(leader).expect("leader id");
    ok(&c.member(stay[0]).endpoint(), &["member", "remove", &format!("{leader_id:x}")]);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in writers {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    let acked = acked.lock().expect("acked").clone();
    assert!(acked.len() >= 50, "too few writes went through: {}", acked.len());
    // Every acknowledged write is on every remaining member.
    for i in [stay[0], stay[1], n] {
        let ep = c.member(i).endpoint();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = ok(&ep, &["get", "--prefix", "load/", "--keys-only"]);
            let have: std::collections::HashSet<&str> = got.lines().filter(|l| !l.is_empty()).collect();
            let missing = acked.iter().filter(|k| !have.contains(k.as_str())).count();
            if missing == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "m{i} lacks {missing} of {} acknowledged writes", acked.len());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let list = ok(&c.member(n).endpoint(), &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains(&format!("{leader_id:x}")), "{list}");
}

#[test]
fn a_slow_disk_on_the_leader_does_not_starve_heartbeats() {
    let _serial = ironcd_tests::cluster::one_at_a_time();
    // Once armed (SIGUSR1), every WAL sync on the leader takes 1.1 s
    // longer: more than twice the election timeout (500 ms). The followers commit
    // writes without it, and leadership must hold: heartbeats never wait
    // for the leader's disk.
    let dir = Scratch::new("slow-disk");
    let opts = ClusterOpts { extra: vec!["--ironcd-fault-wal-sync-delay-ms".into(), "1100".into()], ..ClusterOpts::default() };
    let c = Cluster::start(Kind::Ironcd, 3, dir.path(), opts);
    let leader = c.wait_leader(Duration::from_secs(20)).expect("a leader");
    let term = c.member(leader).status().expect("leader status").raft_term;
    c.member(leader).signal("-USR1");
    let ep = c.member(leader).endpoint();
    let started = Instant::now();
    for i in 0..20 {
        assert!(try_put(&ep, &format!("slow/{i}"), "v"), "a write failed on a slow leader disk:\n{}", c.logs());
    }
    if started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_secs(3) - started.elapsed());
    }
    assert_eq!(c.leader_now(), Some(leader), "leadership moved:\n{}", c.logs());
    let now = c.member(leader).status().expect("leader status").raft_term;
    assert_eq!(now, term, "an election happened (term {term} -> {now})");
    // The fault was real: the leader logged its slow syncs, as etcd does.
    assert!(c.member(leader).log_text().contains("slow fdatasync"), "no slow sync on the leader");
}

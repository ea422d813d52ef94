//! Sanity tests of the cluster harness (`ironcd_tests::cluster`) and its
//! proxies, against real etcd clusters (and one ironcd cluster, for the
//! source-IP partitions only ironcd's bound peer connections allow).

use std::time::{Duration, Instant};

use ironcd_tests::cluster::{Cluster, ClusterOpts};
use ironcd_tests::{etcdctl, ok, Kind, Scratch};

const LEADER_WAIT: Duration = Duration::from_secs(15);

fn get_value(endpoint: &str, key: &str) -> String {
    ok(endpoint, &["get", "--print-value-only", "--command-timeout=3s", key]).trim_end().to_string()
}

/// Retries `put` (a leader change can fail one) for up to 10 s.
fn put_eventually(endpoint: &str, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = etcdctl(endpoint, &["put", "--command-timeout=2s", key, value]);
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "put {key} on {endpoint} kept failing: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded) until a serializable read on `endpoint` sees `value`.
fn wait_value(endpoint: &str, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = etcdctl(endpoint, &["get", "--consistency=s", "--print-value-only", "--command-timeout=2s", key]);
        if String::from_utf8_lossy(&out.stdout).trim_end() == value {
            return;
        }
        assert!(Instant::now() < deadline, "{endpoint} never showed {key}={value}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn etcd_three_members_leader_kill_and_restart() {
    let dir = Scratch::new("harness-etcd3");
    let mut c = Cluster::start(Kind::Etcd, 3, dir.path(), ClusterOpts::default());
    assert_eq!(c.len(), 3);

    ok(&c.endpoints()[0], &["put", "k", "v1"]);
    for e in c.endpoints() {
        assert_eq!(get_value(&e, "k"), "v1", "read on {e}");
    }
    let list = ok(&c.endpoints()[1], &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    for i in 0..3 {
        assert!(list.contains(&c.member(i).peer_url()), "{list}");
    }

    let leader = c.wait_leader(LEADER_WAIT).unwrap_or_else(|| panic!("no leader:\n{}", c.logs()));
    let old_id = c.member_id(leader).expect("leader's id");
    c.kill9(leader);
    let new_leader = c.wait_leader(LEADER_WAIT).unwrap_or_else(|| panic!("no new leader:\n{}", c.logs()));
    assert_ne!(new_leader, leader);
    assert_ne!(c.member_id(new_leader), Some(old_id));

    let survivor = c.endpoints()[(leader + 1) % 3].clone();
    put_eventually(&survivor, "k", "v2");
    assert!(c.restart(leader), "old leader did not rejoin:\n{}", c.logs());
    assert_eq!(get_value(&c.endpoints()[leader], "k"), "v2");
    assert!(c.wait_leader(LEADER_WAIT).is_some());

    // SIGSTOP one member: the rest keep serving; after SIGCONT it catches up.
    let paused = (c.wait_leader(LEADER_WAIT).unwrap() + 1) % 3;
    c.sigstop(paused);
    let other = c.endpoints()[(paused + 1) % 3].clone();
    put_eventually(&other, "k", "v3");
    c.sigcont(paused);
    wait_value(&c.endpoints()[paused], "k", "v3");
    assert!(c.stop(paused), "SIGTERM did not stop {paused} cleanly");
}

#[test]
fn etcd_add_member() {
    let dir = Scratch::new("harness-etcd-add");
    let mut c = Cluster::start(Kind::Etcd, 3, dir.path(), ClusterOpts::default());
    ok(&c.endpoints()[0], &["put", "before", "x"]);
    let i = c.add_member("late");
    assert_eq!(i, 3);
    assert_eq!(c.member(3).name, "late");
    wait_value(&c.endpoints()[3], "before", "x");
    let list = ok(&c.endpoints()[0], &["member", "list"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(list.contains("late") && list.contains(&c.member(3).peer_url()), "{list}");
    assert!(c.wait_leader(LEADER_WAIT).is_some());
}

/// etcd does not bind its outgoing peer connections, so its proxies cannot
/// tell members apart, and etcd falls back from its streams to plain
/// requests in the other direction when one proxy is blackholed: only faults
/// on every proxy at once cut an etcd member off for sure.
#[test]
fn etcd_proxied_cut_and_blackhole() {
    let dir = Scratch::new("harness-etcd-proxy");
    let opts = ClusterOpts { proxied: true, ..ClusterOpts::default() };
    let c = Cluster::start(Kind::Etcd, 3, dir.path(), opts);
    ok(&c.endpoints()[0], &["put", "k", "v1"]);
    for e in c.endpoints() {
        assert_eq!(get_value(&e, "k"), "v1");
    }
    for i in 0..3 {
        assert!(c.proxy(i).counts().0 > 0, "no peer traffic went through proxy {i}");
        // etcd's peers may be between two connections at any one moment
        // (a stream is re-dialed after errors): wait, bounded, for one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.proxy(i).open_connections() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(c.proxy(i).open_connections() > 0, "no peer connection open through proxy {i} within 10 s");
    }

    // Cut every peer connection: etcd reconnects through the proxies.
    let before: u64 = (0..3).map(|i| c.proxy(i).counts().0).sum();
    for i in 0..3 {
        c.proxy(i).cut_all();
    }
    put_eventually(&c.endpoints()[1], "k", "v2");
    for e in c.endpoints() {
        wait_value(&e, "k", "v2");
    }
    let after: u64 = (0..3).map(|i| c.proxy(i).counts().0).sum();
    assert!(after > before, "no reconnection through the proxies");

    // Blackhole every proxy: no member hears from another, so none can
    // commit (the leader steps down: etcd's check-quorum).
    for i in 0..3 {
        c.proxy(i).blackhole(true);
    }
    std::thread::sleep(Duration::from_millis(1500));
    for e in c.endpoints() {
        let out = etcdctl(&e, &["put", "--command-timeout=2s", "k", "during"]);
        assert!(!out.status.success(), "a put on {e} succeeded with every peer link blackholed");
    }
    assert_eq!(c.leader_now(), None);

    c.heal();
    assert!(c.wait_leader(LEADER_WAIT).is_some(), "no leader after heal:\n{}", c.logs());
    put_eventually(&c.endpoints()[2], "k", "v3");
    for e in c.endpoints() {
        wait_value(&e, "k", "v3");
    }
}

/// Source-IP partitions: ironcd binds its outgoing peer connections to its
/// peer IP, so each proxy can tell members apart.
#[test]
fn ironcd_proxied_partition_by_source_ip() {
    let dir = Scratch::new("harness-ironcd-partition");
    let c = Cluster::start(Kind::Ironcd, 3, dir.path(), ClusterOpts { proxied: true, ..ClusterOpts::default() });
    ok(&c.endpoints()[0], &["put", "k", "v1"]);
    for e in c.endpoints() {
        assert_eq!(get_value(&e, "k"), "v1");
    }
    let leader = c.wait_leader(LEADER_WAIT).unwrap_or_else(|| panic!("no leader:\n{}", c.logs()));

    // Cut the leader away: the other two elect a new leader and serve.
    c.isolate(leader);
    let out = etcdctl(&c.endpoints()[leader], &["put", "--command-timeout=3s", "k", "from-old-leader"]);
    assert!(!out.status.success(), "a put on the isolated leader succeeded");
    let rest: Vec<usize> = (0..3).filter(|&j| j != leader).collect();
    put_eventually(&c.endpoints()[rest[0]], "k", "v2");
    assert_eq!(get_value(&c.endpoints()[rest[1]], "k"), "v2");
    let refused: u64 = (0..3).map(|j| c.proxy(j).counts().1).sum();
    assert!(refused > 0, "the proxies refused no reconnection");

    c.heal();
    wait_value(&c.endpoints()[leader], "k", "v2");
    put_eventually(&c.endpoints()[leader], "k", "v3");
    assert_eq!(get_value(&c.endpoints()[rest[1]], "k"), "v3");
    let l = c.wait_leader(LEADER_WAIT).unwrap_or_else(|| panic!("no leader after heal:\n{}", c.logs()));
    assert!(l < 3);
}

//! Leases end to end: the real `etcdctl` and the `etcd-client` crate against
//! ironcd and against a real etcd 3.4, outputs compared after normalising
//! what must differ (server-chosen lease IDs, cluster/member IDs, raft term,
//! remaining TTLs that depend on the clock). Expiry, streaming keep-alive
//! and restart behaviour are checked with generous, bounded waits only.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};
use ironcd_tests::{etcdctl, Kind, Scratch, Server};

/// How long an expired lease may take to disappear (etcd checks every
/// 500 ms; the machine is shared).
const EXPIRY_BOUND: Duration = Duration::from_secs(20);

// ------------------------------------------------------------- etcdctl

/// One step of an etcdctl session. `$1`, `$2`, ... in arguments stand for
/// the server's n-th lease granted by a `lease grant` step.
enum Step {
    Ctl(&'static [&'static str]),
    /// Waits (bounded) until `get <key>` finds nothing.
    WaitGone(&'static str),
    /// SIGTERM, then start again on the same data.
    Restart,
}

use Step::*;

/// Replaces the number right after each `key` in `l` with `N`.
fn mask_after(l: &mut String, key: &str, keep_negative: bool) {
    let mut from = 0;
    while let Some(at) = l[from..].find(key) {
        let start = from + at + key.len();
        let end = l[start..]
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
            .map_or(l.len(), |(i, _)| start + i);
        from = start;
        if end == start || (keep_negative && l[start..].starts_with('-')) {
            continue;
        }
        l.replace_range(start..end, "N");
    }
}

/// Sorts the words inside `attached keys([...])`: etcd lists them in Go map order.
fn sort_attached_keys(l: &mut String) {
    let key = "attached keys([";
    if let Some(at) = l.find(key) {
        let start = at + key.len();
        if let Some(len) = l[start..].find("])") {
            let mut words: Vec<&str> = l[start..start + len].split(' ').collect();
            words.sort_unstable();
            let sorted = words.join(" ");
            l.replace_range(start..start + len, &sorted);
        }
    }
}

fn normalise(s: &str, ids: &[i64]) -> String {
    let mut out = String::new();
    for line in s.lines() {
        // etcdctl's client-side log lines carry timestamps and random targets.
        if line.contains("\"caller\":\"clientv3/") {
            continue;
        }
        let mut l = line.to_string();
        for (n, id) in ids.iter().enumerate() {
            let name = format!("L{}", n + 1);
            // etcdctl prints ids zero-padded to 16 digits; commands carry
            // them unpadded (they differ when an id starts with a 0 nibble).
            l = l
                .replace(&format!("{id:016x}"), &name)
                .replace(&format!("{id:x}"), &name)
                .replace(&id.to_string(), &name);
        }
        for key in ["\"cluster_id\":", "\"member_id\":", "\"raft_term\":"] {
            mask_after(&mut l, key, false);
        }
        // Remaining TTLs depend on the clock; -1 (not found) does not.
        mask_after(&mut l, "\"ttl\":", true);
        mask_after(&mut l, "remaining(", true);
        sort_attached_keys(&mut l);
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn wait_gone(endpoint: &str, key: &str) -> bool {
    let deadline = Instant::now() + EXPIRY_BOUND;
    while Instant::now() < deadline {
        let out = etcdctl(endpoint, &["get", key, "--print-value-only"]);
        if out.status.success() && out.stdout.is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Runs `steps` against `srv`, returning one normalised transcript per step.
fn run(srv: &mut Server, steps: &[Step]) -> Vec<String> {
    let mut ids: Vec<i64> = Vec::new();
    let mut out = Vec::new();
    for step in steps {
        match step {
            Ctl(args) => {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| match a.find('$') {
                        Some(at) => {
                            let n: usize = a[at + 1..].parse().expect("$n");
                            format!("{}{:x}", &a[..at], ids[n - 1])
                        }
                        None => a.to_string(),
                    })
                    .collect();
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let o = etcdctl(&srv.endpoint(), &argv);
                let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
                if argv.starts_with(&["lease", "grant"]) && o.status.success() {
                    let hex = stdout.split_whitespace().nth(1).expect("lease id");
                    ids.push(i64::from_str_radix(hex, 16).expect("hex lease id"));
                }
                out.push(format!(
                    "$ etcdctl {}exit={}\n{}{}",
                    normalise(&args.join(" "), &ids),
                    o.status.code().unwrap_or(-1),
                    normalise(&stdout, &ids),
                    normalise(&String::from_utf8_lossy(&o.stderr), &ids)
                ));
            }
            WaitGone(key) => {
                let gone = wait_gone(&srv.endpoint(), key);
                out.push(format!("wait until {key} is gone: {gone}\n"));
            }
            Restart => {
                // etcd exits by re-raising SIGTERM: only ironcd must exit cleanly.
                let clean = srv.stop();
                assert!(clean || srv.kind == Kind::Etcd, "ironcd did not stop cleanly");
                srv.launch();
                out.push("restart\n".into());
            }
        }
    }
    out
}

fn compare(steps: &[Step]) {
    let dir = Scratch::new("lease-diff");
    let mut etcd = Server::etcd(dir.path());
    let mut ironcd = Server::ironcd(dir.path());
    let want = run(&mut etcd, steps);
    let got = run(&mut ironcd, steps);
    if std::env::var_os("LEASE_TRANSCRIPT").is_some() {
        eprintln!("{}", got.join(""));
    }
    let diffs: Vec<String> =
        want.iter().zip(&got).filter(|(w, g)| w != g).map(|(w, g)| format!("--- etcd\n{w}--- ironcd\n{g}")).collect();
    assert!(diffs.is_empty(), "{} of {} steps differ:\n{}", diffs.len(), steps.len(), diffs.join("\n"));
}

#[test]
fn etcdctl_lease_session_matches_etcd() {
    compare(&[
        Ctl(&["lease", "grant", "60"]),
        Ctl(&["lease", "grant", "30"]),
        Ctl(&["lease", "grant", "9000000001"]),
        Ctl(&["put", "--lease=$1", "k1", "v1"]),
        Ctl(&["put", "--lease=$1", "k2", "v2"]),
        Ctl(&["put", "--lease=$2", "k3", "v3"]),
        Ctl(&["put", "k4", "v4"]),
        Ctl(&["put", "--lease=1234", "x", "y"]),
        Ctl(&["get", "k", "--prefix", "-w", "json"]),
        Ctl(&["lease", "timetolive", "$1"]),
        Ctl(&["lease", "timetolive", "$1", "--keys"]),
        Ctl(&["lease", "timetolive", "$2", "--keys", "-w", "json"]),
        Ctl(&["lease", "timetolive", "1234"]),
        Ctl(&["lease", "timetolive", "1234", "-w", "json"]),
        Ctl(&["lease", "keep-alive", "--once", "$1"]),
        Ctl(&["lease", "keep-alive", "--once", "$1", "-w", "json"]),
        Ctl(&["lease", "keep-alive", "--once", "1234"]),
        Ctl(&["lease", "list"]),
        Ctl(&["lease", "list", "-w", "json"]),
        // Moving k3 to lease 1 detaches it from lease 2.
        Ctl(&["put", "--lease=$1", "k3", "v3b"]),
        Ctl(&["lease", "timetolive", "$2", "--keys"]),
        Ctl(&["lease", "revoke", "$2"]),
        Ctl(&["get", "k3", "-w", "json"]),
        // Revoke deletes every attached key in one revision.
        Ctl(&["lease", "revoke", "$1", "-w", "json"]),
        Ctl(&["get", "k", "--prefix", "-w", "json"]),
        Ctl(&["lease", "revoke", "$1"]),
        Ctl(&["lease", "timetolive", "$1"]),
        Ctl(&["lease", "keep-alive", "--once", "$1"]),
        Ctl(&["lease", "list"]),
        // Expiry: the minimum TTL (2 s), then the key goes in one revision.
        Ctl(&["lease", "grant", "1"]),
        Ctl(&["put", "--lease=$3", "e1", "x"]),
        Ctl(&["put", "--lease=$3", "e2", "x"]),
        WaitGone("e1"),
        Ctl(&["get", "e", "--prefix", "-w", "json"]),
        Ctl(&["lease", "timetolive", "$3"]),
        Ctl(&["lease", "list"]),
        // Leases and their keys survive a restart.
        Ctl(&["lease", "grant", "600"]),
        Ctl(&["put", "--lease=$4", "r1", "x"]),
        Restart,
        Ctl(&["lease", "list"]),
        Ctl(&["lease", "timetolive", "$4", "--keys"]),
        Ctl(&["lease", "keep-alive", "--once", "$4"]),
        Ctl(&["get", "r1", "-w", "json"]),
        Ctl(&["lease", "revoke", "$4"]),
        Ctl(&["get", "r1", "-w", "json"]),
    ]);
}

/// `lease timetolive`'s remaining seconds.
fn remaining(endpoint: &str, id: &str) -> i64 {
    let out = etcdctl(endpoint, &["lease", "timetolive", id, "-w", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = s.find("\"ttl\":").expect("ttl field") + 6;
    let end = s[at..].find(|c: char| !(c.is_ascii_digit() || c == '-')).map_or(s.len(), |e| at + e);
    s[at..end].parse().expect("ttl number")
}

/// What etcd 3.4 does by default (no lease checkpoints): a restart gives
/// every lease its full TTL again (plus an election timeout), on both servers.
#[test]
fn restart_resets_remaining_ttl_like_etcd() {
    let dir = Scratch::new("lease-restart");
    for kind in [Kind::Etcd, Kind::Ironcd] {
        let mut srv = Server::start(kind, dir.path(), &[]);
        let out = ironcd_tests::ok(&srv.endpoint(), &["lease", "grant", "20"]);
        let id = out.split_whitespace().nth(1).expect("lease id").to_string();
        std::thread::sleep(Duration::from_secs(4));
        let before = remaining(&srv.endpoint(), &id);
        assert!((1..=16).contains(&before), "{kind:?}: remaining {before} after 4 s of a 20 s lease");
        let clean = srv.stop();
        assert!(clean || kind == Kind::Etcd, "ironcd did not stop cleanly");
        srv.launch();
        let after = remaining(&srv.endpoint(), &id);
        assert!(after > before && after <= 21, "{kind:?}: remaining {after} after restart (was {before})");
    }
}

/// `etcdctl lease keep-alive` (streaming) keeps a 2 s lease and its key
/// alive for 5 s; once the keep-alive stops, the key goes. Same on both servers.
#[test]
fn etcdctl_streaming_keep_alive() {
    let dir = Scratch::new("lease-stream");
    for kind in [Kind::Etcd, Kind::Ironcd] {
        let srv = Server::start(kind, dir.path(), &[]);
        let ep = srv.endpoint();
        let out = ironcd_tests::ok(&ep, &["lease", "grant", "2"]);
        let id = out.split_whitespace().nth(1).expect("lease id").to_string();
        ironcd_tests::ok(&ep, &["put", "--lease", &id, "alive", "x"]);
        let mut child = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .args(["lease", "keep-alive", &id])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcdctl lease keep-alive");
        std::thread::sleep(Duration::from_secs(5));
        let still = ironcd_tests::ok(&ep, &["get", "alive", "--print-value-only"]);
        // Only the etcdctl this test started, by its own handle.
        let _ = child.kill();
        let out = child.wait_with_output().expect("keep-alive output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let answers = stdout.lines().filter(|l| *l == format!("lease {id} keepalived with TTL(2)")).count();
        assert_eq!(still.trim(), "x", "{kind:?}: the key must live while kept alive");
        assert!(answers >= 3, "{kind:?}: {answers} keep-alive answers in 5 s:\n{stdout}");
        assert!(wait_gone(&ep, "alive"), "{kind:?}: the key must go once the keep-alive stops");
    }
}

// ------------------------------------------------------------- etcd-client

fn status_of(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => format!("other error: {other}"),
    }
}

/// The same scenario through the etcd-client crate; returns a transcript of
/// what must be identical on etcd and ironcd.
async fn client_scenario(endpoint: String) -> Vec<String> {
    let mut t = Vec::new();
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let id = 0x1234;

    let g = c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(id))).await.expect("grant");
    t.push(format!("grant id={:x} ttl={} rev={}", g.id(), g.ttl(), g.header().unwrap().revision()));
    let e = c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(id))).await.unwrap_err();
    t.push(format!("grant again: {}", status_of(e)));
    let g = c.lease_grant(1, Some(LeaseGrantOptions::new().with_id(0x77))).await.expect("grant min");
    t.push(format!("grant ttl 1: ttl={}", g.ttl()));
    // (It may expire before this revoke on a slow machine.)
    let _ = c.lease_revoke(0x77).await;
    let g = c.lease_grant(-5, Some(LeaseGrantOptions::new().with_id(0x78))).await.expect("grant negative");
    t.push(format!("grant ttl -5: ttl={}", g.ttl()));
    let e = c.lease_grant(9_000_000_001, None).await.unwrap_err();
    t.push(format!("grant too large: {}", status_of(e)));
    let g = c.lease_grant(9_000_000_000, None).await.expect("grant max");
    t.push(format!("grant max: ttl={} id>0={}", g.ttl(), g.id() > 0));
    let max_id = g.id();

    let p = c.put("a", "1", Some(PutOptions::new().with_lease(id))).await.expect("put");
    t.push(format!("put a rev={}", p.header().unwrap().revision()));
    c.put("b", "1", Some(PutOptions::new().with_lease(id))).await.expect("put");
    let e = c.put("c", "1", Some(PutOptions::new().with_lease(0x9999))).await.unwrap_err();
    t.push(format!("put unknown lease: {}", status_of(e)));

    let ttl = c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.expect("ttl");
    assert!((50..=60).contains(&ttl.ttl()), "remaining {}", ttl.ttl());
    let mut keys: Vec<String> = ttl.keys().iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    keys.sort();
    t.push(format!("ttl id={:x} granted={} keys={keys:?} rev={}", ttl.id(), ttl.granted_ttl(), ttl.header().unwrap().revision()));
    let ttl = c.lease_time_to_live(id, None).await.expect("ttl");
    t.push(format!("ttl without keys: keys={}", ttl.keys().len()));
    let ttl = c.lease_time_to_live(0x4321, None).await.expect("ttl unknown");
    t.push(format!("ttl unknown: id={:x} ttl={} granted={}", ttl.id(), ttl.ttl(), ttl.granted_ttl()));

    // Streaming keep-alive: every request answered with the granted TTL
    // (etcd-client sends the first one and reads its answer itself).
    let (mut keeper, mut stream) = c.lease_keep_alive(id).await.expect("keep-alive");
    for _ in 0..3 {
        keeper.keep_alive().await.expect("send keep-alive");
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("keep-alive answer in time");
        let r = r.expect("keep-alive message").expect("keep-alive response");
        t.push(format!("keep-alive id={:x} ttl={}", r.id(), r.ttl()));
    }
    drop(keeper);
    // TTL 0 in the answer: etcd-client reports it as an error.
    let e = c.lease_keep_alive(0x4321).await.map(|_| ()).unwrap_err();
    t.push(format!("keep-alive unknown: {e}"));

    let mut listed: Vec<i64> = c.leases().await.expect("leases").leases().iter().map(|l| l.id()).collect();
    listed.sort();
    t.push(format!("leases={}", listed.iter().filter(|&&l| l != max_id).map(|l| format!("{l:x}")).collect::<Vec<_>>().join(",")));

    let r = c.lease_revoke(id).await.expect("revoke");
    t.push(format!("revoke rev={}", r.header().unwrap().revision()));
    let got = c.get("", Some(GetOptions::new().with_from_key())).await.expect("get");
    t.push(format!("after revoke: count={} rev={}", got.count(), got.header().unwrap().revision()));
    let e = c.lease_revoke(id).await.unwrap_err();
    t.push(format!("revoke again: {}", status_of(e)));
    c.lease_revoke(max_id).await.expect("revoke max");
    c.lease_revoke(0x78).await.expect("revoke 0x78");

    // A 2 s lease kept alive for 5 s survives; left alone it expires.
    c.lease_grant(1, Some(LeaseGrantOptions::new().with_id(0x79))).await.expect("grant 0x79");
    c.put("kept", "1", Some(PutOptions::new().with_lease(0x79))).await.expect("put kept");
    let (mut keeper, mut stream) = c.lease_keep_alive(0x79).await.expect("keep-alive");
    let until = Instant::now() + Duration::from_secs(5);
    let mut answers = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        keeper.keep_alive().await.expect("send keep-alive");
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("in time");
        assert_eq!(r.expect("message").expect("response").ttl(), 2);
        answers += 1;
    }
    assert!(answers >= 5, "{answers} keep-alive answers in 5 s");
    let got = c.get("kept", None).await.expect("get");
    t.push(format!("kept alive: count={}", got.count()));
    drop(keeper);
    drop(stream);
    let deadline = Instant::now() + EXPIRY_BOUND;
    loop {
        let ttl = c.lease_time_to_live(0x79, None).await.expect("ttl");
        if ttl.ttl() == -1 {
            break;
        }
        assert!(Instant::now() < deadline, "lease 0x79 did not expire within {EXPIRY_BOUND:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = c.get("kept", None).await.expect("get");
    t.push(format!("expired: count={} rev={}", got.count(), got.header().unwrap().revision()));
    t
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

#[test]
fn etcd_client_scenario_matches_etcd() {
    let dir = Scratch::new("lease-client");
    let etcd = Server::etcd(dir.path());
    let ironcd = Server::ironcd(dir.path());
    let want = block_on(client_scenario(etcd.endpoint()));
    let got = block_on(client_scenario(ironcd.endpoint()));
    assert_eq!(want, got, "etcd (left) and ironcd (right) differ");
    // Spot checks of etcd's documented behaviour, so an agreement on a wrong answer fails too.
    assert!(got.contains(&"grant again: FailedPrecondition: etcdserver: lease already exists".to_string()), "{got:#?}");
    assert!(got.contains(&"grant ttl 1: ttl=2".to_string()), "{got:#?}");
    assert!(got.contains(&"grant too large: OutOfRange: etcdserver: too large lease TTL".to_string()), "{got:#?}");
    assert!(got.contains(&"put unknown lease: NotFound: etcdserver: requested lease not found".to_string()), "{got:#?}");
    assert!(got.contains(&"ttl unknown: id=4321 ttl=-1 granted=0".to_string()), "{got:#?}");
    assert!(got.iter().any(|l| l.starts_with("keep-alive unknown:") && l.contains("lease not found")), "{got:#?}");
}

/// Many short leases with keys all expire, none is left behind, and the
/// server stays responsive while it revokes them.
#[test]
fn many_leases_expire() {
    const N: i64 = 2000;
    let dir = Scratch::new("lease-many");
    let srv = Server::ironcd(dir.path());
    block_on(async {
        let mut c = Client::connect([srv.endpoint()], None).await.expect("connect");
        for i in 1..=N {
            c.lease_grant(2, Some(LeaseGrantOptions::new().with_id(i))).await.expect("grant");
            c.put(format!("m{i:05}"), "x", Some(PutOptions::new().with_lease(i))).await.expect("put");
        }
        let deadline = Instant::now() + EXPIRY_BOUND + Duration::from_secs(10);
        loop {
            let left = c.get("m", Some(GetOptions::new().with_prefix().with_count_only())).await.expect("count").count();
            let leases = c.leases().await.expect("leases").leases().len();
            if left == 0 && leases == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{left} keys and {leases} leases left after the bound");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Each revoke is one revision: 2N puts, then N revokes.
        let rev = c.get("m", None).await.expect("get").header().unwrap().revision();
        assert_eq!(rev, 1 + 2 * N, "revision after {N} puts and {N} revokes");
    });
}

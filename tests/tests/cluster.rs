//! ironcd clusters started with etcd's flags, driven by the real `etcdctl`:
//! every member serves every request, a killed leader is replaced and
//! rejoins, members are added (catching up from a snapshot) and removed,
//! leases work through followers. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ironcd_tests::{etcdctl, free_port, ironcd_bin, ok, Scratch};

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let child = Command::new(ironcd_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start ironcd");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let out = etcdctl(&self.endpoint(), &["get", "--command-timeout=2s", "ready-probe"]);
            if out.status.success() {
                return;
            }
            assert!(!self.exited(), "{} exited; log:\n{}", self.name, self.log_text());
            assert!(Instant::now() < deadline, "{} did not serve in time; log:\n{}", self.name, self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn member(dir: &Path, name: &str) -> Member {
    let client_port = free_port();
    Member {
        name: name.to_string(),
        client_port,
        peer_port: free_port(),
        data_dir: dir.join(format!("{name}.data")),
        log: dir.join(format!("{name}-{client_port}.log")),
        args: Vec::new(),
        child: None,
    }
}

fn set_args(m: &mut Member, initial_cluster: &str, state: &str, token: &str, extra: &[&str]) {
    let client = format!("http://127.0.0.1:{}", m.client_port);
    let peer = m.peer_url();
    let mut a: Vec<String> = vec![
        "--name".into(),
        m.name.clone(),
        "--data-dir".into(),
        m.data_dir.display().to_string(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer,
        "--initial-cluster".into(),
        initial_cluster.into(),
        "--initial-cluster-state".into(),
        state.into(),
        "--initial-cluster-token".into(),
        token.into(),
        "--heartbeat-interval".into(),
        "50".into(),
        "--election-timeout".into(),
        "500".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    m.args = a;
}

/// Starts `n` members at once (each waits for a quorum before serving).
fn start_cluster(dir: &Path, n: usize, token: &str, extra: &[&str]) -> Vec<Member> {
    let mut ms: Vec<Member> = (0..n).map(|i| member(dir, &format!("m{i}"))).collect();
    let ic: Vec<String> = ms.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
    let ic = ic.join(",");
    for m in &mut ms {
        set_args(m, &ic, "new", token, extra);
        m.spawn();
    }
    for m in &mut ms {
        m.wait_ready(Duration::from_secs(30));
    }
    ms
}

fn endpoints(ms: &[Member]) -> String {
    ms.iter().filter(|m| m.child.is_some()).map(Member::endpoint).collect::<Vec<_>>().join(",")
}

/// (member id in hex, leader id in hex, raft index) per endpoint, from `endpoint status`.
fn status(ep: &str) -> Option<(String, String, u64)> {
    let out = etcdctl(ep, &["endpoint", "status", "-w", "fields", "--command-timeout=2s"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{name}\" : ")))
            .map(|l| l.split(" : ").nth(1).unwrap_or("").trim().to_string())
    };
    let id: u64 = field("MemberID")?.parse().ok()?;
    let leader: u64 = field("Leader")?.parse().ok()?;
    let index: u64 = field("RaftIndex")?.parse().ok()?;
    Some((format!("{id:x}"), format!("{leader:x}"), index))
}

/// Index of the member every live member agrees is the leader.
fn wait_leader(ms: &[Member], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let sts: Vec<Option<(String, String, u64)>> =
            ms.iter().map(|m| if m.child.is_some() { status(&m.endpoint()) } else { None }).collect();
        let live: Vec<&(String, String, u64)> = sts.iter().flatten().collect();
        if !live.is_empty() && live.len() == ms.iter().filter(|m| m.child.is_some()).count() {
            let leader = &live[0].1;
            if leader != "0" && live.iter().all(|s| &s.1 == leader) {
                if let Some(i) = sts.iter().position(|s| s.as_ref().is_some_and(|s| &s.0 == leader)) {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {sts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `put` with retries while the cluster elects a leader (bounded).
fn put_retrying(ep: &str, k: &str, v: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let out = etcdctl(ep, &["put", k, v, "--command-timeout=3s"]);
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "put {k} on {ep} kept failing: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn keys(ep: &str, prefix: &str) -> Vec<String> {
    ok(ep, &["get", "--prefix", prefix, "--keys-only"]).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

#[test]
fn three_members_serve_every_request_and_survive_a_leader_kill() {
    let dir = Scratch::new("cluster3");
    let mut ms = start_cluster(dir.path(), 3, "tkn-c3", &[]);
    let all = endpoints(&ms);

    // member list, as etcd shows it: every member started, with its name and URLs.
    for m in &ms {
        let list = ok(&m.endpoint(), &["member", "list"]);
        for x in &ms {
            let line = list.lines().find(|l| l.contains(&x.peer_url())).unwrap_or_else(|| panic!("{list}"));
            assert!(line.contains(&format!(", started, {}, {}, http://{}, false", x.name, x.peer_url(), x.endpoint())), "{line}");
        }
    }
    // Writes on every endpoint, reads on every endpoint agree (linearizable reads).
    for (i, m) in ms.iter().enumerate() {
        for j in 0..5 {
            ok(&m.endpoint(), &["put", &format!("k/{i}/{j}"), &format!("v{i}{j}")]);
        }
    }
    let want = keys(&ms[0].endpoint(), "k/");
    assert_eq!(want.len(), 15);
    for m in &ms {
        assert_eq!(keys(&m.endpoint(), "k/"), want, "{}", m.name);
        let rev = ok(&m.endpoint(), &["get", "k/0/0", "-w", "json"]);
        assert!(rev.contains("\"revision\":16"), "{rev}");
    }
    // One leader; same raft index everywhere once idle.
    let leader = wait_leader(&ms, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let idx: Vec<u64> = ms.iter().filter_map(|m| status(&m.endpoint()).map(|s| s.2)).collect();
        if idx.len() == 3 && idx.iter().all(|i| *i == idx[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "raft indexes differ: {idx:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let hashes: Vec<String> = ms
        .iter()
        .map(|m| {
            let out = ok(&m.endpoint(), &["endpoint", "hashkv", "--rev=16", "-w", "json"]);
            out.split("\"hash\":").nth(1).unwrap_or("").split([',', '}']).next().unwrap_or("").to_string()
        })
        .collect();
    assert!(hashes.iter().all(|h| !h.is_empty() && *h == hashes[0]), "HashKV differs: {hashes:?}");

    // Kill the leader: the others elect a new one and take writes.
    ms[leader].kill9();
    let survivor = (leader + 1) % 3;
    put_retrying(&ms[survivor].endpoint(), "after-kill", "1", Duration::from_secs(20));
    let new_leader = wait_leader(&ms, Duration::from_secs(20));
    assert_ne!(new_leader, leader);
    for m in ms.iter().filter(|m| m.child.is_some()) {
        assert_eq!(keys(&m.endpoint(), "k/"), want, "no acknowledged write lost");
        assert_eq!(ok(&m.endpoint(), &["get", "after-kill", "--print-value-only"]).trim(), "1");
    }
    // The old leader rejoins on its data dir and catches up.
    ms[leader].spawn();
    ms[leader].wait_ready(Duration::from_secs(30));
    assert_eq!(ok(&ms[leader].endpoint(), &["get", "after-kill", "--print-value-only"]).trim(), "1");
    assert_eq!(keys(&ms[leader].endpoint(), "k/"), want);
    let _ = all;
}

#[test]
fn members_are_added_from_a_snapshot_and_removed() {
    let dir = Scratch::new("cluster-members");
    // Snapshots every 20 entries keeping 5 behind: a new member needs a snapshot.
    let extra = ["--snapshot-count", "20", "--ironcd-snapshot-catchup-entries", "5"];
    let mut ms = start_cluster(dir.path(), 3, "tkn-cm", &extra);
    let ep0 = ms[0].endpoint();
    for i in 0..60 {
        ok(&ms[i % 3].endpoint(), &["put", &format!("key{i:03}"), &format!("value{i}")]);
    }
    let mut m3 = member(dir.path(), "m3");
    let added = ok(&ep0, &["member", "add", "m3", &format!("--peer-urls={}", m3.peer_url())]);
    assert!(added.contains("added to cluster"), "{added}");
    let ic = added
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .expect("ETCD_INITIAL_CLUSTER line")
        .trim_matches('"')
        .to_string();
    set_args(&mut m3, &ic, "existing", "tkn-cm", &extra);
    m3.spawn();
    m3.wait_ready(Duration::from_secs(30));
    assert_eq!(keys(&m3.endpoint(), "key").len(), 60, "the new member caught up");
    assert!(m3.log_text().contains("installed a snapshot from the leader"), "caught up from a snapshot");
    let list = ok(&ep0, &["member", "list"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(list.contains(&format!("started, m3, {}, http://{}, false", m3.peer_url(), m3.endpoint())), "{list}");
    // Writes through the new member reach everyone.
    ok(&m3.endpoint(), &["put", "from-m3", "x"]);
    for m in &ms {
        assert_eq!(ok(&m.endpoint(), &["get", "from-m3", "--print-value-only"]).trim(), "x");
    }

    // Remove it: the list shrinks everywhere, the cluster goes on, and the
    // removed member stops.
    let id = list.lines().find(|l| l.contains(", m3, ")).and_then(|l| l.split(',').next()).unwrap().to_string();
    let out = ok(&ep0, &["member", "remove", &id]);
    assert!(out.contains("removed from cluster"), "{out}");
    assert_eq!(ok(&ms[1].endpoint(), &["member", "list"]).lines().count(), 3);
    ok(&ms[2].endpoint(), &["put", "after-remove", "y"]);
    assert_eq!(ok(&ms[0].endpoint(), &["get", "after-remove", "--print-value-only"]).trim(), "y");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !m3.exited() {
        assert!(Instant::now() < deadline, "removed member still running:\n{}", m3.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(m3.log_text().contains("the member has been permanently removed from the cluster"));
    // etcd's errors for bad membership changes.
    let err = ironcd_tests::fails(&ep0, &["member", "remove", "1234"]);
    assert!(err.contains("etcdserver: member not found"), "{err}");
    let err = ironcd_tests::fails(&ep0, &["member", "add", "dup", &format!("--peer-urls={}", ms[1].peer_url())]);
    assert!(err.contains("etcdserver: Peer URLs already exists"), "{err}");
    let err = ironcd_tests::fails(&ep0, &["member", "promote", &id]);
    assert!(err.contains("etcdserver: member not found"), "{err}");

    // etcd's strict reconfig check: with one of three members down, adding a
    // voter (quorum 3 of 4) or removing a live voter would lose the quorum.
    ms[2].kill9();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = etcdctl(&ep0, &["member", "add", "x", "--peer-urls=http://127.0.0.1:9"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if err.contains("etcdserver: re-configuration failed due to not enough started members") {
            break;
        }
        assert!(!out.status.success(), "added a voter without a quorum of started members");
        assert!(Instant::now() < deadline, "{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let live = ok(&ep0, &["member", "list"]);
    let m1 = live.lines().find(|l| l.contains(", m1, ")).and_then(|l| l.split(',').next()).unwrap().to_string();
    let err = ironcd_tests::fails(&ep0, &["member", "remove", &m1]);
    assert!(err.contains("etcdserver: re-configuration failed due to not enough started members"), "{err}");
}

#[test]
fn leases_work_through_followers() {
    let dir = Scratch::new("cluster-lease");
    let ms = start_cluster(dir.path(), 3, "tkn-cl", &[]);
    let leader = wait_leader(&ms, Duration::from_secs(10));
    let f = &ms[(leader + 1) % 3];
    let granted = ok(&f.endpoint(), &["lease", "grant", "30"]);
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    ok(&f.endpoint(), &["put", "--lease", &id, "leased", "v"]);
    let ka = ok(&f.endpoint(), &["lease", "keep-alive", "--once", &id]);
    assert!(ka.contains("keepalived with TTL(30)"), "{ka}");
    let ttl = ok(&ms[(leader + 2) % 3].endpoint(), &["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("granted with TTL(30s)") && ttl.contains("attached keys([leased])"), "{ttl}");
    ok(&f.endpoint(), &["lease", "revoke", &id]);
    for m in &ms {
        assert!(keys(&m.endpoint(), "leased").is_empty(), "revoked lease's key gone on {}", m.name);
    }
    let err = ironcd_tests::fails(&f.endpoint(), &["lease", "keep-alive", "--once", &id]);
    assert!(err.contains("requested lease not found"), "{err}");
}

#[test]
fn five_members_keep_going_without_two() {
    let dir = Scratch::new("cluster5");
    let mut ms = start_cluster(dir.path(), 5, "tkn-c5", &[]);
    for (i, m) in ms.iter().enumerate() {
        ok(&m.endpoint(), &["put", &format!("five/{i}"), "x"]);
    }
    let leader = wait_leader(&ms, Duration::from_secs(10));
    ms[leader].kill9();
    let other = (leader + 1) % 5;
    ms[other].kill9();
    let live = (0..5).find(|i| *i != leader && *i != other).unwrap();
    put_retrying(&ms[live].endpoint(), "five/after", "y", Duration::from_secs(20));
    for m in ms.iter().filter(|m| m.child.is_some()) {
        assert_eq!(keys(&m.endpoint(), "five/").len(), 6, "{}", m.name);
    }
}

//! A harness for clusters of several members, ironcd or etcd, started with
//! etcd's flags on loopback, optionally with a fault-injecting [`Proxy`] in
//! front of each member's peer listener.
//!
//! Member `i` is named `m{i}`, serves clients on `127.0.0.1:{port}` and
//! peers on its own loopback IP (one block of `127.x.y.z` addresses per
//! cluster). With [`ClusterOpts::proxied`], the peer URL it advertises (and
//! that `--initial-cluster` names) is its proxy's, on the same IP, which
//! forwards to its real peer listener. ironcd binds its outgoing peer
//! connections to the IP of its `--listen-peer-urls`, so the proxy of
//! member `i` sees which member connects by source IP, and
//! [`Cluster::partition`] cuts the cluster by blocking source IPs. etcd does
//! not bind its outgoing connections (they come from 127.0.0.1), so for etcd
//! only whole-proxy faults ([`Proxy::blackhole`], [`Proxy::cut_all`]) work,
//! and they only stop traffic *to* a member.
//!
//! The harness owns its processes (by PID, killed on drop) and proxies;
//! every wait is bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::proxy::Proxy;
use crate::{etcdctl, free_port, ironcd_bin, Kind, START_TIMEOUT};

/// How a cluster is started.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// A [`Proxy`] in front of each member's peer listener.
    pub proxied: bool,
    /// `--heartbeat-interval` (ms).
    pub heartbeat_ms: u64,
    /// `--election-timeout` (ms).
    pub election_ms: u64,
    /// `--initial-cluster-token`; `None`: unique per cluster.
    pub token: Option<String>,
    /// More flags for every member.
    pub extra: Vec<String>,
    /// Bound on the cluster (or a restarted member) becoming healthy.
    pub start_timeout: Duration,
}

impl Default for ClusterOpts {
    fn default() -> ClusterOpts {
        ClusterOpts {
            proxied: false,
            heartbeat_ms: 50,
            election_ms: 500,
            token: None,
            extra: Vec::new(),
            start_timeout: START_TIMEOUT,
        }
    }
}

/// One member: its addresses, flags and process.
pub struct Member {
    pub kind: Kind,
    pub name: String,
    pub client_port: u16,
    /// The loopback IP it listens on (and, for ironcd, connects from) for peers.
    pub peer_ip: Ipv4Addr,
    /// Its real peer listener's port.
    pub peer_port: u16,
    /// The port of the peer URL it advertises (its proxy's when proxied).
    pub advertised_peer_port: u16,
    pub data_dir: PathBuf,
    /// Its full command line after the binary; edit before a restart if needed.
    pub args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    /// `127.0.0.1:{client port}`, as etcdctl takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The URL its peer listener listens on.
    pub fn listen_peer_url(&self) -> String {
        format!("http://{}:{}", self.peer_ip, self.peer_port)
    }

    /// The peer URL the cluster knows it by.
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.peer_ip, self.advertised_peer_port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Running (not exited; a SIGSTOPped member counts as running).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the process (not waiting for anything). Panics if running.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open member log");
        let bin = match self.kind {
            Kind::Ironcd => ironcd_bin(),
            Kind::Etcd => PathBuf::from("etcd"),
        };
        let child = Command::new(bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?} {}: {e}", self.kind, self.name));
        self.child = Some(child);
    }

    /// Sends a signal (`"-STOP"`, `"-CONT"`, ...) to the process, if running.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// `kill -9`, then reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (after SIGCONT, in case it is stopped), waits up to 20 s for
    /// the exit, else kills it; whether it exited by itself in time, with
    /// status 0 or by the SIGTERM (etcd re-raises it after shutting down).
    pub fn stop(&mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        self.signal("-CONT");
        self.signal("-TERM");
        let Some(mut c) = self.child.take() else { return true };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success() || st.signal() == Some(15);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `etcdctl endpoint health` passes (a linearizable read: the
    /// member has a leader and the cluster has quorum).
    pub fn healthy(&self) -> bool {
        etcdctl(&self.endpoint(), &["endpoint", "health", "--command-timeout=2s"]).status.success()
    }

    /// `etcdctl endpoint status` of this member; `None` if it does not
    /// answer within a second.
    pub fn status(&self) -> Option<EndpointStatus> {
        let out = etcdctl(&self.endpoint(), &["endpoint", "status", "-w", "json", "--command-timeout=1s"]);
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Some(EndpointStatus {
            member_id: json_u64(&text, "member_id")?,
            leader: json_u64(&text, "leader")?,
            raft_term: json_u64(&text, "raft_term").unwrap_or(0),
            revision: json_u64(&text, "revision").unwrap_or(0),
        })
    }

    /// Waits until it answers `endpoint health` or exits; whether healthy.
    pub fn wait_healthy(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.healthy() {
                return true;
            }
            if !self.is_running() || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What `etcdctl endpoint status` reports for one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointStatus {
    pub member_id: u64,
    /// 0 when it knows no leader.
    pub leader: u64,
    pub raft_term: u64,
    pub revision: u64,
}

/// The first unsigned integer after `"name":` in `json` (etcdctl prints
/// 64-bit IDs as plain JSON numbers, beyond f64's precision).
pub fn json_u64(json: &str, name: &str) -> Option<u64> {
    let pat = format!("\"{name}\":");
    let at = json.find(&pat)? + pat.len();
    let digits: String = json[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A loopback port free on `ip` right now.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0)).expect("bind a loopback IP").local_addr().expect("local addr").port()
}

/// A fresh block of loopback IPs for one cluster: `127.{a}.{b}.{10 + i}`.
/// Different per cluster in this process, and likely between processes.
fn next_ip_block() -> (u8, u8) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let mixed = (std::process::id().wrapping_mul(2_654_435_761)).wrapping_add(n) % (200 * 256);
    (20 + (mixed / 256) as u8, (mixed % 256) as u8)
}

static TOKENS: AtomicU32 = AtomicU32::new(0);

/// A running cluster; members are killed and proxies stopped on drop.
pub struct Cluster {
    pub kind: Kind,
    pub opts: ClusterOpts,
    pub token: String,
    dir: PathBuf,
    ip_block: (u8, u8),
    members: Vec<Member>,
    proxies: Vec<Option<Proxy>>,
}

impl Cluster {
    /// Starts `n` members at once and waits (bounded by
    /// `opts.start_timeout`) until every one passes `endpoint health`.
    /// Panics with the members' logs if they do not.
    pub fn start(kind: Kind, n: usize, dir: &Path, opts: ClusterOpts) -> Cluster {
        assert!((1..=200).contains(&n));
        if kind == Kind::Ironcd {
            ironcd_bin(); // build before any timing starts
        }
        let token = opts.token.clone().unwrap_or_else(|| {
            format!("ironcd-test-{}-{}", std::process::id(), TOKENS.fetch_add(1, Ordering::SeqCst))
        });
        let mut c = Cluster {
            kind,
            opts,
            token,
            dir: dir.to_path_buf(),
            ip_block: next_ip_block(),
            members: Vec::new(),
            proxies: Vec::new(),
        };
        for i in 0..n {
            c.new_member_slot(&format!("m{i}"));
        }
        let initial = c.initial_cluster();
        for i in 0..n {
            c.set_args(i, &initial, "new");
        }
        for m in &mut c.members {
            m.spawn();
        }
        let deadline = Instant::now() + c.opts.start_timeout;
        let mut healthy = vec![false; n];
        let mut retries = 0;
        while healthy.iter().any(|h| !h) {
            let checks: Vec<bool> = std::thread::scope(|s| {
                let hs: Vec<_> = c.members.iter().map(|m| s.spawn(move || m.healthy())).collect();
                hs.into_iter().map(|h| h.join().unwrap_or(false)).collect()
            });
            for i in 0..n {
                healthy[i] |= checks[i];
                if healthy[i] || c.members[i].is_running() {
                    continue;
                }
                // A client port picked by `free_port` can be taken by a
                // parallel test before the member binds it: new port, again.
                // (Peer ports are on this cluster's own IPs.)
                let log = c.members[i].log_text();
                if retries < 3 && log.contains("ddress already in use") {
                    retries += 1;
                    let m = &mut c.members[i];
                    m.kill9();
                    let _ = std::fs::remove_dir_all(&m.data_dir);
                    m.client_port = free_port();
                    m.log = c.dir.join(format!("{}-{}.log", m.name, m.client_port));
                    c.set_args(i, &initial, "new");
                    c.members[i].spawn();
                } else {
                    panic!("{kind:?} member m{i} exited while the cluster started:\n{}", c.logs());
                }
            }
            if healthy.iter().all(|h| *h) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster of {n} {kind:?} members not healthy within {:?} (healthy: {healthy:?}):\n{}",
                c.opts.start_timeout,
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Healthy means each member published itself; the others learn of
        // that publish when the commit reaches them. Until then their member
        // list shows it "unstarted" (etcd's too), so wait for every list.
        let deadline = Instant::now() + c.opts.start_timeout;
        for m in &c.members {
            loop {
                let out = etcdctl(&m.endpoint(), &["member", "list", "--command-timeout=2s"]);
                let list = String::from_utf8_lossy(&out.stdout);
                if out.status.success() && list.lines().filter(|l| l.contains(", started, ")).count() >= n {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{kind:?} member {} did not list {n} started members within {:?}:\n{list}\n{}",
                    m.name,
                    c.opts.start_timeout,
                    c.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        c
    }

    /// `m0=peer-url,m1=...` over every member slot.
    pub fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
    }

    /// Adds a member slot (addresses, data dir, proxy; no process yet) and
    /// returns its index. Its flags are set by [`Cluster::start_existing`].
    pub fn new_member_slot(&mut self, name: &str) -> usize {
        let i = self.members.len();
        assert!(i < 240, "too many members");
        let ip = Ipv4Addr::new(127, self.ip_block.0, self.ip_block.1, 10 + i as u8);
        let peer_port = free_port_on(ip);
        let (proxy, advertised) = if self.opts.proxied {
            let listener = TcpListener::bind((ip, 0)).expect("bind proxy");
            let port = listener.local_addr().expect("proxy addr").port();
            (Some(Proxy::from_listener(listener, SocketAddr::new(IpAddr::V4(ip), peer_port))), port)
        } else {
            (None, peer_port)
        };
        let client_port = free_port();
        self.members.push(Member {
            kind: self.kind,
            name: name.to_string(),
            client_port,
            peer_ip: ip,
            peer_port,
            advertised_peer_port: advertised,
            data_dir: self.dir.join(format!("{name}-{client_port}.data")),
            args: Vec::new(),
            child: None,
            log: self.dir.join(format!("{name}-{client_port}.log")),
        });
        self.proxies.push(proxy);
        i
    }

    fn set_args(&mut self, i: usize, initial_cluster: &str, state: &str) {
        let opts = &self.opts;
        let m = &mut self.members[i];
        let mut a: Vec<String> = vec![
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            m.client_url(),
            "--advertise-client-urls".into(),
            m.client_url(),
            "--listen-peer-urls".into(),
            m.listen_peer_url(),
            "--initial-advertise-peer-urls".into(),
            m.peer_url(),
            "--initial-cluster".into(),
            initial_cluster.into(),
            "--initial-cluster-state".into(),
            state.into(),
            "--initial-cluster-token".into(),
            self.token.clone(),
            "--heartbeat-interval".into(),
            opts.heartbeat_ms.to_string(),
            "--election-timeout".into(),
            opts.election_ms.to_string(),
        ];
        a.extend(opts.extra.iter().cloned());
        m.args = a;
    }

    /// Starts the member in slot `i` with `--initial-cluster-state existing`
    /// and the given `--initial-cluster` (as `etcdctl member add` printed
    /// it, after the caller added it); waits until healthy (bounded).
    pub fn start_existing(&mut self, i: usize, initial_cluster: &str) -> bool {
        self.spawn_existing(i, initial_cluster);
        let t = self.opts.start_timeout;
        self.members[i].wait_healthy(t)
    }

    /// [`Cluster::start_existing`] without waiting (a learner never passes
    /// `endpoint health`: it refuses linearizable reads, as etcd's does).
    pub fn spawn_existing(&mut self, i: usize, initial_cluster: &str) {
        self.set_args(i, initial_cluster, "existing");
        self.members[i].spawn();
    }

    /// Adds a member the etcd way: a new slot, `etcdctl member add` on a
    /// running member, then the process with `--initial-cluster-state
    /// existing`. Returns its index; panics (with logs) if any step fails.
    pub fn add_member(&mut self, name: &str) -> usize {
        let i = self.new_member_slot(name);
        let peer_url = self.members[i].peer_url();
        let via = self.live_endpoint().expect("no running member to add through");
        // etcd refuses reconfiguration until every member has been connected
        // for a while (5 s) after a start: retry that refusal (it changed
        // nothing), bounded.
        let deadline = Instant::now() + self.opts.start_timeout;
        let text = loop {
            let out = etcdctl(&via, &["member", "add", name, &format!("--peer-urls={peer_url}")]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                break text;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let not_yet = err.contains("unhealthy cluster") || err.contains("not enough started members");
            assert!(not_yet && Instant::now() < deadline, "member add failed: {text}{err}");
            std::thread::sleep(Duration::from_millis(250));
        };
        let initial = text
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in member add output: {text}"))
            .to_string();
        if !self.start_existing(i, &initial) {
            panic!("added member {name} did not become healthy:\n{}", self.logs());
        }
        i
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    pub fn member_mut(&mut self, i: usize) -> &mut Member {
        &mut self.members[i]
    }

    /// The proxy in front of member `i`'s peer listener (proxied clusters).
    pub fn proxy(&self, i: usize) -> &Proxy {
        self.proxies[i].as_ref().expect("cluster started without proxies")
    }

    /// Every member's client endpoint (`127.0.0.1:port`), running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    fn live_endpoint(&mut self) -> Option<String> {
        self.members.iter_mut().find_map(|m| m.is_running().then(|| m.endpoint()))
    }

    pub fn kill9(&mut self, i: usize) {
        self.members[i].kill9();
    }

    /// SIGTERM and a bounded wait; whether it exited cleanly.
    pub fn stop(&mut self, i: usize) -> bool {
        self.members[i].stop()
    }

    pub fn sigstop(&self, i: usize) {
        self.members[i].signal("-STOP");
    }

    pub fn sigcont(&self, i: usize) {
        self.members[i].signal("-CONT");
    }

    /// Starts a stopped or killed member again, same data dir and flags, and
    /// waits (bounded) until it is healthy; whether it became healthy (it
    /// cannot while the cluster has no quorum: see [`Cluster::respawn`]).
    pub fn restart(&mut self, i: usize) -> bool {
        self.respawn(i);
        let t = self.opts.start_timeout;
        self.members[i].wait_healthy(t)
    }

    /// Starts a stopped or killed member again without waiting.
    pub fn respawn(&mut self, i: usize) {
        self.members[i].kill9();
        self.members[i].spawn();
    }

    /// Splits the members into groups that cannot reach each other (members
    /// in no group are isolated alone): each member's proxy refuses and cuts
    /// connections from the peer IPs of members outside its group. Only
    /// isolates members that bind their outgoing peer connections (ironcd).
    pub fn partition(&self, groups: &[&[usize]]) {
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        for i in 0..self.members.len() {
            let blocked: Vec<IpAddr> = (0..self.members.len())
                .filter(|&j| j != i && (group_of(i).is_none() || group_of(i) != group_of(j)))
                .map(|j| IpAddr::V4(self.members[j].peer_ip))
                .collect();
            self.proxy(i).set_blocked_sources(blocked);
        }
    }

    /// Cuts member `i` off from every other member.
    pub fn isolate(&self, i: usize) {
        let rest: Vec<usize> = (0..self.members.len()).filter(|&j| j != i).collect();
        self.partition(&[&[i], &rest]);
    }

    /// Ends every proxy fault (partition, blackhole, delay).
    pub fn heal(&self) {
        for p in self.proxies.iter().flatten() {
            p.heal();
        }
    }

    /// The status of every member (`None` for those not answering).
    pub fn statuses(&self) -> Vec<Option<EndpointStatus>> {
        std::thread::scope(|s| {
            let hs: Vec<_> = self.members.iter().map(|m| s.spawn(move || m.status())).collect();
            hs.into_iter().map(|h| h.join().ok().flatten()).collect()
        })
    }

    /// The leader, once a majority of all members report the same leader
    /// and that member reports itself leader; `None` after `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader_now() {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One look at the statuses: the agreed leader, if any.
    pub fn leader_now(&self) -> Option<usize> {
        let st = self.statuses();
        let majority = self.members.len() / 2 + 1;
        for (i, s) in st.iter().enumerate() {
            let Some(s) = s else { continue };
            if s.leader == 0 || s.leader != s.member_id {
                continue;
            }
            let agree = st.iter().flatten().filter(|o| o.leader == s.member_id).count();
            if agree >= majority {
                return Some(i);
            }
        }
        None
    }

    /// Member `i`'s ID, from its status (`None` if it does not answer).
    pub fn member_id(&self, i: usize) -> Option<u64> {
        self.members[i].status().map(|s| s.member_id)
    }

    /// Waits until every running member passes `endpoint health`.
    pub fn wait_healthy(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for m in &mut self.members {
            if m.is_running() && !m.wait_healthy(deadline.saturating_duration_since(Instant::now())) {
                return false;
            }
        }
        true
    }

    /// The tail of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            s.push_str(&format!("---- {} ({}, pid {:?}) ----\n{}\n", m.name, m.endpoint(), m.pid(), m.log_tail(40)));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
        // Proxies drop after, with their own bounded shutdown.
    }
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs cluster tests of one test binary one at a time: a dozen clusters of
/// debug builds at once on a 2-core machine starve heartbeats and cause
/// elections that no test asked for. Hold the guard for the whole test.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

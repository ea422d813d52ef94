//! Cluster mode of the side-by-side runner (`ironcd-sideby --members N`):
//! an N-member etcd cluster and an N-member ironcd cluster on loopback,
//! started with etcd's static-bootstrap flags, the same workloads against
//! each in alternation, loads spread over all endpoints (or sent to the
//! leader, as etcd benchmark's `--target-leader`).
//!
//! A cluster that does not become healthy within `--cluster-timeout` (a
//! member exits, no leader is elected, a member does not answer a
//! linearizable read) is reported as not formed, with the reason and the
//! tail of a member's log, and the run goes on with the other kind.

use crate::bench;
use crate::procs::{self, Kind, Server};
use crate::sideby::{order, record_run, res_elapsed, run_load, Env, Load, Results, SideArgs, RANGE_KEY};
use crate::svg::{self, Series, ETCD_COLOR, IRONCD_COLOR};
use etcd_client::{Client, ConnectOptions, GetOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// The workloads of cluster mode (names as they appear in the report).
pub const PUT_1000: &str = "put 1000 clients/100 conns, all endpoints";
pub const PUT_1: &str = "put 1 client/1 conn, leader";
pub const RANGE_L: &str = "range l 1000/100, all endpoints";
pub const RANGE_S: &str = "range s 1000/100, all endpoints";

/// `--kinds` as server kinds (deduplicated, in etcd, ironcd order).
pub(crate) fn parse_kinds(a: &SideArgs) -> Result<Vec<Kind>, String> {
    let mut out = BTreeSet::new();
    for k in &a.kinds {
        match k.trim() {
            "etcd" => out.insert(Kind::Etcd),
            "ironcd" => out.insert(Kind::Ironcd),
            "" => continue,
            other => return Err(format!("--kinds: unknown server {other:?} (etcd, ironcd)")),
        };
    }
    if out.is_empty() {
        return Err("--kinds: name at least one of etcd, ironcd".into());
    }
    if a.members == 0 {
        return Err("--members must be at least 1".into());
    }
    Ok(out.into_iter().collect())
}

/// The `--initial-cluster` value for members `n1..` on the given peer ports.
pub fn initial_cluster(peer_ports: &[u16]) -> String {
    peer_ports.iter().enumerate().map(|(i, p)| format!("n{}=http://127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",")
}

/// N members of one kind.
pub struct Cluster {
    pub kind: Kind,
    pub members: Vec<Server>,
}

impl Cluster {
    /// Prepares (does not start) `n` members on fresh loopback ports; data
    /// dirs and logs under `dir`.
    pub fn new(kind: Kind, bin: &Path, dir: &Path, n: usize, extra: Vec<String>) -> Cluster {
        let ports = procs::free_ports(2 * n);
        let (client, peer) = ports.split_at(n);
        let initial = initial_cluster(peer);
        let token = format!("sideby-{}-{}", kind.name(), std::process::id());
        let members = (0..n)
            .map(|i| Server::member(kind, bin, dir, &format!("n{}", i + 1), client[i], peer[i], &initial, &token, extra.clone()))
            .collect();
        Cluster { kind, members }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url()).collect()
    }

    /// Spawns every member before waiting for any: an etcd member of a new
    /// cluster blocks until a quorum of its peers is up.
    pub fn start_all(&mut self) -> Result<(), String> {
        for m in &mut self.members {
            m.start().map_err(|e| format!("spawn {} ({}): {e}", m.bin.display(), m.name))?;
        }
        Ok(())
    }

    /// The first member that has exited, with its status and the last lines of its log.
    pub fn dead(&mut self) -> Option<String> {
        for m in &mut self.members {
            if let Some(why) = m.exited() {
                return Some(format!("member {} {why}\n  last lines of its log:\n{}", m.name, indent(&m.log_tail(8))));
            }
        }
        None
    }

    /// CPU time of all members together.
    pub fn cpu(&self) -> Option<Duration> {
        self.members.iter().map(|m| m.pid().and_then(procs::cpu_time)).sum()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.pid()).collect()
    }

    /// Stops every member (SIGTERM, SIGKILL after the grace period), by PID.
    pub fn stop(&mut self) {
        tokio::task::block_in_place(|| {
            for m in &mut self.members {
                m.stop(Duration::from_secs(20));
            }
        });
    }

    fn name_of(&self, ids: &BTreeMap<usize, u64>, id: u64) -> String {
        ids.iter().find(|(_, v)| **v == id).map(|(i, _)| self.members[*i].name.clone()).unwrap_or_else(|| format!("{id:x}"))
    }
}

/// Log lines indented, each cut to 300 characters.
fn indent(s: &str) -> String {
    s.lines()
        .map(|l| match l.char_indices().nth(300) {
            Some((i, _)) => format!("    {}…", &l[..i]),
            None => format!("    {l}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn client(url: &str) -> Result<Client, String> {
    let o = ConnectOptions::new().with_connect_timeout(Duration::from_millis(500)).with_timeout(Duration::from_secs(2));
    match tokio::time::timeout(Duration::from_secs(2), Client::connect([url], Some(o))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

/// (member ID, leader ID, cluster ID) from one member's Status.
async fn status(url: &str) -> Result<(u64, u64, u64), String> {
    let mut c = client(url).await?;
    match tokio::time::timeout(Duration::from_secs(2), c.status()).await {
        Ok(Ok(s)) => {
            let h = s.header().ok_or("status without header")?;
            Ok((h.member_id(), s.leader(), h.cluster_id()))
        }
        Ok(Err(e)) => Err(format!("status: {}", bench::error_text(&e))),
        Err(_) => Err("status: timed out".into()),
    }
}

/// A linearizable Get (what `etcdctl endpoint health` does).
async fn lin_get(url: &str, key: &str) -> Result<(), String> {
    let mut c = client(url).await?;
    match tokio::time::timeout(Duration::from_secs(3), c.get(key, None::<GetOptions>)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("linearizable get: {}", bench::error_text(&e))),
        Err(_) => Err("linearizable get: timed out".into()),
    }
}

/// Waits (bounded by `max`) until every member answers Status with the same
/// leader, that leader is one of them, the N member IDs are distinct, every
/// member answers a linearizable read and MemberList shows N members.
/// Returns the time from the first spawn and the leader's name.
pub async fn wait_healthy(c: &mut Cluster, max: Duration) -> Result<(Duration, String), String> {
    let t = c.members.iter().map(|m| m.started_at).min().unwrap_or_else(Instant::now);
    let n = c.members.len();
    let mut last = String::from("no member answered yet");
    loop {
        if let Some(why) = c.dead() {
            return Err(why);
        }
        if t.elapsed() >= max {
            let logs: Vec<String> = c.members.iter().map(|m| m.log.display().to_string()).collect();
            return Err(format!(
                "not healthy after {:.0} s: {last}\n  logs: {}\n  last lines of {}'s log:\n{}",
                max.as_secs_f64(),
                logs.join(" "),
                c.members[0].name,
                indent(&c.members[0].log_tail(8))
            ));
        }
        let urls = c.endpoints();
        let probes = each(&urls, |u| async move { status(&u).await }).await;
        let mut ids: BTreeMap<usize, u64> = BTreeMap::new();
        let mut leaders = BTreeSet::new();
        let mut states = Vec::new();
        for (i, p) in probes.iter().enumerate() {
            match p {
                Ok((id, leader, _)) => {
                    ids.insert(i, *id);
                    leaders.insert(*leader);
                }
                Err(e) => states.push(format!("{}: {e}", c.members[i].name)),
            }
        }
        let distinct: BTreeSet<u64> = ids.values().copied().collect();
        if states.is_empty() {
            if leaders.contains(&0) {
                last = "no leader elected (members answer Status but report leader 0)".into();
            } else if leaders.len() > 1 {
                let names: Vec<String> = leaders.iter().map(|l| c.name_of(&ids, *l)).collect();
                last = format!("members disagree on the leader ({}): not one cluster", names.join(", "));
            } else if distinct.len() != n {
                last = format!("only {} distinct member IDs among {n} members", distinct.len());
            } else if !distinct.contains(leaders.iter().next().expect("one leader")) {
                last = "the reported leader is none of the members started".into();
            } else {
                let reads = each(&urls, |u| async move { lin_get(&u, "health").await }).await;
                let bad: Vec<String> =
                    reads.iter().enumerate().filter_map(|(i, r)| r.as_ref().err().map(|e| format!("{}: {e}", c.members[i].name))).collect();
                if bad.is_empty() {
                    let listed = match client(&urls[0]).await {
                        Ok(mut cl) => match tokio::time::timeout(Duration::from_secs(2), cl.member_list()).await {
                            Ok(Ok(l)) => Ok(l.members().len()),
                            Ok(Err(e)) => Err(bench::error_text(&e)),
                            Err(_) => Err("timed out".into()),
                        },
                        Err(e) => Err(e),
                    };
                    match listed {
                        Ok(k) if k == n => {
                            let leader = *leaders.iter().next().expect("one leader");
                            return Ok((t.elapsed(), c.name_of(&ids, leader)));
                        }
                        Ok(k) => last = format!("member list shows {k} members, expected {n}"),
                        Err(e) => last = format!("member list: {e}"),
                    }
                } else {
                    last = format!("leader elected, but {}", bad.join("; "));
                }
            }
        } else {
            last = states.join("; ");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `f(url)` for every url concurrently (one task each), results in order.
async fn each<T, F, Fut>(urls: &[String], f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let handles: Vec<_> = urls.iter().map(|u| tokio::spawn(f(u.clone()))).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("probe task"));
    }
    out
}

/// Puts the range key through the first member, then waits (bounded) until
/// every member serves it from its own store (serializable read).
async fn seed(c: &Cluster) -> Result<(), String> {
    let urls = c.endpoints();
    let mut cl = client(&urls[0]).await?;
    match tokio::time::timeout(Duration::from_secs(10), cl.put(RANGE_KEY, vec![b'v'; 256], None)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("seeding {RANGE_KEY}: {}", bench::error_text(&e))),
        Err(_) => return Err(format!("seeding {RANGE_KEY}: put timed out")),
    }
    let t = Instant::now();
    for (i, u) in urls.iter().enumerate() {
        loop {
            let got = async {
                let mut c = client(u).await.ok()?;
                let r = c.get(RANGE_KEY, Some(GetOptions::new().with_serializable())).await.ok()?;
                Some(r.kvs().len())
            };
            if let Ok(Some(1)) = tokio::time::timeout(Duration::from_secs(2), got).await {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("member {} does not serve {RANGE_KEY} 10 s after it was written", c.members[i].name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The cluster workloads: (name, load, send everything to the leader?).
fn workloads(env: &Env) -> Vec<(&'static str, Load, bool)> {
    let p = &env.plan;
    let all = vec![
        (PUT_1000, Load::Put { clients: 1000, conns: 100, total: p.put1000_total }, false),
        (PUT_1, Load::Put { clients: 1, conns: 1, total: p.put1_total }, true),
        (RANGE_L, Load::Range { clients: 1000, conns: 100, total: p.range1000_total, consistency: "l" }, false),
        (RANGE_S, Load::Range { clients: 1000, conns: 100, total: p.range1000_total, consistency: "s" }, false),
    ];
    all.into_iter().filter(|(n, _, _)| env.wants(n)).collect()
}

/// Starts one cluster and waits until it is healthy; stops it on failure.
async fn bring_up(env: &Env, a: &SideArgs, k: Kind, res: &mut Results) -> Result<Cluster, String> {
    let dir = env.run_dir.join("cluster");
    let mut extra = vec![
        format!("--heartbeat-interval={}", a.heartbeat_interval),
        format!("--election-timeout={}", a.election_timeout),
    ];
    extra.extend(env.extra(k));
    let mut c = Cluster::new(k, env.bin(k), &dir, a.members, extra);
    eprintln!(
        "[{:>5.0} s] starting {} members of {} (clients {}; bounded wait {:.0} s)",
        res_elapsed(),
        a.members,
        k.name(),
        c.endpoints().join(","),
        a.cluster_timeout
    );
    let up = async {
        c.start_all()?;
        let (t, leader) = wait_healthy(&mut c, Duration::from_secs_f64(a.cluster_timeout.max(1.0))).await?;
        seed(&c).await?;
        Ok::<_, String>((t, leader))
    }
    .await;
    match up {
        Ok((t, leader)) => {
            eprintln!(
                "{} cluster healthy in {:.2} s: leader {leader}, pids {:?}",
                k.name(),
                t.as_secs_f64(),
                c.pids()
            );
            res.machine.insert(
                format!("{} cluster", k.name()),
                format!("{} members, healthy {:.2} s after spawn, first leader {leader}", a.members, t.as_secs_f64()),
            );
            Ok(c)
        }
        Err(e) => {
            c.stop();
            Err(e)
        }
    }
}

/// The cluster suite. Returns the kinds whose cluster did not form or died, with why.
pub(crate) async fn suite(env: &Env, a: &SideArgs, kinds: &[Kind], res: &mut Results) -> Result<Vec<(Kind, String)>, String> {
    let named = workloads(env);
    if named.is_empty() {
        return Err(format!("--only {:?} matches none of the cluster workloads: {PUT_1000}; {PUT_1}; {RANGE_L}; {RANGE_S}", env.only));
    }
    for k in [Kind::Etcd, Kind::Ironcd] {
        if !kinds.contains(&k) {
            res.notes.insert(format!("cluster / {}", k.name()), "not run (left out by --kinds)".into());
        }
    }
    let mut failed: Vec<(Kind, String)> = Vec::new();
    let mut clusters: BTreeMap<Kind, Cluster> = BTreeMap::new();
    for &k in kinds {
        match bring_up(env, a, k, res).await {
            Ok(c) => {
                clusters.insert(k, c);
            }
            Err(e) => {
                let msg = format!("{}-member cluster did not form: {e}", a.members);
                eprintln!("\n*** {}: {msg}\n*** going on without {}\n", k.name(), k.name());
                res.notes.insert(format!("cluster / {}", k.name()), brief(&msg));
                failed.push((k, first_line(&e)));
            }
        }
    }
    if clusters.is_empty() {
        return Ok(failed);
    }
    for (name, load, leader) in &named {
        for rep in 0..env.plan.reps {
            for k in order(rep) {
                let Some(c) = clusters.get_mut(&k) else { continue };
                if let Some(why) = c.dead() {
                    let msg = format!("a member died during the run: {why}");
                    eprintln!("\n*** {}: {msg}\n*** going on without {}\n", k.name(), k.name());
                    res.notes.insert(format!("cluster / {}", k.name()), brief(&msg));
                    failed.push((k, first_line(&why)));
                    let mut c = clusters.remove(&k).expect("cluster");
                    c.stop();
                    continue;
                }
                eprintln!("[{:>5.0} s] {name} — {} (rep {})", res_elapsed(), k.name(), rep + 1);
                let cpu0 = (c.cpu(), procs::cpu_time(std::process::id()));
                let run = run_load(env, &c.endpoints(), *leader, load).await;
                let cpu1 = (c.cpu(), procs::cpu_time(std::process::id()));
                record_run(res, name, k, rep, run, cpu0, cpu1);
            }
        }
    }
    for c in clusters.values_mut() {
        c.stop();
    }
    Ok(failed)
}

/// The reason and the log paths, without the log tail (for the report's notes).
fn brief(s: &str) -> String {
    s.lines().take_while(|l| !l.contains("last lines of")).map(str::trim).collect::<Vec<_>>().join("; ")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

fn short(w: &str) -> String {
    w.replace(" clients/", "/").replace(" client/", "/").replace(" conns", "").replace(" conn", "").replace(", all endpoints", " all").replace(", leader", " leader")
}

/// Charts of a cluster run: p50 / p99 by workload, put percentiles at 1000 clients.
pub(crate) fn chart_files(res: &Results) -> Vec<(String, String)> {
    let ws = [PUT_1, PUT_1000, RANGE_L, RANGE_S];
    let series = |cats: &[&str], metric_of: &dyn Fn(&str) -> String, w_of: &dyn Fn(&str) -> String| -> Vec<Series> {
        [(Kind::Etcd, ETCD_COLOR), (Kind::Ironcd, IRONCD_COLOR)]
            .iter()
            .map(|(k, c)| Series {
                name: k.name().into(),
                color: c,
                values: cats.iter().map(|x| res.median_of(&w_of(x), &metric_of(x), *k)).collect(),
            })
            .collect()
    };
    let mut out = Vec::new();
    let cats: Vec<String> = ws.iter().map(|w| short(w)).collect();
    for (m, f) in [("p50 s", "latency-p50.svg"), ("p99 s", "latency-p99.svg")] {
        let title = format!("{}-member clusters: {} latency by workload (median of reps; lower is better)", res.members, &m[..3]);
        let s = series(&ws, &|_| m.to_string(), &|w| w.to_string());
        out.push((f.to_string(), svg::bar_chart(&title, "seconds (log)", &cats, &s, true)));
    }
    let ms = ["p50 s", "p90 s", "p99 s", "p99.9 s"];
    let s = series(&ms, &|m| m.to_string(), &|_| PUT_1000.to_string());
    let cats: Vec<String> = ms.iter().map(|m| m.trim_end_matches(" s").to_string()).collect();
    out.push((
        "percentiles-put-1000.svg".into(),
        svg::bar_chart(&format!("{}-member clusters, {PUT_1000}: latency percentiles", res.members), "seconds (log)", &cats, &s, true),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn initial_cluster_names_members_in_order() {
        assert_eq!(initial_cluster(&[1, 2, 3]), "n1=http://127.0.0.1:1,n2=http://127.0.0.1:2,n3=http://127.0.0.1:3");
    }

    #[test]
    fn members_get_etcd_cluster_flags_and_distinct_ports() {
        let c = Cluster::new(Kind::Etcd, Path::new("etcd"), Path::new("/nonexistent"), 3, vec!["--x".into()]);
        assert_eq!(c.members.len(), 3);
        let mut ports: Vec<u16> = c.members.iter().flat_map(|m| [m.client_port, m.peer_port]).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 6);
        let names: Vec<&str> = c.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        let (initial, token) = c.members[1].cluster.clone().expect("cluster member");
        assert!(initial.contains(&format!("n2={}", c.members[1].peer_url())));
        assert_eq!(token, c.members[0].cluster.clone().unwrap().1);
        assert!(c.members[2].data_dir.ends_with("etcd-n3"));
    }

    #[test]
    fn notes_keep_reason_and_logs_not_the_tail() {
        let e = "not healthy after 20 s: no leader\n  logs: a.log b.log\n  last lines of n1's log:\n    x";
        assert_eq!(brief(e), "not healthy after 20 s: no leader; logs: a.log b.log");
        assert_eq!(indent(&"y".repeat(400)).chars().count(), 4 + 300 + 1);
    }

    #[test]
    fn kinds_parse() {
        let a = SideArgs::parse_from(["x", "--members", "3", "--kinds", "etcd"]);
        assert_eq!(parse_kinds(&a).unwrap(), vec![Kind::Etcd]);
        let a = SideArgs::parse_from(["x", "--members", "3"]);
        assert_eq!(parse_kinds(&a).unwrap(), vec![Kind::Etcd, Kind::Ironcd]);
        let a = SideArgs::parse_from(["x", "--kinds", "etcd,zk"]);
        assert!(parse_kinds(&a).is_err());
    }

    #[test]
    fn cluster_report_uses_cluster_goals() {
        let mut r = Results {
            plan: Some(crate::sideby::Plan::new(&SideArgs::parse_from(["x", "--quick", "--members", "3"]))),
            members: 3,
            ..Default::default()
        };
        r.add(PUT_1000, "req/s", Kind::Etcd, 0, 1000.0);
        r.add(PUT_1000, "req/s", Kind::Ironcd, 0, 2500.0);
        r.add(RANGE_L, "req/s", Kind::Etcd, 0, 1000.0);
        r.notes.insert("cluster / ironcd".into(), "3-member cluster did not form: no leader".into());
        let md = crate::sideby::markdown(&r, true);
        assert!(md.contains("3-member ironcd cluster vs 3-member etcd cluster"), "{md}");
        assert!(md.contains(&format!("| {PUT_1000} | req/s ↑ | 1000 | 2500 | 2.50× | ≥ 2× | **met** | 1 |")), "{md}");
        assert!(md.contains(&format!("| {RANGE_L} | req/s ↑ | 1000 | — | — | ≥ 2× | no figure | 1 / 0 |")), "{md}");
        assert!(md.contains("did not form"));
        assert_eq!(chart_files(&r).len(), 3);
    }
}

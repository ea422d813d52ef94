//! The side-by-side runner: real etcd and ironcd on this machine (loopback
//! ports, fresh data dirs under the target dir, both with their default
//! durability: every acknowledged write fsynced), the same workloads against
//! each in alternation (rep r runs ironcd first when r is even, etcd first
//! when odd), medians over reps, a Markdown table with ratios ironcd/etcd
//! against the goals, SVG charts, raw figures as JSON.

use crate::bench::{self, ConnCfg, RunCfg};
use crate::cli::{PutArgs, RangeArgs, TxnCasArgs, WatchLatencyArgs, LeaseArgs};
use crate::procs::{self, Kind, Server};
use crate::report::{median, Report};
use crate::svg::{self, Series, ETCD_COLOR, IRONCD_COLOR};
use clap::Parser;
use etcd_client::{Client, GetOptions};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(name = "ironcd-sideby", about = "Run the same workloads against real etcd and ironcd, in alternation, and report")]
pub struct SideArgs {
    /// Smaller totals, fewer reps, 100k keys instead of 1M (~2 minutes).
    #[arg(long)]
    pub quick: bool,
    /// The ironcd binary (default: build it with cargo into the target dir and use `<target>/release/ironcd`).
    #[arg(long, env = "IRONCD_BIN")]
    pub ironcd_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, env = "ETCD_BIN", default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// Do not run `cargo build --release -p ironcd` first.
    #[arg(long)]
    pub no_build: bool,
    /// Where the report goes (default: perf/results/quick or perf/results/full).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where data dirs go (default: <target dir>/perf-sideby; must not be tmpfs for a fair run).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Alternations per workload (default 3, quick 2).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Keys loaded for the memory / restart / large-range workloads (default 1,000,000; quick 100,000).
    #[arg(long)]
    pub keys: Option<u64>,
    /// Run only workloads whose name contains one of these (comma-separated), e.g. `put,restart`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Show progress bars.
    #[arg(long)]
    pub progress: bool,
    /// Keep the data dirs afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Extra flag for ironcd (repeatable), e.g. `--ironcd-arg=--ironcd-cores=2`.
    #[arg(long, allow_hyphen_values = true)]
    pub ironcd_arg: Vec<String>,
    /// Members per cluster. 1 (default): the single-member suites. N > 1: an
    /// N-member etcd cluster and an N-member ironcd cluster on loopback, the
    /// cluster workloads (put, range) spread over all endpoints.
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    /// Which servers to run (cluster mode), e.g. `--kinds etcd` for etcd alone.
    #[arg(long, value_delimiter = ',', default_value = "etcd,ironcd")]
    pub kinds: Vec<String>,
    /// Cluster mode: bound on the wait for all members to be healthy (one leader, every member answers a
    /// linearizable read), seconds; a cluster that is not healthy by then is reported as not formed and skipped.
    #[arg(long, default_value_t = 60.0)]
    pub cluster_timeout: f64,
    /// Cluster mode: `--heartbeat-interval` for every member, ms (etcd's default).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Cluster mode: `--election-timeout` for every member, ms (etcd's default).
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
}

/// Sizes of one run (quick or full).
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub reps: usize,
    pub max_run_s: f64,
    pub put1_total: u64,
    pub put1000_total: u64,
    pub range1_total: u64,
    pub range1000_total: u64,
    pub cas_total: u64,
    pub sweep_total: u64,
    pub watch_put_total: u64,
    pub lease_total: u64,
    pub watchers_streams: usize,
    pub watchers_per_stream: usize,
    pub keys: u64,
    pub big_range_keys: u64,
    pub load_max_s: f64,
    pub restart_reps: usize,
}

impl Plan {
    pub fn new(a: &SideArgs) -> Plan {
        let mut p = if a.quick {
            Plan {
                reps: 2,
                max_run_s: 8.0,
                put1_total: 600,
                put1000_total: 10_000,
                range1_total: 2_000,
                range1000_total: 15_000,
                cas_total: 2_000,
                sweep_total: 3_000,
                watch_put_total: 100,
                lease_total: 2_000,
                watchers_streams: 100,
                watchers_per_stream: 100,
                keys: 100_000,
                big_range_keys: 50_000,
                load_max_s: 60.0,
                restart_reps: 2,
            }
        } else {
            Plan {
                reps: 3,
                max_run_s: 20.0,
                put1_total: 2_000,
                put1000_total: 40_000,
                range1_total: 6_000,
                range1000_total: 50_000,
                cas_total: 6_000,
                sweep_total: 10_000,
                watch_put_total: 300,
                lease_total: 6_000,
                watchers_streams: 500,
                watchers_per_stream: 100,
                keys: 1_000_000,
                big_range_keys: 100_000,
                load_max_s: 240.0,
                restart_reps: 3,
            }
        };
        if let Some(r) = a.reps {
            p.reps = r.max(1);
            p.restart_reps = r.max(1);
        }
        if let Some(k) = a.keys {
            p.keys = k.max(1);
            p.big_range_keys = p.big_range_keys.min(p.keys);
        }
        p
    }
}

/// One figure of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub workload: String,
    pub metric: String,
    pub server: Kind,
    pub rep: usize,
    pub value: f64,
}

#[derive(Default, Serialize)]
pub struct Results {
    pub figures: Vec<Figure>,
    pub reports: Vec<(String, Kind, usize, Report)>,
    /// Per workload and server: why it has no figures ("not built yet", errors).
    pub notes: BTreeMap<String, String>,
    pub machine: BTreeMap<String, String>,
    pub plan: Option<Plan>,
    pub elapsed_s: f64,
    /// Members per server kind (1: single-member suites).
    #[serde(default)]
    pub members: usize,
}

impl Results {
    pub(crate) fn add(&mut self, workload: &str, metric: &str, server: Kind, rep: usize, value: f64) {
        self.figures.push(Figure { workload: workload.into(), metric: metric.into(), server, rep, value });
    }

    pub(crate) fn note(&mut self, workload: &str, server: Kind, text: &str) {
        eprintln!("  note: {workload} on {}: {text}", server.name());
        self.notes.insert(format!("{workload} / {}", server.name()), text.to_string());
    }

    /// Median over reps of one figure.
    pub fn median_of(&self, workload: &str, metric: &str, server: Kind) -> Option<f64> {
        let v: Vec<f64> = self
            .figures
            .iter()
            .filter(|f| f.workload == workload && f.metric == metric && f.server == server)
            .map(|f| f.value)
            .collect();
        median(&v)
    }

    fn count_of(&self, workload: &str, metric: &str, server: Kind) -> usize {
        self.figures.iter().filter(|f| f.workload == workload && f.metric == metric && f.server == server).count()
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn machine_info(work: &Path, etcd: &Path, ironcd: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    m.insert("cpu".into(), format!("{} × {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), cpu));
    let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| procs::status_kb(&s, "MemTotal:")).unwrap_or(0);
    m.insert("memory".into(), format!("{:.1} GiB", mem as f64 / 1048576.0));
    m.insert("kernel".into(), sh("uname", &["-sr"]));
    m.insert("data filesystem".into(), sh("findmnt", &["-n", "-o", "SOURCE,FSTYPE", "--target", &work.to_string_lossy()]));
    m.insert("etcd".into(), sh(&etcd.to_string_lossy(), &["--version"]).lines().next().unwrap_or("").to_string());
    let built = std::fs::metadata(ironcd)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| sh("date", &["-u", "-d", &format!("@{}", d.as_secs()), "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default();
    m.insert("ironcd binary".into(), format!("{} (built {built}; working tree at HEAD below, may include uncommitted work)", ironcd.display()));
    m.insert("ironcd commit".into(), sh("git", &["-C", &workspace_root().to_string_lossy(), "rev-parse", "--short", "HEAD"]));
    m.insert("load average at start".into(), std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string());
    m.insert("date".into(), sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    m
}

/// Order of the two servers in rep `r`: alternates, so neither always runs first.
pub fn order(r: usize) -> [Kind; 2] {
    if r % 2 == 0 {
        [Kind::Ironcd, Kind::Etcd]
    } else {
        [Kind::Etcd, Kind::Ironcd]
    }
}

async fn wait_serving(url: &str, key: &[u8], max: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    let port: u16 = url.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("bad url")?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut attempts = 0u64;
    while t.elapsed() < max {
        attempts += 1;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let ok = async {
            let mut c = Client::connect([url], Some(etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(500))))
                .await
                .ok()?;
            let r = c.get(key, None::<GetOptions>).await.ok()?;
            Some(r.header().is_some())
        };
        if let Ok(Some(true)) = tokio::time::timeout(Duration::from_secs(1), ok).await {
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("not serving after {:.0} s ({attempts} attempts)", max.as_secs_f64()))
}

/// Starts a server and waits until it serves a read; returns the time from spawn.
async fn start(s: &mut Server, key: &[u8]) -> Result<Duration, String> {
    s.start().map_err(|e| format!("spawn {}: {e}", s.bin.display()))?;
    let url = s.client_url();
    let r = wait_serving(&url, key, Duration::from_secs(120)).await;
    if r.is_ok() {
        // A server that failed to bind exits at once; make sure the one that
        // answered is ours, not another process on the same port.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(why) = s.exited() {
        return Err(why);
    }
    r
}

fn stop(s: &mut Server) {
    tokio::task::block_in_place(|| {
        s.stop(Duration::from_secs(20));
    });
}

pub(crate) struct Env {
    pub(crate) plan: Plan,
    pub(crate) ironcd_bin: PathBuf,
    pub(crate) etcd_bin: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub(crate) only: Vec<String>,
    pub(crate) progress: bool,
    pub(crate) ironcd_args: Vec<String>,
}

impl Env {
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }

    pub(crate) fn bin(&self, k: Kind) -> &Path {
        match k {
            Kind::Etcd => &self.etcd_bin,
            Kind::Ironcd => &self.ironcd_bin,
        }
    }

    pub(crate) fn extra(&self, k: Kind) -> Vec<String> {
        match k {
            Kind::Etcd => Vec::new(),
            Kind::Ironcd => self.ironcd_args.clone(),
        }
    }

    fn run_cfg(&self, total: u64) -> RunCfg {
        RunCfg { total, rate: 0.0, max: Duration::from_secs_f64(self.plan.max_run_s), progress: self.progress }
    }
}

/// A closed-loop workload of the latency suite.
#[derive(Clone)]
pub(crate) enum Load {
    Put { clients: usize, conns: usize, total: u64 },
    Range { clients: usize, conns: usize, total: u64, consistency: &'static str },
    Cas { clients: usize, conns: usize, total: u64, keys: usize },
    Lease { clients: usize, conns: usize, total: u64 },
    WatchLatency { streams: usize, per_stream: usize, puts: u64 },
}

pub(crate) const RANGE_KEY: &str = "perf/range-key";

/// Runs `load` against `endpoints` (connection `i` to endpoint `i % n`, or
/// all to the leader with `target_leader`, as `ironcd-bench --endpoints`), on
/// a runtime of its own with one thread, as `ironcd-bench` runs it
/// (`--client-threads=1`); its connections close when it ends.
pub(crate) async fn run_load(env: &Env, endpoints: &[String], target_leader: bool, load: &Load) -> Result<Report, String> {
    tokio::task::block_in_place(|| {
        let rt = bench::client_runtime(1).map_err(|e| format!("load runtime: {e}"))?;
        rt.block_on(run_load_here(env, endpoints, target_leader, load))
    })
}

async fn run_load_here(env: &Env, endpoints: &[String], target_leader: bool, load: &Load) -> Result<Report, String> {
    let conns_n = match load {
        Load::Put { conns, .. } | Load::Range { conns, .. } | Load::Cas { conns, .. } | Load::Lease { conns, .. } => *conns,
        Load::WatchLatency { streams, .. } => (*streams).clamp(1, 10),
    };
    let mut cfg = ConnCfg::new(&endpoints[0], conns_n);
    cfg.endpoints = endpoints.to_vec();
    cfg.target_leader = target_leader;
    let conns = bench::connect(&cfg).await.map_err(|e| e.to_string())?;
    let r = match load {
        Load::Put { clients, total, .. } => {
            let a = PutArgs {
                key_size: 8,
                val_size: 256,
                total: *total,
                sequential_keys: true,
                key_space_size: *total,
                rate: 0.0,
                compact_interval: Duration::ZERO,
                compact_index_delta: 0,
            };
            bench::put(&conns, *clients, &a, &env.run_cfg(*total)).await
        }
        Load::Range { clients, total, consistency, .. } => {
            let a = RangeArgs {
                key: RANGE_KEY.into(),
                end: None,
                consistency: consistency.to_string(),
                total: *total,
                rate: 0.0,
                limit: 0,
                count_only: false,
            };
            bench::range(&conns, *clients, &a, &env.run_cfg(*total)).await
        }
        Load::Cas { clients, total, keys, .. } => {
            let a = TxnCasArgs { keys: *keys, val_size: 64, total: *total, rate: 0.0 };
            bench::txn_cas(&conns, *clients, &a, &env.run_cfg(*total)).await
        }
        Load::Lease { clients, total, .. } => {
            let a = LeaseArgs { total: *total, stream: false };
            bench::lease_keepalive(&conns, *clients, &a, &env.run_cfg(*total)).await
        }
        Load::WatchLatency { streams, per_stream, puts } => {
            let a = WatchLatencyArgs {
                put_total: *puts,
                put_rate: 100.0,
                key_size: 32,
                val_size: 32,
                streams: *streams,
                watchers_per_stream: *per_stream,
                prevkv: false,
            };
            bench::watch_latency(&conns, &a, Duration::from_secs_f64(env.plan.max_run_s * 2.0), env.progress).await
        }
    };
    Ok(r)
}

/// CPU time of the server and of this process, before or after a run.
pub(crate) type Cpu = (Option<Duration>, Option<Duration>);

/// Records one run of one workload against one kind: its figures, CPU per
/// request (far less sensitive to a busy machine than throughput) and notes.
/// Returns whether the server answered `Unimplemented`.
pub(crate) fn record_run(
    res: &mut Results,
    name: &str,
    k: Kind,
    rep: usize,
    run: Result<Report, String>,
    cpu0: Cpu,
    cpu1: Cpu,
) -> bool {
    match run {
        Ok(r) if r.unimplemented => {
            res.note(name, k, "not built yet: the server answers Unimplemented");
            return true;
        }
        Ok(r) => {
            eprintln!(
                "         {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors{}",
                r.rps,
                r.percentile(50.0).unwrap_or(0.0) * 1e3,
                r.percentile(99.0).unwrap_or(0.0) * 1e3,
                r.errors,
                r.stopped_early.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
            );
            if r.ok == 0 {
                res.note(name, k, &format!("no successful request: {:?}", r.error_counts));
            } else if r.errors > 0 {
                res.note(name, k, &format!("{} errors: {:?}", r.errors, r.error_counts));
            }
            if r.ok > 0 {
                record_report(res, name, k, rep, &r);
                if let ((Some(a), Some(b)), (Some(c), Some(d))) = (cpu0, cpu1) {
                    let n = r.ok as f64;
                    res.add(name, "server CPU µs/req", k, rep, (c - a).as_secs_f64() * 1e6 / n);
                    res.add(name, "client CPU µs/req", k, rep, (d - b).as_secs_f64() * 1e6 / n);
                }
            }
        }
        Err(e) => res.note(name, k, &format!("could not run: {e}")),
    }
    false
}

pub(crate) fn record_report(res: &mut Results, name: &str, k: Kind, rep: usize, r: &Report) {
    // watch latency: "requests" are events received, paced by the put rate.
    res.add(name, if name.starts_with("watch latency") { "events/s" } else { "req/s" }, k, rep, r.rps);
    for (p, label) in [(50.0, "p50"), (90.0, "p90"), (99.0, "p99"), (99.9, "p99.9")] {
        if let Some(v) = r.percentile(p) {
            res.add(name, &format!("{label} s"), k, rep, v);
        }
    }
    res.add(name, "avg s", k, rep, r.average_s);
    res.add(name, "errors", k, rep, r.errors as f64);
    for (key, v) in &r.extra {
        res.add(name, key, k, rep, *v);
    }
    res.reports.push((name.to_string(), k, rep, r.clone()));
}

/// Two running servers (the latency suite); restarted fresh if one dies.
struct Pair {
    servers: Vec<Server>,
    generation: usize,
}

impl Pair {
    fn get(&mut self, k: Kind) -> &mut Server {
        self.servers.iter_mut().find(|s| s.kind == k).expect("server kind")
    }
}

async fn ensure_up(env: &Env, pair: &mut Pair, k: Kind, res: &mut Results) -> Result<String, String> {
    let died = pair.get(k).exited();
    if let Some(why) = died {
        res.note("server", k, &format!("{why}; restarted with a fresh data dir"));
        pair.generation += 1;
        let dir = env.run_dir.join(format!("suite{}", pair.generation));
        let mut s = Server::new(k, env.bin(k), &dir, env.extra(k));
        start(&mut s, RANGE_KEY.as_bytes()).await?;
        seed_range_key(&s.client_url()).await?;
        let old = std::mem::replace(pair.get(k), s);
        drop(old);
    }
    Ok(pair.get(k).client_url())
}

async fn seed_range_key(url: &str) -> Result<(), String> {
    let mut c = Client::connect([url], None).await.map_err(|e| e.to_string())?;
    c.put(RANGE_KEY, vec![b'v'; 256], None).await.map_err(|e| bench::error_text(&e))?;
    Ok(())
}

const PUT_1: &str = "put 1 client/1 conn";
/// A single-client put's p50 minus the disk floor measured just before it.
const OVER_FLOOR: &str = "p50 over fdatasync s";
const FLOOR: &str = "fdatasync p50 s";
/// Samples of the disk floor per single-client put run (~50 ms).
const FLOOR_SAMPLES: usize = 500;

/// Measures the disk floor (`floor::fdatasync_p50`) in the run's directory,
/// on the disk the servers write to; records it and returns it in seconds.
async fn disk_floor(env: &Env, res: &mut Results, name: &str, k: Kind, rep: usize) -> Option<f64> {
    let dir = env.run_dir.join("floor");
    let measured = tokio::task::spawn_blocking(move || crate::floor::fdatasync_p50(&dir, FLOOR_SAMPLES))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match measured {
        Ok(d) => {
            eprintln!("         disk floor: 4 KiB O_DIRECT write + fdatasync p50 {:.3} ms", d.as_secs_f64() * 1e3);
            res.add(name, FLOOR, k, rep, d.as_secs_f64());
            Some(d.as_secs_f64())
        }
        Err(e) => {
            res.note(name, k, &format!("disk floor not measured: {e}"));
            None
        }
    }
}

async fn latency_suite(env: &Env, res: &mut Results) -> Result<(), String> {
    let p = &env.plan;
    let mut named: Vec<(String, Load, usize)> = vec![
        (PUT_1.into(), Load::Put { clients: 1, conns: 1, total: p.put1_total }, p.reps),
        ("put 1000 clients/100 conns".into(), Load::Put { clients: 1000, conns: 100, total: p.put1000_total }, p.reps),
        ("range l 1/1".into(), Load::Range { clients: 1, conns: 1, total: p.range1_total, consistency: "l" }, p.reps),
        ("range s 1/1".into(), Load::Range { clients: 1, conns: 1, total: p.range1_total, consistency: "s" }, p.reps),
        ("range l 1000/100".into(), Load::Range { clients: 1000, conns: 100, total: p.range1000_total, consistency: "l" }, p.reps),
        ("range s 1000/100".into(), Load::Range { clients: 1000, conns: 100, total: p.range1000_total, consistency: "s" }, p.reps),
        ("txn CAS 32 clients on 4 keys".into(), Load::Cas { clients: 32, conns: 8, total: p.cas_total, keys: 4 }, p.reps),
        (
            "watch latency".into(),
            Load::WatchLatency { streams: 10, per_stream: 100, puts: p.watch_put_total },
            p.reps.min(2),
        ),
        ("lease keep-alive 100/10".into(), Load::Lease { clients: 100, conns: 10, total: p.lease_total }, p.reps.min(2)),
    ];
    // Throughput by clients: the 1 and 1000 points come from the workloads above.
    for c in [10usize, 100] {
        named.push((format!("sweep put {c} clients"), Load::Put { clients: c, conns: c.min(100), total: p.sweep_total }, 1));
        named.push((
            format!("sweep range s {c} clients"),
            Load::Range { clients: c, conns: c.min(100), total: p.sweep_total * 3, consistency: "s" },
            1,
        ));
    }
    named.retain(|(n, _, _)| env.wants(n) || (n.starts_with("sweep") && env.wants("sweep")));
    let wants_watch_mem = env.wants("watchers memory");
    if named.is_empty() {
        return if wants_watch_mem { watchers_memory(env, res).await } else { Ok(()) };
    }

    let dir = env.run_dir.join("suite0");
    let mut pair = Pair { servers: Vec::new(), generation: 0 };
    for k in [Kind::Etcd, Kind::Ironcd] {
        let mut s = Server::new(k, env.bin(k), &dir, env.extra(k));
        let t = start(&mut s, RANGE_KEY.as_bytes()).await.map_err(|e| format!("{}: {e}", k.name()))?;
        eprintln!("{} up on {} in {:.3} s (pid {})", k.name(), s.client_url(), t.as_secs_f64(), s.pid().unwrap_or(0));
        seed_range_key(&s.client_url()).await?;
        pair.servers.push(s);
    }

    let mut unimpl: BTreeMap<(String, Kind), bool> = BTreeMap::new();
    for (name, load, reps) in &named {
        for rep in 0..*reps {
            for k in order(rep) {
                if unimpl.contains_key(&(name.clone(), k)) {
                    continue;
                }
                let url = ensure_up(env, &mut pair, k, res).await?;
                eprintln!("[{:>5.0} s] {name} — {} (rep {})", res_elapsed(), k.name(), rep + 1);
                // The disk's floor right before a single-client put run,
                // for the "p50 within 0.1 ms of one fdatasync" goal.
                let floor = match name.as_str() {
                    PUT_1 => disk_floor(env, res, name, k, rep).await,
                    _ => None,
                };
                let pid = pair.get(k).pid().unwrap_or(0);
                let cpu0 = (procs::cpu_time(pid), procs::cpu_time(std::process::id()));
                let run = run_load(env, std::slice::from_ref(&url), false, load).await;
                let cpu1 = (procs::cpu_time(pid), procs::cpu_time(std::process::id()));
                if let (Some(f), Ok(r)) = (floor, &run) {
                    if let Some(p50) = r.percentile(50.0).filter(|_| r.ok > 0) {
                        res.add(name, OVER_FLOOR, k, rep, p50 - f);
                    }
                }
                if record_run(res, name, k, rep, run, cpu0, cpu1) {
                    unimpl.insert((name.clone(), k), true);
                }
            }
        }
    }

    for s in pair.servers.iter_mut() {
        stop(s);
    }
    if wants_watch_mem {
        watchers_memory(env, res).await?;
    }
    Ok(())
}

/// RSS held by many idle watchers: fresh servers (nothing else in their
/// heap), RSS before, open every watcher (distinct keys), settle, RSS after.
async fn watchers_memory(env: &Env, res: &mut Results) -> Result<(), String> {
    let p = &env.plan;
    let name = "watchers memory";
    let n = p.watchers_streams * p.watchers_per_stream;
    let dir = env.run_dir.join("watchers");
    for k in order(0) {
        let mut s = Server::new(k, env.bin(k), &dir, env.extra(k));
        start(&mut s, b"x").await.map_err(|e| format!("{}: {e}", k.name()))?;
        let (url, pid) = (s.client_url(), s.pid().unwrap_or(0));
        eprintln!("[{:>5.0} s] {name}: {n} watchers on {} streams — {}", res_elapsed(), p.watchers_streams, k.name());
        let conns = bench::connect(&ConnCfg::new(&url, p.watchers_streams.div_ceil(50))).await.map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = procs::mem_of(pid).map(|m| m.0).unwrap_or(0);
        let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("watched/{i:07}").into_bytes()).collect();
        match bench::open_watchers(&conns, p.watchers_streams, p.watchers_per_stream, &keys, false, Duration::from_secs(60), env.progress).await {
            Ok(w) if w.created == n => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let after = procs::mem_of(pid).map(|m| m.0).unwrap_or(0);
                res.add(name, "RSS idle MiB", k, 0, before as f64 / 1048576.0);
                res.add(name, &format!("RSS increase for {n} watchers MiB"), k, 0, (after as f64 - before as f64) / 1048576.0);
                res.add(name, "bytes per watcher", k, 0, (after as f64 - before as f64) / n as f64);
                res.add(name, "create all s", k, 0, w.wall.as_secs_f64());
                drop(w);
            }
            Ok(w) => res.note(name, k, &format!("only {} of {n} watchers created", w.created)),
            Err(e) if bench::is_unimplemented(&e) => res.note(name, k, "not built yet: the server answers Unimplemented"),
            Err(e) => res.note(name, k, &format!("could not open watchers: {}", bench::error_text(&e))),
        }
        drop(conns);
        stop(&mut s);
    }
    Ok(())
}

static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
pub(crate) fn res_elapsed() -> f64 {
    T0.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn load_key(i: u64) -> Vec<u8> {
    format!("k{i:063}").into_bytes() // 64 bytes, sorted like i
}

/// Loads `n` keys (64-byte keys, 256-byte values) with 256 clients on 16 connections.
async fn load_keys(env: &Env, url: &str, n: u64) -> Result<(u64, Duration), String> {
    let conns = bench::connect(&ConnCfg::new(url, 16)).await.map_err(|e| e.to_string())?;
    let base = Arc::new(bench::rand_bytes(256, 11));
    let run = RunCfg { total: n, rate: 0.0, max: Duration::from_secs_f64(env.plan.load_max_s), progress: env.progress };
    let out = bench::run_closed(bench::contexts(&conns, 256), 1, &run, move |c, i| {
        let base = base.clone();
        Box::pin(async move {
            let mut v = base.as_ref().clone();
            v[..8].copy_from_slice(&i.to_be_bytes());
            c.kv.put(load_key(i), v, None).await.map(|_| 0)
        })
    })
    .await;
    let r = out.overall("load");
    if r.errors > 0 {
        eprintln!("  load errors: {:?}", r.error_counts);
    }
    Ok((r.ok, out.wall))
}

/// 10 clients read the same large range at once; returns (peak RSS during, wall).
async fn big_range(url: &str, pid: u32, n_keys: u64) -> Result<(u64, u64, Duration), String> {
    let conns = bench::connect(&ConnCfg::new(url, 10)).await.map_err(|e| e.to_string())?;
    let before = procs::mem_of(pid).map(|m| m.0).unwrap_or(0);
    if !procs::reset_peak(pid) {
        return Err("cannot reset VmHWM (/proc/<pid>/clear_refs)".into());
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in &conns {
        let mut kv = c.kv_client().max_decoding_message_size(2 << 30);
        tasks.push(tokio::spawn(async move {
            let o = GetOptions::new().with_range(load_key(n_keys));
            kv.get(load_key(0), Some(o)).await.map(|r| r.kvs().len())
        }));
    }
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Ok(got))) if got as u64 == n_keys => {}
            Ok(Ok(Ok(got))) => return Err(format!("range returned {got} keys, expected {n_keys}")),
            Ok(Ok(Err(e))) => return Err(bench::error_text(&e)),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("large range took over 120 s".into()),
        }
    }
    let wall = t.elapsed();
    let peak = procs::mem_of(pid).map(|m| m.1).unwrap_or(0);
    Ok((before, peak, wall))
}

async fn data_suite(env: &Env, res: &mut Results) -> Result<(), String> {
    let p = &env.plan;
    let n = p.keys;
    let (w_mem, w_restart, w_range) = (
        format!("memory after loading {} keys", fmt_count(n)),
        format!("restart with {} keys", fmt_count(n)),
        format!("10 clients read {} keys at once", fmt_count(p.big_range_keys)),
    );
    if !(env.wants(&w_mem) || env.wants(&w_restart) || env.wants(&w_range) || env.wants("memory") || env.wants("restart")) {
        return Ok(());
    }
    let dir = env.run_dir.join("data");
    let last = load_key(n - 1);
    let mut servers: BTreeMap<Kind, Server> = BTreeMap::new();
    let mut loaded: BTreeMap<Kind, u64> = BTreeMap::new();
    for k in order(0) {
        let mut s = Server::new(k, env.bin(k), &dir, env.extra(k));
        start(&mut s, b"x").await.map_err(|e| format!("{}: {e}", k.name()))?;
        let pid = s.pid().unwrap_or(0);
        eprintln!("[{:>5.0} s] loading {} keys into {}", res_elapsed(), fmt_count(n), k.name());
        let (ok, wall) = load_keys(env, &s.client_url(), n).await?;
        loaded.insert(k, ok);
        res.add(&w_mem, "load puts/s (256 clients)", k, 0, ok as f64 / wall.as_secs_f64());
        if ok < n {
            res.note(&w_mem, k, &format!("loaded only {ok} of {n} keys in {:.0} s (time bound)", wall.as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        if let Some((rss, hwm)) = procs::mem_of(pid) {
            res.add(&w_mem, "RSS MiB", k, 0, rss as f64 / 1048576.0);
            res.add(&w_mem, "peak RSS during load MiB", k, 0, hwm as f64 / 1048576.0);
        }
        if let Some((anon, file)) = procs::rss_split(pid) {
            res.add(&w_mem, "RSS anonymous (heap) MiB", k, 0, anon as f64 / 1048576.0);
            res.add(&w_mem, "RSS file-backed (mapped data) MiB", k, 0, file as f64 / 1048576.0);
        }
        res.add(&w_mem, "data dir MiB", k, 0, procs::dir_size(&s.data_dir) as f64 / 1048576.0);
        if env.wants(&w_range) || env.wants("memory") {
            let m = p.big_range_keys.min(ok);
            eprintln!("[{:>5.0} s] {w_range} — {}", res_elapsed(), k.name());
            match big_range(&s.client_url(), pid, m).await {
                Ok((before, peak, wall)) => {
                    res.add(&w_range, "peak RSS MiB", k, 0, peak as f64 / 1048576.0);
                    res.add(&w_range, "peak over idle MiB", k, 0, (peak as f64 - before as f64) / 1048576.0);
                    res.add(&w_range, "all 10 done s", k, 0, wall.as_secs_f64());
                }
                Err(e) => res.note(&w_range, k, &e),
            }
        }
        stop(&mut s);
        servers.insert(k, s);
    }
    // Restart: time from spawn to the first served (linearizable) read of a loaded key.
    for rep in 0..p.restart_reps {
        for k in order(rep + 1) {
            let s = servers.get_mut(&k).expect("server");
            let key = if loaded.get(&k).copied().unwrap_or(0) >= n { last.clone() } else { load_key(0) };
            eprintln!("[{:>5.0} s] {w_restart} — {} (rep {})", res_elapsed(), k.name(), rep + 1);
            // A fresh client port each time: the previous instance's closed client
            // connections sit in TIME_WAIT on its port for up to 60 s, and a server
            // that binds without SO_REUSEADDR (ironcd at the time of writing) then
            // cannot listen there.
            s.client_port = procs::free_port();
            match start(s, &key).await {
                Ok(t) => {
                    res.add(&w_restart, "first read s", k, rep, t.as_secs_f64());
                    if let Some((rss, _)) = s.mem() {
                        res.add(&w_restart, "RSS after first read MiB", k, rep, rss as f64 / 1048576.0);
                    }
                    if let Some((anon, _)) = s.pid().and_then(procs::rss_split) {
                        res.add(&w_restart, "RSS anonymous after first read MiB", k, rep, anon as f64 / 1048576.0);
                    }
                }
                Err(e) => res.note(&w_restart, k, &e),
            }
            stop(s);
        }
    }
    Ok(())
}

fn fmt_count(n: u64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Is a higher value better for this metric?
fn higher_is_better(metric: &str) -> bool {
    metric.contains("/s") || metric.contains("per_s")
}

/// The goal for a (workload, metric), as (text, predicate on ratio ironcd/etcd).
/// A goal's text and its test.
type Goal = (&'static str, fn(f64) -> bool);

fn goal(members: usize, workload: &str, metric: &str) -> Option<Goal> {
    if members > 1 {
        // The cluster goals of the clustering issue (#6): 3-member clusters side by side.
        return match (workload, metric) {
            (crate::cluster::PUT_1000, "req/s") => Some(("≥ 2×", |r| r >= 2.0)),
            (crate::cluster::PUT_1000, "p99 s") => Some(("< 1× (lower p99)", |r| r < 1.0)),
            (crate::cluster::RANGE_L, "req/s") => Some(("≥ 2×", |r| r >= 2.0)),
            _ => None,
        };
    }
    match (workload, metric) {
        ("put 1000 clients/100 conns", "req/s") => Some(("≥ 3×", |r| r >= 3.0)),
        ("put 1000 clients/100 conns", "p99 s") => Some(("< 1× (lower p99)", |r| r < 1.0)),
        ("put 1 client/1 conn", "req/s") => Some(("≥ 1.3×", |r| r >= 1.3)),
        (w, "req/s") if w.starts_with("range ") => Some(("≥ 2×", |r| r >= 2.0)),
        (w, "RSS MiB") if w.starts_with("memory after loading") => Some(("≤ 0.5× (at 1M keys)", |r| r <= 0.5)),
        (w, "first read s") if w.starts_with("restart") => Some(("≤ 0.1×", |r| r <= 0.1)),
        _ => None,
    }
}

/// Goals on ironcd's own figure rather than on the ratio to etcd.
fn abs_goal(members: usize, workload: &str, metric: &str) -> Option<Goal> {
    match (members, workload, metric) {
        (0 | 1, PUT_1, OVER_FLOOR) => Some(("ironcd ≤ 0.1 ms", |v| v <= 0.0001)),
        _ => None,
    }
}

fn fmt_value(metric: &str, v: f64) -> String {
    if metric.contains("µs/req") {
        return format!("{v:.0} µs");
    }
    if metric.ends_with(" s") {
        if v < 1.0 {
            format!("{:.3} ms", v * 1e3)
        } else {
            format!("{v:.3} s")
        }
    } else if metric.contains("share") {
        format!("{:.1} %", v * 100.0)
    } else if metric.contains("MiB") {
        format!("{v:.1}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Metrics shown in the table, per workload kind (the rest are in results.json).
fn shown(metric: &str) -> bool {
    !matches!(metric, "errors" | "avg s" | "p90 s" | "p99.9 s" | "commit p99 s" | "watchers" | "watch create p99 s")
}

pub fn markdown(res: &Results, quick: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let plan = res.plan.as_ref().expect("plan");
    if res.members > 1 {
        let n = res.members;
        let _ = writeln!(s, "# {n}-member ironcd cluster vs {n}-member etcd cluster, side by side ({})\n", if quick { "--quick" } else { "full run" });
        let _ = writeln!(
            s,
            "Same machine, loopback: {n} members of each, started with etcd's cluster flags (`--initial-cluster` with \
             all {n}, `--initial-cluster-state new`, `--initial-cluster-token`, same `--heartbeat-interval` and \
             `--election-timeout`), every member with its default durability (fsync on every commit) and its own data \
             dir on the same disk. Both clusters stay up for the whole run (the idle one only exchanges heartbeats). \
             Loads marked *all endpoints* spread their connections over the members (connection i to member i mod {n}, \
             as `ironcd-bench --endpoints`); *leader* sends everything to the leader (etcd benchmark's \
             `--target-leader`). The load generator (`ironcd-bench`'s engine) runs on the same cores as the members. \
             Server CPU per request is summed over the {n} members. Figures are **medians of {} \
             alternations** (ironcd first on even reps, etcd first on odd). Ratio = ironcd / etcd.\n",
            plan.reps
        );
    } else {
        let _ = writeln!(s, "# ironcd vs etcd, side by side ({})\n", if quick { "--quick" } else { "full run" });
        let _ = writeln!(
            s,
            "Same machine, loopback, both servers with default durability (fsync on every commit), data dirs on the same \
             disk under the target dir. The load generator (`ironcd-bench`'s engine: etcd-client over gRPC, HTTP/2 via the h2 \
             crate, one tokio thread) runs on the same 2 cores as the server. Figures are **medians of {} alternations** (ironcd first on even reps, etcd \
             first on odd), except where the reps column says 1. Ratio = ironcd / etcd.\n",
            plan.reps
        );
    }
    let _ = writeln!(
        s,
        "**The machine is shared and noisy**: other engineers compile and test on it during runs, so single figures can \
         move by tens of percent between runs; ratios within a run (alternated) are more stable than absolute figures.\n"
    );
    let _ = writeln!(s, "| machine | |\n|---|---|");
    for (k, v) in &res.machine {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(s, "| run time | {:.0} s |\n", res.elapsed_s);
    let _ = writeln!(s, "| workload | metric | etcd | ironcd | ironcd/etcd | goal | verdict | reps |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|---|---:|");
    let mut seen: Vec<(String, String)> = Vec::new();
    for f in &res.figures {
        let key = (f.workload.clone(), f.metric.clone());
        if !seen.contains(&key) {
            seen.push(key);
        }
    }
    for (w, m) in &seen {
        if !shown(m) {
            continue;
        }
        let e = res.median_of(w, m, Kind::Etcd);
        let i = res.median_of(w, m, Kind::Ironcd);
        let ratio = match (e, i) {
            (Some(e), Some(i)) if e != 0.0 => Some(i / e),
            _ => None,
        };
        let (gtext, verdict) = match (abs_goal(res.members, w, m), i) {
            (Some((g, pred)), Some(v)) => (g.to_string(), if pred(v) { "**met**".to_string() } else { "**short**".to_string() }),
            (Some((g, _)), None) => (g.to_string(), "no figure".into()),
            (None, _) => match (goal(res.members, w, m), ratio) {
            (Some((g, pred)), Some(r)) => {
                let ok = pred(r);
                let caveat = if w.starts_with("memory after loading") && !w.contains("1M") { " (not at 1M keys)" } else { "" };
                (g.to_string(), format!("{}{caveat}", if ok { "**met**" } else { "**short**" }))
            }
            (Some((g, _)), None) => (g.to_string(), "no figure".into()),
            _ => (String::new(), String::new()),
            },
        };
        let dir = if higher_is_better(m) { "↑" } else { "↓" };
        let (ne, ni) = (res.count_of(w, m, Kind::Etcd), res.count_of(w, m, Kind::Ironcd));
        let reps = if ne == ni { ne.to_string() } else { format!("{ne} / {ni}") };
        let _ = writeln!(
            s,
            "| {w} | {m} {dir} | {} | {} | {} | {gtext} | {verdict} | {reps} |",
            e.map(|v| fmt_value(m, v)).unwrap_or_else(|| "—".into()),
            i.map(|v| fmt_value(m, v)).unwrap_or_else(|| "—".into()),
            ratio.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "—".into()),
        );
    }
    if !res.notes.is_empty() {
        let _ = writeln!(s, "\n## Notes (not built yet, errors, time bounds)\n");
        for (k, v) in &res.notes {
            let _ = writeln!(s, "- **{k}**: {v}");
        }
    }
    if res.members > 1 {
        let _ = writeln!(
            s,
            "\n## Charts\n\n![p50 latency](latency-p50.svg)\n![p99 latency](latency-p99.svg)\n\
             ![put percentiles, 1000 clients](percentiles-put-1000.svg)\n"
        );
    } else {
        let _ = writeln!(
            s,
            "\n## Charts\n\n![p50 latency](latency-p50.svg)\n![p99 latency](latency-p99.svg)\n\
             ![put percentiles, 1000 clients](percentiles-put-1000.svg)\n![put percentiles, 1 client](percentiles-put-1.svg)\n\
             ![put throughput by clients](throughput-put.svg)\n![serializable range throughput by clients](throughput-range.svg)\n\
             ![memory](memory.svg)\n"
        );
    }
    let _ = writeln!(
        s,
        "Workloads and how figures are computed: [docs/perf.md](../../../docs/perf.md). Raw per-rep figures and full \
         reports: `results.json`. ↑ = higher is better, ↓ = lower is better."
    );
    s
}

fn chart_files(res: &Results) -> Vec<(String, String)> {
    if res.members > 1 {
        return crate::cluster::chart_files(res);
    }
    let mut out = Vec::new();
    let lat_workloads = [
        "put 1 client/1 conn",
        "put 1000 clients/100 conns",
        "range l 1/1",
        "range s 1/1",
        "range l 1000/100",
        "range s 1000/100",
        "txn CAS 32 clients on 4 keys",
        "watch latency",
        "lease keep-alive 100/10",
    ];
    let series_for = |w: &[&str], m: &str| -> Vec<Series> {
        [(Kind::Etcd, ETCD_COLOR), (Kind::Ironcd, IRONCD_COLOR)]
            .iter()
            .map(|(k, c)| Series { name: k.name().into(), color: c, values: w.iter().map(|w| res.median_of(w, m, *k)).collect() })
            .collect()
    };
    let cats: Vec<String> = lat_workloads.iter().map(|w| short(w)).collect();
    for (m, f) in [("p50 s", "latency-p50.svg"), ("p99 s", "latency-p99.svg")] {
        let title = format!("{} latency by workload (median of reps; lower is better)", &m[..3]);
        out.push((f.to_string(), svg::bar_chart(&title, "seconds (log)", &cats, &series_for(&lat_workloads, m), true)));
    }
    for (w, f) in [("put 1000 clients/100 conns", "percentiles-put-1000.svg"), ("put 1 client/1 conn", "percentiles-put-1.svg")] {
        let ms = ["p50 s", "p90 s", "p99 s", "p99.9 s"];
        let series: Vec<Series> = [(Kind::Etcd, ETCD_COLOR), (Kind::Ironcd, IRONCD_COLOR)]
            .iter()
            .map(|(k, c)| Series { name: k.name().into(), color: c, values: ms.iter().map(|m| res.median_of(w, m, *k)).collect() })
            .collect();
        let cats: Vec<String> = ms.iter().map(|m| m.trim_end_matches(" s").to_string()).collect();
        out.push((f.to_string(), svg::bar_chart(&format!("{w}: latency percentiles"), "seconds (log)", &cats, &series, true)));
    }
    let xs = [1.0, 10.0, 100.0, 1000.0];
    for (f, title, names) in [
        (
            "throughput-put.svg",
            "put throughput by clients (conns = min(clients, 100))",
            ["put 1 client/1 conn", "sweep put 10 clients", "sweep put 100 clients", "put 1000 clients/100 conns"],
        ),
        (
            "throughput-range.svg",
            "serializable range throughput by clients",
            ["range s 1/1", "sweep range s 10 clients", "sweep range s 100 clients", "range s 1000/100"],
        ),
    ] {
        let series = series_for(&names, "req/s");
        out.push((f.to_string(), svg::line_chart(title, "clients (log)", "requests/s", &xs, &series, true)));
    }
    let mem_w: Vec<(String, String)> = res
        .figures
        .iter()
        .filter(|f| {
            (f.workload.starts_with("memory after") && f.metric == "RSS MiB")
                || (f.workload.starts_with("10 clients read") && f.metric == "peak RSS MiB")
                || (f.workload.starts_with("restart") && f.metric == "RSS after first read MiB")
                || (f.workload == "watchers memory" && f.metric.starts_with("RSS increase"))
        })
        .map(|f| (f.workload.clone(), f.metric.clone()))
        .fold(Vec::new(), |mut v, x| {
            if !v.contains(&x) {
                v.push(x);
            }
            v
        });
    let cats: Vec<String> = mem_w.iter().map(|(w, _)| short(w)).collect();
    let series: Vec<Series> = [(Kind::Etcd, ETCD_COLOR), (Kind::Ironcd, IRONCD_COLOR)]
        .iter()
        .map(|(k, c)| Series { name: k.name().into(), color: c, values: mem_w.iter().map(|(w, m)| res.median_of(w, m, *k)).collect() })
        .collect();
    out.push(("memory.svg".into(), svg::bar_chart("memory (MiB; lower is better)", "MiB", &cats, &series, false)));
    out
}

fn short(w: &str) -> String {
    w.replace(" clients/", "/")
        .replace(" client/", "/")
        .replace(" conns", "")
        .replace(" conn", "")
        .replace("txn CAS 32 clients on 4 keys", "txn CAS")
        .replace("lease keep-alive 100/10", "lease ka")
        .replace("memory after loading", "loaded")
        .replace("restart with", "restarted,")
        .replace("watchers memory", "watchers (increase)")
        .replace("10 clients read", "read")
        .replace(" at once", " (peak)")
}

/// The whole run. Returns the report directory.
pub async fn run(a: SideArgs) -> Result<PathBuf, String> {
    let t0 = Instant::now();
    T0.get_or_init(Instant::now);
    procs::install_signal_handler();
    let target = target_dir();
    let kinds = crate::cluster::parse_kinds(&a)?;
    let wants_ironcd = kinds.contains(&Kind::Ironcd);
    let ironcd_bin = match &a.ironcd_bin {
        Some(b) => b.clone(),
        None => {
            if !a.no_build && wants_ironcd {
                eprintln!("building ironcd: cargo build --release -p ironcd (target dir {})", target.display());
                let st = tokio::task::block_in_place(|| {
                    std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                        .current_dir(workspace_root())
                        .env("CARGO_TARGET_DIR", &target)
                        .args(["build", "--release", "-p", "ironcd"])
                        .status()
                })
                .map_err(|e| format!("cargo: {e}"))?;
                if !st.success() {
                    return Err("cargo build --release -p ironcd failed".into());
                }
            }
            target.join("release").join("ironcd")
        }
    };
    if wants_ironcd && !ironcd_bin.exists() {
        return Err(format!("no ironcd binary at {} (build it or pass --ironcd-bin)", ironcd_bin.display()));
    }
    let work = a.work_dir.clone().unwrap_or_else(|| target.join("perf-sideby"));
    let run_dir = work.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let fs = sh("findmnt", &["-n", "-o", "FSTYPE", "--target", &run_dir.to_string_lossy()]);
    if fs == "tmpfs" {
        eprintln!("warning: {} is on tmpfs: fsync costs nothing there, figures are not representative", run_dir.display());
    }
    let default_out = match (a.members > 1, a.quick) {
        (false, q) => (if q { "quick" } else { "full" }).to_string(),
        (true, q) => format!("cluster{}-{}", a.members, if q { "quick" } else { "full" }),
    };
    let out = a.out.clone().unwrap_or_else(|| workspace_root().join("perf/results").join(default_out));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;

    let env = Env {
        plan: Plan::new(&a),
        ironcd_bin: ironcd_bin.clone(),
        etcd_bin: a.etcd_bin.clone(),
        run_dir: run_dir.clone(),
        only: a.only.clone(),
        progress: a.progress,
        ironcd_args: a.ironcd_arg.clone(),
    };
    let mut res = Results {
        plan: Some(env.plan.clone()),
        machine: machine_info(&run_dir, &a.etcd_bin, &ironcd_bin),
        members: a.members.max(1),
        ..Default::default()
    };
    eprintln!("ironcd: {}\netcd: {}\ndata: {}\nreport: {}", ironcd_bin.display(), a.etcd_bin.display(), run_dir.display(), out.display());

    if a.members > 1 {
        let outcome = crate::cluster::suite(&env, &a, &kinds, &mut res).await;
        procs::stop_all_started();
        res.machine.insert("load average at end".into(), std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string());
        res.elapsed_s = t0.elapsed().as_secs_f64();
        let md = markdown(&res, a.quick);
        let ran_any = outcome.as_ref().map(|failed| failed.len() < kinds.len()).unwrap_or(false);
        if ran_any {
            std::fs::write(out.join("report.md"), &md).map_err(|e| e.to_string())?;
            std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&res).expect("json")).map_err(|e| e.to_string())?;
            for (f, body) in chart_files(&res) {
                std::fs::write(out.join(f), body).map_err(|e| e.to_string())?;
            }
            println!("{md}");
        }
        let failed_any = !matches!(&outcome, Ok(f) if f.is_empty());
        if !a.keep && failed_any {
            // The error messages point at the members' logs: keep those, drop the data dirs.
            let cdir = run_dir.join("cluster");
            for e in std::fs::read_dir(&cdir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            eprintln!("kept the members' logs in {} (data dirs removed)", cdir.display());
        } else if !a.keep {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        return match outcome {
            Err(e) => Err(e),
            Ok(failed) if failed.is_empty() => Ok(out),
            Ok(failed) if ran_any => Err(format!(
                "report written to {} without {}: {} (`--kinds {}` runs only what works)",
                out.display(),
                failed.iter().map(|(k, _)| k.name()).collect::<Vec<_>>().join(", "),
                failed.iter().map(|(k, why)| format!("{}: {why}", k.name())).collect::<Vec<_>>().join("; "),
                kinds.iter().filter(|k| !failed.iter().any(|(f, _)| f == *k)).map(|k| k.name()).collect::<Vec<_>>().join(","),
            )),
            Ok(failed) => Err(format!(
                "no cluster formed, no report written: {}",
                failed.iter().map(|(k, why)| format!("{}: {why}", k.name())).collect::<Vec<_>>().join("; ")
            )),
        };
    }
    if kinds.len() != 2 {
        return Err("--kinds applies to cluster mode (--members N with N > 1); the single-member suites run both".into());
    }

    let r1 = latency_suite(&env, &mut res).await;
    if let Err(e) = &r1 {
        res.notes.insert("latency suite".into(), format!("aborted: {e}"));
        eprintln!("latency suite aborted: {e}");
    }
    let r2 = data_suite(&env, &mut res).await;
    if let Err(e) = &r2 {
        res.notes.insert("data suite".into(), format!("aborted: {e}"));
        eprintln!("data suite aborted: {e}");
    }
    procs::stop_all_started();
    res.machine.insert(
        "load average at end".into(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
    );
    res.elapsed_s = t0.elapsed().as_secs_f64();

    let md = markdown(&res, a.quick);
    std::fs::write(out.join("report.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&res).expect("json")).map_err(|e| e.to_string())?;
    for (f, body) in chart_files(&res) {
        std::fs::write(out.join(f), body).map_err(|e| e.to_string())?;
    }
    if !a.keep {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    println!("{md}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternation_order() {
        assert_eq!(order(0), [Kind::Ironcd, Kind::Etcd]);
        assert_eq!(order(1), [Kind::Etcd, Kind::Ironcd]);
    }

    #[test]
    fn load_keys_are_64_bytes_and_sorted() {
        assert_eq!(load_key(0).len(), 64);
        assert_eq!(load_key(999_999).len(), 64);
        assert!(load_key(9) < load_key(10));
    }

    #[test]
    fn markdown_table_has_medians_ratios_and_verdicts() {
        let mut r = Results { plan: Some(Plan::new(&SideArgs::parse_from(["x", "--quick"]))), ..Default::default() };
        for (rep, (e, i)) in [(1000.0, 2500.0), (1200.0, 4000.0), (800.0, 3000.0)].iter().enumerate() {
            r.add("put 1000 clients/100 conns", "req/s", Kind::Etcd, rep, *e);
            r.add("put 1000 clients/100 conns", "req/s", Kind::Ironcd, rep, *i);
        }
        r.add("restart with 100k keys", "first read s", Kind::Etcd, 0, 2.0);
        r.add("restart with 100k keys", "first read s", Kind::Ironcd, 0, 0.1);
        // Absolute goal: ironcd's own median against 0.1 ms, whatever etcd's.
        for (rep, (e, i)) in [(0.00015, 0.00009), (0.00020, 0.00012), (0.00018, 0.00008)].iter().enumerate() {
            r.add(PUT_1, OVER_FLOOR, Kind::Etcd, rep, *e);
            r.add(PUT_1, OVER_FLOOR, Kind::Ironcd, rep, *i);
        }
        r.notes.insert("watch latency / ironcd".into(), "not built yet: the server answers Unimplemented".into());
        let md = markdown(&r, true);
        assert!(md.contains("| put 1 client/1 conn | p50 over fdatasync s ↓ | 0.180 ms | 0.090 ms | 0.50× | ironcd ≤ 0.1 ms | **met** | 3 |"), "{md}");
        // medians 1000 vs 3000 -> 3.00x, goal met
        assert!(md.contains("| put 1000 clients/100 conns | req/s ↑ | 1000 | 3000 | 3.00× | ≥ 3× | **met** | 3 |"), "{md}");
        assert!(md.contains("| restart with 100k keys | first read s ↓ | 2.000 s | 100.000 ms | 0.05× | ≤ 0.1× | **met** | 1 |"), "{md}");
        assert!(md.contains("not built yet"));
        assert!(md.contains("shared and noisy"));
        let charts = chart_files(&r);
        assert!(charts.iter().any(|(f, _)| f == "throughput-put.svg"));
    }
}

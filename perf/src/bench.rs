//! The load engine: connections, a closed-loop runner with etcd benchmark's
//! client/connection model, and the workloads (put, range, txn-put,
//! txn-mixed, txn-cas, watch, watch-latency, lease-keepalive).
//!
//! Model (as etcd's `tools/benchmark`): `--conns` gRPC connections are
//! opened; `--clients` concurrent clients each use connection `i % conns`;
//! every client sends one request at a time (closed loop) until `--total`
//! requests were issued, optionally paced by `--rate` (requests/s over all
//! clients). Every run also stops at `--max-seconds`.

use crate::cli::*;
use crate::report::{Report, Stats};
use crate::transport::{self, Transport};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, PutOptions, Txn, TxnOp, WatchOptions,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Normalizes an endpoint as etcd's tools accept it (`host:port` or a URL).
pub fn endpoint_url(e: &str) -> String {
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

/// Go-style text of a client error, so messages read like etcd's tools'.
pub fn error_text(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("rpc error: code = {:?} desc = {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

pub fn is_unimplemented(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unimplemented)
}

/// Options for opening connections.
#[derive(Clone, Debug)]
pub struct ConnCfg {
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub dial_timeout: Duration,
    pub target_leader: bool,
    pub user: Option<String>,
    pub transport: Transport,
}

impl ConnCfg {
    pub fn new(endpoint: &str, conns: usize) -> ConnCfg {
        ConnCfg {
            endpoints: vec![endpoint.to_string()],
            conns: conns.max(1),
            dial_timeout: Duration::from_secs(2),
            target_leader: false,
            user: None,
            transport: Transport::default(),
        }
    }
}

fn connect_options(cfg: &ConnCfg) -> ConnectOptions {
    let mut o = ConnectOptions::new().with_connect_timeout(cfg.dial_timeout);
    if let Some(u) = &cfg.user {
        let (name, pw) = u.split_once(':').unwrap_or((u.as_str(), ""));
        o = o.with_user(name, pw);
    }
    o
}

/// The endpoint whose member is the leader (etcd's `--target-leader`).
pub async fn find_leader(cfg: &ConnCfg) -> BoxResult<String> {
    for e in &cfg.endpoints {
        let url = endpoint_url(e);
        let Ok(mut c) = Client::connect([url.as_str()], Some(connect_options(cfg))).await else { continue };
        let Ok(Ok(st)) = tokio::time::timeout(cfg.dial_timeout, c.status()).await else { continue };
        if st.header().map(|h| h.member_id()) == Some(st.leader()) {
            return Ok(url);
        }
    }
    Err("no endpoint reports itself as leader".into())
}

/// The runtime the load runs on: one thread (clients, connections and the
/// I/O driver on it, no cross-thread wake-ups) unless `threads` > 1.
pub fn client_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

/// Opens `conns` connections (one HTTP/2 connection per client object),
/// spread over the endpoints (or all to the leader with `target_leader`).
pub async fn connect(cfg: &ConnCfg) -> BoxResult<Vec<Client>> {
    let eps: Vec<String> = if cfg.target_leader {
        vec![find_leader(cfg).await?]
    } else {
        cfg.endpoints.iter().map(|e| endpoint_url(e)).collect()
    };
    let mut out = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let ep = &eps[i % eps.len()];
        out.push(transport::client(ep, cfg.transport, cfg.dial_timeout, connect_options(cfg)).await?);
    }
    Ok(out)
}

/// Per-client state handed to every request of that client.
pub struct Ctx {
    pub id: usize,
    pub client: Client,
    pub kv: KvClient,
    pub rng: SmallRng,
    pub lease: Option<i64>,
    pub keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    pub known_rev: HashMap<Vec<u8>, i64>,
}

impl Ctx {
    pub fn new(id: usize, client: &Client) -> Ctx {
        Ctx {
            id,
            client: client.clone(),
            kv: client.kv_client().max_decoding_message_size(1 << 30),
            rng: SmallRng::seed_from_u64(0x5eed ^ id as u64),
            lease: None,
            keeper: None,
            known_rev: HashMap::new(),
        }
    }
}

/// Builds one `Ctx` per client, client `i` on connection `i % conns`.
pub fn contexts(conns: &[Client], clients: usize) -> Vec<Ctx> {
    (0..clients.max(1)).map(|i| Ctx::new(i, &conns[i % conns.len()])).collect()
}

/// A request: returns the index of the class it falls in (0 for single-class workloads).
pub type OpFuture<'a> = Pin<Box<dyn Future<Output = Result<usize, etcd_client::Error>> + Send + 'a>>;

/// How a closed-loop run is bounded.
#[derive(Clone, Debug)]
pub struct RunCfg {
    pub total: u64,
    /// Requests/s over all clients; 0 = as fast as possible.
    pub rate: f64,
    pub max: Duration,
    pub progress: bool,
}

/// What a closed-loop run measured.
pub struct RunOut {
    pub classes: Vec<Stats>,
    pub wall: Duration,
    pub stopped_early: Option<String>,
    pub unimplemented: bool,
    pub ctxs: Vec<Ctx>,
}

impl RunOut {
    /// One report over all classes.
    pub fn overall(&self, name: &str) -> Report {
        let mut all = Stats::new();
        for c in &self.classes {
            all.merge(c);
        }
        self.finish(all.summary(name, self.wall))
    }

    /// One report for class `i`.
    pub fn class(&self, i: usize, name: &str) -> Report {
        self.finish(self.classes[i].summary(name, self.wall))
    }

    fn finish(&self, mut r: Report) -> Report {
        r.unimplemented = self.unimplemented;
        r.stopped_early = self.stopped_early.clone();
        r
    }
}

pub fn progress_bar(total: u64, show: bool) -> Option<ProgressBar> {
    if !show {
        return None;
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    Some(pb)
}

/// Runs `op` from every context, one request at a time per context, until
/// `cfg.total` requests were issued or `cfg.max` elapsed. An `Unimplemented`
/// answer stops the run (the server lacks the API).
pub async fn run_closed<F>(ctxs: Vec<Ctx>, n_classes: usize, cfg: &RunCfg, op: F) -> RunOut
where
    F: for<'a> Fn(&'a mut Ctx, u64) -> OpFuture<'a> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let unimpl = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let pb = progress_bar(cfg.total, cfg.progress);
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + cfg.max);
    let mut tasks = Vec::with_capacity(ctxs.len());
    let clients = ctxs.len().max(1) as u64;
    for mut ctx in ctxs {
        let (op, next, stop, unimpl, timed_out, pb) =
            (op.clone(), next.clone(), stop.clone(), unimpl.clone(), timed_out.clone(), pb.clone());
        let (total, rate) = (cfg.total, cfg.rate);
        tasks.push(tokio::spawn(async move {
            // Raw samples per client, merged into one histogram at the end: a
            // histogram per client (256 KiB each at 1 ns-1 h, 3 digits) cost
            // 1,000 clients more CPU per request in page faults and cache
            // misses than the request itself, and so did a timer per request;
            // one deadline covers the whole loop instead.
            let mut samples: Vec<Vec<u64>> = (0..n_classes).map(|_| Vec::new()).collect();
            samples[0].reserve((total / clients + 1).min(1 << 20) as usize);
            let mut errors: Vec<String> = Vec::new();
            let run = async {
                while !stop.load(Ordering::Relaxed) {
                    let idx = next.fetch_add(1, Ordering::Relaxed);
                    if idx >= total {
                        break;
                    }
                    if rate > 0.0 {
                        let at = tokio::time::Instant::from_std(start + Duration::from_secs_f64(idx as f64 / rate));
                        if at >= deadline {
                            timed_out.store(true, Ordering::Relaxed);
                            break;
                        }
                        tokio::time::sleep_until(at).await;
                    }
                    let t0 = Instant::now();
                    match op(&mut ctx, idx).await {
                        Ok(class) => samples[class.min(n_classes - 1)].push(t0.elapsed().as_nanos() as u64),
                        Err(e) => {
                            if is_unimplemented(&e) {
                                unimpl.store(true, Ordering::Relaxed);
                                stop.store(true, Ordering::Relaxed);
                            }
                            errors.push(error_text(&e));
                        }
                    }
                    if let Some(pb) = &pb {
                        pb.inc(1);
                    }
                }
            };
            if tokio::time::timeout_at(deadline, run).await.is_err() {
                timed_out.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
            }
            (ctx, samples, errors)
        }));
    }
    let mut classes: Vec<Stats> = (0..n_classes).map(|_| Stats::new()).collect();
    let mut back = Vec::new();
    for t in tasks {
        let (ctx, samples, errors) = t.await.expect("client task");
        for (stats, ns) in classes.iter_mut().zip(&samples) {
            for &ns in ns {
                stats.record(Duration::from_nanos(ns));
            }
        }
        for e in &errors {
            classes[0].record_error(e);
        }
        back.push(ctx);
    }
    let wall = start.elapsed();
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let unimplemented = unimpl.load(Ordering::Relaxed);
    let stopped_early = if unimplemented {
        Some("server answered Unimplemented".to_string())
    } else if timed_out.load(Ordering::Relaxed) {
        Some(format!("max-seconds ({:.0} s) reached", cfg.max.as_secs_f64()))
    } else {
        None
    };
    RunOut { classes, wall, stopped_early, unimplemented, ctxs: back }
}

/// etcd benchmark's key: `key_size` zero bytes with `Go binary.PutVarint(i)` at the front.
pub fn etcd_key(i: u64, key_size: usize) -> Vec<u8> {
    let mut k = vec![0u8; key_size.max(1)];
    let mut x = ((i as i64) << 1 ^ ((i as i64) >> 63)) as u64; // zigzag, as PutVarint
    let mut j = 0;
    while x >= 0x80 && j < k.len() {
        k[j] = (x as u8) | 0x80;
        x >>= 7;
        j += 1;
    }
    if j < k.len() {
        k[j] = x as u8;
    }
    k
}

/// Random bytes (etcd's `mustRandBytes`).
pub fn rand_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut r = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| r.gen()).collect()
}

/// A printable random key (watch keys).
pub fn rand_key(n: usize, seed: u64) -> Vec<u8> {
    let mut r = SmallRng::seed_from_u64(seed);
    (0..n.max(1)).map(|_| b'a' + r.gen_range(0..26u8)).collect()
}

fn key_index(ctx: &mut Ctx, idx: u64, sequential: bool, space: u64) -> u64 {
    let space = space.max(1);
    if sequential {
        idx % space
    } else {
        ctx.rng.gen_range(0..space)
    }
}

// ---- workloads -------------------------------------------------------------

pub async fn put(conns: &[Client], clients: usize, a: &PutArgs, run: &RunCfg) -> Report {
    let val = Arc::new(rand_bytes(a.val_size, 1));
    let (ks, seq, space) = (a.key_size, a.sequential_keys, a.key_space_size);
    let out = run_closed(contexts(conns, clients), 1, run, move |c, i| {
        let v = val.clone();
        Box::pin(async move {
            let k = etcd_key(key_index(c, i, seq, space), ks);
            c.kv.put(k, v.as_slice(), None).await.map(|_| 0)
        })
    })
    .await;
    out.overall("")
}

pub fn get_options(consistency: &str, end: Option<&[u8]>, limit: i64, count_only: bool) -> GetOptions {
    let mut o = GetOptions::new();
    if consistency == "s" {
        o = o.with_serializable();
    }
    if let Some(e) = end {
        o = o.with_range(e.to_vec());
    }
    if limit > 0 {
        o = o.with_limit(limit);
    }
    if count_only {
        o = o.with_count_only();
    }
    o
}

pub async fn range(conns: &[Client], clients: usize, a: &RangeArgs, run: &RunCfg) -> Report {
    let key = Arc::new(a.key.clone().into_bytes());
    let opts = get_options(&a.consistency, a.end.as_deref().map(str::as_bytes), a.limit, a.count_only);
    let out = run_closed(contexts(conns, clients), 1, run, move |c, _| {
        let (k, o) = (key.clone(), opts.clone());
        Box::pin(async move { c.kv.get(k.as_slice(), Some(o)).await.map(|_| 0) })
    })
    .await;
    out.overall("")
}

pub async fn txn_put(conns: &[Client], clients: usize, a: &TxnPutArgs, run: &RunCfg) -> Report {
    let val = Arc::new(rand_bytes(a.val_size, 2));
    let (ks, ops, space) = (a.key_size, a.txn_ops.max(1) as u64, a.key_space_size.max(1));
    let out = run_closed(contexts(conns, clients), 1, run, move |c, i| {
        let v = val.clone();
        Box::pin(async move {
            let puts: Vec<TxnOp> =
                (0..ops).map(|j| TxnOp::put(etcd_key((i * ops + j) % space, ks), v.as_slice(), None)).collect();
            c.kv.txn(Txn::new().and_then(puts)).await.map(|_| 0)
        })
    })
    .await;
    out.overall("")
}

/// Two reports: reads, writes (etcd prints them apart).
pub async fn txn_mixed(conns: &[Client], clients: usize, a: &TxnMixedArgs, run: &RunCfg) -> (Report, Report) {
    let val = Arc::new(rand_bytes(a.val_size, 3));
    let read_p = a.rw_ratio / (a.rw_ratio + 1.0);
    let (ks, space) = (a.key_size, a.key_space_size.max(1));
    let (cons, limit, end_key) = (a.consistency.clone(), a.limit, a.end_key.clone());
    let out = run_closed(contexts(conns, clients), 2, run, move |c, _| {
        let v = val.clone();
        let (cons, end_key) = (cons.clone(), end_key.clone());
        Box::pin(async move {
            let k = etcd_key(c.rng.gen_range(0..space), ks);
            if c.rng.gen::<f64>() < read_p {
                let o = get_options(&cons, end_key.as_deref().map(str::as_bytes), limit, false);
                c.kv.txn(Txn::new().and_then([TxnOp::get(k, Some(o))])).await.map(|_| 0)
            } else {
                c.kv.txn(Txn::new().and_then([TxnOp::put(k, v.as_slice(), None)])).await.map(|_| 1)
            }
        })
    })
    .await;
    (out.class(0, "Read"), out.class(1, "Write"))
}

/// Compare-and-swap under contention: `keys` hot keys; each request is
/// `Txn(if mod_revision(k) == last seen then put(k) else get(k))`. A failed
/// compare refreshes the client's view. Requests/s counts every txn; the
/// extra figures give commits/s and the conflict share.
pub async fn txn_cas(conns: &[Client], clients: usize, a: &TxnCasArgs, run: &RunCfg) -> Report {
    let val = Arc::new(rand_bytes(a.val_size, 4));
    let keys: Arc<Vec<Vec<u8>>> = Arc::new((0..a.keys.max(1)).map(|i| format!("cas/{i:04}").into_bytes()).collect());
    let out = run_closed(contexts(conns, clients), 2, run, move |c, _| {
        let (v, keys) = (val.clone(), keys.clone());
        Box::pin(async move {
            let k = keys[c.rng.gen_range(0..keys.len())].clone();
            let known = c.known_rev.get(&k).copied().unwrap_or(0);
            let t = Txn::new()
                .when([Compare::mod_revision(k.clone(), CompareOp::Equal, known)])
                .and_then([TxnOp::put(k.clone(), v.as_slice(), None)])
                .or_else([TxnOp::get(k.clone(), None)]);
            let r = c.kv.txn(t).await?;
            if r.succeeded() {
                let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                c.known_rev.insert(k, rev);
                Ok(0)
            } else {
                let mut rev = 0;
                for op in r.op_responses() {
                    if let etcd_client::TxnOpResponse::Get(g) = op {
                        rev = g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0);
                    }
                }
                c.known_rev.insert(k, rev);
                Ok(1)
            }
        })
    })
    .await;
    let mut r = out.overall("");
    let (commits, conflicts) = (out.classes[0].count() as f64, out.classes[1].count() as f64);
    let secs = out.wall.as_secs_f64().max(1e-9);
    r.extra.insert("commits/s".into(), commits / secs);
    r.extra.insert("conflict share".into(), if commits + conflicts > 0.0 { conflicts / (commits + conflicts) } else { 0.0 });
    r.extra.insert("commit p99 s".into(), out.classes[0].percentile_s(99.0));
    r
}

/// Lease keep-alive round trips: each client grants a lease (TTL 100 s,
/// untimed), then renews it. Default as etcd's tool (`KeepAliveOnce`: a new
/// keep-alive stream per renewal); `--stream` renews on one long-lived stream.
pub async fn lease_keepalive(conns: &[Client], clients: usize, a: &LeaseArgs, run: &RunCfg) -> Report {
    let mut ctxs = contexts(conns, clients);
    for c in ctxs.iter_mut() {
        let mut lc = c.client.lease_client();
        match lc.grant(100, None).await {
            Ok(g) => c.lease = Some(g.id()),
            Err(e) => {
                let mut s = Stats::new();
                s.record_error(&error_text(&e));
                let mut r = s.summary("", Duration::ZERO);
                r.unimplemented = is_unimplemented(&e);
                r.stopped_early = Some(format!("lease grant failed: {}", error_text(&e)));
                return r;
            }
        }
        if a.stream {
            match lc.keep_alive(c.lease.unwrap()).await {
                Ok(k) => c.keeper = Some(k),
                Err(e) => {
                    let mut s = Stats::new();
                    s.record_error(&error_text(&e));
                    let mut r = s.summary("", Duration::ZERO);
                    r.unimplemented = is_unimplemented(&e);
                    r.stopped_early = Some(format!("keep-alive stream failed: {}", error_text(&e)));
                    return r;
                }
            }
        }
    }
    let out = run_closed(ctxs, 1, run, move |c, _| {
        Box::pin(async move {
            let id = c.lease.expect("granted");
            if let Some((keeper, stream)) = c.keeper.as_mut() {
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(r) if r.ttl() > 0 => Ok(0),
                    Some(_) => Err(etcd_client::Error::LeaseKeepAliveError("lease not found".into())),
                    None => Err(etcd_client::Error::LeaseKeepAliveError("keep-alive stream closed".into())),
                }
            } else {
                let mut lc = c.client.lease_client();
                lc.keep_alive(id).await.map(|_| 0)
            }
        })
    })
    .await;
    // Leases are left to expire (TTL 100 s) rather than revoked one by one.
    out.overall("")
}

/// Watchers held open (for watch memory and watch workloads).
pub struct Watchers {
    pub streams: Vec<etcd_client::WatchStream>,
    pub created: usize,
    pub create_stats: Stats,
    pub wall: Duration,
}

/// Opens `streams` watch streams, `per_stream` watchers on each, over
/// `keys` (watcher j watches `keys[j % keys.len()]`), and waits until every
/// watcher is created (or `max` passes). Streams go round-robin over conns.
pub async fn open_watchers(
    conns: &[Client],
    streams: usize,
    per_stream: usize,
    keys: &[Vec<u8>],
    prev_kv: bool,
    max: Duration,
    progress: bool,
) -> Result<Watchers, etcd_client::Error> {
    let start = Instant::now();
    let deadline = start + max;
    let pb = progress_bar((streams * per_stream) as u64, progress);
    let mut out = Watchers { streams: Vec::new(), created: 0, create_stats: Stats::new(), wall: Duration::ZERO };
    let mut j = 0usize;
    // Open streams concurrently in small groups: one task per stream.
    let mut tasks = Vec::new();
    for s in 0..streams {
        let mut wc = conns[s % conns.len()].watch_client();
        let my_keys: Vec<Vec<u8>> = (0..per_stream)
            .map(|_| {
                j += 1;
                keys[(j - 1) % keys.len()].clone()
            })
            .collect();
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = Stats::new();
            let opts = if prev_kv { WatchOptions::new().with_prev_key() } else { WatchOptions::new() };
            let mut created = 0usize;
            let mut t0 = Instant::now();
            let mut ws = wc.watch(my_keys[0].clone(), Some(opts.clone())).await?;
            // One watcher at a time: create, wait for `created`, time it (as etcd's `watch`).
            for w in 0..my_keys.len() {
                if w > 0 {
                    t0 = Instant::now();
                    ws.watch(my_keys[w].clone(), Some(opts.clone())).await?;
                }
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, ws.message()).await {
                        Err(_) => return Ok::<_, etcd_client::Error>((ws, created, st)),
                        Ok(Err(e)) => return Err(e),
                        Ok(Ok(None)) => return Err(etcd_client::Error::WatchError("watch stream closed".into())),
                        Ok(Ok(Some(r))) => {
                            if r.canceled() {
                                return Err(etcd_client::Error::WatchError(format!(
                                    "watch canceled: {}",
                                    r.cancel_reason()
                                )));
                            }
                            if r.created() {
                                created += 1;
                                st.record(t0.elapsed());
                                if let Some(pb) = &pb {
                                    pb.inc(1);
                                }
                                break;
                            }
                        }
                    }
                }
            }
            Ok((ws, created, st))
        }));
    }
    let mut first_err = None;
    for t in tasks {
        match t.await.expect("watch task") {
            Ok((ws, c, st)) => {
                out.streams.push(ws);
                out.created += c;
                out.create_stats.merge(&st);
            }
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    out.wall = start.elapsed();
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Watch event latency: `streams × watchers_per_stream` watchers on one key;
/// `put_total` puts of that key, paced at `put_rate`; each put waits until
/// every watcher saw its event. Latency per (put, watcher) runs from sending
/// the put to the watcher receiving the event. (etcd's `watch-latency`
/// starts the clock when the put returns instead; a server that delivers the
/// event before acknowledging the put then shows near-zero latency.)
pub async fn watch_latency(conns: &[Client], a: &WatchLatencyArgs, max: Duration, progress: bool) -> Report {
    let key = rand_key(a.key_size, 7);
    let val = rand_bytes(a.val_size, 8);
    let start = Instant::now();
    let n_watchers = a.streams.max(1) * a.watchers_per_stream.max(1);
    let ws = match open_watchers(conns, a.streams.max(1), a.watchers_per_stream.max(1), &[key.clone()], a.prevkv, max, false).await {
        Ok(w) => w,
        Err(e) => return failed_report(&e),
    };
    if ws.created < n_watchers {
        let mut r = Stats::new().summary("", start.elapsed());
        r.stopped_early = Some(format!("only {} of {} watchers created before max-seconds", ws.created, n_watchers));
        return r;
    }
    let put_start_ns = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(Stats::new()));
    let mut readers = Vec::new();
    for mut w in ws.streams {
        let (put_start_ns, seen, notify, stop, stats) =
            (put_start_ns.clone(), seen.clone(), notify.clone(), stop.clone(), stats.clone());
        readers.push(tokio::spawn(async move {
            let mut local = Stats::new();
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), w.message()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(r))) => {
                        let n = r.events().len() as u64;
                        if n > 0 {
                            let now_ns = start.elapsed().as_nanos() as u64;
                            let d = Duration::from_nanos(now_ns.saturating_sub(put_start_ns.load(Ordering::Acquire)));
                            for _ in 0..n {
                                local.record(d);
                            }
                            seen.fetch_add(n, Ordering::AcqRel);
                            notify.notify_one();
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        local.record_error(&error_text(&e));
                        break;
                    }
                }
            }
            stats.lock().expect("stats").merge(&local);
        }));
    }
    let mut kv = conns[0].kv_client();
    let pb = progress_bar(a.put_total, progress);
    let deadline = start + max;
    let mut put_errors = Stats::new();
    let mut stopped = None;
    let t_run = Instant::now();
    let mut expected = 0u64;
    for i in 0..a.put_total {
        if a.put_rate > 0.0 {
            let at = t_run + Duration::from_secs_f64(i as f64 / a.put_rate);
            if at > deadline {
                stopped = Some("max-seconds reached".to_string());
                break;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
        put_start_ns.store(start.elapsed().as_nanos() as u64, Ordering::Release);
        if let Err(e) = kv.put(key.clone(), val.clone(), None::<PutOptions>).await {
            put_errors.record_error(&error_text(&e));
            continue;
        }
        expected += n_watchers as u64;
        loop {
            if seen.load(Ordering::Acquire) >= expected {
                break;
            }
            let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(10));
            if tokio::time::timeout(wait, notify.notified()).await.is_err() {
                let got = seen.load(Ordering::Acquire);
                put_errors.record_error("events missing 10 s after the put");
                expected = got;
                break;
            }
        }
        if let Some(pb) = &pb {
            pb.inc(1);
        }
        if Instant::now() >= deadline {
            stopped = Some("max-seconds reached".to_string());
            break;
        }
    }
    let wall = t_run.elapsed();
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    let mut s = stats.lock().expect("stats").clone();
    s.merge(&put_errors);
    let mut r = s.summary("", wall);
    r.stopped_early = stopped;
    r.extra.insert("watchers".into(), n_watchers as f64);
    r.extra.insert("watch create p99 s".into(), ws.create_stats.percentile_s(99.0));
    r
}

/// etcd's `watch`: creates the watchers (timed: "Watch creation summary"),
/// then puts `put_total` keys at `put_rate` over the watched keys and reports
/// put latency; events received are counted.
pub async fn watch(conns: &[Client], a: &WatchArgs, max: Duration, progress: bool) -> (Report, Report) {
    let keys: Vec<Vec<u8>> = (0..a.watched_key_total.max(1) as u64).map(|i| etcd_key(i, a.key_size)).collect();
    let start = Instant::now();
    let ws = match open_watchers(conns, a.streams.max(1), a.watch_per_stream.max(1), &keys, false, max, progress).await {
        Ok(w) => w,
        Err(e) => return (failed_report(&e), failed_report(&e)),
    };
    let create = ws.create_stats.summary("Watch creation", ws.wall);
    let events = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for mut w in ws.streams {
        let (events, stop) = (events.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), w.message()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(r))) => {
                        events.fetch_add(r.events().len() as u64, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
        }));
    }
    let remaining = max.saturating_sub(start.elapsed());
    let run = RunCfg { total: a.put_total, rate: a.put_rate, max: remaining, progress };
    let val = Arc::new(rand_bytes(8, 9));
    let (ks, seq, space) = (a.key_size, a.sequential_keys, a.key_space_size.max(1));
    let out = run_closed(contexts(conns, 1), 1, &run, move |c, i| {
        let v = val.clone();
        Box::pin(async move {
            let k = etcd_key(key_index(c, i, seq, space), ks);
            c.kv.put(k, v.as_slice(), None).await.map(|_| 0)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    let mut puts = out.overall("Put");
    puts.extra.insert("events_received".into(), events.load(Ordering::Relaxed) as f64);
    (create, puts)
}

pub fn failed_report(e: &etcd_client::Error) -> Report {
    let mut s = Stats::new();
    s.record_error(&error_text(e));
    let mut r = s.summary("", Duration::ZERO);
    r.unimplemented = is_unimplemented(e);
    r.stopped_early = Some(error_text(e));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_keys_match_go_put_varint() {
        // Go: binary.PutVarint(buf, 0) -> [0]; 1 -> [2]; -1 -> [1]; 64 -> [0x80, 0x01]; 300 -> [0xd8, 0x04]
        assert_eq!(etcd_key(0, 8), vec![0; 8]);
        assert_eq!(etcd_key(1, 8)[..1], [2]);
        assert_eq!(etcd_key(64, 8)[..2], [0x80, 0x01]);
        assert_eq!(etcd_key(300, 8)[..2], [0xd8, 0x04]);
        assert_eq!(etcd_key(300, 8).len(), 8);
        // Distinct keys over a key space.
        let set: std::collections::HashSet<Vec<u8>> = (0..10_000).map(|i| etcd_key(i, 8)).collect();
        assert_eq!(set.len(), 10_000);
    }

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(endpoint_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_url("http://127.0.0.1:1"), "http://127.0.0.1:1");
    }
}

//! The `ironcd` binary: parses etcd's flags, opens the member's WAL and
//! store, starts its raft group and serves the etcd v3 gRPC API on a glommio
//! executor. Threading and data flow: `docs/server.md`.

mod alarm;
mod allocator;
mod auto_compact;
mod config;
mod convert;
mod error;
mod etcd_server;
mod lessor;
mod membership;
mod pb;
mod peer_service;
mod raft_snapshot;
mod snapshot;
mod state_machine;
mod transport;
mod v3rpc;
mod watch;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use ironcd_engine::btree::{Db, DbOptions};
use ironcd_engine::kv::{ReadView, Store, Tree, WriteView};
use ironcd_engine::mvcc::{self, KvStore};
use ironcd_engine::wal::WalOptions;
use ironcd_raft_net::peer::{self, PeerConfig, PeerNetworkFactory, PeerServer, Peers};
use ironcd_raft_net::{LogStore, Member};
use openraft::async_runtime::WatchReceiver;
use openraft::SnapshotPolicy;

use crate::config::{Config, ETCD_VERSION};
use crate::etcd_server::{EtcdServer, MemberRaft};
use crate::membership::InitialMember;
use crate::state_machine::StateMachine;

/// glommio's registered I/O buffer pool on the raft core: a lone put's WAL
/// batch is 4 KiB, a batch under 1,000 clients a few hundred KiB, the
/// spare-segment zero fill 1 MiB at a time (docs/server.md, "Memory allocator").
const RAFT_CORE_IO_MEMORY: usize = 2 << 20;
/// Client executors do no file I/O: glommio's minimum.
const CLIENT_IO_MEMORY: usize = 64 << 10;

fn main() -> ExitCode {
    let cfg = Config::parse();
    if cfg.version {
        println!("ironcd Version: {}", env!("CARGO_PKG_VERSION"));
        println!("etcd Version: {ETCD_VERSION} (compatible)");
        return ExitCode::SUCCESS;
    }
    init_logging(&cfg.log_level);
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ironcd stopped");
            eprintln!("ironcd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Structured JSON logs on stderr, like etcd's default zap logger.
fn init_logging(level: &str) {
    let level = match level {
        "panic" | "fatal" => "error",
        l => l,
    };
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            // glommio::reactor's only message is the failed iopoll probe
            // that the WAL causes on purpose (engine/src/wal/io.rs).
            "{level},glommio=warn,glommio::reactor=off,openraft=error"
        )))
        .init();
}

/// Who this member is, from the flags (checked against the data dir later).
struct Identity {
    member_id: u64,
    cluster_id: u64,
    members: Vec<InitialMember>,
}

fn identity(cfg: &Config) -> Result<Identity, String> {
    let members =
        membership::parse_initial_cluster(&cfg.initial_cluster(), &cfg.initial_cluster_token)?;
    let me = members.iter().find(|m| m.name == cfg.name).ok_or_else(|| {
        format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            cfg.name
        )
    })?;
    let mut mine = me.peer_urls.clone();
    mine.sort();
    let mut advertised = cfg.initial_advertise_peer_urls.clone();
    advertised.sort();
    if mine != advertised {
        return Err(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            cfg.name,
            me.peer_urls.join(","),
            cfg.initial_advertise_peer_urls.join(",")
        ));
    }
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    Ok(Identity {
        member_id: me.id,
        cluster_id: membership::cluster_id(&ids),
        members,
    })
}

/// Refuses a data dir written by etcd: ironcd never reads or touches etcd's files.
fn refuse_etcd_data_dir(dir: &Path) -> Result<(), String> {
    if dir.join("member").join("snap").exists() {
        return Err(format!(
            "{} holds an etcd data directory (member/snap); ironcd does not read or modify etcd's files: \
             start ironcd with another --data-dir",
            dir.display()
        ));
    }
    Ok(())
}

pub(crate) const IDENTITY_KEY: &[u8] = b"ironcd/identity";

/// Records the member and cluster IDs in a new store; refuses a store that
/// belongs to another member or cluster.
fn check_identity(db: &Db, id: &Identity, cfg: &Config, data_dir: &Path) -> Result<(), String> {
    let snap = db.snapshot();
    let stored = snap
        .get(Tree::Meta, IDENTITY_KEY)
        .map_err(|e| e.to_string())?
        .map(<[u8]>::to_vec);
    match stored {
        Some(b) if b.len() >= 16 => {
            let member = u64::from_le_bytes(b[0..8].try_into().unwrap_or_default());
            let cluster = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
            let name = String::from_utf8_lossy(&b[16..]).into_owned();
            if member != id.member_id || cluster != id.cluster_id {
                return Err(format!(
                    "data dir {} belongs to member {member:x} ({name:?}) of cluster {cluster:x}, but the flags \
                     describe member {:x} ({:?}) of cluster {:x}: check --name, --initial-advertise-peer-urls, \
                     --initial-cluster and --initial-cluster-token, or use another --data-dir",
                    data_dir.display(),
                    id.member_id,
                    cfg.name,
                    id.cluster_id
                ));
            }
            Ok(())
        }
        Some(_) => Err(format!(
            "data dir {}: the member identity record is corrupt",
            data_dir.display()
        )),
        None => {
            let mut v = id.member_id.to_le_bytes().to_vec();
            v.extend_from_slice(&id.cluster_id.to_le_bytes());
            v.extend_from_slice(cfg.name.as_bytes());
            let mut w = db.begin_write().map_err(|e| e.to_string())?;
            w.put(Tree::Meta, IDENTITY_KEY, &v)
                .map_err(|e| e.to_string())?;
            w.commit().map_err(|e| e.to_string())?;
            db.sync().map_err(|e| e.to_string())
        }
    }
}

/// The member and cluster IDs recorded in a store, if any.
fn stored_identity(db: &Db) -> Result<Option<(u64, u64)>, String> {
    let snap = db.snapshot();
    let b = snap.get(Tree::Meta, IDENTITY_KEY).map_err(|e| e.to_string())?;
    Ok(b.filter(|b| b.len() >= 16).map(|b| {
        (
            u64::from_le_bytes(b[0..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(b[8..16].try_into().unwrap_or_default()),
        )
    }))
}

/// Refuses to bootstrap a member that a running cluster already knows as
/// started (it published its attributes): its data dir was lost, and it must
/// be removed and added again (etcd refuses the same way).
async fn refuse_rebootstrap(id: &Identity, peer_cfg: &PeerConfig) -> Result<(), String> {
    use prost::Message;
    for m in id.members.iter().filter(|m| m.id != id.member_id) {
        let Ok(b) = peer::client::call_once(
            peer_cfg,
            &m.peer_urls,
            peer_service::PeerMsg::Members as u8,
            &[],
            Duration::from_millis(500),
        )
        .await
        else {
            continue;
        };
        let Ok(list) = pb::etcdserverpb::MemberListResponse::decode(b) else { continue };
        if list.members.iter().any(|x| x.id == id.member_id && !x.name.is_empty()) {
            return Err(format!(
                "member {:x} has already been bootstrapped: its data dir is gone or new, but the cluster knows it \
                 as started; remove it (`etcdctl member remove {:x}`) and add it again with \
                 --initial-cluster-state existing",
                id.member_id, id.member_id
            ));
        }
    }
    Ok(())
}

/// A member started with `--initial-cluster-state existing` learns its ID
/// (given by `member add`) and the cluster ID from a running peer, as etcd does.
async fn join_identity(cfg: &Config, id: &Identity, peer_cfg: &PeerConfig, stop: &AtomicBool) -> Result<(u64, u64), String> {
    use prost::Message;
    let mut mine = cfg.initial_advertise_peer_urls.clone();
    mine.sort();
    let others: Vec<&membership::InitialMember> = id.members.iter().filter(|m| m.name != cfg.name).collect();
    if others.is_empty() {
        return Err("--initial-cluster-state=existing needs the running members in --initial-cluster".into());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while std::time::Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        for m in &others {
            match peer::client::call_once(peer_cfg, &m.peer_urls, peer_service::PeerMsg::Members as u8, &[], Duration::from_secs(2)).await {
                Ok(b) => {
                    let list = pb::etcdserverpb::MemberListResponse::decode(b).map_err(|e| e.to_string())?;
                    let cluster = list.header.as_ref().map_or(0, |h| h.cluster_id);
                    let me = list.members.iter().find(|x| {
                        let mut u = x.peer_ur_ls.clone();
                        u.sort();
                        u == mine
                    });
                    return match me {
                        Some(x) => Ok((x.id, cluster)),
                        None => Err(format!(
                            "member with peer URLs {} is not in the cluster's member list (add it first with `etcdctl member add`)",
                            mine.join(",")
                        )),
                    };
                }
                Err(e) => last = e.to_string(),
            }
        }
        glommio::timer::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("could not get the member list from the cluster: {last}"))
}

fn raft_config(cfg: &Config) -> Result<Arc<openraft::Config>, String> {
    let c = openraft::Config {
        cluster_name: cfg.initial_cluster_token.clone(),
        heartbeat_interval: cfg.heartbeat_interval,
        election_timeout_min: cfg.election_timeout,
        election_timeout_max: cfg.election_timeout * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
        // etcd keeps 5,000 entries behind a snapshot for slow followers.
        max_in_snapshot_log_to_keep: cfg.snapshot_catchup_entries,
        enable_pre_vote: Some(cfg.pre_vote),
        // A restarted leader goes through an election, as in etcd. openraft
        // would otherwise resume leadership in the same term with the
        // committed index it had persisted, which here lags (the WAL writes
        // it with the next batch, docs/raft.md rule 7) while the store is
        // synced only every --ironcd-store-sync-entries: its read index, and
        // so its linearizable reads, could then miss writes it had already
        // acknowledged (found by the fault test: a get returned the value
        // before a put acknowledged by the same member before its kill -9).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    c.validate()
        .map(Arc::new)
        .map_err(|e| format!("invalid raft settings: {e}"))
}

fn run(cfg: Config) -> Result<(), String> {
    let id = identity(&cfg)?;
    let auto_compaction =
        auto_compact::parse(&cfg.auto_compaction_mode, &cfg.auto_compaction_retention)?;
    let data_dir = cfg.data_dir();
    refuse_etcd_data_dir(&data_dir)?;
    tracing::info!(
        name = %cfg.name,
        data_dir = %data_dir.display(),
        wal_dir = %cfg.wal_dir().display(),
        member_id = %format!("{:x}", id.member_id),
        cluster_id = %format!("{:x}", id.cluster_id),
        etcd_version = ETCD_VERSION,
        "starting ironcd"
    );
    // Bind first: a second server on the same port fails before touching data.
    let mut listeners = Vec::new();
    for url in &cfg.listen_client_urls {
        let addr = transport::parse_url(url)?;
        let l =
            transport::bind_exclusive(addr).map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
        listeners.push((url.clone(), l));
    }
    let mut peer_listeners = Vec::new();
    for url in &cfg.listen_peer_urls {
        let addr = transport::parse_url(url)?;
        let l = transport::bind_exclusive(addr)
            .map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
        peer_listeners.push((url.clone(), l));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("installing signal handler: {e}"))?;
    }
    // Client executors first: the raft core hands them connections once it
    // serves clients. They run until the raft core is gone; the process
    // ends with it.
    let cores = match cfg.cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let executor = |i: usize, name: &str| {
        let placement = if cfg.pin_cores { Placement::Fixed(i) } else { Placement::Unbound };
        // glommio registers `io_memory` with io_uring for its DMA buffers,
        // which pins it resident (10 MiB by default). Only the raft core
        // writes files (the WAL); a buffer the pool cannot hold is allocated
        // normally and written without a registered buffer.
        let io_memory = if i == 0 { RAFT_CORE_IO_MEMORY } else { CLIENT_IO_MEMORY };
        let b = LocalExecutorBuilder::new(placement).name(name).io_memory(io_memory);
        match cfg.spin_us {
            0 => b,
            us => b.spin_before_park(std::time::Duration::from_micros(us)),
        }
    };
    let (jobs_tx, jobs_rx) = futures_channel::mpsc::unbounded();
    let learner = Arc::new(AtomicBool::new(false));
    let mut handoff = Vec::new();
    for i in 1..cores {
        let (conn_tx, conn_rx) = futures_channel::mpsc::unbounded();
        let remote = v3rpc::remote::Remote::new(jobs_tx.clone());
        let learner = learner.clone();
        let max_request_bytes = cfg.max_request_bytes;
        executor(i, &format!("ironcd-client-{i}"))
            .spawn(move || async move {
                let front = v3rpc::Front::new(
                    v3rpc::KvCalls::Remote(remote.clone()),
                    v3rpc::remote_routes(remote, max_request_bytes),
                    learner,
                    max_request_bytes,
                );
                glommio::spawn_local(allocator::collect_forever()).detach();
                transport::serve_handed(conn_rx, front).await
            })
            .map_err(|e| format!("starting client executor {i}: {e}"))?;
        handoff.push(conn_tx);
    }
    drop(jobs_tx);
    let clients = ClientSide { jobs: jobs_rx, handoff, learner };
    let ex = executor(0, "ironcd-raft-core")
        .spawn(move || async move {
            serve_member(cfg, id, data_dir, listeners, peer_listeners, clients, stop, auto_compaction).await
        })
        .map_err(|e| format!("starting executor: {e}"))?;
    ex.join().map_err(|e| format!("executor failed: {e}"))?
}

/// What the raft core needs to work with the client executors.
struct ClientSide {
    /// Calls forwarded by client executors.
    jobs: futures_channel::mpsc::UnboundedReceiver<v3rpc::remote::Job>,
    /// One sender of connections per client executor.
    handoff: Vec<futures_channel::mpsc::UnboundedSender<std::net::TcpStream>>,
    /// Whether this member is a learner, for every executor's router.
    learner: Arc<AtomicBool>,
}

#[allow(clippy::too_many_arguments)]
async fn serve_member(
    cfg: Config,
    id: Identity,
    data_dir: PathBuf,
    listeners: Vec<(String, std::net::TcpListener)>,
    peer_listeners: Vec<(String, std::net::TcpListener)>,
    clients: ClientSide,
    stop: Arc<AtomicBool>,
    auto_compaction: auto_compact::Policy,
) -> Result<(), String> {
    let mut id = id;
    let member_dir = data_dir.join("member");
    std::fs::create_dir_all(&member_dir)
        .map_err(|e| format!("creating {}: {e}", member_dir.display()))?;
    let wal_opts = WalOptions {
        segment_size: cfg.wal_segment_bytes,
        sync_delay: Duration::from_millis(cfg.fault_wal_sync_delay_ms),
        sync_delay_armed: (cfg.fault_wal_sync_delay_ms > 0).then(|| {
            let armed = Arc::new(AtomicBool::new(false));
            if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, armed.clone()) {
                tracing::warn!(error = %e, "cannot arm the WAL sync delay fault");
            }
            armed
        }),
        ..WalOptions::default()
    };
    let log_store = LogStore::open_dir(cfg.wal_dir(), wal_opts)
        .await
        .map_err(|e| e.to_string())?;
    let db_path = member_dir.join("kv.db");
    let db = Db::open(&db_path, DbOptions::default())
        .map_err(|e| format!("opening {}: {e}", db_path.display()))?;
    let source_ip = peer_listeners
        .first()
        .and_then(|(u, _)| transport::parse_url(u).ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let peer_cfg = PeerConfig {
        member_id: id.member_id,
        cluster_id: Rc::new(std::cell::Cell::new(0)),
        source_ip,
        connect_timeout: Duration::from_secs(1),
    };
    if cfg.initial_cluster_state == "existing" {
        match stored_identity(&db)? {
            Some((member, cluster)) => {
                id.member_id = member;
                id.cluster_id = cluster;
            }
            None => {
                let (member, cluster) = join_identity(&cfg, &id, &peer_cfg, &stop).await?;
                id.member_id = member;
                id.cluster_id = cluster;
            }
        }
    }
    check_identity(&db, &id, &cfg, &data_dir)?;
    let peer_cfg = PeerConfig { member_id: id.member_id, ..peer_cfg };
    peer_cfg.cluster_id.set(id.cluster_id);
    let mvcc_cfg = mvcc::Config {
        max_txn_ops: cfg.max_txn_ops as usize,
        // etcd: ceil(1.5 × election timeout) seconds.
        min_lease_ttl: (3 * cfg.election_timeout as i64 + 1999) / 2000,
        // prev_kv is looked up by the watch hub only for watchers that ask.
        events: mvcc::EventMode::Events,
    };
    let kv = Arc::new(KvStore::open(db, mvcc_cfg).map_err(|e| e.to_string())?);
    let lessor = Rc::new(lessor::Lessor::load(&kv, kv.config().min_lease_ttl)?);
    let lease_hook = lessor.clone();
    let hub = watch::WatchHub::new(
        kv.clone(),
        watch::Limits::from_env(),
        cfg.experimental_watch_progress_notify_interval,
    );
    let apply_hub = hub.clone();
    let waiters = state_machine::Waiters::default();
    let (restore_hub, restore_kv, restore_lessor) = (hub.clone(), kv.clone(), lessor.clone());
    let sm = StateMachine::new(
        kv.clone(),
        cfg.store_sync_entries,
        Rc::new(move |events: &mut Vec<mvcc::Event>, revision: i64| {
            apply_hub.on_apply(events, revision)
        }),
        waiters.clone(),
    )
    .map_err(|e| format!("loading the state machine: {e}"))?
    .with_member_id(id.member_id)
    .with_lease_hook(Rc::new(move |changes| lease_hook.applied(changes)))
    .with_restore_hook(Rc::new(move |prev_revision| {
        if let Err(e) = restore_lessor.reload(&restore_kv) {
            tracing::error!(error = %e, "reloading leases after a snapshot");
        }
        restore_hub.on_restore(prev_revision);
    }));
    // Applying ahead (state_machine.rs): the log store shows each appended
    // batch to the state machine's hook.
    let ahead = sm.ahead();
    let (hook_ahead, hook_kv) = (ahead.clone(), kv.clone());
    let log_store = log_store.with_append_hook(Rc::new(move |entries| hook_ahead.hook(&hook_kv, entries)));
    let peers = Peers::new(peer_cfg.clone());
    let transfer: Rc<raft_snapshot::Transfer> = Rc::new(raft_snapshot::Transfer { member_dir: member_dir.clone() });
    let raft: MemberRaft = MemberRaft::new(
        id.member_id,
        raft_config(&cfg)?,
        PeerNetworkFactory::new(peers.clone(), transfer.clone()),
        log_store.clone(),
        sm,
    )
    .await
    .map_err(|e| format!("starting raft: {e}"))?;
    let peer_service = Rc::new(peer_service::PeerService::default());
    let peer_server = Rc::new(PeerServer {
        raft: raft.clone(),
        member_id: id.member_id,
        cluster_id: peer_cfg.cluster_id.clone(),
        app: peer_service.clone(),
        snapshots: transfer,
    });
    let was_initialized = raft.is_initialized().await.map_err(|e| e.to_string())?;
    if was_initialized {
        // The only voter need not wait an election timeout to lead again
        // after a restart (leader restore is off, see `raft_config`).
        let sole_voter = {
            let m = raft.metrics().borrow_watched().membership_config.clone();
            let voters: Vec<u64> = m.membership().voter_ids().collect();
            voters == [id.member_id]
        };
        if sole_voter {
            raft.trigger().elect(false).await.map_err(|e| format!("starting an election: {e}"))?;
        }
    }
    if !was_initialized && cfg.initial_cluster_state == "new" {
        // A member whose data dir was wiped must not bootstrap again (it
        // would forget its vote): etcd's "has already been bootstrapped".
        refuse_rebootstrap(&id, &peer_cfg).await?;
        // Every member bootstraps the same membership (names and client
        // URLs are published through raft once each member runs).
        let nodes: BTreeMap<u64, Member> = id
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    Member {
                        name: String::new(),
                        peer_urls: m.peer_urls.clone(),
                        client_urls: Vec::new(),
                    },
                )
            })
            .collect();
        raft.initialize(nodes)
            .await
            .map_err(|e| format!("bootstrapping the cluster: {e}"))?;
    }
    // Peers are answered once the member is bootstrapped (a vote received
    // before would make openraft refuse the bootstrap).
    for (url, l) in peer_listeners {
        tracing::info!(address = %url, "listening for peers");
        let l = transport::into_glommio(l);
        glommio::spawn_local(peer::serve(l, peer_server.clone())).detach();
    }

    let srv = Rc::new(EtcdServer::new(
        raft.clone(),
        kv.clone(),
        id.member_id,
        id.cluster_id,
        cfg,
        lessor,
        peers,
        waiters,
        ahead.clone(),
    ));
    srv.set_self();
    peer_service.set(&srv);
    srv.start_compactor();
    srv.start_space_monitor();
    auto_compact::start(Rc::downgrade(&srv), auto_compaction);
    lessor::start(&srv);
    hub.start(&srv);
    // Like etcd, serve clients once this member's attributes are published
    // (which needs a quorum).
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match srv.publish(&srv.cfg.name.clone(), &srv.cfg.advertise_client_urls.clone()).await {
            Ok(()) => {
                tracing::info!("published local member to cluster through raft");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "failed to publish local member to cluster through raft");
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let learner = clients.learner;
    learner.store(srv.is_learner(), Ordering::Relaxed);
    let local = v3rpc::local_services(srv.clone(), hub.clone());
    glommio::spawn_local(v3rpc::remote::run_jobs(local.clone(), clients.jobs)).detach();
    let front = v3rpc::Front::new(
        v3rpc::KvCalls::Local(srv.clone()),
        v3rpc::routes(&local, srv.cfg.max_request_bytes),
        learner.clone(),
        srv.cfg.max_request_bytes,
    );
    let handoff = Rc::new(transport::Handoff::new(srv.cfg.raft_core_conns, clients.handoff));
    for (url, l) in listeners {
        tracing::info!(address = %url, "serving client traffic insecurely; this is strongly discouraged!");
        let l = transport::into_glommio(l);
        let (front, handoff) = (front.clone(), handoff.clone());
        glommio::spawn_local(async move {
            if let Err(e) = transport::serve(l, front, handoff).await {
                tracing::error!(error = %e, "client listener failed");
            }
        })
        .detach();
    }
    // Recovery (WAL replay, the store's first reads) is done: give what it
    // freed back, and keep doing so.
    allocator::collect(true);
    glommio::spawn_local(allocator::collect_forever()).detach();
    tracing::info!("ready to serve client requests");
    let mut removed = false;
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
        // Removed: this member applied its removal, or a majority of the
        // others refuse its raft messages (the leader stops replicating to
        // a removed member, so it may never apply its removal).
        learner.store(srv.is_learner(), Ordering::Relaxed);
        let members = srv.members();
        let others = members.len().saturating_sub(1);
        let refused_by_majority = others > 0 && srv.peers.refused_count() >= others / 2 + 1;
        if !members.iter().any(|m| m.id == srv.member_id) || refused_by_majority {
            tracing::warn!("the member has been permanently removed from the cluster");
            removed = true;
            // Let the answers in flight (e.g. the `member remove` that
            // removed this member) go out first.
            glommio::timer::sleep(Duration::from_secs(1)).await;
            break;
        }
    }
    tracing::info!("received a signal; shutting down");
    drop(srv);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    kv.store()
        .sync()
        .map_err(|e| format!("syncing the store at shutdown: {e}"))?;
    log_store
        .close()
        .await
        .map_err(|e| format!("closing the WAL: {e}"))?;
    let (applied_ahead, published_when_durable, dropped_ahead) = ahead.counts();
    tracing::info!(applied_ahead, published_when_durable, dropped_ahead, "stopped");
    if removed {
        return Err("the member has been permanently removed from the cluster".into());
    }
    Ok(())
}

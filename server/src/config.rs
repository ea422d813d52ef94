//! etcd's server flags: same names, same defaults, each also read from its
//! `ETCD_*` environment variable (a flag on the command line wins), plus
//! ironcd's own tuning flags under their own names.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The etcd version whose behaviour ironcd matches (reported by Status and
/// `/version`). See README.md.
pub const ETCD_VERSION: &str = "3.4.23";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ironcd",
    about = "ironcd: an etcd-compatible, strongly consistent key-value store",
    disable_version_flag = true
)]
pub struct Config {
    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,

    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory (default: "${name}.etcd").
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Path to the dedicated WAL directory (default: inside --data-dir).
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// List of URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,

    /// List of this member's client URLs to advertise to the public.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,

    /// List of URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,

    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,

    /// Initial cluster configuration for bootstrapping, `name=peer-url,...`
    /// (default: "${name}=${initial-advertise-peer-urls}").
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,

    /// Initial cluster token for the cluster during bootstrap.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Enable the raft Pre-Vote algorithm to prevent disruption when a node
    /// that has been partitioned away rejoins the cluster.
    #[arg(long, env = "ETCD_PRE_VOTE", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub pre_vote: bool,

    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,

    /// Interpret 'auto-compaction-retention' one of: periodic|revision.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,

    /// Auto compaction retention length. 0 means disable auto compaction.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Duration of periodic watch progress notifications (etcd's experimental flag).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_progress_interval
    )]
    pub experimental_watch_progress_notify_interval: Duration,

    /// Configures log level. Only supports debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info",
          value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,

    /// Executor threads to run: the raft core plus client executors that
    /// serve connections and forward each call to it; 0 = one per available
    /// core. Default 1: where the server shares its cores with its clients,
    /// forwarding costs more CPU than it frees (docs/perf.md).
    #[arg(long = "ironcd-cores", env = "IRONCD_CORES", default_value_t = 1)]
    pub cores: usize,

    /// Client connections the raft core serves itself (a lone client never
    /// pays a hop between threads); further ones go to client executors.
    #[arg(long = "ironcd-raft-core-conns", env = "IRONCD_RAFT_CORE_CONNS", default_value_t = 1)]
    pub raft_core_conns: usize,

    /// Pin each executor to its own CPU.
    #[arg(
        long = "ironcd-pin-cores",
        env = "IRONCD_PIN_CORES",
        default_value_t = false
    )]
    pub pin_cores: bool,

    /// Microseconds an executor that ran out of work keeps polling for more
    /// (giving its CPU to any other thread that wants it) before it sleeps;
    /// 0 = sleep at once. Spares a lone client's request two wake-ups of an
    /// idle CPU (docs/server.md, "Threading").
    #[arg(long = "ironcd-spin-us", env = "IRONCD_SPIN_US", default_value_t = 300)]
    pub spin_us: u64,

    /// Applied entries between two syncs of the store file (the WAL covers
    /// the rest; a restart replays at most this many entries).
    #[arg(long = "ironcd-store-sync-entries", env = "IRONCD_STORE_SYNC_ENTRIES", default_value_t = 10_000)]
    pub store_sync_entries: u64,

    /// Log entries kept behind a raft snapshot so a slow follower can catch
    /// up from the log instead of a snapshot (etcd's fixed 5,000).
    #[arg(long = "ironcd-snapshot-catchup-entries", env = "IRONCD_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = 5000)]
    pub snapshot_catchup_entries: u64,

    /// Fault injection for tests: milliseconds added to every WAL sync once
    /// the process receives SIGUSR1 (a disk that turns slow). 0 in production.
    #[arg(long = "ironcd-fault-wal-sync-delay-ms", env = "IRONCD_FAULT_WAL_SYNC_DELAY_MS", default_value_t = 0, hide = true)]
    pub fault_wal_sync_delay_ms: u64,

    /// Size of each WAL segment file in bytes.
    #[arg(long = "ironcd-wal-segment-bytes", env = "IRONCD_WAL_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub wal_segment_bytes: u64,
}

/// Go's `time.ParseDuration` for non-negative values ("1h30m", "90s", "1.5h", "300ms").
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * secs;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// At least 100 ms, as etcd enforces; 0 means the default.
fn parse_progress_interval(s: &str) -> Result<Duration, String> {
    match parse_go_duration(s) {
        Some(d) if d.is_zero() => Ok(Duration::from_secs(600)),
        Some(d) => Ok(d.max(Duration::from_millis(100))),
        None => Err(format!(
            "invalid duration {s:?} (Go syntax: 10m, 500ms, 1h30m)"
        )),
    }
}

impl Config {
    /// The data directory: `--data-dir`, or `${name}.etcd` like etcd.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    /// The WAL directory: `--wal-dir`, or `<data-dir>/member/wal`.
    pub fn wal_dir(&self) -> PathBuf {
        self.wal_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("member").join("wal"))
    }

    /// `--initial-cluster`, or `${name}=${initial-advertise-peer-urls}` like etcd.
    pub fn initial_cluster(&self) -> String {
        self.initial_cluster.clone().unwrap_or_else(|| {
            self.initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_etcd() {
        let c = Config::try_parse_from(["ironcd"]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(c.wal_dir(), PathBuf::from("default.etcd/member/wal"));
        assert_eq!(c.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(c.initial_cluster(), "default=http://localhost:2380");
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("abc"), None);
        assert_eq!(parse_go_duration(""), None);
        let c = Config::try_parse_from([
            "ironcd",
            "--experimental-watch-progress-notify-interval",
            "10ms",
        ])
        .unwrap();
        assert_eq!(
            c.experimental_watch_progress_notify_interval,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn flags_and_unknown_flags() {
        let c = Config::try_parse_from([
            "ironcd",
            "--name",
            "n1",
            "--listen-client-urls",
            "http://127.0.0.1:1,http://127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(c.data_dir(), PathBuf::from("n1.etcd"));
        assert_eq!(c.listen_client_urls.len(), 2);
        let e = Config::try_parse_from(["ironcd", "--no-such-flag"]).unwrap_err();
        assert!(e.to_string().contains("--no-such-flag"), "{e}");
    }
}

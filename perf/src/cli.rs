//! Flags and subcommands of etcd's `benchmark` tool (etcd 3.4/3.5), so a
//! user's command line carries over: `ironcd-bench --endpoints=... --conns=100
//! --clients=1000 put --key-size=8 --sequential-keys --total=100000
//! --val-size=256`. Additions are marked as such.

use crate::transport::Transport;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug, Clone)]
#[command(name = "ironcd-bench", version, about = "A low-level benchmark tool for etcd-compatible servers (etcd benchmark's flags)")]
pub struct Cli {
    /// gRPC endpoints (comma-separated, `host:port` or URLs).
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Total number of gRPC clients.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Connect only to the leader member.
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// Use full floating point precision.
    #[arg(long, global = true)]
    pub precise: bool,
    /// 'true' to sample requests for every second (accepted for compatibility; no effect).
    #[arg(long, global = true)]
    pub sample: bool,
    /// Dial timeout for client connections.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: std::time::Duration,
    /// username[:password] for authentication.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// (ironcd) Bound on the run's wall time, seconds; the run stops there and reports what it did.
    #[arg(long, global = true, default_value_t = 600.0)]
    pub max_seconds: f64,
    /// (ironcd) Also print the report as one JSON line (last line of output).
    #[arg(long, global = true)]
    pub json: bool,
    /// (ironcd) No progress bar.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// (ironcd) What each connection is built on under etcd-client: `h2` (one HTTP/2
    /// connection driven by the h2 crate, requests sent and answered on the client's
    /// own task), `tonic` (a tonic Channel), `balanced` (etcd-client's own
    /// `Client::connect`, the tool's transport before), `hyper` (hyper's HTTP/2 client).
    #[arg(long, global = true, value_enum, default_value_t = Transport::H2)]
    pub transport: Transport,
    /// (ironcd) Threads that run the clients and connections: 1 = one thread (tokio's
    /// current-thread runtime); N > 1 = a multi-thread runtime with N workers.
    #[arg(long, global = true, default_value_t = 1)]
    pub client_threads: usize,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Benchmark put.
    Put(PutArgs),
    /// Benchmark range: `range key [end-range]`.
    Range(RangeArgs),
    /// Benchmark put with transactions.
    #[command(name = "txn-put")]
    TxnPut(TxnPutArgs),
    /// Benchmark a mix of read and write transactions.
    #[command(name = "txn-mixed")]
    TxnMixed(TxnMixedArgs),
    /// (ironcd) Benchmark compare-and-swap transactions on a few contended keys.
    #[command(name = "txn-cas")]
    TxnCas(TxnCasArgs),
    /// Benchmark watch: watcher creation, then puts while watched.
    Watch(WatchArgs),
    /// Benchmark watch latency: time from a put to each watcher's event.
    #[command(name = "watch-latency")]
    WatchLatency(WatchLatencyArgs),
    /// Benchmark lease keep-alive.
    #[command(name = "lease-keepalive")]
    LeaseKeepalive(LeaseArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    /// Key size of put request.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of put request.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Total number of put requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Use sequential keys.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Maximum put requests per second (0 is no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Interval to compact database (accepted; not implemented, must be 0).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub compact_interval: std::time::Duration,
    /// Delta between current revision and compact revision (accepted; unused).
    #[arg(long, default_value_t = 1000)]
    pub compact_index_delta: i64,
}

#[derive(Args, Debug, Clone)]
pub struct RangeArgs {
    pub key: String,
    pub end: Option<String>,
    /// Linearizable (l) or serializable (s).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Total number of range requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Maximum range requests per second (0 is no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Maximum number of results per request (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Only returns the count of keys.
    #[arg(long)]
    pub count_only: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TxnPutArgs {
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Number of puts per txn.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
    /// Maximum txns per second (0 is no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct TxnMixedArgs {
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Read/write ops ratio.
    #[arg(long, default_value_t = 1.0)]
    pub rw_ratio: f64,
    /// Linearizable (l) or serializable (s).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Read operation range end (a single key when absent).
    #[arg(long)]
    pub end_key: Option<String>,
    /// Read operation range result limit.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Maximum txns per second (0 is no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct TxnCasArgs {
    /// Number of contended keys.
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    #[arg(long, default_value_t = 64)]
    pub val_size: usize,
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Total watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Total watchers per stream.
    #[arg(long, default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Total number of distinct keys to watch.
    #[arg(long, default_value_t = 1)]
    pub watched_key_total: usize,
    /// Number of keys to put per second.
    #[arg(long, default_value_t = 100.0)]
    pub put_rate: f64,
    /// Number of put requests.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Key size of watch request.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys.
    #[arg(long)]
    pub sequential_keys: bool,
}

#[derive(Args, Debug, Clone)]
pub struct WatchLatencyArgs {
    /// Total number of put requests.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Number of keys to put per second.
    #[arg(long, default_value_t = 100.0)]
    pub put_rate: f64,
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// Total watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Total watchers per stream.
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: usize,
    /// PrevKV enabled on watch requests.
    #[arg(long)]
    pub prevkv: bool,
}

#[derive(Args, Debug, Clone)]
pub struct LeaseArgs {
    /// Total number of lease keepalive requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// (ironcd) Renew on one long-lived keep-alive stream per client instead of one stream per renewal.
    #[arg(long)]
    pub stream: bool,
}

/// Go-style durations: `2s`, `500ms`, `1m`, `1.5s`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let mult = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("bad duration unit in {s:?}")),
    };
    Ok(std::time::Duration::from_secs_f64(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("ironcd-bench").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn etcds_published_put_command_parses() {
        // From etcd's docs/op-guide/performance.md.
        let c = parse(&[
            "--endpoints=127.0.0.1:2379,127.0.0.1:22379",
            "--target-leader",
            "--conns=100",
            "--clients=1000",
            "put",
            "--key-size=8",
            "--sequential-keys",
            "--total=100000",
            "--val-size=256",
        ]);
        assert_eq!(c.endpoints, vec!["127.0.0.1:2379", "127.0.0.1:22379"]);
        assert!(c.target_leader);
        assert_eq!((c.conns, c.clients), (100, 1000));
        match c.cmd {
            Cmd::Put(p) => {
                assert_eq!((p.key_size, p.val_size, p.total), (8, 256, 100000));
                assert!(p.sequential_keys);
                assert_eq!(p.key_space_size, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn etcds_published_range_commands_parse() {
        let c = parse(&["--endpoints=a:1", "--conns=1", "--clients=1", "range", "YOUR_KEY", "--consistency=l", "--total=10000"]);
        match c.cmd {
            Cmd::Range(r) => {
                assert_eq!(r.key, "YOUR_KEY");
                assert_eq!(r.end, None);
                assert_eq!(r.consistency, "l");
                assert_eq!(r.total, 10000);
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&["range", "a", "b", "--consistency", "s", "--rate", "500", "--precise"]);
        assert!(c.precise);
        match c.cmd {
            Cmd::Range(r) => {
                assert_eq!(r.end.as_deref(), Some("b"));
                assert_eq!(r.consistency, "s");
                assert_eq!(r.rate, 500.0);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["b", "range", "k", "--consistency=x"]).is_err());
    }

    #[test]
    fn other_subcommands_parse() {
        let c = parse(&["txn-put", "--txn-ops=4", "--key-space-size=100", "--total=50"]);
        assert!(matches!(c.cmd, Cmd::TxnPut(ref t) if t.txn_ops == 4 && t.key_space_size == 100));
        let c = parse(&["txn-mixed", "--rw-ratio=4", "--consistency=s", "--end-key=z"]);
        assert!(matches!(c.cmd, Cmd::TxnMixed(ref t) if t.rw_ratio == 4.0 && t.end_key.as_deref() == Some("z")));
        let c = parse(&["watch", "--streams=5", "--watch-per-stream=20", "--put-rate=50", "--put-total=10"]);
        assert!(matches!(c.cmd, Cmd::Watch(ref w) if w.streams == 5 && w.watch_per_stream == 20));
        let c = parse(&["watch-latency", "--streams=2", "--watchers-per-stream=3", "--prevkv", "--put-total=7"]);
        assert!(matches!(c.cmd, Cmd::WatchLatency(ref w) if w.streams == 2 && w.watchers_per_stream == 3 && w.prevkv));
        let c = parse(&["--clients=10", "lease-keepalive", "--total=100"]);
        assert!(matches!(c.cmd, Cmd::LeaseKeepalive(ref l) if l.total == 100 && !l.stream));
        let c = parse(&["put", "--json", "--max-seconds=5", "--dial-timeout=500ms"]);
        assert!(c.json);
        assert_eq!(c.max_seconds, 5.0);
        assert_eq!(c.dial_timeout, std::time::Duration::from_millis(500));
        assert_eq!((c.transport, c.client_threads), (Transport::H2, 1));
        let c = parse(&["--transport=balanced", "--client-threads=2", "put"]);
        assert_eq!((c.transport, c.client_threads), (Transport::Balanced, 2));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), std::time::Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), std::time::Duration::from_secs(60));
        assert_eq!(parse_duration("1.5").unwrap(), std::time::Duration::from_millis(1500));
        assert!(parse_duration("3 parsecs").is_err());
    }
}

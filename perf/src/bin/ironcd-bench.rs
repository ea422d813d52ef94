//! `ironcd-bench`: etcd's `benchmark` tool, flag for flag (see `docs/perf.md`).

use clap::Parser;
use ironcd_perf::bench::{self, ConnCfg, RunCfg};
use ironcd_perf::cli::{Cli, Cmd};
use ironcd_perf::report::Report;
use std::time::Duration;

/// mimalloc: ~1.5 µs less of the tool's CPU per request than glibc's malloc
/// (tonic's 8 KiB codec buffers miss glibc's thread cache), CPU the server
/// under test gets back (docs/perf.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let rt = bench::client_runtime(cli.client_threads).expect("tokio runtime");
    let code = rt.block_on(run(cli));
    std::process::exit(code);
}

async fn run(cli: Cli) -> i32 {
    if let Cmd::Put(p) = &cli.cmd {
        if !p.compact_interval.is_zero() {
            eprintln!("--compact-interval is not supported by ironcd-bench");
            return 2;
        }
    }
    let cfg = ConnCfg {
        endpoints: cli.endpoints.clone(),
        conns: cli.conns.max(1),
        dial_timeout: cli.dial_timeout,
        target_leader: cli.target_leader,
        user: cli.user.clone(),
        transport: cli.transport,
    };
    let conns = match bench::connect(&cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {:?}: {e}", cli.endpoints);
            return 1;
        }
    };
    let max = Duration::from_secs_f64(cli.max_seconds.max(0.001));
    let progress = !cli.no_progress;
    let clients = cli.clients.max(1);
    let run = |total: u64, rate: f64| RunCfg { total, rate, max, progress };
    let reports: Vec<Report> = match &cli.cmd {
        Cmd::Put(a) => vec![bench::put(&conns, clients, a, &run(a.total, a.rate)).await],
        Cmd::Range(a) => vec![bench::range(&conns, clients, a, &run(a.total, a.rate)).await],
        Cmd::TxnPut(a) => vec![bench::txn_put(&conns, clients, a, &run(a.total, a.rate)).await],
        Cmd::TxnMixed(a) => {
            let (r, w) = bench::txn_mixed(&conns, clients, a, &run(a.total, a.rate)).await;
            vec![r, w]
        }
        Cmd::TxnCas(a) => vec![bench::txn_cas(&conns, clients, a, &run(a.total, a.rate)).await],
        Cmd::Watch(a) => {
            let (c, p) = bench::watch(&conns, a, max, progress).await;
            vec![c, p]
        }
        Cmd::WatchLatency(a) => vec![bench::watch_latency(&conns, a, max, progress).await],
        Cmd::LeaseKeepalive(a) => vec![bench::lease_keepalive(&conns, clients, a, &run(a.total, 0.0)).await],
    };
    let mut failed = false;
    for r in &reports {
        print!("{}", r.to_text(cli.precise));
        failed |= r.unimplemented || r.ok == 0;
    }
    if cli.json {
        for r in &reports {
            println!("{}", r.to_json());
        }
    }
    if reports.iter().any(|r| r.unimplemented) {
        eprintln!("the server answered Unimplemented: it does not support this workload yet");
        return 3;
    }
    if failed {
        1
    } else {
        0
    }
}

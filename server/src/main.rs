//! The `ironcd` binary: parses etcd's flags and serves the etcd v3 gRPC API
//! on glommio executors.
//!
//! State: the transport serves every etcd v3 service, and every RPC answers
//! `Unimplemented` until the server issue wires the services to raft and the
//! MVCC store (see README.md).

mod config;
mod pb;
mod transport;
mod v3rpc;

use std::process::ExitCode;

use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::{Config, ETCD_VERSION};

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
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!("{level},glommio=warn")))
        .init();
}

fn run(cfg: Config) -> Result<(), String> {
    tracing::info!(
        name = %cfg.name,
        data_dir = %cfg.data_dir().display(),
        wal_dir = %cfg.wal_dir().display(),
        initial_cluster = %cfg.initial_cluster(),
        etcd_version = ETCD_VERSION,
        "starting ironcd (transport only: every RPC answers Unimplemented for now)"
    );
    let mut listeners = Vec::new();
    for url in &cfg.listen_client_urls {
        let addr = transport::parse_url(url)?;
        let l = transport::bind_exclusive(addr).map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
        tracing::info!(address = %addr, "serving client traffic insecurely; this is strongly discouraged!");
        listeners.push(l);
    }
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .name("ironcd-core-0")
        .spawn(move || async move {
            let routes = v3rpc::routes();
            let mut tasks = Vec::new();
            for l in listeners {
                let l = transport::into_glommio(l);
                tasks.push(glommio::spawn_local(transport::serve(l, routes.clone())));
            }
            for t in tasks {
                if let Err(e) = t.await {
                    tracing::error!(error = %e, "client listener failed");
                }
            }
        })
        .map_err(|e| format!("starting executor: {e}"))?;
    ex.join().map_err(|e| format!("executor failed: {e}"))
}

//! `ironcd-sideby`: real etcd and ironcd, same workloads, in alternation (see `docs/perf.md`).

use clap::Parser;
use ironcd_perf::sideby::{run, SideArgs};

/// As `ironcd-bench` (the load runs in this process).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = SideArgs::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(dir) => eprintln!("report written to {}", dir.display()),
        Err(e) => {
            ironcd_perf::procs::stop_all_started();
            eprintln!("ironcd-sideby: {e}");
            std::process::exit(1);
        }
    }
}

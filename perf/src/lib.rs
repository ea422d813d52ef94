//! ironcd's measuring instruments (the perf issue):
//! - `ironcd-bench`: a load tool with the flags and subcommands of etcd's
//!   `benchmark`, driving any etcd-compatible server through the
//!   `etcd-client` crate over gRPC, reporting as etcd's tool does;
//! - `ironcd-sideby`: starts real etcd and ironcd on loopback, runs the same
//!   workloads against each in alternation, writes a Markdown table and SVG
//!   charts into `perf/results/`; with `--members N`, N-member clusters of
//!   each side by side (`cluster`).
//!
//! See `docs/perf.md`.

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod floor;
pub mod procs;
pub mod report;
pub mod sideby;
pub mod svg;
pub mod transport;

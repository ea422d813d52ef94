//! openraft keeps one `base2histogram` histogram (width 3) per `Raft`. The
//! released base2histogram 0.2.3 built the lookup tables of all 16 widths on
//! first use, ~26 MiB made resident in every ironcd process; the vendored
//! copy (vendor/base2histogram/IRONCD-PATCH.md) builds only the widths used.
//! This file holds one test so that nothing else in its process allocates
//! while it measures.

/// Resident set size of this process, in bytes (`/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("statm's resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

#[test]
fn openraft_histogram_costs_kilobytes_not_megabytes() {
    let before = rss();
    let mut h = base2histogram::Histogram::<()>::new();
    for v in [1u64, 7, 64, 1000, 4096, 1 << 20] {
        h.record(v);
    }
    assert_eq!(h.total(), 6);
    let grown = rss().saturating_sub(before);
    assert!(grown < 4 << 20, "a width-3 histogram made the process {grown} bytes larger");
}

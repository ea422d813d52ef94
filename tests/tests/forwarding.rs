//! Client executors (`docs/server.md`, "Threading"): a connection served on a
//! client executor forwards every call to the raft core. The same `etcdctl`
//! session against an ironcd that serves its connections on the raft core
//! and one that forwards every call (`--ironcd-cores 2
//! --ironcd-raft-core-conns 0`) prints the same, for the services the
//! differential KV tests do not reach: leases (unary and the keep-alive
//! stream), snapshots (a server stream), maintenance, cluster, and the
//! services not built yet.

use ironcd_tests::{etcdctl, ok, Kind, Scratch, Server, FORWARDING};

/// Lease and member IDs differ between servers (different peer URLs, and
/// lease IDs carry the time), and so do remaining TTLs and paths.
fn normalise(s: &str, lease: &str, dir: &str) -> String {
    let mut out = Vec::new();
    for line in s.lines() {
        let mut l = line.replace(dir, "DIR");
        if !lease.is_empty() {
            l = l.replace(lease, "LEASE");
            if let Ok(id) = u64::from_str_radix(lease, 16) {
                l = l.replace(&id.to_string(), "LEASE");
            }
        }
        if let Some(at) = l.find("remaining(") {
            let end = l[at..].find(')').map_or(l.len(), |e| at + e);
            l.replace_range(at..end, "remaining(N");
        }
        out.push(l);
    }
    out.join("\n")
}

/// Runs one etcdctl command, logs what it printed (normalised) and returns
/// its raw stdout.
fn run_step(ep: &str, dir: &str, log: &mut Vec<String>, lease: &str, args: &[&str]) -> String {
    let out = etcdctl(ep, args);
    let text = format!(
        "$ etcdctl {}\nexit={}\n{}\n{}",
        normalise(&args.join(" "), lease, dir),
        out.status.code().unwrap_or(-1),
        normalise(&String::from_utf8_lossy(&out.stdout), lease, dir),
        // stderr: only etcdctl's own error line (its client logs carry
        // timestamps and random targets).
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with("Error:")).collect::<Vec<_>>().join("\n"),
    );
    log.push(text);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn session(srv: &Server, dir: &std::path::Path) -> Vec<String> {
    let ep = srv.endpoint();
    let d = dir.display().to_string();
    let mut log = Vec::new();
    let mut lease = String::new();
    let mut step = |args: &[&str], lease: &str| run_step(&ep, &d, &mut log, lease, args);
    step(&["put", "k1", "v1"], "");
    let granted = step(&["lease", "grant", "100"], "");
    lease.push_str(granted.split_whitespace().nth(1).unwrap_or_default());
    assert!(u64::from_str_radix(&lease, 16).is_ok(), "lease grant printed {granted:?}");
    step(&["put", "k2", "v2", &format!("--lease={lease}")], &lease);
    step(&["lease", "keep-alive", "--once", &lease], &lease);
    step(&["lease", "timetolive", &lease, "--keys"], &lease);
    step(&["lease", "list"], &lease);
    step(&["get", "k", "--prefix", "-w", "fields"], &lease);
    step(&["lease", "revoke", &lease], &lease);
    step(&["get", "k", "--prefix"], &lease);
    step(&["lease", "timetolive", &lease], &lease);
    step(&["lease", "revoke", &lease], &lease);
    let snap = dir.join("snap.db").display().to_string();
    step(&["snapshot", "save", &snap], &lease);
    let size = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
    // The store padded to a multiple of 512 bytes, then its SHA-256.
    assert!(size > 32 && (size - 32) % 512 == 0, "snapshot of {size} bytes");
    step(&["endpoint", "health"], &lease);
    step(&["endpoint", "hashkv"], &lease);
    step(&["alarm", "list"], &lease);
    step(&["defrag"], &lease);
    step(&["compaction", "2"], &lease);
    step(&["get", "k1", "--rev", "1"], &lease);
    step(&["member", "list", "-w", "fields"], &lease);
    step(&["auth", "enable"], &lease);
    step(&["lock", "l", "--", "true"], &lease);
    drop(step);
    // The grant was logged before its ID was known.
    log[1] = log[1].replace(&lease, "LEASE");
    log.iter()
        .map(|s| {
            // Member IDs and URLs differ between the two servers.
            s.lines()
                .map(|l| {
                    if l.contains("\"ID\"") || l.contains("ClusterID") || l.contains("URL") || l.contains("MemberID") || l.contains("127.0.0.1:") {
                        "(member-specific line)".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[test]
fn every_service_answers_the_same_through_a_client_executor() {
    let local_dir = Scratch::new("forwarding-local");
    let remote_dir = Scratch::new("forwarding-remote");
    let local = Server::ironcd(local_dir.path());
    let remote = Server::start(Kind::Ironcd, remote_dir.path(), FORWARDING);
    let want = session(&local, local_dir.path());
    let got = session(&remote, remote_dir.path());
    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("--- on the raft core\n{w}\n--- forwarded\n{g}"))
        .collect();
    assert!(diffs.is_empty(), "{} of {} steps differ:\n{}", diffs.len(), want.len(), diffs.join("\n"));
    // The session did what it says (a failure on both sides would compare
    // equal): the lease kept alive, its key gone with it, the snapshot.
    let all = got.join("\n");
    assert!(all.contains("lease LEASE keepalived with TTL(100)"), "{all}");
    assert!(all.contains("lease LEASE revoked"), "{all}");
    assert!(all.contains("Snapshot saved at DIR/snap.db"), "{all}");
    assert!(all.contains("Unimplemented"), "auth answers Unimplemented: {all}");
    let _ = ok(&remote.endpoint(), &["endpoint", "status"]);
}

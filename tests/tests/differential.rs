//! Differential: the same `etcdctl` sessions against a real etcd 3.4 and
//! against ironcd, outputs compared after normalising only what must differ
//! (cluster and member IDs, raft term). Revisions, versions, ordering, counts
//! and error texts must be identical.

use ironcd_tests::{etcdctl_stdin, Scratch, Server};

/// One etcdctl call: arguments and optional stdin.
type Step = (&'static [&'static str], Option<&'static str>);

fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.lines() {
        let mut l = line.to_string();
        for key in ["\"cluster_id\":", "\"member_id\":", "\"raft_term\":", "\"ClusterID\" : ", "\"MemberID\" : ", "\"RaftTerm\" : "] {
            while let Some(at) = l.find(key) {
                let start = at + key.len();
                let end = l[start..].find(|c: char| !c.is_ascii_digit()).map_or(l.len(), |e| start + e);
                if end == start {
                    break;
                }
                l.replace_range(start..end, "N");
                if !l[start + 1..].contains(key) {
                    break;
                }
            }
        }
        // etcdctl's client-side log lines carry timestamps and random targets.
        if l.contains("\"caller\":\"clientv3/") {
            continue;
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn run(server: &Server, steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|(args, stdin)| {
            let out = etcdctl_stdin(&server.endpoint(), args, *stdin);
            format!(
                "$ etcdctl {}\nexit={}\n{}{}",
                args.join(" "),
                out.status.code().unwrap_or(-1),
                normalise(&String::from_utf8_lossy(&out.stdout)),
                normalise(&String::from_utf8_lossy(&out.stderr))
            )
        })
        .collect()
}

fn compare(steps: &[Step]) {
    let dir = Scratch::new("differential");
    let etcd = Server::etcd(dir.path());
    let ironcd = Server::ironcd_forwarding(dir.path());
    let want = run(&etcd, steps);
    let got = run(&ironcd, steps);
    let mut diffs = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        if w != g {
            diffs.push(format!("--- etcd\n{w}--- ironcd\n{g}"));
        }
    }
    assert!(diffs.is_empty(), "{} of {} steps differ:\n{}", diffs.len(), steps.len(), diffs.join("\n"));
}

const TXN_SUCCESS: &str = "value(\"a\") = \"1\"\n\nput a 10\nget b\ndel c\n\nput z fail\n\n";
const TXN_FAILURE: &str = "mod(\"a\") < \"2\"\nversion(\"b\") > \"0\"\n\nput never 1\n\nput fail yes\nget a\n\n";
const TXN_MISSING_KEY: &str = "create(\"nosuch\") = \"0\"\n\nput created 1\n\n\n";

#[test]
fn kv_sessions_match_etcd() {
    let steps: &[Step] = &[
        (&["put", "foo", "bar"], None),
        (&["put", "foo2", "bar2"], None),
        (&["put", "fop", "x"], None),
        (&["put", "foo", "bar3"], None),
        (&["get", "foo"], None),
        (&["get", "foo", "-w", "json"], None),
        (&["get", "foo", "-w", "fields"], None),
        (&["get", "--prefix", "fo"], None),
        (&["get", "--from-key", "foo2"], None),
        (&["get", "--prefix", "fo", "--limit", "1", "-w", "json"], None),
        (&["get", "--prefix", "fo", "--sort-by", "MODIFY", "--order", "DESCEND"], None),
        (&["get", "--prefix", "fo", "--sort-by", "VERSION", "--order", "ASCEND", "-w", "json"], None),
        (&["get", "--prefix", "fo", "--sort-by", "CREATE", "--limit", "2", "-w", "json"], None),
        (&["get", "--prefix", "fo", "--keys-only"], None),
        (&["get", "--prefix", "fo", "--count-only", "-w", "json"], None),
        (&["get", "--prefix", "fo", "--print-value-only"], None),
        (&["get", "foo", "--rev", "1"], None),
        (&["get", "foo", "--rev", "2", "-w", "json"], None),
        (&["get", "foo", "--rev", "100"], None),
        (&["get", "f", "fz", "-w", "simple"], None),
        (&["get", "nosuch", "-w", "json"], None),
        (&["put", "foo", "bar4", "--prev-kv"], None),
        (&["put", "foo", "bar5", "--prev-kv", "-w", "json"], None),
        (&["put", "foo", "--ignore-value"], None),
        (&["put", "nokey", "--ignore-value"], None),
        (&["del", "fop"], None),
        (&["del", "nosuch"], None),
        (&["del", "foo2", "--prev-kv"], None),
        (&["get", "foo2", "--rev", "3", "-w", "json"], None),
        (&["del", "--prefix", "f", "--prev-kv", "-w", "json"], None),
        (&["put", "a", "1"], None),
        (&["put", "b", "2"], None),
        (&["put", "c", "3"], None),
        (&["txn"], Some(TXN_SUCCESS)),
        (&["txn", "-w", "json"], Some(TXN_FAILURE)),
        (&["txn", "-w", "json"], Some(TXN_MISSING_KEY)),
        (&["get", "--from-key", "", "-w", "json"], None),
        (&["compact", "5"], None),
        (&["get", "a", "--rev", "4"], None),
        (&["get", "a", "--rev", "5", "-w", "json"], None),
        (&["compact", "3"], None),
        (&["compact", "1000"], None),
        (&["put", "after", "compact", "-w", "json"], None),
        (&["get", "--prefix", "", "--rev", "0", "--count-only", "-w", "json"], None),
    ];
    compare(steps);
}

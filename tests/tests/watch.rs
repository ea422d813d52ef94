//! Watch, end to end with real processes: the real `etcdctl watch` against
//! ironcd and a real etcd 3.4, outputs compared after normalising only the
//! cluster/member IDs and raft term; and gRPC-level sessions (etcd-client)
//! for what etcdctl cannot drive (watch IDs, cancel, progress, compaction,
//! filters, fragments, many watchers on one stream, a slow reader), also
//! compared with etcd where the answers are deterministic.
//!
//! Every loop here is bounded in count and time; every etcdctl process is
//! killed by its PID.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Once;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, WatchFilterType, WatchOptions, WatchResponse, WatchStream};
use ironcd_tests::{etcdctl_stdin, ok, Kind, Scratch, Server};

/// Settings every server this binary starts inherits (set once, before the
/// first server, with the same values for every test, so concurrent tests
/// never race on them).
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // etcd's own variable for --experimental-watch-progress-notify-interval;
        // ironcd reads the same one.
        std::env::set_var("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", "500ms");
        // Tiny per-stream buffers so the catch-up path runs in every test
        // (ironcd only; semantics must not change).
        std::env::set_var("IRONCD_WATCH_BUFFER_RESPONSES", "8");
        std::env::set_var("IRONCD_WATCH_BUFFER_BYTES", "32768");
    });
}

fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.lines() {
        let mut l = line.to_string();
        for key in ["\"cluster_id\":", "\"member_id\":", "\"raft_term\":"] {
            let mut from = 0;
            while let Some(at) = l[from..].find(key).map(|a| a + from) {
                let start = at + key.len();
                let end = l[start..].find(|c: char| !c.is_ascii_digit()).map_or(l.len(), |e| start + e);
                l.replace_range(start..end, "N");
                from = start;
            }
        }
        if l.contains("\"caller\":\"clientv3/") {
            continue;
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

// ------------------------------------------------------------- etcdctl

/// A background `etcdctl watch`, its stdout read line by line.
struct BgWatch {
    child: Child,
    lines: mpsc::Receiver<String>,
    got: Vec<String>,
}

impl BgWatch {
    fn start(endpoint: &str, args: &[&str]) -> BgWatch {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("--dial-timeout=3s")
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx2.send(format!("stderr: {l}")).is_err() {
                    break;
                }
            }
        });
        BgWatch { child, lines: rx, got: Vec::new() }
    }

    /// Reads until `n` lines arrived or `deadline`.
    fn wait_lines(&mut self, n: usize, deadline: Instant) {
        while self.got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.lines.recv_timeout(left) {
                Ok(l) => self.got.push(l),
                Err(_) => break,
            }
        }
    }

    /// Reads until nothing new arrives for `quiet`, at most until `deadline`.
    fn wait_quiet(&mut self, quiet: Duration, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).min(quiet);
            if left.is_zero() {
                break;
            }
            match self.lines.recv_timeout(left) {
                Ok(l) => self.got.push(l),
                Err(_) => break,
            }
        }
    }

    /// Kills the process (by PID) and returns what it printed.
    fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever was already read by the reader threads.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
            self.got.push(l);
        }
        normalise(&self.got.join("\n"))
    }
}

const WATCHES: &[&[&str]] = &[
    &["--prefix", "foo", "-w", "json"],
    &["--prefix", "foo", "--prev-kv", "-w", "json"],
    &["a", "c", "-w", "json"],
    &["--rev", "2", "--prefix", "foo"],
    &["--rev", "3", "--prefix", "foo", "--prev-kv"],
    &["--rev", "1", "b"],
];

const TXN_PUTS: &str = "\nput foo4 4\nput foo5 5\n\n\n";

fn writes(ep: &str) {
    ok(ep, &["put", "foo", "3"]);
    ok(ep, &["del", "foo2"]);
    ok(ep, &["put", "bar", "2"]);
    ok(ep, &["put", "c", "1"]);
    let out = etcdctl_stdin(ep, &["txn"], Some(TXN_PUTS));
    assert!(out.status.success(), "txn: {}", String::from_utf8_lossy(&out.stderr));
    ok(ep, &["del", "--prefix", "foo"]);
    ok(ep, &["put", "b", "again"]);
}

/// One session against `server`; `expect` = line counts to wait for (from
/// etcd's run), or None to wait until output is quiet.
fn etcdctl_session(server: &Server, expect: Option<&[usize]>) -> (Vec<String>, Vec<usize>) {
    let ep = server.endpoint();
    ok(&ep, &["put", "foo", "1"]); // rev 2
    ok(&ep, &["put", "foo2", "2"]); // rev 3
    ok(&ep, &["put", "bar", "1"]); // rev 4
    ok(&ep, &["put", "b", "1"]); // rev 5
    let mut ws: Vec<BgWatch> = WATCHES.iter().map(|a| BgWatch::start(&ep, a)).collect();
    // The live watchers need their streams open before the writes; the
    // history ones print what they replay.
    std::thread::sleep(Duration::from_millis(2000));
    writes(&ep);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut counts = Vec::new();
    for (i, w) in ws.iter_mut().enumerate() {
        match expect {
            Some(n) => w.wait_lines(n[i], deadline),
            None => w.wait_quiet(Duration::from_millis(1500), deadline),
        }
        counts.push(w.got.len());
    }
    // etcdctl with a compacted start revision: an error, the same text.
    ok(&ep, &["compact", "6"]);
    let mut compacted = BgWatch::start(&ep, &["--rev", "3", "foo"]);
    compacted.wait_lines(1, Instant::now() + Duration::from_secs(10));
    let mut outs: Vec<String> = ws.into_iter().map(BgWatch::finish).collect();
    outs.push(compacted.finish());
    (outs, counts)
}

#[test]
fn etcdctl_watch_matches_etcd() {
    setup();
    let dir = Scratch::new("watch-etcdctl");
    let etcd = Server::etcd(dir.path());
    let (want, counts) = etcdctl_session(&etcd, None);
    drop(etcd);
    let ironcd = Server::ironcd_forwarding(dir.path());
    let (got, _) = etcdctl_session(&ironcd, Some(&counts));
    assert!(counts.iter().all(|&n| n > 0), "etcd printed nothing for some watch: {want:?}");
    let mut diffs = Vec::new();
    let mut names: Vec<String> = WATCHES.iter().map(|a| a.join(" ")).collect();
    names.push("--rev 3 foo (compacted)".into());
    for ((w, g), name) in want.iter().zip(&got).zip(&names) {
        if w != g {
            diffs.push(format!("=== etcdctl watch {name}\n--- etcd\n{w}\n--- ironcd\n{g}"));
        }
    }
    assert!(diffs.is_empty(), "{} of {} watches differ:\n{}", diffs.len(), want.len(), diffs.join("\n"));
}

// ----------------------------------------------------------------- gRPC

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

async fn connect(s: &Server) -> Client {
    Client::connect([s.endpoint()], None).await.expect("connect")
}

/// A response as a line: everything but cluster/member IDs and raft term.
fn show(r: &WatchResponse) -> String {
    let evs: Vec<String> = r
        .events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("kv");
            let prev = e.prev_kv().map(|p| format!(" prev={}@{}", String::from_utf8_lossy(p.value()), p.mod_revision())).unwrap_or_default();
            format!(
                "{} {}={} c{} m{} v{}{}",
                if e.event_type() == EventType::Put { "PUT" } else { "DEL" },
                String::from_utf8_lossy(kv.key()),
                String::from_utf8_lossy(kv.value()),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                prev
            )
        })
        .collect();
    format!(
        "id={} rev={} created={} canceled={} compact={} reason={:?} events=[{}]",
        r.watch_id(),
        r.header().map_or(-99, |h| h.revision()),
        r.created(),
        r.canceled(),
        r.compact_revision(),
        r.cancel_reason(),
        evs.join(", ")
    )
}

async fn next(ws: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), ws.message())
        .await
        .expect("a watch response within 10 s")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// Nothing arrives within `d`.
async fn silent(ws: &mut WatchStream, d: Duration) -> Option<String> {
    match tokio::time::timeout(d, ws.message()).await {
        Err(_) => None,
        Ok(Ok(Some(r))) => Some(show(&r)),
        Ok(other) => Some(format!("{other:?}")),
    }
}

/// A deterministic session of watch requests; returns its transcript.
async fn grpc_session(s: &Server) -> Vec<String> {
    let mut c = connect(s).await;
    let mut t = Vec::new();
    for i in 0..3 {
        c.put(format!("k{i}"), "v0", None).await.expect("put"); // revs 2..4
    }
    let mut ws = c.watch("k0", Some(WatchOptions::new().with_watch_id(7))).await.expect("watch");
    t.push(show(&next(&mut ws).await)); // created id 7
    ws.watch("k1", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    t.push(show(&next(&mut ws).await)); // duplicate id
    ws.watch("k1", None).await.unwrap();
    t.push(show(&next(&mut ws).await)); // auto id 0
    ws.watch("k2", None).await.unwrap();
    t.push(show(&next(&mut ws).await)); // auto id 1
    ws.watch("z", Some(WatchOptions::new().with_range("a"))).await.unwrap();
    t.push(show(&next(&mut ws).await)); // empty range
    // History from revision 2 with prev_kv, then live.
    ws.watch("k", Some(WatchOptions::new().with_prefix().with_start_revision(2).with_prev_key().with_watch_id(20))).await.unwrap();
    t.push(show(&next(&mut ws).await)); // created
    t.push(show(&next(&mut ws).await)); // history: one response, revs 2..4
    // Filters.
    ws.watch("k", Some(WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoPut]).with_watch_id(30))).await.unwrap();
    t.push(show(&next(&mut ws).await));
    ws.watch("k", Some(WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoDelete]).with_watch_id(31))).await.unwrap();
    t.push(show(&next(&mut ws).await));
    // A future start revision: nothing before it.
    ws.watch("k0", Some(WatchOptions::new().with_start_revision(7).with_watch_id(40))).await.unwrap();
    t.push(show(&next(&mut ws).await));
    // Progress with every watcher synced.
    ws.request_progress().await.unwrap();
    t.push(show(&next(&mut ws).await));
    // Live: one response per revision per watcher; order among watchers
    // of one revision is not defined, so sort each revision's lines.
    c.put("k0", "v1", None).await.unwrap(); // rev 5
    c.delete("k1", None).await.unwrap(); // rev 6
    c.put("k0", "v2", None).await.unwrap(); // rev 7
    let expect_per_rev = [(5, 3), (6, 3), (7, 4)]; // (revision, responses): ids 7/20/31, 0/20/30, 7/20/31/40
    for (rev, n) in expect_per_rev {
        let mut lines = Vec::new();
        for _ in 0..n {
            let r = next(&mut ws).await;
            assert_eq!(r.header().map(|h| h.revision()), Some(rev), "{}", show(&r));
            lines.push(show(&r));
        }
        lines.sort();
        t.extend(lines);
    }
    // Cancel: a known ID answers, an unknown one is ignored.
    ws.cancel(7).await.unwrap();
    t.push(show(&next(&mut ws).await));
    ws.cancel(12345).await.unwrap();
    ws.request_progress().await.unwrap();
    t.push(show(&next(&mut ws).await)); // the progress answer comes next
    // Compacted start revision.
    c.compact(5, None).await.unwrap();
    ws.watch("k", Some(WatchOptions::new().with_prefix().with_start_revision(3).with_watch_id(50))).await.unwrap();
    t.push(show(&next(&mut ws).await)); // created
    t.push(show(&next(&mut ws).await)); // compacted + canceled
    // The compacted watcher's ID stays taken until cancelled.
    ws.watch("k", Some(WatchOptions::new().with_watch_id(50))).await.unwrap();
    t.push(show(&next(&mut ws).await));
    ws.cancel(50).await.unwrap();
    t.push(show(&next(&mut ws).await));
    // Start revision equal to the compact revision is still allowed.
    ws.watch("k0", Some(WatchOptions::new().with_start_revision(5).with_watch_id(51))).await.unwrap();
    t.push(show(&next(&mut ws).await));
    t.push(show(&next(&mut ws).await));
    // progress_notify: an idle synced watcher hears from the server.
    let mut pn = c.watch("idle", Some(WatchOptions::new().with_progress_notify())).await.unwrap();
    t.push(show(&next(&mut pn).await));
    t.push(show(&next(&mut pn).await)); // within ~0.55 s: id 0, no events, current revision
    t
}

#[test]
fn grpc_watch_matches_etcd() {
    setup();
    let dir = Scratch::new("watch-grpc");
    let etcd = Server::etcd(dir.path());
    let ironcd = Server::ironcd_forwarding(dir.path());
    let rt = rt();
    let want = rt.block_on(grpc_session(&etcd));
    let got = rt.block_on(grpc_session(&ironcd));
    let diffs: Vec<String> =
        want.iter().zip(&got).enumerate().filter(|(_, (w, g))| w != g).map(|(i, (w, g))| format!("#{i}\n  etcd:   {w}\n  ironcd: {g}")).collect();
    assert!(diffs.is_empty() && want.len() == got.len(), "transcripts differ:\n{}\nfull etcd transcript:\n{}", diffs.join("\n"), want.join("\n"));
}

/// One large revision (a range delete whose events carry 99 KB prev_kvs),
/// watched with and without `fragment`, on servers with a small
/// `--max-request-bytes` (etcd fragments above it plus 512 KiB).
async fn fragment_session(s: &Server) -> Vec<String> {
    const N: usize = 9;
    let mut c = connect(s).await;
    for i in 0..N {
        c.put(format!("f{i}"), vec![b'x'; 99_000], None).await.unwrap();
    }
    let mut ws = c.watch("f", Some(WatchOptions::new().with_prefix().with_prev_key().with_fragment().with_watch_id(1))).await.unwrap();
    let mut t = vec![show(&next(&mut ws).await)];
    ws.watch("f", Some(WatchOptions::new().with_prefix().with_prev_key().with_watch_id(2))).await.unwrap();
    t.push(show(&next(&mut ws).await));
    c.delete("f", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    // Split: every piece keeps the revision's header; summarise events.
    let mut events = 0;
    let mut whole = 0;
    let mut pieces = Vec::new();
    for _ in 0..20 {
        if events == N && whole == N {
            break;
        }
        let r = next(&mut ws).await;
        if r.watch_id() == 1 {
            events += r.events().len();
            pieces.push(r.events().len());
        } else {
            whole += r.events().len();
            t.push(format!("unfragmented: {} events", r.events().len()));
        }
    }
    t.push(format!("fragments: {pieces:?}"));
    t
}

#[test]
fn fragment_matches_etcd() {
    setup();
    let dir = Scratch::new("watch-fragment");
    let args = ["--max-request-bytes", "100000"];
    let etcd = Server::start(Kind::Etcd, dir.path(), &args);
    let ironcd = Server::start(Kind::Ironcd, dir.path(), &args);
    let rt = rt();
    let want = rt.block_on(fragment_session(&etcd));
    let got = rt.block_on(fragment_session(&ironcd));
    assert_eq!(want, got);
    assert!(want.iter().any(|l| l.starts_with("fragments: [") && l.contains(',')), "etcd did not fragment: {want:?}");
}

#[test]
fn many_watchers_on_one_stream() {
    setup();
    let dir = Scratch::new("watch-many");
    let ironcd = Server::ironcd(dir.path());
    rt().block_on(async {
        let mut c = connect(&ironcd).await;
        const N: usize = 300;
        let mut ws = c.watch("m/", Some(WatchOptions::new().with_prefix().with_watch_id(1_000_000))).await.unwrap();
        assert!(next(&mut ws).await.created());
        for i in 0..N {
            ws.watch(format!("m/{i:04}"), None).await.unwrap();
        }
        // Ranges: [m/0100, m/0200) sees 100 keys.
        ws.watch("m/0100", Some(WatchOptions::new().with_range("m/0200").with_watch_id(2_000_000))).await.unwrap();
        let mut created = 0;
        while created < N + 1 {
            let r = next(&mut ws).await;
            assert!(r.created() && !r.canceled(), "{}", show(&r));
            created += 1;
        }
        let first = c.put("m/start", "", None).await.unwrap().header().unwrap().revision();
        for i in 0..N {
            c.put(format!("m/{i:04}"), format!("v{i}"), None).await.unwrap();
        }
        let mut per_id: std::collections::HashMap<i64, Vec<i64>> = Default::default();
        let want_total = N + (N + 1) + 100;
        let mut total = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while total < want_total && Instant::now() < deadline {
            let r = next(&mut ws).await;
            for e in r.events() {
                per_id.entry(r.watch_id()).or_default().push(e.kv().unwrap().mod_revision());
                total += 1;
            }
        }
        assert_eq!(total, want_total);
        let prefix: Vec<i64> = (first..=first + N as i64).collect();
        assert_eq!(per_id[&1_000_000], prefix, "prefix watcher: every revision once, in order");
        assert_eq!(per_id[&2_000_000], (first + 101..first + 201).collect::<Vec<_>>());
        for i in 0..N as i64 {
            assert_eq!(per_id[&i], vec![first + 1 + i], "watcher {i}");
        }
        assert!(silent(&mut ws, Duration::from_millis(300)).await.is_none());
    });
}

#[test]
fn slow_reader_catches_up_without_loss_or_duplicates() {
    setup();
    let dir = Scratch::new("watch-slow");
    let ironcd = Server::ironcd(dir.path());
    rt().block_on(async {
        let mut c = connect(&ironcd).await;
        // History batches of large values exceed the client's default 4 MB.
        let mut wc = c.watch_client().max_decoding_message_size(256 << 20);
        let mut ws = wc.watch("s/", Some(WatchOptions::new().with_prefix().with_prev_key().with_watch_id(1))).await.unwrap();
        ws.watch("s/0007", Some(WatchOptions::new().with_watch_id(2))).await.unwrap();
        assert!(next(&mut ws).await.created());
        assert!(next(&mut ws).await.created());
        // The writer runs while this stream is not read.
        const N: usize = 1500;
        let first = c.get("nothing", None).await.unwrap().header().unwrap().revision() + 1;
        let mut w = c.clone();
        let writer = tokio::spawn(async move {
            for i in 0..N {
                let key = format!("s/{:04}", i % 50);
                w.put(key, format!("{i}:{}", "y".repeat(8000)), None).await.unwrap();
            }
        });
        tokio::time::timeout(Duration::from_secs(120), writer).await.expect("writer in time").unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let last = c.get("s/", Some(GetOptions::new().with_prefix().with_limit(1))).await.unwrap().header().unwrap().revision();
        assert_eq!(last, first + N as i64 - 1);
        // Now read everything.
        let mut revs1 = Vec::new();
        let mut revs2 = Vec::new();
        let mut multi_rev_responses = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while (revs1.len() < N || revs2.len() < N / 50) && Instant::now() < deadline {
            let r = next(&mut ws).await;
            let mut rs: Vec<i64> = r.events().iter().map(|e| e.kv().unwrap().mod_revision()).collect();
            rs.dedup();
            if rs.len() > 1 {
                multi_rev_responses += 1;
            }
            for e in r.events() {
                let kv = e.kv().unwrap();
                let i = (kv.mod_revision() - first) as usize;
                assert_eq!(kv.value_str().unwrap().split(':').next().unwrap(), i.to_string());
                if r.watch_id() == 1 {
                    // prev_kv: the same key's previous write, 50 writes earlier.
                    match e.prev_kv() {
                        None => assert!(i < 50, "prev_kv missing at {i}"),
                        Some(p) => assert_eq!(p.mod_revision(), kv.mod_revision() - 50),
                    }
                    revs1.push(kv.mod_revision());
                } else {
                    revs2.push(kv.mod_revision());
                }
            }
        }
        assert_eq!(revs1, (first..first + N as i64).collect::<Vec<_>>(), "prefix watcher: each revision once, in order");
        assert_eq!(revs2, (0..N as i64 / 50).map(|k| first + 7 + 50 * k).collect::<Vec<_>>());
        // Live responses carry one revision each: a batch of several means
        // the watcher fell behind and caught up from the store.
        assert!(multi_rev_responses > 0, "the slow reader never overflowed its buffer");
        assert!(silent(&mut ws, Duration::from_millis(300)).await.is_none());
        // Back to live.
        let r = c.put("s/0007", "live", None).await.unwrap().header().unwrap().revision();
        let mut seen = 0;
        for _ in 0..2 {
            let resp = next(&mut ws).await;
            assert_eq!(resp.events().len(), 1);
            assert_eq!(resp.events()[0].kv().unwrap().mod_revision(), r);
            seen += 1;
        }
        assert_eq!(seen, 2);
    });
}

#[test]
fn progress_request_waits_for_unsynced_watchers() {
    setup();
    let dir = Scratch::new("watch-progress");
    let ironcd = Server::ironcd(dir.path());
    rt().block_on(async {
        let mut c = connect(&ironcd).await;
        for i in 0..200 {
            c.put(format!("p/{i}"), "x".repeat(100), None).await.unwrap();
        }
        let cur = c.get("p/", None).await.unwrap().header().unwrap().revision();
        // A history watcher and a progress request right behind it: the
        // answer (-1, current revision) must come after the whole history.
        let mut ws = c.watch("p/", Some(WatchOptions::new().with_prefix().with_start_revision(1))).await.unwrap();
        ws.request_progress().await.unwrap();
        let mut events = 0;
        for _ in 0..300 {
            let r = next(&mut ws).await;
            if r.watch_id() == -1 {
                assert_eq!(r.header().unwrap().revision(), cur);
                break;
            }
            events += r.events().len();
        }
        assert_eq!(events, 200, "progress answered before the history was delivered");
    });
}
